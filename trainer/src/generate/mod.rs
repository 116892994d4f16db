//! Generation: the [`engine`] (continuous batching over a KV pool) that every caller goes
//! through, the decode step it runs ([`decode`]), token choice ([`sampling`]) and teacher-forced
//! response log-probs ([`logprobs`]).
//!
//! Tokens are chosen from caller-seeded [`SplitMix64`] generators, one per sequence, so a run is
//! reproducible from its seed whatever else is decoded with it. The per-token log-probs returned
//! are those of the temperature-scaled distribution over the head's output vocabulary, the same
//! quantity [`response_logprobs`] recomputes for GRPO.

pub mod decode;
pub mod engine;
pub mod logprobs;
pub mod sampling;

use data::rng::SplitMix64;
use tch::Tensor;

pub use decode::{decode_step, prefill, Prefill};
pub use engine::{
    Engine, EngineConfig, EngineStats, Finish, GroupRequest, SeqId, Sequences, TokenOut,
};
pub use logprobs::{
    response_logprobs, response_logprobs_shared, response_logprobs_with, ResponseBatch,
    ResponseLogprobs,
};
pub use sampling::{choose, SamplingConfig, DEFAULT_STOP_IDS};

use crate::model::{ModelError, Qwen2_5VLForConditionalGeneration, VisionInputs};

/// Unpadded prompts of one batch with their images.
#[derive(Debug)]
pub struct PromptBatch {
    /// One id list per prompt (image pads expanded).
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

/// Generates `n_samples` continuations per prompt (rows ordered prompt-major) through one
/// [`Engine`] holding every row at once ([`generate_groups`]). Runs without grad. The entry
/// point of `infer`, `eval` and `generate`.
pub fn generate(
    model: &Qwen2_5VLForConditionalGeneration,
    batch: &PromptBatch,
    n_samples: usize,
    cfg: &SamplingConfig,
    rng: &mut SplitMix64,
) -> Result<Vec<GeneratedSequence>, ModelError> {
    let width = batch.input_ids.iter().map(Vec::len).max().unwrap_or(0);
    let rows = batch.input_ids.len() * n_samples;
    let images = split_images(model, &batch.input_ids, batch.images.as_ref())?;
    let prompts = batch.input_ids.iter().cloned().zip(images);
    let engine = EngineConfig::new(rows.max(1), width + cfg.max_new_tokens);
    let (sequences, _) = generate_groups(model, engine, prompts, n_samples, cfg, rng, &mut |_| {})?;
    Ok(sequences)
}

/// `n_samples` continuations of each `(prompt ids, images)` through one engine built from
/// `engine`: each prompt is one group, and sample `s` of prompt `p` draws from its own generator,
/// seeded with the `(p * n_samples + s)`-th value of `rng` (so a run resumes exactly from the
/// state of `rng`). `on_finished` is told how many sequences have finished as they do. Returns
/// the sequences prompt-major and the engine's accounting.
pub fn generate_groups(
    model: &Qwen2_5VLForConditionalGeneration,
    engine: EngineConfig,
    prompts: impl IntoIterator<Item = (Vec<i64>, Option<VisionInputs>)>,
    n_samples: usize,
    cfg: &SamplingConfig,
    rng: &mut SplitMix64,
    on_finished: &mut dyn FnMut(usize),
) -> Result<(Vec<GeneratedSequence>, EngineStats), ModelError> {
    let mut engine = Engine::new(model, engine)?;
    engine.add_groups(prompts, n_samples, cfg, rng)?;
    let sequences = engine.run(model, on_finished)?;
    Ok((sequences, engine.stats().clone()))
}

/// Splits the images of a batch into each prompt's own: prompt `p` takes the next images in
/// order until their merged patches cover its `<|image_pad|>` tokens.
pub fn split_images(
    model: &Qwen2_5VLForConditionalGeneration,
    prompts: &[Vec<i64>],
    images: Option<&VisionInputs>,
) -> Result<Vec<Option<VisionInputs>>, ModelError> {
    let Some(images) = images else {
        return Ok(prompts.iter().map(|_| None).collect());
    };
    let merge = model.config.vision.spatial_merge_size.pow(2);
    let patches = |g: &[i64; 3]| g[0] * g[1] * g[2];
    // first pixel row of each distinct image
    let mut offsets = vec![0i64];
    for g in images.distinct_grids()? {
        offsets.push(offsets.last().copied().unwrap_or(0) + patches(&g));
    }
    let source = |k: usize| images.sources.get(k).copied().unwrap_or(k);
    let mut next = 0;
    let mut out = Vec::with_capacity(prompts.len());
    for (p, ids) in prompts.iter().enumerate() {
        let mut pads = ids
            .iter()
            .filter(|&&i| i == model.config.image_token_id)
            .count() as i64;
        let (mut pixels, mut grids) = (Vec::new(), Vec::new());
        while pads > 0 {
            let grid = images.image_grid_thw.get(next).ok_or_else(|| {
                ModelError::Input(format!("prompt {p} has more image tokens than images"))
            })?;
            pads -= patches(grid) / merge;
            let start = offsets[source(next)];
            pixels.push(images.pixel_values.f_narrow(0, start, patches(grid))?);
            grids.push(*grid);
            next += 1;
        }
        if pads < 0 {
            return Err(ModelError::ImageTokenMismatch {
                tokens: pads + grids.iter().map(|g| patches(g) / merge).sum::<i64>(),
                features: grids.iter().map(|g| patches(g) / merge).sum(),
            });
        }
        out.push(if grids.is_empty() {
            None
        } else {
            Some(VisionInputs::new(Tensor::f_cat(&pixels, 0)?, grids))
        });
    }
    if next != images.image_grid_thw.len() {
        return Err(ModelError::Input(format!(
            "{} images for prompts that show {next}",
            images.image_grid_thw.len()
        )));
    }
    Ok(out)
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
