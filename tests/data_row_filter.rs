//! The row scan before training and `data validate`: on the bad-rows fixture (a corrupt image, an
//! answer without tags, a prompt without the image-size line, an over-long prompt) both report
//! exactly those four rows with their reasons; the prompt lengths counted are the trainer's; and a
//! loader excluding the scanned rows batches every other row.

use std::path::{Path, PathBuf};
use std::process::Command;

use data::synth::SynthConfig;
use data::testing::{write_bad_rows_dataset, BadRowsDataset};
use data::{ColumnNames, Cursor, Loader, LoaderConfig};
use image::DynamicImage;
use trainer::processor::Processor;
use trainer::train::rollout::PromptBuilder;
use trainer::train::row_filter::{
    prompt_token_count, scan_rows, PromptLengthCheck, RowScan, SkipReason,
};

/// The embedded default's prompt settings (configs/tiny-cpu.toml).
const MAX_PROMPT_LENGTH: usize = 512;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen25vl/tiny3b")
}

fn builder() -> PromptBuilder {
    PromptBuilder {
        min_pixels: 3136,
        max_pixels: 12544,
        max_prompt_length: MAX_PROMPT_LENGTH,
        format_prompt: None,
    }
}

fn fixture(dir: &Path) -> BadRowsDataset {
    let cfg = SynthConfig {
        seed: 21,
        rows_per_group: 4,
        ..SynthConfig::default()
    };
    write_bad_rows_dataset(&cfg, dir, 12, 3).unwrap()
}

fn scan(fixture: &BadRowsDataset, prompts: Option<PromptLengthCheck<'_>>) -> RowScan {
    let mut progress = Vec::new();
    let scan = scan_rows(
        std::slice::from_ref(&fixture.train),
        &ColumnNames::default(),
        rewards::RewardKind::Spatial,
        prompts,
        &mut |done| progress.push(done),
    )
    .unwrap();
    // one call per row group of 4 rows
    assert_eq!(progress, [4, 8, 12]);
    scan
}

#[test]
fn the_scan_reports_exactly_the_four_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixture(dir.path());
    let bad = fixture.bad;
    assert_eq!(bad.all(), [2, 4, 7, 9]);
    let processor = Processor::from_model_dir(&model_dir()).unwrap();
    let builder = builder();
    let check = PromptLengthCheck {
        processor: &processor,
        builder: &builder,
    };
    let scan = scan(&fixture, Some(check));
    assert_eq!(scan.rows, 12);
    assert!(scan.prompt_lengths_checked);
    let rows: Vec<usize> = scan.skipped.iter().map(|s| s.row.row).collect();
    assert_eq!(rows, bad.all());
    assert!(scan.skipped.iter().all(|s| *s.row.file == fixture.train));
    let reasons: Vec<&SkipReason> = scan.skipped.iter().map(|s| &s.reason).collect();
    assert!(
        matches!(reasons[0], SkipReason::BadImage { message } if message.starts_with("image does not decode")),
        "{}",
        reasons[0]
    );
    assert_eq!(
        reasons[1],
        &SkipReason::AnswerWithoutTags {
            message: "no <scene>...</scene> block".into()
        }
    );
    assert_eq!(reasons[2], &SkipReason::NoImageSize);
    let SkipReason::PromptTooLong { tokens, max } = *reasons[3] else {
        panic!("{}", reasons[3]);
    };
    assert_eq!(max, MAX_PROMPT_LENGTH);
    assert!(tokens > 2000, "{tokens}");
    assert_eq!(
        scan.counts().into_iter().collect::<Vec<_>>(),
        [
            ("answer_without_tags", 1),
            ("bad_image", 1),
            ("no_image_size", 1),
            ("prompt_too_long", 1)
        ]
    );
    assert_eq!(
        scan.skipped[2].to_string(),
        format!(
            "{} row 7: prompt has no `Image size: (W x H)` line with positive integers (the \
             spatial reward raises on it)",
            fixture.train.display()
        )
    );
    // 4 of 12 rows: over the default limit; allowed under a third
    let err = scan.check_budget(0.01).unwrap_err();
    assert_eq!(err.first, scan.skipped[0]);
    assert!(
        err.to_string().contains("(4 of 12 rows skipped, 33.33%"),
        "{err}"
    );
    assert!(scan.check_budget(0.34).is_ok());

    // without a processor the over-long row is not found, the others are
    let scan = self::scan(&fixture, None);
    assert!(!scan.prompt_lengths_checked);
    let rows: Vec<usize> = scan.skipped.iter().map(|s| s.row.row).collect();
    assert_eq!(rows, [2, 4, 7]);
}

#[test]
fn counted_lengths_are_the_trainers_prompt_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixture(dir.path());
    let processor = Processor::from_model_dir(&model_dir()).unwrap();
    let with_prefix = PromptBuilder {
        format_prompt: Some("  Answer briefly. <image> ".into()),
        min_pixels: 40_000,
        max_pixels: 60_000,
        ..builder()
    };
    let mut seen = 0;
    for builder in [builder(), with_prefix] {
        let cfg = LoaderConfig {
            batch_size: 4,
            shuffle: false,
            drop_last: false,
            ..LoaderConfig::default()
        };
        let mut loader =
            Loader::open(std::slice::from_ref(&fixture.train), cfg, Cursor::default()).unwrap();
        let long = PromptBuilder {
            max_prompt_length: 100_000,
            ..builder.clone()
        };
        while let Some(batch) = loader.next_batch_of(0).unwrap() {
            for sample in &batch.samples {
                let encoded = long.encode(&processor, sample).unwrap();
                let image = DynamicImage::ImageRgb8(sample.image.clone());
                let counted =
                    prompt_token_count(&processor, &builder, &sample.record.prompt, &image)
                        .unwrap();
                assert_eq!(counted, encoded.ids.len(), "{}", encoded.row);
                // the builder refuses exactly the rows the scan calls over-long
                assert_eq!(
                    builder.encode(&processor, sample).is_err(),
                    counted > builder.max_prompt_length
                );
                seen += 1;
            }
        }
    }
    // the 9 rows the loader's checks pass, twice
    assert_eq!(seen, 18);
}

#[test]
fn a_loader_excluding_the_scanned_rows_batches_all_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixture(dir.path());
    let processor = Processor::from_model_dir(&model_dir()).unwrap();
    let builder = builder();
    let scan = scan(
        &fixture,
        Some(PromptLengthCheck {
            processor: &processor,
            builder: &builder,
        }),
    );
    let cfg = LoaderConfig {
        batch_size: 2,
        seed: 3,
        exclude: scan.exclusion(),
        ..LoaderConfig::default()
    };
    let mut loader =
        Loader::open(std::slice::from_ref(&fixture.train), cfg, Cursor::default()).unwrap();
    let mut rows = Vec::new();
    while let Some(batch) = loader.next_batch_of(0).unwrap() {
        for sample in &batch.samples {
            // every batched row fits the prompt limit
            builder.encode(&processor, sample).unwrap();
            rows.push(sample.record.source.row);
        }
    }
    rows.sort_unstable();
    assert_eq!(rows, [0, 1, 3, 5, 6, 8, 10, 11]);
    assert_eq!(loader.excluded_rows(), 4);
    assert_eq!(loader.report().bad_rows, 0);
}

fn validate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
        .args(["data", "validate"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn data_validate_lists_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixture(dir.path());
    let root = fixture.root.to_str().unwrap();
    let model = model_dir();
    let (ok, stdout, stderr) = validate(&[root, "--model", model.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("4 rows to skip"), "{stderr}");
    let file = fixture.train.display();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "prompt lengths: checked against max_prompt_length = 512 with the processor of {}",
            model.display()
        )
    );
    assert_eq!(lines[1], "train: 12 rows, 4 to skip, 0 warnings");
    assert!(
        lines[2].starts_with(&format!(
            "  {file} row 2: image cannot be decoded (image does not decode"
        )),
        "{stdout}"
    );
    assert_eq!(
        lines[3],
        format!("  {file} row 4: answer lacks what the reward reads (no <scene>...</scene> block)")
    );
    assert_eq!(
        lines[4],
        format!(
            "  {file} row 7: prompt has no `Image size: (W x H)` line with positive integers \
             (the spatial reward raises on it)"
        )
    );
    assert!(
        lines[5].starts_with(&format!("  {file} row 9: prompt has "))
            && lines[5].ends_with(" tokens (image included), more than max_prompt_length = 512"),
        "{stdout}"
    );
    assert_eq!(lines[6], "val: 3 rows, 0 to skip, 0 warnings");
    assert_eq!(lines.len(), 7, "{stdout}");

    // without a model the over-long prompt is not checked, and it says so
    let (ok, stdout, _) = validate(&[root, "--max-prompt-length", "300"]);
    assert!(!ok);
    assert!(stdout.starts_with(
        "prompt lengths: not checked (pass --model DIR to count prompt tokens against \
         max_prompt_length = 300)\ntrain: 12 rows, 3 to skip, 0 warnings\n"
    ));
    assert!(!stdout.contains("row 9"), "{stdout}");

    // a limit the long prompt fits under; `--policy error` makes the first row the error
    let (ok, stdout, stderr) = validate(&[
        root,
        "--model",
        model.to_str().unwrap(),
        "--max-prompt-length",
        "100000",
        "--policy",
        "error",
    ]);
    assert!(!ok);
    assert!(!stdout.contains("to skip"), "{stdout}");
    assert!(
        stderr.contains(&format!("{file} row 2: image cannot be decoded")),
        "{stderr}"
    );
}
