//! LoRA on the tiny fixture model (`tiny3b`, real vocabulary) with a synthetic dataset: the
//! reference is exactly the base with the adapters off, gradients reach only the adapters (also
//! through gradient checkpointing), a GRPO run with adapters resumes bit for bit, and PEFT and
//! transformers agree with our adapters and merged exports (scripts/peft_parity.py).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Kind, Tensor};
use trainer::grpo::actor::{compute_log_probs, PolicyLogprobs};
use trainer::model::lora::LoraConfig;
use trainer::model::{get_rope_index, LogitsAt, Qwen2_5VLForConditionalGeneration};
use trainer::processor::Processor;
use trainer::train::config::TrainConfig;
use trainer::train::policy::{ModelPolicy, SequenceRef};
use trainer::train::rollout::PromptItem;
use trainer::train::{Trainer, TrainerOptions, DEFAULT_CONFIG};

use common::{encode_first, root, synthetic, tiny_model};

fn load_tiny() -> Qwen2_5VLForConditionalGeneration {
    Qwen2_5VLForConditionalGeneration::load(&tiny_model(), Device::Cpu, Kind::Float).unwrap()
}

fn lora4() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    }
}

/// Gives every adapter tensor seeded non-zero values (fresh adapters are the identity).
fn randomise_adapters(model: &Qwen2_5VLForConditionalGeneration, seed: i64) {
    tch::manual_seed(seed);
    let _g = tch::no_grad_guard();
    for (_, t) in model.lora_tensors() {
        let mut t = t.shallow_clone();
        t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.3));
    }
}

/// Response log-probs `[B, T]` of `responses` to `prompt` under `model` (no grad).
fn log_probs(
    model: &Qwen2_5VLForConditionalGeneration,
    prompt: &PromptItem,
    responses: &[Vec<i64>],
) -> Tensor {
    let seqs: Vec<SequenceRef<'_>> = responses
        .iter()
        .map(|r| SequenceRef {
            prompt,
            response: r,
        })
        .collect();
    let n = seqs.len();
    compute_log_probs(&mut ModelPolicy::new(model, seqs, 1.0), n, n, None).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

fn fixture_prompt(dir: &Path) -> (Processor, PromptItem, Vec<Vec<i64>>) {
    let data = synthetic(dir, 3);
    let processor = Processor::from_model_dir(&tiny_model()).unwrap();
    let prompt = encode_first(&processor, &data, 1).remove(0);
    let responses = ["<answer>(A)", "<think>left of</think>"]
        .iter()
        .map(|t| processor.tokenize(t).unwrap())
        .collect();
    (processor, prompt, responses)
}

#[test]
fn adapters_off_is_exactly_the_base_model_on_the_same_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, prompt, responses) = fixture_prompt(dir.path());
    let mut policy = load_tiny();
    let trainable = policy.attach_lora(&lora4(), 7).unwrap();
    // 2 layers × 7 decoder modules × (A, B); the vision tower is left alone by default
    assert_eq!(trainable.len(), 28);
    assert!(trainable.iter().all(|(n, t)| n
        .starts_with("base_model.model.model.language_model.layers.")
        && t.kind() == Kind::Float
        && t.requires_grad()));
    let base = load_tiny();
    let fresh = log_probs(&policy, &prompt, &responses);
    let plain = log_probs(&base, &prompt, &responses);
    // B = 0 at initialisation: the adapted model is the base model
    assert_eq!(max_diff(&fresh, &plain), 0.0);

    randomise_adapters(&policy, 1);
    let adapted = log_probs(&policy, &prompt, &responses);
    let off = policy.without_adapters().unwrap();
    let reference = log_probs(&off, &prompt, &responses);
    let moved = max_diff(&adapted, &plain);
    assert!(moved > 1e-3, "adapters changed log-probs by only {moved}");
    assert_eq!(
        max_diff(&reference, &plain),
        0.0,
        "adapters off must give the base model's log-probs bit for bit"
    );
    // the reference shares the policy's base tensors: nothing was copied
    for ((n, a), (_, b)) in policy.named_tensors().iter().zip(off.named_tensors()) {
        assert_eq!(a.data_ptr(), b.data_ptr(), "{n} was copied");
        assert!(!a.requires_grad(), "{n}: the base must stay frozen");
    }
    eprintln!("adapters moved log-probs by {moved:.4}; adapters off vs base: 0 (bitwise)");
}

#[test]
fn gradients_reach_only_the_adapters_and_checkpointing_gives_the_same_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (_, prompt, responses) = fixture_prompt(dir.path());
    let mut model = load_tiny();
    let cfg = LoraConfig {
        vision: true,
        ..lora4()
    };
    let params = model.attach_lora(&cfg, 3).unwrap();
    // the vision blocks' MLPs match gate/up/down_proj too: 28 + 2 blocks × 3 × 2
    assert_eq!(params.len(), 40);
    randomise_adapters(&model, 2);
    let seqs: Vec<SequenceRef<'_>> = responses
        .iter()
        .map(|r| SequenceRef {
            prompt: &prompt,
            response: r,
        })
        .collect();
    let grads = |checkpointing: bool| -> Vec<Tensor> {
        for (_, p) in &params {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
        let mut policy =
            ModelPolicy::new(&model, seqs.clone(), 1.0).with_gradient_checkpointing(checkpointing);
        let lp = policy.response_log_probs(&[0, 1]).unwrap();
        let loss = lp.sum(Kind::Float);
        policy.backward(&loss).unwrap();
        params.iter().map(|(_, p)| p.grad().copy()).collect()
    };
    let plain = grads(false);
    let recomputed = grads(true);
    let mut worst = 0.0f64;
    for ((name, _), (a, b)) in params.iter().zip(plain.iter().zip(&recomputed)) {
        assert!(a.defined(), "{name} got no gradient");
        worst = worst.max(max_diff(a, b));
    }
    assert!(
        worst < 1e-6,
        "checkpointed adapter gradients differ by {worst}"
    );
    assert!(
        plain
            .iter()
            .map(|g| f64::try_from(g.abs().sum(Kind::Double)).unwrap())
            .sum::<f64>()
            > 0.0
    );
    for (name, w) in model.named_tensors() {
        assert!(
            !w.grad().defined(),
            "base weight {name} received a gradient"
        );
    }
    eprintln!("adapter gradients with and without checkpointing: max difference {worst:e}");
}

/// The embedded default shrunk to seconds with LoRA r = 4: fixture model, no SFT, 2 prompts × 2
/// responses of at most 6 tokens, the full output vocabulary (every logit comparable).
fn config(out: &Path, data: &Path, max_steps: usize, extra: &[&str]) -> TrainConfig {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let mut overrides: Vec<String> = [
        format!("model.path={}", q(&tiny_model())),
        format!("trainer.output_dir={}", q(out)),
        format!("data.train_files={}", q(data)),
        format!("data.val_files={}", q(data)),
        format!("trainer.max_steps={max_steps}"),
        "model.lora={r = 4, alpha = 8.0}".into(),
        "model.output_vocab=\"full\"".into(),
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

fn read(path: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn grpo_with_adapters_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 3);
    // rewards that differ within a group, so every step moves the adapters
    let extra = [
        "model.output_vocab=\"dataset\"",
        "rollout.n=4",
        "data.max_response_length=16",
    ];
    let straight = run(config(&dir.path().join("a"), &data, 4, &extra), None);
    let half = run(config(&dir.path().join("b"), &data, 2, &extra), None);
    let resumed = run(
        config(&dir.path().join("b"), &data, 4, &extra),
        Some(dir.path().join("b")),
    );
    // the checkpoint is an adapter folder: no copy of the base weights
    for ckpt in [&straight, &half, &resumed] {
        assert!(ckpt.join("adapter_model.safetensors").is_file());
        assert!(ckpt.join("adapter_config.json").is_file());
        assert!(!ckpt.join("model.safetensors.index.json").exists());
    }
    let mut moved = 0.0f64;
    for file in ["adapter_model.safetensors", "optimizer.safetensors"] {
        let (a, b, m) = (
            read(&straight.join(file)),
            read(&resumed.join(file)),
            read(&half.join(file)),
        );
        assert_eq!(a.len(), b.len());
        for (((na, ta), (nb, tb)), (_, tm)) in a.iter().zip(&b).zip(&m) {
            assert_eq!(na, nb);
            let diff = max_diff(ta, tb);
            assert_eq!(
                diff, 0.0,
                "{file} {na}: straight and resumed differ by {diff}"
            );
            moved = moved.max(max_diff(ta, tm));
        }
    }
    assert!(moved > 1e-3, "steps 3-4 moved the adapters by only {moved}");
    eprintln!("4 steps straight = 2 + resume + 2: adapters and optimizer state bitwise equal (steps 3-4 moved them by up to {moved:.3e})");
}

/// Our logits `[1, L, V]` of the prompt under `model`, and the inputs file the Python side reads.
fn our_logits(
    model: &Qwen2_5VLForConditionalGeneration,
    prompt: &PromptItem,
    inputs: &Path,
) -> Tensor {
    let ids = vec![prompt.ids.clone()];
    let mask = vec![vec![1i64; prompt.ids.len()]];
    let rope = get_rope_index(&model.config, &ids, &mask, &[prompt.grid]).unwrap();
    let input_ids = Tensor::from_slice(&prompt.ids).view([1, -1]);
    let images = trainer::train::rollout::vision_inputs(&[prompt]).unwrap();
    Tensor::write_safetensors(
        &[
            ("input_ids", input_ids.shallow_clone()),
            ("pixel_values", prompt.pixel_values.shallow_clone()),
            (
                "image_grid_thw",
                Tensor::from_slice(&prompt.grid).view([1, 3]),
            ),
        ],
        inputs,
    )
    .unwrap();
    tch::no_grad(|| {
        model
            .forward(
                &input_ids,
                &rope.to_tensor(Device::Cpu).unwrap(),
                &input_ids.ones_like(),
                Some(&images),
                None,
                LogitsAt::All,
            )
            .unwrap()
    })
}

fn python(args: &[&dyn AsRef<std::ffi::OsStr>]) {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh --python (this test runs peft and transformers)",
        python.display()
    );
    let mut cmd = Command::new(&python);
    for a in args {
        cmd.arg(a);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "python {:?} failed:\n{}",
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_logits(path: &Path) -> Tensor {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "logits")
        .unwrap()
        .1
}

/// The largest logit difference over the tokenizer's ids (ours set the untrained ids to -inf).
fn logit_diff(ours: &Tensor, theirs: &Tensor) -> (f64, f64) {
    let v = trainer::tokenizer::TOKENIZER_VOCAB;
    let (a, b) = (ours.narrow(2, 0, v), theirs.narrow(2, 0, v));
    (max_diff(&a, &b), f64::try_from(b.abs().max()).unwrap())
}

#[test]
fn peft_transformers_and_ours_agree_on_adapters_and_merged_exports() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 3);
    // the dataset's output vocabulary and 4 responses of up to 16 tokens, so rewards differ
    // within a group and the 2 steps move the adapters (B leaves zero)
    let ckpt = run(
        config(
            &dir.path().join("run"),
            &data,
            2,
            &[
                "model.output_vocab=\"dataset\"",
                "rollout.n=4",
                "data.max_response_length=16",
            ],
        ),
        None,
    );
    let processor = Processor::from_model_dir(&tiny_model()).unwrap();
    let prompt = encode_first(&processor, &data, 1).remove(0);
    let inputs = dir.path().join("inputs.safetensors");

    // 1. our trained adapter in PEFT
    let mut model = load_tiny();
    model.load_adapter(&ckpt).unwrap();
    let trained_b = model
        .lora_tensors()
        .iter()
        .filter(|(n, _)| n.contains("lora_B"))
        .map(|(_, t)| f64::try_from(t.abs().max()).unwrap())
        .fold(0.0, f64::max);
    assert!(trained_b > 0.0, "2 GRPO steps left every lora_B at zero");
    let ours = our_logits(&model, &prompt, &inputs);
    let out = dir.path().join("peft.safetensors");
    python(&[
        &root().join("scripts/peft_parity.py"),
        &"load",
        &tiny_model(),
        &ckpt,
        &inputs,
        &out,
    ]);
    let (d1, scale) = logit_diff(&ours, &read_logits(&out));
    assert!(
        d1 <= 1e-4,
        "ours vs PEFT on our adapter: {d1} (max |logit| {scale})"
    );

    // 2. an adapter PEFT wrote (random non-zero A and B) in ours
    let peft_dir = dir.path().join("peft-adapter");
    let out2 = dir.path().join("peft-written.safetensors");
    python(&[
        &root().join("scripts/peft_parity.py"),
        &"write",
        &tiny_model(),
        &peft_dir,
        &inputs,
        &out2,
        &"5",
    ]);
    let mut theirs_model = load_tiny();
    theirs_model.load_adapter(&peft_dir).unwrap();
    assert_eq!(theirs_model.lora_tensors().len(), 28);
    let ours2 = our_logits(&theirs_model, &prompt, &inputs);
    let (d2, scale2) = logit_diff(&ours2, &read_logits(&out2));
    let base_gap = logit_diff(
        &our_logits(&load_tiny(), &prompt, &inputs),
        &read_logits(&out2),
    )
    .0;
    assert!(
        d2 <= 1e-4,
        "ours vs PEFT on PEFT's adapter: {d2} (max |logit| {scale2})"
    );
    assert!(
        base_gap > 1e-2,
        "PEFT's adapter barely changes the logits ({base_gap})"
    );

    // 3. the merged export in transformers and in ours, against adapter inference
    let merged = dir.path().join("merged");
    let status = Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
        .args(["export", "--merge"])
        .arg(&ckpt)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let out3 = dir.path().join("merged.safetensors");
    python(&[
        &root().join("scripts/check_checkpoint_logits.py"),
        &merged,
        &inputs,
        &out3,
    ]);
    let (d3, _) = logit_diff(&ours, &read_logits(&out3));
    assert!(
        d3 <= 1e-4,
        "transformers on the merged export vs our adapter: {d3}"
    );
    let merged_model =
        Qwen2_5VLForConditionalGeneration::load(&merged, Device::Cpu, Kind::Float).unwrap();
    let (d4, _) = logit_diff(&ours, &our_logits(&merged_model, &prompt, &inputs));
    assert!(d4 <= 1e-4, "our merged vs our adapter: {d4}");
    // 4. `generate --adapter` and a merged export give the same greedy tokens
    let image = dir.path().join("image.png");
    image::RgbImage::from_fn(56, 56, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 90])
    })
    .save(&image)
    .unwrap();
    let greedy = |model: &Path, adapter: Option<&Path>| -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spatialthinker"));
        cmd.arg("generate").arg("--model").arg(model);
        if let Some(a) = adapter {
            cmd.arg("--adapter").arg(a);
        }
        cmd.arg("--image")
            .arg(&image)
            .args(["--prompt", "Where is the red cube?", "--greedy"])
            .args(["--max-new-tokens", "12", "--json"]);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // (PEFT's random adapter: it moves the logits far enough to change greedy tokens)
    let merged_peft = dir.path().join("merged-peft");
    let status = Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
        .args(["export", "--merge"])
        .arg(&peft_dir)
        .arg("--out")
        .arg(&merged_peft)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let with_adapter = greedy(&tiny_model(), Some(&peft_dir));
    assert_eq!(with_adapter, greedy(&merged_peft, None));
    assert_ne!(
        with_adapter,
        greedy(&tiny_model(), None),
        "the adapter changed no token"
    );
    eprintln!(
        "generate --adapter = merged export: {}",
        with_adapter.trim()
    );
    eprintln!(
        "max |logit difference| (max |logit| {scale:.2}): ours vs PEFT, our adapter {d1:e}; \
         ours vs PEFT, PEFT's adapter {d2:e} (adapter moved logits by {base_gap:.3}); \
         transformers on merged export vs our adapter {d3:e}; our merged vs our adapter {d4:e}"
    );
}

/// The 7B recipe with LoRA r = 64 on the language model, gradient checkpointing on: the
/// trainable parameters are the hand-counted adapters, the reference costs nothing (a copy of the
/// adapters after an adapter warm-up), and the plan
/// fits a 48 GiB device with the KV pool at 24 GiB and the published micro-batch of 4.
#[test]
fn memory_plan_counts_the_adapters_and_no_reference() {
    let root = root();
    let text = std::fs::read_to_string(root.join("configs/spatialthinker-7b.toml")).unwrap();
    let overrides: Vec<String> = [
        "model.lora={r = 64, alpha = 128.0}",
        "rollout.kv_cache_gib=24",
        "trainer.device_memory_gib=48",
    ]
    .map(String::from)
    .to_vec();
    let cfg = TrainConfig::from_toml_str(&text, &overrides, "7b").unwrap();
    assert!(cfg.model.gradient_checkpointing);
    assert_eq!(cfg.actor.micro_batch_size_per_device_for_update, 4);
    let json =
        std::fs::read_to_string(root.join("configs/models/Qwen2.5-VL-7B-Instruct/config.json"))
            .unwrap();
    let shape = trainer::train::memory::ModelShape::from_config(
        &trainer::model::config::Qwen2_5VLConfig::from_json_str(&json).unwrap(),
    );
    let plan = trainer::train::memory::MemoryPlan::estimate(&cfg, &shape, 48 << 30);
    // per layer r × (in + out): q 3584+3584, k 3584+512, v 3584+512, o 3584+3584,
    // gate and up 3584+18944, down 18944+3584 = 90,112; × 64 × 28 layers
    let adapters: u64 = 90_112 * 64 * 28;
    assert_eq!(adapters, 161_480_704);
    assert_eq!(plan.grads, adapters * 4, "f32 adapter gradients only");
    assert_eq!(
        plan.reference, 0,
        "the reference is the base with adapters off"
    );
    assert_eq!(plan.fits(), Some(true), "{plan}");
    // after an adapter warm-up in the same run, the reference holds a frozen f32 copy of it
    let mut warmed = overrides.clone();
    warmed.push("sft={enabled = true, steps = 10, batch_size = 8, lr = 1e-5}".into());
    let warmed = TrainConfig::from_toml_str(&text, &warmed, "7b").unwrap();
    let warmed = trainer::train::memory::MemoryPlan::estimate(&warmed, &shape, 48 << 30);
    assert_eq!(warmed.reference, adapters * 4);
    let without = TrainConfig::from_toml_str(&text, &overrides[1..], "7b").unwrap();
    let full = trainer::train::memory::MemoryPlan::estimate(&without, &shape, 48 << 30);
    assert_eq!(full.fits(), Some(false));
    eprintln!(
        "7B, LoRA r = 64, checkpointing, micro-batch 4, KV pool 24 GiB: peak {:.2} GiB ({:?}); \
         full fine-tuning: {:.2} GiB",
        plan.peak() as f64 / (1u64 << 30) as f64,
        plan.peak_phase(),
        full.peak() as f64 / (1u64 << 30) as f64
    );
}

/// Every setting of the LoRA reward run below, spelled out (not the embedded default, which is
/// tuned separately): the fixture model, short synthetic prompts, 8 prompts × 8 responses of at
/// most 128 tokens per step, one optimiser step per RL step, KL to the reference on, rollouts and
/// validation sampled at the same temperature (what GRPO raises is what validation measures).
const REWARD_RUN: &str = r#"
[model]
dtype = "f32"
freeze_vision_tower = false
offload_reference = false
output_vocab = "dataset"

[data]
max_prompt_length = 1024
max_response_length = 128
min_pixels = 3136
max_pixels = 12544
rollout_batch_size = 8
val_batch_size = 32
seed = 1
shuffle = true

[algorithm]
use_kl_loss = true
kl_coef = 1.0e-2

[actor]
global_batch_size = 8
micro_batch_size_per_device_for_update = 16
micro_batch_size_per_device_for_experience = 32
ppo_epochs = 1
lr = 5.0e-3
lr_warmup_ratio = 0.0
zero_lr_first_step = false
optimizer_state_dtype = "f32"
kahan_summation = false
max_grad_norm = 1.0

[rollout]
n = 8
temperature = 0.7
val_temperature = 0.7
max_num_seqs = 64

[reward]
kind = "spatial"

[sft]
enabled = false
steps = 150
batch_size = 8
lr = 1.0e-2

[trainer]
max_steps = 0
val_freq = 0
val_before_train = false
save_freq = 0
save_limit = 1
sample_freq = 0
seed = 0
device = "cpu"
"#;

fn reward_config(model: &Path, out: &Path, data: &Path, extra: &[&str]) -> TrainConfig {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let mut overrides = vec![
        format!("model.path={}", q(model)),
        format!("trainer.output_dir={}", q(out)),
        format!("data.train_files={}", q(data)),
        format!("data.val_files={}", q(data)),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_toml_str(REWARD_RUN, &overrides, "lora-reward").unwrap()
}

/// A synthetic dataset with short prompts and responses for the reward run: one-object location
/// questions (a ~100-token reference response) under the synthetic data's one-sentence
/// instruction (`SynthConfig::short_instruction`) instead of the ~400-token one, so that 150
/// warm-up steps teach the fixture model the answer format.
fn short_dataset(dir: &Path, train: u64, val: u64) -> PathBuf {
    let data = dir.join("data");
    let cfg = data::synth::SynthConfig {
        seed: 5,
        categories: vec!["single_object_location".into()],
        short_instruction: true,
        ..Default::default()
    };
    data::synth::write_dataset(&cfg, &data, train, val).unwrap();
    data
}

/// A tiny GRPO run on adapters raises the validation reward. A LoRA of a random model cannot
/// learn the answer format (its embeddings and head stay random: on the 64-wide demo model r = 16
/// adapters had a warm-up loss of 4.2 after 47 steps, full weights 1.5), so the fixture model is first
/// warmed up by a short full-weight SFT; GRPO then trains only r = 8 adapters of that model, with
/// the warmed-up model (the adapters off) as the KL reference. After training, the adapters off
/// give the warmed-up model's log-probs bit for bit (against an independent load of it).
#[test]
fn grpo_on_adapters_raises_the_validation_reward() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = short_dataset(dir.path(), 256, 32);
    // 1. the warm-up: full weights, no GRPO
    let mut warm = Trainer::new(
        reward_config(
            &tiny_model(),
            &dir.path().join("warm-up"),
            &data,
            &["sft.enabled=true"],
        ),
        TrainerOptions::default(),
    )
    .unwrap();
    let base = warm.run_sft().unwrap();
    drop(warm);
    let warm_s = started.elapsed().as_secs_f64();
    // 2. GRPO on adapters of the warmed-up model
    let mut t = Trainer::new(
        reward_config(
            &base,
            &dir.path().join("lora"),
            &data,
            &[
                "model.lora={r = 8, alpha = 16.0}",
                "trainer.val_before_train=true",
                "trainer.max_steps=15",
            ],
        ),
        TrainerOptions::default(),
    )
    .unwrap();
    let summary = t.run().unwrap();
    drop(t);
    let (before, after) = (summary.before.unwrap(), summary.after.unwrap());
    eprintln!(
        "warm-up: 150 full-weight SFT steps of 8 rows, {warm_s:.1} s; GRPO on r = 8 adapters: \
         15 steps of 8 prompts x 8 responses, {:.1} s",
        summary.seconds
    );
    eprintln!("validation before GRPO: {before}");
    eprintln!("validation after GRPO:  {after}");
    assert!(
        after.reward >= before.reward + 0.04 && after.format > before.format,
        "GRPO on adapters did not raise the validation reward: {before} -> {after}"
    );

    // the trained adapters off are exactly the warmed-up model
    let processor = Processor::from_model_dir(&base).unwrap();
    let prompt = encode_first(&processor, &data, 1).remove(0);
    let responses: Vec<Vec<i64>> = ["<observe>A red cube.</observe>", "<answer>(B) top right"]
        .iter()
        .map(|t| processor.tokenize(t).unwrap())
        .collect();
    let load = || Qwen2_5VLForConditionalGeneration::load(&base, Device::Cpu, Kind::Float).unwrap();
    let mut trained = load();
    trained.load_adapter(&summary.checkpoint.unwrap()).unwrap();
    let plain = log_probs(&load(), &prompt, &responses);
    let adapted = log_probs(&trained, &prompt, &responses);
    let off = log_probs(&trained.without_adapters().unwrap(), &prompt, &responses);
    let moved = max_diff(&adapted, &plain);
    assert!(moved > 1e-4, "GRPO moved the log-probs by only {moved}");
    assert_eq!(
        max_diff(&off, &plain),
        0.0,
        "the trained adapters off must give the warmed-up model's log-probs bit for bit"
    );
    eprintln!(
        "trained adapters moved log-probs by {moved:.3e}; adapters off vs the warmed-up model: 0 \
         (bitwise); {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

/// With `[model.lora]` and `[sft]`, the warm-up trains the adapters and GRPO continues them; the
/// KL reference is then the warmed-up policy (the base with a frozen copy of the warm-up's
/// adapters), as a full run's reference is its warm-up checkpoint: the first step's KL is zero.
#[test]
fn a_lora_warm_up_is_the_reference_of_the_grpo_that_follows() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic(dir.path(), 3);
    let out = dir.path().join("run");
    let cfg = config(
        &out,
        &data,
        1,
        &[
            "model.output_vocab=\"dataset\"",
            "algorithm.use_kl_loss=true",
            "sft.enabled=true",
            "sft.steps=2",
            "sft.batch_size=2",
            "sft.lr=1e-2",
            "rollout.n=4",
            "data.max_response_length=16",
            // one optimiser step: every micro-batch's KL is taken before the policy moves
            "actor.global_batch_size=2",
        ],
    );
    let ckpt = run(cfg, None);
    let warm = out.join("sft/checkpoint-2");
    let moved = read(&warm.join("adapter_model.safetensors"))
        .iter()
        .filter(|(n, _)| n.contains("lora_B"))
        .map(|(_, t)| f64::try_from(t.abs().max()).unwrap())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "the warm-up left lora_B at {moved}");
    assert!(ckpt.join("adapter_model.safetensors").is_file());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let kl = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("actor/kl_loss").and_then(|k| k.as_f64()))
        .expect("a logged actor/kl_loss");
    assert!(
        kl.abs() < 1e-6,
        "first GRPO step's KL to the reference {kl}: the reference is not the warmed-up policy"
    );
    eprintln!("LoRA warm-up moved lora_B to {moved:.3e}; first GRPO step's KL {kl:e}");
}
