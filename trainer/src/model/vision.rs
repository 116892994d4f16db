//! The Qwen2.5-VL vision tower (`visual.*`): patch embedding, windowed and full-attention blocks
//! with 2-D rotary embeddings, and the PatchMerger into the text hidden size.
//!
//! Ported from transformers 5.23 `modeling_qwen2_5_vl.py`:
//! `Qwen2_5_VisionTransformerPretrainedModel.forward`, `Qwen2_5_VLVisionBlock`,
//! `Qwen2_5_VLVisionAttention`, `Qwen2_5_VLPatchMerger`, and `vision_utils.get_vision_window_index`.

use tch::{Device, Kind, Tensor};

use super::checkpoint::RecomputeTape;
use super::config::VisionConfig;
use super::rope::{apply_rotary, inverse_frequencies};
use super::text::{Linear, RmsNorm};
use super::weight_path::WeightPath;
use super::ModelError;

/// RMSNorm epsilon used throughout the vision tower.
const VISION_RMS_EPS: f64 = 1e-6;

/// `down(silu(gate(x)) * up(x))` with biases.
#[derive(Debug)]
pub struct VisionMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl VisionMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let gate = self.gate_proj.forward(x)?.f_silu()?;
        self.down_proj
            .forward(&gate.f_mul(&self.up_proj.forward(x)?)?)
    }
}

/// Bidirectional attention inside segments (windows or whole images).
#[derive(Debug)]
pub struct VisionAttention {
    pub qkv: Linear,
    pub proj: Linear,
    num_heads: i64,
    head_dim: i64,
}

/// Segments of rows that attend among themselves (windows or whole images), grouped by length:
/// each group of equal-length segments is one unpadded batch, so attention needs no mask and
/// reaches the fused kernels (no `[segments, heads, len, len]` probabilities on CUDA).
#[derive(Debug)]
pub struct SegmentBatch {
    /// One `(rows to gather [n_seg * len], n_seg, len)` per distinct segment length.
    groups: Vec<(Tensor, i64, i64)>,
    /// `[N]` position of each original row in the concatenated group outputs.
    scatter: Tensor,
}

impl SegmentBatch {
    /// From cumulative boundaries `[0, e1, e2, ...]`.
    pub fn new(cu_seqlens: &[i64], device: Device) -> Result<Self, ModelError> {
        let mut by_len: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
        for w in cu_seqlens.windows(2).filter(|w| w[1] > w[0]) {
            by_len.entry(w[1] - w[0]).or_default().extend(w[0]..w[1]);
        }
        let n = cu_seqlens.last().copied().unwrap_or(0);
        let mut scatter = vec![0i64; n.max(0) as usize];
        let mut groups = Vec::with_capacity(by_len.len());
        let mut slot = 0i64;
        for (len, rows) in by_len {
            for &r in &rows {
                scatter[r as usize] = slot;
                slot += 1;
            }
            let n_seg = rows.len() as i64 / len;
            groups.push((Tensor::from_slice(&rows).f_to_device(device)?, n_seg, len));
        }
        Ok(SegmentBatch {
            groups,
            scatter: Tensor::from_slice(&scatter).f_to_device(device)?,
        })
    }
}

impl VisionAttention {
    fn forward(
        &self,
        x: &Tensor,
        segs: &SegmentBatch,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let n = x.size()[0];
        let kind = x.kind();
        let qkv = self
            .qkv
            .forward(x)?
            .f_reshape([n, 3, self.num_heads, self.head_dim])?;
        // rotary in f32 on upcast q/k (apply_rotary_pos_emb_vision)
        let rot = |t: Tensor| -> Result<Tensor, ModelError> {
            apply_rotary(&t.f_to_kind(Kind::Float)?, cos, sin)?
                .f_to_kind(kind)
                .map_err(Into::into)
        };
        let q = rot(qkv.f_select(1, 0)?)?;
        let k = rot(qkv.f_select(1, 1)?)?;
        let v = qkv.f_select(1, 2)?;
        let mut outs = Vec::with_capacity(segs.groups.len());
        for (rows, n_seg, len) in &segs.groups {
            let batch = |t: &Tensor| -> Result<Tensor, ModelError> {
                Ok(t.f_index_select(0, rows)?
                    .f_view([*n_seg, *len, self.num_heads, self.head_dim])?
                    .f_transpose(1, 2)?)
            };
            let out = Tensor::f_scaled_dot_product_attention(
                &batch(&q)?,
                &batch(&k)?,
                &batch(&v)?,
                None::<&Tensor>,
                0.0,
                false,
                None,
                false,
            )?; // [n_seg, H, len, hd]
            outs.push(
                out.f_transpose(1, 2)?
                    .f_reshape([n_seg * len, self.num_heads * self.head_dim])?,
            );
        }
        let out = Tensor::f_cat(&outs, 0)?.f_index_select(0, &segs.scatter)?;
        self.proj.forward(&out)
    }
}

/// One ViT block: pre-norm attention and pre-norm SwiGLU MLP, both residual.
#[derive(Debug)]
pub struct VisionBlock {
    pub norm1: RmsNorm,
    pub norm2: RmsNorm,
    pub attn: VisionAttention,
    pub mlp: VisionMlp,
}

impl VisionBlock {
    /// A copy of the block on `device` when its weights live elsewhere (see
    /// [`super::text::DecoderLayer::visiting`]), else `None`.
    fn visiting(&self, device: Device) -> Result<Option<Self>, ModelError> {
        if self.norm1.weight.device() == device {
            return Ok(None);
        }
        let (a, m) = (&self.attn, &self.mlp);
        Ok(Some(VisionBlock {
            norm1: self.norm1.to_device(device)?,
            norm2: self.norm2.to_device(device)?,
            attn: VisionAttention {
                qkv: a.qkv.to_device(device)?,
                proj: a.proj.to_device(device)?,
                ..*a
            },
            mlp: VisionMlp {
                gate_proj: m.gate_proj.to_device(device)?,
                up_proj: m.up_proj.to_device(device)?,
                down_proj: m.down_proj.to_device(device)?,
            },
        }))
    }

    /// `x + attn(norm1(x))`, then `+ mlp(norm2(·))`, attention within `segs`; a block whose
    /// weights live elsewhere runs on a copy on `x`'s device ([`VisionBlock::visiting`]).
    fn forward(
        &self,
        x: &Tensor,
        segs: &SegmentBatch,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor, ModelError> {
        if let Some(here) = self.visiting(x.device())? {
            return here.forward(x, segs, cos, sin);
        }
        let a = self.attn.forward(&self.norm1.forward(x)?, segs, cos, sin)?;
        let x = x.f_add(&a)?;
        let m = self.mlp.forward(&self.norm2.forward(&x)?)?;
        Ok(x.f_add(&m)?)
    }

    /// Loads the block under `p` (`visual.blocks.{i}`).
    fn load(cfg: &VisionConfig, p: &WeightPath<'_>) -> Result<Self, ModelError> {
        let (hv, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let (attn, mlp) = (p.pp("attn"), p.pp("mlp"));
        Ok(VisionBlock {
            norm1: RmsNorm::load(&p.pp("norm1"), hv, VISION_RMS_EPS)?,
            norm2: RmsNorm::load(&p.pp("norm2"), hv, VISION_RMS_EPS)?,
            attn: VisionAttention {
                qkv: Linear::load(&attn.pp("qkv"), 3 * hv, hv, true)?,
                proj: Linear::load(&attn.pp("proj"), hv, hv, true)?,
                num_heads: cfg.num_heads,
                head_dim: cfg.head_dim(),
            },
            mlp: VisionMlp {
                gate_proj: Linear::load(&mlp.pp("gate_proj"), inter, hv, true)?,
                up_proj: Linear::load(&mlp.pp("up_proj"), inter, hv, true)?,
                down_proj: Linear::load(&mlp.pp("down_proj"), hv, inter, true)?,
            },
        })
    }
}

/// `ln_q` -> concatenate each 2x2 unit -> Linear -> erf GELU -> Linear.
#[derive(Debug)]
pub struct PatchMerger {
    pub ln_q: RmsNorm,
    pub mlp0: Linear,
    pub mlp2: Linear,
    merged_dim: i64,
}

/// The vision tower, weights under `visual.`.
#[derive(Debug)]
pub struct Qwen2_5VisionTransformer {
    /// Conv3d weight `[hidden, C, T, P, P]` (used as a matmul, kernel = stride).
    pub patch_embed_weight: Tensor,
    pub blocks: Vec<VisionBlock>,
    pub merger: PatchMerger,
    cfg: VisionConfig,
    inv_freq: Tensor,
}

/// Where patch rows go for windowed attention, and the two kinds of segment boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowLayout {
    /// Merged-token indices in window order.
    pub window_index: Vec<i64>,
    /// Patch-row boundaries of the (non-empty) windows, starting at 0.
    pub cu_window_seqlens: Vec<i64>,
    /// Patch-row boundaries of each image (and temporal slice), starting at 0.
    pub cu_seqlens: Vec<i64>,
}

/// Computes the window partition for `grids`: windows of `window_size` pixels
/// (`window_size / spatial_merge_size / patch_size` merged tokens a side, ragged at the right and
/// bottom edges), in the order of transformers' `Qwen2_5_VisionTransformerPretrainedModel.
/// get_window_index` ([`modeling_qwen2_5_vl.py`](https://github.com/huggingface/transformers/blob/efa7189c5546a94e8c1194b2ccc6669e0f7ad65e/src/transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py)).
pub fn window_layout(cfg: &VisionConfig, grids: &[[i64; 3]]) -> WindowLayout {
    let m = cfg.spatial_merge_size;
    let unit = m * m;
    let win = cfg.window_size / m / cfg.patch_size;
    let mut window_index = Vec::new();
    let mut cu_window_seqlens = vec![0i64];
    let mut cu_seqlens = vec![0i64];
    let mut offset = 0i64;
    for &[t, gh, gw] in grids {
        let (lh, lw) = (gh / m, gw / m);
        for ti in 0..t {
            for wy in 0..(lh + win - 1) / win {
                for wx in 0..(lw + win - 1) / win {
                    let mut count = 0;
                    for y in wy * win..((wy + 1) * win).min(lh) {
                        for x in wx * win..((wx + 1) * win).min(lw) {
                            window_index.push(offset + ti * lh * lw + y * lw + x);
                            count += 1;
                        }
                    }
                    if count > 0 {
                        let last = *cu_window_seqlens.last().unwrap_or(&0);
                        cu_window_seqlens.push(last + count * unit);
                    }
                }
            }
            let last = *cu_seqlens.last().unwrap_or(&0);
            cu_seqlens.push(last + gh * gw);
        }
        offset += t * lh * lw;
    }
    WindowLayout {
        window_index,
        cu_window_seqlens,
        cu_seqlens,
    }
}

/// `(h, w)` patch coordinates of every `pixel_values` row, in the processor's row order.
pub fn patch_coordinates(cfg: &VisionConfig, grids: &[[i64; 3]]) -> Vec<[i64; 2]> {
    let m = cfg.spatial_merge_size;
    let mut out = Vec::new();
    for &[t, gh, gw] in grids {
        for _ in 0..t {
            for bh in 0..gh / m {
                for bw in 0..gw / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            out.push([bh * m + mh, bw * m + mw]);
                        }
                    }
                }
            }
        }
    }
    out
}

impl Qwen2_5VisionTransformer {
    /// Builds the tower from the weights under `p` (`visual`).
    pub fn new(cfg: &VisionConfig, p: &WeightPath<'_>, device: Device) -> Result<Self, ModelError> {
        let hv = cfg.hidden_size;
        let patch_embed_weight = p.pp("patch_embed").pp("proj").get(
            "weight",
            &[
                hv,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ],
        )?;
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::load(cfg, &p.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let merged_dim = hv * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let merger = p.pp("merger");
        let merger = PatchMerger {
            ln_q: RmsNorm::load(&merger.pp("ln_q"), hv, VISION_RMS_EPS)?,
            mlp0: Linear::load(&merger.pp("mlp").pp(0), merged_dim, merged_dim, true)?,
            mlp2: Linear::load(
                &merger.pp("mlp").pp(2),
                cfg.out_hidden_size,
                merged_dim,
                true,
            )?,
            merged_dim,
        };
        Ok(Qwen2_5VisionTransformer {
            patch_embed_weight,
            blocks,
            merger,
            cfg: cfg.clone(),
            inv_freq: inverse_frequencies(cfg.rope_theta, cfg.head_dim() / 2, device)?,
        })
    }

    /// The tower computing on `device` with its blocks left where they are (each visits the
    /// device for its turn); the patch embedding, merger and rotary table move.
    pub fn stream_to(self, device: Device) -> Result<Self, ModelError> {
        let m = &self.merger;
        let merger = PatchMerger {
            ln_q: m.ln_q.to_device(device)?,
            mlp0: m.mlp0.to_device(device)?,
            mlp2: m.mlp2.to_device(device)?,
            merged_dim: m.merged_dim,
        };
        Ok(Qwen2_5VisionTransformer {
            patch_embed_weight: self.patch_embed_weight.f_to_device(device)?,
            merger,
            inv_freq: self.inv_freq.f_to_device(device)?,
            ..self
        })
    }

    /// `pixel_values [N, C*T*P*P]` (any float kind) and per-image grids -> merged image features
    /// `[N/4, out_hidden_size]` in image order, raster order within each image. With `tape` the
    /// blocks are checkpointed on it ([`RecomputeTape`]).
    pub fn forward<'m>(
        &'m self,
        pixel_values: &Tensor,
        grids: &[[i64; 3]],
        tape: Option<&mut RecomputeTape<'m>>,
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.cfg;
        let device = self.patch_embed_weight.device();
        let kind = self.patch_embed_weight.kind();
        let n = pixel_values.size()[0];
        let expected: i64 = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        if n != expected || pixel_values.size().get(1) != Some(&cfg.patch_dim()) {
            return Err(ModelError::Input(format!(
                "pixel_values {:?} do not match image_grid_thw {grids:?} ({expected} rows of {})",
                pixel_values.size(),
                cfg.patch_dim()
            )));
        }
        let hv = cfg.hidden_size;
        let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
        let w = self.patch_embed_weight.f_reshape([hv, cfg.patch_dim()])?;
        let x = pixel_values
            .f_to_device(device)?
            .f_to_kind(kind)?
            .f_matmul(&w.f_tr()?)?;

        let layout = window_layout(cfg, grids);
        let win_idx = Tensor::from_slice(&layout.window_index).f_to_device(device)?;
        let permute = |t: &Tensor| -> Result<Tensor, ModelError> {
            let cols = t.size()[1];
            Ok(t.f_reshape([n / unit, unit, cols])?
                .f_index_select(0, &win_idx)?
                .f_reshape([n, cols])?)
        };
        let x = permute(&x)?;

        let coords: Vec<i64> = patch_coordinates(cfg, grids)
            .into_iter()
            .flatten()
            .collect();
        let pos = Tensor::from_slice(&coords)
            .f_view([n, 2])?
            .f_to_device(device)?
            .f_to_kind(Kind::Float)?;
        let freqs = pos
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq)?
            .f_reshape([n, -1])?; // [N, hd/2]: h | w
        let freqs = permute(&freqs)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(1)?; // [N, 1, hd]
        let (cos, sin) = (emb.f_cos()?, emb.f_sin()?);

        let full = SegmentBatch::new(&layout.cu_seqlens, device)?;
        let windows = SegmentBatch::new(&layout.cu_window_seqlens, device)?;
        let block = move |i: usize, x: &Tensor| {
            let segs = if self.cfg.fullatt_block_indexes.contains(&(i as i64)) {
                &full
            } else {
                &windows
            };
            self.blocks[i].forward(x, segs, &cos, &sin)
        };
        let x = match tape {
            Some(tape) => tape.run(&x, self.blocks.len(), block)?,
            None => {
                let mut x = x;
                for i in 0..self.blocks.len() {
                    x = block(i, &x)?;
                }
                x
            }
        };
        let merged = self
            .merger
            .ln_q
            .forward(&x)?
            .f_reshape([n / unit, self.merger.merged_dim])?;
        let merged = self.merger.mlp0.forward(&merged)?.f_gelu("none")?;
        let merged = self.merger.mlp2.forward(&merged)?;
        let reverse = win_idx.f_argsort(0, false)?;
        Ok(merged.f_index_select(0, &reverse)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VisionConfig {
        VisionConfig {
            depth: 32,
            hidden_size: 1280,
            intermediate_size: 3420,
            num_heads: 16,
            in_channels: 3,
            patch_size: 14,
            temporal_patch_size: 2,
            spatial_merge_size: 2,
            window_size: 112,
            fullatt_block_indexes: vec![7, 15, 23, 31],
            tokens_per_second: 2,
            out_hidden_size: 3584,
            rope_theta: 10000.0,
        }
    }

    /// The published 7B vision config on a 448x448 image: grid (1, 32, 32) -> 16 windows of
    /// 4x4 merged tokens (64 patches) each.
    #[test]
    fn window_layout_448() {
        let l = window_layout(&cfg(), &[[1, 32, 32]]);
        let want: Vec<i64> = (0..=16).map(|i| i * 64).collect();
        assert_eq!(l.cu_window_seqlens, want);
        assert_eq!(l.cu_seqlens, vec![0, 1024]);
        // first window: merged rows 0..4 of columns 0..4 of a 16-wide grid
        assert_eq!(&l.window_index[..5], &[0, 1, 2, 3, 16]);
        assert_eq!(l.window_index.len(), 256);
    }

    /// A 6x10 merged grid: windows of 4x4, 4x4, 4x2, 2x4, 2x4, 2x2 merged tokens.
    #[test]
    fn window_layout_ragged() {
        let l = window_layout(&cfg(), &[[1, 12, 20]]);
        let sizes: Vec<i64> = l
            .cu_window_seqlens
            .windows(2)
            .map(|w| (w[1] - w[0]) / 4)
            .collect();
        assert_eq!(sizes, vec![16, 16, 8, 8, 8, 4]);
        assert_eq!(&l.window_index[16..20], &[4, 5, 6, 7]);
    }

    #[test]
    fn patch_coordinates_follow_merge_blocks() {
        let c = patch_coordinates(&cfg(), &[[1, 4, 4]]);
        assert_eq!(&c[..6], &[[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3]]);
    }
}
