//! One dataset row as read from parquet (images still encoded), and a decoded training sample.

use std::path::PathBuf;
use std::sync::Arc;

/// Where a row lives: its parquet file and its 0-based row index within that file. Ordered by
/// file path, then row; two refs are equal when their paths are (as given, not canonicalised).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowRef {
    /// The parquet file.
    pub file: Arc<PathBuf>,
    /// Row index within the file.
    pub row: usize,
}

impl std::fmt::Display for RowRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} row {}", self.file.display(), self.row)
    }
}

/// The HF `Image()` value: encoded bytes and the original file name (may be absent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageData {
    /// JPEG, PNG or WebP bytes; empty when the parquet value was null.
    pub bytes: Vec<u8>,
    /// The `path` field of the struct.
    pub path: Option<String>,
}

/// A row of an STVQA-7K-schema dataset. The three training columns (`prompt`, `image`,
/// `ground_truth`, read from the configured column names) are always present (empty when null;
/// validation reports that); the other STVQA-7K columns (docs/recipe.md, "Dataset schema") are `None` when the file lacks them.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Where the row was read from.
    pub source: RowRef,
    /// Prompt text (default column `problem`).
    pub prompt: String,
    /// Encoded image (default column `images`).
    pub image: ImageData,
    /// Reward ground truth (default column `answer_option_text`).
    pub ground_truth: String,
    /// `image_id`.
    pub image_id: Option<String>,
    /// `question_only`.
    pub question_only: Option<String>,
    /// `question_with_options`.
    pub question_with_options: Option<String>,
    /// `options`.
    pub options: Option<Vec<String>>,
    /// `answer` (scene + letter).
    pub answer: Option<String>,
    /// `answer_only` (letter).
    pub answer_only: Option<String>,
    /// `answer_text`.
    pub answer_text: Option<String>,
    /// `answer_text_only`.
    pub answer_text_only: Option<String>,
    /// `answer_option_text`.
    pub answer_option_text: Option<String>,
    /// `answer_option_text_only` (ground truth of the vanilla-GRPO reward).
    pub answer_option_text_only: Option<String>,
    /// `category`.
    pub category: Option<String>,
    /// `level`.
    pub level: Option<String>,
    /// `rating`.
    pub rating: Option<i32>,
    /// `reference_response` (synthetic and imported datasets).
    pub reference_response: Option<String>,
}

/// A validated row with its image decoded to RGB, ready for the processor.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The row.
    pub record: Record,
    /// The decoded image, at its stored size.
    pub image: image::RgbImage,
    /// `(W, H)` stated in the prompt's `Image size` line: the frame of the ground-truth boxes.
    pub stated_size: (u32, u32),
}
