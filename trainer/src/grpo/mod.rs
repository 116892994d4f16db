//! GRPO as run by SpatialThinker (EasyR1's `grpo` estimator, spec §3): group advantages, the clipped
//! policy loss with the low-variance KL term, the AnyPrecision AdamW optimiser, one RL update step,
//! configs, checkpoints, metrics and the memory plan.
//!
//! Everything here is independent of the Qwen2.5-VL forward: the update step asks a
//! [`step::PolicyLogprobs`] implementation for the response log-probs of a micro-batch.

pub mod advantage;
pub mod checkpoint;
pub mod config;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod step;

use std::path::PathBuf;

/// Errors of the GRPO trainer library.
#[derive(Debug, thiserror::Error)]
pub enum GrpoError {
    /// A libtorch operation failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration file or override is invalid.
    #[error("config: {0}")]
    Config(String),
    /// Inputs of a computation disagree in shape, length or content.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A checkpoint is missing, incomplete or malformed.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The model failed (bad input, shapes, cache).
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    /// The memory plan does not fit the device.
    #[error("{0}")]
    DoesNotFit(String),
}

impl GrpoError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GrpoError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result type of the GRPO library.
pub type Result<T> = std::result::Result<T, GrpoError>;
