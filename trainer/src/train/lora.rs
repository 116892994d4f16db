//! A training run with LoRA (`[model.lora]`): which tensors the optimiser trains, what a
//! checkpoint holds, and the frozen reference (docs/architecture.md, "LoRA").
//!
//! The base weights stay frozen and unsaved; the adapters (f32) are the only parameters, so the
//! optimiser, its ZeRO-1 sharding and the gradient all-reduce see only them. A checkpoint holds
//! PEFT's `adapter_model.safetensors` + `adapter_config.json` with the trainer and optimiser
//! state; resuming reads the base from `model.path` again and the adapters from the checkpoint.

use std::path::Path;

use tch::Tensor;

use super::config::TrainConfig;
use super::setup::Trainer;
use super::{Result, TrainError};
use crate::model::lora::adapter_config_json;
use crate::model::{Qwen2_5VLForConditionalGeneration, ADAPTER_WEIGHTS_FILE};

/// The tensors a run trains. Without LoRA: every weight (the vision tower's unless
/// `model.freeze_vision_tower`). With LoRA: the adapters only, fresh (seeded from
/// `trainer.seed`) or, when `resume` holds them, the checkpoint's.
pub(super) fn trainable_tensors(
    cfg: &TrainConfig,
    policy: &mut Qwen2_5VLForConditionalGeneration,
    resume: Option<&Path>,
) -> Result<Vec<(String, Tensor)>> {
    let Some(lora) = &cfg.model.lora else {
        return Ok(policy
            .named_tensors()
            .into_iter()
            .filter(|(name, _)| !(cfg.model.freeze_vision_tower && name.starts_with("visual.")))
            .collect());
    };
    match resume.filter(|d| d.join(ADAPTER_WEIGHTS_FILE).exists()) {
        Some(dir) => {
            let saved = policy.load_adapter(dir)?;
            if saved.r != lora.r {
                return Err(TrainError::Config(format!(
                    "model.lora.r = {} but the checkpoint {} holds rank-{} adapters",
                    lora.r,
                    dir.display(),
                    saved.r
                )));
            }
            // the run's dropout (a loaded adapter has none: inference does not apply it)
            policy.set_adapter_dropout(lora.dropout);
            Ok(policy.lora_tensors())
        }
        None => Ok(policy.attach_lora(lora, cfg.trainer.seed)?),
    }
}

/// The folder the policy's weights are read from: a full-model checkpoint when resuming one,
/// else the starting model (a LoRA checkpoint holds only the adapters).
pub(super) fn weights_dir<'a>(
    cfg: &TrainConfig,
    resume: Option<&'a Path>,
    model_dir: &'a Path,
) -> &'a Path {
    match resume {
        Some(dir) if cfg.model.lora.is_none() => dir,
        _ => model_dir,
    }
}

impl Trainer {
    /// What a checkpoint of the policy holds: every weight, or with LoRA the adapters under
    /// PEFT's keys and the `adapter_config.json` to write next to them.
    pub(super) fn checkpoint_tensors(&self) -> (Vec<(String, Tensor)>, Option<serde_json::Value>) {
        match &self.cfg.model.lora {
            None => (self.policy.named_tensors(), None),
            Some(lora) => {
                let base = self.model_dir.display().to_string();
                let config =
                    adapter_config_json(lora, &base, self.policy.lora_excludes_vision(lora));
                (self.policy.lora_tensors(), Some(config))
            }
        }
    }

    /// With LoRA and no `model.reference_path`, the frozen reference on the policy's base tensors
    /// (nothing copied): the base with the adapters off; after a supervised warm-up of the
    /// adapters, the base with a frozen copy of the warm-up's adapters (read from its checkpoint,
    /// `reference_dir`), as a full run's reference is its warm-up checkpoint. `None` otherwise.
    pub(super) fn lora_reference(&self) -> Result<Option<Qwen2_5VLForConditionalGeneration>> {
        if self.cfg.model.lora.is_none() || self.cfg.model.reference_path.is_some() {
            return Ok(None);
        }
        let mut reference = self.policy.without_adapters()?;
        if self.reference_dir != self.model_dir
            && self.reference_dir.join(ADAPTER_WEIGHTS_FILE).is_file()
        {
            reference.load_adapter(&self.reference_dir)?;
        }
        Ok(Some(reference))
    }
}

/// What `[model.lora]` adds to the memory plan ([`super::memory`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraShape {
    /// Adapter parameters (f32): the trainable ones.
    pub params: u64,
    /// Whether any vision layer is adapted (the vision tower then runs with grad).
    pub vision: bool,
    /// Bytes one adapted decoder layer keeps per token for its backward: each adapted layer's
    /// f32 copy of its input (none when the weights are f32 already) and its `x Aᵀ` (r floats).
    pub layer_saved_per_token: f64,
}

/// [`LoraShape`] of `lora` on a model of `shape` with weights of `weight_bytes` per element,
/// from the same target rule the model applies ([`crate::model::lora::targeted`]).
pub fn lora_shape(
    shape: &super::memory::ModelShape,
    lora: &crate::model::LoraConfig,
    weight_bytes: u64,
) -> LoraShape {
    use crate::model::lora::{hf_module_path, targeted};
    let (h, kv, i) = (shape.hidden_size, shape.kv_dim(), shape.intermediate_size);
    let (d, vi) = (shape.vision_hidden_size, shape.vision_intermediate_size);
    let merged = shape.spatial_merge_size * shape.spatial_merge_size * d;
    let r = lora.r.max(0) as u64;
    let hit = |key: &str| targeted(&hf_module_path(key), &lora.target_modules);
    // (module key, in, out)
    let decoder = [
        ("model.layers.0.self_attn.q_proj", h, h),
        ("model.layers.0.self_attn.k_proj", h, kv),
        ("model.layers.0.self_attn.v_proj", h, kv),
        ("model.layers.0.self_attn.o_proj", h, h),
        ("model.layers.0.mlp.gate_proj", h, i),
        ("model.layers.0.mlp.up_proj", h, i),
        ("model.layers.0.mlp.down_proj", i, h),
    ];
    let block = [
        ("visual.blocks.0.attn.qkv", d, 3 * d),
        ("visual.blocks.0.attn.proj", d, d),
        ("visual.blocks.0.mlp.gate_proj", d, vi),
        ("visual.blocks.0.mlp.up_proj", d, vi),
        ("visual.blocks.0.mlp.down_proj", vi, d),
    ];
    let merger = [
        ("visual.merger.mlp.0", merged, merged),
        ("visual.merger.mlp.2", merged, shape.vision_out_hidden_size),
    ];
    let sum = |mods: &[(&str, u64, u64)]| -> u64 {
        mods.iter()
            .filter(|(k, _, _)| hit(k))
            .map(|(_, a, b)| r * (a + b))
            .sum()
    };
    let copy = if weight_bytes == 4 { 0.0 } else { 4.0 };
    let layer_saved_per_token = decoder
        .iter()
        .filter(|(k, _, _)| hit(k))
        .map(|(_, a, _)| *a as f64 * copy + r as f64 * 4.0)
        .sum();
    let vision_params = if lora.vision {
        shape.vision_depth * sum(&block) + sum(&merger)
    } else {
        0
    };
    LoraShape {
        params: shape.num_hidden_layers * sum(&decoder) + vision_params,
        vision: vision_params > 0,
        layer_saved_per_token,
    }
}
