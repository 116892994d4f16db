//! The generation engine on the tiny checkpoint: a sequence's tokens are the same alone, in a
//! full pool, through a pool of one row, in another arrival order and in static chunks (greedy
//! and seeded sampling); a group's shared prefill gives the same tokens as one prefill per row;
//! the pool never holds more KV bytes than its budget, by the engine's own accounting checked
//! against the shapes.

use std::collections::HashMap;
use std::path::PathBuf;

use tch::{Device, Kind};
use trainer::generate::{
    Engine, EngineConfig, GroupRequest, SamplingConfig, TokenOut, DEFAULT_STOP_IDS,
};
use trainer::model::{KvLayout, Qwen2_5VLForConditionalGeneration, VisionInputs};

fn model() -> Qwen2_5VLForConditionalGeneration {
    tch::set_num_threads(1);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen25vl/tiny3b");
    Qwen2_5VLForConditionalGeneration::load(&dir, Device::Cpu, Kind::Float).unwrap()
}

/// Group `g`: a text prompt of `5 + 3g` ids, `2 + g % 3` samples, `3 + 4 * (g % 4)` new tokens
/// at most (so sequences end at different steps and rows are refilled mid-run).
struct Group {
    ids: Vec<i64>,
    max_new: usize,
    seeds: Vec<u64>,
}

fn groups() -> Vec<Group> {
    (0..7)
        .map(|g| Group {
            ids: (0..5 + 3 * g)
                .map(|j| ((g * 131 + j * 17) % 900) as i64 + 10)
                .collect(),
            max_new: 3 + 4 * (g % 4),
            seeds: (0..2 + g % 3).map(|s| (1000 * g + s) as u64).collect(),
        })
        .collect()
}

fn sampling(greedy: bool, max_new: usize) -> SamplingConfig {
    SamplingConfig {
        max_new_tokens: max_new,
        top_k: 40,
        top_p: 0.9,
        stop_token_ids: DEFAULT_STOP_IDS.to_vec(),
        ..SamplingConfig::from_temperature(if greedy { 0.0 } else { 0.9 })
    }
}

/// Each sequence's (tokens, log-probs), keyed by its seed.
type BySeed = HashMap<u64, (Vec<i64>, Vec<f32>)>;

/// Runs `order` of the groups through one engine; returns each sequence's output by seed.
fn run(
    model: &Qwen2_5VLForConditionalGeneration,
    config: EngineConfig,
    order: &[usize],
    greedy: bool,
    split_groups: bool,
) -> (BySeed, Engine) {
    let all = groups();
    let mut engine = Engine::new(model, config).unwrap();
    let mut seed_of = HashMap::new();
    for &g in order {
        let group = &all[g];
        let requests: Vec<Vec<u64>> = if split_groups {
            group.seeds.iter().map(|&s| vec![s]).collect()
        } else {
            vec![group.seeds.clone()]
        };
        for seeds in requests {
            let ids = engine
                .add(GroupRequest {
                    prompt_ids: group.ids.clone(),
                    images: None,
                    sampling: sampling(greedy, group.max_new),
                    seeds: seeds.clone(),
                })
                .unwrap();
            for (id, seed) in ids.zip(seeds) {
                seed_of.insert(id, seed);
            }
        }
    }
    let mut out = BySeed::new();
    while !engine.is_idle() {
        for TokenOut {
            seq,
            token,
            logprob,
            ..
        } in engine.step(model).unwrap()
        {
            let entry = out.entry(seed_of[&seq]).or_default();
            entry.0.push(token);
            entry.1.push(logprob);
        }
    }
    (out, engine)
}

#[test]
fn a_sequence_does_not_depend_on_its_neighbours() {
    let model = model();
    let all: Vec<usize> = (0..groups().len()).collect();
    let max_len = 40;
    for greedy in [true, false] {
        // every sequence decoded alone: a pool of one row, each sample its own request
        let mut alone = HashMap::new();
        for &g in &all {
            let (out, _) = run(&model, EngineConfig::new(1, max_len), &[g], greedy, true);
            alone.extend(out);
        }
        let lengths: Vec<usize> = alone.values().map(|(t, _)| t.len()).collect();
        assert!(lengths.iter().any(|&l| l != lengths[0]), "{lengths:?}");

        let total: usize = groups().iter().map(|g| g.seeds.len()).sum();
        let cases = [
            ("full pool", EngineConfig::new(total, max_len), all.clone()),
            (
                "pool of one row",
                EngineConfig::new(1, max_len),
                all.clone(),
            ),
            (
                "pool of 3, reversed arrival",
                EngineConfig::new(3, max_len),
                all.iter().rev().copied().collect(),
            ),
            (
                // flash-attention's varlen arguments over a token-major pool, read by the
                // kernel's reference on the CPU
                "token-major pool of 3",
                EngineConfig {
                    kv_layout: Some(KvLayout::TokenMajor),
                    ..EngineConfig::new(3, max_len)
                },
                all.clone(),
            ),
            (
                "static chunks of 4",
                EngineConfig {
                    refill: false,
                    ..EngineConfig::new(4, max_len)
                },
                all.clone(),
            ),
        ];
        for (name, config, order) in cases {
            let (out, engine) = run(&model, config, &order, greedy, false);
            assert_eq!(out.len(), alone.len(), "{name}");
            for (seed, (tokens, logprobs)) in &out {
                assert_eq!(
                    tokens, &alone[seed].0,
                    "{name}, greedy {greedy}: tokens of seed {seed}"
                );
                for (a, b) in logprobs.iter().zip(&alone[seed].1) {
                    assert!((a - b).abs() <= 1e-5, "{name}: log-prob {a} vs {b}");
                }
            }
            let stats = engine.stats();
            assert_eq!(
                stats.tokens,
                out.values().map(|(t, _)| t.len() as u64).sum::<u64>(),
                "{name}"
            );
            assert!(stats.occupancy() > 0.0 && stats.occupancy() <= 1.0);
        }
    }
}

#[test]
fn continuous_refill_keeps_the_pool_fuller_than_static_chunks() {
    let model = model();
    let order: Vec<usize> = (0..groups().len()).collect();
    let (_, refill) = run(&model, EngineConfig::new(4, 40), &order, true, false);
    let (_, chunks) = run(
        &model,
        EngineConfig {
            refill: false,
            ..EngineConfig::new(4, 40)
        },
        &order,
        true,
        false,
    );
    let (r, c) = (refill.stats(), chunks.stats());
    assert_eq!(r.tokens, c.tokens);
    assert!(
        r.steps < c.steps,
        "refill {} steps, static {}",
        r.steps,
        c.steps
    );
    assert!(r.occupancy() > c.occupancy());
}

#[test]
fn a_group_prefilled_once_matches_one_prefill_per_row() {
    let model = model();
    let order: Vec<usize> = (0..groups().len()).collect();
    for greedy in [true, false] {
        let (shared, e1) = run(&model, EngineConfig::new(5, 40), &order, greedy, false);
        let (per_row, e2) = run(&model, EngineConfig::new(5, 40), &order, greedy, true);
        assert_eq!(shared, per_row, "greedy {greedy}");
        assert_eq!(e1.stats().prefills, groups().len() as u64);
        assert_eq!(
            e2.stats().prefills,
            groups().iter().map(|g| g.seeds.len() as u64).sum::<u64>()
        );
    }
}

#[test]
fn an_image_prompt_is_prefilled_once_for_its_group() {
    let model = model();
    // one 28x28 image: a 2x2 patch grid merged into one <|image_pad|> token
    let mut ids = vec![151652, 151655, 151653];
    ids.extend([10, 20, 30]);
    tch::manual_seed(3);
    let pixels = tch::Tensor::randn([4, 1176], (Kind::Float, Device::Cpu));
    let request = |seeds: Vec<u64>| GroupRequest {
        prompt_ids: ids.clone(),
        images: Some(VisionInputs::new(pixels.shallow_clone(), vec![[1, 2, 2]])),
        sampling: sampling(false, 6),
        seeds,
    };
    let mut shared = Engine::new(&model, EngineConfig::new(3, 16)).unwrap();
    shared.add(request(vec![1, 2, 3])).unwrap();
    let a = shared.run(&model, &mut |_| {}).unwrap();
    let mut single = Engine::new(&model, EngineConfig::new(3, 16)).unwrap();
    for s in [1, 2, 3] {
        single.add(request(vec![s])).unwrap();
    }
    let b = single.run(&model, &mut |_| {}).unwrap();
    assert_eq!(
        a.iter().map(|s| &s.ids).collect::<Vec<_>>(),
        b.iter().map(|s| &s.ids).collect::<Vec<_>>()
    );
    assert_eq!(shared.stats().prefills, 1);
    assert_eq!(single.stats().prefills, 3);
}

#[test]
fn the_pool_stays_within_its_budget() {
    let model = model();
    let t = &model.config.text;
    let slots = 40i64;
    // keys and values of every layer, f32
    let row_bytes =
        (2 * t.num_hidden_layers * t.num_key_value_heads * slots * t.head_dim() * 4) as u64;
    let budget = 4 * row_bytes + row_bytes / 2;
    let config = EngineConfig {
        kv_budget_bytes: Some(budget),
        ..EngineConfig::new(64, slots as usize)
    };
    let order: Vec<usize> = (0..groups().len()).collect();
    let (out, engine) = run(&model, config, &order, false, false);
    let stats = engine.stats();
    // one row's worth is kept for a prompt's prefill: 4.5 rows of budget give a pool of 3
    assert_eq!(stats.rows, 3);
    assert_eq!(stats.pool_bytes, 3 * row_bytes);
    assert!(stats.peak_prefill_bytes > 0 && stats.peak_prefill_bytes <= row_bytes);
    assert!(stats.peak_bytes() <= budget, "{stats:?} over {budget}");
    assert_eq!(
        out.len(),
        groups().iter().map(|g| g.seeds.len()).sum::<usize>()
    );

    let too_small = EngineConfig {
        kv_budget_bytes: Some(row_bytes),
        ..EngineConfig::new(64, slots as usize)
    };
    let err = Engine::new(&model, too_small).unwrap_err().to_string();
    assert!(err.contains("holds no sequence"), "{err}");

    // a request longer than a row is refused when it is added
    let mut engine = Engine::new(&model, EngineConfig::new(2, 10)).unwrap();
    let err = engine
        .add(GroupRequest {
            prompt_ids: vec![1; 8],
            images: None,
            sampling: sampling(true, 5),
            seeds: vec![0],
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceeds the engine's 10 slots"), "{err}");
}
