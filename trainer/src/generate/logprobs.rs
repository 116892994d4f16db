//! Teacher-forced response log-probs: the quantity GRPO's old, reference and current policy
//! passes compute, from one forward over `prompt + response` with the head applied only at
//! response positions ([`crate::model::LmHead::target_log_probs`]).

use tch::Tensor;

use crate::model::prefix::{ids_tensor, right_pad};
use crate::model::{
    get_rope_index, LogitsAt, ModelError, Qwen2_5VLForConditionalGeneration, RecomputeTape,
    SharedPrompts, VisionInputs,
};

/// Prompts with given responses, for teacher-forced log-probs.
#[derive(Debug)]
pub struct ResponseBatch {
    pub prompts: Vec<Vec<i64>>,
    pub responses: Vec<Vec<i64>>,
    /// Images of all prompts, in prompt order.
    pub images: Option<VisionInputs>,
}

/// Teacher-forced log-probs, right-aligned per row.
#[derive(Debug)]
pub struct ResponseLogprobs {
    /// `[B, R]` f32 log-probs of response token j of row i at `[i, j]` (R = longest response);
    /// carries grad when grad mode is on.
    pub logprobs: Tensor,
    /// `[B, R]` f32, 1 where `logprobs` is a real response token.
    pub mask: Tensor,
}

/// Log-probs of each response token given its prompt and preceding response tokens, from one
/// forward over `prompt + response`. Only response positions go through `lm_head` and the
/// normalisation, at `temperature`. Runs with whatever grad mode the caller has set.
///
/// Rows are right-padded, so the forward is plain causal attention without a mask, which
/// reaches the fused (flash) kernels on CUDA and saves no `[B, heads, L, L]` probabilities;
/// the real tokens never see the padding after them.
pub fn response_logprobs(
    model: &Qwen2_5VLForConditionalGeneration,
    batch: &ResponseBatch,
    temperature: f64,
    pad_token_id: i64,
) -> Result<ResponseLogprobs, ModelError> {
    response_logprobs_with(model, batch, temperature, pad_token_id, None)
}

/// [`response_logprobs`], with the model's layers checkpointed on `tape` when given (a training
/// forward; the caller runs the backward through [`RecomputeTape::backward`]).
pub fn response_logprobs_with<'m>(
    model: &'m Qwen2_5VLForConditionalGeneration,
    batch: &ResponseBatch,
    temperature: f64,
    pad_token_id: i64,
    tape: Option<&mut RecomputeTape<'m>>,
) -> Result<ResponseLogprobs, ModelError> {
    if batch.prompts.len() != batch.responses.len() || batch.prompts.is_empty() {
        return Err(ModelError::Input(format!(
            "{} prompts but {} responses",
            batch.prompts.len(),
            batch.responses.len()
        )));
    }
    if temperature <= 0.0 {
        return Err(ModelError::Input(format!(
            "temperature must be > 0, got {temperature}"
        )));
    }
    let device = model.device();
    let full: Vec<Vec<i64>> = batch
        .prompts
        .iter()
        .zip(&batch.responses)
        .map(|(p, r)| p.iter().chain(r).copied().collect())
        .collect();
    let (ids, mask) = right_pad(&full, pad_token_id);
    let grids = batch
        .images
        .as_ref()
        .map_or(&[][..], |i| i.image_grid_thw.as_slice());
    let rope = get_rope_index(&model.config, &ids, &mask, grids)?;
    let r_max = batch.responses.iter().map(Vec::len).max().unwrap_or(0) as i64;
    // hidden state at slot p predicts the token at p + 1
    let mut index = Vec::with_capacity((ids.len() as i64 * r_max) as usize);
    let mut targets = Vec::with_capacity(index.capacity());
    let mut valid = Vec::with_capacity(index.capacity());
    for (row, (prompt, resp)) in batch.prompts.iter().zip(&batch.responses).enumerate() {
        let start = prompt.len() as i64;
        for j in 0..r_max {
            let real = j < resp.len() as i64;
            index.push(if real { start + j - 1 } else { 0 });
            targets.push(if real { resp[j as usize] } else { 0 });
            valid.push(if real { 1f32 } else { 0f32 });
        }
        if start < 1 {
            return Err(ModelError::Input(format!("row {row}: empty prompt")));
        }
    }
    let b = ids.len() as i64;
    let index = Tensor::from_slice(&index)
        .f_view([b, r_max])?
        .f_to_device(device)?;
    let (ids, positions, mask) = (
        ids_tensor(&ids)?,
        rope.to_tensor(device)?,
        ids_tensor(&mask)?,
    );
    let at = LogitsAt::Positions(&index);
    let images = batch.images.as_ref();
    let hidden = match tape {
        Some(tape) => {
            model.hidden_states_checkpointed(&ids, &positions, &mask, images, at, tape)?
        }
        None => model.hidden_states(&ids, &positions, &mask, images, None, at)?,
    };
    let targets = Tensor::from_slice(&targets).f_to_device(device)?;
    let lp = model
        .lm_head
        .target_log_probs(&hidden.f_flatten(0, 1)?, &targets, temperature)?
        .f_view([b, r_max])?;
    let mask = Tensor::from_slice(&valid)
        .f_view([b, r_max])?
        .f_to_device(device)?;
    let lp = lp.f_mul(&mask)?;
    Ok(ResponseLogprobs { logprobs: lp, mask })
}

/// [`response_logprobs_with`] for rows that share prompts: each distinct prompt runs once per
/// layer ([`Qwen2_5VLForConditionalGeneration::shared_prompt_hidden`]); the result is the same
/// `[N, R]` log-probs (equal up to rounding).
pub fn response_logprobs_shared<'m>(
    model: &'m Qwen2_5VLForConditionalGeneration,
    batch: &SharedPrompts<'_>,
    temperature: f64,
    tape: Option<&mut RecomputeTape<'m>>,
) -> Result<ResponseLogprobs, ModelError> {
    if temperature <= 0.0 {
        return Err(ModelError::Input(format!(
            "temperature must be > 0, got {temperature}"
        )));
    }
    let device = model.device();
    let hidden = model.shared_prompt_hidden(batch, tape)?;
    let n = batch.responses.len() as i64;
    let r_max = batch.responses.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let rows: Vec<i64> = batch.prompt_of_row.iter().map(|&p| p as i64).collect();
    let first = hidden
        .prompt_last
        .f_index_select(0, &Tensor::from_slice(&rows).f_to_device(device)?)?
        .f_unsqueeze(1)?;
    // the prompt's last token predicts response token 0; response token j, token j + 1
    let hidden = if r_max > 1 {
        Tensor::f_cat(&[first, hidden.responses.f_narrow(1, 0, r_max - 1)?], 1)?
    } else {
        first
    };
    let mut targets = Vec::with_capacity((n * r_max) as usize);
    let mut valid = Vec::with_capacity(targets.capacity());
    for resp in batch.responses {
        for j in 0..r_max as usize {
            targets.push(resp.get(j).copied().unwrap_or(0));
            valid.push(if j < resp.len() { 1f32 } else { 0f32 });
        }
    }
    let targets = Tensor::from_slice(&targets).f_to_device(device)?;
    let lp = model
        .lm_head
        .target_log_probs(&hidden.f_flatten(0, 1)?, &targets, temperature)?
        .f_view([n, r_max])?;
    let mask = Tensor::from_slice(&valid)
        .f_view([n, r_max])?
        .f_to_device(device)?;
    Ok(ResponseLogprobs {
        logprobs: lp.f_mul(&mask)?,
        mask,
    })
}
