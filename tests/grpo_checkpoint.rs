//! Checkpoints: Hugging Face layout, keep-last-K, exact resume of weights and optimiser state,
//! and crash safety (a writer killed with SIGKILL mid-write leaves the previous checkpoint
//! loadable).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tch::{Kind, Tensor};
use trainer::grpo::optim::{AdamWConfig, AnyPrecisionAdamW};
use trainer::train::checkpoint::{
    list_checkpoints, load_model_tensors, restore, CheckpointManager, ModelFiles, TrainerState,
    INDEX_FILE, TEMP_PREFIX,
};

const CHILD_ENV: &str = "GRPO_CHECKPOINT_CRASH_CHILD_DIR";
const SHARD_MARKER: &str = "first shard written";

fn weights(seed: i64, scale: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    vec![
        (
            "model.embed_tokens.weight".to_string(),
            Tensor::randn([64 * scale, 32], (Kind::Float, tch::Device::Cpu)),
        ),
        (
            "model.layers.0.mlp.down_proj.weight".to_string(),
            Tensor::randn([32, 48 * scale], (Kind::Float, tch::Device::Cpu)),
        ),
        (
            "model.norm.weight".to_string(),
            Tensor::ones([32], (Kind::Float, tch::Device::Cpu)),
        ),
        (
            "lm_head.weight".to_string(),
            Tensor::randn([64 * scale, 32], (Kind::Float, tch::Device::Cpu)),
        ),
    ]
}

fn state(step: u64) -> TrainerState {
    TrainerState {
        rl_step: step,
        optimizer_step: step * 4,
        data_cursor: serde_json::json!({"epoch": 0, "position": step * 8}),
        rng: serde_json::json!({"seed": 1, "draws": step}),
        optimizer_param_steps: Vec::new(),
        extra: serde_json::Value::Null,
    }
}

fn save(mgr: &CheckpointManager, step: u64, w: &[(String, Tensor)], extra_file: &Path) -> PathBuf {
    let cfg = serde_json::json!({"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"});
    let files = [extra_file.to_path_buf()];
    mgr.save(
        step,
        &ModelFiles {
            tensors: w,
            save_kind: None,
            config_json: &cfg,
            copy_files: &files,
            adapter_config: None,
        },
        None,
        &state(step),
    )
    .unwrap()
}

fn share(v: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    v.iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

fn assert_same(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs");
    }
}

#[test]
fn hf_layout_sharding_and_keep_last() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, b"{\"model\": {}}").unwrap();
    // Shards of at most 10 kB: the 8 kB embedding, 6 kB down_proj, ... land in separate files.
    let mgr = CheckpointManager::new(dir.path().join("out"), 2, 10_000);
    let mut w = weights(0, 1);
    w.sort_by(|a, b| a.0.cmp(&b.0));
    for step in 1..=3 {
        save(&mgr, step, &w, &tok);
    }
    let kept: Vec<u64> = mgr.list().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(kept, vec![2, 3], "keep-last-2");
    let ck = mgr.latest().unwrap().unwrap();
    assert!(ck.ends_with("checkpoint-3"));
    for f in [
        "config.json",
        "tokenizer.json",
        INDEX_FILE,
        "trainer_state.json",
    ] {
        assert!(ck.join(f).is_file(), "{f} missing");
    }
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join(INDEX_FILE)).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), 4);
    assert_eq!(map["lm_head.weight"], "model-00001-of-00003.safetensors");
    assert_eq!(
        index["metadata"]["total_size"],
        (64 * 32 * 2 + 32 * 48 + 32) * 4
    );
    assert_same(&load_model_tensors(&ck).unwrap(), &w);
    let st = trainer::train::checkpoint::load_trainer_state(&ck).unwrap();
    assert_eq!(st, state(3));
}

/// Runs `steps` Adam steps on a quadratic loss whose target depends on the step number.
fn train(params: &[(String, Tensor)], opt: &mut AnyPrecisionAdamW, from: u64, steps: u64) {
    for s in from..from + steps {
        opt.zero_grad().unwrap();
        let mut loss = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        for (i, (_, p)) in params.iter().enumerate() {
            let target = (s as f64 + 1.0) * 0.1 * (i as f64 + 1.0);
            loss += (p.to_kind(Kind::Float) - target).square().mean(Kind::Float);
        }
        loss.backward();
        opt.clip_grad_norm(1.0).unwrap();
        opt.step(1e-2).unwrap();
    }
}

fn trainable(seed: i64, kind: Kind) -> Vec<(String, Tensor)> {
    weights(seed, 1)
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(kind).set_requires_grad(true)))
        .collect()
}

#[test]
fn resume_reproduces_the_next_steps_exactly() {
    tch::set_num_threads(1);
    for kind in [Kind::Float, Kind::BFloat16] {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("tokenizer.json");
        std::fs::write(&tok, b"{}").unwrap();
        let mgr = CheckpointManager::new(dir.path(), 1, 1 << 30);
        // Straight: 4 steps.
        let straight = trainable(1, kind);
        let mut opt = AnyPrecisionAdamW::new(share(&straight), AdamWConfig::default()).unwrap();
        train(&straight, &mut opt, 0, 2);
        let cfg = serde_json::json!({});
        let files = [tok.clone()];
        let ck = mgr
            .save(
                2,
                &ModelFiles {
                    tensors: &straight,
                    save_kind: None,
                    config_json: &cfg,
                    copy_files: &files,
                    adapter_config: None,
                },
                Some(&opt),
                &state(2),
            )
            .unwrap();
        train(&straight, &mut opt, 2, 2);
        // Resumed: different initial weights, restored from step 2, then 2 steps.
        let resumed = trainable(99, kind);
        let mut opt2 = AnyPrecisionAdamW::new(share(&resumed), AdamWConfig::default()).unwrap();
        let st = restore(&ck, &resumed, Some(&mut opt2)).unwrap();
        assert_eq!(st.rl_step, 2);
        assert_eq!(st.optimizer_param_steps.len(), 4);
        train(&resumed, &mut opt2, 2, 2);
        assert_same(&straight, &resumed);
        let (a, _) = opt.state_tensors();
        let (b, _) = opt2.state_tensors();
        assert_same(&a, &b);
    }
}

/// Child half of `killed_writer_leaves_previous_checkpoint` (a no-op unless that test spawns
/// this binary with `GRPO_CHECKPOINT_CRASH_CHILD_DIR` set): writes a large checkpoint and
/// stalls after its first shard so the parent can kill it mid-write.
#[test]
fn crash_child_writer() {
    let Ok(root) = std::env::var(CHILD_ENV) else {
        return;
    };
    tch::set_num_threads(1);
    let mgr = CheckpointManager::new(root, 3, 2_000_000);
    let w = weights(7, 64);
    let tok = PathBuf::from(std::env::var("GRPO_CHECKPOINT_CRASH_TOKENIZER").unwrap());
    let cfg = serde_json::json!({});
    let files = [tok];
    let mut shards = 0;
    mgr.save_with_progress(
        2,
        &ModelFiles {
            tensors: &w,
            save_kind: None,
            config_json: &cfg,
            copy_files: &files,
            adapter_config: None,
        },
        None,
        &state(2),
        &mut |p| {
            if p.extension().is_some_and(|e| e == "safetensors") {
                shards += 1;
                if shards == 1 {
                    println!("{SHARD_MARKER}");
                    std::thread::sleep(std::time::Duration::from_secs(120));
                }
            }
        },
    )
    .unwrap();
}

#[test]
fn killed_writer_leaves_previous_checkpoint() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ckpt");
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, b"{}").unwrap();
    let mgr = CheckpointManager::new(&root, 3, 2_000_000);
    let w1 = weights(5, 1);
    save(&mgr, 1, &w1, &tok);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &root)
        .env("GRPO_CHECKPOINT_CRASH_TOKENIZER", &tok)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = lines.any(|l| l.map(|l| l.contains(SHARD_MARKER)).unwrap_or(false));
    assert!(seen, "child never reached the first shard");
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());

    // The half-written checkpoint is there but invisible; step 1 loads intact.
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "the interrupted write left its temporary folder"
    );
    assert!(
        leftovers[0].path().read_dir().unwrap().count() >= 2,
        "killed after writing files"
    );
    let listed = list_checkpoints(&root).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, 1);
    let mut want = share(&w1);
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_same(&load_model_tensors(&listed[0].1).unwrap(), &want);

    // The next save clears the leftovers.
    save(&mgr, 3, &w1, &tok);
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(TEMP_PREFIX)),
        "{names:?}"
    );
}
