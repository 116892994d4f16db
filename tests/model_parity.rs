//! Parity of the tch Qwen2.5-VL against transformers 5.23 (f32, CPU, eager attention) on the tiny
//! random checkpoints and goldens written by `scripts/make_fixtures.py`.

use std::collections::HashMap;
use std::path::PathBuf;

use data::rng::SplitMix64;
use tch::{Device, Kind, Tensor};
use trainer::generate::{generate, response_logprobs, PromptBatch, ResponseBatch, SamplingConfig};
use trainer::model::{
    get_rope_index, KvCache, LogitsAt, Qwen2_5VLForConditionalGeneration, VisionInputs,
};

const TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen25vl")
}

fn goldens(name: &str) -> HashMap<String, Tensor> {
    tch::set_num_threads(1);
    Tensor::read_safetensors(fixtures().join(name))
        .unwrap()
        .into_iter()
        .collect()
}

fn load(dir: &str) -> Qwen2_5VLForConditionalGeneration {
    Qwen2_5VLForConditionalGeneration::load(&fixtures().join(dir), Device::Cpu, Kind::Float)
        .unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    Vec::<Vec<i64>>::try_from(t).unwrap()
}

fn grids(t: &Tensor) -> Vec<[i64; 3]> {
    rows(t).into_iter().map(|r| [r[0], r[1], r[2]]).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a - b).abs().max()).unwrap()
}

/// Unpadded prompts from left-padded ids and mask.
fn unpad(ids: &[Vec<i64>], mask: &[Vec<i64>]) -> Vec<Vec<i64>> {
    ids.iter()
        .zip(mask)
        .map(|(r, m)| {
            r.iter()
                .zip(m)
                .filter(|(_, &m)| m != 0)
                .map(|(&i, _)| i)
                .collect()
        })
        .collect()
}

struct Case<'a> {
    g: &'a HashMap<String, Tensor>,
    name: &'a str,
}

impl Case<'_> {
    fn t(&self, key: &str) -> &Tensor {
        &self.g[&format!("{}.{key}", self.name)]
    }
    fn images(&self) -> VisionInputs {
        VisionInputs::new(
            self.t("pixel_values").shallow_clone(),
            grids(self.t("image_grid_thw")),
        )
    }
}

/// Checks one golden case; returns the max diffs (vision, logits, logprobs) for the report.
fn check_case(
    model: &Qwen2_5VLForConditionalGeneration,
    c: &Case<'_>,
    logits_tail: Option<i64>,
) -> (f64, f64, f64) {
    let ids = rows(c.t("input_ids"));
    let mask = rows(c.t("attention_mask"));
    let images = c.images();

    // positions and rope_deltas: identical
    let rope = get_rope_index(&model.config, &ids, &mask, &images.image_grid_thw).unwrap();
    let want_pos: Vec<i64> = Vec::try_from(c.t("position_ids").flatten(0, -1)).unwrap();
    let (b, l) = (ids.len(), ids[0].len());
    for (bi, mask_row) in mask.iter().enumerate() {
        for s in 0..3 {
            for (j, &m) in mask_row.iter().enumerate() {
                if m != 0 {
                    let k = (s * b + bi) * l + j;
                    assert_eq!(
                        rope.position_ids[k], want_pos[k],
                        "{}: pos stream {s} row {bi} slot {j}",
                        c.name
                    );
                }
            }
        }
    }
    let want_deltas: Vec<i64> = Vec::try_from(c.t("rope_deltas")).unwrap();
    assert_eq!(rope.rope_deltas, want_deltas, "{}: rope_deltas", c.name);

    // vision tower
    let vision = tch::no_grad(|| {
        model
            .visual
            .forward(&images.pixel_values, &images.image_grid_thw, None)
    })
    .unwrap();
    let d_vision = max_diff(&vision, c.t("vision_out"));
    assert!(d_vision <= TOL, "{}: vision max diff {d_vision}", c.name);

    // logits at every real position
    let logits = tch::no_grad(|| {
        model.forward(
            &c.t("input_ids").shallow_clone(),
            &rope.to_tensor(Device::Cpu).unwrap(),
            c.t("attention_mask"),
            Some(&images),
            None,
            LogitsAt::All,
        )
    })
    .unwrap();
    let want = c.t("logits");
    let logits = match logits_tail {
        Some(k) => logits.narrow(1, l as i64 - k, k),
        None => logits,
    };
    // ids >= 151665 are masked (-inf) by the port, transformers leaves them
    let cols = want.size()[2].min(trainer::tokenizer::TOKENIZER_VOCAB);
    let (logits, want) = (logits.narrow(2, 0, cols), want.narrow(2, 0, cols));
    let valid = c
        .t("attention_mask")
        .narrow(1, l as i64 - want.size()[1], want.size()[1])
        .ne(0)
        .unsqueeze(-1);
    let d_logits = f64::try_from(((&logits - &want).abs() * &valid).max()).unwrap();
    assert!(d_logits <= TOL, "{}: logits max diff {d_logits}", c.name);

    // greedy 32 tokens, no stop ids (the golden forces 32 tokens)
    let prompts = unpad(&ids, &mask);
    let cfg = SamplingConfig {
        max_new_tokens: 32,
        greedy: true,
        stop_token_ids: vec![],
        pad_token_id: 0, // inside the tiny vocabulary too
        ..SamplingConfig::default()
    };
    let batch = PromptBatch {
        input_ids: prompts.clone(),
        images: Some(c.images()),
    };
    let out = generate(model, &batch, 1, &cfg, &mut SplitMix64::new(0)).unwrap();
    let want_greedy = rows(c.t("greedy"));
    for (s, w) in out.iter().zip(&want_greedy) {
        assert_eq!(
            &s.ids, w,
            "{}: greedy continuation of row {}",
            c.name, s.prompt_index
        );
    }

    // teacher-forced response log-probs
    let temperature = f64::try_from(c.t("response_temperature").get(0)).unwrap();
    let rb = ResponseBatch {
        prompts,
        responses: rows(c.t("response_ids")),
        images: Some(c.images()),
    };
    let lp = tch::no_grad(|| response_logprobs(model, &rb, temperature, 0)).unwrap();
    let d_lp = max_diff(&lp.logprobs, c.t("response_logprobs"));
    assert!(d_lp <= TOL, "{}: response log-prob max diff {d_lp}", c.name);
    (d_vision, d_logits, d_lp)
}

#[test]
fn tiny7b_matches_transformers() {
    let g = goldens("golden_tiny7b.safetensors");
    let model = load("tiny7b");
    for name in ["rgb", "gray", "rgba", "batch"] {
        let d = check_case(&model, &Case { g: &g, name }, None);
        println!(
            "tiny7b {name}: max |diff| vision {:.2e}, logits {:.2e}, response logprobs {:.2e}",
            d.0, d.1, d.2
        );
    }
}

#[test]
fn tiny3b_tied_matches_transformers() {
    let g = goldens("golden_tiny3b.safetensors");
    let model = load("tiny3b");
    assert!(model.config.tie_word_embeddings);
    assert_eq!(
        model
            .named_tensors()
            .iter()
            .filter(|(n, _)| n == "lm_head.weight")
            .count(),
        0
    );
    let d = check_case(
        &model,
        &Case {
            g: &g,
            name: "batch",
        },
        Some(2),
    );
    println!(
        "tiny3b batch: max |diff| vision {:.2e}, logits {:.2e}, response logprobs {:.2e}",
        d.0, d.1, d.2
    );
}

#[test]
fn every_layout_gives_identical_logits() {
    let g = goldens("golden_tiny7b.safetensors");
    let c = Case {
        g: &g,
        name: "batch",
    };
    let ids = rows(c.t("input_ids"));
    let mask = rows(c.t("attention_mask"));
    let mut reference: Option<Tensor> = None;
    for dir in [
        "tiny7b",
        "tiny7b_sharded",
        "tiny7b_v452",
        "tiny7b_v452_sharded",
    ] {
        let model = load(dir);
        let rope =
            get_rope_index(&model.config, &ids, &mask, &grids(c.t("image_grid_thw"))).unwrap();
        let logits = tch::no_grad(|| {
            model.forward(
                c.t("input_ids"),
                &rope.to_tensor(Device::Cpu).unwrap(),
                c.t("attention_mask"),
                Some(&c.images()),
                None,
                LogitsAt::All,
            )
        })
        .unwrap();
        match &reference {
            None => reference = Some(logits),
            Some(r) => assert!(r.equal(&logits), "{dir} differs from tiny7b"),
        }
    }
}

/// Prefill + cached one-token steps against one no-cache forward over the same ids.
#[test]
fn cached_decode_matches_full_forward() {
    let g = goldens("golden_tiny7b.safetensors");
    let c = Case {
        g: &g,
        name: "batch",
    };
    let model = load("tiny7b");
    let _guard = tch::no_grad_guard();
    let ids = rows(c.t("input_ids"));
    let mask = rows(c.t("attention_mask"));
    let gr = grids(c.t("image_grid_thw"));
    let steps: Vec<Vec<i64>> = vec![vec![5, 6], vec![77, 78], vec![900, 12], vec![3, 4]];
    let (b, l) = (ids.len() as i64, ids[0].len() as i64);

    let rope = get_rope_index(&model.config, &ids, &mask, &gr).unwrap();
    let mut cache = KvCache::new(
        &model.config,
        b,
        l + steps.len() as i64,
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let mut attn = c.t("attention_mask").shallow_clone();
    let mut cached = vec![model
        .forward(
            c.t("input_ids"),
            &rope.to_tensor(Device::Cpu).unwrap(),
            &attn,
            Some(&c.images()),
            Some(&mut cache),
            LogitsAt::Last,
        )
        .unwrap()];
    for (k, step) in steps.iter().enumerate() {
        let pos: Vec<i64> = rope.next_position.iter().map(|p| p + k as i64).collect();
        let pos = Tensor::from_slice(&pos)
            .view([1, b, 1])
            .expand([3, b, 1], false);
        attn = Tensor::cat(
            &[&attn, &Tensor::ones([b, 1], (Kind::Int64, Device::Cpu))],
            1,
        );
        let input = Tensor::from_slice(&[step[0], step[1]]).view([b, 1]);
        cached.push(
            model
                .forward(&input, &pos, &attn, None, Some(&mut cache), LogitsAt::Last)
                .unwrap(),
        );
    }
    let cached = Tensor::cat(&cached[..steps.len()], 1); // logits predicting each fed token + prefill

    let full_ids: Vec<Vec<i64>> = ids
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.iter()
                .copied()
                .chain(steps.iter().map(|s| s[i]))
                .collect()
        })
        .collect();
    let full_mask: Vec<Vec<i64>> = mask
        .iter()
        .map(|m| {
            m.iter()
                .copied()
                .chain(std::iter::repeat_n(1, steps.len()))
                .collect()
        })
        .collect();
    let full_rope = get_rope_index(&model.config, &full_ids, &full_mask, &gr).unwrap();
    let flat: Vec<i64> = full_ids.concat();
    let flat_mask: Vec<i64> = full_mask.concat();
    let n = steps.len() as i64;
    let full = model
        .forward(
            &Tensor::from_slice(&flat).view([b, l + n]),
            &full_rope.to_tensor(Device::Cpu).unwrap(),
            &Tensor::from_slice(&flat_mask).view([b, l + n]),
            Some(&c.images()),
            None,
            LogitsAt::All,
        )
        .unwrap()
        .narrow(1, l - 1, n);
    let d = max_diff(&cached, &full);
    println!("cached decode vs full forward: max |diff| {d:.2e}");
    assert!(d <= 1e-5, "cached decode differs from full forward by {d}");
}

/// Sampling is reproducible from the seed, n samples share a prompt, and stop ids end samples.
#[test]
fn sampling_is_seeded_and_stops() {
    let g = goldens("golden_tiny7b.safetensors");
    let c = Case {
        g: &g,
        name: "batch",
    };
    let model = load("tiny7b");
    let prompts = unpad(&rows(c.t("input_ids")), &rows(c.t("attention_mask")));
    let batch = PromptBatch {
        input_ids: prompts,
        images: Some(c.images()),
    };
    let cfg = SamplingConfig {
        max_new_tokens: 12,
        temperature: 0.9,
        top_p: 0.95,
        top_k: 50,
        stop_token_ids: vec![],
        pad_token_id: 0,
        ..SamplingConfig::default()
    };
    let a = generate(&model, &batch, 3, &cfg, &mut SplitMix64::new(42)).unwrap();
    let b = generate(&model, &batch, 3, &cfg, &mut SplitMix64::new(42)).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 6);
    assert_eq!(
        a.iter().map(|s| s.prompt_index).collect::<Vec<_>>(),
        vec![0, 0, 0, 1, 1, 1]
    );
    assert!(a
        .iter()
        .all(|s| s.ids.len() == 12 && s.logprobs.iter().all(|&l| l <= 0.0)));
    // samples of one prompt differ (random model, temperature 0.9)
    assert!(a[0].ids != a[1].ids || a[1].ids != a[2].ids);
    // a stop id taken from a sample ends it right there
    let stop = a[0].ids[3];
    let cfg2 = SamplingConfig {
        stop_token_ids: vec![stop],
        ..cfg
    };
    let s = generate(&model, &batch, 3, &cfg2, &mut SplitMix64::new(42)).unwrap();
    let first = s[0].ids.iter().position(|&i| i == stop).unwrap();
    assert_eq!(s[0].ids.len(), first + 1);
    assert!(s[0].stopped);

    // sampled log-probs equal teacher-forced ones at the same temperature
    let gr = grids(c.t("image_grid_thw"));
    let sizes: Vec<i64> = gr.iter().map(|g| g[0] * g[1] * g[2]).collect();
    let pix = c.t("pixel_values").split_with_sizes(&sizes, 0);
    let per_prompt: [&[usize]; 2] = [&[0, 1], &[2]]; // row 0 holds images 0 and 1, row 1 image 2
    let mut pv = Vec::new();
    let mut grid_rep = Vec::new();
    for imgs in per_prompt {
        for _ in 0..3 {
            for &k in imgs {
                pv.push(pix[k].shallow_clone());
                grid_rep.push(gr[k]);
            }
        }
    }
    let rb = ResponseBatch {
        prompts: batch
            .input_ids
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), 3))
            .collect(),
        responses: a.iter().map(|s| s.ids.clone()).collect(),
        images: Some(VisionInputs::new(Tensor::cat(&pv, 0), grid_rep)),
    };
    let lp = tch::no_grad(|| response_logprobs(&model, &rb, 0.9, 0)).unwrap();
    let sampled: Vec<f32> = a.iter().flat_map(|s| s.logprobs.clone()).collect();
    let d = max_diff(&lp.logprobs.flatten(0, -1), &Tensor::from_slice(&sampled));
    println!("sampled vs teacher-forced log-probs: max |diff| {d:.2e}");
    assert!(
        d <= 1e-4,
        "sampled log-probs differ from teacher-forced ones by {d}"
    );

    // the same pass with each distinct image encoded once and its features reused per response
    let mut sources = Vec::new();
    for imgs in per_prompt {
        for _ in 0..3 {
            sources.extend_from_slice(imgs);
        }
    }
    let shared = ResponseBatch {
        images: Some(VisionInputs {
            pixel_values: c.t("pixel_values").shallow_clone(),
            image_grid_thw: rb.images.as_ref().unwrap().image_grid_thw.clone(),
            sources,
        }),
        ..rb
    };
    let lp_shared = tch::no_grad(|| response_logprobs(&model, &shared, 0.9, 0)).unwrap();
    let d = max_diff(&lp_shared.logprobs, &lp.logprobs);
    println!("shared vs repeated image encodings: max |diff| {d:.2e}");
    assert!(d <= 1e-6, "reusing image features changed log-probs by {d}");
}
