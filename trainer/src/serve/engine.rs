//! The contract between the HTTP server and a generation engine: requests are admitted one
//! sequence at a time and every `step` advances all admitted sequences by one token, so a new
//! request joins the batch at the next decode step (continuous batching).

use image::RgbImage;

/// Identifies one generated sequence (one choice of one request) inside the engine.
pub type SeqId = u64;

/// One part of a chat message's content.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    /// Plain text.
    Text(String),
    /// A decoded image at its original size.
    Image(RgbImage),
}

/// One chat message (`system`, `user` or `assistant`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// The speaker.
    pub role: String,
    /// Text and image parts in order.
    pub content: Vec<ContentPart>,
}

/// How tokens are drawn. `temperature == 0` is greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means argmax.
    pub temperature: f32,
    /// Nucleus mass kept before sampling, in (0, 1].
    pub top_p: f32,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Seed of this sequence's sampler.
    pub seed: u64,
}

/// What one sequence should generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The conversation, rendered by the engine with its chat template.
    pub messages: Vec<ChatMessage>,
    /// Sampling settings.
    pub params: SamplingParams,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token was produced.
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
}

/// One token's worth of output for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    /// The sequence.
    pub seq: SeqId,
    /// Newly decoded text (may be empty while a multi-byte character is incomplete).
    pub text: String,
    /// Set on the sequence's last event; the engine has then dropped the sequence.
    pub finish: Option<FinishReason>,
}

/// The result of admitting a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Prompt length in tokens (reported as `usage.prompt_tokens`).
    pub prompt_tokens: usize,
}

/// Errors an engine reports.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request cannot be run (too long a prompt, unsupported content); the client's fault.
    #[error("{0}")]
    InvalidRequest(String),
    /// The engine itself failed; all of its sequences are lost.
    #[error("engine failure: {0}")]
    Internal(String),
}

/// A batched decoder. Implementations keep one KV cache per admitted sequence; `step` runs one
/// forward pass over every admitted sequence. Determinism contract: a sequence's output depends
/// only on its request (messages, params, seed), never on what else is in the batch.
pub trait DecodeEngine: Send {
    /// Name reported by `GET /v1/models`.
    fn model_id(&self) -> &str;
    /// Encode the prompt (prefill may happen here or on the next `step`) and add the sequence.
    fn admit(&mut self, seq: SeqId, request: &GenerationRequest) -> Result<Admitted, EngineError>;
    /// Advance every admitted sequence by one token; a finished sequence is dropped after its
    /// event carrying `finish`.
    fn step(&mut self) -> Result<Vec<TokenEvent>, EngineError>;
    /// Drop a sequence early (its client went away) and free its cache.
    fn release(&mut self, seq: SeqId);
    /// Sequences currently admitted.
    fn active(&self) -> usize;
}
