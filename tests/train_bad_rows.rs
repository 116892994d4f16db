//! Unusable dataset rows do not end a run: on a training split with a corrupt image, an answer
//! without tags, a prompt without the image-size line and an over-long prompt, `train` finishes,
//! names the four rows in its log and lists them in `metrics.jsonl`; with
//! `data.max_skipped_fraction = 0` it stops with an error naming the first of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use data::synth::SynthConfig;
use data::testing::{write_bad_rows_dataset, BadRowsDataset};

fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen25vl/tiny3b")
}

/// 12 training rows (bad ones at 2, 4, 7 and 9) and 3 clean validation rows.
fn fixture(dir: &Path) -> BadRowsDataset {
    let cfg = SynthConfig {
        seed: 5,
        ..SynthConfig::default()
    };
    write_bad_rows_dataset(&cfg, &dir.join("data"), 12, 3).unwrap()
}

/// `spatialthinker train` on the embedded default shrunk to seconds: the fixture model, no
/// warm-up, 2 RL steps of 2 prompts × 2 responses, validation at the end.
fn train(out: &Path, data: &Path, extra: &[&str]) -> Output {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let mut sets = vec![
        format!("model.path={}", q(&tiny_model())),
        format!("trainer.output_dir={}", q(out)),
        format!("data.train_files={}", q(data)),
        format!("data.val_files={}", q(data)),
        "trainer.max_steps=2".into(),
        "sft.enabled=false".into(),
        "trainer.val_before_train=false".into(),
        "trainer.val_freq=0".into(),
        "data.rollout_batch_size=2".into(),
        "data.val_batch_size=3".into(),
        "actor.global_batch_size=1".into(),
        "rollout.n=2".into(),
        "actor.micro_batch_size_per_device_for_update=1".into(),
        "actor.micro_batch_size_per_device_for_experience=2".into(),
        "data.max_response_length=6".into(),
        "model.output_vocab=\"full\"".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spatialthinker"));
    cmd.arg("train").arg("--quiet");
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    cmd.output().unwrap()
}

/// The `skipped_rows` events of a run's `metrics.jsonl`: (split, file, row, reason kind).
fn skipped_events(out: &Path) -> Vec<(String, String, u64, String)> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let mut rows = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["event"] != "skipped_rows" {
            continue;
        }
        for r in v["rows"].as_array().unwrap() {
            rows.push((
                v["split"].as_str().unwrap().to_string(),
                r["file"].as_str().unwrap().to_string(),
                r["row"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            ));
        }
    }
    rows
}

#[test]
fn a_run_skips_unusable_rows_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixture(dir.path());
    assert_eq!(fixture.bad.all(), [2, 4, 7, 9]);
    let out = dir.path().join("run");
    // 4 of 12 rows is 33 %: allow half the split for this test
    let run = train(&out, &fixture.root, &["data.max_skipped_fraction=0.5"]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "train failed:\n{log}");
    let file = fixture.train.display().to_string();
    for (row, reason) in [
        (2, "image cannot be decoded"),
        (4, "answer lacks what the reward reads"),
        (7, "no `Image size: (W x H)` line"),
        (9, "more than max_prompt_length = 512"),
    ] {
        let line = format!("warning: skipping {file} row {row}: ");
        let found = log.lines().find(|l| l.starts_with(&line));
        assert!(
            found.is_some_and(|l| l.contains(reason)),
            "{line}… {reason} not in the log:\n{log}"
        );
    }
    let events = skipped_events(&out);
    let expected: Vec<(String, String, u64, String)> = [
        (2, "bad_image"),
        (4, "answer_without_tags"),
        (7, "no_image_size"),
        (9, "prompt_too_long"),
    ]
    .into_iter()
    .map(|(row, kind)| ("train".into(), file.clone(), row, kind.into()))
    .collect();
    assert_eq!(events, expected);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("validation after GRPO:  reward"),
        "{stdout}"
    );
    assert!(
        out.join("checkpoint-2")
            .join("trainer_state.json")
            .is_file(),
        "the run reached its last checkpoint"
    );
}

#[test]
fn with_no_skips_allowed_the_first_unusable_row_is_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixture(dir.path());
    let out = dir.path().join("run");
    let run = train(&out, &fixture.root, &["data.max_skipped_fraction=0"]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "train should have stopped:\n{log}");
    let error = log
        .lines()
        .find(|l| l.starts_with("Error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    let first = format!("{} row 2: image cannot be decoded", fixture.train.display());
    assert!(error.contains(&first), "{error}");
    assert!(
        error.contains("4 of 12 rows skipped") && error.contains("max_skipped_fraction = 0"),
        "{error}"
    );
    assert!(
        !out.join("checkpoint-1").exists(),
        "no step ran before the error"
    );
}
