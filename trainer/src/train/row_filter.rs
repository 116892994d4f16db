//! The rows a run leaves out, found before it starts: one streaming pass over the dataset files
//! lists every row the trainer cannot use — an image that does not decode, an answer column
//! without what the reward reads, a prompt without the `Image size: (W x H)` line (the spatial
//! reward raises on every response of such a row), a prompt longer than `max_prompt_length`
//! tokens (EasyR1's `filter_overlong_prompts`) — and the budget that decides whether a run may go
//! on without them. `spatialthinker data validate` lists the same rows.
//!
//! The row checks are the data crate's ([`data::validate::check_record`], what the loader runs on
//! every row), so the scan and the loader agree on which rows are bad; the prompt length is
//! counted as [`PromptBuilder::encode`] builds the prompt (see [`prompt_token_count`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use image::DynamicImage;
use rayon::prelude::*;

use data::reader::ParquetFile;
use data::validate::{self, Checks, Fields, Issue};
use data::{ColumnNames, Record, RowRef};

use super::config::TrainConfig;
use super::rollout::PromptBuilder;
use super::setup::{bar, data_columns, Trainer};
use super::Result;
use crate::processor::{easyr1_pre_resize, render_chat, Processor, ProcessorError};
use crate::tokenizer::IMAGE_PAD_ID;

/// Default largest share of rows a run may skip before it stops (1 %).
pub const DEFAULT_MAX_SKIPPED_FRACTION: f64 = 0.01;
/// Warnings (usable rows, e.g. a stated size that differs from the decoded one) kept for listing.
pub const MAX_LISTED_WARNINGS: usize = 1000;

/// Why a row is left out.
#[derive(Debug, Clone, PartialEq)]
pub enum SkipReason {
    /// The image bytes are empty, not JPEG/PNG/WebP, truncated, or do not decode.
    BadImage {
        /// The decoder's complaint.
        message: String,
    },
    /// The answer column lacks what the reward reads: for the spatial reward a `<scene>` with
    /// a well-formed JSON object and a non-empty `<answer>`; for r1v any text at all.
    AnswerWithoutTags {
        /// What is missing or malformed.
        message: String,
    },
    /// The prompt has no `Image size: (W x H)` line with positive integers (spatial reward).
    NoImageSize,
    /// The prompt is empty (r1v reward).
    EmptyPrompt,
    /// The prompt (chat template and image tokens included) is longer than `max_prompt_length`.
    PromptTooLong {
        /// Its length in tokens.
        tokens: usize,
        /// The limit.
        max: usize,
    },
    /// The processor rejects the row (e.g. an image with an aspect ratio above 200).
    Unprocessable {
        /// The processor's error.
        message: String,
    },
    /// The reward raised while scoring the row's responses (found during training: the scan
    /// cannot foresee every such case).
    RewardRaised {
        /// The reward's error.
        message: String,
    },
}

impl SkipReason {
    /// A short stable name, for counts in `metrics.jsonl`.
    pub fn kind(&self) -> &'static str {
        match self {
            SkipReason::BadImage { .. } => "bad_image",
            SkipReason::AnswerWithoutTags { .. } => "answer_without_tags",
            SkipReason::NoImageSize => "no_image_size",
            SkipReason::EmptyPrompt => "empty_prompt",
            SkipReason::PromptTooLong { .. } => "prompt_too_long",
            SkipReason::Unprocessable { .. } => "unprocessable",
            SkipReason::RewardRaised { .. } => "reward_raised",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::BadImage { message } => write!(f, "image cannot be decoded ({message})"),
            SkipReason::AnswerWithoutTags { message } => {
                write!(f, "answer lacks what the reward reads ({message})")
            }
            SkipReason::NoImageSize => write!(
                f,
                "prompt has no `Image size: (W x H)` line with positive integers (the spatial reward raises on it)"
            ),
            SkipReason::EmptyPrompt => write!(f, "prompt is empty"),
            SkipReason::PromptTooLong { tokens, max } => write!(
                f,
                "prompt has {tokens} tokens (image included), more than max_prompt_length = {max}"
            ),
            SkipReason::Unprocessable { message } => {
                write!(f, "the processor rejects the row ({message})")
            }
            SkipReason::RewardRaised { message } => write!(f, "the reward raised ({message})"),
        }
    }
}

/// A row left out, and why. Displays as `<file> row <row>: <reason>`.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedRow {
    /// The parquet file (as given to the scan) and the row's 0-based index in it.
    pub row: RowRef,
    /// Why.
    pub reason: SkipReason,
}

impl fmt::Display for SkippedRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.row, self.reason)
    }
}

impl SkippedRow {
    /// `{"file", "row", "reason" (the kind), "detail" (the reason's text)}` for `metrics.jsonl`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.row.file.display().to_string(),
            "row": self.row.row,
            "reason": self.reason.kind(),
            "detail": self.reason.to_string(),
        })
    }
}

/// What the prompt-length check needs: the processor and the trainer's prompt settings
/// (`max_prompt_length`, the pre-resize pixel limits, `format_prompt`).
#[derive(Clone, Copy)]
pub struct PromptLengthCheck<'a> {
    /// The model's processor (tokenizer and image processor).
    pub processor: &'a Processor,
    /// The prompt builder the trainer uses.
    pub builder: &'a PromptBuilder,
}

/// The result of [`scan_rows`].
#[derive(Debug, Clone, Default)]
pub struct RowScan {
    /// Rows scanned.
    pub rows: usize,
    /// The rows to leave out, in file order (files in the order given).
    pub skipped: Vec<SkippedRow>,
    /// Warnings on usable rows (at most [`MAX_LISTED_WARNINGS`]); `warnings` counts them all.
    pub warning_list: Vec<Issue>,
    /// Warnings on usable rows.
    pub warnings: usize,
    /// Whether prompt lengths were checked (a processor was given).
    pub prompt_lengths_checked: bool,
}

impl RowScan {
    /// The skipped rows as a loader exclusion list ([`data::LoaderConfig::exclude`]).
    pub fn exclusion(&self) -> BTreeSet<RowRef> {
        self.skipped.iter().map(|s| s.row.clone()).collect()
    }

    /// Skipped rows per [`SkipReason::kind`].
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for s in &self.skipped {
            *counts.entry(s.reason.kind()).or_insert(0) += 1;
        }
        counts
    }

    /// [`check_skip_budget`] on this scan's rows.
    pub fn check_budget(
        &self,
        max_skipped_fraction: f64,
    ) -> std::result::Result<(), TooManySkipped> {
        match self.skipped.first() {
            Some(first) => {
                check_skip_budget(first, self.skipped.len(), self.rows, max_skipped_fraction)
            }
            None => Ok(()),
        }
    }
}

/// The row checks for a reward: what [`data::validate`] must find in a row for it to be scored.
pub fn checks_for(reward: rewards::RewardKind) -> Checks {
    match reward {
        rewards::RewardKind::Spatial => Checks::Spatial,
        rewards::RewardKind::R1v => Checks::Plain,
    }
}

/// Rows in `files` (read from the footers): the length of a progress bar over [`scan_rows`].
pub fn count_rows(files: &[PathBuf], columns: &ColumnNames) -> Result<usize> {
    let mut rows = 0;
    for path in files {
        rows += ParquetFile::open(path, columns)?.num_rows();
    }
    Ok(rows)
}

/// Scan every row of `files` and list those a run under `reward` must leave out; with `prompts`,
/// prompts longer than its builder's `max_prompt_length` too. Streams one row group at a time
/// (images decoded in parallel and dropped), draws nothing: `on_rows(rows_done)` is called after
/// each row group. File-level problems (not parquet, a missing column) are errors.
pub fn scan_rows(
    files: &[PathBuf],
    columns: &ColumnNames,
    reward: rewards::RewardKind,
    prompts: Option<PromptLengthCheck<'_>>,
    on_rows: &mut dyn FnMut(usize),
) -> Result<RowScan> {
    let fields = Fields {
        checks: checks_for(reward),
        prompt: &columns.prompt,
        image: &columns.image,
        answer: &columns.answer,
    };
    let mut scan = RowScan {
        prompt_lengths_checked: prompts.is_some(),
        ..RowScan::default()
    };
    for path in files {
        let file = ParquetFile::open(path, columns)?;
        for group in 0..file.row_group_rows.len() {
            let records = file.read_row_group(group)?;
            scan.rows += records.len();
            let results: Vec<Result<RowVerdict>> = records
                .into_par_iter()
                .map(|r| check_row(r, &fields, prompts))
                .collect();
            for result in results {
                match result? {
                    RowVerdict::Usable(warnings) => {
                        scan.warnings += warnings.len();
                        let room = MAX_LISTED_WARNINGS.saturating_sub(scan.warning_list.len());
                        scan.warning_list.extend(warnings.into_iter().take(room));
                    }
                    RowVerdict::Skip(row) => scan.skipped.push(row),
                }
            }
            on_rows(scan.rows);
        }
    }
    Ok(scan)
}

/// One row's outcome.
enum RowVerdict {
    /// Usable, with its warnings.
    Usable(Vec<Issue>),
    /// Left out.
    Skip(SkippedRow),
}

/// The loader's checks on one row, then its prompt length.
fn check_row(
    record: Record,
    fields: &Fields<'_>,
    prompts: Option<PromptLengthCheck<'_>>,
) -> Result<RowVerdict> {
    let row = record.source.clone();
    let skip = |reason| {
        Ok(RowVerdict::Skip(SkippedRow {
            row: row.clone(),
            reason,
        }))
    };
    let (sample, warnings) = match validate::check_record(record, fields) {
        Ok(usable) => usable,
        Err(issues) => return skip(reason_of(&issues, fields)),
    };
    let Some(PromptLengthCheck { processor, builder }) = prompts else {
        return Ok(RowVerdict::Usable(warnings));
    };
    let image = DynamicImage::ImageRgb8(sample.image);
    match prompt_token_count(processor, builder, &sample.record.prompt, &image) {
        Ok(tokens) if tokens > builder.max_prompt_length => skip(SkipReason::PromptTooLong {
            tokens,
            max: builder.max_prompt_length,
        }),
        Ok(_) => Ok(RowVerdict::Usable(warnings)),
        // a tokenizer failure is not the row's fault
        Err(e @ ProcessorError::Tokenizer(_)) => Err(e.into()),
        Err(e) => skip(SkipReason::Unprocessable {
            message: e.to_string(),
        }),
    }
}

/// The reason for a row's validation errors: the image first, then the prompt, then the answer
/// (one reason per row, even when several columns are at fault).
fn reason_of(issues: &[Issue], fields: &Fields<'_>) -> SkipReason {
    let on = |column: &str| issues.iter().find(|i| i.field == column);
    if let Some(issue) = on(fields.image) {
        return SkipReason::BadImage {
            message: issue.message.clone(),
        };
    }
    if on(fields.prompt).is_some() {
        return match fields.checks {
            Checks::Spatial => SkipReason::NoImageSize,
            Checks::Plain => SkipReason::EmptyPrompt,
        };
    }
    // check_record reports errors on exactly these three columns
    let issue = on(fields.answer).or(issues.first());
    SkipReason::AnswerWithoutTags {
        message: issue.map_or_else(String::new, |i| i.message.clone()),
    }
}

/// Length in tokens of the prompt [`PromptBuilder::encode`] builds for a row with this prompt text
/// and decoded image — chat template, and `<|image_pad|>` expanded for the image after EasyR1's
/// pre-resize — counted from the image's size, without computing its pixel values.
pub fn prompt_token_count(
    processor: &Processor,
    builder: &PromptBuilder,
    prompt: &str,
    image: &DynamicImage,
) -> std::result::Result<usize, ProcessorError> {
    let messages = builder.messages(prompt);
    let ids = processor.tokenize(&render_chat(&messages, true))?;
    let placeholders = ids.iter().filter(|&&id| id == IMAGE_PAD_ID).count();
    if placeholders != 1 {
        return Err(ProcessorError::ImageCount {
            placeholders,
            images: 1,
        });
    }
    let resized = easyr1_pre_resize(image, builder.min_pixels, builder.max_pixels);
    let image_tokens = processor
        .image_processor
        .num_image_tokens(resized.height() as usize, resized.width() as usize)?;
    Ok(ids.len() - placeholders + image_tokens)
}

/// More rows skipped than a run allows. Displays the first skipped row, then the share:
/// `<file> row <row>: <reason> (<n> of <total> rows skipped, <p>%, more than
/// max_skipped_fraction = <f> allows)`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct TooManySkipped {
    /// The first row skipped.
    pub first: SkippedRow,
    /// Rows skipped.
    pub skipped: usize,
    /// Rows in all.
    pub total_rows: usize,
    /// The limit.
    pub max_skipped_fraction: f64,
}

impl TooManySkipped {
    /// Skipped rows over all rows (1 when there are no rows).
    pub fn share(&self) -> f64 {
        skipped_share(self.skipped, self.total_rows)
    }
}

impl fmt::Display for TooManySkipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} of {} rows skipped, {:.2}%, more than max_skipped_fraction = {} allows)",
            self.first,
            self.skipped,
            self.total_rows,
            100.0 * self.share(),
            self.max_skipped_fraction
        )
    }
}

fn skipped_share(skipped: usize, total_rows: usize) -> f64 {
    if total_rows == 0 {
        1.0
    } else {
        skipped as f64 / total_rows as f64
    }
}

/// Whether a run may go on with `skipped` of `total_rows` rows left out (`first` being the first
/// of them): Ok while the share is at most `max_skipped_fraction` (in [0, 1]; NaN allows
/// nothing), else an error naming `first`. With the limit 0 the first skipped row is the error.
pub fn check_skip_budget(
    first: &SkippedRow,
    skipped: usize,
    total_rows: usize,
    max_skipped_fraction: f64,
) -> std::result::Result<(), TooManySkipped> {
    let share = skipped_share(skipped, total_rows);
    if skipped == 0 || share <= max_skipped_fraction {
        return Ok(());
    }
    Err(TooManySkipped {
        first: first.clone(),
        skipped,
        total_rows,
        max_skipped_fraction,
    })
}

/// Scans one split at set-up (a progress bar named `what` when `progress`), printing a warning
/// per row it leaves out.
pub(super) fn scan_split(
    what: &str,
    files: &[PathBuf],
    cfg: &TrainConfig,
    check: PromptLengthCheck<'_>,
    progress: bool,
) -> Result<RowScan> {
    let columns = data_columns(cfg);
    let pb = bar(count_rows(files, &columns)? as u64, what, progress);
    let scan = scan_rows(files, &columns, cfg.reward.kind, Some(check), &mut |done| {
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    warn_skipped(&scan.skipped);
    Ok(scan)
}

/// One `warning: skipping <file> row <n>: <reason>` line per row, whatever `--quiet` says.
fn warn_skipped(rows: &[SkippedRow]) {
    for row in rows {
        eprintln!("warning: skipping {row}");
    }
}

/// The `skipped_rows` event of `metrics.jsonl`: the split and every row with its reason.
pub(super) fn skipped_rows_event(
    split: &str,
    rows: &[SkippedRow],
) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = serde_json::Map::new();
    fields.insert("split".into(), split.into());
    fields.insert(
        "rows".into(),
        rows.iter()
            .map(SkippedRow::to_json)
            .collect::<Vec<_>>()
            .into(),
    );
    fields
}

impl Trainer {
    /// Leaves training rows out during the run (e.g. their reward raised): a warning per row,
    /// a `skipped_rows` event in `metrics.jsonl`, and the budget of `data.max_skipped_fraction`
    /// over the training split. A row already left out is not counted again.
    pub(super) fn skip_rows(&mut self, rows: Vec<SkippedRow>) -> Result<()> {
        // called twice per step, nearly always with nothing to skip
        if rows.is_empty() {
            return Ok(());
        }
        let known: BTreeSet<RowRef> = self.train_scan.exclusion();
        let new: Vec<SkippedRow> = rows
            .into_iter()
            .filter(|r| !known.contains(&r.row))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        warn_skipped(&new);
        if let Some(logger) = self.logger.as_mut() {
            logger.log_event(
                self.rl_step,
                "skipped_rows",
                skipped_rows_event("train", &new),
            )?;
        }
        self.train_scan.skipped.extend(new);
        self.train_scan
            .check_budget(self.cfg.data.max_skipped_fraction)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn skipped(row: usize) -> SkippedRow {
        SkippedRow {
            row: RowRef {
                file: Arc::new(PathBuf::from("d/train.parquet")),
                row,
            },
            reason: SkipReason::NoImageSize,
        }
    }

    #[test]
    fn the_budget_allows_up_to_the_limit() {
        let first = skipped(3);
        assert_eq!(check_skip_budget(&first, 1, 100, 0.01), Ok(()));
        assert_eq!(check_skip_budget(&first, 0, 0, 0.0), Ok(()));
        let err = check_skip_budget(&first, 2, 100, 0.01).unwrap_err();
        assert_eq!(
            err.to_string(),
            "d/train.parquet row 3: prompt has no `Image size: (W x H)` line with positive \
             integers (the spatial reward raises on it) (2 of 100 rows skipped, 2.00%, more than \
             max_skipped_fraction = 0.01 allows)"
        );
        // limit 0: the first skipped row is the error
        let err = check_skip_budget(&first, 1, 1000, 0.0).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("d/train.parquet row 3: prompt has no"));
        assert_eq!(err.first, first);
        assert!(check_skip_budget(&first, 1, 10, f64::NAN).is_err());
        assert!(check_skip_budget(&first, 10, 10, 1.0).is_ok());
    }

    #[test]
    fn skipped_rows_display_file_row_and_reason() {
        let mut row = skipped(7);
        row.reason = SkipReason::PromptTooLong {
            tokens: 600,
            max: 512,
        };
        assert_eq!(
            row.to_string(),
            "d/train.parquet row 7: prompt has 600 tokens (image included), more than \
             max_prompt_length = 512"
        );
        assert_eq!(
            row.to_json(),
            serde_json::json!({"file": "d/train.parquet", "row": 7, "reason": "prompt_too_long",
                "detail": row.reason.to_string()})
        );
    }
}
