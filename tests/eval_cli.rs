//! The `infer`, `eval` and `serve` subcommands as a user runs them: overlay and JSON output from a
//! saved response, report writing from a complete sample log, and the clear refusal while the
//! model is not connected.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
}

fn fixtures() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/infer"
    ))
}

#[test]
fn infer_draws_the_scene_graph_of_a_saved_response() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("overlay.png");
    let run = bin()
        .args([
            "infer",
            "--question",
            "Where is the ball?",
            "--options",
            "behind;left of;under;on top of",
            "--json",
        ])
        .arg("--image")
        .arg(fixtures().join("scene.png"))
        .arg("--response")
        .arg(fixtures().join("response.txt"))
        .arg("--overlay")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["image_size"], serde_json::json!([640, 480]));
    assert!(v["prompt"].as_str().unwrap().contains("(640 x 480)\n\nNow answer the following question:\nWhere is the ball?\nOptions:\n(A) behind"));
    assert_eq!(v["parsed"]["answer"], "(D) on top of");
    assert_eq!(v["parsed"]["scene"]["objects"][2]["id"], "ball.1");
    assert_eq!(
        v["parsed"]["scene"]["relationships"][0]["predicate"],
        "on top of"
    );

    let drawn = image::open(&out).unwrap().to_rgb8();
    let original = image::open(fixtures().join("scene.png")).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), original.dimensions());
    // box.1 is the second object: its left edge at x = 330 is drawn in the second palette colour.
    assert_eq!(
        drawn.get_pixel(330, 350).0,
        trainer::infer::overlay::PALETTE[1]
    );
    assert_ne!(
        original.get_pixel(330, 350).0,
        trainer::infer::overlay::PALETTE[1]
    );

    // Text mode prints the sections.
    let run = bin()
        .args(["infer", "--question", "Where is the ball?"])
        .arg("--image")
        .arg(fixtures().join("scene.png"))
        .arg("--response")
        .arg(fixtures().join("response.txt"))
        .output()
        .unwrap();
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(text.contains("== answer ==\n(D) on top of"), "{text}");
    assert!(text.contains("ball.1 --on top of--> box.1"), "{text}");
}

fn tiny_model() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen25vl/tiny3b")
}

#[test]
fn infer_and_eval_run_the_tiny_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("overlay.png");
    let run = bin()
        .args([
            "infer",
            "--question",
            "Where is the ball?",
            "--options",
            "left;right",
        ])
        .args(["--max-new-tokens", "8", "--json"])
        .arg("--model")
        .arg(tiny_model())
        .arg("--image")
        .arg(fixtures().join("scene.png"))
        .arg("--overlay")
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(v["response"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    assert!(v["prompt"]
        .as_str()
        .unwrap()
        .contains("(A) left\n(B) right"));
    assert!(overlay.exists());

    // a missing checkpoint is named in the error
    let run = bin()
        .args([
            "infer",
            "--model",
            "no/such-checkpoint-dir",
            "--question",
            "q",
        ])
        .arg("--image")
        .arg(fixtures().join("scene.png"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("no/such-checkpoint-dir"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // eval: two JSONL rows, then a rerun that finds both in the log
    let data = dir.path().join("bench.jsonl");
    std::fs::copy(fixtures().join("scene.png"), dir.path().join("scene.png")).unwrap();
    std::fs::write(&data, "{\"id\":\"a\",\"question\":\"Q\",\"options\":[\"x\",\"y\"],\"answer\":\"B\",\"image\":\"scene.png\"}\n{\"id\":\"b\",\"question\":\"R\",\"options\":[\"x\",\"y\"],\"answer\":\"A\",\"image\":\"scene.png\"}\n").unwrap();
    let out = dir.path().join("out");
    for expected in ["2 to evaluate", "0 to evaluate"] {
        let run = bin()
            .args([
                "eval",
                "--max-new-tokens",
                "6",
                "--batch-size",
                "2",
                "--out",
            ])
            .arg(&out)
            .arg("--model")
            .arg(tiny_model())
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{err}");
        assert!(err.contains(expected), "{err}");
    }
    let log = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    assert!(out.join("report.json").exists() && out.join("report.md").exists());

    // eval on an STVQA-schema parquet split with the rows' own prompts
    let synth = dir.path().join("synth");
    data::synth::write_dataset(&data::synth::SynthConfig::default(), &synth, 4, 3).unwrap();
    let out = dir.path().join("out-parquet");
    let run = bin()
        .args([
            "eval",
            "--template",
            "dataset",
            "--max-new-tokens",
            "4",
            "--out",
        ])
        .arg(&out)
        .arg("--model")
        .arg(tiny_model())
        .arg("--data")
        .arg(&synth)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let log = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "the val split has 3 rows");
    assert!(
        log.contains("Image size: (112 x 112)"),
        "the dataset prompt is used"
    );
}

#[test]
fn eval_reports_from_a_complete_log() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("scene.png"), dir.path().join("scene.png")).unwrap();
    let data = dir.path().join("bench.jsonl");
    std::fs::write(
        &data,
        "{\"id\":\"a\",\"question\":\"Q\",\"options\":[\"x\",\"y\"],\"answer\":\"B\",\"category\":\"Depth\",\"image\":\"scene.png\"}\n\
         {\"id\":\"b\",\"question\":\"Q\",\"options\":[\"x\",\"y\"],\"answer\":\"A\",\"category\":\"Count\",\"image\":\"scene.png\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let record = |id: &str, cat: &str, correct: bool| {
        format!("{{\"id\":\"{id}\",\"category\":\"{cat}\",\"prompt\":\"p\",\"response\":\"r\",\"answer\":\"B\",\"gt\":\"B\",\"pred\":\"B\",\"correct\":{correct},\"rule\":\"leading_letter\"}}\n")
    };
    std::fs::write(
        out.join("samples.jsonl"),
        record("a", "Depth", true) + &record("b", "Count", false),
    )
    .unwrap();
    let run = bin()
        .args(["eval", "--model", "ckpt", "--out"])
        .arg(&out)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| overall | 50.00 | 35.36 | 1 | 2 |"), "{md}");
    assert!(md.contains("| Depth | 100.00 | 0.00 | 1 | 1 |"), "{md}");
    assert!(md.contains("- matching: `fixed`"), "{md}");
}
