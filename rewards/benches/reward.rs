//! `cargo bench -p rewards`: responses scored per second for typical 2–12-object responses, once
//! as independent responses (each with its own ground truth) and once as GRPO groups of 8
//! responses sharing a ground truth and prompt (how the trainer scores rollouts).
//!
//! With `REWARD_REFERENCE_DIR` pointing at a folder holding the reference `spatial_sgg.py` (see
//! `scripts/reward_reference.py`), the same inputs are also scored by the Python reference
//! (`REWARD_PYTHON`, default `python3`) and the per-core speed ratio is printed; otherwise that
//! comparison is skipped with a message. Take final numbers on an idle machine.

use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rewards::spatial::GroundTruth;
use rewards::{score, score_batch, Bump, ExactLabelSimilarity, RewardInput, RewardKind};

const LABELS: [&str; 8] = [
    "man",
    "bike",
    "car",
    "dog",
    "traffic_light",
    "chair",
    "table",
    "cup",
];

/// A small deterministic generator (no dependency needed for bench inputs).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `(response, ground_truth, problem)` triples: GT with 2–12 objects, a response with jittered
/// boxes, one object dropped or added now and then, correct answer most of the time. Each ground
/// truth serves `group` consecutive responses (1: all independent; 8: GRPO groups).
fn cases(n: usize, group: usize) -> Vec<(String, String, String)> {
    let mut r = Lcg(7);
    (0..n.div_ceil(group))
        .flat_map(|_| {
            let k = 2 + r.next(11) as usize;
            let mut objects = Vec::new();
            for i in 0..k {
                let (x, y) = (r.next(700), r.next(500));
                let (w, h) = (10 + r.next(90), 10 + r.next(90));
                let id = format!("{}.{}", LABELS[r.next(8) as usize], i + 1);
                objects.push((id, [x, y, x + w, y + h]));
            }
            let rel = r#"[{"subject": "man.1", "predicate": "behind", "object": "bike.2"}]"#;
            let scene = |o: &[String]| format!(r#"{{"objects": [{}], "relationships": {rel}}}"#, o.join(", "));
            let object = |id: &str, b: &[u64]| format!(r#"{{"id": "{id}", "bbox": [{}, {}, {}, {}]}}"#, b[0], b[1], b[2], b[3]);
            let gt_objects: Vec<String> = objects.iter().map(|(id, b)| object(id, b)).collect();
            let gt = format!("<scene>{}</scene>\n<answer>(B) behind</answer>", scene(&gt_objects));
            (0..group)
                .map(|_| {
                    let mut pred = Vec::new();
                    for (id, b) in &objects {
                        if r.next(10) != 0 {
                            let b: Vec<u64> = b.iter().map(|v| v + r.next(12)).collect();
                            pred.push(object(id, &b));
                        }
                    }
                    let answer = if r.next(4) == 0 { "(A) in front of" } else { "(B) behind" };
                    let response = format!(
                        "<observe>Several objects.</observe>\n<scene>\n{}\n</scene>\n<think>Compare depths.</think>\n<answer>{answer}</answer>",
                        scene(&pred)
                    );
                    (response, gt.clone(), "Image size: (800 x 600)\nQ. Where is the man?".to_string())
                })
                .collect::<Vec<_>>()
        })
        .take(n)
        .collect()
}

/// The Python reference on the same inputs: the folder with `spatial_sgg.py`, the interpreter,
/// and the inputs written once as JSONL.
struct PythonReference {
    dir: String,
    python: String,
    tmp: std::path::PathBuf,
}

impl PythonReference {
    /// `None` (with a message) unless `REWARD_REFERENCE_DIR` is set.
    fn new(data: &[(String, String, String)]) -> Option<Self> {
        let Ok(dir) = std::env::var("REWARD_REFERENCE_DIR") else {
            println!("python reference: skipped (set REWARD_REFERENCE_DIR to the folder with spatial_sgg.py)");
            return None;
        };
        let python = std::env::var("REWARD_PYTHON").unwrap_or_else(|_| "python3".into());
        let tmp = std::env::temp_dir().join(format!("reward_bench_{}", std::process::id()));
        std::fs::create_dir_all(&tmp).expect("temp dir");
        let mut f = std::fs::File::create(tmp.join("cases.jsonl")).expect("write cases");
        for (i, (resp, gt, problem)) in data.iter().enumerate() {
            let row = serde_json::json!({"id": i, "response": resp, "ground_truth": gt, "problem": problem});
            writeln!(f, "{row}").expect("write cases");
        }
        Some(PythonReference { dir, python, tmp })
    }

    /// Responses per second of one run over all inputs (one process, one core), as the
    /// reference script reports it; `None` (with its stderr) if the run failed.
    fn one_round(&self) -> Option<f64> {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/reward_reference.py"
        );
        let out = std::process::Command::new(&self.python)
            .args(["-u", script, "--reference-dir", &self.dir, "--input"])
            .arg(self.tmp.join("cases.jsonl"))
            .arg("--output")
            .arg(self.tmp.join("ref.jsonl"))
            .output()
            .expect("run python");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let per_s = stderr
            .split('(')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse::<f64>().ok());
        if per_s.is_none() {
            println!("python reference failed: {stderr}");
        }
        per_s
    }
}

impl Drop for PythonReference {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Timed rounds per figure. Rust and Python rounds alternate and the best of each is reported:
/// on a shared machine the slow rounds measure the neighbours, and alternating exposes both
/// sides to the same neighbours.
const ROUNDS: usize = 5;

/// Responses per second on one core over one second: each response alone (`score`), or each
/// GRPO group through one shared [`GroundTruth`] (what `score_batch` does per group).
fn one_round(data: &[(String, String, String)], group: usize) -> f64 {
    let sim = ExactLabelSimilarity;
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed().as_secs_f64() < 1.0 {
        if group == 1 {
            for (r, g, p) in data {
                black_box(score(RewardKind::Spatial, r, g, p, &sim).ok());
            }
        } else {
            for chunk in data.chunks(group) {
                let arena = Bump::new();
                let truth = GroundTruth::new(&chunk[0].1, &chunk[0].2, &arena);
                for (r, _, _) in chunk {
                    black_box(truth.score(r, &sim).ok());
                }
            }
        }
        rounds += 1;
    }
    (rounds * data.len()) as f64 / start.elapsed().as_secs_f64()
}

/// Print the best-of-[`ROUNDS`] rates of Rust and (if configured) the Python reference.
fn compare(data: &[(String, String, String)], group: usize) {
    let reference = PythonReference::new(data);
    let (mut rust, mut python) = (0.0f64, None::<f64>);
    for _ in 0..ROUNDS {
        rust = rust.max(one_round(data, group));
        if let Some(p) = reference.as_ref().and_then(PythonReference::one_round) {
            python = Some(python.map_or(p, |b| b.max(p)));
        }
    }
    let what = if group == 1 {
        "independent responses".to_string()
    } else {
        format!("groups of {group} sharing a ground truth")
    };
    println!("rust spatial reward: {rust:.0} responses/s (1 core, best of {ROUNDS}, 2-12 objects, {what})");
    if let Some(p) = python {
        println!(
            "  python reference: {p:.0} responses/s (1 core, best of {ROUNDS}, alternating with rust); rust/python per core = {:.0}x",
            rust / p
        );
    }
}

fn bench(c: &mut Criterion) {
    for group in [1, 8] {
        compare(&cases(2000, group), group);
    }

    let data = cases(2000, 1);
    let inputs: Vec<RewardInput<'_>> = data
        .iter()
        .map(|(r, g, p)| RewardInput {
            response: r,
            ground_truth: g,
            problem: p,
        })
        .collect();
    let sim = ExactLabelSimilarity;

    let mut g = c.benchmark_group("spatial_reward");
    g.throughput(Throughput::Elements(data.len() as u64));
    g.bench_function("single_thread_2000", |b| {
        b.iter(|| {
            for (r, gt, p) in &data {
                black_box(score(RewardKind::Spatial, r, gt, p, &sim).ok());
            }
        })
    });
    g.bench_function("score_batch_rayon_2000", |b| {
        b.iter(|| black_box(score_batch(RewardKind::Spatial, &inputs, &sim)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
