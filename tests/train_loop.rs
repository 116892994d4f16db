//! The training loop on a tiny Qwen2.5-VL (the `tiny3b` fixture: real vocabulary, width 16) and a
//! synthetic dataset: exact resume, a GRPO step on the real model moving log-probs the right way,
//! and `transformers` loading a checkpoint with the same logits.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Kind, Tensor};
use trainer::grpo::actor::{compute_log_probs, update_actor, RolloutBatch};
use trainer::grpo::advantage::{grpo_advantages, token_advantages, GRPO_EPS};
use trainer::grpo::optim::AnyPrecisionAdamW;
use trainer::model::{get_rope_index, LogitsAt, Qwen2_5VLForConditionalGeneration};
use trainer::processor::Processor;
use trainer::train::checkpoint::load_model_tensors;
use trainer::train::config::TrainConfig;
use trainer::train::policy::{ModelPolicy, SequenceRef};
use trainer::train::rollout::response_mask;
use trainer::train::TrainerOptions;
use trainer::train::{Trainer, DEFAULT_CONFIG};

use common::{encode_first, root, synthetic, tiny_model};

/// The embedded default shrunk to seconds: fixture model, no SFT, 2 prompts × 2 responses of at
/// most 6 tokens, a checkpoint every 2 steps.
fn config(out: &Path, data: &Path, max_steps: usize) -> TrainConfig {
    config_with(out, data, max_steps, &[])
}

fn config_with(out: &Path, data: &Path, max_steps: usize, extra: &[&str]) -> TrainConfig {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let mut overrides: Vec<String> = [
        format!("model.path={}", q(&tiny_model())),
        format!("trainer.output_dir={}", q(out)),
        format!("data.train_files={}", q(data)),
        format!("data.val_files={}", q(data)),
        format!("trainer.max_steps={max_steps}"),
        "sft.enabled=false".into(),
        "trainer.val_before_train=false".into(),
        "trainer.val_freq=0".into(),
        "trainer.save_freq=2".into(),
        "trainer.save_limit=3".into(),
        "data.rollout_batch_size=2".into(),
        "actor.global_batch_size=1".into(),
        "rollout.n=2".into(),
        "actor.micro_batch_size_per_device_for_update=1".into(),
        "actor.micro_batch_size_per_device_for_experience=2".into(),
        "data.max_response_length=6".into(),
        "actor.lr=1e-2".into(),
    ]
    .into();
    overrides.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_toml_str(DEFAULT_CONFIG, &overrides, "test").unwrap()
}

fn run(cfg: TrainConfig, resume: Option<PathBuf>) -> PathBuf {
    let mut t = Trainer::new(
        cfg,
        TrainerOptions {
            resume,
            ..Default::default()
        },
    )
    .unwrap();
    t.run()
        .unwrap()
        .checkpoint
        .expect("a checkpoint at the end")
}

#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 3);
    let straight = run(config(&dir.path().join("a"), &data, 4), None);
    let half = run(config(&dir.path().join("b"), &data, 2), None);
    assert!(half.ends_with("checkpoint-2"));
    let resumed = run(
        config(&dir.path().join("b"), &data, 4),
        Some(dir.path().join("b")),
    );
    assert!(straight.ends_with("checkpoint-4") && resumed.ends_with("checkpoint-4"));

    let a = load_model_tensors(&straight).unwrap();
    let b = load_model_tensors(&resumed).unwrap();
    let mid = load_model_tensors(&half).unwrap();
    assert_eq!(a.len(), b.len());
    let mut moved = 0.0f64;
    for (((na, ta), (nb, tb)), (_, tm)) in a.iter().zip(&b).zip(&mid) {
        assert_eq!(na, nb);
        assert_eq!(ta.kind(), Kind::Float);
        let diff = f64::try_from((ta - tb).abs().max()).unwrap();
        assert_eq!(
            diff, 0.0,
            "{na}: straight and resumed runs differ by {diff}"
        );
        moved = moved.max(f64::try_from((ta - tm).abs().max()).unwrap());
    }
    assert!(moved > 0.0, "steps 3-4 changed no weight");
}

fn sequence_log_probs(
    model: &Qwen2_5VLForConditionalGeneration,
    seqs: &[SequenceRef<'_>],
    mask: &Tensor,
) -> Vec<f64> {
    let lp =
        compute_log_probs(&mut ModelPolicy::new(model, seqs.to_vec(), 1.0), 4, 4, None).unwrap();
    Vec::<f64>::try_from((lp * mask).sum_dim_intlist(1, false, Kind::Double)).unwrap()
}

#[test]
fn grpo_step_on_the_model_raises_the_best_response_and_lowers_the_worst() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 3);
    let model =
        Qwen2_5VLForConditionalGeneration::load(&tiny_model(), Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_model_dir(&tiny_model()).unwrap();
    let prompts = encode_first(&processor, &data, 1);
    let responses: Vec<Vec<i64>> = ["<answer>(A)", "<think>no", "<scene>{}</scene>", "(B) left"]
        .iter()
        .map(|t| processor.tokenize(t).unwrap())
        .collect();
    let seqs: Vec<SequenceRef<'_>> = responses
        .iter()
        .map(|r| SequenceRef {
            prompt: &prompts[0],
            response: r,
        })
        .collect();
    let lengths: Vec<usize> = responses.iter().map(Vec::len).collect();
    let mask = response_mask(&lengths, Device::Cpu).unwrap();
    let before = sequence_log_probs(&model, &seqs, &mask);

    let params: Vec<(String, Tensor)> = model.named_tensors();
    for (_, t) in &params {
        let _ = t.shallow_clone().set_requires_grad(true);
    }
    let cfg = config(dir.path(), &data, 1);
    let mut opt = AnyPrecisionAdamW::new(params, cfg.adamw_config()).unwrap();
    let old =
        compute_log_probs(&mut ModelPolicy::new(&model, seqs.clone(), 1.0), 4, 4, None).unwrap();
    // one group of four: response 0 is best, response 1 worst
    let batch = batch_from_scores(
        mask.shallow_clone(),
        old,
        None,
        &[1.0, 0.0, 0.5, 0.4],
        &[7; 4],
    );
    let mut update = cfg.update_config();
    update.mini_batch_size = 4;
    update.micro_batch_size = 2;
    update.kl_coef = None;
    let m = update_actor(
        &update,
        &mut ModelPolicy::new(&model, seqs.clone(), 1.0),
        &batch,
        &mut opt,
        1e-3,
    )
    .unwrap();
    assert_eq!(m.grad_norms.len(), 1);
    assert_eq!(m.micro_batches, 2);
    let after = sequence_log_probs(&model, &seqs, &mask);
    assert!(
        after[0] > before[0],
        "best response: {} -> {}",
        before[0],
        after[0]
    );
    assert!(
        after[1] < before[1],
        "worst response: {} -> {}",
        before[1],
        after[1]
    );
}

#[test]
fn transformers_loads_a_checkpoint_with_the_same_logits() {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh --python (this test runs transformers)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 3);
    // the full output vocabulary, so every logit is comparable (the embedded default restricts it)
    let ckpt = run(
        config_with(
            &dir.path().join("run"),
            &data,
            2,
            &["model.output_vocab=\"full\""],
        ),
        None,
    );

    let model = Qwen2_5VLForConditionalGeneration::load(&ckpt, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_model_dir(&ckpt).unwrap();
    let prompt = encode_first(&processor, &data, 1).remove(0);
    let ids = vec![prompt.ids.clone()];
    let mask = vec![vec![1i64; prompt.ids.len()]];
    let rope = get_rope_index(&model.config, &ids, &mask, &[prompt.grid]).unwrap();
    let input_ids = Tensor::from_slice(&prompt.ids).view([1, -1]);
    let images = trainer::train::rollout::vision_inputs(&[&prompt]).unwrap();
    let ours = model
        .forward(
            &input_ids,
            &rope.to_tensor(Device::Cpu).unwrap(),
            &input_ids.ones_like(),
            Some(&images),
            None,
            LogitsAt::All,
        )
        .unwrap();

    let inputs = dir.path().join("inputs.safetensors");
    let out = dir.path().join("logits.safetensors");
    Tensor::write_safetensors(
        &[
            ("input_ids", input_ids.shallow_clone()),
            ("pixel_values", prompt.pixel_values.shallow_clone()),
            (
                "image_grid_thw",
                Tensor::from_slice(&prompt.grid).view([1, 3]),
            ),
        ],
        &inputs,
    )
    .unwrap();
    let status = Command::new(&python)
        .arg(root().join("scripts/check_checkpoint_logits.py"))
        .arg(&ckpt)
        .arg(&inputs)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "transformers could not load {}:\n{}",
        ckpt.display(),
        String::from_utf8_lossy(&status.stderr)
    );
    let theirs = Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "logits")
        .unwrap()
        .1;
    // our logits set the untrained ids >= 151665 to -inf; compare the tokenizer's ids
    let vocab = trainer::tokenizer::TOKENIZER_VOCAB;
    let diff = (ours.narrow(2, 0, vocab) - theirs.narrow(2, 0, vocab))
        .abs()
        .max();
    let diff = f64::try_from(diff).unwrap();
    let scale = f64::try_from(theirs.narrow(2, 0, vocab).abs().max()).unwrap();
    assert!(
        diff <= 1e-4,
        "max |logit difference| {diff} (max |logit| {scale})"
    );
    eprintln!("transformers vs ours: max |logit difference| {diff:e} (max |logit| {scale})");
}

/// The update's batch from one reward per response and its group id: GRPO advantages
/// broadcast over the response mask, as the trainer's advantage phase builds it.
fn batch_from_scores(
    response_mask: Tensor,
    old_log_probs: Tensor,
    ref_log_probs: Option<Tensor>,
    scores: &[f32],
    groups: &[u64],
) -> RolloutBatch {
    let adv = grpo_advantages(scores, groups, GRPO_EPS).unwrap();
    let advantages = token_advantages(&adv, &response_mask).unwrap();
    RolloutBatch::new(response_mask, old_log_probs, ref_log_probs, advantages).unwrap()
}
