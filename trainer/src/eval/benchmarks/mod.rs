//! The benchmarks of SpatialThinker's evaluation (`evaluation/evals.py`, docs/benchmarks.md),
//! each read from its own published layout: the hub repository's parquet files, split, columns
//! and image encoding, from a local folder or file or from the Hugging Face cache
//! (`datasets--ORG--NAME/snapshots/REV/…`) without the network. Rows become [`EvalSample`]s
//! whose instruction is built as the authors build it and whose answers are scored as they
//! score them ([`Scoring`]).

pub mod table;

use std::path::{Path, PathBuf};

use super::dataset::{read_stvqa_parquet, EvalSample, PromptStyle, Scoring};
use super::EvalError;
use table::Table;

/// A benchmark of the authors' `evals.py` (names as its `--dataset` choices, lower-cased).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize,
)]
pub enum Benchmark {
    /// CV-Bench, both halves (`nyu-visionx/CV-Bench`, `test_2d.parquet` + `test_3d.parquet`).
    #[value(name = "cv-bench")]
    CvBench,
    /// CV-Bench 2D (Count, Relation).
    #[value(name = "cv-bench-2d", alias = "cv-bench-2D")]
    CvBench2d,
    /// CV-Bench 3D (Depth, Distance).
    #[value(name = "cv-bench-3d", alias = "cv-bench-3D")]
    CvBench3d,
    /// BLINK Spatial_Relation (val).
    #[value(name = "blink-spatial")]
    BlinkSpatial,
    /// BLINK Relative_Depth (val).
    #[value(name = "blink-depth")]
    BlinkDepth,
    /// BLINK Object_Localization (val).
    #[value(name = "blink-object")]
    BlinkObject,
    /// BLINK Counting (val).
    #[value(name = "blink-counting")]
    BlinkCounting,
    /// BLINK Multi-view_Reasoning (val, two images).
    #[value(name = "blink-multi-view")]
    BlinkMultiView,
    /// BLINK Jigsaw (val, three images).
    #[value(name = "blink-jigsaw")]
    BlinkJigsaw,
    /// 3DSRBench (the authors' re-upload `hunarbatra/3DSRBench`, test).
    #[value(name = "3dsrbench")]
    Bench3dsr,
    /// MMVP (`hunarbatra/MMVP`).
    #[value(name = "mmvp")]
    Mmvp,
    /// SpatialBench (`hunarbatra/SpatialBench`).
    #[value(name = "spatialbench")]
    Spatialbench,
    /// RealWorldQA (`visheratin/realworldqa`, test).
    #[value(name = "realworld_qa", alias = "realworldqa")]
    RealworldQa,
    /// SpatialReasonerEval (`hunarbatra/SpatialReasonerEval`).
    #[value(name = "spatialreasoner")]
    Spatialreasoner,
    /// RoboSpatial-Home (`hunarbatra/RoboSpatial-Home`, RGB and depth images).
    #[value(name = "robospatial")]
    Robospatial,
    /// HallusionBench (`lmms-lab/HallusionBench`, split `image`).
    #[value(name = "hallusionbench")]
    Hallusionbench,
    /// STVQA-7K validation split (`hunarbatra/STVQA-7K`, val).
    #[value(name = "stvqa")]
    Stvqa,
}

/// How a benchmark's parquet files are found inside its snapshot (or a local copy of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// These files, in this order, at the repository root.
    Named(&'static [&'static str]),
    /// The shards of `split` (`<split>-NNNNN-of-NNNNN.parquet` or `<split>.parquet`) in folder
    /// `dir` (the config's folder, or `data` for a single-config repository).
    Split {
        /// Folder inside the repository.
        dir: &'static str,
    },
    /// The STVQA-7K layout, read by the `data` crate.
    Stvqa,
}

/// How rows are turned into samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A multiple-choice row with a complete `prompt`, `choices` and an `(X)` answer
    /// (CV-Bench, BLINK, 3DSRBench, SpatialReasonerEval, RoboSpatial-Home).
    Mcq,
    /// HallusionBench: yes/no question, `gt_answer` `1`/`0`, options appended as `evals.py` does.
    Hallusion,
    /// RealWorldQA: free text, the letter-only request removed under the SpatialThinker template.
    RealWorldQa,
    /// SpatialBench / MMVP: free text, "Please give the final answer within answer tags." added.
    AnswerTags {
        /// Whether the ground truth is stripped before comparing (SpatialBench yes, MMVP no).
        trim_truth: bool,
    },
    /// STVQA-7K.
    Stvqa,
}

/// Where and how one benchmark is published, and which of its columns `evals.py` reads
/// (`get_dataset_config`, docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Name (as on the command line).
    pub name: &'static str,
    /// Hugging Face dataset repository.
    pub repo: &'static str,
    /// Dataset config (`load_dataset`'s second argument), if any.
    pub config: Option<&'static str>,
    /// Split.
    pub split: &'static str,
    /// Where the parquet files are.
    pub files: Files,
    /// Image columns, in the order the model sees them.
    pub images: &'static [&'static str],
    /// The instruction column.
    pub question: &'static str,
    /// The ground-truth column.
    pub answer: &'static str,
    /// The choices column (a list of strings, or its Python-literal text).
    pub choices: Option<&'static str>,
    /// The per-category column.
    pub category: Option<&'static str>,
    /// The per-task row counts `evals.py` divides by (published sizes).
    pub tasks: &'static [(&'static str, usize)],
    /// Row conversion.
    pub family: Family,
}

/// The sentence RealWorldQA questions end with, removed under the SpatialThinker template.
pub const REALWORLDQA_LETTER_ONLY: &str =
    "Please answer directly with only the letter of the correct option and nothing else.";
/// What `evals.py` appends to SpatialBench and MMVP questions.
pub const ANSWER_TAGS_SUFFIX: &str = " Please give the final answer within answer tags.";
/// What `evals.py` appends to HallusionBench prompts (the space after `Yes` is theirs).
pub const HALLUSION_OPTIONS: &str = "\nOptions:\n(A) Yes \n(B) No";

const CV_TASKS: &[(&str, usize)] = &[
    ("Count", 788),
    ("Relation", 650),
    ("Distance", 600),
    ("Depth", 600),
];

const fn blink(name: &'static str, config: &'static str, images: &'static [&'static str]) -> Spec {
    Spec {
        name,
        repo: "BLINK-Benchmark/BLINK",
        config: Some(config),
        split: "val",
        files: Files::Split { dir: config },
        images,
        question: "prompt",
        answer: "answer",
        choices: Some("choices"),
        category: None,
        tasks: &[],
        family: Family::Mcq,
    }
}

const fn cv(
    name: &'static str,
    config: &'static str,
    files: &'static [&'static str],
    tasks: &'static [(&'static str, usize)],
) -> Spec {
    Spec {
        name,
        repo: "nyu-visionx/CV-Bench",
        config: Some(config),
        split: "test",
        files: Files::Named(files),
        images: &["image"],
        question: "prompt",
        answer: "answer",
        choices: Some("choices"),
        category: Some("task"),
        tasks,
        family: Family::Mcq,
    }
}

impl Benchmark {
    /// Every benchmark, in the order of the report.
    pub const ALL: [Benchmark; 17] = [
        Benchmark::Bench3dsr,
        Benchmark::CvBench,
        Benchmark::CvBench2d,
        Benchmark::CvBench3d,
        Benchmark::BlinkSpatial,
        Benchmark::BlinkDepth,
        Benchmark::BlinkObject,
        Benchmark::BlinkCounting,
        Benchmark::BlinkMultiView,
        Benchmark::BlinkJigsaw,
        Benchmark::Mmvp,
        Benchmark::Spatialreasoner,
        Benchmark::Spatialbench,
        Benchmark::RealworldQa,
        Benchmark::Robospatial,
        Benchmark::Hallusionbench,
        Benchmark::Stvqa,
    ];

    /// The benchmark's name on the command line and in run folders.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The benchmark named `name` (as [`Benchmark::name`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Where it is published and how `evals.py` reads it.
    pub fn spec(self) -> Spec {
        match self {
            Benchmark::CvBench => cv(
                "cv-bench",
                "default",
                &["test_2d.parquet", "test_3d.parquet"],
                CV_TASKS,
            ),
            Benchmark::CvBench2d => cv(
                "cv-bench-2d",
                "2D",
                &["test_2d.parquet"],
                &[("Count", 788), ("Relation", 650)],
            ),
            Benchmark::CvBench3d => cv(
                "cv-bench-3d",
                "3D",
                &["test_3d.parquet"],
                &[("Distance", 600), ("Depth", 600)],
            ),
            Benchmark::BlinkSpatial => blink("blink-spatial", "Spatial_Relation", &["image_1"]),
            Benchmark::BlinkDepth => blink("blink-depth", "Relative_Depth", &["image_1"]),
            Benchmark::BlinkObject => blink("blink-object", "Object_Localization", &["image_1"]),
            Benchmark::BlinkCounting => blink("blink-counting", "Counting", &["image_1"]),
            Benchmark::BlinkMultiView => blink(
                "blink-multi-view",
                "Multi-view_Reasoning",
                &["image_1", "image_2"],
            ),
            Benchmark::BlinkJigsaw => {
                blink("blink-jigsaw", "Jigsaw", &["image_1", "image_2", "image_3"])
            }
            Benchmark::Bench3dsr => Spec {
                name: "3dsrbench",
                repo: "hunarbatra/3DSRBench",
                config: None,
                split: "test",
                files: Files::Split { dir: "data" },
                images: &["image"],
                question: "prompt",
                answer: "answer",
                choices: Some("choices"),
                category: Some("task"),
                tasks: &[
                    ("height", 350),
                    ("location", 875),
                    ("orientation", 525),
                    ("multi_object", 875),
                ],
                family: Family::Mcq,
            },
            Benchmark::Mmvp => Spec {
                name: "mmvp",
                repo: "hunarbatra/MMVP",
                config: None,
                split: "train",
                files: Files::Split { dir: "data" },
                images: &["image"],
                question: "text",
                answer: "label",
                choices: None,
                category: None,
                tasks: &[],
                family: Family::AnswerTags { trim_truth: false },
            },
            Benchmark::Spatialbench => Spec {
                name: "spatialbench",
                repo: "hunarbatra/SpatialBench",
                config: None,
                split: "train",
                files: Files::Split { dir: "data" },
                images: &["image"],
                question: "text",
                answer: "answer",
                choices: None,
                category: Some("category"),
                tasks: &[
                    ("existence", 40),
                    ("reach", 40),
                    ("size", 40),
                    ("positional", 34),
                    ("counting", 20),
                ],
                family: Family::AnswerTags { trim_truth: true },
            },
            Benchmark::RealworldQa => Spec {
                name: "realworld_qa",
                repo: "visheratin/realworldqa",
                config: None,
                split: "test",
                files: Files::Split { dir: "data" },
                images: &["image"],
                question: "question",
                answer: "answer",
                choices: None,
                category: None,
                tasks: &[],
                family: Family::RealWorldQa,
            },
            Benchmark::Spatialreasoner => Spec {
                name: "spatialreasoner",
                repo: "hunarbatra/SpatialReasonerEval",
                config: None,
                split: "train",
                files: Files::Split { dir: "data" },
                images: &["image"],
                question: "prompt",
                answer: "answer",
                choices: Some("choices"),
                category: Some("task"),
                tasks: &[("Depth", 600), ("Distance", 600)],
                family: Family::Mcq,
            },
            Benchmark::Robospatial => Spec {
                name: "robospatial",
                repo: "hunarbatra/RoboSpatial-Home",
                config: None,
                split: "train",
                files: Files::Split { dir: "data" },
                images: &["image", "depth_image"],
                question: "prompt",
                answer: "answer",
                choices: Some("options"),
                category: Some("category"),
                tasks: &[("configuration", 123), ("compatibility", 105)],
                family: Family::Mcq,
            },
            Benchmark::Hallusionbench => Spec {
                name: "hallusionbench",
                repo: "lmms-lab/HallusionBench",
                config: None,
                split: "image",
                files: Files::Split { dir: "data" },
                images: &["image"],
                question: "question",
                answer: "gt_answer",
                choices: None,
                category: Some("category"),
                tasks: &[],
                family: Family::Hallusion,
            },
            Benchmark::Stvqa => Spec {
                name: "stvqa",
                repo: "hunarbatra/STVQA-7K",
                config: None,
                split: "val",
                files: Files::Stvqa,
                images: &["images"],
                question: "question_with_options",
                answer: "answer_only",
                choices: Some("options"),
                category: Some("category"),
                tasks: &[],
                family: Family::Stvqa,
            },
        }
    }
}

/// Whether `data` names a hub repository (`owner/name`) rather than a path that exists.
fn is_hub_id(data: &str) -> bool {
    !Path::new(data).exists()
        && data.split('/').count() == 2
        && !data.starts_with('.')
        && !data.starts_with('/')
        && data.split('/').all(|p| !p.is_empty())
}

/// The folder (or file) holding `bench`'s data: `data` itself when it exists, else the snapshot
/// of hub repository `data` (default: the benchmark's own repository) in the Hugging Face cache
/// `hub_cache` (downloaded only when the cache lacks it and `HF_HUB_OFFLINE` is not set).
pub fn locate(
    bench: Benchmark,
    data: Option<&str>,
    hub_cache: &Path,
) -> Result<PathBuf, EvalError> {
    let spec = bench.spec();
    let data = data.unwrap_or(spec.repo);
    if !is_hub_id(data) {
        let path = PathBuf::from(data);
        if !path.exists() {
            return Err(EvalError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
        return Ok(path);
    }
    let wanted = |f: &str| wanted_file(spec, f);
    data::hub::resolve_repo_in(hub_cache, data, data::hub::RepoType::Dataset, None, wanted)
        .map_err(|e| EvalError::Unsupported(e.to_string()))
}

/// Whether `file` (a path inside the repository) is one of `spec`'s parquet files.
fn wanted_file(spec: Spec, file: &str) -> bool {
    let path = Path::new(file);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parent = path.parent().and_then(|p| p.to_str()).unwrap_or("");
    match spec.files {
        Files::Named(names) => names.contains(&file),
        Files::Split { dir } => parent == dir && is_split_shard(name, spec.split),
        Files::Stvqa => name.ends_with(".parquet"),
    }
}

/// `<split>.parquet` or `<split>-….parquet`.
fn is_split_shard(name: &str, split: &str) -> bool {
    name.ends_with(".parquet")
        && (name == format!("{split}.parquet") || name.starts_with(&format!("{split}-")))
}

/// The parquet files of `spec` under `root` (a snapshot or a local copy of it), in order; when
/// `root` is a file, that file alone. A root that is itself the config's or `data` folder works
/// too.
pub fn parquet_files(spec: Spec, root: &Path) -> Result<Vec<PathBuf>, EvalError> {
    if root.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let list = |dir: &Path| -> Result<Vec<PathBuf>, EvalError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(EvalError::Io {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_split_shard(&name, spec.split) {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    };
    let files = match spec.files {
        Files::Named(names) => names
            .iter()
            .map(|n| root.join(n))
            .filter(|p| p.is_file())
            .collect::<Vec<_>>(),
        Files::Split { dir } => {
            let mut files = list(&root.join(dir))?;
            if files.is_empty() {
                files = list(root)?;
            }
            files
        }
        Files::Stvqa => vec![root.to_path_buf()],
    };
    if files.is_empty() {
        let expected = match spec.files {
            Files::Named(names) => names.join(", "),
            Files::Split { dir } => format!("{dir}/{}-*.parquet", spec.split),
            Files::Stvqa => "the STVQA-7K layout".into(),
        };
        return Err(EvalError::Unsupported(format!(
            "{}: no {} files of `{}` found (expected {expected}, the layout of {})",
            root.display(),
            spec.name,
            spec.split,
            spec.repo
        )));
    }
    if let Files::Named(names) = spec.files {
        if files.len() < names.len() {
            let missing: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| !root.join(n).is_file())
                .collect();
            return Err(EvalError::Unsupported(format!(
                "{}: {} needs {} (missing: {})",
                root.display(),
                spec.name,
                names.join(" and "),
                missing.join(", ")
            )));
        }
    }
    Ok(files)
}

/// Read every row of `bench` from `root` ([`locate`]'s answer) in file order.
pub fn load(bench: Benchmark, root: &Path) -> Result<Vec<EvalSample>, EvalError> {
    let spec = bench.spec();
    if spec.family == Family::Stvqa {
        let (rows, _) = read_stvqa_parquet(root, spec.split)?;
        return Ok(rows);
    }
    let files = parquet_files(spec, root)?;
    let base = if root.is_file() {
        root.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        root.to_path_buf()
    };
    let mut wanted: Vec<&str> = spec.images.to_vec();
    wanted.extend([spec.question, spec.answer]);
    wanted.extend(spec.choices);
    wanted.extend(spec.category);
    let mut samples = Vec::new();
    for file in files {
        let table = Table::read(&file, &wanted)?;
        let rel = file
            .strip_prefix(&base)
            .unwrap_or(&file)
            .to_string_lossy()
            .into_owned();
        for row in 0..table.rows() {
            samples.push(sample(spec, &table, row, &rel)?);
        }
    }
    Ok(samples)
}

/// One row of `table` as a sample.
fn sample(spec: Spec, table: &Table, row: usize, rel: &str) -> Result<EvalSample, EvalError> {
    let mut images = Vec::new();
    for &col in spec.images {
        // `evals.py` skips absent images of multi-image rows; the first one is required.
        match table.image(row, col)? {
            Some(img) => images.push(img),
            None if images.is_empty() => {
                return Err(EvalError::Field {
                    path: table.path.clone(),
                    row,
                    field: col,
                    message: "no image".into(),
                })
            }
            None => {}
        }
    }
    let question = table.text(row, spec.question)?;
    let answer = table.text(row, spec.answer)?;
    let category = match spec.category {
        Some(c) if table.has(c) => table.opt_text(row, c)?,
        _ => None,
    };
    let options = match spec.choices {
        Some(c) => table.text_list(row, c)?,
        None => Vec::new(),
    };
    let (question, answer, options, style, scoring) = match spec.family {
        Family::Mcq => (
            question,
            answer,
            options,
            PromptStyle::Verbatim,
            Scoring::Choices,
        ),
        Family::Hallusion => {
            // evals.py: parentheses and dots removed, "1" is Yes (A), anything else No (B).
            let cleaned: String = answer
                .chars()
                .filter(|c| !matches!(c, '(' | ')' | '.'))
                .collect();
            let letter = if cleaned.trim() == "1" { "A" } else { "B" };
            (
                format!("{question}{HALLUSION_OPTIONS}"),
                letter.to_string(),
                vec!["Yes".to_string(), "No".to_string()],
                PromptStyle::Verbatim,
                Scoring::Choices,
            )
        }
        Family::RealWorldQa => (
            question,
            answer,
            options,
            PromptStyle::RealWorldQa,
            Scoring::Text { trim_truth: true },
        ),
        Family::AnswerTags { trim_truth } => {
            let mut q = question;
            if !q.ends_with('.') {
                q.push('.');
            }
            q.push_str(ANSWER_TAGS_SUFFIX);
            (
                q,
                answer,
                options,
                PromptStyle::Verbatim,
                Scoring::Text { trim_truth },
            )
        }
        Family::Stvqa => {
            return Err(EvalError::Unsupported(
                "STVQA rows are read through the data crate".into(),
            ))
        }
    };
    Ok(EvalSample {
        id: format!("{rel}:{row}"),
        question,
        options,
        answer,
        category,
        images,
        prompt: None,
        reward_ground_truth: None,
        style,
        scoring,
    })
}
