//! Rotary position embeddings: the text decoder's 3-D M-RoPE (positions from `get_rope_index`)
//! and the vision tower's 2-D (h, w) rotary table.
//!
//! Ported from transformers 5.23 `modeling_qwen2_5_vl.py`: `Qwen2_5_VLModel.get_rope_index`,
//! `get_vision_position_ids`, `Qwen2_5_VLRotaryEmbedding` and
//! `Qwen2_5_VLVisionRotaryEmbedding`.

use tch::{Device, Kind, Tensor};

use super::config::Qwen2_5VLConfig;
use super::ModelError;

/// 3-D rotary positions for a left-padded batch, plus what decoding needs to continue them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopeIndex {
    /// Batch size.
    pub batch: usize,
    /// Padded sequence length.
    pub seq_len: usize,
    /// `[3, B, L]` row-major: stream (t, h, w), batch row, slot. Padding slots hold 0.
    pub position_ids: Vec<i64>,
    /// Per row `max(position) + 1 - n_valid` (transformers 5.x `rope_deltas`).
    pub rope_deltas: Vec<i64>,
    /// Per row, the rotary position of the next token to be appended (`max(position) + 1`).
    pub next_position: Vec<i64>,
}

impl RopeIndex {
    /// `position_ids` as an int64 tensor `[3, B, L]` on `device`.
    pub fn to_tensor(&self, device: Device) -> Result<Tensor, ModelError> {
        Ok(Tensor::from_slice(&self.position_ids)
            .f_view([3, self.batch as i64, self.seq_len as i64])?
            .f_to_device(device)?)
    }
}

/// Builds M-RoPE positions for left-padded `input_ids` rows with `attention_mask` (1 = token),
/// consuming one `image_grid_thw` entry per run of image tokens, in order.
///
/// Text tokens advance every stream by one; an image block with merged grid `(t, h, w)` starting
/// at `p` gets `(p + ti, p + hi, p + wi)` and advances the cursor by `max(h, w)`.
pub fn get_rope_index(
    cfg: &Qwen2_5VLConfig,
    input_ids: &[Vec<i64>],
    attention_mask: &[Vec<i64>],
    image_grid_thw: &[[i64; 3]],
) -> Result<RopeIndex, ModelError> {
    let batch = input_ids.len();
    let seq_len = input_ids.first().map_or(0, Vec::len);
    let merge = cfg.vision.spatial_merge_size;
    let mut position_ids = vec![0i64; 3 * batch * seq_len];
    let mut rope_deltas = Vec::with_capacity(batch);
    let mut next_position = Vec::with_capacity(batch);
    let mut grids = image_grid_thw.iter();
    for (b, (ids, mask)) in input_ids.iter().zip(attention_mask).enumerate() {
        if ids.len() != seq_len || mask.len() != seq_len {
            return Err(ModelError::Input(format!(
                "row {b}: input_ids/attention_mask lengths {}/{} differ from {seq_len}",
                ids.len(),
                mask.len()
            )));
        }
        let valid: Vec<usize> = (0..seq_len).filter(|&j| mask[j] != 0).collect();
        let mut cursor = 0i64;
        let mut max_pos = -1i64;
        let mut k = 0;
        let mut set = |slot: usize, t: i64, h: i64, w: i64, max_pos: &mut i64| {
            position_ids[b * seq_len + slot] = t;
            position_ids[(batch + b) * seq_len + slot] = h;
            position_ids[(2 * batch + b) * seq_len + slot] = w;
            *max_pos = (*max_pos).max(t).max(h).max(w);
        };
        while k < valid.len() {
            if ids[valid[k]] != cfg.image_token_id {
                set(valid[k], cursor, cursor, cursor, &mut max_pos);
                cursor += 1;
                k += 1;
                continue;
            }
            let run = valid[k..]
                .iter()
                .take_while(|&&j| ids[j] == cfg.image_token_id)
                .count();
            let &[t, h, w] = grids.next().ok_or_else(|| {
                ModelError::Input(format!(
                    "row {b}: more image blocks than image_grid_thw entries ({})",
                    image_grid_thw.len()
                ))
            })?;
            let (lh, lw) = (h / merge, w / merge);
            if (t * lh * lw) as usize != run {
                return Err(ModelError::ImageTokenMismatch {
                    tokens: run as i64,
                    features: t * lh * lw,
                });
            }
            let mut n = 0;
            for ti in 0..t {
                for hi in 0..lh {
                    for wi in 0..lw {
                        set(
                            valid[k + n],
                            cursor + ti,
                            cursor + hi,
                            cursor + wi,
                            &mut max_pos,
                        );
                        n += 1;
                    }
                }
            }
            cursor += lh.max(lw);
            k += run;
        }
        rope_deltas.push(max_pos + 1 - valid.len() as i64);
        next_position.push(max_pos + 1);
    }
    if grids.next().is_some() {
        return Err(ModelError::Input(format!(
            "{} image_grid_thw entries but fewer image blocks in input_ids",
            image_grid_thw.len()
        )));
    }
    Ok(RopeIndex {
        batch,
        seq_len,
        position_ids,
        rope_deltas,
        next_position,
    })
}

/// Text M-RoPE tables.
#[derive(Debug)]
pub struct MRope {
    inv_freq: Tensor,
    mrope_section: [i64; 3],
}

impl MRope {
    /// `inv_freq[j] = theta^(-2j/head_dim)` in f32 on `device`.
    pub fn new(cfg: &Qwen2_5VLConfig, device: Device) -> Result<Self, ModelError> {
        let head_dim = cfg.text.head_dim();
        let inv_freq = inverse_frequencies(cfg.text.rope_theta, head_dim, device)?;
        Ok(MRope {
            inv_freq,
            mrope_section: cfg.text.mrope_section,
        })
    }

    /// `(cos, sin)` of shape `[B, L, head_dim]` in `kind` for `position_ids [3, B, L]`; computed in
    /// f32, frequency band `j` taken from stream t, h or w according to `mrope_section`.
    pub fn cos_sin(
        &self,
        position_ids: &Tensor,
        kind: Kind,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let freqs = position_ids
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq)?; // [3, B, L, hd/2]
        let mut parts = Vec::with_capacity(3);
        let mut start = 0;
        for (stream, &width) in self.mrope_section.iter().enumerate() {
            parts.push(freqs.f_get(stream as i64)?.f_narrow(-1, start, width)?);
            start += width;
        }
        let f = Tensor::f_cat(&parts, -1)?;
        let emb = Tensor::f_cat(&[&f, &f], -1)?;
        Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
    }
}

/// `1 / theta^(arange(0, dim, 2) / dim)` in f32.
pub fn inverse_frequencies(theta: f64, dim: i64, device: Device) -> Result<Tensor, ModelError> {
    let exps =
        Tensor::f_arange_start_step(0, dim, 2, (Kind::Float, device))?.f_div_scalar(dim as f64)?;
    Ok(Tensor::f_pow_scalar(theta, &exps)?.f_reciprocal()?)
}

/// `[x1, x2] -> [-x2, x1]` on the last axis.
pub fn rotate_half(x: &Tensor) -> Result<Tensor, ModelError> {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.f_narrow(-1, 0, half)?;
    let x2 = x.f_narrow(-1, half, half)?;
    Ok(Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?)
}

/// `x * cos + rotate_half(x) * sin`.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, ModelError> {
    Ok(x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Qwen2_5VLConfig {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/qwen25vl/tiny3b");
        Qwen2_5VLConfig::from_dir(&dir).unwrap()
    }

    /// A worked example of transformers' `get_rope_index`: 5 text tokens, a (1, 4, 6) image, 4
    /// text tokens.
    #[test]
    fn worked_example() {
        let c = cfg();
        let img = c.image_token_id;
        let mut ids = vec![1, 2, 3, 4, c.vision_start_token_id];
        ids.extend([img; 6]);
        ids.extend([c.vision_end_token_id, 7, 8, 9]);
        let mask = vec![1; ids.len()];
        let r = get_rope_index(&c, &[ids], &[mask], &[[1, 4, 6]]).unwrap();
        let l = 15;
        assert_eq!(
            &r.position_ids[..l],
            &[0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 8, 9, 10, 11]
        );
        assert_eq!(
            &r.position_ids[l..2 * l],
            &[0, 1, 2, 3, 4, 5, 5, 5, 6, 6, 6, 8, 9, 10, 11]
        );
        assert_eq!(
            &r.position_ids[2 * l..],
            &[0, 1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 9, 10, 11]
        );
        assert_eq!(r.rope_deltas, vec![-3]);
        assert_eq!(r.next_position, vec![12]);
    }

    #[test]
    fn token_count_mismatch_is_an_error() {
        let c = cfg();
        let ids = vec![c.vision_start_token_id, c.image_token_id, c.image_token_id];
        let err = get_rope_index(&c, &[ids], &[vec![1, 1, 1]], &[[1, 4, 4]]).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::ImageTokenMismatch {
                    tokens: 2,
                    features: 4
                }
            ),
            "{err}"
        );
    }
}
