//! Benchmark evaluation of SpatialThinker checkpoints (docs/recipe.md, "Answer matching"): prompts,
//! answer extraction, MCQ matching (authors' behaviour with the fallback bug fixed, or reproduced
//! on request), a per-sample JSONL log that a rerun resumes, and accuracy reports with binomial
//! standard errors. Evaluation sits above inference: it imports `infer` (prompts, the model
//! generator), never the other way round.

pub mod benchmarks;
pub mod chart;
pub mod compare;
pub mod dataset;
pub mod extract;
pub mod matching;
pub mod report;
pub mod runner;

use std::path::PathBuf;

/// Everything that can go wrong while evaluating; each variant names the file and row involved.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line of a JSONL file is not valid JSON.
    #[error("{path}:{line}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What serde said.
        message: String,
    },
    /// A row lacks a field or has it in the wrong type.
    #[error("{path}: row {row}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// 0-based row.
        row: usize,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// An image could not be opened or decoded.
    #[error("image {path}: {message}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// The data format is not readable by this build.
    #[error("{0}")]
    Unsupported(String),
    /// The answer generator (the model) failed.
    #[error("generation failed: {0}")]
    Generator(String),
}
