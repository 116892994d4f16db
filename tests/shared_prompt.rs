//! Each group's prompt computed once (docs/architecture.md, "Shared prompts") is exact: log-probs
//! and every weight's gradient equal the forward that runs the prompt once per response, with and
//! without gradient checkpointing, on the tiny fixture and on a wider random preset (vision tower,
//! GQA, M-RoPE sections of the 7B's head).

mod common;

use std::path::Path;

use tch::{Device, Kind, Tensor};
use trainer::grpo::actor::PolicyLogprobs;
use trainer::model::Qwen2_5VLForConditionalGeneration;
use trainer::processor::Processor;
use trainer::train::policy::{ModelPolicy, SequenceRef};
use trainer::train::tiny::{write_tiny_random, TinyShape};

use common::{encode_first, synthetic, tiny_model};

/// libtorch's random generator is global: the tests of this file run one at a time, so that
/// seeded weights and models are the same in the runs they compare.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Largest `|a - b|` over a tensor relative to its largest `|a|`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let scale = f64::try_from(a.abs().max()).unwrap().max(1e-300);
    f64::try_from((a - b).abs().max()).unwrap() / scale
}

/// Log-probs (no grad) and the gradients of `sum(w · log-probs)` of every weight.
fn run(
    model: &Qwen2_5VLForConditionalGeneration,
    seqs: &[SequenceRef<'_>],
    shared: bool,
    checkpointing: bool,
) -> (Tensor, Vec<(String, Tensor)>) {
    let rows: Vec<usize> = (0..seqs.len()).collect();
    let mut policy = ModelPolicy::new(model, seqs.to_vec(), 0.9)
        .with_gradient_checkpointing(checkpointing)
        .with_shared_prompts(shared);
    let no_grad = tch::no_grad(|| policy.response_log_probs(&rows).unwrap());
    let params = model.named_tensors();
    for (_, t) in &params {
        let mut t = t.shallow_clone();
        t.zero_grad();
        let _ = t.set_requires_grad(true);
    }
    let lp = policy.response_log_probs(&rows).unwrap();
    tch::manual_seed(11);
    let weights = Tensor::randn(lp.size(), (Kind::Float, Device::Cpu));
    policy.backward(&(lp * weights).sum(Kind::Float)).unwrap();
    let grads = params
        .into_iter()
        .map(|(name, t)| {
            let g = t.grad();
            assert!(g.defined(), "{name} got no gradient");
            let g = g.copy();
            let _ = t.set_requires_grad(false);
            (name, g)
        })
        .collect();
    (no_grad, grads)
}

/// Runs both forwards in `kind` and checks the log-probs (relative to their largest magnitude)
/// and the gradient of all weights (`‖a − b‖ / ‖a‖`) within `tolerance`, each weight's within
/// ten times that. In f64 the remaining differences are those of the f32 steps inside the model
/// (norm statistics, rotary tables, the head's log-softmax).
fn assert_sharing_exact(model_dir: &Path, dir: &Path, kind: Kind, tolerance: f64) {
    let data = synthetic(dir, 7);
    let model = Qwen2_5VLForConditionalGeneration::load(model_dir, Device::Cpu, kind).unwrap();
    let processor = Processor::from_model_dir(model_dir).unwrap();
    let prompts = encode_first(&processor, &data, 2);
    // two groups of unequal size and response lengths, interleaved, one response of one token
    let texts = [
        "<think>the cube is left of the ball</think>",
        "<answer>(B)</answer>",
        "(A)",
        "no",
        "<observe>a red cube</observe><answer>(A)</answer>",
    ];
    let responses: Vec<Vec<i64>> = texts
        .iter()
        .map(|t| processor.tokenize(t).unwrap())
        .collect();
    let group = [0, 1, 0, 1, 0];
    let seqs: Vec<SequenceRef<'_>> = responses
        .iter()
        .zip(group)
        .map(|(r, g)| SequenceRef {
            prompt: &prompts[g],
            response: r,
        })
        .collect();
    for checkpointing in [false, true] {
        let (lp_plain, g_plain) = run(&model, &seqs, false, checkpointing);
        let (lp_shared, g_shared) = run(&model, &seqs, true, checkpointing);
        let lp_diff = rel_diff(&lp_plain, &lp_shared);
        // relative difference of the whole gradient, and of the worst single tensor (a
        // cancellation-dominated one such as k_proj's bias shows rounding the most)
        let mut worst = (0.0, String::new());
        let (mut diff2, mut norm2) = (0.0, 0.0);
        for ((name, a), (_, b)) in g_plain.iter().zip(&g_shared) {
            let (d, n) = (
                f64::try_from((a - b).norm()).unwrap(),
                f64::try_from(a.norm()).unwrap(),
            );
            (diff2, norm2) = (diff2 + d * d, norm2 + n * n);
            if d / n.max(1e-300) > worst.0 {
                worst = (d / n.max(1e-300), name.clone());
            }
        }
        let whole = (diff2 / norm2).sqrt();
        eprintln!(
            "{} {kind:?} (checkpointing {checkpointing}): log-probs differ by {lp_diff:e}, the gradient by {whole:e}, the worst tensor's by {:e} ({})",
            model_dir.display(),
            worst.0,
            worst.1
        );
        assert!(lp_diff <= tolerance, "log-probs differ by {lp_diff:e}");
        assert!(whole <= tolerance, "the gradient differs by {whole:e}");
        assert!(
            worst.0 <= 10.0 * tolerance,
            "gradient of {} differs by {:e}",
            worst.1,
            worst.0
        );
        // the prompt and the vision tower are covered
        assert!(g_plain
            .iter()
            .any(|(n, _)| n.starts_with("visual.blocks.0.")));
        assert!(
            f64::try_from(lp_plain.abs().sum(Kind::Float)).unwrap() > 1.0,
            "log-probs are not trivial"
        );
    }
}

#[test]
fn shared_prompts_are_exact_tiny() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    assert_sharing_exact(&tiny_model(), dir.path(), Kind::Double, 1e-7);
    assert_sharing_exact(&tiny_model(), dir.path(), Kind::Float, 1e-6);
}

#[test]
fn shared_prompts_are_exact_wider_preset() {
    let _serial = serial();
    // the TRL comparison's shape: 4 layers of width 256, 8 query / 2 KV heads of 32, MLP 688,
    // a 4-block vision tower of width 128
    let dir = tempfile::tempdir().unwrap();
    let shape = TinyShape::bench();
    let model_dir = dir.path().join("model");
    write_tiny_random(&model_dir, &shape, 3, (3136, 12544)).unwrap();
    assert_sharing_exact(&model_dir, dir.path(), Kind::Double, 1e-7);
    assert_sharing_exact(&model_dir, dir.path(), Kind::Float, 1e-6);
}

/// Final weights of a 3-step GRPO run of the tiny preset (4 prompts × 4 responses, two optimiser
/// steps per RL step) with the KL term against another random model, so the loss is a real
/// gradient rather than rounding noise.
fn three_steps(out: &Path, reference: &Path, extra: &[&str]) -> Vec<(String, Tensor)> {
    three_steps_reporting(out, reference, extra).0
}

/// [`three_steps`], with the decoder tokens each step's old-log-prob pass ran.
fn three_steps_reporting(
    out: &Path,
    reference: &Path,
    extra: &[&str],
) -> (Vec<(String, Tensor)>, Vec<u64>) {
    use trainer::train::config::TrainConfig;
    use trainer::train::report::Phase;
    use trainer::train::{Trainer, TrainerOptions, DEFAULT_CONFIG};
    let mut overrides: Vec<String> = [
        format!("trainer.output_dir={:?}", out.display().to_string()),
        format!("model.reference_path={:?}", reference.display().to_string()),
        "trainer.max_steps=3".into(),
        "sft.enabled=false".into(),
        "trainer.val_before_train=false".into(),
        "trainer.val_freq=0".into(),
        "data.synthetic_train_rows=16".into(),
        "data.synthetic_val_rows=2".into(),
        "data.rollout_batch_size=4".into(),
        "actor.global_batch_size=2".into(),
        "rollout.n=4".into(),
        "actor.micro_batch_size_per_device_for_update=4".into(),
        "actor.micro_batch_size_per_device_for_experience=8".into(),
        "data.max_response_length=24".into(),
        // Adam turns near-zero, rounding-level gradient elements into steps of up
        // to lr; at the demo's 5e-4 the runs differ by 1.0e-6, at 1e-4 by a fifth of that
        "actor.lr=1e-4".into(),
    ]
    .into();
    overrides.extend(extra.iter().map(|s| s.to_string()));
    let cfg = TrainConfig::from_toml_str(DEFAULT_CONFIG, &overrides, "test").unwrap();
    let mut t = Trainer::new(
        cfg,
        TrainerOptions {
            dry: true,
            ..Default::default()
        },
    )
    .unwrap();
    let old_tokens = (0..3)
        .map(|_| {
            let report = t.step().unwrap();
            report
                .times
                .tokens
                .get(&Phase::OldLogProbs)
                .copied()
                .unwrap_or(0)
        })
        .collect();
    let weights = t
        .policy()
        .named_tensors()
        .into_iter()
        .map(|(n, w)| (n, w.copy()))
        .collect();
    (weights, old_tokens)
}

/// Largest absolute difference between two lists of named tensors.
fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    a.iter()
        .zip(b)
        .map(|((_, x), (_, y))| f64::try_from((x - y).abs().max()).unwrap())
        .fold(0.0, f64::max)
}

#[test]
fn rollout_old_logprobs_take_the_engines_and_fall_back_when_they_differ() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    write_tiny_random(&reference, &TinyShape::default(), 9, (3136, 12544)).unwrap();
    let (reused, reuse_tokens) = three_steps_reporting(
        &dir.path().join("reuse"),
        &reference,
        &["algorithm.old_logprobs=\"reuse\""],
    );
    let (engine, engine_tokens) = three_steps_reporting(
        &dir.path().join("rollout"),
        &reference,
        &["algorithm.old_logprobs=\"rollout\""],
    );
    // a tolerance nothing meets: the first step takes the engine's, the next ones a forward
    let (_, strict_tokens) = three_steps_reporting(
        &dir.path().join("strict"),
        &reference,
        &[
            "algorithm.old_logprobs=\"rollout\"",
            "algorithm.rollout_logprobs_tolerance=-1.0",
        ],
    );
    eprintln!("old-log-prob tokens per step: reuse {reuse_tokens:?}, rollout {engine_tokens:?}, strict {strict_tokens:?}");
    // two optimiser steps per RL step: reuse runs a pass over the second mini-batch
    assert!(reuse_tokens.iter().all(|&t| t > 0));
    assert_eq!(engine_tokens, vec![0, 0, 0]);
    assert_eq!(strict_tokens[0], 0);
    assert_eq!(&strict_tokens[1..], &reuse_tokens[1..]);
    // f32 sampling log-probs equal the forward's up to rounding: the weights follow
    let diff = max_abs_diff(&reused, &engine);
    eprintln!("3 GRPO steps, engine's old log-probs vs the forward's: {diff:e}");
    assert!(diff <= 1e-5, "weights differ by {diff}");
}

#[test]
fn three_grpo_steps_match_the_unshared_recomputed_run() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    write_tiny_random(&reference, &TinyShape::default(), 9, (3136, 12544)).unwrap();
    let plain = three_steps(
        &dir.path().join("plain"),
        &reference,
        &[
            "actor.shared_prompt_forward=false",
            "algorithm.old_logprobs=\"recompute\"",
        ],
    );
    let fast = three_steps(
        &dir.path().join("fast"),
        &reference,
        &[
            "actor.shared_prompt_forward=true",
            "algorithm.old_logprobs=\"reuse\"",
        ],
    );
    // token-budget forwards of 1,200 padded tokens (about six rows of the embedded default's
    // ~175-token rows, so groups of 4 split across forwards) with gradient checkpointing:
    // grouping and recomputation change no weight
    let packed = three_steps(
        &dir.path().join("packed"),
        &reference,
        &[
            "actor.shared_prompt_forward=true",
            "algorithm.old_logprobs=\"reuse\"",
            "actor.max_tokens_per_micro_batch=1200",
            "model.gradient_checkpointing=true",
        ],
    );
    let start = Qwen2_5VLForConditionalGeneration::load(
        &dir.path().join("plain/base-model"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap()
    .named_tensors();
    let max_diff = |a: &[(String, Tensor)], b: &[(String, Tensor)]| {
        a.iter()
            .zip(b)
            .map(|((_, x), (_, y))| f64::try_from((x - y).abs().max()).unwrap())
            .fold(0.0, f64::max)
    };
    let moved = max_diff(&start, &plain);
    let diff = max_diff(&plain, &fast);
    let worst = plain
        .iter()
        .zip(&fast)
        .map(|((n, x), (_, y))| (f64::try_from((x - y).abs().max()).unwrap(), n.clone()))
        .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
    eprintln!("largest difference in {}", worst.1);
    eprintln!("3 GRPO steps: weights moved by {moved:e}; shared + reused vs unshared + recomputed: {diff:e}");
    let packed_diff = max_diff(&plain, &packed);
    eprintln!("3 GRPO steps, shared + token budget + checkpointing vs plain: {packed_diff:e}");
    assert!(moved > 1e-4, "the steps change the weights ({moved})");
    assert!(diff <= 1e-6, "weights differ by {diff}");
    assert!(
        packed_diff <= 1e-6,
        "packed weights differ by {packed_diff}"
    );
}

/// Seconds of one no-grad pass and one forward + backward over 2 prompts × 8 responses of 64
/// tokens, shared and plain, alternated (run by hand: `cargo test --test shared_prompt -- --ignored
/// --nocapture`; timings belong in `bench train`, not in assertions).
#[test]
#[ignore]
fn timing_shared_vs_plain() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    write_tiny_random(&model_dir, &TinyShape::bench(), 3, (50176, 50176)).unwrap();
    let data = synthetic(dir.path(), 7);
    let model =
        Qwen2_5VLForConditionalGeneration::load(&model_dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_model_dir(&model_dir).unwrap();
    let prompts = encode_first(&processor, &data, 2);
    eprintln!(
        "prompt tokens: {}, {}",
        prompts[0].ids.len(),
        prompts[1].ids.len()
    );
    let responses: Vec<Vec<i64>> = (0..16)
        .map(|i| {
            (0..64)
                .map(|j| 1000 + ((i * 37 + j * 11) % 500) as i64)
                .collect()
        })
        .collect();
    let seqs: Vec<SequenceRef<'_>> = responses
        .iter()
        .enumerate()
        .map(|(i, r)| SequenceRef {
            prompt: &prompts[i / 8],
            response: r,
        })
        .collect();
    let params = model.named_tensors();
    for (_, t) in &params {
        let _ = t.shallow_clone().set_requires_grad(true);
    }
    for round in 0..3 {
        for shared in [false, true] {
            let mut policy =
                ModelPolicy::new(&model, seqs.clone(), 1.0).with_shared_prompts(shared);
            let rows: Vec<usize> = (0..16).collect();
            let t = std::time::Instant::now();
            let _ = tch::no_grad(|| policy.response_log_probs(&rows).unwrap());
            let no_grad = t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            for chunk in rows.chunks(4) {
                let lp = policy.response_log_probs(chunk).unwrap();
                policy.backward(&lp.sum(Kind::Float)).unwrap();
            }
            let update = t.elapsed().as_secs_f64();
            eprintln!("round {round} shared={shared}: no-grad pass {no_grad:.2} s, 4 forward+backward of 4 rows {update:.2} s");
        }
    }
}
