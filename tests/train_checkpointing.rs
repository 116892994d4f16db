//! The memory-saving training forward is exact: gradient checkpointing gives the plain backward's
//! gradients (the tiny fixture and the mid-size random preset, vision tower included) and the same
//! weights after two GRPO steps; right-padded causal log-probs equal the left-padded masked
//! forward's; token-budget forwards keep the recipe's loss weighting.

mod common;

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use trainer::grpo::actor::PolicyLogprobs;
use trainer::model::{get_rope_index, LogitsAt, Qwen2_5VLForConditionalGeneration};
use trainer::processor::Processor;
use trainer::train::checkpoint::load_model_tensors;
use trainer::train::config::TrainConfig;
use trainer::train::policy::{ModelPolicy, SequenceRef};
use trainer::train::rollout::vision_inputs;
use trainer::train::tiny::{write_tiny_random, TinyShape};
use trainer::train::{Trainer, TrainerOptions, DEFAULT_CONFIG};

use common::{encode_first, synthetic, tiny_model};

/// Largest `|a - b|` over a tensor relative to its largest `|a|`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let scale = f64::try_from(a.abs().max()).unwrap().max(1e-30);
    f64::try_from((a - b).abs().max()).unwrap() / scale
}

/// Gradients of every weight of `model` for `sum(w · log-probs)` over four responses (two per
/// prompt, so a vision tower output is reused), with or without checkpointing.
fn gradients(
    model: &Qwen2_5VLForConditionalGeneration,
    seqs: &[SequenceRef<'_>],
    checkpointing: bool,
) -> Vec<(String, Tensor)> {
    let params = model.named_tensors();
    for (_, t) in &params {
        let mut t = t.shallow_clone();
        t.zero_grad();
        let _ = t.set_requires_grad(true);
    }
    let mut policy =
        ModelPolicy::new(model, seqs.to_vec(), 1.0).with_gradient_checkpointing(checkpointing);
    let rows: Vec<usize> = (0..seqs.len()).collect();
    let lp = policy.response_log_probs(&rows).unwrap();
    tch::manual_seed(11);
    let weights = Tensor::randn(lp.size(), (Kind::Float, Device::Cpu));
    policy.backward(&(lp * weights).sum(Kind::Float)).unwrap();
    params
        .into_iter()
        .map(|(name, t)| {
            let g = t.grad();
            assert!(g.defined(), "{name} got no gradient");
            let g = g.copy();
            let _ = t.set_requires_grad(false);
            (name, g)
        })
        .collect()
}

fn assert_checkpointing_exact(model_dir: &Path, dir: &Path) {
    let data = synthetic(dir, 5);
    let model =
        Qwen2_5VLForConditionalGeneration::load(model_dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_model_dir(model_dir).unwrap();
    let prompts = encode_first(&processor, &data, 2);
    let responses: Vec<Vec<i64>> = [
        "<think>left of</think>",
        "<answer>(B)</answer>",
        "(A)",
        "no",
    ]
    .iter()
    .map(|t| processor.tokenize(t).unwrap())
    .collect();
    let seqs: Vec<SequenceRef<'_>> = responses
        .iter()
        .enumerate()
        .map(|(i, r)| SequenceRef {
            prompt: &prompts[i / 2],
            response: r,
        })
        .collect();
    let plain = gradients(&model, &seqs, false);
    let recomputed = gradients(&model, &seqs, true);
    let mut worst = (0.0, String::new());
    for ((name, a), (_, b)) in plain.iter().zip(&recomputed) {
        assert!(
            f64::try_from(a.abs().max()).unwrap() > 0.0 || name.contains("bias"),
            "{name}: zero gradient"
        );
        let d = rel_diff(a, b);
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    eprintln!(
        "{}: largest relative gradient difference {:e} ({})",
        model_dir.display(),
        worst.0,
        worst.1
    );
    assert!(
        worst.0 <= 1e-6,
        "checkpointed gradient of {} differs by {:e} (relative)",
        worst.1,
        worst.0
    );
    // the vision tower is covered
    assert!(plain.iter().any(|(n, _)| n.starts_with("visual.blocks.0.")));
}

#[test]
fn checkpointing_gives_the_plain_gradients_tiny() {
    let dir = tempfile::tempdir().unwrap();
    assert_checkpointing_exact(&tiny_model(), dir.path());
}

#[test]
fn checkpointing_gives_the_plain_gradients_mid_preset() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mid");
    write_tiny_random(&model, &TinyShape::mid(), 7, (3136, 12544)).unwrap();
    assert_checkpointing_exact(&model, dir.path());
}

/// Today's reference path, computed here: left padding, the boolean causal-padding mask, logits
/// at every position, log-softmax, gathered at the response tokens.
#[test]
fn right_padded_causal_log_probs_equal_the_left_padded_masked_forward() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 5);
    let model =
        Qwen2_5VLForConditionalGeneration::load(&tiny_model(), Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_model_dir(&tiny_model()).unwrap();
    let prompts = encode_first(&processor, &data, 2);
    let responses: Vec<Vec<i64>> = ["<answer>(A)</answer> and more words here", "(B)"]
        .iter()
        .map(|t| processor.tokenize(t).unwrap())
        .collect();
    let seqs: Vec<SequenceRef<'_>> = responses
        .iter()
        .zip(&prompts)
        .map(|(r, p)| SequenceRef {
            prompt: p,
            response: r,
        })
        .collect();
    let ours = tch::no_grad(|| {
        ModelPolicy::new(&model, seqs.clone(), 0.7)
            .response_log_probs(&[0, 1])
            .unwrap()
    });

    let full: Vec<Vec<i64>> = seqs
        .iter()
        .map(|s| s.prompt.ids.iter().chain(s.response).copied().collect())
        .collect();
    let width = full.iter().map(Vec::len).max().unwrap();
    assert_ne!(full[0].len(), full[1].len(), "rows must need padding");
    let ids: Vec<Vec<i64>> = full
        .iter()
        .map(|r| {
            std::iter::repeat_n(0, width - r.len())
                .chain(r.iter().copied())
                .collect()
        })
        .collect();
    let mask: Vec<Vec<i64>> = full
        .iter()
        .map(|r| {
            std::iter::repeat_n(0, width - r.len())
                .chain(std::iter::repeat_n(1, r.len()))
                .collect()
        })
        .collect();
    let grids: Vec<[i64; 3]> = prompts.iter().map(|p| p.grid).collect();
    let rope = get_rope_index(&model.config, &ids, &mask, &grids).unwrap();
    let flat =
        |v: &[Vec<i64>]| Tensor::from_slice(&v.concat()).view([v.len() as i64, width as i64]);
    let images = vision_inputs(&prompts.iter().collect::<Vec<_>>()).unwrap();
    let logits = tch::no_grad(|| {
        model
            .forward(
                &flat(&ids),
                &rope.to_tensor(Device::Cpu).unwrap(),
                &flat(&mask),
                Some(&images),
                None,
                LogitsAt::All,
            )
            .unwrap()
    });
    let logp = (logits / 0.7).log_softmax(-1, Kind::Float);
    let mut worst = 0.0f64;
    for (row, resp) in responses.iter().enumerate() {
        for (j, &tok) in resp.iter().enumerate() {
            let slot = (width - resp.len() + j - 1) as i64;
            let reference = logp.double_value(&[row as i64, slot, tok]);
            let got = ours.double_value(&[row as i64, j as i64]);
            worst = worst.max((reference - got).abs());
        }
    }
    eprintln!("right-padded vs left-padded masked log-probs: largest difference {worst:e}");
    assert!(worst <= 1e-5, "log-probs differ by {worst:e}");
}

fn tiny_run(out: &Path, data: &Path, extra: &[&str]) -> PathBuf {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let mut overrides: Vec<String> = vec![
        format!("model.path={}", q(&tiny_model())),
        format!("trainer.output_dir={}", q(out)),
        format!("data.train_files={}", q(data)),
        format!("data.val_files={}", q(data)),
        "trainer.max_steps=2".into(),
        "sft.enabled=false".into(),
        "trainer.val_before_train=false".into(),
        "trainer.val_freq=0".into(),
        "trainer.save_freq=2".into(),
        "data.rollout_batch_size=2".into(),
        "actor.global_batch_size=2".into(),
        "rollout.n=3".into(),
        "actor.micro_batch_size_per_device_for_update=2".into(),
        "actor.micro_batch_size_per_device_for_experience=2".into(),
        "data.max_response_length=6".into(),
        "actor.lr=1e-2".into(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    let cfg = TrainConfig::from_toml_str(DEFAULT_CONFIG, &overrides, "test").unwrap();
    Trainer::new(cfg, TrainerOptions::default())
        .unwrap()
        .run()
        .unwrap()
        .checkpoint
        .expect("a checkpoint at the end")
}

/// Largest relative weight difference between two checkpoints, and whether training moved them.
fn weights_diff(a: &Path, b: &Path, start: &Path) -> (f64, f64) {
    let (a, b) = (
        load_model_tensors(a).unwrap(),
        load_model_tensors(b).unwrap(),
    );
    let start: std::collections::HashMap<String, Tensor> =
        load_model_tensors(start).unwrap().into_iter().collect();
    let (mut diff, mut moved) = (0.0f64, 0.0f64);
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        diff = diff.max(rel_diff(ta, tb));
        moved = moved.max(f64::try_from((ta - &start[na]).abs().max()).unwrap());
    }
    (diff, moved)
}

#[test]
fn two_grpo_steps_give_the_same_weights_with_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 5);
    let plain = tiny_run(&dir.path().join("plain"), &data, &[]);
    let checkpointed = tiny_run(
        &dir.path().join("ckpt"),
        &data,
        &["model.gradient_checkpointing=true"],
    );
    let (diff, moved) = weights_diff(&plain, &checkpointed, &tiny_model());
    assert!(moved > 0.0, "two steps changed no weight");
    eprintln!("weights after two steps, with vs without checkpointing: {diff:e} (relative)");
    assert!(
        diff <= 1e-6,
        "checkpointing changed the weights by {diff:e}"
    );
}

/// Packing changes only the rounding of the summed gradients; Adam's first steps are sign-like
/// (`g / (|g| + eps)`) and would blow that up where a gradient is ~0, so these runs use a large
/// `eps`, which makes the update linear in the gradient and the comparison a gradient comparison.
#[test]
fn token_budget_forwards_keep_the_loss_weighting() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 5);
    let linear = ["actor.eps=1.0", "actor.lr=1.0"];
    let plain = tiny_run(&dir.path().join("plain"), &data, &linear);
    // the three micro-batches of a mini-batch in one forward, the six rows of each no-grad pass
    // in one
    let budget = ["actor.max_tokens_per_micro_batch=100000"];
    let packed = tiny_run(
        &dir.path().join("packed"),
        &data,
        &[&linear[..], &budget].concat(),
    );
    // a budget below one micro-batch: every forward is one micro-batch (the recipe's count)
    let tight = ["actor.max_tokens_per_micro_batch=10"];
    let single = tiny_run(
        &dir.path().join("tight"),
        &data,
        &[&linear[..], &tight].concat(),
    );
    let (diff, moved) = weights_diff(&plain, &packed, &tiny_model());
    assert!(
        moved > 1e-3,
        "two steps barely moved the weights ({moved:e})"
    );
    eprintln!("weights after two steps, packed vs one micro-batch per forward: {diff:e}");
    assert!(
        diff <= 1e-6,
        "packed forwards changed the weights by {diff:e}"
    );
    let (diff, _) = weights_diff(&plain, &single, &tiny_model());
    assert!(
        diff <= 1e-6,
        "one-row forwards changed the weights by {diff:e}"
    );
}
