//! The device-memory plan: what one device holds in each phase of an RL step — the rollout, the
//! no-grad log-prob passes, the update — item by item, and a refusal that names the largest items
//! and the option changes that would make the plan fit (`spatialthinker plan`, and
//! [`super::Trainer::new`] before it loads anything).
//!
//! Persistent tensors (weights, gradients, optimiser states, the reference) are counted exactly
//! from the model shape. Activations are estimated from per-token working sets: the coefficients
//! [`TEXT_LAYER_SAVED`] to [`OPTIMIZER_STEP_CHUNKS`] are the one place to calibrate against
//! measured peaks. An item alive only at one moment of a phase (a prefill, one layer's recompute,
//! the head's backward) does not add to the others of its kind: a phase counts its largest
//! moment. Allocator headroom is [`HEADROOM_FRACTION`] of the device.

use std::fmt;

use super::config::{OutputVocabMode, TrainConfig, WeightDtype};
use super::{Result, TrainError};
use crate::grpo::optim::{StateDtype, GRADIENTS_KEPT_BETWEEN_UPDATES, STEP_CHUNK_BYTES};
use crate::model::config::Qwen2_5VLConfig;
use crate::model::lm_head::{CPU_LOGITS_CHUNK_BYTES, GPU_LOGITS_CHUNK_BYTES};
use crate::tokenizer::TOKENIZER_VOCAB;

/// Share of device memory kept free for the allocator's fragmentation, the CUDA context and
/// library workspaces.
pub const HEADROOM_FRACTION: f64 = 0.10;
const GIB: f64 = (1u64 << 30) as f64;
const F32_BYTES: f64 = 4.0;
/// Granularity of the token budgets the plan suggests.
const TOKEN_BUDGET_STEP: u64 = 1024;
/// Largest items named in a refusal.
const LARGEST_ITEMS_NAMED: usize = 3;
/// Rounds of the search for a combination of changes that fits.
const COMBINATION_ROUNDS: usize = 6;

/// Live tensors per token (text) or per patch (vision), as numbers of vectors of each width:
/// weight-dtype vectors of the hidden, KV (`kv_heads × head_dim`) and MLP widths, f32 vectors of
/// the hidden width, and f32 scalars per attention head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkingSet {
    /// Weight-dtype vectors of the hidden width.
    pub hidden: f64,
    /// Weight-dtype vectors of the KV width (text only).
    pub kv: f64,
    /// Weight-dtype vectors of the MLP width.
    pub intermediate: f64,
    /// f32 vectors of the hidden width (RMSNorm statistics, f32 rotary).
    pub hidden_f32: f64,
    /// f32 scalars per attention head (the fused attention's log-sum-exp).
    pub heads_f32: f64,
}

impl WorkingSet {
    /// Bytes per token of this set for the widths `w` with `wb`-byte weights.
    fn bytes(&self, w: &Widths, wb: u64) -> f64 {
        wb as f64 * (self.hidden * w.hidden + self.kv * w.kv + self.intermediate * w.intermediate)
            + F32_BYTES * (self.hidden_f32 * w.hidden + self.heads_f32 * w.heads)
    }
}

/// Widths of one stack (the decoder, or the vision tower).
#[derive(Debug, Clone, Copy)]
struct Widths {
    hidden: f64,
    kv: f64,
    intermediate: f64,
    heads: f64,
}

// ---- Working-set coefficients: the constants to calibrate against measured peaks. ----

/// What autograd keeps of one decoder layer per token: both RMSNorms' outputs before and after
/// their weight, the rotated query and the attention output (6); the rotated key and the value
/// (2 KV); gate, silu(gate), up and their product (4 MLP); each norm's f32 input (2 f32); the
/// fused attention's log-sum-exp (1 per head).
pub const TEXT_LAYER_SAVED: WorkingSet = WorkingSet {
    hidden: 6.0,
    kv: 2.0,
    intermediate: 4.0,
    hidden_f32: 2.0,
    heads_f32: 1.0,
};
/// What one decoder layer's backward adds while it runs: the gradients through the MLP (3 MLP),
/// through the residual stream, norms and attention (4 hidden, 2 KV) and the norms' f32
/// gradients (2 f32).
pub const TEXT_LAYER_BACKWARD: WorkingSet = WorkingSet {
    hidden: 4.0,
    kv: 2.0,
    intermediate: 3.0,
    hidden_f32: 2.0,
    heads_f32: 0.0,
};
/// Live tensors of one decoder layer without grad, at its largest moment (the MLP): the layer's
/// input, the residual sum, the norm output and the output (4), silu(gate), up and their product
/// (3 MLP).
pub const TEXT_LAYER_NO_GRAD: WorkingSet = WorkingSet {
    hidden: 4.0,
    kv: 0.0,
    intermediate: 3.0,
    hidden_f32: 0.0,
    heads_f32: 0.0,
};
/// What autograd keeps of one vision block per patch: the norms' outputs (4), the per-segment
/// gathered q, k, v (3), the attention output and its scattered copy (2); gate, silu(gate), up
/// and their product (4 MLP); the norms' f32 inputs (2 f32); the log-sum-exp (1 per head).
pub const VISION_BLOCK_SAVED: WorkingSet = WorkingSet {
    hidden: 9.0,
    kv: 0.0,
    intermediate: 4.0,
    hidden_f32: 2.0,
    heads_f32: 1.0,
};
/// What one vision block's backward adds: gradients through the MLP (3 MLP), through the
/// residual stream, norms and attention (5), the f32 gradients of the norms and of the f32
/// rotary of q and k (4 f32).
pub const VISION_BLOCK_BACKWARD: WorkingSet = WorkingSet {
    hidden: 5.0,
    kv: 0.0,
    intermediate: 3.0,
    hidden_f32: 4.0,
    heads_f32: 0.0,
};
/// Live tensors of one vision block without grad: input, norm output, q, k, v and the attention
/// output (6) with the f32 rotary copies of q and k (2 f32), plus the MLP's three MLP-width
/// tensors (the two moments counted together: an upper bound).
pub const VISION_BLOCK_NO_GRAD: WorkingSet = WorkingSet {
    hidden: 6.0,
    kv: 0.0,
    intermediate: 3.0,
    hidden_f32: 2.0,
    heads_f32: 0.0,
};
/// Per patch, the patch merger's tensors: its norm output, the merged MLP's input, hidden and
/// GELU output (4 vision-width vectors per patch) and its norm's f32 input (1 f32).
pub const MERGER_SAVED: WorkingSet = WorkingSet {
    hidden: 4.0,
    kv: 0.0,
    intermediate: 0.0,
    hidden_f32: 1.0,
    heads_f32: 0.0,
};
/// Per token with grad: the final RMSNorm's outputs (2) and f32 input (1 f32).
pub const FINAL_NORM_SAVED: WorkingSet = WorkingSet {
    hidden: 2.0,
    kv: 0.0,
    intermediate: 0.0,
    hidden_f32: 1.0,
    heads_f32: 0.0,
};
/// Per token: the token embeddings and the input embeddings with the image features merged in
/// (hidden-width vectors in the weight dtype).
pub const EMBEDDING_VECTORS: f64 = 2.0;
/// Per token: the M-RoPE cos and sin tables (f32 vectors of the head width).
pub const ROTARY_F32_VECTORS: f64 = 2.0;
/// Copies of one f32 logits chunk alive in a no-grad pass: the chunk, its shifted exponent in
/// the log-sum-exp, and the weight-dtype product before the f32 conversion (half a chunk in bf16).
pub const LOGITS_CHUNK_COPIES_NO_GRAD: f64 = 2.5;
/// Copies of one f32 logits chunk alive in its backward: the incoming gradient, the softmax, and
/// the weight-dtype gradient fed to the matmul.
pub const LOGITS_CHUNK_COPIES_BACKWARD: f64 = 2.5;
/// Copies of the decode step's f32 logits `[rows, vocabulary]`: the logits and the sampler's
/// temperature-scaled copy.
pub const DECODE_LOGITS_COPIES: f64 = 2.0;
/// f32 chunks ([`STEP_CHUNK_BYTES`]) alive at once in the optimiser step: the gradient, m and v
/// in f32, the update and its operands.
pub const OPTIMIZER_STEP_CHUNKS: f64 = 6.0;

/// Shape numbers of a Qwen2.5-VL checkpoint (from its `config.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelShape {
    /// Text hidden size (3,584 for 7B).
    pub hidden_size: u64,
    /// MLP width of the decoder (18,944 for 7B).
    pub intermediate_size: u64,
    /// Decoder layers (28 for 7B).
    pub num_hidden_layers: u64,
    /// Query heads (28 for 7B).
    pub num_attention_heads: u64,
    /// Key/value heads (4 for 7B).
    pub num_key_value_heads: u64,
    /// Vocabulary (152,064 for 7B).
    pub vocab_size: u64,
    /// Whether `lm_head` shares the embedding (3B: true).
    pub tie_word_embeddings: bool,
    /// Vision tower width (1,280).
    pub vision_hidden_size: u64,
    /// Vision MLP width (3,420).
    pub vision_intermediate_size: u64,
    /// Vision blocks (32).
    pub vision_depth: u64,
    /// Vision attention heads (16).
    pub vision_num_heads: u64,
    /// Output width of the patch merger (= `hidden_size`).
    pub vision_out_hidden_size: u64,
    /// Image channels (3).
    pub in_channels: u64,
    /// Patch side in pixels (14).
    pub patch_size: u64,
    /// Frames per temporal patch (2).
    pub temporal_patch_size: u64,
    /// Patches merged per side into one token (2).
    pub spatial_merge_size: u64,
}

impl ModelShape {
    /// The numbers of a parsed `config.json` (the model's own config type, so both on-disk
    /// schemas are handled in one place).
    pub fn from_config(cfg: &Qwen2_5VLConfig) -> Self {
        let (t, v) = (&cfg.text, &cfg.vision);
        let n = |x: i64| x.max(0) as u64;
        ModelShape {
            hidden_size: n(t.hidden_size),
            intermediate_size: n(t.intermediate_size),
            num_hidden_layers: n(t.num_hidden_layers),
            num_attention_heads: n(t.num_attention_heads),
            num_key_value_heads: n(t.num_key_value_heads),
            vocab_size: n(t.vocab_size),
            tie_word_embeddings: cfg.tie_word_embeddings,
            vision_hidden_size: n(v.hidden_size),
            vision_intermediate_size: n(v.intermediate_size),
            vision_depth: n(v.depth),
            vision_num_heads: n(v.num_heads),
            vision_out_hidden_size: n(v.out_hidden_size),
            in_channels: n(v.in_channels),
            patch_size: n(v.patch_size),
            temporal_patch_size: n(v.temporal_patch_size),
            spatial_merge_size: n(v.spatial_merge_size),
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> u64 {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Width of the keys (and values) of one token: `kv_heads × head_dim`.
    pub fn kv_dim(&self) -> u64 {
        self.num_key_value_heads * self.head_dim()
    }

    /// Parameters of one decoder layer (q/k/v with biases, o, the gated MLP, two norms).
    pub fn decoder_layer_params(&self) -> u64 {
        let (h, kv) = (self.hidden_size, self.kv_dim());
        let attn = (h * h + h) + 2 * (h * kv + kv) + h * h;
        attn + 3 * h * self.intermediate_size + 2 * h
    }

    /// Parameters of the token embedding (and of an untied `lm_head`).
    pub fn embedding_params(&self) -> u64 {
        self.vocab_size * self.hidden_size
    }

    /// Parameters of the language model (embedding, decoder, final norm, `lm_head`).
    pub fn text_params(&self) -> u64 {
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.embedding_params()
        };
        self.embedding_params()
            + self.num_hidden_layers * self.decoder_layer_params()
            + self.hidden_size
            + head
    }

    /// Columns of one flattened patch: `channels × frames × patch × patch`.
    pub fn patch_dim(&self) -> u64 {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Parameters of one vision block (two norms, qkv and proj with biases, the gated MLP with
    /// biases).
    pub fn vision_block_params(&self) -> u64 {
        let (d, i) = (self.vision_hidden_size, self.vision_intermediate_size);
        2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * (d * i + i) + (i * d + d)
    }

    /// Parameters of the patch merger (norm, two linear layers with biases).
    pub fn merger_params(&self) -> u64 {
        let d = self.vision_hidden_size;
        let merged = self.spatial_merge_size * self.spatial_merge_size * d;
        let out = self.vision_out_hidden_size;
        d + (merged * merged + merged) + (merged * out + out)
    }

    /// Parameters of the vision tower (patch embedding, blocks, merger).
    pub fn vision_params(&self) -> u64 {
        self.patch_dim() * self.vision_hidden_size
            + self.vision_depth * self.vision_block_params()
            + self.merger_params()
    }

    /// All parameters.
    pub fn params(&self) -> u64 {
        self.text_params() + self.vision_params()
    }

    /// The largest single tensor (the embedding, `[vocab, hidden]`, in every Qwen2.5-VL).
    pub fn largest_tensor_params(&self) -> u64 {
        let d = self.vision_hidden_size;
        let merged = self.spatial_merge_size * self.spatial_merge_size * d;
        self.embedding_params()
            .max(self.intermediate_size * self.hidden_size)
            .max(merged * merged.max(self.vision_out_hidden_size))
    }

    /// Parameters an offloaded (streamed) reference holds on the device during its pass: the
    /// output head, the final norm, the vision patch embedding and merger stay there, and one
    /// decoder layer or vision block visits at a time (`Qwen2_5VLForConditionalGeneration::
    /// stream_to`); the embedding's rows are gathered in host memory.
    pub fn streamed_reference_params(&self) -> u64 {
        let visiting = self.decoder_layer_params().max(self.vision_block_params());
        self.embedding_params()
            + self.hidden_size
            + self.patch_dim() * self.vision_hidden_size
            + self.merger_params()
            + visiting
    }

    fn text_widths(&self) -> Widths {
        Widths {
            hidden: self.hidden_size as f64,
            kv: self.kv_dim() as f64,
            intermediate: self.intermediate_size as f64,
            heads: self.num_attention_heads as f64,
        }
    }

    fn vision_widths(&self) -> Widths {
        Widths {
            hidden: self.vision_hidden_size as f64,
            kv: 0.0,
            intermediate: self.vision_intermediate_size as f64,
            heads: self.vision_num_heads as f64,
        }
    }
}

/// A phase of an RL step, as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanPhase {
    /// Sampling: the generation engine's KV pool, a prefill, decode steps (no grad).
    Rollout,
    /// The old-policy and reference log-prob passes (no grad).
    LogProbs,
    /// Forward and backward of the update micro-batches, then the optimiser step.
    Update,
}

impl PlanPhase {
    /// Every phase, in the order of an RL step.
    pub const ALL: [PlanPhase; 3] = [PlanPhase::Rollout, PlanPhase::LogProbs, PlanPhase::Update];

    /// The column name.
    pub fn name(self) -> &'static str {
        match self {
            PlanPhase::Rollout => "rollout",
            PlanPhase::LogProbs => "log-probs",
            PlanPhase::Update => "update",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanItem {
    /// What it is, with its size parameters.
    pub name: String,
    /// Bytes in each phase ([`PlanPhase::ALL`] order); `None` where it does not exist.
    pub bytes: [Option<u64>; 3],
    /// Alive at one moment of its phase only: a phase counts its largest such item, not the sum.
    pub momentary: bool,
}

/// One option change and the peak it gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    /// `section.key=value`, as `--set` takes it.
    pub setting: String,
    /// The plan's peak with the change.
    pub peak: u64,
    /// What the change costs, when it changes the training (empty when it does not).
    pub note: &'static str,
}

/// What would make a plan fit: single changes, else a combination, else the least peak reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixes {
    /// Each alone makes the plan fit.
    pub single: Vec<Fix>,
    /// Together (and only together) these make it fit.
    pub combination: Vec<Fix>,
    /// The lowest peak the search for a combination reached (when nothing fits).
    pub least_peak: u64,
}

/// How many sequences one forward of a pass covers, and what it holds.
#[derive(Debug, Clone, Copy)]
struct Forward {
    /// Rows (for a token budget: the most rows of the shortest possible width).
    rows: u64,
    /// Padded tokens.
    tokens: u64,
    /// Tokens the decoder runs: `tokens`, or with shared prompts (`actor.shared_prompt_forward`)
    /// each distinct prompt once plus every row's response.
    decoder_tokens: u64,
    /// Response positions whose logits are computed.
    responses: u64,
    /// Distinct images (one per GRPO group).
    images: u64,
    /// Vision patches of those images.
    patches: u64,
}

/// The per-device memory plan of a training configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// Policy weights.
    pub weights: u64,
    /// Gradients of the trainable weights.
    pub grads: u64,
    /// AdamW moments (+ Kahan buffer).
    pub optimizer: u64,
    /// Frozen reference weights resident on the device (0 when streamed from the host or unused).
    pub reference: u64,
    /// The generation engine's KV pool plus the row kept for a prefill.
    pub kv_cache: u64,
    /// Every line of the plan.
    pub items: Vec<PlanItem>,
    /// Device memory (0 when unknown).
    pub capacity: u64,
    /// Data-parallel ranks the RL step is divided across.
    pub ranks: usize,
    /// Lines describing the model and the work per device.
    header: Vec<String>,
    cfg: TrainConfig,
    shape: ModelShape,
}

impl MemoryPlan {
    /// The plan of `cfg` for a model of shape `shape` on one device of `capacity` bytes (0:
    /// unknown).
    pub fn estimate(cfg: &TrainConfig, shape: &ModelShape, capacity: u64) -> Self {
        Self::estimate_ranks(cfg, shape, capacity, 1)
    }

    /// The plan of one of `ranks` data-parallel devices: each samples, scores and updates its
    /// share of the RL step; the model state is replicated (no sharding exists).
    pub fn estimate_ranks(
        cfg: &TrainConfig,
        shape: &ModelShape,
        capacity: u64,
        ranks: usize,
    ) -> Self {
        let ranks = ranks.max(1);
        let mut e = Estimator::new(cfg, shape, ranks);
        let state = e.state();
        let kv_cache = e.rollout();
        let exp = e.log_probs();
        let upd = e.update();
        let header = e
            .geo
            .describe(cfg, shape, state.total, state.trainable, exp, upd);
        MemoryPlan {
            weights: state.weights,
            grads: state.grads,
            optimizer: state.optimizer,
            reference: state.reference,
            kv_cache,
            items: e.items,
            capacity,
            ranks,
            header,
            cfg: cfg.clone(),
            shape: *shape,
        }
    }

    /// Peak bytes of `phase`: its whole-phase items plus its largest momentary item.
    pub fn phase_peak(&self, phase: PlanPhase) -> u64 {
        let i = phase.index();
        let steady: u64 = self
            .items
            .iter()
            .filter(|it| !it.momentary)
            .filter_map(|it| it.bytes[i])
            .sum();
        let moment = self
            .items
            .iter()
            .filter(|it| it.momentary)
            .filter_map(|it| it.bytes[i])
            .max()
            .unwrap_or(0);
        steady + moment
    }

    /// The phase with the highest peak.
    pub fn peak_phase(&self) -> PlanPhase {
        PlanPhase::ALL
            .into_iter()
            .max_by_key(|&p| (self.phase_peak(p), std::cmp::Reverse(p.index())))
            .unwrap_or(PlanPhase::Update)
    }

    /// The peak over all phases.
    pub fn peak(&self) -> u64 {
        self.phase_peak(self.peak_phase())
    }

    /// Bytes kept free for the allocator: [`HEADROOM_FRACTION`] of the device.
    pub fn headroom(&self) -> u64 {
        (self.capacity as f64 * HEADROOM_FRACTION) as u64
    }

    /// Capacity less headroom; `None` when the capacity is unknown.
    pub fn usable(&self) -> Option<u64> {
        (self.capacity > 0).then(|| self.capacity - self.headroom())
    }

    /// Whether the peak fits the usable capacity; `None` when the capacity is unknown.
    pub fn fits(&self) -> Option<bool> {
        self.usable().map(|u| self.peak() <= u)
    }

    /// The smallest device this plan fits, headroom included.
    pub fn required_capacity(&self) -> u64 {
        (self.peak() as f64 / (1.0 - HEADROOM_FRACTION)).ceil() as u64
    }

    /// The plan of `cfg` on the same model, device and ranks.
    fn replan(&self, cfg: &TrainConfig) -> MemoryPlan {
        MemoryPlan::estimate_ranks(cfg, &self.shape, self.capacity, self.ranks)
    }

    /// Option changes that make this plan fit: each single change that does (numeric options at
    /// their largest fitting value), else a combination, found by applying the change that lowers
    /// the peak most (numeric options at their smallest value) until one more change fits, then
    /// raising each numeric value back as far as the combination still fits.
    pub fn fixes(&self) -> Fixes {
        let single: Vec<Fix> = self
            .fitting_changes(&self.cfg)
            .into_iter()
            .map(|(change, peak)| change.fix(peak))
            .collect();
        let mut fixes = Fixes {
            single,
            combination: Vec::new(),
            least_peak: self.peak(),
        };
        if !fixes.single.is_empty() || self.capacity == 0 {
            return fixes;
        }
        let mut chosen: Vec<Change> = Vec::new();
        for _ in 0..COMBINATION_ROUNDS {
            let Some(cfg) = apply_all(&self.cfg, &chosen) else {
                break;
            };
            if let Some((last, _)) = self.fitting_changes(&cfg).into_iter().next() {
                chosen.push(last);
                self.relax(&mut chosen);
                fixes.combination = self.cumulative_fixes(&chosen);
                return fixes;
            }
            let current = self.replan(&cfg).peak();
            let best = lowering_changes(&cfg, &self.shape, &chosen)
                .into_iter()
                .filter_map(|change| Some((self.replan(&change.apply(&cfg)?).peak(), change)))
                .min_by_key(|&(peak, _)| peak);
            match best {
                Some((peak, change)) if peak < current => chosen.push(change),
                _ => break,
            }
        }
        fixes.least_peak =
            apply_all(&self.cfg, &chosen).map_or(fixes.least_peak, |c| self.replan(&c).peak());
        fixes
    }

    /// Each single change of `cfg` that makes the plan fit, with the peak it gives; exact
    /// changes first, then those that change the training.
    fn fitting_changes(&self, cfg: &TrainConfig) -> Vec<(Change, u64)> {
        let fit_peak = |c: &TrainConfig| {
            let plan = self.replan(c);
            (plan.fits() == Some(true)).then(|| plan.peak())
        };
        let mut out = Vec::new();
        for flag in FlagOption::ALL.into_iter().filter(|f| f.lowers(cfg)) {
            let change = Change::Flag(flag);
            if let Some(peak) = change.apply(cfg).and_then(|c| fit_peak(&c)) {
                out.push((change, peak));
            }
        }
        for option in NumericOption::ALL {
            let found = option
                .values_below(cfg, &self.shape)
                .into_iter()
                .find_map(|v| {
                    let change = Change::Numeric(option, v);
                    change
                        .apply(cfg)
                        .and_then(|c| fit_peak(&c))
                        .map(|p| (change, p))
                });
            out.extend(found);
        }
        out.sort_by_key(|(change, _)| !change.note().is_empty());
        out
    }

    /// Raises each numeric change of a fitting combination to the largest value (at most the
    /// configured one) with which the whole combination still fits.
    fn relax(&self, chosen: &mut [Change]) {
        for i in 0..chosen.len() {
            let Change::Numeric(option, floor) = chosen[i] else {
                continue;
            };
            for v in option.values_below(&self.cfg, &self.shape) {
                if v <= floor {
                    break;
                }
                let mut trial = chosen.to_vec();
                trial[i] = Change::Numeric(option, v);
                let fits = apply_all(&self.cfg, &trial)
                    .is_some_and(|c| self.replan(&c).fits() == Some(true));
                if fits {
                    chosen[i] = trial[i];
                    break;
                }
            }
        }
    }

    /// The fixes of a combination, each with the peak of the changes up to it.
    fn cumulative_fixes(&self, chosen: &[Change]) -> Vec<Fix> {
        (1..=chosen.len())
            .map(|n| {
                let peak = apply_all(&self.cfg, &chosen[..n]).map_or(0, |c| self.replan(&c).peak());
                chosen[n - 1].fix(peak)
            })
            .collect()
    }

    /// The refusal's text: the numbers, the largest items of the peak phase, and the fixes.
    pub fn shortfall(&self) -> String {
        let phase = self.peak_phase();
        let mut s = format!(
            "the training plan needs {} at its peak (the {} phase), but the device has {} usable \
             ({} less {:.0}% allocator headroom)",
            gib(self.peak()),
            phase.name(),
            gib(self.usable().unwrap_or(0)),
            gib(self.capacity),
            HEADROOM_FRACTION * 100.0
        );
        let mut largest: Vec<(&str, u64)> = self
            .items
            .iter()
            .filter_map(|it| it.bytes[phase.index()].map(|b| (it.name.as_str(), b)))
            .collect();
        largest.sort_by_key(|&(_, b)| std::cmp::Reverse(b));
        let named: Vec<String> = largest
            .iter()
            .take(LARGEST_ITEMS_NAMED)
            .map(|(n, b)| format!("{} {n}", gib(*b)))
            .collect();
        s += &format!("\nlargest items: {}", named.join("; "));
        let fixes = self.fixes();
        let line = |f: &Fix| {
            let note = if f.note.is_empty() {
                String::new()
            } else {
                format!("; {}", f.note)
            };
            format!("  --set {}  (peak {}{note})", f.setting, gib(f.peak))
        };
        if !fixes.single.is_empty() {
            s += "\nany one of these makes it fit:";
            for f in &fixes.single {
                s += &format!("\n{}", line(f));
            }
        } else if !fixes.combination.is_empty() {
            s += "\nno single option change makes it fit; these together do:";
            for f in &fixes.combination {
                s += &format!("\n{}", line(f));
            }
        } else {
            s += &format!(
                "\nno combination of option changes makes it fit (the least peak reached is {})",
                gib(fixes.least_peak)
            );
        }
        s += &format!(
            "\nas configured it needs a device of at least {}; across GPUs the optimizer \
             states are sharded (ZeRO-1), weights, gradients and the reference are replicated",
            gib(self.required_capacity())
        );
        s
    }

    /// Errors with the refusal and the whole plan when the peak exceeds the usable capacity;
    /// passes when the capacity is unknown (0).
    pub fn check(&self) -> Result<()> {
        if self.fits() != Some(false) {
            return Ok(());
        }
        Err(TrainError::DoesNotFit(format!(
            "{}\n{self}",
            self.shortfall()
        )))
    }
}

/// The model state on one device, in bytes (and the parameter counts it comes from).
#[derive(Debug, Clone, Copy)]
struct State {
    total: u64,
    trainable: u64,
    weights: u64,
    grads: u64,
    optimizer: u64,
    reference: u64,
}

/// Builds the items of a plan, phase by phase.
struct Estimator<'a> {
    cfg: &'a TrainConfig,
    shape: &'a ModelShape,
    geo: Geometry,
    /// Bytes per weight.
    wb: u64,
    text: Widths,
    vision: Widths,
    /// Output columns of the head: the tokenizer's ids (padding rows past them are left out).
    columns: f64,
    /// Positions per f32 logits chunk (`LmHead::target_log_probs`).
    chunk_positions: f64,
    /// Per token of a forward: embeddings and rotary tables.
    token_extras: f64,
    /// Per patch: pixel values, vision rotary tables and the merger's tensors.
    patch_extras: f64,
    items: Vec<PlanItem>,
    /// Data-parallel ranks.
    ranks: u64,
    /// `[model.lora]`'s adapters, if any.
    lora: Option<super::lora::LoraShape>,
}

impl<'a> Estimator<'a> {
    fn new(cfg: &'a TrainConfig, shape: &'a ModelShape, ranks: usize) -> Self {
        let wb = cfg.model.dtype.size_in_bytes();
        let (text, vision) = (shape.text_widths(), shape.vision_widths());
        let columns = shape.vocab_size.min(TOKENIZER_VOCAB as u64) as f64;
        let chunk_budget = if cfg.trainer.device == "cpu" {
            CPU_LOGITS_CHUNK_BYTES
        } else {
            GPU_LOGITS_CHUNK_BYTES
        } as f64;
        let vision_head = shape.vision_hidden_size as f64 / shape.vision_num_heads.max(1) as f64;
        Estimator {
            cfg,
            shape,
            geo: Geometry::new(cfg, shape, ranks),
            ranks: ranks.max(1) as u64,
            lora: cfg
                .model
                .lora
                .as_ref()
                .map(|l| super::lora::lora_shape(shape, l, wb)),
            wb,
            text,
            vision,
            columns,
            chunk_positions: (chunk_budget / (columns * F32_BYTES)).floor().max(1.0),
            // token and merged embeddings, M-RoPE cos and sin
            token_extras: EMBEDDING_VECTORS * text.hidden * wb as f64
                + ROTARY_F32_VECTORS * shape.head_dim() as f64 * F32_BYTES,
            // pixel values as loaded (f32) and their weight-dtype copy, the vision rotary (cos,
            // sin and their source, f32 of the head width), the merger
            patch_extras: shape.patch_dim() as f64 * (F32_BYTES + wb as f64)
                + 3.0 * vision_head * F32_BYTES
                + MERGER_SAVED.bytes(&vision, wb),
            items: Vec::new(),
        }
    }

    /// Whether the reference is the policy's own base with the adapters off (no weights of its
    /// own, resident or streamed).
    fn lora_reference(&self) -> bool {
        self.lora.is_some() && self.cfg.model.reference_path.is_none()
    }

    /// Whether the vision tower runs with grad in the update.
    fn vision_trained(&self) -> bool {
        match self.lora {
            Some(l) => l.vision,
            None => !self.cfg.model.freeze_vision_tower,
        }
    }

    /// Adds an item alive in `phase` only.
    fn add(&mut self, phase: PlanPhase, name: String, bytes: f64, momentary: bool) {
        let mut per_phase = [None; 3];
        per_phase[phase.index()] = Some(bytes.round() as u64);
        self.items.push(PlanItem {
            name,
            bytes: per_phase,
            momentary,
        });
    }

    /// Adds an item alive in every phase.
    fn add_persistent(&mut self, name: String, bytes: u64) {
        self.items.push(PlanItem {
            name,
            bytes: [Some(bytes); 3],
            momentary: false,
        });
    }

    /// The vision tower without grad over `patches` patches: one block's working set.
    fn vision_no_grad(&self, patches: u64) -> f64 {
        patches as f64 * (VISION_BLOCK_NO_GRAD.bytes(&self.vision, self.wb) + self.patch_extras)
    }

    /// One decoder layer without grad over `tokens` tokens, with the forward's embeddings.
    fn layer_no_grad(&self, tokens: u64) -> f64 {
        tokens as f64 * (TEXT_LAYER_NO_GRAD.bytes(&self.text, self.wb) + self.token_extras)
    }

    /// Weights, optimiser states, gradients and a resident reference.
    fn state(&mut self) -> State {
        let (cfg, shape, wb) = (self.cfg, self.shape, self.wb);
        let total = shape.params();
        // with LoRA only the f32 adapters train (train/lora.rs)
        let lora = self.lora;
        let trainable = match lora {
            Some(l) => l.params,
            None if cfg.model.freeze_vision_tower => shape.text_params(),
            None => total,
        };
        let state_bytes = match cfg.actor.optimizer_state_dtype {
            StateDtype::Bf16 => 2,
            StateDtype::F32 => 4,
        };
        let buffers = if cfg.actor.kahan_summation { 3 } else { 2 };
        // ZeRO-1: each rank holds the optimiser state of 1/ranks of the parameters
        let sharded = self.ranks > 1 && cfg.distributed.shard_optimizer;
        let owned = if sharded {
            trainable.div_ceil(self.ranks)
        } else {
            trainable
        };
        let s = State {
            total,
            trainable,
            weights: total * wb + lora.map_or(0, |l| l.params * F32_BYTES as u64),
            grads: trainable * if lora.is_some() { F32_BYTES as u64 } else { wb },
            optimizer: owned * state_bytes * buffers,
            reference: match lora {
                _ if !cfg.algorithm.use_kl_loss => 0,
                // the base with the adapters off, plus (after an adapter warm-up in the same run)
                // a frozen f32 copy of the warm-up's adapters (train/lora.rs)
                Some(l) if self.lora_reference() => {
                    if cfg.sft.enabled {
                        l.params * F32_BYTES as u64
                    } else {
                        0
                    }
                }
                _ if cfg.model.offload_reference => 0,
                _ => total * wb,
            },
        };
        let dtype = if lora.is_some() {
            "f32 (adapters)"
        } else {
            cfg.model.dtype.name()
        };
        let adapters = lora.map_or(String::new(), |l| {
            format!(" + LoRA adapters f32, {} params", billions(l.params))
        });
        self.add_persistent(
            format!(
                "weights: {}, {} params{adapters}",
                cfg.model.dtype.name(),
                billions(total)
            ),
            s.weights,
        );
        let kahan = if cfg.actor.kahan_summation {
            ", Kahan"
        } else {
            ""
        };
        let shard = if sharded {
            format!(" / {} ranks", self.ranks)
        } else {
            String::new()
        };
        self.add_persistent(
            format!(
                "optimizer states: m, v{kahan} in {}, {} params{shard}",
                state_name(cfg.actor.optimizer_state_dtype),
                billions(trainable)
            ),
            s.optimizer,
        );
        if self.ranks > 1 {
            // one f32 bucket in flight, and the all-gather's world × bucket receive buffer
            let bucket = cfg.distributed.bucket_mib * (1u64 << 20) as f64;
            self.add(
                PlanPhase::Update,
                format!(
                    "communication buckets: f32, {} MiB × (1 + {} ranks)",
                    cfg.distributed.bucket_mib, self.ranks
                ),
                bucket * (1 + self.ranks) as f64,
                true,
            );
        }
        if GRADIENTS_KEPT_BETWEEN_UPDATES {
            self.add_persistent(
                format!("gradients: {dtype} (zeroed, not freed, between updates)"),
                s.grads,
            );
        } else {
            let name = format!("gradients: {dtype}, freed after each update");
            self.add(PlanPhase::Update, name, s.grads as f64, false);
        }
        if s.reference > 0 {
            let name = match lora {
                Some(l) if self.lora_reference() => format!(
                    "reference: the base + a frozen copy of the warm-up's adapters, f32, {} params",
                    billions(l.params)
                ),
                _ => "reference model, resident on the device".into(),
            };
            self.add_persistent(name, s.reference);
        }
        s
    }

    /// The generation engine's pool, a prefill of one prompt, decode steps; returns the pool's
    /// bytes.
    fn rollout(&mut self) -> u64 {
        let (cfg, shape, geo) = (self.cfg, self.shape, self.geo);
        let phase = PlanPhase::Rollout;
        // as the engine sizes it (the trainer's engine config, EngineConfig::pool_rows):
        // max_num_seqs rows (no more than the step's responses) of prompt + response slots plus
        // one row's worth for a prefill, or fewer rows when rollout.kv_cache_gib is smaller
        let row_bytes = 2 * shape.num_hidden_layers * shape.kv_dim() * geo.seq * self.wb;
        let engine = cfg.rollout.engine_config(
            geo.prompt as usize,
            geo.response as usize,
            geo.responses_per_rank as usize,
        );
        let rows = engine.pool_rows(row_bytes) as u64;
        let pool = (rows + 1) * row_bytes;
        let name = format!(
            "KV pool: {rows} rows x {} slots + 1 row for a prefill",
            geo.seq
        );
        self.add(phase, name, pool as f64, false);
        let patches = geo.image_tokens * geo.patches_per_token;
        let name = format!("prefill: vision tower, no grad ({patches} patches)");
        self.add(phase, name, self.vision_no_grad(patches), true);
        let name = format!(
            "prefill: one decoder layer, no grad ({} tokens)",
            geo.prompt
        );
        self.add(phase, name, self.layer_no_grad(geo.prompt), true);
        // each live row's f32 logits and the sampler's copy; the one-token forward is small
        let name = format!("decode step: f32 logits and sampler ({rows} rows)");
        let bytes = rows as f64 * self.columns * F32_BYTES * DECODE_LOGITS_COPIES;
        self.add(phase, name, bytes, true);
        pool
    }

    /// The old-policy and reference passes: one no-grad forward of the experience micro-batch
    /// (or token budget) at a time.
    fn log_probs(&mut self) -> Forward {
        let (cfg, shape) = (self.cfg, self.shape);
        let phase = PlanPhase::LogProbs;
        let f = self.geo.forward(self.geo.experience_rows, 1);
        if cfg.algorithm.use_kl_loss && cfg.model.offload_reference && !self.lora_reference() {
            let params = shape.streamed_reference_params();
            let name = format!(
                "reference, streamed: head, merger and one layer at a time ({} params)",
                billions(params)
            );
            self.add(phase, name, (params * self.wb) as f64, false);
        }
        let name = format!(
            "vision tower, no grad ({} images, {} patches)",
            f.images, f.patches
        );
        self.add(phase, name, self.vision_no_grad(f.patches), true);
        let name = format!("one decoder layer, no grad ({} tokens)", f.decoder_tokens);
        self.add(phase, name, self.layer_no_grad(f.decoder_tokens), true);
        // one chunk of f32 logits with its log-sum-exp, next to the final hidden states
        let positions = self.chunk_positions.min(f.responses as f64);
        let name = format!(
            "f32 logits chunk and log-sum-exp ({positions} of {} positions)",
            f.responses
        );
        let hidden =
            f.decoder_tokens as f64 * (self.text.hidden * self.wb as f64 + self.token_extras);
        let chunk = positions * self.columns * F32_BYTES;
        self.add(
            phase,
            name,
            chunk * LOGITS_CHUNK_COPIES_NO_GRAD + hidden,
            true,
        );
        f
    }

    /// One update forward with grad, its backward, then the optimiser step.
    fn update(&mut self) -> Forward {
        let (cfg, shape, wb) = (self.cfg, self.shape, self.wb as f64);
        let (text, vision) = (self.text, self.vision);
        let phase = PlanPhase::Update;
        let f = self.geo.forward(self.geo.update_rows, self.geo.update_rows);
        let (tokens, patches) = (f.decoder_tokens as f64, f.patches as f64);
        let (layers, depth) = (shape.num_hidden_layers, shape.vision_depth);
        let ckpt = cfg.model.gradient_checkpointing;
        // what the adapters keep per token and layer for their backward
        let adapters = self.lora.map_or(0.0, |l| l.layer_saved_per_token);
        if ckpt {
            // each layer's input and the stack's output, in the weight dtype
            let name = format!(
                "decoder inputs kept for recompute ({} x {} tokens)",
                layers + 1,
                f.decoder_tokens
            );
            let bytes = (layers + 1) as f64 * tokens * text.hidden * wb;
            self.add(phase, name, bytes, false);
        } else {
            let name = format!(
                "decoder activations, all {layers} layers ({} tokens)",
                f.decoder_tokens
            );
            let bytes =
                layers as f64 * tokens * (TEXT_LAYER_SAVED.bytes(&text, self.wb) + adapters);
            self.add(phase, name, bytes, false);
        }
        let name = format!(
            "embeddings, rotary tables, final norm ({} tokens)",
            f.decoder_tokens
        );
        let bytes = tokens * (self.token_extras + FINAL_NORM_SAVED.bytes(&text, self.wb));
        self.add(phase, name, bytes, false);
        if self.vision_trained() {
            let (name, kept) = if ckpt {
                (
                    format!(
                        "vision inputs kept for recompute ({} x {} patches, {} images)",
                        depth + 1,
                        f.patches,
                        f.images
                    ),
                    (depth + 1) as f64 * patches * vision.hidden * wb,
                )
            } else {
                (
                    format!(
                        "vision activations, all {depth} blocks ({} patches, {} images)",
                        f.patches, f.images
                    ),
                    depth as f64 * patches * VISION_BLOCK_SAVED.bytes(&vision, self.wb),
                )
            };
            self.add(phase, name, kept + patches * self.patch_extras, false);
        }
        // the head's backward: autograd keeps every chunk's f32 logits until it runs, then one
        // chunk's gradients and the [vocab, hidden] weight-gradient temporary are added
        let chunk = self.chunk_positions.min(f.responses as f64) * self.columns * F32_BYTES;
        let name = format!(
            "head backward: f32 logits of {} positions + chunk and lm_head gradients",
            f.responses
        );
        // (a frozen head under LoRA has no weight gradient)
        let head_grad = if self.lora.is_some() {
            0.0
        } else {
            shape.largest_tensor_params() as f64 * wb
        };
        let bytes = f.responses as f64 * self.columns * F32_BYTES
            + chunk * LOGITS_CHUNK_COPIES_BACKWARD
            + head_grad;
        self.add(phase, name, bytes, true);
        // one layer's weight-gradient temporary: its largest matrix
        let layer_grad = if self.lora.is_some() {
            0.0
        } else {
            (shape.intermediate_size * shape.hidden_size) as f64 * wb
        };
        let backward = TEXT_LAYER_BACKWARD.bytes(&text, self.wb) + adapters;
        let (name, per_token) = if ckpt {
            let name = format!(
                "one decoder layer recomputed, with its backward ({} tokens)",
                f.decoder_tokens
            );
            (name, TEXT_LAYER_SAVED.bytes(&text, self.wb) + backward)
        } else {
            let name = format!("one decoder layer's backward ({} tokens)", f.decoder_tokens);
            (name, backward)
        };
        self.add(phase, name, tokens * per_token + layer_grad, true);
        if !self.vision_trained() {
            let name = format!("vision tower (frozen), no grad ({} patches)", f.patches);
            self.add(phase, name, self.vision_no_grad(f.patches), true);
        } else {
            let backward = VISION_BLOCK_BACKWARD.bytes(&vision, self.wb);
            let (name, per_patch) = if ckpt {
                let name = format!(
                    "one vision block recomputed, with its backward ({} patches)",
                    f.patches
                );
                (name, VISION_BLOCK_SAVED.bytes(&vision, self.wb) + backward)
            } else {
                let name = format!("one vision block's backward ({} patches)", f.patches);
                (name, backward)
            };
            self.add(phase, name, patches * per_patch, true);
        }
        let step_chunk =
            (STEP_CHUNK_BYTES as f64).min(shape.largest_tensor_params() as f64 * F32_BYTES);
        let name = format!(
            "optimizer step: f32 temporaries of one {} MiB chunk",
            STEP_CHUNK_BYTES >> 20
        );
        self.add(phase, name, OPTIMIZER_STEP_CHUNKS * step_chunk, true);
        f
    }
}

/// Sizes of the forwards of one device's share of an RL step.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    prompt: u64,
    response: u64,
    seq: u64,
    /// Merged tokens of the largest image: `max_pixels / (patch · merge)²`, at most the prompt.
    image_tokens: u64,
    /// Merged tokens of the smallest image (`min_pixels`): the shortest possible prompt.
    min_prompt: u64,
    patches_per_token: u64,
    group: u64,
    token_budget: Option<u64>,
    /// `actor.shared_prompt_forward`: rows of a forward that share a prompt run it once.
    shared_prompts: bool,
    responses_per_rank: u64,
    update_rows: u64,
    experience_rows: u64,
}

impl Geometry {
    fn new(cfg: &TrainConfig, shape: &ModelShape, ranks: usize) -> Self {
        let ranks = ranks as u64;
        let unit = (shape.patch_size * shape.spatial_merge_size).max(1).pow(2);
        let prompt = cfg.data.max_prompt_length as u64;
        let group = cfg.rollout.n as u64;
        let responses_per_rank = (cfg.data.rollout_batch_size as u64 * group).div_ceil(ranks);
        let mini_per_rank = (cfg.actor.global_batch_size as u64 * group).div_ceil(ranks);
        Geometry {
            prompt,
            response: cfg.data.max_response_length as u64,
            seq: prompt + cfg.data.max_response_length as u64,
            image_tokens: (cfg.data.max_pixels / unit).clamp(1, prompt.max(1)),
            min_prompt: (cfg.data.min_pixels / unit).clamp(1, prompt.max(1)),
            patches_per_token: shape.spatial_merge_size.pow(2),
            group,
            token_budget: cfg.actor.max_tokens_per_micro_batch.map(|t| t as u64),
            shared_prompts: cfg.actor.shared_prompt_forward,
            responses_per_rank,
            update_rows: (cfg.actor.micro_batch_size_per_device_for_update as u64)
                .min(mini_per_rank)
                .max(1),
            experience_rows: (cfg.actor.micro_batch_size_per_device_for_experience as u64)
                .min(responses_per_rank)
                .max(1),
        }
    }

    /// One forward of `fixed_rows` rows, or, with a token budget, of whole units of `unit_rows`
    /// rows packed while `rows × longest row` fits it (`grpo::actor`'s packing: single rows in
    /// the log-prob passes, micro-batches in the update).
    fn forward(&self, fixed_rows: u64, unit_rows: u64) -> Forward {
        let unit = unit_rows * self.seq;
        let (rows, tokens, responses) = match self.token_budget {
            // rows of width W hold at most W − min_prompt response positions: the most when
            // W = prompt + response; the most rows when every row is as short as can be
            Some(budget) if budget > unit => (
                budget / (self.min_prompt + 1),
                budget,
                budget * self.response / (self.min_prompt + self.response),
            ),
            // one unit at least, even when it alone exceeds the budget
            Some(_) => (unit_rows, unit, unit_rows * self.response),
            None => (
                fixed_rows,
                fixed_rows * self.seq,
                fixed_rows * self.response,
            ),
        };
        // Rows of a forward are consecutive and prompt-major; nothing aligns them to group
        // boundaries (token budgets, ranks), so r rows may touch ⌈(r − 1) / n⌉ + 1 groups, each
        // with its own image: a micro-batch of 4 with n = 8 holds 1 or 2 images; the plan takes 2.
        let images = rows.min((rows.max(1) - 1).div_ceil(self.group.max(1)) + 1);
        // the distinct images' tokens are part of the forward's tokens
        let image_tokens = (images * self.image_tokens).min(tokens);
        // shared prompts: one prompt per group touched (at most `images`) plus every response
        // position; never more than the padded forward
        let decoder_tokens = if self.shared_prompts && images < rows {
            (images * self.prompt + responses).min(tokens)
        } else {
            tokens
        };
        Forward {
            rows,
            tokens,
            decoder_tokens,
            responses,
            images,
            patches: image_tokens * self.patches_per_token,
        }
    }

    /// The header lines: the model, the state and the work of one device.
    fn describe(
        &self,
        cfg: &TrainConfig,
        shape: &ModelShape,
        total: u64,
        trainable: u64,
        exp: Forward,
        upd: Forward,
    ) -> Vec<String> {
        let forward = |f: Forward, fixed: u64| {
            let padded = match self.token_budget {
                None => format!("{fixed} rows x {} tokens", self.seq),
                Some(_) => format!(
                    "<= {} tokens (token budget; up to {} rows)",
                    f.tokens, f.rows
                ),
            };
            if f.decoder_tokens < f.tokens {
                format!(
                    "{padded}, decoder <= {} tokens with shared prompts",
                    f.decoder_tokens
                )
            } else {
                padded
            }
        };
        let lora_reference = cfg.model.lora.is_some() && cfg.model.reference_path.is_none();
        let reference = match (cfg.algorithm.use_kl_loss, cfg.model.offload_reference) {
            (false, _) => "none (no KL loss)",
            _ if lora_reference && cfg.sft.enabled => {
                "the policy's base with a frozen copy of the warm-up's adapters"
            }
            _ if lora_reference => {
                "the policy's base with the adapters off (no weights of its own)"
            }
            (true, true) => "streamed from host memory a layer at a time",
            (true, false) => "resident on the device",
        };
        let mut lines = vec![
            format!(
                "model: {} params ({} trainable, {}), {} layers of width {}; {} weights",
                billions(total),
                billions(trainable),
                match &cfg.model.lora {
                    Some(l) if l.vision => format!("LoRA r = {} on text and vision", l.r),
                    Some(l) => format!("LoRA r = {} on the language model, vision frozen", l.r),
                    None if cfg.model.freeze_vision_tower => "vision tower frozen".into(),
                    None => "vision tower trained".into(),
                },
                shape.num_hidden_layers,
                shape.hidden_size,
                cfg.model.dtype.name()
            ),
            format!(
                "gradient checkpointing {}; reference model {reference}",
                if cfg.model.gradient_checkpointing {
                    "on"
                } else {
                    "off"
                }
            ),
            format!(
                "per RL step on this device: {} responses of <= {} + {} tokens",
                self.responses_per_rank, self.prompt, self.response
            ),
            format!(
                "forwards: log-prob passes {}; update {}",
                forward(exp, self.experience_rows),
                forward(upd, self.update_rows)
            ),
        ];
        if cfg.model.output_vocab == OutputVocabMode::Dataset {
            lines.push(
                "output vocabulary: the dataset's ids, unknown before the data is read; logits \
                 are counted over the full vocabulary (an upper bound)"
                    .into(),
            );
        }
        lines
    }
}

/// A boolean option whose change lowers memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagOption {
    SharePrompts,
    Checkpointing,
    OffloadReference,
    FreezeVision,
    NoKahan,
    Bf16States,
}

impl FlagOption {
    const ALL: [FlagOption; 6] = [
        FlagOption::SharePrompts,
        FlagOption::Checkpointing,
        FlagOption::OffloadReference,
        FlagOption::FreezeVision,
        FlagOption::NoKahan,
        FlagOption::Bf16States,
    ];

    /// Whether setting it changes `cfg` in a way that can lower memory.
    fn lowers(self, cfg: &TrainConfig) -> bool {
        match self {
            FlagOption::SharePrompts => !cfg.actor.shared_prompt_forward && cfg.rollout.n > 1,
            FlagOption::Checkpointing => !cfg.model.gradient_checkpointing,
            FlagOption::OffloadReference => {
                cfg.algorithm.use_kl_loss && !cfg.model.offload_reference
            }
            FlagOption::FreezeVision => !cfg.model.freeze_vision_tower,
            FlagOption::NoKahan => cfg.actor.kahan_summation,
            FlagOption::Bf16States => cfg.actor.optimizer_state_dtype == StateDtype::F32,
        }
    }

    fn set(self, cfg: &mut TrainConfig) {
        match self {
            FlagOption::SharePrompts => cfg.actor.shared_prompt_forward = true,
            FlagOption::Checkpointing => cfg.model.gradient_checkpointing = true,
            FlagOption::OffloadReference => cfg.model.offload_reference = true,
            FlagOption::FreezeVision => cfg.model.freeze_vision_tower = true,
            FlagOption::NoKahan => cfg.actor.kahan_summation = false,
            FlagOption::Bf16States => cfg.actor.optimizer_state_dtype = StateDtype::Bf16,
        }
    }

    fn setting(self) -> &'static str {
        match self {
            FlagOption::SharePrompts => "actor.shared_prompt_forward=true",
            FlagOption::Checkpointing => "model.gradient_checkpointing=true",
            FlagOption::OffloadReference => "model.offload_reference=true",
            FlagOption::FreezeVision => "model.freeze_vision_tower=true",
            FlagOption::NoKahan => "actor.kahan_summation=false",
            FlagOption::Bf16States => "actor.optimizer_state_dtype=\"bf16\"",
        }
    }

    /// What it changes in the training (empty: exact, only memory and speed change).
    fn note(self) -> &'static str {
        match self {
            FlagOption::SharePrompts | FlagOption::Checkpointing | FlagOption::OffloadReference => {
                ""
            }
            FlagOption::FreezeVision => {
                "the vision tower is no longer trained; the published run trains it"
            }
            FlagOption::NoKahan => "bf16 weight updates lose the bits Kahan summation carries",
            FlagOption::Bf16States => "the optimizer states lose precision",
        }
    }
}

/// A numeric option the plan may suggest lowering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumericOption {
    TokenBudget,
    MaxNumSeqs,
    KvCacheGib,
    ExperienceMicroBatch,
    UpdateMicroBatch,
}

impl NumericOption {
    const ALL: [NumericOption; 5] = [
        NumericOption::TokenBudget,
        NumericOption::MaxNumSeqs,
        NumericOption::KvCacheGib,
        NumericOption::ExperienceMicroBatch,
        NumericOption::UpdateMicroBatch,
    ];

    /// Candidate values below today's, largest first.
    fn values_below(self, cfg: &TrainConfig, shape: &ModelShape) -> Vec<u64> {
        let a = &cfg.actor;
        let seq = (cfg.data.max_prompt_length + cfg.data.max_response_length) as u64;
        match self {
            // whole multiples of the step, from one longest row up to today's largest forward
            NumericOption::TokenBudget => {
                let rows = a
                    .micro_batch_size_per_device_for_update
                    .max(a.micro_batch_size_per_device_for_experience)
                    as u64;
                let now = a
                    .max_tokens_per_micro_batch
                    .map_or(rows * seq, |t| t as u64);
                let low = seq.div_ceil(TOKEN_BUDGET_STEP);
                let high = now.saturating_sub(1) / TOKEN_BUDGET_STEP;
                (low..=high).rev().map(|k| k * TOKEN_BUDGET_STEP).collect()
            }
            NumericOption::MaxNumSeqs => (1..cfg.rollout.max_num_seqs as u64).rev().collect(),
            // tenths of a GiB, below the pool (with its prefill row) the engine takes today
            NumericOption::KvCacheGib => {
                let row = (2 * shape.num_hidden_layers * shape.kv_dim() * seq) as f64
                    * cfg.model.dtype.size_in_bytes() as f64;
                let pool = row * (cfg.rollout.max_num_seqs as f64 + 1.0) / GIB;
                let now = cfg.rollout.kv_cache_gib.unwrap_or(pool).min(pool);
                (1..(now * 10.0).ceil() as u64).rev().collect()
            }
            NumericOption::ExperienceMicroBatch => (1
                ..a.micro_batch_size_per_device_for_experience as u64)
                .rev()
                .collect(),
            // the update micro-batch must divide the mini-batch
            NumericOption::UpdateMicroBatch => {
                let mini = cfg.mini_batch_responses() as u64;
                (1..a.micro_batch_size_per_device_for_update as u64)
                    .rev()
                    .filter(|m| mini.is_multiple_of(*m))
                    .collect()
            }
        }
    }

    fn set(self, cfg: &mut TrainConfig, value: u64) {
        let v = value as usize;
        match self {
            NumericOption::TokenBudget => cfg.actor.max_tokens_per_micro_batch = Some(v),
            NumericOption::MaxNumSeqs => cfg.rollout.max_num_seqs = v,
            NumericOption::KvCacheGib => cfg.rollout.kv_cache_gib = Some(value as f64 / 10.0),
            NumericOption::ExperienceMicroBatch => {
                cfg.actor.micro_batch_size_per_device_for_experience = v
            }
            NumericOption::UpdateMicroBatch => cfg.actor.micro_batch_size_per_device_for_update = v,
        }
    }

    fn setting(self, value: u64) -> String {
        match self {
            NumericOption::TokenBudget => format!("actor.max_tokens_per_micro_batch={value}"),
            NumericOption::MaxNumSeqs => format!("rollout.max_num_seqs={value}"),
            NumericOption::KvCacheGib => {
                format!("rollout.kv_cache_gib={:.1}", value as f64 / 10.0)
            }
            NumericOption::ExperienceMicroBatch => {
                format!("actor.micro_batch_size_per_device_for_experience={value}")
            }
            NumericOption::UpdateMicroBatch => {
                format!("actor.micro_batch_size_per_device_for_update={value}")
            }
        }
    }

    fn note(self) -> &'static str {
        match self {
            NumericOption::UpdateMicroBatch => {
                "changes the loss weighting: token-mean per micro-batch"
            }
            _ => "",
        }
    }
}

/// One option change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Flag(FlagOption),
    Numeric(NumericOption, u64),
}

impl Change {
    /// `cfg` with this change, when the result is a valid config.
    fn apply(self, cfg: &TrainConfig) -> Option<TrainConfig> {
        let mut c = cfg.clone();
        match self {
            Change::Flag(flag) => flag.set(&mut c),
            Change::Numeric(option, value) => option.set(&mut c, value),
        }
        c.validate().ok().map(|_| c)
    }

    fn note(self) -> &'static str {
        match self {
            Change::Flag(flag) => flag.note(),
            Change::Numeric(option, _) => option.note(),
        }
    }

    fn fix(self, peak: u64) -> Fix {
        Fix {
            setting: match self {
                Change::Flag(flag) => flag.setting().to_string(),
                Change::Numeric(option, value) => option.setting(value),
            },
            peak,
            note: self.note(),
        }
    }
}

/// `cfg` with every change applied in order.
fn apply_all(cfg: &TrainConfig, changes: &[Change]) -> Option<TrainConfig> {
    changes.iter().try_fold(cfg.clone(), |c, ch| ch.apply(&c))
}

/// Changes the combination search may take next: every flag that lowers memory, and every
/// numeric option not yet changed, at its smallest value.
fn lowering_changes(cfg: &TrainConfig, shape: &ModelShape, chosen: &[Change]) -> Vec<Change> {
    let taken = |o: NumericOption| {
        chosen
            .iter()
            .any(|c| matches!(c, Change::Numeric(x, _) if *x == o))
    };
    let flags = FlagOption::ALL
        .into_iter()
        .filter(|f| f.lowers(cfg))
        .map(Change::Flag);
    let numeric = NumericOption::ALL
        .into_iter()
        .filter(|&o| !taken(o))
        .filter_map(|o| {
            let v = *o.values_below(cfg, shape).last()?;
            Some(Change::Numeric(o, v))
        });
    flags.chain(numeric).collect()
}

fn state_name(dtype: StateDtype) -> &'static str {
    match dtype {
        StateDtype::Bf16 => "bf16",
        StateDtype::F32 => "f32",
    }
}

fn billions(params: u64) -> String {
    format!("{:.2} B", params as f64 / 1e9)
}

/// Bytes in GiB, or in MiB below a tenth of a GiB (tiny models, tiny budgets).
fn gib(bytes: u64) -> String {
    let g = bytes as f64 / GIB;
    if g >= 0.1 {
        format!("{g:.2} GiB")
    } else {
        format!("{:.1} MiB", g * 1024.0)
    }
}

/// Width of the item column of the table.
const NAME_WIDTH: usize = 76;
/// Width of each phase column.
const COLUMN_WIDTH: usize = 11;

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cell = |b: Option<u64>| match b {
            Some(b) => format!("{:>w$.2}", b as f64 / GIB, w = COLUMN_WIDTH),
            None => format!("{:>w$}", "-", w = COLUMN_WIDTH),
        };
        let row = |f: &mut fmt::Formatter<'_>, name: &str, cells: [Option<u64>; 3]| {
            let cols: String = cells.into_iter().map(cell).collect();
            writeln!(f, "  {name:<NAME_WIDTH$}{cols}")
        };
        writeln!(
            f,
            "memory plan per device ({} data-parallel rank{}{}):",
            self.ranks,
            if self.ranks == 1 { "" } else { "s" },
            match (self.ranks, self.cfg.distributed.shard_optimizer) {
                (1, _) => "",
                (_, true) => "; optimizer states sharded (ZeRO-1), the rest replicated",
                (_, false) => "; model state replicated on each",
            }
        )?;
        for line in &self.header {
            writeln!(f, "  {line}")?;
        }
        let heads: String = PlanPhase::ALL
            .iter()
            .map(|p| format!("{:>w$}", p.name(), w = COLUMN_WIDTH))
            .collect();
        writeln!(f, "  {:<NAME_WIDTH$}{heads}", "GiB")?;
        for it in &self.items {
            let mark = if it.momentary { "* " } else { "" };
            row(f, &format!("{mark}{}", it.name), it.bytes)?;
        }
        let peaks = PlanPhase::ALL.map(|p| Some(self.phase_peak(p)));
        row(f, "phase peak", peaks)?;
        if self.capacity > 0 {
            let headroom = self.headroom();
            row(
                f,
                &format!(
                    "allocator headroom ({:.0}% of the device)",
                    HEADROOM_FRACTION * 100.0
                ),
                [Some(headroom); 3],
            )?;
            row(f, "needed", peaks.map(|p| p.map(|p| p + headroom)))?;
        }
        writeln!(
            f,
            "  * alive at one moment of its phase: a phase counts its largest such item, not their sum"
        )?;
        writeln!(
            f,
            "peak {} in the {} phase: needs a device of {} ({:.0}% allocator headroom)",
            gib(self.peak()),
            self.peak_phase().name(),
            gib(self.required_capacity()),
            HEADROOM_FRACTION * 100.0
        )?;
        match self.fits() {
            Some(true) => writeln!(
                f,
                "device {}: fits, {} to spare",
                gib(self.capacity),
                gib(self.usable().unwrap_or(0) - self.peak())
            ),
            Some(false) => writeln!(
                f,
                "device {}: does NOT fit, {} short",
                gib(self.capacity),
                gib(self.peak() - self.usable().unwrap_or(0))
            ),
            None => writeln!(f, "device memory unknown: not checked"),
        }
    }
}

impl WeightDtype {
    /// Human name of the dtype.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::Bf16 => "bf16",
            WeightDtype::F32 => "f32",
        }
    }
}

/// Peak resident memory of this process (`VmHWM` of `/proc/self/status`), when the platform
/// reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(group: u64, budget: Option<u64>) -> Geometry {
        Geometry {
            prompt: 6144,
            response: 2048,
            seq: 8192,
            image_tokens: 5349,
            min_prompt: 334,
            patches_per_token: 4,
            group,
            token_budget: budget,
            shared_prompts: false,
            responses_per_rank: 4096,
            update_rows: 4,
            experience_rows: 16,
        }
    }

    #[test]
    fn forwards_count_the_worst_case_images() {
        let g = geometry(8, None);
        // 4 consecutive rows may straddle two groups of 8; 16 may touch three; 1 row one image
        assert_eq!(g.forward(4, 4).images, 2);
        assert_eq!(g.forward(16, 1).images, 3);
        assert_eq!(g.forward(1, 1).images, 1);
        let f = g.forward(4, 4);
        assert_eq!((f.tokens, f.responses), (4 * 8192, 4 * 2048));
        assert_eq!(f.patches, 2 * 5349 * 4);
    }

    #[test]
    fn shared_prompts_run_each_prompt_of_a_forward_once() {
        let g = Geometry {
            shared_prompts: true,
            ..geometry(8, None)
        };
        // 4 rows touch at most 2 groups: 2 prompts of 6144 + 4 responses of 2048
        let f = g.forward(4, 4);
        assert_eq!(f.tokens, 4 * 8192);
        assert_eq!(f.decoder_tokens, 2 * 6144 + 4 * 2048);
        // one row has nothing to share
        assert_eq!(g.forward(1, 1).decoder_tokens, 8192);
        // off: the padded forward
        assert_eq!(geometry(8, None).forward(4, 4).decoder_tokens, 4 * 8192);
    }

    #[test]
    fn token_budgets_keep_whole_units() {
        let g = geometry(8, Some(4096));
        // a budget below one unit still forwards the unit
        assert_eq!(g.forward(16, 1).tokens, 8192);
        assert_eq!(g.forward(4, 4).tokens, 4 * 8192);
        let g = geometry(8, Some(65536));
        let f = g.forward(16, 1);
        assert_eq!(f.tokens, 65536);
        // responses bounded by rows of the shortest prompt
        assert_eq!(f.responses, 65536 * 2048 / (334 + 2048));
        assert!(f.patches <= f.tokens * 4);
    }

    #[test]
    fn a_phase_counts_its_largest_moment() {
        let item = |bytes: u64, momentary| PlanItem {
            name: String::new(),
            bytes: [Some(bytes), None, Some(1)],
            momentary,
        };
        let shape = ModelShape::from_config(
            &Qwen2_5VLConfig::from_json_str(
                &crate::train::tiny::tiny_config_json(&Default::default()).to_string(),
            )
            .unwrap(),
        );
        let cfg = TrainConfig::from_toml_str(crate::train::DEFAULT_CONFIG, &[], "tiny").unwrap();
        let mut plan = MemoryPlan::estimate(&cfg, &shape, 0);
        plan.items = vec![item(10, false), item(5, true), item(7, true)];
        assert_eq!(plan.phase_peak(PlanPhase::Rollout), 17);
        assert_eq!(plan.phase_peak(PlanPhase::LogProbs), 0);
        assert_eq!(plan.phase_peak(PlanPhase::Update), 2);
        assert_eq!(plan.peak_phase(), PlanPhase::Rollout);
        assert_eq!(plan.fits(), None);
        assert!(plan.check().is_ok(), "unknown capacity is not checked");
    }
}
