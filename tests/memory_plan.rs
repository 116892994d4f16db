//! The device-memory plan: hand-computed items of the published 7B, the `plan` command's exit
//! codes and fixes on the 7B/3B recipes, and `train`'s refusal before it touches the dataset.

use std::path::PathBuf;
use std::process::{Command, Output};

use trainer::model::config::Qwen2_5VLConfig;
use trainer::train::config::TrainConfig;
use trainer::train::memory::{MemoryPlan, ModelShape, PlanPhase};

const GIB: u64 = 1 << 30;
/// Parameters of Qwen2.5-VL-7B-Instruct.
const PARAMS_7B: u64 = 8_292_166_656;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn recipe(name: &str, overrides: &[&str]) -> TrainConfig {
    let ov: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(&repo(&format!("configs/{name}")), &ov).unwrap()
}

/// The shape of a shipped `configs/models/<name>/config.json`.
fn shipped_shape(name: &str) -> ModelShape {
    let path = repo(&format!("configs/models/{name}/config.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    ModelShape::from_config(&Qwen2_5VLConfig::from_json_str(&text).unwrap())
}

fn spatialthinker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn shipped_configs_have_the_published_shapes() {
    let s7 = shipped_shape("Qwen2.5-VL-7B-Instruct");
    assert_eq!(s7.params(), PARAMS_7B);
    assert_eq!(
        (s7.hidden_size, s7.num_hidden_layers, s7.num_key_value_heads),
        (3584, 28, 4)
    );
    assert!(!s7.tie_word_embeddings);
    let s3 = shipped_shape("Qwen2.5-VL-3B-Instruct");
    assert!(s3.tie_word_embeddings);
    assert_eq!(
        (s3.hidden_size, s3.num_hidden_layers, s3.vocab_size),
        (2048, 36, 151_936)
    );
    assert_eq!(s3.vision_out_hidden_size, 2048);
    // by hand: embedding 151,936 x 2,048 (tied); 36 layers of attention (q, o: 2,048^2; k, v:
    // 2,048 x 256; biases of q, k, v), MLP 3 x 2,048 x 11,008 and two norms; final norm
    let layer = 2 * 2048 * 2048 + 2048 + 2 * (2048 * 256 + 256) + 3 * 2048 * 11008 + 2 * 2048;
    assert_eq!(s3.text_params(), 151_936 * 2048 + 36 * layer + 2048);
    // vision: patch embedding 1,176 x 1,280; 32 blocks; merger 5,120^2 + 5,120 x 2,048
    let block = 2 * 1280
        + (1280 * 3840 + 3840)
        + (1280 * 1280 + 1280)
        + 2 * (1280 * 3420 + 3420)
        + (3420 * 1280 + 1280);
    let merger = 1280 + (5120 * 5120 + 5120) + (5120 * 2048 + 2048);
    assert_eq!(s3.vision_params(), 1176 * 1280 + 32 * block + merger);
}

#[test]
fn the_7b_plan_counts_state_and_pool_exactly() {
    let shape = shipped_shape("Qwen2.5-VL-7B-Instruct");
    let cfg = recipe("spatialthinker-7b.toml", &[]);
    let plan = MemoryPlan::estimate(&cfg, &shape, 141 * GIB);
    println!("{plan}");
    // bf16 weights and gradients, AdamW m, v and Kahan buffers in bf16: 2 + 2 + 6 bytes a param
    assert_eq!(plan.weights, PARAMS_7B * 2);
    assert_eq!(plan.grads, PARAMS_7B * 2);
    assert_eq!(plan.optimizer, PARAMS_7B * 6);
    assert_eq!(plan.reference, 0, "the recipe offloads the reference");
    // 64 rows + 1 prefill row of 8,192 slots; K and V of 28 layers x 4 heads x 128 in bf16
    assert_eq!(plan.kv_cache, 65 * 8192 * 2 * 28 * 4 * 128 * 2);
    // the streamed reference keeps lm_head [152064, 3584], the final norm, the patch embedding
    // and the merger on the device, plus one visiting decoder layer (larger than a vision block)
    let streamed = plan
        .items
        .iter()
        .find(|i| i.name.starts_with("reference, streamed"))
        .unwrap();
    let layer = 2 * 3584 * 3584 + 3584 + 2 * (3584 * 512 + 512) + 3 * 3584 * 18944 + 2 * 3584;
    let merger = 1280 + (5120 * 5120 + 5120) + (5120 * 3584 + 3584);
    let on_device = 152_064 * 3584 + 3584 + 1176 * 1280 + merger + layer;
    assert_eq!(streamed.bytes, [None, Some(on_device * 2), None]);
    // every phase peak is its whole-phase items plus its largest moment
    for phase in PlanPhase::ALL {
        let i = phase as usize;
        let of = |momentary: bool| {
            plan.items
                .iter()
                .filter(move |it| it.momentary == momentary)
                .filter_map(move |it| it.bytes[i])
        };
        let want = of(false).sum::<u64>() + of(true).max().unwrap_or(0);
        assert_eq!(plan.phase_peak(phase), want, "{}", phase.name());
    }
    assert_eq!(plan.fits(), Some(true));
    assert!(plan.peak() < 141 * GIB * 9 / 10);
}

#[test]
fn options_move_the_plan_the_right_way() {
    let shape = shipped_shape("Qwen2.5-VL-7B-Instruct");
    let base = MemoryPlan::estimate(&recipe("spatialthinker-7b.toml", &[]), &shape, 141 * GIB);
    // without checkpointing every layer's activations are kept: the 141 GiB plan no longer
    // fits, and turning checkpointing back on is named as a fix
    let no_ckpt = MemoryPlan::estimate(
        &recipe(
            "spatialthinker-7b.toml",
            &["model.gradient_checkpointing=false"],
        ),
        &shape,
        141 * GIB,
    );
    assert!(no_ckpt.phase_peak(PlanPhase::Update) > base.phase_peak(PlanPhase::Update) + 100 * GIB);
    assert_eq!(no_ckpt.fits(), Some(false));
    let fixes = no_ckpt.fixes();
    assert!(
        fixes
            .single
            .iter()
            .any(|f| f.setting == "model.gradient_checkpointing=true"),
        "{fixes:?}"
    );
    // without shared prompts a 4-row update micro-batch runs 4 × 8,192 decoder tokens instead
    // of 2 prompts of 6,144 + 4 responses of 2,048: the recomputed layer grows by the ratio, the
    // 4-GPU layout needs a device of 74.2 GiB instead of 66.4, and on 70 GiB turning sharing back
    // on is an exact fix
    let unshared_cfg = recipe(
        "spatialthinker-7b.toml",
        &["actor.shared_prompt_forward=false"],
    );
    let unshared = MemoryPlan::estimate(&unshared_cfg, &shape, 141 * GIB);
    let layer = |p: &MemoryPlan| {
        p.items
            .iter()
            .find(|i| i.name.starts_with("one decoder layer recomputed"))
            .and_then(|i| i.bytes[PlanPhase::Update as usize])
            .unwrap() as f64
    };
    // per token, plus the layer's largest weight-gradient temporary (MLP 18,944 × 3,584 in bf16)
    let weight_grad = 18944.0 * 3584.0 * 2.0;
    let ratio = (layer(&unshared) - weight_grad) / (layer(&base) - weight_grad);
    assert!((ratio - 32768.0 / 20480.0).abs() < 1e-9, "{ratio}");
    assert!(unshared.phase_peak(PlanPhase::LogProbs) > base.phase_peak(PlanPhase::LogProbs));
    let four = MemoryPlan::estimate_ranks(&unshared_cfg, &shape, 70 * GIB, 4);
    assert_eq!(four.fits(), Some(false));
    assert!(four
        .fixes()
        .single
        .iter()
        .any(|f| f.setting == "actor.shared_prompt_forward=true" && f.note.is_empty()));
    // a resident reference is counted in every phase
    let resident = MemoryPlan::estimate(
        &recipe("spatialthinker-7b.toml", &["model.offload_reference=false"]),
        &shape,
        0,
    );
    assert_eq!(resident.reference, PARAMS_7B * 2);
    // (the log-prob passes trade the streamed head and layer, 1.5 GiB, for the 15.4 GiB model)
    for phase in PlanPhase::ALL {
        assert!(resident.phase_peak(phase) > base.phase_peak(phase) + 13 * GIB);
    }
    // a smaller KV budget shrinks the rollout phase only
    let small_pool = MemoryPlan::estimate(
        &recipe("spatialthinker-7b.toml", &["rollout.kv_cache_gib=8.0"]),
        &shape,
        0,
    );
    assert!(small_pool.kv_cache <= 8 * GIB);
    assert!(small_pool.phase_peak(PlanPhase::Rollout) < base.phase_peak(PlanPhase::Rollout));
    assert_eq!(
        small_pool.phase_peak(PlanPhase::Update),
        base.phase_peak(PlanPhase::Update)
    );
    // four ranks share the step's 4,096 responses and (ZeRO-1) the optimizer state: each holds
    // a quarter of it; the weights stay replicated
    let four = MemoryPlan::estimate_ranks(&recipe("spatialthinker-7b.toml", &[]), &shape, 0, 4);
    let shown = four.to_string();
    assert!(shown.contains("1024 responses"), "{shown}");
    assert_eq!(four.optimizer, PARAMS_7B.div_ceil(4) * 2 * 3);
    assert_eq!(four.weights, base.weights);
    let replicated = MemoryPlan::estimate_ranks(
        &recipe(
            "spatialthinker-7b.toml",
            &["distributed.shard_optimizer=false"],
        ),
        &shape,
        0,
        4,
    );
    assert_eq!(replicated.optimizer, base.optimizer);
}

#[test]
fn plan_fits_the_7b_on_141_gib_not_on_80() {
    let out = spatialthinker(&[
        "plan",
        "--config",
        repo("configs/spatialthinker-7b.toml").to_str().unwrap(),
        "--gpus",
        "1",
        "--gpu-memory-gib",
        "141",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("fits"), "{stdout}");
    for phase in [
        "rollout",
        "log-probs",
        "update",
        "phase peak",
        "allocator headroom",
    ] {
        assert!(stdout.contains(phase), "{phase}: {stdout}");
    }

    let out = spatialthinker(&[
        "plan",
        "--config",
        repo("configs/spatialthinker-7b.toml").to_str().unwrap(),
        "--gpu-memory-gib",
        "80",
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(stderr.contains("largest items"), "{stderr}");
    assert!(stderr.contains("optimizer states"), "{stderr}");
    assert!(stderr.contains("--set "), "names the changes: {stderr}");
    assert!(stderr.contains("needs a device of at least"), "{stderr}");
}

#[test]
fn plan_fits_the_3b_on_80_gib() {
    let out = spatialthinker(&[
        "plan",
        "--config",
        repo("configs/spatialthinker-3b.toml").to_str().unwrap(),
        "--gpu-memory-gib",
        "80",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn plan_names_where_a_shape_is_missing() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
        .args(["plan", "--set", "model.path=\"someone/NotCached-VL\""])
        .env("HF_HOME", cache.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Hugging Face cache"), "{stderr}");
}

#[test]
fn train_refuses_before_touching_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = format!(
        "trainer.output_dir=\"{}\"",
        dir.path().join("run").display()
    );
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "train".to_string(),
            "-q".into(),
            "--config".into(),
            repo("configs/tiny-cpu.toml").display().to_string(),
            "--set".into(),
            out_dir.clone(),
            "--set".into(),
            "trainer.device_memory_gib=0.001".into(),
            "--set".into(),
            "data.train_files=\"/nonexistent\"".into(),
        ];
        for e in extra {
            a.push("--set".into());
            a.push(e.to_string());
        }
        a
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        spatialthinker(&refs)
    };

    let out = run(args(&[]));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the training plan needs"), "{stderr}");
    assert!(stderr.contains("MiB usable"), "names the numbers: {stderr}");
    assert!(
        !stderr.contains("/nonexistent"),
        "refused after the data: {stderr}"
    );

    let out = run(args(&["trainer.allow_overcommit=true"]));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("allow_overcommit"), "warns: {stderr}");
    assert!(
        stderr.contains("/nonexistent"),
        "gets past the plan to the data: {stderr}"
    );
}
