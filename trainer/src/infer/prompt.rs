//! The prompts SpatialThinker checkpoints are queried with at inference and evaluation time
//! (docs/recipe.md, "Evaluation prompt"): the model card's short template followed by the real
//! image size.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The short SpatialThinker instruction (model card and evaluation template). The model is
/// queried with this text as is: its last line keeps the unformatted `{Width} x {Height}`
/// placeholder, and the real size follows on the next line (docs/recipe.md, "Evaluation prompt").
pub const SPATIAL_THINKER_TEMPLATE: &str = "You FIRST observe the image in <observe> </observe> tags, then visualise the relevant scene graph in <scene> </scene> tags, followed by thinking about the reasoning process as an internal monologue within <think> </think> tags and then provide the final answer. The final answer MUST BE put within <answer> </answer> tags, and only return the final choice including the correct option and answer within the answer tags, e.g., <answer> ({correct_option}) {correct_answer} </answer>.\n\nImage size: {Width} x {Height}";

/// The think/answer instruction of the evaluation's `reasoning` template (used for baselines).
pub const REASONING_TEMPLATE: &str = "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put within <answer> </answer> tags, and only return the final choice including the correct option and answer within the answer tags, e.g., <answer> ({correct_option}) {correct_answer} </answer>.";

/// Which instruction wraps a benchmark question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// Observe / scene / think / answer with the image size (SpatialThinker checkpoints).
    #[default]
    Spatialthinker,
    /// Think / answer (the `reasoning` template).
    Reasoning,
    /// The question alone, after `Question: ` (the `no_reasoning` template).
    Plain,
    /// The prompt training saw: a dataset row's own prompt column (STVQA parquet `problem`)
    /// where the row has one, else the template the checkpoint records
    /// ([`PROMPT_TEMPLATE_FILE`]); the default of `infer`, `eval` and `serve` when the
    /// checkpoint records one.
    Dataset,
}

/// File in a checkpoint folder recording the prompt template the checkpoint was trained with.
pub const PROMPT_TEMPLATE_FILE: &str = "prompt_template.json";
/// Placeholder of the image width in [`TrainedTemplate::text`].
pub const WIDTH_PLACEHOLDER: &str = "{width}";
/// Placeholder of the image height in [`TrainedTemplate::text`].
pub const HEIGHT_PLACEHOLDER: &str = "{height}";
/// Placeholder of the question with its options in [`TrainedTemplate::text`].
pub const QUESTION_PLACEHOLDER: &str = "{question}";
/// Where the question starts in a SpatialThinker training prompt (`QUESTION_PREFIX + "\nQ. " +
/// question_with_options`, docs/recipe.md, "Training prompt"), when the row lacks its
/// `question_with_options` column.
const QUESTION_MARKER: &str = "\nQ. ";
/// Opening of the image-size line the spatial reward reads (docs/recipe.md, "Training prompt").
const IMAGE_SIZE_OPEN: &str = "Image size: (";

/// Errors of reading, writing or deriving a [`TrainedTemplate`].
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a prompt template: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The recorded text lacks a placeholder, or a training prompt cannot be turned into one.
    #[error("{source_name}: {msg}")]
    Invalid { source_name: String, msg: String },
}

/// The user text a checkpoint was trained with, as a template: the training prompt of one row
/// with its image size replaced by [`WIDTH_PLACEHOLDER`] / [`HEIGHT_PLACEHOLDER`] and its
/// question (with options) by [`QUESTION_PLACEHOLDER`]. The trainer writes it into every
/// checkpoint as [`PROMPT_TEMPLATE_FILE`]; `infer`, `eval` and `serve` default to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainedTemplate {
    /// The user text after the image, with the three placeholders (the dataset's prompt with
    /// `data.format_prompt` put before it and its `<image>` markers removed, as training sends it).
    pub text: String,
    /// The training row it was derived from (file and row).
    pub derived_from: String,
    /// The training-time pixel limits of EasyR1's pre-resize (`data.min_pixels`, `max_pixels`).
    pub min_pixels: u64,
    /// See `min_pixels`.
    pub max_pixels: u64,
}

impl TrainedTemplate {
    /// Derives the template from one training prompt: `text` is the user text exactly as
    /// training sent it, `question_with_options` the row's question with its options (else the
    /// text after the prompt's last `\nQ. `), `stated` the size in its `Image size: (W x H)` line.
    pub fn derive(
        text: &str,
        question_with_options: Option<&str>,
        stated: (u32, u32),
        derived_from: &str,
        pixels: (u64, u64),
    ) -> Result<Self, TemplateError> {
        let bad = |msg: String| TemplateError::Invalid {
            source_name: derived_from.to_string(),
            msg,
        };
        for p in [WIDTH_PLACEHOLDER, HEIGHT_PLACEHOLDER, QUESTION_PLACEHOLDER] {
            if text.contains(p) {
                return Err(bad(format!(
                    "the prompt already contains the placeholder {p}"
                )));
            }
        }
        let question_at = match question_with_options {
            Some(q) if !q.is_empty() => text.rfind(q).map(|i| (i, q.len())),
            _ => None,
        }
        .or_else(|| {
            text.rfind(QUESTION_MARKER).map(|i| {
                let start = i + QUESTION_MARKER.len();
                (start, text.len() - start)
            })
        })
        .ok_or_else(|| {
            bad(
                "the prompt holds neither the row's question_with_options nor a `\nQ. ` line"
                    .into(),
            )
        })?;
        let size_open = text
            .find(IMAGE_SIZE_OPEN)
            .map(|i| i + IMAGE_SIZE_OPEN.len())
            .ok_or_else(|| bad("the prompt has no `Image size: (W x H)` line".into()))?;
        let size_text = format!("{} x {}", stated.0, stated.1);
        if !text[size_open..].starts_with(&size_text) || size_open + size_text.len() > question_at.0
        {
            return Err(bad(format!(
                "the prompt's first image-size line does not read ({size_text}) before the question"
            )));
        }
        let size_end = size_open + size_text.len();
        let (q_start, q_len) = question_at;
        let template = format!(
            "{}{WIDTH_PLACEHOLDER} x {HEIGHT_PLACEHOLDER}{}{QUESTION_PLACEHOLDER}{}",
            &text[..size_open],
            &text[size_end..q_start],
            &text[q_start + q_len..]
        );
        Ok(TrainedTemplate {
            text: template,
            derived_from: derived_from.to_string(),
            min_pixels: pixels.0,
            max_pixels: pixels.1,
        })
    }

    /// The user text for `question` (options already included) about an image of `size`
    /// (width, height): the placeholders replaced, each once.
    pub fn render(&self, question: &str, size: (u32, u32)) -> String {
        self.text
            .replacen(WIDTH_PLACEHOLDER, &size.0.to_string(), 1)
            .replacen(HEIGHT_PLACEHOLDER, &size.1.to_string(), 1)
            .replacen(QUESTION_PLACEHOLDER, question, 1)
    }

    /// Writes the template as pretty JSON to `path`.
    pub fn write(&self, path: &Path) -> Result<(), TemplateError> {
        let text = serde_json::to_string_pretty(self).map_err(|source| TemplateError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text).map_err(|source| TemplateError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The template recorded in checkpoint folder `dir`, `None` when it records none (a
    /// checkpoint from elsewhere or from before templates were recorded).
    pub fn read(dir: &Path) -> Result<Option<Self>, TemplateError> {
        let path = dir.join(PROMPT_TEMPLATE_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| TemplateError::Io {
            path: path.clone(),
            source,
        })?;
        let t: TrainedTemplate =
            serde_json::from_str(&text).map_err(|source| TemplateError::Json {
                path: path.clone(),
                source,
            })?;
        for p in [WIDTH_PLACEHOLDER, HEIGHT_PLACEHOLDER, QUESTION_PLACEHOLDER] {
            if !t.text.contains(p) {
                return Err(TemplateError::Invalid {
                    source_name: path.display().to_string(),
                    msg: format!("the template text lacks the placeholder {p}"),
                });
            }
        }
        Ok(Some(t))
    }
}

/// A question followed by its options as `\nOptions:\n(A) …` lines, as STVQA writes them. With no
/// options, or when the question already lists `(A)`, the question is returned unchanged.
pub fn question_with_options(question: &str, options: &[String]) -> String {
    if options.is_empty() || question.contains("(A)") {
        return question.to_string();
    }
    let mut text = format!("{question}\nOptions:");
    for (i, option) in options.iter().enumerate() {
        let letter = char::from(b'A' + (i % 26) as u8);
        let _ = write!(text, "\n({letter}) {option}");
    }
    text
}

/// The user text for `question` (options already included) under `template`; `image_size` is
/// the real (width, height) of the image the model sees, used by the SpatialThinker template.
pub fn render(template: Template, question: &str, image_size: (u32, u32)) -> String {
    match template {
        Template::Spatialthinker => {
            let (w, h) = image_size;
            format!(
                "{SPATIAL_THINKER_TEMPLATE}\n({w} x {h})\n\nNow answer the following question:\n{question}"
            )
        }
        Template::Reasoning => format!("{REASONING_TEMPLATE}\nQuestion: {question}"),
        Template::Plain | Template::Dataset => format!("Question: {question}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spatialthinker_prompt_layout() {
        let q = question_with_options("Where is the man?", &["behind".into(), "beside".into()]);
        assert_eq!(q, "Where is the man?\nOptions:\n(A) behind\n(B) beside");
        let p = render(Template::Spatialthinker, &q, (640, 480));
        assert!(p.starts_with("You FIRST observe the image in <observe> </observe> tags"));
        assert!(p.ends_with(
            "Image size: {Width} x {Height}\n(640 x 480)\n\nNow answer the following question:\nWhere is the man?\nOptions:\n(A) behind\n(B) beside"
        ));
    }

    #[test]
    fn other_templates() {
        assert_eq!(render(Template::Plain, "Q?", (1, 1)), "Question: Q?");
        let r = render(Template::Reasoning, "Q?", (1, 1));
        assert!(r.starts_with("You FIRST think") && r.ends_with("</answer>.\nQuestion: Q?"));
        // Options already in the question are not repeated.
        assert_eq!(
            question_with_options("Q? (A) x (B) y", &["x".into()]),
            "Q? (A) x (B) y"
        );
    }
}
