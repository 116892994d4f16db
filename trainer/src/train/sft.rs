//! Supervised warm-up: cross-entropy of a target response (a dataset column such as
//! `reference_response`, followed by `<|im_end|>`) given the prompt, token-mean over the batch,
//! with the same model, optimiser and log-prob code as the GRPO update.

use tch::Tensor;

use super::policy::{ModelPolicy, SequenceRef};
use super::rollout::{response_mask, PromptItem};
use super::{Result, TrainError};
use crate::grpo::optim::AnyPrecisionAdamW;
use crate::grpo::step::PolicyLogprobs;
use crate::model::Qwen2_5VLForConditionalGeneration;
use crate::processor::Processor;
use crate::tokenizer::IM_END_ID;

/// Diagnostics of one supervised step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftStepStats {
    /// Token-mean negative log-likelihood.
    pub loss: f64,
    /// Target tokens in the batch.
    pub tokens: usize,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the optimiser step was skipped (non-finite norm).
    pub skipped: bool,
}

/// Target ids of each prompt: its reference response tokenised, then `<|im_end|>`, cut to
/// `max_len` tokens. A row without a reference response is an error naming it.
pub fn target_ids(
    processor: &Processor,
    prompts: &[PromptItem],
    max_len: usize,
) -> Result<Vec<Vec<i64>>> {
    prompts
        .iter()
        .map(|p| {
            let text = p.reference_response.as_deref().ok_or_else(|| TrainError::Row {
                row: p.row.clone(),
                msg: "no reference response for the supervised warm-up (set sft.response_column or sft.enabled = false)".into(),
            })?;
            let mut ids = processor.tokenize(text)?;
            ids.push(IM_END_ID);
            ids.truncate(max_len);
            Ok(ids)
        })
        .collect()
}

/// One optimiser step on `prompts` with `targets`: for each micro-batch, backward of
/// `sum(−log p · mask) / total target tokens`, then clip the global norm and step.
pub fn sft_step(
    model: &Qwen2_5VLForConditionalGeneration,
    prompts: &[PromptItem],
    targets: &[Vec<i64>],
    micro_batch_size: usize,
    optimizer: &mut AnyPrecisionAdamW,
    lr: f64,
    max_grad_norm: f64,
) -> Result<SftStepStats> {
    let sequences: Vec<SequenceRef<'_>> = prompts
        .iter()
        .zip(targets)
        .map(|(prompt, t)| SequenceRef {
            prompt,
            response: t,
        })
        .collect();
    let lengths: Vec<usize> = targets.iter().map(Vec::len).collect();
    let tokens: usize = lengths.iter().sum();
    if tokens == 0 {
        return Err(TrainError::Config(
            "supervised batch has no target tokens".into(),
        ));
    }
    let mask = response_mask(&lengths, model.device())?;
    let mut policy = ModelPolicy::new(model, sequences, 1.0);
    optimizer.zero_grad();
    let mut loss_sum = 0.0;
    let rows: Vec<usize> = (0..prompts.len()).collect();
    for chunk in rows.chunks(micro_batch_size.max(1)) {
        let lp = policy.response_log_probs(chunk)?;
        let m = mask.f_narrow(0, chunk[0] as i64, chunk.len() as i64)?;
        let nll: Tensor = lp.f_mul(&m)?.f_sum(tch::Kind::Float)?.f_neg()?;
        nll.f_div_scalar(tokens as f64)?.f_backward()?;
        loss_sum += f64::try_from(&nll)?;
    }
    let grad_norm = optimizer.clip_grad_norm(max_grad_norm)?;
    let skipped = !grad_norm.is_finite();
    if !skipped {
        optimizer.step(lr)?;
    }
    optimizer.zero_grad();
    Ok(SftStepStats {
        loss: loss_sum / tokens as f64,
        tokens,
        grad_norm,
        skipped,
    })
}
