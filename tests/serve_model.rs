//! The Qwen2.5-VL serving engine on the tiny checkpoint: batched, staggered (continuous
//! batching) and queued runs (more requests than pool rows, each row refilled as its sequence
//! ends) give each sequence exactly the output it gets alone; and the real server answers the
//! official `openai` client (scripts/openai_client_test.py). A checkpoint's recorded prompt
//! template wraps a bare question exactly as training worded it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use tch::{Device, Kind};
use trainer::infer::prompt::TrainedTemplate;
use trainer::processor::easyr1_pre_resize;
use trainer::serve::engine::{
    ChatMessage, ContentPart, DecodeEngine, GenerationRequest, SamplingParams, SeqId,
};
use trainer::serve::model_engine::{load_engine, ModelEngine};
use trainer::serve::template::PromptWrap;

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

/// Runs one request alone to its end; returns its prompt length and text.
fn run_one(engine: &mut ModelEngine, request: &GenerationRequest) -> (usize, String) {
    let admitted = engine.admit(0, request).unwrap();
    let mut text = String::new();
    while engine.active() > 0 {
        for ev in engine.step().unwrap() {
            text.push_str(&ev.text);
        }
    }
    (admitted.prompt_tokens, text)
}

#[test]
fn the_recorded_template_wraps_a_bare_question_as_training_saw_it() {
    let template = TrainedTemplate {
        text:
            " Answer about the picture.\nImage size: ({width} x {height})\nQ. {question}\nBe brief."
                .into(),
        derived_from: "test".into(),
        min_pixels: 56 * 56,
        max_pixels: 56 * 56,
    };
    let image = image::RgbImage::from_fn(112, 84, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
    });
    let question = "Is there a cup in the image?\nOptions:\n(A) yes\n(B) no";
    let ask = |content: Vec<ContentPart>| GenerationRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content,
        }],
        params: SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 10,
            seed: 7,
        },
    };
    let bare = ask(vec![
        ContentPart::Image(image.clone()),
        ContentPart::Text(question.into()),
    ]);
    // what infer sends: the rendered template (stating the client's size) and the image resized
    // as training resized it
    let wrapped_by_hand = ask(vec![
        ContentPart::Image(easyr1_pre_resize(
            &image::DynamicImage::ImageRgb8(image.clone()),
            56 * 56,
            56 * 56,
        )),
        ContentPart::Text(template.render(question, (112, 84))),
    ]);
    let mut served = engine(1, 256).with_template(PromptWrap::Trained(template));
    let (tokens, text) = run_one(&mut served, &bare);
    let (tokens_by_hand, text_by_hand) = run_one(&mut engine(1, 256), &wrapped_by_hand);
    assert_eq!((tokens, &text), (tokens_by_hand, &text_by_hand));
    // a client that sends the full prompt itself gets it unchanged, not wrapped twice
    assert_eq!(run_one(&mut served, &wrapped_by_hand), (tokens, text));
    // without a template the bare question goes as sent: a shorter prompt, a larger image
    let (raw_tokens, _) = run_one(&mut engine(1, 256), &bare);
    assert_ne!(raw_tokens, tokens);
}
