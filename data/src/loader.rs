//! Training iteration: seeded per-epoch shuffling, batches of N prompts, `drop_last`, and a
//! resumable cursor, streaming row groups so that a dataset larger than RAM works.
//!
//! Order of an epoch: the row groups of the split are permuted with a generator seeded by
//! `(seed, epoch)`; consecutive permuted groups are gathered into windows of at least
//! `shuffle_window_rows` rows; the rows of each window are permuted again (seed, epoch, window).
//! Only the current window is resident, with images still encoded; images are decoded for one
//! batch at a time, in parallel. The order is a pure function of (files, seed, epoch), so a
//! [`Cursor`] (epoch, position in that order) saved in a checkpoint resumes exactly.
//!
//! Excluded rows ([`LoaderConfig::exclude`], e.g. the rows a scan before training found unusable)
//! keep their place in that order: they are consumed like any other row (counted in the cursor's
//! position) but never decoded, validated or batched, and the rows after them move up to fill the
//! batch. So the order and the meaning of a cursor do not depend on the exclusion list; a cursor
//! resumes at the same row under the same list (which a re-scan of unchanged files reproduces),
//! and yields the same batches.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::reader::ParquetFile;
use crate::record::{Record, RowRef, Sample};
use crate::rng::SplitMix64;
use crate::schema::ColumnNames;
use crate::validate::{self, Checks, Fields, Policy, ValidationReport};

/// Default minimum rows per shuffle window (about 2048 images resident, still encoded).
pub const DEFAULT_SHUFFLE_WINDOW_ROWS: usize = 2048;

/// How a [`Loader`] iterates a split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Prompts per batch (EasyR1 `rollout_batch_size`).
    pub batch_size: usize,
    /// Seed of the per-epoch shuffle.
    pub seed: u64,
    /// Shuffle rows each epoch (false: file order).
    pub shuffle: bool,
    /// Drop the last, incomplete batch of an epoch.
    pub drop_last: bool,
    /// Minimum rows per shuffle window; larger windows shuffle better and use more memory.
    pub shuffle_window_rows: usize,
    /// What to do with bad rows.
    pub policy: Policy,
    /// Names of the prompt, image and answer columns.
    pub columns: ColumnNames,
    /// Image-decoding threads (0: rayon's default).
    pub threads: usize,
    /// Which row checks apply.
    #[serde(default)]
    pub checks: Checks,
    /// Rows never to batch, by file (the path as given to [`Loader::open`]) and row; each must be
    /// a row of the opened files. See the module documentation for how the cursor treats them.
    #[serde(skip)]
    pub exclude: BTreeSet<RowRef>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 1,
            seed: 1,
            shuffle: true,
            drop_last: true,
            shuffle_window_rows: DEFAULT_SHUFFLE_WINDOW_ROWS,
            policy: Policy::Skip,
            columns: ColumnNames::default(),
            threads: 0,
            checks: Checks::Spatial,
            exclude: BTreeSet::new(),
        }
    }
}

/// A resumable position: the epoch and the number of rows of that epoch's order consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Rows of the epoch's order already consumed (good, skipped and excluded).
    pub position: u64,
}

/// One batch of decoded samples.
#[derive(Debug)]
pub struct Batch {
    /// The samples, `batch_size` of them unless this is an epoch's last batch without drop_last.
    pub samples: Vec<Sample>,
    /// Epoch the samples come from.
    pub epoch: u64,
    /// The cursor after this batch: store it in a checkpoint to resume with the next batch.
    pub cursor: Cursor,
}

/// A window of consecutive (permuted) row groups.
#[derive(Debug, Clone)]
struct Window {
    /// Indices into `Loader::groups`.
    groups: Vec<usize>,
    /// Position of the window's first row in the epoch order.
    start: u64,
    /// Rows in the window.
    rows: u64,
}

/// One row group of one file.
#[derive(Debug, Clone, Copy)]
struct GroupRef {
    file: usize,
    row_group: usize,
    rows: usize,
}

/// Streams batches of one split. See the module documentation for the order.
pub struct Loader {
    files: Vec<ParquetFile>,
    groups: Vec<GroupRef>,
    total_rows: u64,
    config: LoaderConfig,
    cursor: Cursor,
    plan: Option<(u64, Vec<Window>)>,
    /// Index of the resident window and its rows in epoch order (taken as consumed).
    window: Option<(usize, Vec<Option<Record>>)>,
    report: ValidationReport,
    /// Excluded rows passed over so far (cumulative over epochs).
    excluded: u64,
    pool: rayon::ThreadPool,
    /// True from the start of an epoch (position 0) until it yields a batch.
    epoch_empty_so_far: bool,
}

impl Loader {
    /// Open the parquet `files` of one split (checking their schemas) positioned at `cursor`.
    pub fn open(files: &[PathBuf], config: LoaderConfig, cursor: Cursor) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::Config("batch size must be at least 1".into()));
        }
        let files = files
            .iter()
            .map(|f| ParquetFile::open(f, &config.columns))
            .collect::<Result<Vec<_>>>()?;
        let mut groups = Vec::new();
        for (file, pf) in files.iter().enumerate() {
            for (row_group, &rows) in pf.row_group_rows.iter().enumerate() {
                if rows > 0 {
                    groups.push(GroupRef {
                        file,
                        row_group,
                        rows,
                    });
                }
            }
        }
        let total_rows = groups.iter().map(|g| g.rows as u64).sum();
        check_exclusions(&files, &config.exclude)?;
        if cursor.position > total_rows {
            return Err(DataError::Config(format!(
                "cursor position {} is beyond the split's {total_rows} rows",
                cursor.position
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name(|i| format!("data-decode-{i}"))
            .build()
            .map_err(|e| DataError::Config(format!("decode thread pool: {e}")))?;
        Ok(Self {
            files,
            groups,
            total_rows,
            config,
            cursor,
            plan: None,
            window: None,
            report: ValidationReport::default(),
            excluded: 0,
            pool,
            epoch_empty_so_far: cursor.position == 0,
        })
    }

    /// Rows in one epoch (good and bad, excluded ones included).
    pub fn rows_per_epoch(&self) -> u64 {
        self.total_rows
    }

    /// Rows of one epoch that are excluded ([`LoaderConfig::exclude`]).
    pub fn excluded_per_epoch(&self) -> u64 {
        self.config.exclude.len() as u64
    }

    /// Excluded rows passed over so far (cumulative over epochs; not in [`Loader::report`]).
    pub fn excluded_rows(&self) -> u64 {
        self.excluded
    }

    /// The position of the next batch.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Bad rows skipped and warnings seen so far (cumulative over epochs).
    pub fn report(&self) -> &ValidationReport {
        &self.report
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// One pass over epoch `epoch`: its next batch, or `None` once it is exhausted (nothing of the
    /// following epoch is read). `while let Some(b) = loader.next_batch_of(e)? { … }` with
    /// `e = loader.cursor().epoch` visits every good row of the epoch once, then stops.
    pub fn next_batch_of(&mut self, epoch: u64) -> Result<Option<Batch>> {
        let c = self.cursor;
        if c.epoch > epoch || (c.epoch == epoch && c.position >= self.total_rows) {
            return Ok(None);
        }
        let batch = self.next_batch()?;
        Ok((batch.epoch == epoch).then_some(batch))
    }

    /// The next batch, moving to the next epoch when this one is exhausted (iteration never
    /// ends). Fails under the `error` policy at the first bad row, and when a whole epoch
    /// yields no batch.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let batch_size = self.config.batch_size;
        let mut samples: Vec<Sample> = Vec::with_capacity(batch_size);
        loop {
            if self.cursor.position >= self.total_rows {
                let epoch = self.cursor.epoch;
                let was_empty = self.epoch_empty_so_far;
                self.start_epoch(epoch + 1);
                if !samples.is_empty() && !self.config.drop_last {
                    return Ok(Batch {
                        samples,
                        epoch,
                        cursor: self.cursor,
                    });
                }
                if was_empty {
                    return Err(DataError::TooFewRows {
                        good: samples.len(),
                        batch_size,
                    });
                }
                samples.clear();
                continue;
            }
            let wanted = (batch_size - samples.len()) as u64;
            let take = wanted.min(self.total_rows - self.cursor.position) as usize;
            let records = self.take_records(take)?;
            self.decode_into(records, &mut samples)?;
            if samples.len() == batch_size {
                self.epoch_empty_so_far = false;
                return Ok(Batch {
                    samples,
                    epoch: self.cursor.epoch,
                    cursor: self.cursor,
                });
            }
        }
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.cursor = Cursor { epoch, position: 0 };
        self.epoch_empty_so_far = true;
        self.window = None;
    }

    /// Validate and decode `records` in parallel, appending good samples in order; excluded
    /// rows are dropped unread.
    fn decode_into(&mut self, mut records: Vec<Record>, samples: &mut Vec<Sample>) -> Result<()> {
        if !self.config.exclude.is_empty() {
            let before = records.len();
            records.retain(|r| !self.config.exclude.contains(&r.source));
            self.excluded += (before - records.len()) as u64;
        }
        let columns = &self.config.columns;
        let fields = Fields {
            checks: self.config.checks,
            prompt: &columns.prompt,
            image: &columns.image,
            answer: &columns.answer,
        };
        let results: Vec<_> = self.pool.install(|| {
            records
                .into_par_iter()
                .map(|r| validate::check_record(r, &fields))
                .collect()
        });
        for result in results {
            match result {
                Ok((sample, warnings)) => {
                    self.report.good(warnings);
                    samples.push(sample);
                }
                Err(mut issues) => {
                    if self.config.policy == Policy::Error {
                        return Err(issues.remove(0).into_error());
                    }
                    self.report.bad(issues);
                }
            }
        }
        Ok(())
    }

    /// Take the next `n` records of the epoch order (n ≤ rows left), advancing the cursor.
    fn take_records(&mut self, n: usize) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let position = self.cursor.position;
            let (index, start) = self.window_at(position);
            if self.window.as_ref().map(|(i, _)| *i) != Some(index) {
                let rows = self.load_window(index)?;
                self.window = Some((index, rows));
            }
            let (_, rows) = self.window.as_mut().expect("window loaded above");
            let offset = (position - start) as usize;
            let end = rows.len().min(offset + n - out.len());
            for slot in &mut rows[offset..end] {
                let record = slot.take().ok_or_else(|| {
                    DataError::Config(format!("row at position {position} consumed twice"))
                })?;
                out.push(record);
            }
            self.cursor.position += (end - offset) as u64;
        }
        Ok(out)
    }

    /// The windows of the current epoch (computed once per epoch).
    fn windows(&mut self) -> &[Window] {
        let epoch = self.cursor.epoch;
        if self.plan.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut order: Vec<usize> = (0..self.groups.len()).collect();
            if self.config.shuffle {
                SplitMix64::derive(&[self.config.seed, epoch, u64::MAX]).shuffle(&mut order);
            }
            let mut windows = Vec::new();
            let mut current = Window {
                groups: Vec::new(),
                start: 0,
                rows: 0,
            };
            for g in order {
                current.groups.push(g);
                current.rows += self.groups[g].rows as u64;
                if current.rows >= self.config.shuffle_window_rows as u64 {
                    let start = current.start + current.rows;
                    windows.push(std::mem::replace(
                        &mut current,
                        Window {
                            groups: Vec::new(),
                            start,
                            rows: 0,
                        },
                    ));
                }
            }
            if !current.groups.is_empty() {
                windows.push(current);
            }
            self.plan = Some((epoch, windows));
        }
        &self.plan.as_ref().expect("plan set above").1
    }

    /// The window holding `position`, and that window's start position.
    fn window_at(&mut self, position: u64) -> (usize, u64) {
        let windows = self.windows();
        let index = windows.partition_point(|w| w.start + w.rows <= position);
        (index, windows[index].start)
    }

    /// Read a window's row groups and put its rows in the epoch's order.
    fn load_window(&mut self, index: usize) -> Result<Vec<Option<Record>>> {
        let group_ids = self.windows()[index].groups.clone();
        let mut rows = Vec::new();
        for g in group_ids {
            let group = self.groups[g];
            rows.extend(self.files[group.file].read_row_group(group.row_group)?);
        }
        if self.config.shuffle {
            SplitMix64::derive(&[self.config.seed, self.cursor.epoch, index as u64])
                .shuffle(&mut rows);
        }
        Ok(rows.into_iter().map(Some).collect())
    }
}

/// Every excluded row must be a row of `files` (compared by path as given): an exclusion that
/// matches nothing is a mistake (e.g. a relative path against an absolute one) that would
/// otherwise silently batch the rows meant to be left out.
fn check_exclusions(files: &[ParquetFile], exclude: &BTreeSet<RowRef>) -> Result<()> {
    let rows: HashMap<&PathBuf, usize> = files
        .iter()
        .map(|f| (f.path.as_ref(), f.num_rows()))
        .collect();
    for r in exclude {
        if rows.get(r.file.as_ref()).is_none_or(|&n| r.row >= n) {
            return Err(DataError::Config(format!(
                "the exclusion list names {r}, which is not a row of the files being loaded"
            )));
        }
    }
    Ok(())
}

/// Validate every row of `files` in file order, decoding images in parallel one row group at a
/// time. Under [`Policy::Error`] the first bad row is returned as an error.
pub fn validate_files(
    files: &[PathBuf],
    columns: &ColumnNames,
    policy: Policy,
) -> Result<ValidationReport> {
    let fields = Fields {
        checks: crate::validate::Checks::Spatial,
        prompt: &columns.prompt,
        image: &columns.image,
        answer: &columns.answer,
    };
    let mut report = ValidationReport::default();
    for path in files {
        let file = ParquetFile::open(path, columns)?;
        for rg in 0..file.row_group_rows.len() {
            let records = file.read_row_group(rg)?;
            let results: Vec<_> = records
                .into_par_iter()
                .map(|r| validate::check_record(r, &fields).map(|(_, warnings)| warnings))
                .collect();
            for result in results {
                match result {
                    Ok(warnings) => report.good(warnings),
                    Err(mut issues) if policy == Policy::Error => {
                        return Err(issues.remove(0).into_error())
                    }
                    Err(issues) => report.bad(issues),
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::synth::{write_split, SynthConfig};

    const ROWS: u64 = 23;

    /// A 23-row split in row groups of 5 (so windows and groups do not line up with batches).
    fn split(dir: &std::path::Path) -> PathBuf {
        let cfg = SynthConfig {
            seed: 11,
            width: 32,
            height: 32,
            rows_per_group: 5,
            ..SynthConfig::default()
        };
        write_split(&cfg, dir, "train", ROWS).unwrap()
    }

    fn config(exclude: &[usize], file: &std::path::Path) -> LoaderConfig {
        LoaderConfig {
            batch_size: 3,
            seed: 4,
            drop_last: false,
            shuffle_window_rows: 8,
            threads: 1,
            exclude: exclude
                .iter()
                .map(|&row| RowRef {
                    file: Arc::new(file.to_path_buf()),
                    row,
                })
                .collect(),
            ..LoaderConfig::default()
        }
    }

    /// Row indices of each batch of `epoch`, and the cursor after each.
    fn epoch_batches(loader: &mut Loader, epoch: u64) -> Vec<(Vec<usize>, Cursor)> {
        let mut out = Vec::new();
        while let Some(b) = loader.next_batch_of(epoch).unwrap() {
            let rows = b.samples.iter().map(|s| s.record.source.row).collect();
            out.push((rows, b.cursor));
        }
        out
    }

    #[test]
    fn excluded_rows_are_left_out_of_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = split(dir.path());
        let files = std::slice::from_ref(&file);
        let excluded = [0, 7, 8, 22];
        let mut all = Loader::open(files, config(&[], &file), Cursor::default()).unwrap();
        let mut some = Loader::open(files, config(&excluded, &file), Cursor::default()).unwrap();
        assert_eq!(some.rows_per_epoch(), ROWS);
        assert_eq!(some.excluded_per_epoch(), 4);
        for epoch in 0..2 {
            let order: Vec<usize> = epoch_batches(&mut all, epoch)
                .into_iter()
                .flat_map(|b| b.0)
                .collect();
            assert_eq!(order.len(), ROWS as usize);
            let expected: Vec<usize> = order
                .into_iter()
                .filter(|r| !excluded.contains(r))
                .collect();
            let batches = epoch_batches(&mut some, epoch);
            let got: Vec<usize> = batches.iter().flat_map(|b| b.0.clone()).collect();
            assert_eq!(got, expected, "epoch {epoch}");
            // full batches while rows last; the cursor still counts every row of the epoch
            assert!(batches[..batches.len() - 1].iter().all(|b| b.0.len() == 3));
            let last = batches.last().unwrap().1;
            assert_eq!(
                last,
                Cursor {
                    epoch: epoch + 1,
                    position: 0
                }
            );
        }
        assert_eq!(some.excluded_rows(), 8);
        assert_eq!(some.report().bad_rows, 0);
        assert_eq!(some.report().rows, 2 * (ROWS as usize - 4));
    }

    #[test]
    fn positions_count_excluded_rows_and_resume_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let file = split(dir.path());
        let files = std::slice::from_ref(&file);
        // file order: rows 1 and 2 excluded, so the first batch is rows 0, 3, 4 at position 5
        let cfg = LoaderConfig {
            shuffle: false,
            ..config(&[1, 2], &file)
        };
        let mut loader = Loader::open(files, cfg.clone(), Cursor::default()).unwrap();
        let first = loader.next_batch().unwrap();
        let rows: Vec<usize> = first.samples.iter().map(|s| s.record.source.row).collect();
        assert_eq!(rows, [0, 3, 4]);
        assert_eq!(
            first.cursor,
            Cursor {
                epoch: 0,
                position: 5
            }
        );

        // shuffled: resuming from any batch's cursor gives the rest of the run
        let cfg = config(&[2, 5, 13, 21], &file);
        let mut run = Loader::open(files, cfg.clone(), Cursor::default()).unwrap();
        let straight: Vec<(Vec<usize>, Cursor)> = (0..12)
            .map(|_| {
                let b = run.next_batch().unwrap();
                (
                    b.samples.iter().map(|s| s.record.source.row).collect(),
                    b.cursor,
                )
            })
            .collect();
        for k in [0, 3, 6, 8] {
            let mut resumed = Loader::open(files, cfg.clone(), straight[k].1).unwrap();
            for expected in &straight[k + 1..] {
                let b = resumed.next_batch().unwrap();
                let rows: Vec<usize> = b.samples.iter().map(|s| s.record.source.row).collect();
                assert_eq!(
                    (&rows, b.cursor),
                    (&expected.0, expected.1),
                    "resumed after {k}"
                );
            }
        }
    }

    #[test]
    fn an_excluded_bad_row_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig {
            seed: 2,
            width: 32,
            height: 32,
            ..SynthConfig::default()
        };
        let mut rows: Vec<_> = (0..4)
            .map(|i| crate::synth::generate_row(&cfg, "train", i).unwrap())
            .collect();
        rows[1].image.bytes.truncate(10);
        let file = dir.path().join("bad.parquet");
        let mut w = crate::writer::SplitWriter::create_file(&file, 4).unwrap();
        for r in rows {
            w.write(r).unwrap();
        }
        w.finish().unwrap();
        let files = std::slice::from_ref(&file);
        // under the `error` policy the bad row would end the pass; excluded, it is never checked
        let strict = LoaderConfig {
            policy: Policy::Error,
            batch_size: 1,
            shuffle: false,
            ..config(&[1], &file)
        };
        let mut loader = Loader::open(files, strict, Cursor::default()).unwrap();
        let seen: Vec<usize> = epoch_batches(&mut loader, 0)
            .into_iter()
            .flat_map(|b| b.0)
            .collect();
        assert_eq!(seen, [0, 2, 3]);
        assert_eq!(loader.report().bad_rows, 0);
        assert_eq!(loader.excluded_rows(), 1);
    }

    #[test]
    fn an_exclusion_outside_the_files_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = split(dir.path());
        let files = std::slice::from_ref(&file);
        let err = Loader::open(files, config(&[ROWS as usize], &file), Cursor::default())
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("row 23, which is not a row of the files"),
            "{err}"
        );
        let elsewhere = dir.path().join("other.parquet");
        let err = Loader::open(files, config(&[0], &elsewhere), Cursor::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("other.parquet row 0"), "{err}");
    }

    #[test]
    fn an_epoch_with_every_row_excluded_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = split(dir.path());
        let every: Vec<usize> = (0..ROWS as usize).collect();
        let mut loader = Loader::open(
            std::slice::from_ref(&file),
            config(&every, &file),
            Cursor::default(),
        )
        .unwrap();
        assert!(matches!(
            loader.next_batch(),
            Err(DataError::TooFewRows { good: 0, .. })
        ));
    }
}
