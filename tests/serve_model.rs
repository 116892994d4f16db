//! The Qwen2.5-VL serving engine on the tiny checkpoint: batched, staggered (continuous
//! batching) and queued runs (more requests than pool rows, each row refilled as its sequence
//! ends) give each sequence exactly the output it gets alone; and the real server answers the
//! official `openai` client (scripts/openai_client_test.py).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use tch::{Device, Kind};
use trainer::serve::engine::{
    ChatMessage, ContentPart, DecodeEngine, GenerationRequest, SamplingParams, SeqId,
};
use trainer::serve::model_engine::{load_engine, ModelEngine};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tiny() -> PathBuf {
    root().join("tests/fixtures/qwen25vl/tiny3b")
}

/// Request `i` (requests `i` and `i + 6` are the same).
fn request(i: usize, temperature: f32) -> GenerationRequest {
    let i = i % 6;
    let mut content = Vec::new();
    if i.is_multiple_of(3) {
        content.push(ContentPart::Image(image::RgbImage::from_fn(
            56 + 28 * (i as u32 % 2),
            56,
            |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, (i * 40) as u8]),
        )));
    }
    content.push(ContentPart::Text(format!(
        "Question {i}: where is object {} relative to {}?",
        i * 7,
        "the box ".repeat(i % 4 + 1)
    )));
    GenerationRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content,
        }],
        params: SamplingParams {
            temperature,
            top_p: 1.0,
            max_tokens: 10,
            seed: 100 + i as u64,
        },
    }
}

fn engine(max_batch: usize, max_context: usize) -> ModelEngine {
    load_engine(&tiny(), Device::Cpu, Kind::Float, max_batch, max_context).unwrap()
}

/// Admits `waves` of requests (wave k after k × `gap` steps) and runs to the end.
fn run(
    engine: &mut ModelEngine,
    waves: &[Vec<usize>],
    gap: usize,
    temperature: f32,
) -> HashMap<SeqId, String> {
    let mut out: HashMap<SeqId, String> = HashMap::new();
    let mut step = 0;
    let mut next_wave = 0;
    loop {
        if next_wave < waves.len() && step == next_wave * gap {
            for &i in &waves[next_wave] {
                engine.admit(i as SeqId, &request(i, temperature)).unwrap();
                out.entry(i as SeqId).or_default();
            }
            next_wave += 1;
        }
        if engine.active() == 0 && next_wave == waves.len() {
            break;
        }
        for ev in engine.step().unwrap() {
            out.get_mut(&ev.seq).unwrap().push_str(&ev.text);
        }
        step += 1;
    }
    out
}

#[test]
fn batched_and_staggered_sequences_match_their_solo_runs() {
    for temperature in [0.0, 0.9] {
        let mut solo = HashMap::new();
        for i in 0..6 {
            let mut e = engine(1, 256);
            solo.extend(run(&mut e, &[vec![i]], 0, temperature));
        }
        assert!(solo.values().all(|t| !t.is_empty()), "{solo:?}");

        let mut e = engine(8, 256);
        let together = run(&mut e, &[(0..6).collect()], 0, temperature);
        assert_eq!(together, solo, "all at once, temperature {temperature}");

        let mut e = engine(8, 256);
        let staggered = run(
            &mut e,
            &[vec![0, 1, 2], vec![3, 4], vec![5]],
            3,
            temperature,
        );
        assert_eq!(staggered, solo, "staggered, temperature {temperature}");

        // a steady trickle of overlapping requests through a pool of 2 rows: requests wait
        // for a row and take it the moment one frees
        let mut e = engine(2, 96);
        let waves: Vec<Vec<usize>> = (0..12).map(|i| vec![i]).collect();
        let queued = run(&mut e, &waves, 3, temperature);
        assert_eq!(e.stats().rows, 2);
        assert!(
            e.stats().occupancy() > 0.5,
            "the pool stayed mostly empty: {:?}",
            e.stats()
        );
        for (id, text) in &queued {
            assert_eq!(
                text,
                &solo[&(id % 6)],
                "request {id} through 2 refilled rows"
            );
        }
    }
}

#[test]
fn openai_client_against_the_tiny_checkpoint() {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh --python (this test runs the openai client)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root().join("scripts/openai_client_test.py"))
        .args(["--binary", env!("CARGO_BIN_EXE_spatialthinker")])
        .arg("--model")
        .arg(tiny())
        .args(["--max-tokens", "12"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai_client_test.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("16 concurrent"), "{stdout}");
}
