//! The training loop: turning dataset rows into prompts, sampling and scoring rollouts, the GRPO
//! RL step on the Qwen2.5-VL policy, the supervised warm-up, validation, checkpoints and resume.
//!
//! The pieces it stands on (advantages, losses, the optimiser, checkpoint files, metrics) are in
//! [`crate::grpo`]; this module wires them to the model, the data and the rewards.

pub mod policy;
pub mod rollout;
pub mod row_filter;
pub mod runner;
pub mod sft;
pub mod tiny;

use std::path::PathBuf;

/// The embedded default configuration (`configs/tiny-cpu.toml`): what `spatialthinker train`
/// runs without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/tiny-cpu.toml");
/// Name shown for the embedded configuration in messages.
pub const DEFAULT_CONFIG_NAME: &str = "configs/tiny-cpu.toml (embedded)";

pub use runner::{Phase, PhaseTimes, Trainer, ValidationReport};

/// Errors of the training loop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Grpo(#[from] crate::grpo::GrpoError),
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("processor: {0}")]
    Processor(#[from] crate::processor::ProcessorError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// Boxed: data errors carry the file, row and field, and are large.
    #[error("data: {0}")]
    Data(Box<data::DataError>),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A row of the dataset cannot be used (named by file and row).
    #[error("{row}: {msg}")]
    Row { row: String, msg: String },
    #[error("config: {0}")]
    Config(String),
}

impl From<data::DataError> for TrainError {
    fn from(e: data::DataError) -> Self {
        TrainError::Data(Box::new(e))
    }
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result type of the training loop.
pub type Result<T> = std::result::Result<T, TrainError>;
