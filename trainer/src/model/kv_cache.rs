//! The KV cache a caller passes to the decoder: per layer, the post-rotary keys and the values of
//! every slot of every row, in one of two layouts.
//!
//! [`KvLayout::HeadMajor`] is what `scaled_dot_product_attention` reads directly; it serves the
//! CPU, prefills, and CUDA when the fused decode is off. [`KvLayout::TokenMajor`] stores a row's
//! slots one after another, so the whole pool of a layer is flash-attention's variable-length key
//! layout `[rows · slots, kv_heads, head_dim]` without a copy: a ragged decode step over the
//! pool is then one varlen flash call ([`KvCache::varlen_decode_attention`]) in which row `r`'s
//! keys start at `r · slots` and only its first `seqused_k[r]` are read — no `[R, 1, 1, S]` mask,
//! so attention leaves the masked math kernel (which repeats K/V over the query heads) for the
//! kernel that reads the grouped heads in place. Both layouts hold the same numbers; every
//! method works on the head-major view, so the two differ only in where the fused path applies.
//! See `docs/architecture.md` ("Generation engine").

use tch::{Device, Kind, Tensor};

use super::config::Qwen2_5VLConfig;
use super::ModelError;

/// How a [`KvCache`] stores a layer's keys (and values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvLayout {
    /// `[B, kv_heads, capacity, head_dim]`.
    #[default]
    HeadMajor,
    /// `[B, capacity, kv_heads, head_dim]`: flash-attention's token-major layout.
    TokenMajor,
}

impl KvLayout {
    /// True where a ragged decode step can run flash-attention's varlen kernel over a token-major
    /// pool: CUDA, half precision (the kernel has no f32 variant), and a head dimension it
    /// compiles for (a multiple of 8, at most 256).
    pub fn fused_decode_supported(device: Device, kind: Kind, head_dim: i64) -> bool {
        device.is_cuda()
            && matches!(kind, Kind::BFloat16 | Kind::Half)
            && head_dim % 8 == 0
            && head_dim <= 256
    }

    /// The layout for a decoding pool: token-major where the fused decode applies, head-major
    /// elsewhere.
    pub fn for_pool(device: Device, kind: Kind, head_dim: i64) -> Self {
        if Self::fused_decode_supported(device, kind, head_dim) {
            KvLayout::TokenMajor
        } else {
            KvLayout::HeadMajor
        }
    }
}

/// Preallocated per-layer keys (post-rotary) and values.
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
    layout: KvLayout,
    len: i64,
    capacity: i64,
    batch: i64,
    /// Per-row write slot `[R]` (int64, on the cache's device) for the next one-token forward.
    row_positions: Option<Tensor>,
    /// The varlen arguments of the next ragged step (token-major caches only).
    varlen: Option<VarlenDecode>,
}

/// Flash-attention varlen arguments of one ragged decode step over `R` rows of a token-major
/// pool: one query per row, row `r`'s keys at `cu_seq_k[r]` (= `r · capacity`), of which the
/// first `seqused_k[r]` (= its write slot + 1) are read.
#[derive(Debug)]
struct VarlenDecode {
    /// `[R + 1]` int32: `0, 1, …, R`.
    cu_seq_q: Tensor,
    /// `[R + 1]` int32: `0, capacity, …, R · capacity`.
    cu_seq_k: Tensor,
    /// `[R]` int32: keys read per row.
    seqused_k: Tensor,
    /// Rows.
    rows: i64,
    /// The most keys a row reads (the kernel's `max_k`).
    max_k: i64,
}

impl KvCache {
    /// Allocates a head-major cache for `batch` rows of up to `capacity` tokens.
    pub fn new(
        cfg: &Qwen2_5VLConfig,
        batch: i64,
        capacity: i64,
        device: Device,
        kind: Kind,
    ) -> Result<Self, ModelError> {
        Self::with_layout(cfg, batch, capacity, device, kind, KvLayout::HeadMajor)
    }

    /// Allocates a cache in `layout`.
    pub fn with_layout(
        cfg: &Qwen2_5VLConfig,
        batch: i64,
        capacity: i64,
        device: Device,
        kind: Kind,
        layout: KvLayout,
    ) -> Result<Self, ModelError> {
        let t = &cfg.text;
        let (heads, dim) = (t.num_key_value_heads, t.head_dim());
        let shape = match layout {
            KvLayout::HeadMajor => [batch, heads, capacity, dim],
            KvLayout::TokenMajor => [batch, capacity, heads, dim],
        };
        let mut keys = Vec::with_capacity(t.num_hidden_layers as usize);
        let mut values = Vec::with_capacity(t.num_hidden_layers as usize);
        for _ in 0..t.num_hidden_layers {
            keys.push(Tensor::f_zeros(shape, (kind, device))?);
            values.push(Tensor::f_zeros(shape, (kind, device))?);
        }
        Ok(KvCache {
            keys,
            values,
            layout,
            len: 0,
            capacity,
            batch,
            row_positions: None,
            varlen: None,
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

    /// The storage layout.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Makes the next forward a ragged one-token step over the first `positions.len()` rows:
    /// row `r` holds its sequence in slots `0..positions[r]`, writes its token at slot
    /// `positions[r]`, and attends over slots `0..=positions[r]`. The forward attends over
    /// slots `0..=max(positions)` with an attention mask `[R, 1, 1, max + 1]` that must open
    /// exactly those slots ([`KvCache::ragged_mask`]) — or, where [`KvCache::fused_decode`]
    /// holds, reads each row's slots directly and ignores the mask. Cleared by that forward.
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
        let device = self.device();
        self.row_positions = Some(Tensor::f_from_slice(positions)?.f_to_device(device)?);
        self.varlen = match self.layout {
            KvLayout::TokenMajor => Some(VarlenDecode::new(positions, self.capacity, device)?),
            KvLayout::HeadMajor => None,
        };
        self.len = top;
        Ok(())
    }

    /// True when ragged steps over this cache run flash-attention's varlen kernel: a
    /// token-major cache on CUDA.
    pub fn fused_decode(&self) -> bool {
        self.layout == KvLayout::TokenMajor && self.device().is_cuda()
    }

    /// The attention mask of the pending ragged step ([`KvCache::set_row_positions`]),
    /// boolean `[R, 1, 1, len + 1]`: row `r` sees slots `0..=positions[r]`.
    pub fn ragged_mask(&self) -> Result<Tensor, ModelError> {
        let Some(positions) = &self.row_positions else {
            return Err(ModelError::Input("no ragged step is pending".into()));
        };
        let (rows, width) = (positions.size()[0], self.len + 1);
        Ok(Tensor::f_arange(width, (Kind::Int64, self.device()))?
            .f_view([1, width])?
            .f_le_tensor(&positions.f_view([rows, 1])?)?
            .f_view([rows, 1, 1, width])?)
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

    fn device(&self) -> Device {
        self.keys.first().map_or(Device::Cpu, Tensor::device)
    }

    /// `t` (a layer's keys or values) as `[B, kv_heads, capacity, head_dim]`, a view.
    fn head_major(&self, t: &Tensor) -> Result<Tensor, ModelError> {
        Ok(match self.layout {
            KvLayout::HeadMajor => t.shallow_clone(),
            KvLayout::TokenMajor => t.f_transpose(1, 2)?,
        })
    }

    /// Head-major views of every layer's keys and values, keys first.
    fn views(&self) -> Result<Vec<Tensor>, ModelError> {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|t| self.head_major(t))
            .collect()
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
        for (dst, s) in self.views()?.iter().zip(src.views()?) {
            let rep = s
                .f_narrow(2, 0, src.len)?
                .f_repeat_interleave_self_int(n, 0, None)?;
            dst.f_narrow(2, 0, src.len)?.f_copy_(&rep)?;
        }
        self.len = src.len;
        Ok(())
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
        for (dst, s) in self.views()?.iter().zip(src.views()?) {
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
        for t in self.views()? {
            let src = t.f_narrow(2, n, keep)?;
            let mut moved = src.f_empty_like()?;
            moved.f_copy_(&src)?;
            t.f_narrow(2, 0, keep)?.f_copy_(&moved)?;
        }
        self.len = keep;
        Ok(())
    }

    /// Writes `k`, `v` `[B, kvh, q, hd]` of `layer` at slots `len..len+q` (or, in a ragged step,
    /// at each row's own slot) and returns the head-major filled prefix `[B, kvh, len+q, hd]`.
    pub(super) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let (keys, values) = (
            self.head_major(&self.keys[layer])?,
            self.head_major(&self.values[layer])?,
        );
        if let Some(positions) = &self.row_positions {
            return append_ragged(positions, self.len, [keys, values], [k, v]);
        }
        let q = k.size()[2];
        if self.len + q > self.capacity {
            return Err(ModelError::CacheFull {
                capacity: self.capacity,
                needed: self.len + q,
            });
        }
        keys.f_narrow(2, self.len, q)?.f_copy_(k)?;
        values.f_narrow(2, self.len, q)?.f_copy_(v)?;
        Ok((
            keys.f_narrow(2, 0, self.len + q)?,
            values.f_narrow(2, 0, self.len + q)?,
        ))
    }

    /// Advances the cache after a forward of `new` tokens (a ragged step's row positions and
    /// varlen arguments are spent).
    pub(super) fn finish_forward(&mut self, new: i64) {
        self.len += new;
        self.row_positions = None;
        self.varlen = None;
    }

    /// Attention of a ragged step's queries `q [R, heads, 1, hd]` over each row's own slots of
    /// `layer` (written by [`KvCache::append`] first), `[R, heads, 1, hd]`. On CUDA this is
    /// flash-attention's varlen kernel reading the token-major pool in place; elsewhere the same
    /// arguments go through [`varlen_reference`], the kernel's documented semantics in plain
    /// tensor ops, so the path is testable on the CPU. `None` for a head-major cache or outside
    /// a ragged step.
    pub(super) fn varlen_decode_attention(
        &self,
        layer: usize,
        q: &Tensor,
    ) -> Result<Option<Tensor>, ModelError> {
        let Some(args) = &self.varlen else {
            return Ok(None);
        };
        let [rows, heads, one, dim] = q.size()[..] else {
            return Err(ModelError::Input(format!(
                "queries of shape {:?}",
                q.size()
            )));
        };
        if one != 1 || rows != args.rows {
            return Err(ModelError::Input(format!(
                "a ragged step takes one query for each of {} rows, got {rows} x {one}",
                args.rows
            )));
        }
        let flat = |t: &Tensor| -> Result<Tensor, ModelError> {
            let s = t.size();
            Ok(t.f_view([s[0] * s[1], s[2], s[3]])?)
        };
        let (k, v) = (flat(&self.keys[layer])?, flat(&self.values[layer])?);
        // [R, heads, hd]: one query token per row, token-major like the keys
        let q = q.f_reshape([rows, heads, dim])?;
        let out = if self.fused_decode() {
            let out = q.f_empty_like()?;
            // writes `out`; the log-sum-exp it returns is not needed
            let _lse = Tensor::f_internal_flash_attention_forward_no_dropout_inplace(
                &out,
                &q,
                &k,
                &v,
                Some(&args.cu_seq_q),
                Some(&args.cu_seq_k),
                1,
                args.max_k,
                0.0,
                false,
                false,
                None,
                None,
                None,
                Some(&args.seqused_k),
                None::<&Tensor>,
                None::<&Tensor>,
                None,
            )?;
            out
        } else {
            varlen_reference(&q, &k, &v, args)?
        };
        Ok(Some(out.f_view([rows, heads, 1, dim])?))
    }
}

impl VarlenDecode {
    fn new(positions: &[i64], capacity: i64, device: Device) -> Result<Self, ModelError> {
        let rows = positions.len() as i64;
        let int = (Kind::Int, device);
        let used: Vec<i64> = positions.iter().map(|p| p + 1).collect();
        Ok(VarlenDecode {
            cu_seq_q: Tensor::f_arange(rows + 1, int)?,
            cu_seq_k: Tensor::f_arange(rows + 1, int)?.f_mul_scalar(capacity)?,
            seqused_k: Tensor::f_from_slice(&used)?
                .f_to_kind(Kind::Int)?
                .f_to_device(device)?,
            rows,
            max_k: used.iter().copied().max().unwrap_or(1),
        })
    }
}

/// What flash-attention's varlen forward computes from `args` for one query per row, written
/// out: row `r` attends (non-causally, scale `1/√hd`, query head `h` reading key head
/// `h / (heads / kv_heads)`) over the `seqused_k[r]` keys of `k [T, kv_heads, hd]` that start at
/// `cu_seq_k[r]`, its query being `q[cu_seq_q[r]]`. Reads the argument tensors themselves, so a
/// test through it checks what the kernel is given.
fn varlen_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    args: &VarlenDecode,
) -> Result<Tensor, ModelError> {
    let host = |t: &Tensor| -> Result<Vec<i64>, ModelError> {
        Ok(Vec::<i64>::try_from(
            t.f_to_kind(Kind::Int64)?.f_to_device(Device::Cpu)?,
        )?)
    };
    let (cu_q, cu_k, used) = (
        host(&args.cu_seq_q)?,
        host(&args.cu_seq_k)?,
        host(&args.seqused_k)?,
    );
    let gqa = q.size()[1] != k.size()[1];
    let rows = used
        .iter()
        .enumerate()
        .map(|(r, &n)| {
            // [1, heads, n, hd] keys and values, [1, heads, 1, hd] query
            let take = |t: &Tensor| -> Result<Tensor, ModelError> {
                Ok(t.f_narrow(0, cu_k[r], n)?
                    .f_transpose(0, 1)?
                    .f_unsqueeze(0)?)
            };
            let qr = q
                .f_narrow(0, cu_q[r], 1)?
                .f_transpose(0, 1)?
                .f_unsqueeze(0)?;
            let out = Tensor::f_scaled_dot_product_attention(
                &qr,
                &take(k)?,
                &take(v)?,
                None::<&Tensor>,
                0.0,
                false,
                None,
                gqa,
            )?;
            // [1, heads, 1, hd] -> [1, heads, hd]
            Ok(out.f_squeeze_dim(2)?)
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    Ok(Tensor::f_cat(&rows, 0)?)
}

/// The ragged write of [`KvCache::set_row_positions`]: `new` keys and values `[R, kvh, 1, hd]`
/// go to slot `positions[r]` of row `r` of the head-major `caches`; returns slots `0..=len` of
/// the first `R` rows.
fn append_ragged(
    positions: &Tensor,
    len: i64,
    caches: [Tensor; 2],
    new: [&Tensor; 2],
) -> Result<(Tensor, Tensor), ModelError> {
    let [rows, heads, q, dim] = new[0].size()[..] else {
        return Err(ModelError::Input(format!(
            "keys of shape {:?}",
            new[0].size()
        )));
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
    let [keys, values] = caches;
    let written = |cache: Tensor, new: &Tensor| -> Result<Tensor, ModelError> {
        let rows_view = cache.f_narrow(0, 0, rows)?;
        let _ = rows_view.shallow_clone().f_scatter_(2, &index, new)?;
        Ok(rows_view.f_narrow(2, 0, len + 1)?)
    };
    Ok((written(keys, new[0])?, written(values, new[1])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Qwen2_5VLConfig;

    fn config() -> Qwen2_5VLConfig {
        let json = crate::train::tiny::tiny_config_json(&crate::train::tiny::TinyShape::default());
        Qwen2_5VLConfig::from_json_str(&json.to_string()).expect("the tiny config parses")
    }

    /// The two layouts hold the same numbers through every write, and the varlen arguments of
    /// a token-major ragged step, read the way flash-attention reads them, give the masked
    /// head-major attention over each row's own slots.
    #[test]
    fn token_major_ragged_step_equals_masked_head_major() -> Result<(), ModelError> {
        let cfg = config();
        let (rows, cap) = (3, 9);
        let (kvh, hd) = (cfg.text.num_key_value_heads, cfg.text.head_dim());
        let heads = cfg.text.num_attention_heads;
        let opts = (Kind::Float, Device::Cpu);
        tch::manual_seed(11);
        let mut head = KvCache::new(&cfg, rows, cap, Device::Cpu, Kind::Float)?;
        let mut token = KvCache::with_layout(
            &cfg,
            rows,
            cap,
            Device::Cpu,
            Kind::Float,
            KvLayout::TokenMajor,
        )?;
        // lock-step prefill of 5 slots, then a ragged step at different slots per row
        let (k, v) = (
            Tensor::randn([rows, kvh, 5, hd], opts),
            Tensor::randn([rows, kvh, 5, hd], opts),
        );
        for c in [&mut head, &mut token] {
            let _ = c.append(0, &k, &v)?;
            c.finish_forward(5);
        }
        let positions = [5, 2, 7];
        let (k1, v1) = (
            Tensor::randn([rows, kvh, 1, hd], opts),
            Tensor::randn([rows, kvh, 1, hd], opts),
        );
        let q = Tensor::randn([rows, heads, 1, hd], opts);
        head.set_row_positions(&positions)?;
        token.set_row_positions(&positions)?;
        let (hk, hv) = head.append(0, &k1, &v1)?;
        let (tk, tv) = token.append(0, &k1, &v1)?;
        assert_eq!(f64::try_from(hk.f_sub(&tk)?.f_abs()?.f_max()?)?, 0.0);
        assert_eq!(f64::try_from(hv.f_sub(&tv)?.f_abs()?.f_max()?)?, 0.0);
        assert!(head.varlen_decode_attention(0, &q)?.is_none());
        assert!(!token.fused_decode(), "no CUDA here");
        let fused = token
            .varlen_decode_attention(0, &q)?
            .expect("token-major ragged step");
        // the mask the engine builds: row r sees slots 0..=positions[r]
        let width = hk.size()[2];
        let pos = Tensor::from_slice(&positions).view([rows, 1]);
        let mask = Tensor::arange(width, (Kind::Int64, Device::Cpu))
            .view([1, width])
            .le_tensor(&pos)
            .view([rows, 1, 1, width]);
        let masked =
            Tensor::scaled_dot_product_attention(&q, &hk, &hv, Some(&mask), 0.0, false, None, true);
        let diff = f64::try_from(fused.f_sub(&masked)?.f_abs()?.f_max()?)?;
        assert!(diff < 1e-6, "varlen vs masked attention differ by {diff}");
        // and a slot a row does not own stays out: row 1 (reading slots 0..=2) ignores its
        // stale prefill slot 4
        let _ = token.keys[0]
            .f_narrow(0, 1, 1)?
            .f_narrow(1, 4, 1)?
            .f_fill_(100.0)?;
        let again = token.varlen_decode_attention(0, &q)?.expect("still ragged");
        assert_eq!(f64::try_from(again.f_sub(&fused)?.f_abs()?.f_max()?)?, 0.0);
        Ok(())
    }
}
