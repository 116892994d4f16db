//! `spatialthinker launch` and `train` as ranks of a data-parallel job over Gloo on loopback
//! (docs/distributed.md): 2 and 4 processes end with the weights and rewards of one process on
//! the same global batch, the optimizer state is halved across 2 ranks, a 2-process run resumes
//! exactly, and a killed rank stops the other with an error naming it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

const BIN: &str = env!("CARGO_BIN_EXE_spatialthinker");

/// The tiny recipe, small: 8 prompts × 4 responses per RL step, two optimiser steps of 4
/// prompts, micro-batches of one group, no warm-up, no validation.
fn settings(out: &Path, steps: usize) -> Vec<String> {
    [
        "sft.enabled=false".to_string(),
        format!("trainer.max_steps={steps}"),
        "trainer.val_freq=0".into(),
        "trainer.val_before_train=false".into(),
        "trainer.save_freq=0".into(),
        "trainer.sample_freq=0".into(),
        "data.synthetic_train_rows=32".into(),
        "data.synthetic_val_rows=4".into(),
        "data.rollout_batch_size=8".into(),
        "data.max_response_length=48".into(),
        "actor.global_batch_size=4".into(),
        "rollout.n=4".into(),
        "actor.micro_batch_size_per_device_for_update=4".into(),
        "actor.micro_batch_size_per_device_for_experience=4".into(),
        format!("trainer.output_dir={}", out.display()),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

fn run(args: &[String]) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spatialthinker {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn train(out: &Path, steps: usize, extra: &[&str]) {
    let mut args = vec!["train".to_string(), "-q".into()];
    args.extend(settings(out, steps));
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&args);
}

fn launch(procs: usize, out: &Path, steps: usize, extra: &[&str]) {
    let mut args = vec![
        "launch".to_string(),
        "--nproc-per-node".into(),
        procs.to_string(),
        "--".into(),
        "train".into(),
        "-q".into(),
    ];
    args.extend(settings(out, steps));
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&args);
}

fn weights(checkpoint: &Path) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(checkpoint).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("model") && name.ends_with(".safetensors") {
            out.extend(Tensor::read_safetensors(&path).unwrap());
        }
    }
    assert!(!out.is_empty(), "no weights in {}", checkpoint.display());
    out
}

fn max_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(k, t)| {
            let d = (t.to_kind(Kind::Double) - b[k].to_kind(Kind::Double))
                .abs()
                .max();
            f64::try_from(d).unwrap()
        })
        .fold(0.0, f64::max)
}

/// Each step's reward metrics from `metrics.jsonl`.
fn rewards(run: &Path) -> Vec<BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("reward/reward").is_some())
        .map(|v| {
            v.as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with("reward/") || k.starts_with("response_length/"))
                .map(|(k, x)| (k.clone(), x.as_f64().unwrap()))
                .collect()
        })
        .collect()
}

fn assert_same_rewards(a: &Path, b: &Path) {
    let (ra, rb) = (rewards(a), rewards(b));
    assert_eq!(ra.len(), rb.len());
    for (step, (x, y)) in ra.iter().zip(&rb).enumerate() {
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
        for (k, v) in x {
            assert!(
                (v - y[k]).abs() <= 1e-9,
                "step {}: {k} = {v} in {}, {} in {}",
                step + 1,
                a.display(),
                y[k],
                b.display()
            );
        }
    }
}

/// Elements of optimizer state (`exp_avg.*`) in a shard file.
fn exp_avg_elements(path: &Path) -> i64 {
    Tensor::read_safetensors(path)
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("exp_avg."))
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

#[test]
fn data_parallel_training_matches_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (single, two, four) = (
        tmp.path().join("single"),
        tmp.path().join("two"),
        tmp.path().join("four"),
    );
    // The random model earns no reward, so the KL term is the whole loss; against a reference
    // that is another random model it is a real gradient, not rounding noise (which Adam would
    // amplify into differences between any two orders of summation).
    let other = tmp.path().join("other");
    train(&other, 0, &["--set", "trainer.seed=9"]);
    let reference = format!(
        "model.reference_path={}",
        other.join("base-model").display()
    );
    let extra = ["--set", reference.as_str()];
    train(&single, 3, &extra);
    launch(2, &two, 3, &extra);
    let start = weights(&single.join("base-model"));
    let want = weights(&single.join("checkpoint-3"));
    let moved = max_diff(&start, &want);
    let d2 = max_diff(&weights(&two.join("checkpoint-3")), &want);
    println!("3 steps: weights moved by {moved:.3e}; 2 processes vs 1: max |diff| = {d2:.3e}");
    assert!(moved > 1e-4, "the run changes the weights ({moved})");
    assert!(d2 <= 1e-6, "2 processes differ from 1 by {d2}");
    assert_same_rewards(&single, &two);

    // ZeRO-1: each of the 2 ranks holds half of the optimizer state
    let total: i64 = want
        .iter()
        .filter(|(_, t)| t.is_floating_point())
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let shards: Vec<i64> = (0..2)
        .map(|r| {
            exp_avg_elements(&two.join(format!("checkpoint-3/optimizer-rank{r}-of-2.safetensors")))
        })
        .collect();
    println!("optimizer state elements per rank: {shards:?} of {total}");
    assert_eq!(shards.iter().sum::<i64>(), total);
    assert!(
        shards.iter().all(|&s| (s - total / 2).abs() <= 1),
        "{shards:?}"
    );
    assert!(!two.join("checkpoint-3/optimizer.safetensors").exists());

    launch(4, &four, 3, &extra);
    let d4 = max_diff(&weights(&four.join("checkpoint-3")), &want);
    println!("4 processes vs 1: max |diff| = {d4:.3e}");
    assert!(d4 <= 1e-6, "4 processes differ from 1 by {d4}");
    assert_same_rewards(&single, &four);

    // stopped after step 2 and resumed with 2 processes: the uninterrupted 2-process weights
    let resumed = tmp.path().join("resumed");
    launch(2, &resumed, 2, &extra);
    let mut resume = extra.to_vec();
    resume.extend(["--resume", resumed.to_str().unwrap()]);
    launch(2, &resumed, 3, &resume);
    let dr = max_diff(
        &weights(&resumed.join("checkpoint-3")),
        &weights(&two.join("checkpoint-3")),
    );
    println!("2 processes resumed after step 2 vs uninterrupted: max |diff| = {dr:.3e}");
    assert_eq!(dr, 0.0, "resume differs by {dr}");
}

/// Starts rank `rank` of 2 of a `train` job directly (as torchrun would), stderr piped.
fn rank_process(rank: usize, port: u16, out: &Path) -> std::process::Child {
    let mut args = vec!["train".to_string()];
    args.extend(settings(out, 1000));
    Command::new(BIN)
        .args(&args)
        .env("RUST_BACKTRACE", "0")
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_rank_stops_the_other_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out: PathBuf = tmp.path().join("run");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut rank0 = rank_process(0, port, &out);
    let mut rank1 = rank_process(1, port, &out);
    // wait until rank 0 reports its first RL step: both ranks are training
    let stderr = rank0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(600))
            .expect("rank 0 went quiet");
        if line.starts_with("step 1/") {
            break;
        }
        assert!(Instant::now() < deadline, "rank 0 never reached step 1");
    }
    rank1.kill().unwrap();
    let killed = Instant::now();
    let _ = rank1.wait();
    let status = loop {
        if let Some(s) = rank0.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "rank 0 still running 60 s after rank 1 was killed"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = killed.elapsed();
    let lines: Vec<String> = rx.try_iter().collect();
    let text = lines.join("\n");
    println!(
        "rank 0 exited ({status}) {:.1} s after rank 1 was killed:\n{text}",
        took.as_secs_f64()
    );
    assert!(!status.success());
    assert!(
        text.contains("rank 1"),
        "rank 0's error names rank 1:\n{text}"
    );
}
