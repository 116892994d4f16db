//! The decoder over sequences that share their prompt (a GRPO group's responses), exact: each
//! distinct prompt runs once per layer, and every response attends to its prompt's keys and
//! values as computed in that same layer, then causally to its own tokens (docs/architecture.md,
//! "Shared prompts").
//!
//! Per layer, two batches go through the same weights:
//!
//! * the prompts `[G, Lp, D]`, right-padded: plain causal attention (exact for real tokens);
//! * the responses `[N, Lr, D]`, right-padded: queries of row `r` see the real tokens of its
//!   prompt `g(r)` (the prompt's keys and values gathered per row) and its own earlier tokens.
//!
//! Norms, projections and the MLP act per token, so their prompt work is done once instead of
//! once per response; the gradient reaching a prompt's keys and values is the sum over its
//! responses (the gather's backward), exactly what the unshared forward accumulates. A
//! response's M-RoPE positions continue from its prompt's (`next_position + j` on every stream),
//! as `get_rope_index` numbers text after an image.

use tch::{Device, Kind, Tensor};

use super::checkpoint::RecomputeTape;
use super::rope::{apply_rotary, get_rope_index};
use super::text::{DecoderLayer, Linear, RmsNorm};
use super::{ModelError, Qwen2_5VLForConditionalGeneration, VisionInputs};

/// Prompts and the responses that share them, for one forward.
#[derive(Debug)]
pub struct SharedPrompts<'a> {
    /// Distinct prompts (ids, image pads expanded).
    pub prompts: &'a [Vec<i64>],
    /// Their images, in prompt order.
    pub images: Option<&'a VisionInputs>,
    /// Response ids of each row.
    pub responses: &'a [Vec<i64>],
    /// Each row's prompt (index into `prompts`).
    pub prompt_of_row: &'a [usize],
    /// Id written into padding slots.
    pub pad_token_id: i64,
}

/// What a shared-prompt forward returns: the final-norm hidden states the head needs.
#[derive(Debug)]
pub struct SharedPromptHidden {
    /// `[G, D]`: each prompt's last real token (it predicts the first response token).
    pub prompt_last: Tensor,
    /// `[N, Lr, D]`: each response's tokens, right-padded (token `j` predicts token `j + 1`).
    pub responses: Tensor,
}

/// Rotary tables and the response mask, computed once for all layers.
struct Layout {
    prompt_cos: Tensor,
    prompt_sin: Tensor,
    response_cos: Tensor,
    response_sin: Tensor,
    /// `[N]` int64: each row's prompt.
    prompt_of_row: Tensor,
    /// `[N, 1, Lr, Lp + Lr]`: true where a response query may see a key.
    response_mask: Tensor,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Layout {
    fn shallow_clone(&self) -> Self {
        Layout {
            prompt_cos: self.prompt_cos.shallow_clone(),
            prompt_sin: self.prompt_sin.shallow_clone(),
            response_cos: self.response_cos.shallow_clone(),
            response_sin: self.response_sin.shallow_clone(),
            prompt_of_row: self.prompt_of_row.shallow_clone(),
            response_mask: self.response_mask.shallow_clone(),
            ..*self
        }
    }
}

/// Rows right-padded with `pad` to the longest, as `[rows, width]` ids and 0/1 mask rows (the
/// layout of every training forward).
pub(crate) fn right_pad(rows: &[Vec<i64>], pad: i64) -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    rows.iter()
        .map(|r| {
            let fill = width - r.len();
            let ids = r
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad, fill))
                .collect();
            let mask = std::iter::repeat_n(1, r.len())
                .chain(std::iter::repeat_n(0, fill))
                .collect();
            (ids, mask)
        })
        .unzip()
}

/// `[rows, width]` int64 tensor (on the CPU) of equal-length rows.
pub(crate) fn ids_tensor(rows: &[Vec<i64>]) -> Result<Tensor, ModelError> {
    let width = rows.first().map_or(0, Vec::len) as i64;
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_slice(&flat).f_view([rows.len() as i64, width])?)
}

impl Qwen2_5VLForConditionalGeneration {
    /// The decoder's final hidden states for responses sharing prompts ([`SharedPrompts`]),
    /// each distinct prompt computed once per layer (module docs). With `tape`, the decoder
    /// layers and vision blocks are checkpointed as in
    /// [`Self::hidden_states_checkpointed`].
    pub fn shared_prompt_hidden<'m>(
        &'m self,
        batch: &SharedPrompts<'_>,
        mut tape: Option<&mut RecomputeTape<'m>>,
    ) -> Result<SharedPromptHidden, ModelError> {
        let (g, n) = (batch.prompts.len(), batch.responses.len());
        if g == 0 || n == 0 || batch.prompt_of_row.len() != n {
            return Err(ModelError::Input(format!(
                "{g} prompts, {n} responses and {} row prompts",
                batch.prompt_of_row.len()
            )));
        }
        if let Some(&bad) = batch.prompt_of_row.iter().find(|&&p| p >= g) {
            return Err(ModelError::Input(format!(
                "row prompt {bad} of {g} prompts"
            )));
        }
        if let Some(p) = batch.prompts.iter().position(Vec::is_empty) {
            return Err(ModelError::Input(format!("prompt {p} is empty")));
        }
        let device = self.device;
        let (p_ids, p_mask) = right_pad(batch.prompts, batch.pad_token_id);
        let (r_ids, _) = right_pad(batch.responses, batch.pad_token_id);
        let (lp, lr) = (p_ids[0].len() as i64, r_ids[0].len().max(1) as i64);
        let grids = batch
            .images
            .map_or(&[][..], |i| i.image_grid_thw.as_slice());
        let rope = get_rope_index(&self.config, &p_ids, &p_mask, grids)?;
        // a response continues its prompt's positions on every stream
        let mut r_pos = Vec::with_capacity(3 * n * lr as usize);
        for _stream in 0..3 {
            for &p in batch.prompt_of_row {
                r_pos.extend((0..lr).map(|j| rope.next_position[p] + j));
            }
        }
        let r_pos = Tensor::from_slice(&r_pos)
            .f_view([3, n as i64, lr])?
            .f_to_device(device)?;
        let (prompt_cos, prompt_sin) = self.rope.cos_sin(&rope.to_tensor(device)?, self.kind)?;
        let (response_cos, response_sin) = self.rope.cos_sin(&r_pos, self.kind)?;
        // keys: the prompt's real tokens, then the response's own tokens up to the query
        let prompt_len: Vec<i64> = batch
            .prompt_of_row
            .iter()
            .map(|&p| batch.prompts[p].len() as i64)
            .collect();
        let prompt_len = Tensor::from_slice(&prompt_len)
            .f_to_device(device)?
            .f_view([n as i64, 1, 1])?;
        let key = Tensor::f_arange(lp + lr, (Kind::Int64, device))?.f_view([1, 1, lp + lr])?;
        let query = Tensor::f_arange(lr, (Kind::Int64, device))?.f_view([1, lr, 1])?;
        let in_prompt = key.f_lt_tensor(&prompt_len)?;
        let own = key
            .f_ge(lp)?
            .f_logical_and(&key.f_sub_scalar(lp)?.f_le_tensor(&query)?)?;
        let response_mask = in_prompt.f_logical_or(&own)?.f_unsqueeze(1)?;
        let prompt_of_row: Vec<i64> = batch.prompt_of_row.iter().map(|&p| p as i64).collect();
        let t = &self.config.text;
        let layout = Layout {
            prompt_cos,
            prompt_sin,
            response_cos,
            response_sin,
            prompt_of_row: Tensor::from_slice(&prompt_of_row).f_to_device(device)?,
            response_mask,
            heads: t.num_attention_heads,
            kv_heads: t.num_key_value_heads,
            head_dim: t.head_dim(),
        };
        let p_embeds = self.embed_with(
            &ids_tensor(&p_ids)?.f_to_device(device)?,
            batch.images,
            tape.as_deref_mut(),
        )?;
        let r_embeds = self.embed_with(&ids_tensor(&r_ids)?.f_to_device(device)?, None, None)?;
        let (hp, hr) = match tape {
            Some(tape) => {
                let layers = &self.model.layers;
                let (p_shape, r_shape) = (p_embeds.size(), r_embeds.size());
                let split = p_embeds.numel() as i64;
                let packed =
                    Tensor::f_cat(&[p_embeds.f_flatten(0, -1)?, r_embeds.f_flatten(0, -1)?], 0)?;
                let lay = layout.shallow_clone();
                let out = tape.run(&packed, layers.len(), move |i, x| {
                    let hp = x.f_narrow(0, 0, split)?.f_view(p_shape.as_slice())?;
                    let hr = x
                        .f_narrow(0, split, x.size()[0] - split)?
                        .f_view(r_shape.as_slice())?;
                    let (hp, hr) = layer_forward(&layers[i], &hp, &hr, &lay)?;
                    Ok(Tensor::f_cat(
                        &[hp.f_flatten(0, -1)?, hr.f_flatten(0, -1)?],
                        0,
                    )?)
                })?;
                (
                    out.f_narrow(0, 0, split)?
                        .f_view(p_embeds.size().as_slice())?,
                    out.f_narrow(0, split, out.size()[0] - split)?
                        .f_view(r_embeds.size().as_slice())?,
                )
            }
            None => {
                let (mut hp, mut hr) = (p_embeds, r_embeds);
                for layer in &self.model.layers {
                    (hp, hr) = layer_forward(layer, &hp, &hr, &layout)?;
                }
                (hp, hr)
            }
        };
        let last: Vec<i64> = batch.prompts.iter().map(|p| p.len() as i64 - 1).collect();
        let last = Tensor::from_slice(&last).f_to_device(device)?;
        let d = hp.size()[2];
        let prompt_last = hp
            .f_gather(
                1,
                &last
                    .f_view([g as i64, 1, 1])?
                    .f_expand([g as i64, 1, d], false)?,
                false,
            )?
            .f_squeeze_dim(1)?;
        Ok(SharedPromptHidden {
            prompt_last: self.model.norm.forward(&prompt_last)?,
            responses: self.model.norm.forward(&hr)?,
        })
    }
}

/// Weights of one layer on the device its input is on (a streamed model's layer visits it).
struct OnDevice {
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    linears: [Linear; 7],
}

impl OnDevice {
    fn of(layer: &DecoderLayer, device: Device) -> Result<Self, ModelError> {
        let (a, m) = (&layer.self_attn, &layer.mlp);
        Ok(OnDevice {
            input_layernorm: layer.input_layernorm.to_device(device)?,
            post_attention_layernorm: layer.post_attention_layernorm.to_device(device)?,
            linears: [
                a.q_proj.to_device(device)?,
                a.k_proj.to_device(device)?,
                a.v_proj.to_device(device)?,
                a.o_proj.to_device(device)?,
                m.gate_proj.to_device(device)?,
                m.up_proj.to_device(device)?,
                m.down_proj.to_device(device)?,
            ],
        })
    }
}

/// One decoder layer over the prompts `hp` and the responses `hr` (module docs).
fn layer_forward(
    layer: &DecoderLayer,
    hp: &Tensor,
    hr: &Tensor,
    lay: &Layout,
) -> Result<(Tensor, Tensor), ModelError> {
    let visiting = if layer.input_layernorm.weight.device() != hp.device() {
        Some(OnDevice::of(layer, hp.device())?)
    } else {
        None
    };
    let (a, m) = (&layer.self_attn, &layer.mlp);
    let (norm1, norm2, [q, k, v, o, gate, up, down]) = match &visiting {
        Some(d) => (
            &d.input_layernorm,
            &d.post_attention_layernorm,
            [
                &d.linears[0],
                &d.linears[1],
                &d.linears[2],
                &d.linears[3],
                &d.linears[4],
                &d.linears[5],
                &d.linears[6],
            ],
        ),
        None => (
            &layer.input_layernorm,
            &layer.post_attention_layernorm,
            [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ],
        ),
    };
    let heads = |t: Tensor, h: i64| -> Result<Tensor, ModelError> {
        let (b, l) = (t.size()[0], t.size()[1]);
        Ok(t.f_view([b, l, h, lay.head_dim])?.f_transpose(1, 2)?)
    };
    let merge = |t: &Tensor| -> Result<Tensor, ModelError> {
        let (b, l) = (t.size()[0], t.size()[2]);
        o.forward(
            &t.f_transpose(1, 2)?
                .f_reshape([b, l, lay.heads * lay.head_dim])?,
        )
    };
    let gqa = lay.heads != lay.kv_heads;
    let (xp, xr) = (norm1.forward(hp)?, norm1.forward(hr)?);
    let rotate = |x: &Tensor,
                  proj: &Linear,
                  h: i64,
                  cos: &Tensor,
                  sin: &Tensor|
     -> Result<Tensor, ModelError> {
        apply_rotary(
            &heads(proj.forward(x)?, h)?,
            &cos.f_unsqueeze(1)?,
            &sin.f_unsqueeze(1)?,
        )
    };
    // the prompts: causal among themselves
    let qp = rotate(&xp, q, lay.heads, &lay.prompt_cos, &lay.prompt_sin)?;
    let kp = rotate(&xp, k, lay.kv_heads, &lay.prompt_cos, &lay.prompt_sin)?;
    let vp = heads(v.forward(&xp)?, lay.kv_heads)?;
    let ap = Tensor::f_scaled_dot_product_attention(
        &qp,
        &kp,
        &vp,
        None::<&Tensor>,
        0.0,
        true,
        None,
        gqa,
    )?;
    // the responses: their prompt's keys and values, then their own
    let qr = rotate(&xr, q, lay.heads, &lay.response_cos, &lay.response_sin)?;
    let kr = rotate(&xr, k, lay.kv_heads, &lay.response_cos, &lay.response_sin)?;
    let vr = heads(v.forward(&xr)?, lay.kv_heads)?;
    let keys = Tensor::f_cat(&[kp.f_index_select(0, &lay.prompt_of_row)?, kr], 2)?;
    let values = Tensor::f_cat(&[vp.f_index_select(0, &lay.prompt_of_row)?, vr], 2)?;
    let ar = Tensor::f_scaled_dot_product_attention(
        &qr,
        &keys,
        &values,
        Some(&lay.response_mask),
        0.0,
        false,
        None,
        gqa,
    )?;
    let mlp = |h: Tensor| -> Result<Tensor, ModelError> {
        let x = norm2.forward(&h)?;
        let y = gate.forward(&x)?.f_silu()?.f_mul(&up.forward(&x)?)?;
        Ok(h.f_add(&down.forward(&y)?)?)
    };
    Ok((mlp(hp.f_add(&merge(&ap)?)?)?, mlp(hr.f_add(&merge(&ar)?)?)?))
}
