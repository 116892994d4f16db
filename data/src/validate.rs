//! Row validation (what a training run needs from a row) and the report of a validation pass.
//!
//! Checks, per row: the image bytes decode as JPEG, PNG or WebP; the prompt has an
//! `Image size: (W x H)` line (the reward reads it); the ground truth has a `<scene>` holding a
//! JSON object with well-formed `objects`/`relationships` lists and a non-empty `<answer>`; and
//! the stated size equals the decoded size (a warning only: a dataset may legitimately state the
//! original size of a re-encoded image, see docs/recipe.md, "Training prompt").

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use image::{ImageFormat, RgbImage};
use regex::Regex;

use crate::error::{DataError, Result};
use crate::record::{Record, RowRef, Sample};

/// Which row checks apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checks {
    /// What the spatial reward needs: the prompt's `Image size` line and a ground truth with a
    /// well-formed `<scene>` and a non-empty `<answer>`.
    #[default]
    Spatial,
    /// Only a non-empty prompt and ground truth and a decodable image (other rewards, e.g. r1v
    /// on `answer_option_text_only`); the stated size is the decoded one.
    Plain,
}

/// What to do with a bad row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Count and list bad rows, continue without them (the default for training).
    #[default]
    Skip,
    /// Stop at the first bad row with an error naming file, row and field.
    Error,
}

impl FromStr for Policy {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(Policy::Skip),
            "error" => Ok(Policy::Error),
            other => Err(DataError::Config(format!(
                "unknown validation policy `{other}` (expected skip or error)"
            ))),
        }
    }
}

/// How serious an issue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The row cannot be trained on.
    Error,
    /// Suspicious but usable.
    Warning,
}

/// One problem found in one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// The row.
    pub row: RowRef,
    /// The column at fault.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{tag}: {}: field `{}`: {}",
            self.row, self.field, self.message
        )
    }
}

impl Issue {
    /// The issue as a [`DataError::BadRow`].
    pub fn into_error(self) -> DataError {
        DataError::BadRow {
            path: self.row.file.as_ref().clone(),
            row: self.row.row,
            field: self.field,
            reason: self.message,
        }
    }
}

/// Column names used in issue reports.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    /// Which checks apply.
    pub checks: Checks,
    /// Prompt column name.
    pub prompt: &'a str,
    /// Image column name.
    pub image: &'a str,
    /// Ground-truth column name.
    pub answer: &'a str,
}

fn image_size_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"Image size: \((.*?) x (.*?)\)").expect("valid regex"))
}

fn scene_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?s)<scene>(.*?)</scene>").expect("valid regex"))
}

fn answer_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?s)<answer>(.*?)</answer>").expect("valid regex"))
}

/// `(W, H)` from the first `Image size: (W x H)` in `prompt`, as the reward reads it.
pub fn stated_image_size(prompt: &str) -> Option<(u32, u32)> {
    let caps = image_size_re().captures(prompt)?;
    let w = caps[1].trim().parse::<u32>().ok()?;
    let h = caps[2].trim().parse::<u32>().ok()?;
    (w > 0 && h > 0).then_some((w, h))
}

/// The `<scene>` JSON object of a ground truth, or why it is unusable.
pub fn ground_truth_scene(
    ground_truth: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let text = scene_re()
        .captures(ground_truth)
        .ok_or("no <scene>...</scene> block")?[1]
        .trim()
        .to_string();
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        // Python's json.loads (which the reward uses) also accepts NaN, Infinity and the like.
        Err(_) if rewards::has_scene_object(ground_truth) => {
            return Ok(serde_json::Map::new());
        }
        Err(e) => return Err(format!("scene is not JSON: {e}")),
    };
    let serde_json::Value::Object(scene) = value else {
        return Err("scene is not a JSON object".into());
    };
    check_scene(&scene)?;
    Ok(scene)
}

fn check_scene(scene: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    if let Some(objects) = scene.get("objects") {
        let list = objects.as_array().ok_or("scene `objects` is not a list")?;
        for (i, o) in list.iter().enumerate() {
            let id = o.get("id").and_then(|v| v.as_str());
            let bbox = o.get("bbox").and_then(|v| v.as_array());
            if id.is_none() {
                return Err(format!("scene object {i} has no string `id`"));
            }
            match bbox {
                Some(b) if b.len() == 4 && b.iter().all(|v| v.is_number()) => {}
                _ => return Err(format!("scene object {i} has no `bbox` of 4 numbers")),
            }
        }
    }
    if let Some(rels) = scene.get("relationships") {
        let list = rels
            .as_array()
            .ok_or("scene `relationships` is not a list")?;
        for (i, r) in list.iter().enumerate() {
            for key in ["subject", "predicate", "object"] {
                if !r.get(key).is_some_and(|v| v.is_string()) {
                    return Err(format!("scene relationship {i} has no string `{key}`"));
                }
            }
        }
    }
    Ok(())
}

/// The text inside the first `<answer>` tags, trimmed.
pub fn answer_text(ground_truth: &str) -> Option<&str> {
    answer_re()
        .captures(ground_truth)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().trim())
}

/// Checks that need no image decoding: the prompt's size line and the ground truth.
/// Returns the stated size when present, and the issues found.
pub fn check_text(record: &Record, fields: &Fields<'_>) -> (Option<(u32, u32)>, Vec<Issue>) {
    let mut issues = Vec::new();
    let mut error = |field: &str, message: String| {
        issues.push(Issue {
            row: record.source.clone(),
            field: field.to_string(),
            message,
            severity: Severity::Error,
        })
    };
    if fields.checks == Checks::Plain {
        if record.prompt.trim().is_empty() {
            error(fields.prompt, "prompt is empty".into());
        }
        if record.ground_truth.trim().is_empty() {
            error(fields.answer, "ground truth is empty".into());
        }
        return (None, issues);
    }
    // Both readings must succeed: ours gives the pixel size, the reward's must not raise.
    let size = stated_image_size(&record.prompt)
        .filter(|_| rewards::parse_image_size(&record.prompt).is_ok());
    if size.is_none() {
        error(
            fields.prompt,
            "no `Image size: (W x H)` line with positive integers".into(),
        );
    }
    if let Err(e) = ground_truth_scene(&record.ground_truth) {
        error(fields.answer, e);
    }
    if answer_text(&record.ground_truth).is_none_or(str::is_empty) {
        error(fields.answer, "no non-empty <answer>...</answer>".into());
    }
    (size, issues)
}

/// Decode the row's image to RGB (JPEG, PNG or WebP only).
pub fn decode_image(record: &Record, fields: &Fields<'_>) -> Result<RgbImage, Issue> {
    let bad = |message: String| Issue {
        row: record.source.clone(),
        field: fields.image.to_string(),
        message,
        severity: Severity::Error,
    };
    let bytes = &record.image.bytes;
    if bytes.is_empty() {
        return Err(bad("image bytes are empty or null".into()));
    }
    let format =
        image::guess_format(bytes).map_err(|e| bad(format!("unknown image format: {e}")))?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP
    ) {
        return Err(bad(format!(
            "unsupported image format {format:?} (JPEG, PNG or WebP)"
        )));
    }
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // A lenient JPEG decoder may fill a truncated scan instead of failing, which would
        // silently train on a damaged image; the missing end marker is the reliable sign.
        return Err(bad("JPEG is truncated (no end-of-image marker)".into()));
    }
    let img = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| bad(format!("image does not decode: {e}")))?;
    Ok(img.into_rgb8())
}

/// Whether a JPEG stream ends with the EOI marker `FF D9` (trailing zero padding allowed).
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

/// Full validation of one row: text checks, image decoding and the size comparison.
/// `Ok((sample, warnings))` when usable, `Err(issues)` (errors first) otherwise.
pub fn check_record(
    record: Record,
    fields: &Fields<'_>,
) -> Result<(Sample, Vec<Issue>), Vec<Issue>> {
    let (size, mut issues) = check_text(&record, fields);
    let image = match decode_image(&record, fields) {
        Ok(img) => Some(img),
        Err(issue) => {
            issues.push(issue);
            None
        }
    };
    let size = match (&image, fields.checks) {
        (Some(img), Checks::Plain) => Some(img.dimensions()),
        _ => size,
    };
    match (image, size) {
        (Some(image), Some(stated)) if issues.is_empty() => {
            let mut warnings = Vec::new();
            if image.dimensions() != stated {
                warnings.push(Issue {
                    row: record.source.clone(),
                    field: fields.image.to_string(),
                    message: format!(
                        "prompt states {} x {}, image decodes to {} x {}",
                        stated.0,
                        stated.1,
                        image.width(),
                        image.height()
                    ),
                    severity: Severity::Warning,
                });
            }
            Ok((
                Sample {
                    record,
                    image,
                    stated_size: stated,
                },
                warnings,
            ))
        }
        _ => Err(issues),
    }
}

/// Counts and the listed issues of a validation pass or of a training run's skipped rows.
#[derive(Debug, Clone, Default)]
pub struct ValidationReport {
    /// Rows examined.
    pub rows: usize,
    /// Rows with at least one error.
    pub bad_rows: usize,
    /// Warnings on otherwise good rows.
    pub warnings: usize,
    /// Issues, errors and warnings, in row order (capped at [`ValidationReport::MAX_LISTED`]).
    pub issues: Vec<Issue>,
}

impl ValidationReport {
    /// At most this many issues are kept for listing; counts stay exact.
    pub const MAX_LISTED: usize = 1000;

    /// Record a good row and its warnings.
    pub fn good(&mut self, warnings: Vec<Issue>) {
        self.rows += 1;
        self.warnings += warnings.len();
        self.list(warnings);
    }

    /// Record a bad row and its errors.
    pub fn bad(&mut self, issues: Vec<Issue>) {
        self.rows += 1;
        self.bad_rows += 1;
        self.list(issues);
    }

    fn list(&mut self, issues: Vec<Issue>) {
        let room = Self::MAX_LISTED.saturating_sub(self.issues.len());
        self.issues.extend(issues.into_iter().take(room));
    }

    /// Add another report's counts and issues.
    pub fn merge(&mut self, other: ValidationReport) {
        self.rows += other.rows;
        self.bad_rows += other.bad_rows;
        self.warnings += other.warnings;
        self.list(other.issues);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_size_is_read_like_the_reward() {
        assert_eq!(
            stated_image_size("x\nImage size: (800 x 600)\n"),
            Some((800, 600))
        );
        assert_eq!(stated_image_size("Image size: ( 64 x 48 )"), Some((64, 48)));
        assert_eq!(stated_image_size("Image size: 800 x 600"), None);
        assert_eq!(stated_image_size("Image size: (a x 600)"), None);
    }

    #[test]
    fn ground_truth_scene_reports_what_is_wrong() {
        let ok = "<scene>{\"objects\": [{\"id\": \"a.1\", \"bbox\": [0, 0, 1, 1]}], \"relationships\": []}</scene>\n<answer>(A) x</answer>";
        assert!(ground_truth_scene(ok).is_ok());
        assert_eq!(answer_text(ok), Some("(A) x"));
        assert!(ground_truth_scene("<scene>{oops</scene>")
            .unwrap_err()
            .starts_with("scene is not JSON"));
        assert_eq!(
            ground_truth_scene("<scene>[1]</scene>").unwrap_err(),
            "scene is not a JSON object"
        );
        assert_eq!(
            ground_truth_scene("no tags").unwrap_err(),
            "no <scene>...</scene> block"
        );
        assert_eq!(
            ground_truth_scene(
                "<scene>{\"objects\": [{\"id\": \"a.1\", \"bbox\": [0, 0, 1]}]}</scene>"
            )
            .unwrap_err(),
            "scene object 0 has no `bbox` of 4 numbers"
        );
    }
}
