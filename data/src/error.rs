//! The crate's error type: every variant names the file, row or column at fault.

use std::path::PathBuf;

use crate::hub::HubError;

/// Errors raised while locating, reading, validating or writing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The parquet reader or writer failed on a file.
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Arrow could not build or interpret a record batch.
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// The file does not start with the parquet magic bytes: it holds another format.
    #[error("{path}: not a parquet file ({found})")]
    NotParquet { path: PathBuf, found: String },
    /// The file starts as parquet but lacks the footer: it was cut short.
    #[error("{path}: truncated parquet file: its {len} bytes do not end with the footer magic `PAR1` (an interrupted download or copy?)")]
    TruncatedParquet { path: PathBuf, len: u64 },
    /// A required column is absent from a parquet file.
    #[error("{path}: missing column `{column}` (columns present: {available})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    /// A column exists but holds the wrong Arrow type.
    #[error("{path}: column `{column}` has type {found}, expected {expected}")]
    WrongType {
        path: PathBuf,
        column: String,
        found: String,
        expected: &'static str,
    },
    /// A row failed validation under the `error` policy.
    #[error("{path}: row {row}: field `{field}`: {reason}")]
    BadRow {
        path: PathBuf,
        row: usize,
        field: String,
        reason: String,
    },
    /// The dataset path holds no parquet file.
    #[error("{path}: no parquet files found (expected data/<split>-*.parquet, a folder of .parquet files, or a .parquet file)")]
    NoParquet { path: PathBuf },
    /// The requested split does not exist.
    #[error("split `{split}` not found (available: {available})")]
    NoSplit { split: String, available: String },
    /// Every row of an epoch was skipped or the split has fewer good rows than one batch.
    #[error(
        "split yields no full batch: {good} usable rows for batch size {batch_size} with drop_last"
    )]
    TooFewRows { good: usize, batch_size: usize },
    /// Resolving a Hugging Face hub id failed.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// An image could not be decoded or encoded.
    #[error("{what}: image: {source}")]
    Image {
        what: String,
        #[source]
        source: image::ImageError,
    },
    /// A line of an import file is malformed.
    #[error("{path}: line {line}: {reason}")]
    Import {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// An option combination is invalid (batch size 0, unknown policy, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl DataError {
    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// Wrap a parquet error with the path it concerns.
    pub fn parquet(path: impl Into<PathBuf>, source: parquet::errors::ParquetError) -> Self {
        DataError::Parquet {
            path: path.into(),
            source,
        }
    }

    /// Wrap an Arrow error with the path it concerns.
    pub fn arrow(path: impl Into<PathBuf>, source: arrow::error::ArrowError) -> Self {
        DataError::Arrow {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
