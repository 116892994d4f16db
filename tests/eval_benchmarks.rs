//! Every benchmark of the authors' evaluation read from a small fixture in its published layout
//! (docs/benchmarks.md: the hub repository's file names, columns, types and image encoding),
//! from a local folder and from the Hugging Face cache layout: rows read, the prompt text, the
//! extracted answers and the per-category accuracy, checked against values worked out by hand;
//! and the matcher on every case `evals.py` handles, in fixed and legacy mode.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int64Array, ListBuilder, StringArray, StringBuilder, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use image::{ImageFormat, Rgb, RgbImage};
use parquet::arrow::ArrowWriter;

use trainer::eval::benchmarks::{load, locate, Benchmark};
use trainer::eval::dataset::EvalSample;
use trainer::eval::matching::{score, score_text, MatchMode, MatchRule};
use trainer::eval::report::{Accuracy, EvalReport, SampleRecord};
use trainer::eval::runner::{build_prompt, score_response};
use trainer::infer::prompt::{Template, SPATIAL_THINKER_TEMPLATE};

// ---------------------------------------------------------------------------------------------
// Writing fixtures in the published layouts.

/// An encoded image of `w` x `h` pixels.
fn encoded(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_pixel(w, h, Rgb([200, 60, 30]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A Hugging Face `Image` column: struct<bytes: binary, path: string>, a null struct where a row
/// has no image.
fn image_col(images: &[Option<(Vec<u8>, &str)>]) -> ArrayRef {
    let bytes = BinaryArray::from(
        images
            .iter()
            .map(|i| i.as_ref().map(|(b, _)| b.as_slice()))
            .collect::<Vec<_>>(),
    );
    let paths = StringArray::from(
        images
            .iter()
            .map(|i| i.as_ref().map(|(_, p)| *p))
            .collect::<Vec<_>>(),
    );
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let valid = NullBuffer::from(images.iter().map(Option::is_some).collect::<Vec<_>>());
    Arc::new(StructArray::new(
        fields,
        vec![Arc::new(bytes), Arc::new(paths)],
        Some(valid),
    ))
}

fn text(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn opt_text(v: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn int(v: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(v.to_vec()))
}

/// A `Sequence(Value("string"))` column: list<string>.
fn list(v: &[&[&str]]) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for row in v {
        for s in *row {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// One row's image: encoded bytes and the file name HF records beside them (or none).
type Img = Option<(Vec<u8>, &'static str)>;

fn png(w: u32, h: u32) -> Img {
    Some((encoded(w, h, ImageFormat::Png), "x.png"))
}

fn jpeg(w: u32, h: u32) -> Img {
    Some((encoded(w, h, ImageFormat::Jpeg), "x.jpg"))
}

// ---------------------------------------------------------------------------------------------
// Running responses through the pipeline.

/// The SpatialThinker evaluation prompt for an image of `w` x `h` and an instruction.
fn st_prompt(w: u32, h: u32, instruction: &str) -> String {
    format!("{SPATIAL_THINKER_TEMPLATE}\n({w} x {h})\n\nNow answer the following question:\n{instruction}")
}

fn read(bench: Benchmark, root: &Path) -> Vec<EvalSample> {
    let cache = tempfile::tempdir().unwrap();
    let root = locate(bench, Some(root.to_str().unwrap()), cache.path()).unwrap();
    load(bench, &root).unwrap()
}

/// Score `responses` (one per sample, in order) under `mode`.
fn score_all(samples: &[EvalSample], responses: &[&str], mode: MatchMode) -> Vec<SampleRecord> {
    assert_eq!(samples.len(), responses.len());
    samples
        .iter()
        .zip(responses)
        .map(|(s, r)| {
            let p = build_prompt(s, Template::Spatialthinker).unwrap();
            score_response(s, &p.text, r.to_string(), mode)
        })
        .collect()
}

fn report(records: &[SampleRecord]) -> EvalReport {
    EvalReport::from_records(records, BTreeMap::new())
}

fn correct(records: &[SampleRecord]) -> Vec<bool> {
    records.iter().map(|r| r.correct).collect()
}

fn answers(records: &[SampleRecord]) -> Vec<Option<&str>> {
    records.iter().map(|r| r.answer.as_deref()).collect()
}

// ---------------------------------------------------------------------------------------------
// CV-Bench: nyu-visionx/CV-Bench, test_2d.parquet + test_3d.parquet at the root.

fn cv_bench(root: &Path) {
    let p0 = "How many cars are in the image? Select from the following choices.\n(A) 3\n(B) 2\n(C) 1\n(D) 0";
    let p1 = "How many chairs are in the image? Select from the following choices.\n(A) 4\n(B) 2\n(C) 1\n(D) 0";
    let p2 = "Considering the relative positions of the lamp and the bed, where is the lamp located with respect to the bed? Select from the following choices.\n(A) left\n(B) right";
    write_parquet(
        &root.join("test_2d.parquet"),
        vec![
            ("idx", int(&[0, 1, 2])),
            ("type", text(&["2D", "2D", "2D"])),
            ("task", text(&["Count", "Count", "Relation"])),
            (
                "image",
                image_col(&[jpeg(40, 30), jpeg(40, 30), png(64, 48)]),
            ),
            (
                "question",
                text(&[
                    "How many cars are in the image?",
                    "How many chairs are in the image?",
                    "Where is the lamp?",
                ]),
            ),
            (
                "choices",
                list(&[
                    &["3", "2", "1", "0"],
                    &["4", "2", "1", "0"],
                    &["left", "right"],
                ]),
            ),
            ("answer", text(&["(B)", "(A)", "(A)"])),
            ("prompt", text(&[p0, p1, p2])),
            ("filename", text(&["img/2D/count/a.png", "b", "c"])),
            ("source", text(&["ADE20K", "COCO", "ADE20K"])),
        ],
    );
    let p3 = "Which object is closer to the camera taking this photo, the lamp (highlighted by a red box) or the chair (highlighted by a blue box)?\n(A) lamp\n(B) chair";
    let p4 = "Estimate the real-world distances between objects in this image. Which object is closer to the table, the lamp or the chair?\n(A) the lamp\n(B) the chair";
    write_parquet(
        &root.join("test_3d.parquet"),
        vec![
            ("idx", int(&[3, 4])),
            ("type", text(&["3D", "3D"])),
            ("task", text(&["Depth", "Distance"])),
            ("image", image_col(&[jpeg(50, 20), jpeg(50, 20)])),
            ("question", text(&["Which is closer?", "Which is closer?"])),
            (
                "choices",
                list(&[&["lamp", "chair"], &["the lamp", "the chair"]]),
            ),
            ("answer", text(&["(B)", "(A)"])),
            ("prompt", text(&[p3, p4])),
            ("filename", text(&["d", "e"])),
            ("source", text(&["Omni3D", "Omni3D"])),
        ],
    );
}

/// | row | task     | truth | answer          | fixed            | legacy              |
/// | 0   | Count    | B     | (B) 2           | ✓ choice text    | ✓                   |
/// | 1   | Count    | A     | C               | ✗ letter C       | ✓ fallback → A      |
/// | 2   | Relation | A     | (A) left        | ✓                | ✓                   |
/// | 3   | Depth    | B     | B.              | ✓ letter B       | ✗ fallback → A      |
/// | 4   | Distance | A     | (B) the chair   | ✗ choice B       | ✗                   |
const CV_RESPONSES: [&str; 5] = [
    "<observe>o</observe><scene>{}</scene><think>t</think><answer> (B) 2 </answer>",
    "<think>three</think><answer>C</answer>",
    "<answer>(A) left</answer>",
    "<answer>B.</answer>",
    "<answer>(B) the chair</answer>",
];

#[test]
fn cv_bench_all_2d_and_3d() {
    let dir = tempfile::tempdir().unwrap();
    cv_bench(dir.path());
    let samples = read(Benchmark::CvBench, dir.path());
    assert_eq!(samples.len(), 5);
    assert_eq!(samples[0].id, "test_2d.parquet:0");
    assert_eq!(samples[4].id, "test_3d.parquet:1");
    assert_eq!(
        samples
            .iter()
            .map(|s| s.category.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["Count", "Count", "Relation", "Depth", "Distance"]
    );
    assert_eq!(samples[2].options, ["left", "right"]);
    // The prompt column goes in as it is (its options are already there); the size is the
    // image's.
    let p = build_prompt(&samples[2], Template::Spatialthinker).unwrap();
    assert_eq!(
        p.text,
        st_prompt(
            64,
            48,
            "Considering the relative positions of the lamp and the bed, where is the lamp located with respect to the bed? Select from the following choices.\n(A) left\n(B) right"
        )
    );
    assert_eq!(p.image.unwrap().dimensions(), (64, 48));
    assert!(p.more_images.is_empty());

    let fixed = score_all(&samples, &CV_RESPONSES, MatchMode::Fixed);
    assert_eq!(
        answers(&fixed),
        [
            Some("(B) 2"),
            Some("C"),
            Some("(A) left"),
            Some("B."),
            Some("(B) the chair")
        ]
    );
    assert_eq!(correct(&fixed), [true, false, true, true, false]);
    let r = report(&fixed);
    assert_eq!(r.overall, Accuracy::new(3, 5));
    assert_eq!(r.categories["Count"], Accuracy::new(1, 2));
    assert_eq!(r.categories["Relation"], Accuracy::new(1, 1));
    assert_eq!(r.categories["Depth"], Accuracy::new(1, 1));
    assert_eq!(r.categories["Distance"], Accuracy::new(0, 1));
    // 1 of 2: p = 0.5, s.e. = sqrt(0.25 / 2) = 0.353553...
    assert!((r.categories["Count"].std_err - 0.353_553_390_593_273_8).abs() < 1e-12);

    let legacy = score_all(&samples, &CV_RESPONSES, MatchMode::Legacy);
    assert_eq!(correct(&legacy), [true, true, true, false, false]);
    assert_eq!(legacy[1].rule, MatchRule::LegacyDefaultA);
    let r = report(&legacy);
    assert_eq!(r.categories["Count"], Accuracy::new(2, 2));
    assert_eq!(r.categories["Depth"], Accuracy::new(0, 1));

    // The 2D and 3D configs read one file each.
    let two = read(Benchmark::CvBench2d, dir.path());
    assert_eq!(two.len(), 3);
    let three = read(Benchmark::CvBench3d, dir.path());
    assert_eq!(
        three.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["test_3d.parquet:0", "test_3d.parquet:1"]
    );
    // A folder without the files names what it expected.
    let empty = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let root = locate(
        Benchmark::CvBench3d,
        Some(empty.path().to_str().unwrap()),
        cache.path(),
    )
    .unwrap();
    let e = load(Benchmark::CvBench3d, &root).unwrap_err().to_string();
    assert!(
        e.contains("test_3d.parquet") && e.contains("nyu-visionx/CV-Bench"),
        "{e}"
    );
}

#[test]
fn cv_bench_from_the_hugging_face_cache_offline() {
    let cache = tempfile::tempdir().unwrap();
    let commit = "bc284db50d036958861cb60cdd7b77612052ce0d";
    let repo = cache.path().join("datasets--nyu-visionx--CV-Bench");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    cv_bench(&repo.join("snapshots").join(commit));
    std::env::set_var("HF_HUB_OFFLINE", "1");
    // By default the benchmark's own repository; an explicit hub id works the same.
    for data in [None, Some("nyu-visionx/CV-Bench")] {
        let root = locate(Benchmark::CvBench, data, cache.path()).unwrap();
        assert_eq!(root, repo.join("snapshots").join(commit));
        let samples = load(Benchmark::CvBench, &root).unwrap();
        assert_eq!(samples.len(), 5);
        let r = report(&score_all(&samples, &CV_RESPONSES, MatchMode::Fixed));
        assert_eq!(r.overall, Accuracy::new(3, 5));
    }
    // A repository that is not cached fails with the hub's explanation.
    let e = locate(Benchmark::BlinkDepth, None, cache.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("BLINK-Benchmark/BLINK") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// BLINK: BLINK-Benchmark/BLINK, one folder per config with `val-…` and `test-…` shards.

fn blink_columns(
    n: usize,
    images: [Vec<Img>; 4],
    prompts: &[&str],
    choices: &[&[&str]],
    answers: &[&str],
    sub_task: &str,
) -> Vec<(&'static str, ArrayRef)> {
    let [i1, i2, i3, i4] = images;
    let idx: Vec<String> = (0..n)
        .map(|i| format!("val_{sub_task}_{}", i + 1))
        .collect();
    vec![
        ("idx", Arc::new(StringArray::from(idx)) as ArrayRef),
        ("question", text(&vec!["q"; n])),
        ("sub_task", text(&vec![sub_task; n])),
        ("image_1", image_col(&i1)),
        ("image_2", image_col(&i2)),
        ("image_3", image_col(&i3)),
        ("image_4", image_col(&i4)),
        ("choices", list(choices)),
        ("answer", text(answers)),
        ("prompt", text(prompts)),
        ("explanation", opt_text(&vec![None; n])),
    ]
}

#[test]
fn blink_spatial_relation_and_multi_view() {
    let dir = tempfile::tempdir().unwrap();
    let sp = [
        "Is the cat under the table?\nSelect from the following choices.\n(A) yes\n(B) no",
        "Is the car beside the tree?\nSelect from the following choices.\n(A) yes\n(B) no",
    ];
    write_parquet(
        &dir.path()
            .join("Spatial_Relation/val-00000-of-00001.parquet"),
        blink_columns(
            2,
            [
                vec![png(30, 20), png(30, 20)],
                vec![None, None],
                vec![None, None],
                vec![None, None],
            ],
            &sp,
            &[&["yes", "no"], &["yes", "no"]],
            &["(A)", "(B)"],
            "Spatial_Relation",
        ),
    );
    // The test split (no answers published) is not read.
    write_parquet(
        &dir.path()
            .join("Spatial_Relation/test-00000-of-00001.parquet"),
        blink_columns(
            1,
            [vec![png(30, 20)], vec![None], vec![None], vec![None]],
            &["t"],
            &[&["yes", "no"]],
            &[""],
            "Spatial_Relation",
        ),
    );
    let samples = read(Benchmark::BlinkSpatial, dir.path());
    assert_eq!(samples.len(), 2);
    assert_eq!(
        samples[0].id,
        "Spatial_Relation/val-00000-of-00001.parquet:0"
    );
    let p = build_prompt(&samples[1], Template::Spatialthinker).unwrap();
    assert_eq!(p.text, st_prompt(30, 20, sp[1]));
    // | truth | answer           | both modes |
    // | A     | (A) yes          | ✓          |
    // | B     | yes (no tags)    | ✗ → A      |
    for mode in [MatchMode::Fixed, MatchMode::Legacy] {
        let recs = score_all(&samples, &["<answer>(A) yes</answer>", "yes"], mode);
        assert_eq!(answers(&recs), [Some("(A) yes"), Some("yes")]);
        assert_eq!(correct(&recs), [true, false]);
        assert_eq!(report(&recs).overall, Accuracy::new(1, 2));
    }

    // Multi-view: two images per row; the size in the prompt is the first image's.
    let mv = "The first image is from the beginning of the video and the second image is from the end. Is the camera moving left or right when shooting the video?\nSelect from the following choices.\n(A) left\n(B) right";
    write_parquet(
        &dir.path()
            .join("Multi-view_Reasoning/val-00000-of-00001.parquet"),
        blink_columns(
            1,
            [
                vec![jpeg(40, 24)],
                vec![jpeg(24, 40)],
                vec![None],
                vec![None],
            ],
            &[mv],
            &[&["left", "right"]],
            &["(B)"],
            "Multi-view_Reasoning",
        ),
    );
    let samples = read(Benchmark::BlinkMultiView, dir.path());
    assert_eq!((samples.len(), samples[0].images.len()), (1, 2));
    let p = build_prompt(&samples[0], Template::Spatialthinker).unwrap();
    assert_eq!(p.text, st_prompt(40, 24, mv));
    assert_eq!(p.more_images.len(), 1);
    assert_eq!(p.more_images[0].dimensions(), (24, 40));
    let recs = score_all(&samples, &["<answer>(B)</answer>"], MatchMode::Fixed);
    assert!(recs[0].correct);
    // Legacy: "(B)" leaves nothing after the letter, which is no choice's text → A.
    let recs = score_all(&samples, &["<answer>(B)</answer>"], MatchMode::Legacy);
    assert_eq!((recs[0].pred.as_str(), recs[0].correct), ("A", false));
}

// ---------------------------------------------------------------------------------------------
// The authors' re-uploads (hunarbatra/*): data/<split>-NNNNN-of-NNNNN.parquet.

#[test]
fn threedsrbench_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = [
        "Which is higher, the lamp or the shelf?\n(A) the lamp\n(B) the shelf",
        "Is the dog to the left of the car?\n(A) yes\n(B) no",
        "Is the man facing the camera?\n(A) yes\n(B) no",
        "Which object is closer to the sofa, the cup or the book?\n(A) the cup\n(B) the book\n(C) the same",
    ];
    write_parquet(
        &dir.path().join("data/test-00000-of-00001.parquet"),
        vec![
            (
                "image",
                image_col(&[jpeg(32, 32), jpeg(32, 32), jpeg(32, 32), jpeg(32, 32)]),
            ),
            ("prompt", text(&prompts)),
            ("answer", text(&["(A)", "(B)", "(A)", "(C)"])),
            (
                "choices",
                list(&[
                    &["the lamp", "the shelf"],
                    &["yes", "no"],
                    &["yes", "no"],
                    &["the cup", "the book", "the same"],
                ]),
            ),
            (
                "task",
                text(&["height", "location", "orientation", "multi_object"]),
            ),
        ],
    );
    let samples = read(Benchmark::Bench3dsr, dir.path());
    assert_eq!(samples.len(), 4);
    assert_eq!(
        build_prompt(&samples[3], Template::Spatialthinker)
            .unwrap()
            .text,
        st_prompt(32, 32, prompts[3])
    );
    // | task         | truth | answer          | fixed        | legacy       |
    // | height       | A     | (A) the lamp    | ✓            | ✓            |
    // | location     | B     | (B) no          | ✓            | ✓            |
    // | orientation  | A     | the answer is B) | ✗ B anywhere | ✓ → A        |
    // | multi_object | C     | C: the same     | ✓ letter C   | ✗ → A        |
    let responses = [
        "<answer>(A) the lamp</answer>",
        "<answer>(B) no</answer>",
        "<answer>the answer is B)</answer>",
        "<answer>C: the same</answer>",
    ];
    let fixed = score_all(&samples, &responses, MatchMode::Fixed);
    assert_eq!(correct(&fixed), [true, true, false, true]);
    assert_eq!(fixed[2].rule, MatchRule::LetterAnywhere);
    let r = report(&fixed);
    assert_eq!(r.overall, Accuracy::new(3, 4));
    assert_eq!(r.categories["orientation"], Accuracy::new(0, 1));
    assert_eq!(r.categories["multi_object"], Accuracy::new(1, 1));
    let legacy = score_all(&samples, &responses, MatchMode::Legacy);
    assert_eq!(correct(&legacy), [true, true, true, false]);
}

#[test]
fn spatialreasoner_choices_as_python_literal_text() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = [
        "Which point is closer to the camera?\n(A) point A\n(B) point B",
        "Which object is farther from the chair?\n(A) the table\n(B) the bed",
    ];
    write_parquet(
        &dir.path().join("data/train-00000-of-00001.parquet"),
        vec![
            ("image", image_col(&[png(20, 20), png(20, 20)])),
            ("prompt", text(&prompts)),
            ("answer", text(&["(B)", "(A)"])),
            // Stored as text; evals.py turns it into a list with ast.literal_eval.
            (
                "choices",
                text(&["['point A', 'point B']", "[\"the table\", 'the bed']"]),
            ),
            ("task", text(&["Depth", "Distance"])),
        ],
    );
    let samples = read(Benchmark::Spatialreasoner, dir.path());
    assert_eq!(samples[1].options, ["the table", "the bed"]);
    let recs = score_all(
        &samples,
        &["<answer>(B) point B</answer>", "<answer>the bed</answer>"],
        MatchMode::Fixed,
    );
    assert_eq!(correct(&recs), [true, false]);
    let r = report(&recs);
    assert_eq!(r.categories["Depth"], Accuracy::new(1, 1));
    assert_eq!(r.categories["Distance"], Accuracy::new(0, 1));
}

#[test]
fn robospatial_rgb_and_depth_images() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = [
        "Can the mug fit on the shelf?\n(A) yes\n(B) no",
        "Is the lamp in front of the sofa?\n(A) yes\n(B) no",
        "Is the chair to the left of the table?\n(A) yes\n(B) no",
    ];
    write_parquet(
        &dir.path().join("data/train-00000-of-00001.parquet"),
        vec![
            ("image", image_col(&[png(36, 28), png(36, 28), png(36, 28)])),
            (
                "depth_image",
                image_col(&[png(36, 28), png(36, 28), png(36, 28)]),
            ),
            ("prompt", text(&prompts)),
            ("answer", text(&["(A)", "(B)", "(A)"])),
            (
                "options",
                list(&[&["yes", "no"], &["yes", "no"], &["yes", "no"]]),
            ),
            (
                "category",
                text(&["compatibility", "configuration", "configuration"]),
            ),
        ],
    );
    let samples = read(Benchmark::Robospatial, dir.path());
    assert_eq!(samples.len(), 3);
    let p = build_prompt(&samples[0], Template::Spatialthinker).unwrap();
    assert_eq!(
        (p.text.clone(), p.more_images.len()),
        (st_prompt(36, 28, prompts[0]), 1)
    );
    // | category      | truth | answer | fixed | legacy |
    // | compatibility | A     | yes    | ✓     | ✓      |
    // | configuration | B     | A      | ✗     | ✗ (→A) |
    // | configuration | A     | B      | ✗     | ✓ (→A) |
    let responses = [
        "<answer>yes</answer>",
        "<answer>A</answer>",
        "<answer>B</answer>",
    ];
    let r = report(&score_all(&samples, &responses, MatchMode::Fixed));
    assert_eq!(r.categories["compatibility"], Accuracy::new(1, 1));
    assert_eq!(r.categories["configuration"], Accuracy::new(0, 2));
    let r = report(&score_all(&samples, &responses, MatchMode::Legacy));
    assert_eq!(r.categories["configuration"], Accuracy::new(1, 2));
}

#[test]
fn mmvp_free_text_with_the_answer_tags_request() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(
        &dir.path().join("data/train-00000-of-00001.parquet"),
        vec![
            (
                "image",
                image_col(&[jpeg(24, 24), jpeg(24, 24), jpeg(24, 24)]),
            ),
            (
                "text",
                text(&[
                    "Are the butterfly's feet visible? (a) Yes (b) No",
                    "Is the dog facing left or right? (a) Left (b) Right.",
                    "Is the door open? (a) Yes (b) No",
                ]),
            ),
            ("label", text(&["(a)", "(b)", "(a)"])),
        ],
    );
    let samples = read(Benchmark::Mmvp, dir.path());
    assert_eq!(samples.len(), 3);
    // A period is added only where the question lacks one, then the request for answer tags.
    assert_eq!(
        build_prompt(&samples[0], Template::Spatialthinker).unwrap().text,
        st_prompt(
            24,
            24,
            "Are the butterfly's feet visible? (a) Yes (b) No. Please give the final answer within answer tags."
        )
    );
    assert!(build_prompt(&samples[1], Template::Plain)
        .unwrap()
        .text
        .ends_with("(b) Right. Please give the final answer within answer tags."));
    // The label is compared as stored: "(a)" equals "(a)"; "(b) Right" reduces to "b" in the
    // parenthesis check, which is not "(b)"; "A" is not "(a)".
    let recs = score_all(
        &samples,
        &[
            "<answer>(a)</answer>",
            "<answer>(b) Right</answer>",
            "<answer>A</answer>",
        ],
        MatchMode::Fixed,
    );
    assert_eq!(correct(&recs), [true, false, false]);
    assert_eq!(recs[1].rule, MatchRule::NoChoices);
    assert_eq!(report(&recs).overall, Accuracy::new(1, 3));
}

#[test]
fn spatialbench_free_text_per_category() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(
        &dir.path().join("data/train-00000-of-00001.parquet"),
        vec![
            (
                "image",
                image_col(&[png(16, 12), png(16, 12), png(16, 12), png(16, 12)]),
            ),
            (
                "text",
                text(&[
                    "Is there a cup on the table",
                    "How many apples are there?",
                    "Has the gripper touched the rag?",
                    "Is the bottle bigger than the cup?",
                ]),
            ),
            ("answer", text(&[" Yes", "3", "No", "Yes"])),
            (
                "category",
                text(&["existence", "counting", "reach", "size"]),
            ),
        ],
    );
    let samples = read(Benchmark::Spatialbench, dir.path());
    assert_eq!(
        build_prompt(&samples[0], Template::Spatialthinker)
            .unwrap()
            .text,
        st_prompt(
            16,
            12,
            "Is there a cup on the table. Please give the final answer within answer tags."
        )
    );
    // | truth | answer    | verdict                                  |
    // | Yes   | yes       | ✓ (truth stripped, case ignored)         |
    // | 3     | 3.0       | ✓ (numerically equal)                    |
    // | No    | (B) No    | ✗ (parenthesis check gives "B")          |
    // | Yes   | no tags: Yes. | ✓ (trailing dot)                     |
    let responses = [
        "<answer>yes</answer>",
        "<answer>3.0</answer>",
        "<answer>(B) No</answer>",
        "Yes.",
    ];
    for mode in [MatchMode::Fixed, MatchMode::Legacy] {
        let recs = score_all(&samples, &responses, mode);
        assert_eq!(correct(&recs), [true, true, false, true], "{mode:?}");
        let r = report(&recs);
        assert_eq!(r.overall, Accuracy::new(3, 4));
        assert_eq!(r.categories["reach"], Accuracy::new(0, 1));
        assert_eq!(r.categories["counting"], Accuracy::new(1, 1));
    }
}

#[test]
fn realworldqa_shards_and_the_letter_only_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let q = |s: &str| {
        format!("{s}\nA. the car\nB. the tree\nPlease answer directly with only the letter of the correct option and nothing else.")
    };
    let (q0, q1, q2) = (
        q("Which is closer?"),
        q("Which is taller?"),
        q("Which is red?"),
    );
    write_parquet(
        &dir.path().join("data/test-00000-of-00002.parquet"),
        vec![
            ("image", image_col(&[jpeg(48, 36), jpeg(48, 36)])),
            ("question", text(&[&q0, &q1])),
            ("answer", text(&["A", "A"])),
        ],
    );
    write_parquet(
        &dir.path().join("data/test-00001-of-00002.parquet"),
        vec![
            ("image", image_col(&[jpeg(48, 36)])),
            ("question", text(&[&q2])),
            ("answer", text(&["B"])),
        ],
    );
    let samples = read(Benchmark::RealworldQa, dir.path());
    assert_eq!(
        samples.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [
            "data/test-00000-of-00002.parquet:0",
            "data/test-00000-of-00002.parquet:1",
            "data/test-00001-of-00002.parquet:0"
        ]
    );
    // Removed under the SpatialThinker template (the newline before it stays), kept otherwise.
    assert_eq!(
        build_prompt(&samples[0], Template::Spatialthinker)
            .unwrap()
            .text,
        st_prompt(48, 36, "Which is closer?\nA. the car\nB. the tree\n")
    );
    assert_eq!(
        build_prompt(&samples[0], Template::Plain).unwrap().text,
        format!("Question: {q0}")
    );
    // | truth | answer        | verdict                                 |
    // | A     | A             | ✓                                       |
    // | A     | (B) the tree  | ✗ (parenthesis check gives "B")         |
    // | B     | B.            | ✓ (trailing dot)                        |
    let recs = score_all(
        &samples,
        &[
            "<answer>A</answer>",
            "<answer>(B) the tree</answer>",
            "<answer>B.</answer>",
        ],
        MatchMode::Legacy,
    );
    assert_eq!(correct(&recs), [true, false, true]);
    assert_eq!(report(&recs).overall, Accuracy::new(2, 3));
}

#[test]
fn hallusionbench_yes_no_options() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3;
    write_parquet(
        &dir.path().join("data/image-00000-of-00001.parquet"),
        vec![
            ("category", text(&["VD", "VD", "VS"])),
            ("subcategory", text(&["illusion", "math", "chart"])),
            ("visual_input", text(&vec!["1"; n])),
            ("set_id", text(&["0", "1", "2"])),
            ("figure_id", text(&["0", "0", "0"])),
            ("sample_note", text(&["a", "b", "c"])),
            ("question_id", text(&["0", "0", "0"])),
            (
                "question",
                text(&[
                    "Is the left line longer than the right line?",
                    "Is angle A larger than 30 degrees?",
                    "Did sales grow in 2020?",
                ]),
            ),
            ("gt_answer_details", text(&["d", "d", "d"])),
            ("gt_answer", text(&["1", "0", "1"])),
            ("filename", text(&["a.png", "b.png", "c.png"])),
            ("image", image_col(&[png(20, 10), png(20, 10), png(20, 10)])),
        ],
    );
    // The text-only split is another file and is not read.
    write_parquet(
        &dir.path().join("data/non_image-00000-of-00001.parquet"),
        vec![("question", text(&["x"])), ("gt_answer", text(&["1"]))],
    );
    let samples = read(Benchmark::Hallusionbench, dir.path());
    assert_eq!(samples.len(), 3);
    assert_eq!(
        build_prompt(&samples[0], Template::Spatialthinker)
            .unwrap()
            .text,
        st_prompt(
            20,
            10,
            "Is the left line longer than the right line?\nOptions:\n(A) Yes \n(B) No"
        )
    );
    // | truth   | answer   | fixed        | legacy      |
    // | 1 → A   | (A) Yes  | ✓            | ✓           |
    // | 0 → B   | No       | ✓ text "no"  | ✓           |
    // | 1 → A   | B        | ✗            | ✓ (→ A)     |
    let responses = [
        "<answer>(A) Yes</answer>",
        "<answer>No</answer>",
        "<answer>B</answer>",
    ];
    let fixed = score_all(&samples, &responses, MatchMode::Fixed);
    assert_eq!(correct(&fixed), [true, true, false]);
    assert_eq!(fixed[1].gt, "B");
    let r = report(&fixed);
    assert_eq!(r.categories["VD"], Accuracy::new(2, 2));
    assert_eq!(r.categories["VS"], Accuracy::new(0, 1));
    let legacy = score_all(&samples, &responses, MatchMode::Legacy);
    assert_eq!(correct(&legacy), [true, true, true]);
}

#[test]
fn stvqa_val_split() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("stvqa");
    data::synth::write_dataset(&data::synth::SynthConfig::default(), &data, 3, 2).unwrap();
    let samples = read(Benchmark::Stvqa, &data);
    assert_eq!(samples.len(), 2, "the val split");
    let s = &samples[0];
    let p = build_prompt(s, Template::Spatialthinker).unwrap();
    let (w, h) = p.image.as_ref().unwrap().dimensions();
    let mut q = format!("{}\nOptions:", s.question);
    for (i, o) in s.options.iter().enumerate() {
        q.push_str(&format!("\n({}) {o}", char::from(b'A' + i as u8)));
    }
    assert_eq!(p.text, st_prompt(w, h, &q));
    // The right option with its text is correct; a wrong bare letter is not (fixed).
    let letter = s.answer.trim_matches(|c| c == '(' || c == ')').to_string();
    let i = (letter.as_bytes()[0] - b'A') as usize;
    let right = format!("<answer>({letter}) {}</answer>", s.options[i]);
    let wrong = if i == 0 { "B" } else { "A" };
    let recs = score_all(&samples[..1], &[right.as_str()], MatchMode::Fixed);
    assert!(recs[0].correct);
    let recs = score_all(&samples[..1], &[wrong], MatchMode::Fixed);
    assert!(!recs[0].correct);
}

#[test]
fn a_bad_column_type_names_file_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(
        &dir.path().join("data/train-00000-of-00001.parquet"),
        vec![
            ("image", image_col(&[png(8, 8)])),
            ("prompt", text(&["q"])),
            ("answer", text(&["(A)"])),
            ("choices", int(&[3])),
            ("task", text(&["Depth"])),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let root = locate(
        Benchmark::Spatialreasoner,
        Some(dir.path().to_str().unwrap()),
        cache.path(),
    )
    .unwrap();
    let e = load(Benchmark::Spatialreasoner, &root)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-00000-of-00001.parquet")
            && e.contains("row 0")
            && e.contains("`choices`"),
        "{e}"
    );
    // A missing image column is named too.
    write_parquet(
        &dir.path().join("data/train-00000-of-00001.parquet"),
        vec![("prompt", text(&["q"])), ("answer", text(&["(A)"]))],
    );
    let e = load(Benchmark::Spatialreasoner, &root)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`image`") && e.contains("no such column"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Matching: every case evals.py handles, fixed (default) and legacy.

#[test]
fn matching_every_evals_case_in_both_modes() {
    let choices: Vec<String> = ["behind", "in front of", "beside"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // (answer, truth, fixed: (pred, correct), legacy: (pred, correct))
    type Verdict<'a> = (&'a str, bool);
    let cases: [(&str, &str, Verdict, Verdict); 10] = [
        // full option text with its letter, and without
        ("(B) in front of", "(B)", ("B", true), ("B", true)),
        ("in front of", "(B)", ("B", true), ("B", true)),
        // the option text decides, not the letter written before it
        ("(A) beside", "(C)", ("C", true), ("C", true)),
        // `(B)` alone: nothing left after the letter → legacy's fallback
        ("(B)", "(B)", ("B", true), ("A", false)),
        // bare letter
        ("B", "(B)", ("B", true), ("A", false)),
        ("C", "(A)", ("C", false), ("A", true)),
        // `B.` and `B)`
        ("B.", "(B)", ("B", true), ("A", false)),
        ("B) in front of", "(B)", ("B", true), ("A", false)),
        // an answer that is no option: unmapped when fixed, A when legacy
        (
            "under the table",
            "(A)",
            ("under the table", false),
            ("A", true),
        ),
        // the always-A fallback scores a wrong letter right when the truth is A
        ("C. beside it", "(A)", ("C", false), ("A", true)),
    ];
    for (answer, truth, fixed, legacy) in cases {
        let f = score(truth, Some(answer), &choices, MatchMode::Fixed);
        assert_eq!((f.pred.as_str(), f.correct), fixed, "fixed {answer:?}");
        let l = score(truth, Some(answer), &choices, MatchMode::Legacy);
        assert_eq!((l.pred.as_str(), l.correct), legacy, "legacy {answer:?}");
        if l.pred == "A" && !answer.to_lowercase().contains("behind") {
            assert_eq!(l.rule, MatchRule::LegacyDefaultA, "{answer:?}");
        }
    }
    // Free text (RealWorldQA, SpatialBench): the same in both modes, no letter mapping.
    let cases = [
        ("A", " A ", true),
        ("(A) the car", "A", true),
        ("a.", "A", true),
        ("B", "A", false),
        ("2.0", "2", true),
        ("Yes", "yes", true),
    ];
    for (answer, truth, want) in cases {
        let o = score_text(truth, Some(answer), true);
        assert_eq!(o.correct, want, "{answer:?} vs {truth:?}");
        assert_eq!(o.rule, MatchRule::NoChoices);
    }
    assert_eq!(score_text("A", None, true).rule, MatchRule::NoAnswer);
}

#[test]
fn benchmark_names_round_trip() {
    for b in Benchmark::ALL {
        assert_eq!(Benchmark::from_name(b.name()), Some(b));
    }
    let names: Vec<&str> = Benchmark::ALL.iter().map(|b| b.name()).collect();
    for want in [
        "cv-bench",
        "cv-bench-2d",
        "cv-bench-3d",
        "blink-spatial",
        "blink-depth",
        "blink-object",
        "blink-counting",
        "blink-multi-view",
        "blink-jigsaw",
        "3dsrbench",
        "mmvp",
        "spatialbench",
        "realworld_qa",
        "spatialreasoner",
        "robospatial",
        "hallusionbench",
        "stvqa",
    ] {
        assert!(names.contains(&want), "{want}");
    }
    let _ = PathBuf::new();
}
