//! Import of a user's spatial VQA dataset from JSONL into the STVQA-7K schema.
//!
//! One JSON object per line:
//! `{"image": "rel/path.jpg", "question": "...", "options": ["..", ".."], "answer": "<option text or letter>",
//!   "objects": [{"id": "name.1", "bbox": [x1, y1, x2, y2]}], "relationships": [{"subject": "name.1",
//!   "predicate": "..", "object": "name.2"}], "category": "relation", "level": "easy", "image_id": ".."}`
//! (`category`, `level`, `image_id` and `relationships` optional). Image paths are relative to the
//! images folder; bytes are stored unchanged. Boxes are pixels of the image as stored.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;

use crate::error::{DataError, Result};
use crate::prompt::{problem_text, Question, OPTION_LETTERS};
use crate::record::ImageData;
use crate::scene::{Relationship, SceneGraph, SceneObject};
use crate::validate::Policy;
use crate::writer::{SplitWriter, StvqaRow};

/// One JSONL line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    image: String,
    question: String,
    options: Vec<String>,
    answer: String,
    objects: Vec<SceneObject>,
    #[serde(default)]
    relationships: Vec<Relationship>,
    category: Option<String>,
    level: Option<String>,
    image_id: Option<String>,
    rating: Option<i32>,
}

/// Outcome of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// The parquet file written.
    pub file: PathBuf,
    /// Rows written.
    pub written: usize,
    /// Lines skipped (policy `skip`), with the reason, as `(line number, reason)`.
    pub skipped: Vec<(usize, String)>,
    /// Warnings on imported lines, as `(line number, message)`.
    pub warnings: Vec<(usize, String)>,
}

fn id_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // The id form the reward accepts (docs/recipe.md, "Format").
    RE.get_or_init(|| Regex::new(r"^[a-zA-Z_]+\.\d+$").expect("valid regex"))
}

/// Convert one parsed line to a row; `Err` is the reason it cannot be imported.
fn convert(line: Line, images: &Path, warnings: &mut Vec<String>) -> Result<StvqaRow, String> {
    let image_path = images.join(&line.image);
    let bytes =
        std::fs::read(&image_path).map_err(|e| format!("image {}: {e}", image_path.display()))?;
    let format =
        image::guess_format(&bytes).map_err(|e| format!("image {}: {e}", image_path.display()))?;
    if !matches!(
        format,
        image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP
    ) {
        return Err(format!(
            "image {}: {format:?} is not JPEG, PNG or WebP",
            image_path.display()
        ));
    }
    let decoded = image::load_from_memory_with_format(&bytes, format)
        .map_err(|e| format!("image {} does not decode: {e}", image_path.display()))?;
    let (width, height) = (decoded.width(), decoded.height());
    if !(2..=OPTION_LETTERS.len()).contains(&line.options.len()) {
        return Err(format!(
            "{} options; 2 to {} are supported",
            line.options.len(),
            OPTION_LETTERS.len()
        ));
    }
    let answer_index = line
        .options
        .iter()
        .position(|o| *o == line.answer)
        .or_else(|| {
            let a = line
                .answer
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')');
            OPTION_LETTERS
                .iter()
                .position(|l| a.len() == 1 && a.starts_with(*l))
                .filter(|&i| i < line.options.len())
        })
        .ok_or_else(|| {
            format!(
                "answer `{}` is neither an option nor an option letter",
                line.answer
            )
        })?;
    let mut seen = std::collections::HashSet::new();
    for o in &line.objects {
        if !id_re().is_match(&o.id) {
            return Err(format!(
                "object id `{}` is not of the form name.N (letters/underscores, a dot, digits)",
                o.id
            ));
        }
        if !seen.insert(o.id.clone()) {
            return Err(format!("duplicate object id `{}`", o.id));
        }
        let b: Vec<f64> = o
            .bbox
            .iter()
            .map(|n| n.as_f64().unwrap_or(f64::NAN))
            .collect();
        if b.iter().any(|v| !v.is_finite()) || b[0] > b[2] || b[1] > b[3] {
            return Err(format!("object `{}` has an invalid box {:?}", o.id, b));
        }
        if b[0] < 0.0 || b[1] < 0.0 || b[2] > f64::from(width) || b[3] > f64::from(height) {
            warnings.push(format!(
                "object `{}` box {:?} extends beyond the {width} x {height} image",
                o.id, b
            ));
        }
    }
    for r in &line.relationships {
        for id in [&r.subject, &r.object] {
            if !id_re().is_match(id) {
                return Err(format!("relationship id `{id}` is not of the form name.N"));
            }
            if !seen.contains(id) {
                warnings.push(format!(
                    "relationship refers to `{id}`, which is not among the objects"
                ));
            }
        }
    }
    let question = Question {
        question: line.question,
        options: line.options,
        answer_index,
        scene: SceneGraph {
            objects: line.objects,
            relationships: line.relationships,
        },
    };
    let ids: Vec<&str> = question
        .scene
        .objects
        .iter()
        .map(|o| o.id.as_str())
        .collect();
    let observe = if ids.is_empty() {
        "No relevant objects are visible.".to_string()
    } else {
        format!("The relevant objects are {}.", ids.join(", "))
    };
    let think = format!(
        "The scene graph answers the question: {}.",
        question.option_text()
    );
    let qwo = question.question_with_options();
    let answers = question.answer_columns();
    let image_id = line.image_id.unwrap_or_else(|| {
        Path::new(&line.image)
            .file_stem()
            .map_or_else(|| line.image.clone(), |s| s.to_string_lossy().into_owned())
    });
    Ok(StvqaRow {
        image_id,
        image: ImageData {
            bytes,
            path: Some(line.image),
        },
        problem: problem_text(width, height, &qwo),
        question_only: question.question.clone(),
        question_with_options: qwo,
        options: question.options.clone(),
        answer: answers.answer,
        answer_only: answers.answer_only,
        answer_text: answers.answer_text,
        answer_text_only: answers.answer_text_only,
        answer_option_text: answers.answer_option_text,
        answer_option_text_only: answers.answer_option_text_only,
        category: line.category.unwrap_or_else(|| "relation".into()),
        level: line.level.unwrap_or_else(|| "medium".into()),
        rating: line.rating.unwrap_or(10),
        reference_response: Some(question.reference_response(&observe, &think)),
    })
}

/// Convert `jsonl` (images under `images`) into `<out>/data/<split>-00000-of-00001.parquet`.
/// Bad lines are skipped and listed (`Policy::Skip`) or stop the import naming the line.
pub fn import_jsonl(
    jsonl: &Path,
    images: &Path,
    out: &Path,
    split: &str,
    policy: Policy,
) -> Result<ImportReport> {
    let file = std::fs::File::open(jsonl).map_err(|e| DataError::io(jsonl, e))?;
    let mut writer = SplitWriter::create(out, split, crate::writer::DEFAULT_ROWS_PER_GROUP)?;
    let mut report = ImportReport::default();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = i + 1;
        let text = line.map_err(|e| DataError::io(jsonl, e))?;
        if text.trim().is_empty() {
            continue;
        }
        let mut warnings = Vec::new();
        let converted = serde_json::from_str::<Line>(&text)
            .map_err(|e| format!("not a valid record: {e}"))
            .and_then(|l| convert(l, images, &mut warnings));
        match converted {
            Ok(row) => {
                writer.write(row)?;
                report.written += 1;
                report
                    .warnings
                    .extend(warnings.into_iter().map(|w| (number, w)));
            }
            Err(reason) => match policy {
                Policy::Error => {
                    return Err(DataError::Import {
                        path: jsonl.to_path_buf(),
                        line: number,
                        reason,
                    })
                }
                Policy::Skip => report.skipped.push((number, reason)),
            },
        }
    }
    report.file = writer.finish()?.0;
    Ok(report)
}
