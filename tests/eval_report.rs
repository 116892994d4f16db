//! `eval report` and side-by-side evaluation: two tiny-checkpoint runs of CV-Bench (fixture in
//! its published layout), the comparison table beside the paper's published numbers, the
//! headline arithmetic (CV-Bench 2D/3D pooled from the tasks, their mean, the common-benchmark
//! average) against hand-computed values, and the PNG chart.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, ListBuilder, StringArray, StringBuilder, StructArray};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use image::{ImageFormat, Rgb, RgbImage};
use parquet::arrow::ArrowWriter;

use trainer::eval::chart::{plot_top, AXIS, BAR, COLOURS, LEFT};
use trainer::eval::compare::{load_run, paper_results, Comparison};
use trainer::eval::report::{Accuracy, EvalReport};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
}

fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen25vl/tiny3b")
}

fn jpeg_col(n: usize) -> ArrayRef {
    let img = RgbImage::from_pixel(56, 42, Rgb([90, 120, 200]));
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Jpeg).unwrap();
    let b = bytes.into_inner();
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    Arc::new(StructArray::new(
        fields,
        vec![
            Arc::new(BinaryArray::from(vec![Some(b.as_slice()); n])),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
        ],
        None,
    ))
}

fn text(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn write_cv(path: &Path, tasks: &[&str]) {
    let n = tasks.len();
    let mut choices = ListBuilder::new(StringBuilder::new());
    for _ in 0..n {
        choices.values().append_value("left");
        choices.values().append_value("right");
        choices.append(true);
    }
    let batch = RecordBatch::try_from_iter(vec![
        ("task", text(tasks)),
        ("image", jpeg_col(n)),
        (
            "prompt",
            text(&vec!["Where is the lamp?\n(A) left\n(B) right"; n]),
        ),
        ("choices", Arc::new(choices.finish()) as ArrayRef),
        ("answer", text(&vec!["(A)"; n])),
    ])
    .unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn two_tiny_checkpoint_runs_and_the_paper_table() {
    let dir = tempfile::tempdir().unwrap();
    let cv = dir.path().join("cv-bench");
    std::fs::create_dir_all(&cv).unwrap();
    write_cv(&cv.join("test_2d.parquet"), &["Count", "Relation"]);
    write_cv(&cv.join("test_3d.parquet"), &["Depth"]);
    // Two "checkpoints": the tiny fixture under two names.
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for name in ["base", "trained"] {
        std::os::unix::fs::symlink(tiny_model(), models.join(name)).unwrap();
    }
    let out = dir.path().join("runs");
    let run = bin()
        .args(["eval", "--benchmark", "cv-bench", "--max-new-tokens", "3"])
        .args(["--batch-size", "2", "--out"])
        .arg(&out)
        .arg("--data")
        .arg(&cv)
        .arg("--model")
        .arg(models.join("base"))
        .arg("--model")
        .arg(models.join("trained"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("cv-bench: 3 rows"), "{err}");
    for name in ["base", "trained"] {
        let log = std::fs::read_to_string(out.join(name).join("cv-bench/samples.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 3);
        let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        for key in ["prompt", "response", "answer", "gt", "correct"] {
            assert!(first.get(key).is_some(), "{key} in {first}");
        }
        assert!(first["prompt"]
            .as_str()
            .unwrap()
            .ends_with("(56 x 42)\n\nNow answer the following question:\nWhere is the lamp?\n(A) left\n(B) right"));
    }
    // Side by side: the comparison of the two runs.
    assert!(out.join("comparison.md").is_file() && out.join("comparison.png").is_file());

    // eval report on the two runs, with the paper's numbers.
    let rep = dir.path().join("report");
    let run = bin()
        .args(["eval", "report", "--paper", "--out"])
        .arg(&rep)
        .arg(out.join("base"))
        .arg(out.join("trained"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let md = std::fs::read_to_string(rep.join("comparison.md")).unwrap();
    assert_eq!(md, String::from_utf8(run.stdout).unwrap());
    assert!(md.contains(
        "| Benchmark | base | trained | paper: Qwen2.5-VL-3B | paper: Qwen2.5-VL-7B | paper: SpatialThinker-3B | paper: SpatialThinker-7B |"
    ), "{md}");
    assert!(
        md.contains("| 3DSRBench | – | – | 44.0 | 48.4 | 52.9 | 56.4 |"),
        "{md}"
    );
    assert!(md.contains("| CV-Bench (mean of 2D, 3D) |"), "{md}");
    assert!(md.contains("| cv-bench · Count |"), "{md}");
    assert!(
        md.contains("| Avg. Acc. (12) as stated on the page (its benchmark set is not stated) | – | – | 57.3 | 64.0 | 66.3 | 71.2 |"),
        "{md}"
    );
    // The common set of every column is CV-Bench alone here.
    assert!(
        md.contains("| Mean over the 1 of the paper's 12 benchmarks every column has (CV-Bench (mean of 2D, 3D)) |"),
        "{md}"
    );
    // Run cells agree with the runs' own reports.
    let base: EvalReport = serde_json::from_str(
        &std::fs::read_to_string(out.join("base/cv-bench/report.json")).unwrap(),
    )
    .unwrap();
    let count = base.categories["Count"];
    assert!(
        md.contains(&format!(
            "| cv-bench · Count | {:.2} ± {:.2} |",
            count.accuracy * 100.0,
            count.std_err * 100.0
        )),
        "{md}"
    );

    // The chart: one legend entry and bar colour per column; the paper's SpatialThinker-7B
    // 3DSRBench bar (first headline row, sixth column) is 56.4 % of the axis long.
    let png = image::open(rep.join("comparison.png")).unwrap().to_rgb8();
    let top = plot_top(6);
    let y = (top + 5 * BAR + BAR / 2) as u32;
    let len = (0.564 * AXIS as f64).round() as u32;
    let x0 = LEFT as u32;
    assert_eq!(png.get_pixel(x0 + 1, y).0, COLOURS[5]);
    assert_eq!(png.get_pixel(x0 + len - 1, y).0, COLOURS[5]);
    assert_ne!(png.get_pixel(x0 + len + 1, y).0, COLOURS[5]);
    // The runs have no 3DSRBench bar.
    let y_run = (top + BAR / 2) as u32;
    assert_ne!(png.get_pixel(x0 + 2, y_run).0, COLOURS[0]);
}

/// Per benchmark: (category, correct, total) rows; an empty category counts only overall.
type Counts<'a> = &'a [(&'a str, &'a [(&'a str, usize, usize)])];

/// A run folder with reports written by hand.
fn run_with(dir: &Path, name: &str, reports: Counts) -> PathBuf {
    let run = dir.join(name);
    for (bench, cats) in reports {
        let sub = run.join(bench);
        std::fs::create_dir_all(&sub).unwrap();
        let (c, t) = cats
            .iter()
            .fold((0, 0), |(c, t), (_, ci, ti)| (c + ci, t + ti));
        let categories: BTreeMap<String, Accuracy> = cats
            .iter()
            .filter(|(k, _, _)| !k.is_empty())
            .map(|(k, c, t)| (k.to_string(), Accuracy::new(*c, *t)))
            .collect();
        let report = EvalReport {
            run: [("benchmark".to_string(), bench.to_string())].into(),
            overall: Accuracy::new(c, t),
            categories,
            reward_accuracy: None,
        };
        report.write(&sub).unwrap();
    }
    run
}

#[test]
fn headline_arithmetic_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    // Run A: all of CV-Bench (2D = Count 3/4 + Relation 1/4 = 4/8; 3D = Depth 2/2 + Distance
    // 0/2 = 2/4), BLINK Rel 1/2 and Depth 2/2, MMVP 3/4.
    let a = run_with(
        dir.path(),
        "a",
        &[
            (
                "cv-bench",
                &[
                    ("Count", 3, 4),
                    ("Relation", 1, 4),
                    ("Depth", 2, 2),
                    ("Distance", 0, 2),
                ],
            ),
            ("blink-spatial", &[("", 1, 2)]),
            ("blink-depth", &[("", 2, 2)]),
            ("mmvp", &[("", 3, 4)]),
        ],
    );
    // Run B: CV-Bench as its two configs, and MMVP; no BLINK.
    let b = run_with(
        dir.path(),
        "b",
        &[
            ("cv-bench-2d", &[("Count", 1, 1), ("Relation", 0, 1)]),
            ("cv-bench-3d", &[("Depth", 1, 1), ("Distance", 1, 1)]),
            ("mmvp", &[("", 1, 4)]),
        ],
    );
    let runs = vec![load_run(&a).unwrap(), load_run(&b).unwrap()];
    let cmp = Comparison::build(runs, true).unwrap();
    let row = |label: &str| {
        cmp.rows
            .iter()
            .find(|r| r.label == label)
            .unwrap_or_else(|| panic!("row {label}"))
    };
    let pct = |label: &str, col: usize| row(label).values[col].map(|v| v.percent);
    // CV-Bench 2D of A pooled: 4/8 = 50 %; s.e. sqrt(.25/8) = 17.678 %.
    let v = row("CV-Bench 2D").values[0].unwrap();
    assert!((v.percent - 50.0).abs() < 1e-9);
    assert!((v.std_err.unwrap() - 17.677_669_529_663_69).abs() < 1e-9);
    assert_eq!(pct("CV-Bench 3D", 0), Some(50.0));
    // Mean of 2D and 3D; its s.e. sqrt(se2d² + se3d²) / 2, se3d = sqrt(.25/4) = 25 %.
    let v = row("CV-Bench (mean of 2D, 3D)").values[0].unwrap();
    assert!((v.percent - 50.0).abs() < 1e-9);
    let want = (17.677_669_529_663_69_f64.powi(2) + 25.0_f64.powi(2)).sqrt() / 2.0;
    assert!((v.std_err.unwrap() - want).abs() < 1e-9);
    // B: 2D 1/2, 3D 2/2 → mean 75 %.
    assert_eq!(pct("CV-Bench (mean of 2D, 3D)", 1), Some(75.0));
    // BLINK mean for A: (50 + 100) / 2; B has none.
    assert_eq!(pct("BLINK (mean of Rel, Depth)", 0), Some(75.0));
    assert_eq!(pct("BLINK (mean of Rel, Depth)", 1), None);
    // Common to every column (runs and paper): CV-Bench and MMVP → A (50 + 75) / 2 = 62.5,
    // B (75 + 25) / 2 = 50, SpatialThinker-7B (78.2 + 78.0) / 2 = 78.1.
    assert_eq!(cmp.common, ["cv-bench", "mmvp"]);
    let avg = cmp
        .rows
        .iter()
        .find(|r| r.label.starts_with("Mean over the 2"))
        .unwrap();
    assert_eq!(avg.values[0].unwrap().percent, 62.5);
    assert_eq!(avg.values[1].unwrap().percent, 50.0);
    assert!((avg.values[5].unwrap().percent - 78.1).abs() < 1e-9);
    // All twelve: only the paper columns have them; SpatialThinker-7B's mean of its twelve
    // published columns is 848.8 / 12 = 70.733…, the page states 71.2.
    let all = cmp
        .rows
        .iter()
        .find(|r| r.label.starts_with("Mean over all 12"))
        .unwrap();
    assert_eq!(all.values[0], None);
    assert!((all.values[5].unwrap().percent - 848.8 / 12.0).abs() < 1e-9);
    // Category rows come from the runs only.
    assert_eq!(row("cv-bench · Count").values[0].unwrap().n, Some(4));
    assert_eq!(row("cv-bench · Count").values[5], None);
}

#[test]
fn paper_columns_equal_the_published_numbers() {
    // Typed from the project page (website branch, index.html L624-L789 at c5c8f55).
    let published: [(&str, [f64; 16], f64); 4] = [
        (
            "Qwen2.5-VL-3B",
            [
                44.0, 59.9, 60.2, 60.0, 66.4, 54.0, 60.2, 67.0, 68.0, 49.9, 55.9, 74.9, 58.2, 41.9,
                58.7, 46.3,
            ],
            57.3,
        ),
        (
            "Qwen2.5-VL-7B",
            [
                48.4, 69.1, 68.0, 68.6, 84.0, 52.4, 68.2, 72.3, 70.6, 62.5, 63.9, 75.9, 68.4, 44.1,
                70.6, 52.9,
            ],
            64.0,
        ),
        (
            "SpatialThinker-3B",
            [
                52.9, 71.0, 76.3, 73.6, 81.8, 66.9, 74.4, 69.0, 76.5, 61.5, 57.6, 78.0, 66.3, 46.5,
                70.6, 62.5,
            ],
            66.3,
        ),
        (
            "SpatialThinker-7B",
            [
                56.4, 77.7, 78.7, 78.2, 86.0, 72.6, 79.3, 78.0, 82.7, 66.4, 65.9, 81.7, 69.2, 48.3,
                76.3, 66.4,
            ],
            71.2,
        ),
    ];
    let ids = [
        "3dsrbench",
        "cv-bench-2d",
        "cv-bench-3d",
        "cv-bench",
        "blink-spatial",
        "blink-depth",
        "blink",
        "mmvp",
        "spatialreasoner",
        "spatialbench",
        "mm-star",
        "vstar",
        "realworld_qa",
        "mme-rw-lite",
        "robospatial",
        "hallusionbench",
    ];
    let (models, url) = paper_results().unwrap();
    assert!(
        url.contains("c5c8f55922eaec30350b71c8cc0a72eb36da229f"),
        "{url}"
    );
    assert_eq!(models.len(), 4);
    for ((name, values, avg), m) in published.iter().zip(&models) {
        assert_eq!(m.name, *name);
        assert_eq!(m.results.len(), 16, "{name}");
        for (id, v) in ids.iter().zip(values) {
            assert_eq!(m.results[*id], *v, "{name} {id}");
        }
        assert_eq!(m.stated_avg12, *avg);
    }
}

#[test]
fn multi_image_rows_run_through_the_tiny_checkpoint() {
    // RoboSpatial-Home rows carry an RGB and a depth image: one user turn with both images.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("robospatial/data");
    std::fs::create_dir_all(&data).unwrap();
    let n = 2;
    let mut options = ListBuilder::new(StringBuilder::new());
    for _ in 0..n {
        options.values().append_value("yes");
        options.values().append_value("no");
        options.append(true);
    }
    let batch = RecordBatch::try_from_iter(vec![
        ("image", jpeg_col(n)),
        ("depth_image", jpeg_col(n)),
        (
            "prompt",
            text(&vec!["Can the mug fit on the shelf?\n(A) yes\n(B) no"; n]),
        ),
        ("answer", text(&vec!["(A)"; n])),
        ("options", Arc::new(options.finish()) as ArrayRef),
        ("category", text(&["compatibility", "configuration"])),
    ])
    .unwrap();
    let file = std::fs::File::create(data.join("train-00000-of-00001.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out = dir.path().join("run");
    let run = bin()
        .args([
            "eval",
            "--benchmark",
            "robospatial",
            "--max-new-tokens",
            "2",
        ])
        .args(["--batch-size", "2", "--out"])
        .arg(&out)
        .arg("--data")
        .arg(dir.path().join("robospatial"))
        .arg("--model")
        .arg(tiny_model())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: EvalReport = serde_json::from_str(
        &std::fs::read_to_string(out.join("robospatial/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report.overall.total, 2);
    assert_eq!(report.run["benchmark"], "robospatial");
    assert_eq!(
        report.categories.keys().collect::<Vec<_>>(),
        ["compatibility", "configuration"]
    );
}
