//! A training run: the configuration, set-up, the RL step, the loop with its validation and
//! checkpoint cadence, the supervised warm-up, metrics and checkpoints (docs/architecture.md).
//!
//! * [`config`]: the TOML recipe (`[model]`, `[data]`, `[algorithm]`, `[actor]`, …);
//! * [`setup`]: [`Trainer::new`] — device, model, data, optimiser, resume;
//! * [`rl_step`]: ONE GRPO step, phase by phase (sample → score → old log-probs → reference
//!   log-probs → advantages → actor update → metrics);
//! * [`runner`]: the loop, validation and checkpoint cadence;
//! * [`rollout`], [`policy`]: prompts, sampling and scoring; the model as a log-prob source;
//! * [`sft`]: the supervised warm-up; [`report`], [`metrics`]: what a step and a run print and log;
//! * [`checkpoint`], [`memory`]: checkpoint files and the device-memory plan; [`tiny`]: the
//!   `tiny-random` preset; [`prompt_template`]: the training prompt recorded in checkpoints.
//!
//! The algorithm itself (advantages, losses, the actor update, the optimiser) is
//! [`crate::grpo`]; this module wires it to the model, the data and the rewards.

pub mod checkpoint;
pub mod config;
pub mod lora;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod prompt_template;
pub mod report;
pub mod rl_step;
pub mod rollout;
pub mod row_filter;
pub mod run_report;
pub mod runner;
pub mod setup;
pub mod sft;
pub mod tiny;

use std::path::PathBuf;

/// The embedded default configuration (`configs/tiny-cpu.toml`): what `spatialthinker train`
/// runs without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/tiny-cpu.toml");
/// Name shown for the embedded configuration in messages.
pub const DEFAULT_CONFIG_NAME: &str = "configs/tiny-cpu.toml (embedded)";

pub use report::{Phase, PhaseTimes, RewardSummary, StepReport};
pub use runner::RunSummary;
pub use setup::{Trainer, TrainerOptions};

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
    /// Another rank, or the communication with it, failed.
    #[error("{0}")]
    Distributed(#[from] crate::distributed::DistError),
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
    /// Inputs of a computation disagree in shape, length or content.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A checkpoint is missing, incomplete or malformed.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// The memory plan does not fit the device.
    #[error("{0}")]
    DoesNotFit(String),
    /// More dataset rows were left out than `data.max_skipped_fraction` allows.
    #[error("too many unusable rows: {0}")]
    TooManySkipped(#[from] row_filter::TooManySkipped),
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
