//! The Qwen2.5-VL model as a [`PolicyLogprobs`]: teacher-forced log-probs of the rollout
//! responses, with logits computed only at response positions.

use tch::Tensor;

use super::rollout::{vision_inputs, PromptItem};
use crate::generate::{response_logprobs_shared, response_logprobs_with, ResponseBatch};
use crate::grpo::actor::PolicyLogprobs;
use crate::grpo::{GrpoError, Result};
use crate::model::checkpoint::grad_mode_enabled;
use crate::model::{Qwen2_5VLForConditionalGeneration, RecomputeTape, SharedPrompts};
use crate::tokenizer::ENDOFTEXT_ID;

/// One scored sequence: which prompt and which response ids.
#[derive(Debug, Clone, Copy)]
pub struct SequenceRef<'a> {
    /// The prompt.
    pub prompt: &'a PromptItem,
    /// The response ids (stop id included).
    pub response: &'a [i64],
}

/// A model scoring a fixed list of sequences, padded to `width` response positions.
#[derive(Debug)]
pub struct ModelPolicy<'a> {
    model: &'a Qwen2_5VLForConditionalGeneration,
    sequences: Vec<SequenceRef<'a>>,
    temperature: f64,
    width: i64,
    /// Checkpoint the layers of grad-mode forwards (`model.gradient_checkpointing`).
    checkpointing: bool,
    /// Run each distinct prompt of a forward once (`actor.shared_prompt_forward`).
    share_prompts: bool,
    /// The last grad-mode forward's checkpointed layers, waiting for [`PolicyLogprobs::backward`].
    tape: Option<RecomputeTape<'a>>,
    /// Tokens the decoder ran so far (each forward's distinct prompts once when shared).
    tokens_run: usize,
}

impl<'a> ModelPolicy<'a> {
    /// Scores `sequences` with logits divided by `temperature` (the rollout temperature, as
    /// EasyR1 does in every log-prob pass).
    pub fn new(
        model: &'a Qwen2_5VLForConditionalGeneration,
        sequences: Vec<SequenceRef<'a>>,
        temperature: f64,
    ) -> Self {
        let width = sequences
            .iter()
            .map(|s| s.response.len())
            .max()
            .unwrap_or(0) as i64;
        ModelPolicy {
            model,
            sequences,
            temperature,
            width,
            checkpointing: false,
            share_prompts: false,
            tape: None,
            tokens_run: 0,
        }
    }

    /// With `on`, the rows of a forward that share a prompt run it once per layer and attend to
    /// its keys and values ([`crate::model::prefix`]; exact up to rounding).
    pub fn with_shared_prompts(mut self, on: bool) -> Self {
        self.share_prompts = on;
        self
    }

    /// With `on`, grad-mode forwards keep only each decoder layer's and vision block's input and
    /// recompute the layers in [`PolicyLogprobs::backward`] (exact; docs/architecture.md,
    /// "Memory").
    pub fn with_gradient_checkpointing(mut self, on: bool) -> Self {
        self.checkpointing = on;
        self
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    /// Whether there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Decoder tokens of the forwards run so far: prompt plus response tokens of each row, a
    /// prompt that the rows of a shared forward have in common counted once.
    pub fn tokens_run(&self) -> usize {
        self.tokens_run
    }

    /// Padded response width `T`.
    pub fn width(&self) -> i64 {
        self.width
    }
}

impl PolicyLogprobs for ModelPolicy<'_> {
    fn response_log_probs(&mut self, rows: &[usize]) -> Result<Tensor> {
        let picked = rows
            .iter()
            .map(|&r| {
                self.sequences.get(r).copied().ok_or_else(|| {
                    GrpoError::Invalid(format!("row {r} of {}", self.sequences.len()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // each row's prompt among the distinct prompts of this forward, in order of appearance
        let mut distinct: Vec<&PromptItem> = Vec::new();
        let prompt_of_row: Vec<usize> = picked
            .iter()
            .map(
                |s| match distinct.iter().position(|&d| std::ptr::eq(d, s.prompt)) {
                    Some(i) => i,
                    None => {
                        distinct.push(s.prompt);
                        distinct.len() - 1
                    }
                },
            )
            .collect();
        let model = self.model;
        let mut tape = (self.checkpointing && grad_mode_enabled()).then(RecomputeTape::new);
        let responses: Vec<Vec<i64>> = picked.iter().map(|s| s.response.to_vec()).collect();
        let policy_error = |e| GrpoError::Policy(Box::new(e));
        let shared = self.share_prompts && distinct.len() < picked.len();
        self.tokens_run += responses.iter().map(Vec::len).sum::<usize>()
            + if shared {
                distinct.iter().map(|p| p.ids.len()).sum::<usize>()
            } else {
                picked.iter().map(|s| s.prompt.ids.len()).sum::<usize>()
            };
        let out = if shared {
            let images = vision_inputs(&distinct).map_err(|e| GrpoError::Invalid(e.to_string()))?;
            let prompts: Vec<Vec<i64>> = distinct.iter().map(|p| p.ids.clone()).collect();
            let batch = SharedPrompts {
                prompts: &prompts,
                images: Some(&images),
                responses: &responses,
                prompt_of_row: &prompt_of_row,
                pad_token_id: ENDOFTEXT_ID,
            };
            response_logprobs_shared(model, &batch, self.temperature, tape.as_mut())
                .map_err(policy_error)?
        } else {
            let prompts: Vec<&PromptItem> = picked.iter().map(|s| s.prompt).collect();
            let images = vision_inputs(&prompts).map_err(|e| GrpoError::Invalid(e.to_string()))?;
            let batch = ResponseBatch {
                prompts: picked.iter().map(|s| s.prompt.ids.clone()).collect(),
                responses,
                images: Some(images),
            };
            response_logprobs_with(model, &batch, self.temperature, ENDOFTEXT_ID, tape.as_mut())
                .map_err(policy_error)?
        };
        self.tape = tape;
        let r = out.logprobs.size()[1];
        Ok(if r < self.width {
            out.logprobs.f_constant_pad_nd([0, self.width - r])?
        } else {
            out.logprobs
        })
    }

    fn sequence_len(&self, row: usize) -> usize {
        self.sequences
            .get(row)
            .map_or(1, |s| s.prompt.ids.len() + s.response.len())
    }

    fn backward(&mut self, loss: &Tensor) -> Result<()> {
        match self.tape.take() {
            Some(tape) => tape
                .backward(loss)
                .map_err(|e| GrpoError::Policy(Box::new(e))),
            None => Ok(loss.f_backward()?),
        }
    }
}
