//! The device-memory plan printed at start-up: weights, gradients, optimiser states, reference
//! model, rollout KV cache and update activations, estimated from the model shape and the
//! configuration, with a clear refusal when the total exceeds the device.
//!
//! The estimate counts persistent tensors exactly and activations approximately (saved decoder
//! layer inputs with gradient checkpointing or a per-layer working set without it, plus f32
//! log-softmax over the vocabulary at response positions); allocator fragmentation is covered by
//! `HEADROOM_FRACTION`.

use std::fmt;

use super::config::{TrainConfig, WeightDtype};
use super::{Result, TrainError};
use crate::grpo::optim::StateDtype;
use crate::model::config::Qwen2_5VLConfig;
use crate::model::lm_head::GPU_LOGITS_CHUNK_BYTES;

/// Share of device memory kept free for the allocator and workspace buffers.
pub const HEADROOM_FRACTION: f64 = 0.10;
const GIB: f64 = (1u64 << 30) as f64;

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
    /// Output width of the patch merger (= `hidden_size`).
    pub vision_out_hidden_size: u64,
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
            vision_out_hidden_size: n(v.out_hidden_size),
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> u64 {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Parameters of the language model (embedding, decoder, final norm, `lm_head`).
    pub fn text_params(&self) -> u64 {
        let h = self.hidden_size;
        let kv = self.num_key_value_heads * self.head_dim();
        let attn = (h * h + h) + 2 * (h * kv + kv) + h * h;
        let mlp = 3 * h * self.intermediate_size;
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + self.num_hidden_layers * layer + h + head
    }

    /// Parameters of the vision tower (patch embedding, blocks, merger).
    pub fn vision_params(&self) -> u64 {
        let d = self.vision_hidden_size;
        let i = self.vision_intermediate_size;
        let patch = 3 * 2 * 14 * 14 * d;
        let block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * (d * i + i) + (i * d + d);
        let merged = 4 * d;
        let merger = d
            + (merged * merged + merged)
            + (merged * self.vision_out_hidden_size + self.vision_out_hidden_size);
        patch + self.vision_depth * block + merger
    }
}

/// Bytes per category, as planned for one device.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// Policy weights.
    pub weights: u64,
    /// Gradients of the trainable weights.
    pub grads: u64,
    /// AdamW moments (+ Kahan buffer).
    pub optimizer: u64,
    /// Frozen reference weights kept on the device (0 when offloaded to the CPU).
    pub reference: u64,
    /// The generation engine's KV pool at full prompt + response length (plus one row for a
    /// prefill), or the `rollout.kv_cache_gib` budget when smaller.
    pub kv_cache: u64,
    /// Activations of one update micro-batch.
    pub activations: u64,
    /// Device memory (0 when unknown).
    pub capacity: u64,
}

impl MemoryPlan {
    /// Estimates the plan of `cfg` for a model of shape `shape` on a device of `capacity` bytes.
    pub fn estimate(cfg: &TrainConfig, shape: &ModelShape, capacity: u64) -> Self {
        let wb = cfg.model.dtype.size_in_bytes();
        let sb = match cfg.actor.optimizer_state_dtype {
            StateDtype::Bf16 => 2,
            StateDtype::F32 => 4,
        };
        let total = shape.text_params() + shape.vision_params();
        let trainable = if cfg.model.freeze_vision_tower {
            shape.text_params()
        } else {
            total
        };
        let buffers = if cfg.actor.kahan_summation { 3 } else { 2 };
        let seq = (cfg.data.max_prompt_length + cfg.data.max_response_length) as u64;
        let resp = cfg.data.max_response_length as u64;
        let kv_dim = shape.num_key_value_heads * shape.head_dim();
        // the generation engine's pool: max_num_seqs rows plus one row's worth for the prefill of
        // the prompt being admitted, or the rollout.kv_cache_gib budget when that is smaller
        let kv_row = 2 * shape.num_hidden_layers * kv_dim * seq * wb;
        let kv_rows = kv_row * (cfg.rollout.max_num_seqs as u64 + 1);
        let kv_cache = match cfg.rollout.kv_cache_gib {
            Some(gib) => kv_rows.min((gib * GIB) as u64),
            None => kv_rows,
        };
        let micro = cfg.actor.micro_batch_size_per_device_for_update as u64;
        let h = shape.hidden_size;
        // One decoder layer's working set per token: q/k/v/o, norms, residuals and the MLP
        // (gate, up, act, product), kept for backward.
        let layer_per_token = (6 * h + 2 * kv_dim + 4 * shape.intermediate_size) * wb;
        // Every layer's working set is kept: this build has no gradient checkpointing.
        let per_token = shape.num_hidden_layers * layer_per_token;
        // f32 logits at response positions only, kept for the backward of the chunked
        // logsumexp (`LmHead::target_log_probs`; no log-softmax is stored), plus one chunk's
        // logits gradient in flight during backward.
        let logits = resp * shape.vocab_size * 4;
        let logits_grad_chunk = (resp * shape.vocab_size * 4).min(GPU_LOGITS_CHUNK_BYTES as u64);
        let activations = micro * (seq * per_token + logits) + logits_grad_chunk;
        MemoryPlan {
            weights: total * wb,
            grads: trainable * wb,
            optimizer: trainable * sb * buffers,
            reference: if cfg.model.offload_reference || !cfg.algorithm.use_kl_loss {
                0
            } else {
                total * wb
            },
            kv_cache,
            activations,
            capacity,
        }
    }

    /// Peak: persistent tensors plus the larger of the rollout and update working sets.
    pub fn peak(&self) -> u64 {
        self.weights
            + self.grads
            + self.optimizer
            + self.reference
            + self.kv_cache.max(self.activations)
    }

    /// Errors with the whole plan and what to change when the peak exceeds the usable capacity
    /// (capacity minus `HEADROOM_FRACTION`); passes when the capacity is unknown (0).
    pub fn check(&self) -> Result<()> {
        if self.capacity == 0 {
            return Ok(());
        }
        let usable = (self.capacity as f64 * (1.0 - HEADROOM_FRACTION)) as u64;
        if self.peak() <= usable {
            return Ok(());
        }
        Err(TrainError::DoesNotFit(format!(
            "the training plan needs {:.1} GiB but the device has {:.1} GiB usable:\n{self}\n\
             reduce rollout.max_num_seqs (or set rollout.kv_cache_gib) or data.max_*_length, set model.offload_reference = true \
             or model.freeze_vision_tower = true, or use a smaller model",
            self.peak() as f64 / GIB,
            usable as f64 / GIB
        )))
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, name: &str, b: u64| {
            writeln!(f, "  {name:<22}{:>9.2} GiB", b as f64 / GIB)
        };
        writeln!(f, "memory plan (per device):")?;
        row(f, "weights", self.weights)?;
        row(f, "gradients", self.grads)?;
        row(f, "optimizer states", self.optimizer)?;
        row(f, "reference model", self.reference)?;
        row(f, "rollout KV cache", self.kv_cache)?;
        row(f, "update activations", self.activations)?;
        row(f, "peak", self.peak())?;
        if self.capacity > 0 {
            row(f, "device", self.capacity)?;
        }
        Ok(())
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
