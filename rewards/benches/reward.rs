//! `cargo bench -p rewards`: responses scored per second for typical 2–12-object responses.
//!
//! With `REWARD_REFERENCE_DIR` pointing at a folder holding the reference `spatial_sgg.py` (see
//! `scripts/reward_reference.py`), the same inputs are also scored by the Python reference
//! (`REWARD_PYTHON`, default `python3`) and the per-core speed ratio is printed; otherwise that
//! comparison is skipped with a message. Take final numbers on an idle machine.

use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rewards::{score, score_batch, ExactLabelSimilarity, RewardInput, RewardKind};

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
/// boxes, one object dropped or added now and then, correct answer most of the time.
fn cases(n: usize) -> Vec<(String, String, String)> {
    let mut r = Lcg(7);
    (0..n)
        .map(|_| {
            let k = 2 + r.next(11) as usize;
            let mut gt = Vec::new();
            let mut pred = Vec::new();
            for i in 0..k {
                let (x, y) = (r.next(700), r.next(500));
                let (w, h) = (10 + r.next(90), 10 + r.next(90));
                let id = format!("{}.{}", LABELS[r.next(8) as usize], i + 1);
                gt.push(format!(r#"{{"id": "{id}", "bbox": [{x}, {y}, {}, {}]}}"#, x + w, y + h));
                if r.next(10) != 0 {
                    let b: Vec<u64> = [x, y, x + w, y + h].iter().map(|v| v + r.next(12)).collect();
                    pred.push(format!(r#"{{"id": "{id}", "bbox": [{}, {}, {}, {}]}}"#, b[0], b[1], b[2], b[3]));
                }
            }
            let rel = r#"[{"subject": "man.1", "predicate": "behind", "object": "bike.2"}]"#;
            let scene = |o: &[String]| format!(r#"{{"objects": [{}], "relationships": {rel}}}"#, o.join(", "));
            let answer = if r.next(4) == 0 { "(A) in front of" } else { "(B) behind" };
            let response = format!(
                "<observe>Several objects.</observe>\n<scene>\n{}\n</scene>\n<think>Compare depths.</think>\n<answer>{answer}</answer>",
                scene(&pred)
            );
            let gt = format!("<scene>{}</scene>\n<answer>(B) behind</answer>", scene(&gt));
            (response, gt, "Image size: (800 x 600)\nQ. Where is the man?".to_string())
        })
        .collect()
}

fn python_reference(data: &[(String, String, String)], rust_per_s: f64) {
    let Ok(dir) = std::env::var("REWARD_REFERENCE_DIR") else {
        println!("python reference: skipped (set REWARD_REFERENCE_DIR to the folder with spatial_sgg.py)");
        return;
    };
    let python = std::env::var("REWARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let tmp = std::env::temp_dir().join(format!("reward_bench_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let input = tmp.join("cases.jsonl");
    let mut f = std::fs::File::create(&input).expect("write cases");
    for (i, (resp, gt, problem)) in data.iter().enumerate() {
        let row =
            serde_json::json!({"id": i, "response": resp, "ground_truth": gt, "problem": problem});
        writeln!(f, "{row}").expect("write cases");
    }
    drop(f);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/reward_reference.py"
    );
    let out = std::process::Command::new(python)
        .args(["-u", script, "--reference-dir", &dir, "--input"])
        .arg(&input)
        .arg("--output")
        .arg(tmp.join("ref.jsonl"))
        .output()
        .expect("run python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let per_s = stderr
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok());
    match per_s {
        Some(p) => println!(
            "python reference: {p:.0} responses/s (1 core); rust/python per core = {:.0}x",
            rust_per_s / p
        ),
        None => println!("python reference failed: {stderr}"),
    }
    let _ = std::fs::remove_dir_all(tmp);
}

fn bench(c: &mut Criterion) {
    let data = cases(2000);
    let inputs: Vec<RewardInput<'_>> = data
        .iter()
        .map(|(r, g, p)| RewardInput {
            response: r,
            ground_truth: g,
            problem: p,
        })
        .collect();
    let sim = ExactLabelSimilarity;

    // Plain single-thread throughput, printed for the report and the Python comparison.
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed().as_secs_f64() < 2.0 {
        for (r, g, p) in &data {
            black_box(score(RewardKind::Spatial, r, g, p, &sim).ok());
        }
        rounds += 1;
    }
    let per_s = (rounds * data.len()) as f64 / start.elapsed().as_secs_f64();
    println!("rust spatial reward: {per_s:.0} responses/s (1 core, 2-12 objects)");
    python_reference(&data, per_s);

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
