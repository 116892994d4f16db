//! GRPO as SpatialThinker runs it (EasyR1's `grpo` estimator; docs/recipe.md, "GRPO"): group
//! advantages, the clipped policy loss with the low-variance KL term, the actor update over
//! mini- and micro-batches, and the AnyPrecision AdamW optimiser.
//!
//! This module is the algorithm only. It never sees the Qwen2.5-VL forward, the data or the run
//! configuration: the actor update asks a [`actor::PolicyLogprobs`] implementation for the
//! response log-probs of a micro-batch, so the same code runs with the real policy
//! (`crate::train::policy`) and with the toy policies of the tests.

pub mod actor;
pub mod advantage;
pub mod loss;
pub mod optim;

/// Errors of the GRPO algorithm.
#[derive(Debug, thiserror::Error)]
pub enum GrpoError {
    /// A libtorch operation failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// The update geometry or an optimiser hyper-parameter is invalid.
    #[error("config: {0}")]
    Config(String),
    /// Inputs of a computation disagree in shape, length or content.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The policy could not compute log-probs (a model error, boxed to keep this module
    /// independent of the model).
    #[error("policy: {0}")]
    Policy(Box<dyn std::error::Error + Send + Sync>),
    /// Communication with the other replicas failed (boxed like [`GrpoError::Policy`]).
    #[error("replicas: {0}")]
    Replicas(Box<dyn std::error::Error + Send + Sync>),
}

/// Result type of the GRPO algorithm.
pub type Result<T> = std::result::Result<T, GrpoError>;
