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

    /// With LoRA and no `model.reference_path`, the frozen reference: the policy's base with the
    /// adapters off, on the same tensors (nothing loaded or copied). `None` otherwise.
    pub(super) fn lora_reference(&self) -> Result<Option<Qwen2_5VLForConditionalGeneration>> {
        if self.cfg.model.lora.is_none() || self.cfg.model.reference_path.is_some() {
            return Ok(None);
        }
        Ok(Some(self.policy.without_adapters()?))
    }
}
