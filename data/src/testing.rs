//! Fixture builders for tests: small synthetic datasets with known faults, written as this
//! crate's, the trainer's and the command line's tests need them. Ordinary library code (no
//! feature gate), so integration tests of any crate in the workspace can call it.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::synth::{write_split, write_split_with, SynthConfig};
use crate::writer::{write_readme, StvqaRow};

/// The sentence repeated to make the over-long prompt of [`write_bad_rows_dataset`].
pub const LONG_PROMPT_FILLER: &str = " Look at every part of the image before you answer.";
/// Copies of [`LONG_PROMPT_FILLER`] appended to the over-long prompt: about 2,200 tokens with the
/// Qwen2.5 tokenizer, so the row is over any `max_prompt_length` up to ~2,500 while the other
/// synthetic prompts stay near 400 tokens (text) plus their image tokens.
pub const LONG_PROMPT_REPEATS: usize = 200;

/// The rows of the training split that [`write_bad_rows_dataset`] breaks, one fault each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRows {
    /// Its image bytes are cut in half, so the image does not decode.
    pub corrupt_image: usize,
    /// Its `answer_option_text` (the spatial reward's ground truth) is the bare option text,
    /// without `<scene>` and `<answer>` tags.
    pub answer_without_tags: usize,
    /// Its `problem` states the image size in words instead of an `Image size: (W x H)` line.
    pub no_image_size: usize,
    /// Its `problem` has [`LONG_PROMPT_REPEATS`] copies of [`LONG_PROMPT_FILLER`] appended.
    pub long_prompt: usize,
}

impl BadRows {
    /// The four row indices in file order.
    pub fn all(&self) -> [usize; 4] {
        [
            self.corrupt_image,
            self.answer_without_tags,
            self.no_image_size,
            self.long_prompt,
        ]
    }
}

/// A dataset written by [`write_bad_rows_dataset`].
#[derive(Debug, Clone)]
pub struct BadRowsDataset {
    /// The HF dataset folder (`README.md`, `data/train-*.parquet`, `data/val-*.parquet`).
    pub root: PathBuf,
    /// The training split's parquet file (the one with the bad rows).
    pub train: PathBuf,
    /// The validation split's parquet file (all rows good).
    pub val: PathBuf,
    /// Rows of the training split.
    pub train_rows: usize,
    /// Which training rows are broken.
    pub bad: BadRows,
}

/// Write a synthetic STVQA-schema dataset folder to `out` (the rows [`crate::synth`] writes for
/// `cfg`) whose training split of `train_rows` rows (at least 4) holds exactly four bad rows, at
/// 1/5, 2/5, 3/5 and 4/5 of the split (see [`BadRows`]); the validation split's `val_rows` rows
/// are all good. Every other row is byte-identical to [`crate::synth::write_dataset`]'s.
pub fn write_bad_rows_dataset(
    cfg: &SynthConfig,
    out: &Path,
    train_rows: u64,
    val_rows: u64,
) -> Result<BadRowsDataset> {
    if train_rows < 4 {
        return Err(DataError::Config(format!(
            "a bad-rows fixture needs at least 4 training rows, got {train_rows}"
        )));
    }
    let at = |k: u64| (k * train_rows / 5) as usize;
    let bad = BadRows {
        corrupt_image: at(1),
        answer_without_tags: at(2),
        no_image_size: at(3),
        long_prompt: at(4),
    };
    let edit = |index: u64, row: &mut StvqaRow| match index as usize {
        i if i == bad.corrupt_image => {
            let half = row.image.bytes.len() / 2;
            row.image.bytes.truncate(half);
        }
        i if i == bad.answer_without_tags => {
            row.answer_option_text = row.answer_option_text_only.clone();
        }
        i if i == bad.no_image_size => {
            let line = format!("Image size: ({} x {})", cfg.width, cfg.height);
            let words = format!("The image is {} by {} pixels.", cfg.width, cfg.height);
            row.problem = row.problem.replace(&line, &words);
        }
        i if i == bad.long_prompt => {
            row.problem
                .push_str(&LONG_PROMPT_FILLER.repeat(LONG_PROMPT_REPEATS));
        }
        _ => {}
    };
    let train = write_split_with(cfg, out, crate::source::TRAIN, train_rows, edit)?;
    let val = write_split(cfg, out, crate::source::VAL, val_rows)?;
    write_readme(
        out,
        &[crate::source::TRAIN, crate::source::VAL],
        &format!(
            "Test fixture: synthetic spatial VQA (seed {}) whose train split holds four bad rows \
             (rows {}, {}, {}, {}: a corrupt image, an answer without tags, a prompt without the \
             image-size line, an over-long prompt).",
            cfg.seed,
            bad.corrupt_image,
            bad.answer_without_tags,
            bad.no_image_size,
            bad.long_prompt
        ),
    )?;
    Ok(BadRowsDataset {
        root: out.to_path_buf(),
        train,
        val,
        train_rows: train_rows as usize,
        bad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::validate_files;
    use crate::validate::Policy;
    use crate::ColumnNames;

    #[test]
    fn three_of_the_four_rows_fail_validation_and_the_rest_are_synth_rows() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig {
            seed: 9,
            width: 48,
            height: 40,
            ..SynthConfig::default()
        };
        let fixture = write_bad_rows_dataset(&cfg, dir.path(), 10, 2).unwrap();
        assert_eq!(fixture.bad.all(), [2, 4, 6, 8]);
        let report = validate_files(
            std::slice::from_ref(&fixture.train),
            &ColumnNames::default(),
            Policy::Skip,
        )
        .unwrap();
        // the over-long prompt is valid data: only a tokenizer tells it apart
        let mut bad: Vec<usize> = report
            .issues
            .iter()
            .filter(|i| i.severity == crate::validate::Severity::Error)
            .map(|i| i.row.row)
            .collect();
        bad.dedup();
        assert_eq!((report.rows, bad), (10, vec![2, 4, 6]));

        let reader = |p: &Path| {
            crate::reader::ParquetFile::open(p, &ColumnNames::default())
                .unwrap()
                .read_all()
                .unwrap()
        };
        let rows = reader(&fixture.train);
        let long = &rows[8].prompt;
        assert!(long.ends_with(&LONG_PROMPT_FILLER.repeat(LONG_PROMPT_REPEATS)));
        assert!(long.contains("Image size: (48 x 40)"));
        for (i, row) in rows.iter().enumerate() {
            let synth = crate::synth::generate_row(&cfg, "train", i as u64).unwrap();
            if !fixture.bad.all().contains(&i) {
                assert_eq!(row.prompt, synth.problem);
                assert_eq!(row.image.bytes, synth.image.bytes);
                assert_eq!(row.ground_truth, synth.answer_option_text);
            }
        }
        assert_eq!(reader(&fixture.val).len(), 2);
    }
}
