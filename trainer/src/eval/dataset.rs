//! Benchmark rows: the generic MCQ JSONL format (one JSON object per line with `question`,
//! `options`, `answer` letter, optional `id`, `category`/`task` and `image` path), STVQA-schema
//! parquet read through the `data` crate, and the published benchmark layouts of
//! [`super::benchmarks`] (docs/benchmarks.md), all converted into [`EvalSample`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use super::EvalError;

/// Where a sample's image comes from; encoded images are decoded only when the prompt is built,
/// so a benchmark of thousands of images is held as its compressed bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// A file on disk.
    Path(PathBuf),
    /// An encoded image (PNG, JPEG, …) from a parquet row; `origin` names file, row and column.
    Encoded {
        /// The encoded bytes.
        bytes: Arc<[u8]>,
        /// Where they were read from, for errors.
        origin: String,
    },
    /// Pixels already decoded.
    Decoded(Arc<RgbImage>),
}

impl ImageSource {
    /// The pixels as RGB.
    pub fn load(&self) -> Result<RgbImage, EvalError> {
        match self {
            ImageSource::Decoded(p) => Ok(p.as_ref().clone()),
            ImageSource::Path(path) => Ok(image::open(path)
                .map_err(|e| EvalError::Image {
                    path: path.clone(),
                    message: e.to_string(),
                })?
                .to_rgb8()),
            ImageSource::Encoded { bytes, origin } => Ok(image::load_from_memory(bytes)
                .map_err(|e| EvalError::Image {
                    path: PathBuf::from(origin),
                    message: e.to_string(),
                })?
                .to_rgb8()),
        }
    }
}

/// How a sample's question becomes the text wrapped by the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptStyle {
    /// The question followed by `\nOptions:\n(A) …` lines (generic JSONL, STVQA).
    #[default]
    Generic,
    /// The question already is the complete instruction (a benchmark's own `prompt` column with
    /// its options and any suffix the authors append).
    Verbatim,
    /// RealWorldQA: under the SpatialThinker template the sentence asking for a bare letter is
    /// removed from the question, as `evals.py` does; other templates keep it.
    RealWorldQa,
}

/// How a sample's extracted answer is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// Multiple choice through [`super::matching::score`] (choice text, letters; fixed or legacy).
    #[default]
    Choices,
    /// Free text compared with the ground truth as `evals.py` does for RealWorldQA and
    /// SpatialBench (`trim_truth`) and for MMVP (ground truth as stored), through
    /// [`super::matching::score_text`].
    Text {
        /// Whether the ground truth is stripped of surrounding whitespace first.
        trim_truth: bool,
    },
}

/// One benchmark question.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSample {
    /// Stable id used to resume (the row's `id`, else its 0-based row number).
    pub id: String,
    /// The question text (may already list its options).
    pub question: String,
    /// Option texts in letter order (`A` first); empty for open questions.
    pub options: Vec<String>,
    /// Ground-truth answer, usually a letter such as `B` or `(B)`.
    pub answer: String,
    /// Category used for per-category accuracy (`category`, else `task`).
    pub category: Option<String>,
    /// The images in the order the model sees them (the first one's size goes into the
    /// SpatialThinker template); JSONL paths are resolved against the file's folder.
    pub images: Vec<ImageSource>,
    /// The row's own prompt (STVQA `problem`), for [`crate::infer::prompt::Template::Dataset`].
    pub prompt: Option<String>,
    /// The spatial reward's ground truth (`answer_option_text`), to report the trainer's
    /// validation accuracy next to the benchmark's.
    pub reward_ground_truth: Option<String>,
    /// How the question becomes the instruction.
    pub style: PromptStyle,
    /// How the answer is scored.
    pub scoring: Scoring,
}

/// Reads split `split` of an STVQA-schema parquet dataset (a file, a folder, or a hub id) in
/// file order: the question is `question_only` (else the prompt), the options `options`, the
/// answer `answer_only` (else the letter inside `answer_option_text_only`), the category
/// `category`, the image decoded from the row, and the prompt the `problem` column. Rows the data
/// crate rejects are skipped and counted in the returned report.
pub fn read_stvqa_parquet(
    path: &Path,
    split: &str,
) -> Result<(Vec<EvalSample>, data::ValidationReport), EvalError> {
    let data_err = |e: data::DataError| EvalError::Unsupported(format!("{}: {e}", path.display()));
    let files = if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        data::DatasetFiles::locate(&path.to_string_lossy())
            .map_err(data_err)?
            .split(split)
            .map_err(data_err)?
            .to_vec()
    };
    let config = data::LoaderConfig {
        batch_size: 64,
        shuffle: false,
        drop_last: false,
        ..Default::default()
    };
    let mut loader =
        data::Loader::open(&files, config, data::Cursor::default()).map_err(data_err)?;
    let mut rows = Vec::new();
    while let Some(batch) = loader.next_batch_of(0).map_err(data_err)? {
        for sample in batch.samples {
            let r = sample.record;
            let file = r
                .source
                .file
                .file_name()
                .map_or(String::new(), |f| f.to_string_lossy().into_owned());
            let answer = r
                .answer_only
                .clone()
                .filter(|a| !a.trim().is_empty())
                .or_else(|| {
                    r.answer_option_text_only
                        .as_deref()
                        .and_then(|t| t.trim().strip_prefix('('))
                        .and_then(|t| t.split(')').next())
                        .map(str::to_string)
                });
            rows.push(EvalSample {
                id: format!("{file}:{}", r.source.row),
                question: r.question_only.clone().unwrap_or_else(|| r.prompt.clone()),
                options: r.options.clone().unwrap_or_default(),
                answer: answer.unwrap_or_default(),
                category: r.category.clone(),
                images: vec![ImageSource::Decoded(Arc::new(sample.image))],
                reward_ground_truth: Some(r.ground_truth.clone()),
                prompt: Some(r.prompt),
                style: PromptStyle::Generic,
                scoring: Scoring::Choices,
            });
        }
    }
    Ok((rows, loader.report().clone()))
}

/// Read a generic MCQ JSONL file. Blank lines are skipped; any other malformed line is an error
/// naming the line.
pub fn read_mcq_jsonl(path: &Path) -> Result<Vec<EvalSample>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| EvalError::Json {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        rows.push(sample_from_json(&value, rows.len(), path, base)?);
    }
    Ok(rows)
}

/// Build a sample from one JSON row (`row` numbers the sample for ids and errors).
fn sample_from_json(
    v: &serde_json::Value,
    row: usize,
    path: &Path,
    base: &Path,
) -> Result<EvalSample, EvalError> {
    let err = |field: &'static str, message: &str| EvalError::Field {
        path: path.to_path_buf(),
        row,
        field,
        message: message.to_string(),
    };
    let string = |field: &'static str| -> Result<Option<String>, EvalError> {
        match v.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(err(field, "expected a string")),
        }
    };
    let question = string("question")?.ok_or_else(|| err("question", "missing"))?;
    let answer = string("answer")?.ok_or_else(|| err("answer", "missing"))?;
    let options = match v.get("options") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|o| {
                o.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| err("options", "expected an array of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err("options", "expected an array of strings")),
    };
    let category = match string("category")? {
        Some(c) => Some(c),
        None => string("task")?,
    };
    Ok(EvalSample {
        id: string("id")?.unwrap_or_else(|| row.to_string()),
        question,
        options,
        answer,
        category,
        images: string("image")?
            .map(|p| ImageSource::Path(base.join(p)))
            .into_iter()
            .collect(),
        prompt: None,
        reward_ground_truth: None,
        style: PromptStyle::Generic,
        scoring: Scoring::Choices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set.jsonl");
        std::fs::write(
            &path,
            "{\"question\":\"Q1\",\"options\":[\"x\",\"y\"],\"answer\":\"(B)\",\"task\":\"Depth\",\"image\":\"a.png\"}\n\n{\"id\":7,\"question\":\"Q2\",\"answer\":\"A\"}\n",
        )
        .unwrap();
        let rows = read_mcq_jsonl(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "0");
        assert_eq!(rows[0].options, vec!["x", "y"]);
        assert_eq!(rows[0].category.as_deref(), Some("Depth"));
        assert_eq!(
            rows[0].images,
            vec![ImageSource::Path(dir.path().join("a.png"))]
        );
        assert_eq!(
            (rows[1].id.as_str(), rows[1].images.is_empty()),
            ("7", true)
        );

        std::fs::write(
            &path,
            "{\"question\":\"Q\",\"options\":[1],\"answer\":\"A\"}\n",
        )
        .unwrap();
        let e = read_mcq_jsonl(&path).unwrap_err().to_string();
        assert!(e.contains("row 0") && e.contains("`options`"), "{e}");
        std::fs::write(&path, "{\"question\":\"Q\"}\nnot json\n").unwrap();
        let e = read_mcq_jsonl(&path).unwrap_err().to_string();
        assert!(e.contains("`answer`: missing"), "{e}");
        std::fs::write(&path, "{\"question\":\"Q\",\"answer\":\"A\"}\nnot json\n").unwrap();
        let e = read_mcq_jsonl(&path).unwrap_err().to_string();
        assert!(e.contains("set.jsonl:2:"), "{e}");
    }
}
