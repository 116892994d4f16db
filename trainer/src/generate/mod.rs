//! Batched generation with a preallocated KV cache, and teacher-forced response log-probs.
//!
//! Prompts are left-padded to one width; `n` samples per prompt share one prefill whose cache is
//! repeated into the decode cache, then every row decodes in lock-step ([`decode`]). Tokens are
//! chosen by [`sampling`] (greedy, or temperature with top-k / top-p) from a caller-owned seeded
//! [`SplitMix64`], so a run is reproducible from its seed. The per-token log-probs returned are
//! those of the temperature-scaled distribution over the head's output vocabulary, the same
//! quantity [`response_logprobs`] recomputes for GRPO.

pub mod decode;
pub mod logprobs;
pub mod sampling;

use data::rng::SplitMix64;

pub use decode::{decode_step, prefill, Lockstep, Prefill};
pub use logprobs::{response_logprobs, ResponseBatch, ResponseLogprobs};
pub use sampling::{choose, next_tokens, SamplingConfig, DEFAULT_STOP_IDS};

use crate::model::{KvCache, ModelError, Qwen2_5VLForConditionalGeneration, VisionInputs};

/// Unpadded prompts of one batch with their images.
#[derive(Debug)]
pub struct PromptBatch {
    /// One id list per prompt (image pads already expanded).
    pub input_ids: Vec<Vec<i64>>,
    /// Images of all prompts, in prompt order.
    pub images: Option<VisionInputs>,
}

/// One generated continuation of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedSequence {
    /// Index of its prompt in the batch.
    pub prompt_index: usize,
    /// New ids, including the stop id when one ended it.
    pub ids: Vec<i64>,
    /// Log-prob of each id under the temperature-scaled distribution (f32 log-softmax).
    pub logprobs: Vec<f32>,
    /// Whether a stop id ended it (else `max_new_tokens` did).
    pub stopped: bool,
}

/// Left-pads rows to one width: `(ids, mask)` as row vectors.
pub fn left_pad(rows: &[Vec<i64>], pad: i64) -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    let seqs: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
    let (ids, mask, width) = crate::processor::left_pad(&seqs, pad);
    if width == 0 {
        return (vec![Vec::new(); rows.len()], vec![Vec::new(); rows.len()]);
    }
    let split = |flat: Vec<i64>| flat.chunks(width).map(<[i64]>::to_vec).collect();
    (split(ids), split(mask))
}

/// Generates `n_samples` continuations per prompt (rows ordered prompt-major). Runs without
/// grad. The entry point of rollouts, validation, `infer`, `eval` and `generate`.
pub fn generate(
    model: &Qwen2_5VLForConditionalGeneration,
    batch: &PromptBatch,
    n_samples: usize,
    cfg: &SamplingConfig,
    rng: &mut SplitMix64,
) -> Result<Vec<GeneratedSequence>, ModelError> {
    let width = batch.input_ids.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let rows = (batch.input_ids.len() * n_samples) as i64;
    let mut cache = KvCache::new(
        &model.config,
        rows,
        width + cfg.max_new_tokens as i64,
        model.device(),
        model.kind(),
    )?;
    generate_with_cache(model, batch, n_samples, cfg, rng, &mut cache)
}

/// [`generate`] into a caller-provided empty cache of `prompts * n_samples` rows and at least
/// `prompt width + max_new_tokens` slots (reuse it across calls to avoid reallocation).
pub fn generate_with_cache(
    model: &Qwen2_5VLForConditionalGeneration,
    batch: &PromptBatch,
    n_samples: usize,
    cfg: &SamplingConfig,
    rng: &mut SplitMix64,
    cache: &mut KvCache,
) -> Result<Vec<GeneratedSequence>, ModelError> {
    let _guard = tch::no_grad_guard();
    if batch.input_ids.is_empty() || batch.input_ids.iter().any(Vec::is_empty) || n_samples == 0 {
        return Err(ModelError::Input(
            "generate needs non-empty prompts and n_samples >= 1".into(),
        ));
    }
    let (ids, mask) = left_pad(&batch.input_ids, cfg.pad_token_id);
    let n = n_samples as i64;
    let prompts = ids.len() as i64;
    let width = ids[0].len() as i64;
    if cache.batch() != prompts * n || cache.capacity() < width + cfg.max_new_tokens as i64 {
        return Err(ModelError::Input(format!(
            "cache of {} rows x {} slots, need {} x {}",
            cache.batch(),
            cache.capacity(),
            prompts * n,
            width + cfg.max_new_tokens as i64
        )));
    }
    let mut prefill_cache =
        KvCache::new(&model.config, prompts, width, model.device(), model.kind())?;
    let prompt = prefill(
        model,
        &ids,
        &mask,
        batch.images.as_ref(),
        &mut prefill_cache,
    )?;
    cache.fill_repeated(&prefill_cache, n)?;
    drop(prefill_cache);
    let mut logits = prompt.logits.f_repeat_interleave_self_int(n, 0, None)?;
    let mut decoder = Lockstep::new(
        prompt
            .attention_mask
            .f_repeat_interleave_self_int(n, 0, None)?,
        prompt
            .next_position
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, n_samples))
            .collect(),
    );
    let mut sequences: Vec<GeneratedSequence> = (0..prompts as usize * n_samples)
        .map(|r| GeneratedSequence {
            prompt_index: r / n_samples,
            ids: Vec::new(),
            logprobs: Vec::new(),
            stopped: false,
        })
        .collect();
    for step in 0..cfg.max_new_tokens {
        let (next, lps) = next_tokens(&model.lm_head, &logits, cfg, rng)?;
        let mut feed = Vec::with_capacity(next.len());
        for (s, (id, lp)) in sequences.iter_mut().zip(next.into_iter().zip(lps)) {
            if s.stopped {
                feed.push(cfg.pad_token_id);
                continue;
            }
            s.ids.push(id);
            s.logprobs.push(lp);
            s.stopped = cfg.stop_token_ids.contains(&id);
            feed.push(id);
        }
        if sequences.iter().all(|s| s.stopped) || step + 1 == cfg.max_new_tokens {
            break;
        }
        logits = decoder.step(model, &feed, cache)?;
    }
    Ok(sequences)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_pad_aligns_right() {
        let (ids, mask) = left_pad(&[vec![1, 2, 3], vec![4]], 0);
        assert_eq!(ids, vec![vec![1, 2, 3], vec![0, 0, 4]]);
        assert_eq!(mask, vec![vec![1, 1, 1], vec![0, 0, 1]]);
    }
}
