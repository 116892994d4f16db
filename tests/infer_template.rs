//! The prompt template a checkpoint records (`prompt_template.json`): derived from one training
//! prompt, it reproduces every other row's training prompt from the row's question, options and
//! image size (checked against the dataset's own `problem` column); the trainer writes it next
//! to its checkpoints; `infer` defaults to it, and prints the raw response with what was missing
//! when a section cannot be parsed.

mod common;

use std::path::Path;
use std::process::Command;

use common::{root, tiny_model};
use trainer::infer::prompt::{
    question_with_options, TrainedTemplate, HEIGHT_PLACEHOLDER, PROMPT_TEMPLATE_FILE,
    QUESTION_PLACEHOLDER, WIDTH_PLACEHOLDER,
};
use trainer::train::config::TrainConfig;
use trainer::train::{Trainer, TrainerOptions, DEFAULT_CONFIG};

/// A training prompt as the trainer sends it: the `<image>` markers removed.
fn training_text(problem: &str) -> String {
    problem.replace("<image>", "")
}

#[test]
fn a_template_from_one_row_reproduces_every_rows_training_prompt() {
    for (cfg, what) in [
        (data::synth::SynthConfig::default(), "all categories"),
        (
            data::synth::SynthConfig {
                width: 96,
                height: 80,
                categories: vec!["existence".into(), "count".into()],
                fixed_option_order: true,
                ..Default::default()
            },
            "existence and count, fixed order, 96x80",
        ),
        (
            data::synth::SynthConfig {
                width: 96,
                height: 80,
                categories: vec!["object_identity".into(), "relation".into()],
                short_instruction: true,
                ..Default::default()
            },
            "object identity and relation, short instruction, 96x80",
        ),
    ] {
        let rows: Vec<_> = (0..24)
            .map(|i| data::synth::generate_row(&cfg, "train", i).unwrap())
            .collect();
        let first = &rows[0];
        let t = TrainedTemplate::derive(
            &training_text(&first.problem),
            Some(&first.question_with_options),
            (cfg.width, cfg.height),
            "row 0",
            (3136, 12544),
        )
        .unwrap();
        assert_eq!(t.text.matches(WIDTH_PLACEHOLDER).count(), 1);
        assert_eq!(t.text.matches(QUESTION_PLACEHOLDER).count(), 1);
        assert!(
            t.text.ends_with(&format!("\nQ. {QUESTION_PLACEHOLDER}")),
            "{what}"
        );
        for row in &rows {
            let question = question_with_options(&row.question_only, &row.options);
            assert_eq!(
                t.render(&question, (cfg.width, cfg.height)),
                training_text(&row.problem),
                "{what}: {}",
                row.image_id
            );
        }
    }
}

#[test]
fn the_question_marker_is_the_fallback_and_bad_prompts_are_refused() {
    // The layout of SpatialThinker's own prompt (QUESTION_PREFIX.format(W, H) + "\nQ. " +
    // question_with_options, docs/recipe.md "Training prompt"), without the row's question column.
    let prompt = " Find the objects.\nImage size: (640 x 480)\n\nNow answer the following question:\nQ. Where is the man?\nOptions:\n(A) behind\n(B) beside";
    let t = TrainedTemplate::derive(prompt, None, (640, 480), "stvqa row 3", (1, 2)).unwrap();
    assert_eq!(
        t.text,
        format!(
            " Find the objects.\nImage size: ({WIDTH_PLACEHOLDER} x {HEIGHT_PLACEHOLDER})\n\nNow answer the following question:\nQ. {QUESTION_PLACEHOLDER}"
        )
    );
    assert_eq!(
        t.render("Is it red?\nOptions:\n(A) yes\n(B) no", (800, 600)),
        " Find the objects.\nImage size: (800 x 600)\n\nNow answer the following question:\nQ. Is it red?\nOptions:\n(A) yes\n(B) no"
    );
    let no_size = TrainedTemplate::derive("Q? \nQ. x", None, (1, 1), "r", (1, 1)).unwrap_err();
    assert!(
        no_size
            .to_string()
            .contains("no `Image size: (W x H)` line"),
        "{no_size}"
    );
    let wrong_size = TrainedTemplate::derive(prompt, None, (64, 48), "r", (1, 1)).unwrap_err();
    assert!(wrong_size.to_string().contains("(64 x 48)"), "{wrong_size}");
    let no_question =
        TrainedTemplate::derive("Image size: (4 x 4) and nothing", None, (4, 4), "r", (1, 1))
            .unwrap_err();
    assert!(no_question
        .to_string()
        .starts_with("r: the prompt holds neither"));
}

#[test]
fn the_trainer_records_the_template_it_trains_with() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::synthetic(dir.path(), 5);
    let out = dir.path().join("run");
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let overrides = vec![
        format!("model.path={}", q(&tiny_model())),
        format!("trainer.output_dir={}", q(&out)),
        format!("data.train_files={}", q(&data)),
        format!("data.val_files={}", q(&data)),
    ];
    let cfg = TrainConfig::from_toml_str(DEFAULT_CONFIG, &overrides, "test").unwrap();
    Trainer::new(
        cfg,
        TrainerOptions {
            dry: true,
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    let t = TrainedTemplate::read(&out)
        .unwrap()
        .expect("a recorded template");
    assert!(
        t.derived_from
            .contains("train-00000-of-00001.parquet row 0"),
        "{}",
        t.derived_from
    );
    assert_eq!((t.min_pixels, t.max_pixels), (3136, 12544));
    // the validation rows' own training prompts come back from their questions
    for i in 0..2 {
        let row = data::synth::generate_row(
            &data::synth::SynthConfig {
                seed: 5,
                ..Default::default()
            },
            "val",
            i,
        )
        .unwrap();
        let question = question_with_options(&row.question_only, &row.options);
        assert_eq!(t.render(&question, (112, 112)), training_text(&row.problem));
    }
}

/// A checkpoint folder: the tiny fixture model with `template` recorded.
fn checkpoint_with(dir: &Path, template: Option<&TrainedTemplate>) -> std::path::PathBuf {
    let ckpt = dir.join("checkpoint-1");
    std::fs::create_dir_all(&ckpt).unwrap();
    for entry in std::fs::read_dir(tiny_model()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, ckpt.join(p.file_name().unwrap())).unwrap();
        }
    }
    if let Some(t) = template {
        t.write(&ckpt.join(PROMPT_TEMPLATE_FILE)).unwrap();
    }
    ckpt
}

#[test]
fn infer_defaults_to_the_recorded_template_and_shows_an_unparsable_response() {
    let dir = tempfile::tempdir().unwrap();
    let row = data::synth::generate_row(&Default::default(), "val", 1).unwrap();
    let image = dir.path().join("scene.png");
    std::fs::write(&image, &row.image.bytes).unwrap();
    let template = TrainedTemplate::derive(
        &training_text(&row.problem),
        Some(&row.question_with_options),
        (112, 112),
        "val row 1",
        (3136, 12544),
    )
    .unwrap();
    let with = checkpoint_with(&dir.path().join("with"), Some(&template));
    let without = checkpoint_with(&dir.path().join("without"), None);
    let response = dir.path().join("response.txt");
    std::fs::write(
        &response,
        "<observe>A red circle.</observe>\n<think>It is left",
    )
    .unwrap();
    let infer = |model: &Path, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
            .current_dir(root())
            .args(["infer", "--model"])
            .arg(model)
            .arg("--image")
            .arg(&image)
            .args([
                "--question",
                &row.question_only,
                "--options",
                &row.options.join(";"),
            ])
            .arg("--response")
            .arg(&response)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    // the recorded template: the prompt is the row's own training prompt
    let (json, _) = infer(&with, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["template"], "dataset");
    assert_eq!(v["prompt"], training_text(&row.problem));
    assert_eq!(v["problems"].as_array().unwrap().len(), 3, "{v}");
    // text output: the sections, then what was missing and the raw response
    let (text, err) = infer(&with, &[]);
    assert!(err.contains("prompt template: dataset"), "{err}");
    assert!(text.contains("== observe ==\nA red circle.\n"), "{text}");
    assert!(text.contains("== could not parse ==\n- scene: no <scene>…</scene> pair in the response\n- think: no <think>…</think> pair in the response\n- answer: no <answer>…</answer> pair in the response\n"), "{text}");
    assert!(
        text.ends_with("== raw response ==\n<observe>A red circle.</observe>\n<think>It is left\n"),
        "{text}"
    );
    // --template overrides; without a recorded template the evaluation template is the default
    let (json, _) = infer(&with, &["--json", "--template", "spatialthinker"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["prompt"]
        .as_str()
        .unwrap()
        .starts_with("You FIRST observe the image"));
    let (json, _) = infer(&without, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["template"], "spatialthinker");
    let out = Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
        .args(["infer", "--model"])
        .arg(&without)
        .arg("--image")
        .arg(&image)
        .args(["--question", "Q?", "--template", "dataset", "--response"])
        .arg(&response)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("records no prompt template"), "{err}");
}
