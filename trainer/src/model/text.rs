//! The Qwen2 text decoder of Qwen2.5-VL (`model.*`): GQA attention with M-RoPE and a KV cache
//! passed in by the caller, SwiGLU MLP, RMSNorm in transformers' cast order.
//!
//! Ported from transformers 5.23 `modeling_qwen2_5_vl.py`: `Qwen2_5_VLTextModel`,
//! `Qwen2_5_VLDecoderLayer`, `Qwen2_5_VLAttention`, `Qwen2MLP`, `Qwen2_5_VLRMSNorm`.

use tch::{Device, Kind, Tensor};

use super::config::{Qwen2_5VLConfig, TextConfig};
use super::weight_path::WeightPath;
use super::ModelError;
use crate::model::rope::apply_rotary;

/// `x W^T (+ b)`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
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
        })
    }

    /// Applies the layer on the last axis.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
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

/// Preallocated per-layer keys (post-rotary) and values, `[B, kv_heads, capacity, head_dim]`.
///
/// Slot `j` of every row is the `j`-th token fed for that row (padding included); `len` slots are
/// filled. The caller owns it and passes it to each forward, so one set of weights serves many
/// concurrent rollouts.
///
/// Two ways to write: in lock-step (the default), every forward writes its `q` new tokens at slots
/// `len..len + q` of every row; after [`KvCache::set_row_positions`], a one-token forward over the
/// first `R` rows writes row `r`'s token at its own slot instead (rows of a KV pool that hold
/// sequences of different lengths), and attends over slots `0..=len`.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
    batch: i64,
    /// Per-row write slot `[R]` (int64, on the cache's device) for the next one-token forward.
    row_positions: Option<Tensor>,
}

impl KvCache {
    /// Allocates a cache for `batch` rows of up to `capacity` tokens.
    pub fn new(
        cfg: &Qwen2_5VLConfig,
        batch: i64,
        capacity: i64,
        device: Device,
        kind: Kind,
    ) -> Result<Self, ModelError> {
        let t = &cfg.text;
        let shape = [batch, t.num_key_value_heads, capacity, t.head_dim()];
        let mut keys = Vec::with_capacity(t.num_hidden_layers as usize);
        let mut values = Vec::with_capacity(t.num_hidden_layers as usize);
        for _ in 0..t.num_hidden_layers {
            keys.push(Tensor::f_zeros(shape, (kind, device))?);
            values.push(Tensor::f_zeros(shape, (kind, device))?);
        }
        Ok(KvCache {
            keys,
            values,
            len: 0,
            capacity,
            batch,
            row_positions: None,
        })
    }

    /// Bytes held by the keys and values of every layer.
    pub fn bytes(&self) -> u64 {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum()
    }

    /// Bytes a cache of `batch` rows x `capacity` slots of `kind` takes for `cfg`.
    pub fn bytes_for(cfg: &Qwen2_5VLConfig, batch: i64, capacity: i64, kind: Kind) -> u64 {
        let t = &cfg.text;
        (2 * t.num_hidden_layers * batch * t.num_key_value_heads * capacity * t.head_dim()) as u64
            * kind.elt_size_in_bytes() as u64
    }

    /// Makes the next forward a ragged one-token step over the first `positions.len()` rows:
    /// row `r` writes its token at slot `positions[r]` and the forward attends over slots
    /// `0..=max(positions)` (the attention mask `[R, max + 1]` must open only each row's own
    /// slots). Cleared by that forward.
    pub fn set_row_positions(&mut self, positions: &[i64]) -> Result<(), ModelError> {
        let rows = positions.len() as i64;
        let top = positions.iter().copied().max().unwrap_or(0);
        if rows == 0
            || rows > self.batch
            || top >= self.capacity
            || positions.iter().any(|&p| p < 0)
        {
            return Err(ModelError::Input(format!(
                "row positions {positions:?} do not fit a cache of {} rows x {} slots",
                self.batch, self.capacity
            )));
        }
        let device = self.keys.first().map_or(Device::Cpu, Tensor::device);
        self.row_positions = Some(Tensor::f_from_slice(positions)?.f_to_device(device)?);
        self.len = top;
        Ok(())
    }

    /// Filled slots per row.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated slots per row.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Rows.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// Copies `src` (with `src.batch * n == self.batch`) into this cache, each source row repeated
    /// `n` times consecutively: n samples per prompt sharing one prefill.
    pub fn fill_repeated(&mut self, src: &KvCache, n: i64) -> Result<(), ModelError> {
        if src.batch * n != self.batch
            || src.len > self.capacity
            || src.keys.len() != self.keys.len()
        {
            return Err(ModelError::Input(format!(
                "cannot expand a cache of {} rows x {} slots by {n} into {} rows x {} slots",
                src.batch, src.len, self.batch, self.capacity
            )));
        }
        let _guard = tch::no_grad_guard();
        for (dst, s) in self.pairs_with(src) {
            let rep = s
                .f_narrow(2, 0, src.len)?
                .f_repeat_interleave_self_int(n, 0, None)?;
            dst.f_narrow(2, 0, src.len)?.f_copy_(&rep)?;
        }
        self.len = src.len;
        Ok(())
    }

    /// Every key and value tensor of this cache with the same layer's tensor of `src`.
    fn pairs_with<'a>(
        &'a mut self,
        src: &'a KvCache,
    ) -> impl Iterator<Item = (&'a mut Tensor, &'a Tensor)> {
        self.keys
            .iter_mut()
            .zip(&src.keys)
            .chain(self.values.iter_mut().zip(&src.values))
    }

    /// Sets the number of filled slots (slots up to it that were never written hold stale values;
    /// the attention mask must keep them closed).
    pub fn set_len(&mut self, len: i64) -> Result<(), ModelError> {
        if len > self.capacity || len < 0 {
            return Err(ModelError::CacheFull {
                capacity: self.capacity,
                needed: len,
            });
        }
        self.len = len;
        Ok(())
    }

    /// Copies the filled slots of the one-row cache `src` into row `row` at slots
    /// `start..start + src.len()`.
    pub fn write_row(&mut self, row: i64, start: i64, src: &KvCache) -> Result<(), ModelError> {
        if src.batch != 1 || start + src.len > self.capacity || row >= self.batch {
            return Err(ModelError::Input(format!(
                "cannot place {} rows x {} slots at row {row}, slot {start} of {} x {}",
                src.batch, src.len, self.batch, self.capacity
            )));
        }
        let _guard = tch::no_grad_guard();
        for (dst, s) in self.pairs_with(src) {
            dst.f_narrow(0, row, 1)?
                .f_narrow(2, start, src.len)?
                .f_copy_(&s.f_narrow(2, 0, src.len)?)?;
        }
        Ok(())
    }

    /// Drops the first `n` slots of every row, moving the rest to the front.
    pub fn shift_left(&mut self, n: i64) -> Result<(), ModelError> {
        let n = n.clamp(0, self.len);
        if n == 0 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let keep = self.len - n;
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let src = t.f_narrow(2, n, keep)?;
            let mut moved = src.f_empty_like()?;
            moved.f_copy_(&src)?;
            t.f_narrow(2, 0, keep)?.f_copy_(&moved)?;
        }
        self.len = keep;
        Ok(())
    }

    /// Writes `k`, `v` `[B, kvh, q, hd]` of `layer` at slots `len..len+q` and returns the filled
    /// prefix `[B, kvh, len+q, hd]`.
    fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor), ModelError> {
        if let Some(positions) = &self.row_positions {
            return self.append_ragged(layer, positions.shallow_clone(), k, v);
        }
        let q = k.size()[2];
        if self.len + q > self.capacity {
            return Err(ModelError::CacheFull {
                capacity: self.capacity,
                needed: self.len + q,
            });
        }
        self.keys[layer].f_narrow(2, self.len, q)?.f_copy_(k)?;
        self.values[layer].f_narrow(2, self.len, q)?.f_copy_(v)?;
        Ok((
            self.keys[layer].f_narrow(2, 0, self.len + q)?,
            self.values[layer].f_narrow(2, 0, self.len + q)?,
        ))
    }
}

impl KvCache {
    /// The ragged write of [`KvCache::set_row_positions`]: `k`, `v` `[R, kvh, 1, hd]` go to slot
    /// `positions[r]` of row `r`; returns slots `0..=len` of the first `R` rows.
    fn append_ragged(
        &mut self,
        layer: usize,
        positions: Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let [rows, heads, q, dim] = k.size()[..] else {
            return Err(ModelError::Input(format!("keys of shape {:?}", k.size())));
        };
        if q != 1 || rows != positions.size()[0] {
            return Err(ModelError::Input(format!(
                "a ragged step takes one token for each of {} rows, got {rows} x {q}",
                positions.size()[0]
            )));
        }
        let index = positions
            .f_view([rows, 1, 1, 1])?
            .f_expand([rows, heads, 1, dim], false)?;
        let mut out = Vec::with_capacity(2);
        for (cache, new) in [(&mut self.keys[layer], k), (&mut self.values[layer], v)] {
            let written = cache.f_narrow(0, 0, rows)?.f_scatter_(2, &index, new)?;
            out.push(written.f_narrow(2, 0, self.len + 1)?);
        }
        let v = out.pop().expect("two tensors");
        Ok((out.pop().expect("two tensors"), v))
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
            Some((c, layer)) => c.append(layer, &k, &v)?,
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
        let out = out
            .f_transpose(1, 2)?
            .f_reshape([b, l, self.num_heads * self.head_dim])?;
        self.o_proj.forward(&out)
    }
}

impl DecoderLayer {
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
            let r = h.shallow_clone();
            let a = layer.self_attn.forward(
                &layer.input_layernorm.forward(&h)?,
                cos,
                sin,
                mask,
                cache.as_deref_mut().map(|c| (c, i)),
            )?;
            h = r.f_add(&a)?;
            let r = h.shallow_clone();
            let x = layer.post_attention_layernorm.forward(&h)?;
            let m = &layer.mlp;
            let g = m
                .gate_proj
                .forward(&x)?
                .f_silu()?
                .f_mul(&m.up_proj.forward(&x)?)?;
            h = r.f_add(&m.down_proj.forward(&g)?)?;
        }
        if let Some(c) = cache {
            c.len += inputs_embeds.size()[1];
            c.row_positions = None;
        }
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
    /// [`AttentionMask::Causal`] when nothing is cached and nothing is padded (one check on the
    /// host), else [`causal_padding_mask`].
    pub fn for_forward(attention_mask: &Tensor, past: i64, new: i64) -> Result<Self, ModelError> {
        if past == 0 && bool::try_from(attention_mask.f_ne(0)?.f_all()?)? {
            return Ok(AttentionMask::Causal);
        }
        Ok(AttentionMask::Allowed(causal_padding_mask(
            attention_mask,
            past,
            new,
        )?))
    }
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
