//! The Qwen2 text decoder of Qwen2.5-VL (`model.*`): GQA attention with M-RoPE and a KV cache
//! passed in by the caller, SwiGLU MLP, RMSNorm in transformers' cast order.
//!
//! Ported from transformers 5.23 `modeling_qwen2_5_vl.py`: `Qwen2_5_VLTextModel`,
//! `Qwen2_5_VLDecoderLayer`, `Qwen2_5_VLAttention`, `Qwen2MLP`, `Qwen2_5_VLRMSNorm`.

use tch::{Device, Kind, Tensor};

use super::checkpoint::RecomputeTape;
use super::config::TextConfig;
use super::kv_cache::KvCache;
use super::lora::LoraPair;
use super::weight_path::WeightPath;
use super::ModelError;
use crate::model::rope::apply_rotary;

/// `x W^T (+ b)`, plus a LoRA adapter's `scale · (x Aᵀ) Bᵀ` when one is attached
/// ([`super::lora`]).
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// The adapter of this layer, if any (f32, trainable; the base weight stays frozen).
    pub lora: Option<LoraPair>,
}

impl Linear {
    /// Loads `weight [out, in]` (and `bias [out]`) of the node `p`.
    pub fn load(p: &WeightPath<'_>, out: i64, inp: i64, bias: bool) -> Result<Self, ModelError> {
        Ok(Linear {
            weight: p.get("weight", &[out, inp])?,
            bias: if bias {
                Some(p.get("bias", &[out])?)
            } else {
                None
            },
            lora: None,
        })
    }

    /// Applies the layer on the last axis (with its adapter when one is attached).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let y = x.f_linear(&self.weight, self.bias.as_ref())?;
        match &self.lora {
            None => Ok(y),
            Some(lora) => lora.add_to(x, &y),
        }
    }

    /// A copy on `device`.
    pub fn to_device(&self, device: Device) -> Result<Self, ModelError> {
        Ok(Linear {
            weight: self.weight.f_to_device(device)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.f_to_device(device))
                .transpose()?,
            lora: self
                .lora
                .as_ref()
                .map(|l| l.to_device(device))
                .transpose()?,
        })
    }
}

/// RMSNorm: f32 statistics, cast back to the input kind, then times `weight`.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `weight [dim]` of the node `p`.
    pub fn load(p: &WeightPath<'_>, dim: i64, eps: f64) -> Result<Self, ModelError> {
        Ok(RmsNorm {
            weight: p.get("weight", &[dim])?,
            eps,
        })
    }

    /// A copy on `device`.
    pub fn to_device(&self, device: Device) -> Result<Self, ModelError> {
        Ok(RmsNorm {
            weight: self.weight.f_to_device(device)?,
            eps: self.eps,
        })
    }

    /// Normalises the last axis.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let kind = x.kind();
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, Kind::Float)?;
        let normed = xf
            .f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?
            .f_to_kind(kind)?;
        Ok(self.weight.f_mul(&normed)?)
    }
}

/// `Qwen2_5_VLAttention`: q/k/v with bias, o without, GQA through SDPA.
#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

/// `down(silu(gate(x)) * up(x))`, no biases.
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// One decoder layer.
#[derive(Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub mlp: Mlp,
}

/// Embedding, decoder layers and final norm (`model.*`).
#[derive(Debug)]
pub struct Qwen2_5VLTextModel {
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttentionMask,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor, ModelError> {
        let (b, l) = (x.size()[0], x.size()[1]);
        let split = |t: Tensor, heads: i64| -> Result<Tensor, ModelError> {
            Ok(t.f_view([b, l, heads, self.head_dim])?.f_transpose(1, 2)?)
        };
        let q = split(self.q_proj.forward(x)?, self.num_heads)?;
        let k = split(self.k_proj.forward(x)?, self.num_kv_heads)?;
        let v = split(self.v_proj.forward(x)?, self.num_kv_heads)?;
        let (cos, sin) = (cos.f_unsqueeze(1)?, sin.f_unsqueeze(1)?);
        let q = apply_rotary(&q, &cos, &sin)?;
        let k = apply_rotary(&k, &cos, &sin)?;
        let (k, v) = match cache {
            Some((c, layer)) => {
                let (keys, values) = c.append(layer, &k, &v)?;
                // a ragged step over a token-major pool reads each row's own slots directly
                if let Some(out) = c.varlen_decode_attention(layer, &q)? {
                    return self.output(&out, b, l);
                }
                (keys, values)
            }
            None => (k, v),
        };
        let (mask, is_causal) = match mask {
            AttentionMask::Causal => (None, true),
            AttentionMask::Allowed(m) => (Some(m), false),
        };
        let out = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask,
            0.0,
            is_causal,
            None,
            self.num_heads != self.num_kv_heads,
        )?;
        self.output(&out, b, l)
    }

    /// `o_proj` of the attention output `[b, heads, l, hd]`.
    fn output(&self, out: &Tensor, b: i64, l: i64) -> Result<Tensor, ModelError> {
        let out = out
            .f_transpose(1, 2)?
            .f_reshape([b, l, self.num_heads * self.head_dim])?;
        self.o_proj.forward(&out)
    }
}

impl DecoderLayer {
    /// A copy of the layer on `device` when its weights live elsewhere (a host-resident model
    /// computing on a GPU brings one layer at a time), else `None`.
    fn visiting(&self, device: Device) -> Result<Option<Self>, ModelError> {
        if self.input_layernorm.weight.device() == device {
            return Ok(None);
        }
        let (a, m) = (&self.self_attn, &self.mlp);
        Ok(Some(DecoderLayer {
            input_layernorm: self.input_layernorm.to_device(device)?,
            post_attention_layernorm: self.post_attention_layernorm.to_device(device)?,
            self_attn: Attention {
                q_proj: a.q_proj.to_device(device)?,
                k_proj: a.k_proj.to_device(device)?,
                v_proj: a.v_proj.to_device(device)?,
                o_proj: a.o_proj.to_device(device)?,
                ..*a
            },
            mlp: Mlp {
                gate_proj: m.gate_proj.to_device(device)?,
                up_proj: m.up_proj.to_device(device)?,
                down_proj: m.down_proj.to_device(device)?,
            },
        }))
    }

    /// `h + attn(norm(h))`, then `+ mlp(norm(·))`; `cache` holds this layer's slots. A layer
    /// whose weights live on another device than `h` (a streamed model) runs on a copy brought
    /// to `h`'s device for this call ([`DecoderLayer::visiting`]).
    pub fn forward(
        &self,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttentionMask,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor, ModelError> {
        if let Some(here) = self.visiting(h.device())? {
            return here.forward(h, cos, sin, mask, cache);
        }
        let a = self
            .self_attn
            .forward(&self.input_layernorm.forward(h)?, cos, sin, mask, cache)?;
        let h = h.f_add(&a)?;
        let x = self.post_attention_layernorm.forward(&h)?;
        let m = &self.mlp;
        let g = m
            .gate_proj
            .forward(&x)?
            .f_silu()?
            .f_mul(&m.up_proj.forward(&x)?)?;
        Ok(h.f_add(&m.down_proj.forward(&g)?)?)
    }

    /// Loads the layer under `p` (`model.layers.{i}`).
    fn load(t: &TextConfig, p: &WeightPath<'_>) -> Result<Self, ModelError> {
        let (d, eps) = (t.hidden_size, t.rms_norm_eps);
        let kv = t.num_key_value_heads * t.head_dim();
        let attn = p.pp("self_attn");
        let mlp = p.pp("mlp");
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::load(&p.pp("input_layernorm"), d, eps)?,
            post_attention_layernorm: RmsNorm::load(&p.pp("post_attention_layernorm"), d, eps)?,
            self_attn: Attention {
                q_proj: Linear::load(&attn.pp("q_proj"), d, d, true)?,
                k_proj: Linear::load(&attn.pp("k_proj"), kv, d, true)?,
                v_proj: Linear::load(&attn.pp("v_proj"), kv, d, true)?,
                o_proj: Linear::load(&attn.pp("o_proj"), d, d, false)?,
                num_heads: t.num_attention_heads,
                num_kv_heads: t.num_key_value_heads,
                head_dim: t.head_dim(),
            },
            mlp: Mlp {
                gate_proj: Linear::load(&mlp.pp("gate_proj"), t.intermediate_size, d, false)?,
                up_proj: Linear::load(&mlp.pp("up_proj"), t.intermediate_size, d, false)?,
                down_proj: Linear::load(&mlp.pp("down_proj"), d, t.intermediate_size, false)?,
            },
        })
    }
}

impl Qwen2_5VLTextModel {
    /// Builds the decoder from the weights under `p` (`model`).
    pub fn new(t: &TextConfig, p: &WeightPath<'_>) -> Result<Self, ModelError> {
        let embed_tokens = p
            .pp("embed_tokens")
            .get("weight", &[t.vocab_size, t.hidden_size])?;
        let layers = (0..t.num_hidden_layers)
            .map(|i| DecoderLayer::load(t, &p.pp("layers").pp(i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Qwen2_5VLTextModel {
            embed_tokens,
            layers,
            norm: RmsNorm::load(&p.pp("norm"), t.hidden_size, t.rms_norm_eps)?,
        })
    }

    /// Runs the decoder over `inputs_embeds [B, L, D]` with rotary `cos`/`sin` `[B, L, hd]` and an
    /// attention mask over `S` = cached + new slots; returns the final-norm
    /// hidden states `[B, L, D]`. With a cache, new keys/values are written at its end and its
    /// length advances by L.
    pub fn forward(
        &self,
        inputs_embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttentionMask,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor, ModelError> {
        let mut h = inputs_embeds.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, cos, sin, mask, cache.as_deref_mut().map(|c| (c, i)))?;
        }
        if let Some(c) = cache {
            c.finish_forward(inputs_embeds.size()[1]);
        }
        self.norm.forward(&h)
    }

    /// [`Qwen2_5VLTextModel::forward`] without a cache, with the decoder layers checkpointed on
    /// `tape` ([`RecomputeTape`]): only each layer's input is kept, the layer is recomputed in
    /// the backward.
    pub fn forward_checkpointed<'m>(
        &'m self,
        inputs_embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttentionMask,
        tape: &mut RecomputeTape<'m>,
    ) -> Result<Tensor, ModelError> {
        let (cos, sin, mask) = (
            cos.shallow_clone(),
            sin.shallow_clone(),
            mask.shallow_clone(),
        );
        let h = tape.run(inputs_embeds, self.layers.len(), move |i, x| {
            self.layers[i].forward(x, &cos, &sin, &mask, None)
        })?;
        self.norm.forward(&h)
    }
}

/// Which keys each query of a forward sees.
#[derive(Debug)]
pub enum AttentionMask {
    /// Plain causal attention over the new tokens only (no cache before them, no padding):
    /// SDPA's `is_causal`, which reaches the fused kernels.
    Causal,
    /// Boolean `[B, 1, L, S]`, true where a query may see a key ([`causal_padding_mask`]).
    Allowed(Tensor),
}

impl AttentionMask {
    /// The mask for `new` tokens after `past` cached slots, from the 0/1 padding mask `[B, S]`:
    /// [`AttentionMask::Causal`] when nothing is cached and every row is right-padded (its real
    /// tokens first; one check on the host), else [`causal_padding_mask`]. Causal attention is
    /// exact for the real tokens of a right-padded row, which never see the padding after them;
    /// the padding positions' outputs are not used.
    pub fn for_forward(attention_mask: &Tensor, past: i64, new: i64) -> Result<Self, ModelError> {
        if past == 0 && is_right_padded(attention_mask)? {
            return Ok(AttentionMask::Causal);
        }
        Ok(AttentionMask::Allowed(causal_padding_mask(
            attention_mask,
            past,
            new,
        )?))
    }
}

impl AttentionMask {
    /// Another handle on the same mask.
    pub fn shallow_clone(&self) -> Self {
        match self {
            AttentionMask::Causal => AttentionMask::Causal,
            AttentionMask::Allowed(m) => AttentionMask::Allowed(m.shallow_clone()),
        }
    }
}

/// Whether every row of the 0/1 mask `[B, S]` is a run of ones followed by zeros.
fn is_right_padded(attention_mask: &Tensor) -> Result<bool, ModelError> {
    let s = attention_mask.size()[1];
    if s < 2 {
        return Ok(true);
    }
    let valid = attention_mask.f_ne(0)?;
    let later = valid.f_narrow(1, 1, s - 1)?;
    let earlier = valid.f_narrow(1, 0, s - 1)?;
    // a real token never follows a padding one
    Ok(bool::try_from(
        later
            .f_logical_and(&earlier.f_logical_not()?)?
            .f_any()?
            .f_logical_not()?,
    )?)
}

/// Boolean mask `[B, 1, L, S]` for `L` new tokens after `past` cached slots, from the 0/1 padding
/// mask `[B, S]` over all slots: key `s` is visible to query `q` when it is a real token and
/// `s <= past + q`. A query that sees no key at all (a padding position) sees itself instead,
/// so no row becomes fully masked (those outputs are ignored); a query that sees some key never
/// sees more than the padding mask opens (a ragged decode row's own slot need not be the last).
pub fn causal_padding_mask(
    attention_mask: &Tensor,
    past: i64,
    new: i64,
) -> Result<Tensor, ModelError> {
    let device = attention_mask.device();
    let s = attention_mask.size()[1];
    let keys = Tensor::f_arange(s, (Kind::Int64, device))?.f_view([1, 1, s])?;
    let queries =
        Tensor::f_arange_start(past, past + new, (Kind::Int64, device))?.f_view([1, new, 1])?;
    let causal = keys.f_le_tensor(&queries)?;
    let valid = attention_mask.f_ne(0)?.f_unsqueeze(1)?;
    let allowed = causal.f_logical_and(&valid)?;
    let blind = allowed.f_any_dim(-1, true)?.f_logical_not()?;
    let allowed = allowed.f_logical_or(&keys.f_eq_tensor(&queries)?.f_logical_and(&blind)?)?;
    Ok(allowed.f_unsqueeze(1)?)
}
