//! Training configs: the published hyper-parameters (docs/recipe.md, "Hyper-parameters"), overrides, validation, the
//! memory plan, and metrics readable by TensorBoard's own event reader.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rewards::RewardKind;
use trainer::grpo::optim::StateDtype;
use trainer::model::config::Qwen2_5VLConfig;
use trainer::train::config::{AdvantageEstimator, KlPenalty, TrainConfig, WeightDtype};
use trainer::train::memory::{MemoryPlan, ModelShape};
use trainer::train::metrics::MetricsLogger;

fn config_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name)
}

fn load(name: &str, overrides: &[&str]) -> TrainConfig {
    let ov: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(&config_path(name), &ov).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn published_7b_hyper_parameters() {
    let c = load("spatialthinker-7b.toml", &[]);
    assert_eq!(c.rollout.n, 8);
    assert_eq!(c.data.rollout_batch_size, 512);
    assert_eq!(c.actor.global_batch_size, 128);
    assert_eq!(c.optimizer_steps_per_rl_step(), 4);
    assert_eq!(c.mini_batch_responses(), 1024);
    assert_eq!(c.actor.micro_batch_size_per_device_for_update, 4);
    assert_eq!(c.actor.micro_batch_size_per_device_for_experience, 16);
    assert_eq!(c.actor.lr, 1e-6);
    assert_eq!(c.actor.lr_warmup_ratio, 0.0);
    assert!(c.actor.zero_lr_first_step);
    assert_eq!(c.lr_schedule().lr_at(0), 0.0);
    assert_eq!(c.lr_schedule().lr_at(1), 1e-6);
    assert_eq!(c.actor.optimizer_state_dtype, StateDtype::Bf16);
    assert!(c.actor.kahan_summation);
    assert_eq!(c.actor.betas, (0.9, 0.999));
    assert_eq!(c.actor.eps, 1e-8);
    assert_eq!(c.actor.weight_decay, 1e-2);
    assert_eq!(
        (
            c.actor.clip_ratio_low,
            c.actor.clip_ratio_high,
            c.actor.clip_ratio_dual
        ),
        (0.2, 0.3, 3.0)
    );
    assert_eq!(c.actor.max_grad_norm, 1.0);
    assert!(c.algorithm.use_kl_loss);
    assert_eq!(c.algorithm.kl_penalty, KlPenalty::LowVarKl);
    assert_eq!(c.algorithm.adv_estimator, AdvantageEstimator::Grpo);
    assert_eq!(c.algorithm.kl_coef, 1e-2);
    assert_eq!(
        (c.data.max_prompt_length, c.data.max_response_length),
        (6144, 2048)
    );
    assert_eq!((c.data.min_pixels, c.data.max_pixels), (262_144, 4_194_304));
    assert_eq!(
        (c.rollout.temperature, c.rollout.top_p, c.rollout.top_k),
        (1.0, 1.0, -1)
    );
    assert_eq!(
        (
            c.rollout.val_temperature,
            c.rollout.val_n,
            c.data.val_batch_size
        ),
        (0.5, 1, 8)
    );
    assert_eq!(
        (
            c.trainer.max_steps,
            c.trainer.val_freq,
            c.trainer.save_freq,
            c.trainer.save_limit
        ),
        (75, 5, 5, 1)
    );
    assert!(c.trainer.val_before_train);
    assert!(!c.model.freeze_vision_tower);
    assert_eq!(c.model.dtype, WeightDtype::Bf16);
    assert_eq!(c.reward.kind, RewardKind::Spatial);
    assert_eq!(
        (c.data.prompt_key.as_str(), c.data.answer_key.as_str()),
        ("problem", "answer_option_text")
    );
    let u = c.update_config();
    assert_eq!(
        (u.mini_batch_size, u.micro_batch_size, u.kl_coef),
        (1024, 4, Some(1e-2))
    );
}

#[test]
fn variants_differ_only_where_published() {
    let base = load("spatialthinker-7b.toml", &[]);
    let mut three = load("spatialthinker-3b.toml", &[]);
    assert_eq!(three.model.path, "Qwen/Qwen2.5-VL-3B-Instruct");
    three.model.path = base.model.path.clone();
    three.trainer.output_dir = base.trainer.output_dir.clone();
    assert_eq!(three, base);
    let mut vanilla = load("vanilla-grpo-7b.toml", &[]);
    assert_eq!(vanilla.reward.kind, RewardKind::R1v);
    // the vanilla script's prompt column, prefix, answer column and default prompt limit
    assert_eq!(vanilla.data.prompt_key, "question_with_options");
    assert_eq!(vanilla.data.answer_key, "answer_option_text_only");
    assert_eq!(vanilla.data.max_prompt_length, 2048);
    let prefix = vanilla.data.format_prompt.take().unwrap();
    assert!(prefix.starts_with("<image> You FIRST think") && prefix.trim_end().ends_with("Q."));
    vanilla.reward.kind = RewardKind::Spatial;
    vanilla.data.prompt_key = base.data.prompt_key.clone();
    vanilla.data.answer_key = base.data.answer_key.clone();
    vanilla.data.max_prompt_length = base.data.max_prompt_length;
    vanilla.trainer.output_dir = base.trainer.output_dir.clone();
    assert_eq!(vanilla, base);
    let tiny = load("tiny-cpu.toml", &[]);
    assert!(tiny.sft.enabled && tiny.data.train_files == "synthetic");
}

#[test]
fn overrides_apply_before_deserialising() {
    let c = load(
        "spatialthinker-7b.toml",
        &[
            "actor.lr=2e-6",
            "rollout.n = 4",
            "trainer.output_dir=/tmp/x",
            "model.freeze_vision_tower=true",
            "actor.betas=[0.8, 0.99]",
        ],
    );
    assert_eq!(c.actor.lr, 2e-6);
    assert_eq!(c.rollout.n, 4);
    assert_eq!(c.trainer.output_dir, PathBuf::from("/tmp/x"));
    assert!(c.model.freeze_vision_tower);
    assert_eq!(c.actor.betas, (0.8, 0.99));
    // Round trip through TOML.
    let again =
        TrainConfig::from_toml_str(&c.to_toml_string().unwrap(), &[], "round trip").unwrap();
    assert_eq!(again, c);
}

#[test]
fn invalid_configs_are_rejected_with_the_field() {
    let path = config_path("spatialthinker-7b.toml");
    let err = |ov: &str| {
        TrainConfig::load(&path, &[ov.to_string()])
            .unwrap_err()
            .to_string()
    };
    assert!(err("actor.lrr=1").contains("lrr"), "unknown field named");
    assert!(err("rollout.n=1").contains("rollout.n"));
    assert!(err("rollout.max_num_seqs=0").contains("rollout.max_num_seqs"));
    assert!(err("rollout.kv_cache_gib=-1.0").contains("rollout.kv_cache_gib"));
    // the pre-engine name of max_num_seqs is still read
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("max_num_seqs = 64", "generation_batch_size = 12");
    let old_name = TrainConfig::from_toml_str(&text, &[], "old-name.toml").unwrap();
    assert_eq!(old_name.rollout.max_num_seqs, 12);
    assert!(err("actor.global_batch_size=100").contains("rollout_batch_size"));
    assert!(err("actor.micro_batch_size_per_device_for_update=3")
        .contains("micro_batch_size_per_device_for_update"));
    assert!(err("actor.lr=\"fast\"").contains("lr"));
    assert!(err("noequals").contains("section.key=value"));
    assert!(err("actor.lr.x=1").contains("not a table"));
    assert!(err("algorithm.kl_penalty=\"kl\"").contains("low_var_kl"));
}

/// The published Qwen2.5-VL-7B-Instruct `config.json`, parsed by the model's config type.
fn qwen25vl_7b_config() -> Qwen2_5VLConfig {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/qwen25vl/config_7b_published.json"
    );
    Qwen2_5VLConfig::from_json_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn memory_plan_counts_and_refuses() {
    let shape = ModelShape::from_config(&qwen25vl_7b_config());
    // Qwen2.5-VL-7B-Instruct has 8,292,166,656 parameters.
    assert_eq!(shape.text_params() + shape.vision_params(), 8_292_166_656);
    let c = load("spatialthinker-7b.toml", &[]);
    let gib = 1u64 << 30;
    let plan = MemoryPlan::estimate(&c, &shape, 80 * gib);
    println!("{plan}");
    // bf16 weights and grads, 3 bf16 optimizer buffers: 2 + 2 + 6 bytes per parameter.
    assert_eq!(plan.weights, 8_292_166_656 * 2);
    assert_eq!(plan.optimizer, 8_292_166_656 * 6);
    assert_eq!(plan.reference, 0, "offloaded");
    let err = MemoryPlan::estimate(&c, &shape, 24 * gib)
        .check()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not fit") || err.contains("needs"),
        "{err}"
    );
    assert!(
        err.contains("optimizer states"),
        "the refusal prints the plan: {err}"
    );
    assert!(
        MemoryPlan::estimate(&c, &shape, 0).check().is_ok(),
        "unknown capacity is not checked"
    );
}

#[test]
fn metrics_jsonl_and_tensorboard_events() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = MetricsLogger::create(dir.path()).unwrap();
        for step in 1..=3u64 {
            let mut m = BTreeMap::new();
            m.insert("reward/mean".to_string(), 0.25 * step as f64);
            m.insert("actor/grad_norm".to_string(), 1.5);
            m.insert("actor/kl_loss".to_string(), f64::NAN);
            log.log(step, &m).unwrap();
        }
    }
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["step"], 3);
    assert_eq!(lines[2]["reward/mean"], 0.75);
    assert!(lines[2]["actor/kl_loss"].is_null());

    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if !python.exists() {
        eprintln!(
            "skipping the TensorBoard reader check: {} not found",
            python.display()
        );
        return;
    }
    let script = r#"
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1]); acc.Reload()
for tag in sorted(acc.Tags()["scalars"]):
    print(tag, [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)])
"#;
    let out = std::process::Command::new(python)
        .args([
            "-c",
            script,
            dir.path().join("tensorboard").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(
        stdout.contains("reward/mean [(1, 0.25), (2, 0.5), (3, 0.75)]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("actor/grad_norm [(1, 1.5), (2, 1.5), (3, 1.5)]"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("kl_loss"),
        "non-finite values are not written: {stdout}"
    );
}
