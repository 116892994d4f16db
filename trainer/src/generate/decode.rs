//! The decode step, written once: a prefill that fills a KV cache with the prompts and returns the
//! logits of each row's next token, and the one-token forward that follows it. The
//! [`super::engine`] drives both, with per-row slots, masks and positions.
//!
//! Both return the final-norm hidden state `[B, D]` of each row's last position; the engine
//! turns them into logits over the head's output columns
//! ([`crate::model::LmHead::output_logits`]) a few rows at a time, so a `[B, K]` block of logits
//! is never held whole.

use tch::Tensor;

use crate::model::prefix::ids_tensor;
use crate::model::{
    get_rope_index, KvCache, LogitsAt, ModelError, Qwen2_5VLForConditionalGeneration, VisionInputs,
};

/// What a prefill leaves for decoding.
#[derive(Debug)]
pub struct Prefill {
    /// `[B, D]` final hidden state of each row's last prompt position (its next token's input
    /// to the head).
    pub hidden: Tensor,
    /// `[B, L]` the 0/1 padding mask of the prompts, on the model's device.
    pub attention_mask: Tensor,
    /// Per row, the M-RoPE position of its first new token.
    pub next_position: Vec<i64>,
}

/// Runs left-padded prompts `ids`/`mask` (equal-length rows) and their `images` into `cache`
/// (advanced by the prompt width) and returns the hidden state of each row's last position.
pub fn prefill(
    model: &Qwen2_5VLForConditionalGeneration,
    ids: &[Vec<i64>],
    mask: &[Vec<i64>],
    images: Option<&VisionInputs>,
    cache: &mut KvCache,
) -> Result<Prefill, ModelError> {
    let device = model.device();
    let grids = images.map_or(&[][..], |i| i.image_grid_thw.as_slice());
    let rope = get_rope_index(&model.config, ids, mask, grids)?;
    let attention_mask = ids_tensor(mask)?.f_to_device(device)?;
    let hidden = model.hidden_states(
        &ids_tensor(ids)?,
        &rope.to_tensor(device)?,
        &attention_mask,
        images,
        Some(cache),
        LogitsAt::Last,
    )?;
    Ok(Prefill {
        hidden: hidden.f_squeeze_dim(1)?,
        attention_mask,
        next_position: rope.next_position,
    })
}

/// One decode step: feeds `tokens[r]` to row `r` at M-RoPE position `positions[r]` (the same on
/// all three axes after the prompt), with `attention_mask [B, cache.len() + 1]` over every slot
/// (or the boolean `[B, 1, 1, cache.len() + 1]` of allowed keys),
/// writes the new keys and values at the cache's end (or at each row's own slot after
/// [`KvCache::set_row_positions`]) and returns the final hidden state `[B, D]` of each row.
pub fn decode_step(
    model: &Qwen2_5VLForConditionalGeneration,
    tokens: &[i64],
    positions: &[i64],
    attention_mask: &Tensor,
    cache: &mut KvCache,
) -> Result<Tensor, ModelError> {
    let rows = tokens.len() as i64;
    if positions.len() != tokens.len() {
        return Err(ModelError::Input(format!(
            "{} positions for {rows} tokens",
            positions.len()
        )));
    }
    let input = Tensor::from_slice(tokens).f_view([rows, 1])?;
    let pos = Tensor::from_slice(positions)
        .f_view([1, rows, 1])?
        .f_expand([3, rows, 1], false)?;
    let hidden = model.hidden_states(
        &input,
        &pos,
        attention_mask,
        None,
        Some(cache),
        LogitsAt::All,
    )?;
    Ok(hidden.f_squeeze_dim(1)?)
}
