//! The training configuration: a TOML file whose sections mirror EasyR1's `config.yaml`
//! (`data`, `algorithm`, `worker.actor`, `worker.rollout`, `worker.reward`, `trainer`), with
//! `--set section.key=value` overrides applied to the TOML tree before deserialising.
//!
//! Defaults are the published SpatialThinker-7B values (docs/recipe.md, "Hyper-parameters") where one exists.

use std::path::{Path, PathBuf};

use rewards::RewardKind;
use serde::{Deserialize, Serialize};

use super::{Result, TrainError};
use crate::generate::EngineConfig;
use crate::grpo::actor::UpdateConfig;
use crate::grpo::loss::PolicyClip;
use crate::grpo::optim::{AdamWConfig, LrSchedule, StateDtype};

/// Data type of the model weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// bfloat16 (the published run).
    Bf16,
    /// float32 (CPU and exactness tests).
    F32,
}

impl WeightDtype {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> u64 {
        match self {
            WeightDtype::Bf16 => 2,
            WeightDtype::F32 => 4,
        }
    }
}

/// `[model]`: which checkpoint to start from and how to hold it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Folder with `config.json`, safetensors shards and tokenizer files, or a tiny-model
    /// preset name (`tiny-random`) that the trainer builds from scratch.
    pub path: String,
    /// Weight dtype during training.
    #[serde(default = "default_bf16")]
    pub dtype: WeightDtype,
    /// Keep the vision tower frozen (the published run trains it: `false`).
    #[serde(default)]
    pub freeze_vision_tower: bool,
    /// Keep the frozen reference model in host memory; its pass computes on the device with one
    /// layer's weights brought over at a time (the device holds one layer, not the model).
    #[serde(default)]
    pub offload_reference: bool,
    /// Recompute each decoder layer and vision block in the update's backward instead of keeping
    /// its activations (`enable_gradient_checkpointing`; on in the published 3B/7B recipes).
    /// Exact: the gradients are those of the plain backward (docs/architecture.md, "Memory").
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Output distribution: `full` (every token id, the published setting) or `dataset` (only the
    /// ids of the training split's reference responses and answers, plus the end tokens; a
    /// speed device for tiny CPU runs, saved with checkpoints as `output_vocab.json`).
    #[serde(default)]
    pub output_vocab: OutputVocabMode,
    /// The frozen reference of the KL term: a model folder or hub id (default: the starting
    /// model, or the warm-up's checkpoint when it runs). Set it when continuing from a checkpoint
    /// that should still be held to the base model.
    #[serde(default)]
    pub reference_path: Option<String>,
    /// `[model.lora]`: train LoRA adapters on a frozen base instead of the whole model; the KL
    /// reference is then the same base with the adapters off (docs/architecture.md, "LoRA").
    #[serde(default)]
    pub lora: Option<crate::model::LoraConfig>,
}

/// Which token ids the policy may emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputVocabMode {
    /// The whole vocabulary.
    #[default]
    Full,
    /// Ids occurring in the training split's reference responses and ground truths.
    Dataset,
}

/// `[data]`: datasets and prompt/response limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training parquet file or folder (`hunarbatra/STVQA-7K` train split), or `synthetic`.
    pub train_files: String,
    /// Validation parquet file or folder (`@val` split), or `synthetic`.
    pub val_files: String,
    /// Column holding the prompt text.
    #[serde(default = "default_prompt_key")]
    pub prompt_key: String,
    /// Column holding the ground-truth answer.
    #[serde(default = "default_answer_key")]
    pub answer_key: String,
    /// Column holding the images.
    #[serde(default = "default_image_key")]
    pub image_key: String,
    /// Text put before every prompt (EasyR1 `data.format_prompt`: `format_prompt.strip() + " " +
    /// prompt`); the vanilla-GRPO ablation uses it, the SpatialThinker runs do not.
    #[serde(default)]
    pub format_prompt: Option<String>,
    /// Split of `train_files` to train on.
    #[serde(default = "default_train_split")]
    pub train_split: String,
    /// Split of `val_files` to validate on.
    #[serde(default = "default_val_split")]
    pub val_split: String,
    /// Rows of the synthetic training split (when `train_files = "synthetic"`).
    #[serde(default = "default_synthetic_train_rows")]
    pub synthetic_train_rows: u64,
    /// Rows of the synthetic validation split.
    #[serde(default = "default_synthetic_val_rows")]
    pub synthetic_val_rows: u64,
    /// Side in pixels of the synthetic images: 112.
    #[serde(default = "default_synthetic_image_size")]
    pub synthetic_image_size: u32,
    /// Most distinct objects in a synthetic scene (2–6): 4.
    #[serde(default = "default_synthetic_max_objects")]
    pub synthetic_max_objects: u32,
    /// Question categories of the synthetic data (`relation`, `size`, `count`, `existence`,
    /// `instance_location`, `distance`, `depth`, and the opt-in `single_object_location` and
    /// `object_identity`); empty: all but the opt-in ones.
    #[serde(default)]
    pub synthetic_categories: Vec<String>,
    /// List synthetic options in each category's fixed order instead of shuffled, so the option
    /// letter follows from its text (`data::synth::SynthConfig::fixed_option_order`).
    #[serde(default)]
    pub synthetic_fixed_option_order: bool,
    /// Write the synthetic `problem` column with a one-sentence instruction (output format only,
    /// no worked example) instead of the full instruction, so the image tokens are a larger share
    /// of a tiny model's prompt (`data::synth::SynthConfig::short_instruction`); off by default.
    #[serde(default)]
    pub synthetic_short_instruction: bool,
    /// Prompts per RL step (`rollout_batch_size`): 512.
    pub rollout_batch_size: usize,
    /// Prompts per validation batch: 8.
    #[serde(default = "default_val_batch")]
    pub val_batch_size: usize,
    /// Longest prompt in tokens (image tokens included): 6,144.
    pub max_prompt_length: usize,
    /// Longest response in tokens: 2,048.
    pub max_response_length: usize,
    /// Smallest image area in pixels after resizing: 262,144.
    pub min_pixels: u64,
    /// Largest image area in pixels after resizing: 4,194,304.
    pub max_pixels: u64,
    /// Seed of the sampler that orders prompts (`data.seed`): 1.
    #[serde(default = "default_data_seed")]
    pub seed: u64,
    /// Shuffle the training prompts every epoch.
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Largest share of a split's rows a run may leave out (an undecodable image, an answer
    /// without tags, a prompt without its image-size line or longer than `max_prompt_length`, a
    /// reward that raises) before it stops with an error naming the first: 0.01. With 0, any
    /// unusable row stops the run.
    #[serde(default = "default_max_skipped_fraction")]
    pub max_skipped_fraction: f64,
}

/// `algorithm.adv_estimator`: how rewards become advantages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// Group-normalised outcome rewards (docs/recipe.md, "Advantages").
    #[default]
    Grpo,
}

/// `algorithm.kl_penalty`: the estimator of the KL to the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlPenalty {
    /// The clamped low-variance estimator (docs/recipe.md, "KL to the reference").
    #[default]
    LowVarKl,
}

/// `[algorithm]`: advantage estimator and KL placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmConfig {
    /// Advantage estimator.
    #[serde(default)]
    pub adv_estimator: AdvantageEstimator,
    /// Put the KL term in the loss (`use_kl_loss`): true.
    #[serde(default = "default_true")]
    pub use_kl_loss: bool,
    /// KL estimator.
    #[serde(default)]
    pub kl_penalty: KlPenalty,
    /// KL coefficient β: 1e-2.
    #[serde(default = "default_kl_coef")]
    pub kl_coef: f64,
    /// Where the old policy's log-probs come from: `reuse` (the update's first forward gives
    /// those of the first mini-batch, where no optimiser step has happened since sampling; a pass
    /// runs over the other rows), `recompute` (a pass over every row, as EasyR1) or `rollout`
    /// (as `reuse`, with the generation engine's sampling log-probs for the other rows, no pass,
    /// while they match the training forward within `rollout_logprobs_tolerance`).
    #[serde(default)]
    pub old_logprobs: OldLogprobs,
    /// With `old_logprobs = "rollout"`: the largest mean `|sampling − training forward|`
    /// log-prob over a step's first mini-batch (where both are known) that keeps the engine's
    /// log-probs in use; after a step above it the old log-probs are computed as `reuse` does for
    /// the rest of the run (and after a resume). 1e-3: f32 on the CPU differs by ~1e-6.
    #[serde(default = "default_rollout_logprobs_tolerance")]
    pub rollout_logprobs_tolerance: f64,
}

/// How the old policy's log-probs are obtained ([`AlgorithmConfig::old_logprobs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OldLogprobs {
    /// The first mini-batch's from the update's own forward, the rest from a pass.
    #[default]
    Reuse,
    /// Every row's from a separate no-grad pass.
    Recompute,
    /// The first mini-batch's from the update's own forward, the rest the generation engine's
    /// sampling log-probs while they stay within
    /// [`AlgorithmConfig::rollout_logprobs_tolerance`].
    Rollout,
}

/// `[actor]`: optimisation of the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorConfig {
    /// Prompts per optimiser step (`global_batch_size`, before × n): 128.
    pub global_batch_size: usize,
    /// Responses per forward/backward in the update: 4.
    pub micro_batch_size_per_device_for_update: usize,
    /// Responses per forward in the old/reference log-prob passes: 16.
    pub micro_batch_size_per_device_for_experience: usize,
    /// Token budget of one forward (padded rows × width) in the log-prob passes and the update
    /// (EasyR1's dynamic batching, `max_token_len_per_gpu`): forwards then group as many rows as
    /// fit instead of a fixed count. The loss weighting stays the recipe's (token-mean per
    /// micro-batch of `micro_batch_size_per_device_for_update`), however rows are grouped.
    #[serde(default)]
    pub max_tokens_per_micro_batch: Option<usize>,
    /// In the log-prob passes and the update, the responses of a forward that share a prompt
    /// run it once per layer and attend to its keys and values (exact up to rounding;
    /// docs/architecture.md, "Shared prompts"): true. The GRPO step on the `bench-random` shape
    /// takes 1.4× less time with it (README, "Speed"); `false` runs every row's prompt.
    #[serde(default = "default_true")]
    pub shared_prompt_forward: bool,
    /// Passes over each rollout batch: 1.
    #[serde(default = "default_one")]
    pub ppo_epochs: usize,
    /// Peak learning rate: 1e-6.
    pub lr: f64,
    /// Warm-up length as a fraction of the total RL steps: 0.
    #[serde(default)]
    pub lr_warmup_ratio: f64,
    /// Reproduce EasyR1's lr = 0 during the first RL step when the warm-up is 0
    /// (docs/recipe.md, "Optimiser and learning-rate schedule").
    #[serde(default)]
    pub zero_lr_first_step: bool,
    /// `(β1, β2)`: (0.9, 0.999).
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    /// Adam eps: 1e-8.
    #[serde(default = "default_adam_eps")]
    pub eps: f64,
    /// Decoupled weight decay: 1e-2.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Dtype of the optimiser states: `bf16` for `adamw_bf16`.
    #[serde(default = "default_state_dtype")]
    pub optimizer_state_dtype: StateDtype,
    /// Kahan-compensated weight updates: true for `adamw_bf16`.
    #[serde(default = "default_true")]
    pub kahan_summation: bool,
    /// Global gradient-norm clip: 1.0.
    #[serde(default = "default_one_f")]
    pub max_grad_norm: f64,
    /// Lower ratio clip: 0.2.
    #[serde(default = "default_clip_low")]
    pub clip_ratio_low: f64,
    /// Upper ratio clip: 0.3.
    #[serde(default = "default_clip_high")]
    pub clip_ratio_high: f64,
    /// Dual-clip constant: 3.0.
    #[serde(default = "default_clip_dual")]
    pub clip_ratio_dual: f64,
}

/// `[rollout]`: sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Responses per prompt (group size): 8.
    pub n: usize,
    /// Sampling temperature (also divides the logits of every log-prob pass): 1.0.
    pub temperature: f64,
    /// Nucleus threshold: 1.0 (off).
    #[serde(default = "default_one_f")]
    pub top_p: f64,
    /// Top-k: -1 (off).
    #[serde(default = "default_top_k")]
    pub top_k: i64,
    /// Validation temperature: 0.5.
    pub val_temperature: f64,
    /// Responses per validation prompt: 1.
    #[serde(default = "default_one")]
    pub val_n: usize,
    /// Most sequences the generation engine decodes together (rows of its KV pool); a row is
    /// refilled the moment its sequence stops. `generation_batch_size` is read as this.
    #[serde(default = "default_gen_batch", alias = "generation_batch_size")]
    pub max_num_seqs: usize,
    /// KV pool budget in GiB: when set, the pool takes as many rows (up to `max_num_seqs`) as
    /// fit in it, with one row's worth kept for a prompt's prefill.
    #[serde(default)]
    pub kv_cache_gib: Option<f64>,
}

impl RolloutConfig {
    /// The generation engine for `sequences` responses, prompts of at most `max_prompt` tokens
    /// and responses of at most `max_new_tokens`: `max_num_seqs` rows, or fewer when fewer
    /// sequences are asked for (the pool is not larger than the work).
    pub fn engine_config(
        &self,
        max_prompt: usize,
        max_new_tokens: usize,
        sequences: usize,
    ) -> EngineConfig {
        let rows = self.max_num_seqs.min(sequences.max(1));
        EngineConfig::new(rows, max_prompt + max_new_tokens).with_kv_cache_gib(self.kv_cache_gib)
    }
}

/// `[reward]`: scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardConfig {
    /// Reward function.
    pub kind: RewardKind,
    /// Word vectors (`word f1 f2 …` per line) for spaCy-style label similarity in the
    /// Hungarian matching; without them labels match only when equal.
    #[serde(default)]
    pub word_vectors: Option<PathBuf>,
}

/// `[sft]`: optional supervised warm-up before GRPO: cross-entropy on each row's
/// `reference_response` column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Run the warm-up before GRPO when `train` starts from the base model.
    #[serde(default)]
    pub enabled: bool,
    /// Optimiser steps.
    #[serde(default)]
    pub steps: usize,
    /// Sequences per optimiser step.
    #[serde(default = "default_sft_batch")]
    pub batch_size: usize,
    /// Learning rate (constant).
    #[serde(default = "default_sft_lr")]
    pub lr: f64,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            enabled: false,
            steps: 0,
            batch_size: default_sft_batch(),
            lr: default_sft_lr(),
        }
    }
}

/// `[trainer]`: loop length, validation, checkpoints and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// RL steps to run: 75.
    pub max_steps: usize,
    /// Validate every this many RL steps (0: never): 5.
    pub val_freq: usize,
    /// Validate once before the first step: true.
    #[serde(default = "default_true")]
    pub val_before_train: bool,
    /// Save a checkpoint every this many RL steps (0: only at the end): 5.
    pub save_freq: usize,
    /// Checkpoints to keep (oldest removed first): 1.
    pub save_limit: usize,
    /// Output folder (checkpoints, `metrics.jsonl`, TensorBoard events, samples).
    pub output_dir: PathBuf,
    /// Write sample rollouts every this many steps (0: never).
    #[serde(default = "default_sample_freq")]
    pub sample_freq: usize,
    /// Seed of the rollout sampler and of model initialisation.
    #[serde(default)]
    pub seed: u64,
    /// Device: `auto`, `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Memory of the device in GiB for the memory plan (0: ask the device / skip the check).
    #[serde(default)]
    pub device_memory_gib: f64,
    /// Start even when the memory plan exceeds the device (default: refuse before loading data).
    #[serde(default)]
    pub allow_overcommit: bool,
}

/// The whole training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model.
    pub model: ModelConfig,
    /// Data.
    pub data: DataConfig,
    /// Advantage estimator and KL.
    #[serde(default = "AlgorithmConfig::default")]
    pub algorithm: AlgorithmConfig,
    /// Policy optimisation.
    pub actor: ActorConfig,
    /// Sampling.
    pub rollout: RolloutConfig,
    /// Reward.
    pub reward: RewardConfig,
    /// Supervised warm-up.
    #[serde(default)]
    pub sft: SftConfig,
    /// Loop, checkpoints and logs.
    pub trainer: TrainerConfig,
    /// Multi-process runs: timeouts, bucket sizes, optimizer sharding.
    #[serde(default)]
    pub distributed: crate::distributed::DistributedConfig,
}

impl Default for AlgorithmConfig {
    fn default() -> Self {
        AlgorithmConfig {
            adv_estimator: AdvantageEstimator::Grpo,
            use_kl_loss: true,
            kl_penalty: KlPenalty::LowVarKl,
            kl_coef: default_kl_coef(),
            old_logprobs: OldLogprobs::default(),
            rollout_logprobs_tolerance: default_rollout_logprobs_tolerance(),
        }
    }
}

fn default_rollout_logprobs_tolerance() -> f64 {
    1e-3
}
fn default_bf16() -> WeightDtype {
    WeightDtype::Bf16
}
fn default_true() -> bool {
    true
}
fn default_prompt_key() -> String {
    "problem".into()
}
fn default_answer_key() -> String {
    "answer_option_text".into()
}
fn default_image_key() -> String {
    "images".into()
}
fn default_train_split() -> String {
    "train".into()
}
fn default_val_split() -> String {
    "val".into()
}
fn default_synthetic_train_rows() -> u64 {
    512
}
fn default_synthetic_val_rows() -> u64 {
    64
}
fn default_synthetic_image_size() -> u32 {
    data::synth::DEFAULT_IMAGE_SIZE
}
fn default_synthetic_max_objects() -> u32 {
    4
}
fn default_val_batch() -> usize {
    8
}
fn default_max_skipped_fraction() -> f64 {
    crate::train::row_filter::DEFAULT_MAX_SKIPPED_FRACTION
}
fn default_data_seed() -> u64 {
    1
}
fn default_kl_coef() -> f64 {
    1e-2
}
fn default_one() -> usize {
    1
}
fn default_one_f() -> f64 {
    1.0
}
fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_wd() -> f64 {
    1e-2
}
fn default_state_dtype() -> StateDtype {
    StateDtype::Bf16
}
fn default_clip_low() -> f64 {
    0.2
}
fn default_clip_high() -> f64 {
    0.3
}
fn default_clip_dual() -> f64 {
    3.0
}
fn default_top_k() -> i64 {
    -1
}
fn default_gen_batch() -> usize {
    64
}
fn default_sft_batch() -> usize {
    8
}
fn default_sft_lr() -> f64 {
    1e-5
}
fn default_sample_freq() -> usize {
    1
}
fn default_device() -> String {
    "auto".into()
}

/// Applies `a.b.c=value` overrides to a TOML tree. The value is parsed as a TOML value
/// (`2e-6`, `true`, `"x"`, `[1, 2]`); anything that does not parse is taken as a string.
/// Intermediate tables are created as needed.
pub fn apply_overrides(tree: &mut toml::Table, overrides: &[String]) -> Result<()> {
    for ov in overrides {
        let (key, raw) = ov.split_once('=').ok_or_else(|| {
            TrainError::Config(format!(
                "override `{ov}` is not of the form section.key=value"
            ))
        })?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(TrainError::Config(format!(
                "override `{ov}` has an empty key part"
            )));
        }
        let value = parse_toml_value(raw.trim());
        let parts: Vec<&str> = key.split('.').collect();
        let mut table = &mut *tree;
        for part in &parts[..parts.len() - 1] {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry.as_table_mut().ok_or_else(|| {
                TrainError::Config(format!("override `{ov}`: `{part}` is not a table"))
            })?;
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(())
}

fn parse_toml_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

impl TrainConfig {
    /// Parses TOML text, applies the overrides, deserialises and validates. `origin` names the
    /// source in error messages.
    pub fn from_toml_str(text: &str, overrides: &[String], origin: &str) -> Result<Self> {
        let mut tree: toml::Table = text
            .parse()
            .map_err(|e| TrainError::Config(format!("{origin}: {e}")))?;
        apply_overrides(&mut tree, overrides)?;
        let cfg: TrainConfig = toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| TrainError::Config(format!("{origin}: {e}")))?;
        cfg.validate().map_err(|e| match e {
            TrainError::Config(m) => TrainError::Config(format!("{origin}: {m}")),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Reads a TOML file, applies the overrides, deserialises and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::from_toml_str(&text, overrides, &path.display().to_string())
    }

    /// The configuration as TOML (written next to checkpoints).
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| TrainError::Config(e.to_string()))
    }

    /// Checks ranges and the batch geometry.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if let Some(lora) = &self.model.lora {
            lora.validate().map_err(|e| match e {
                crate::model::ModelError::Config(m) => TrainError::Config(m),
                e => e.into(),
            })?;
            if lora.dropout > 0.0 && self.model.gradient_checkpointing {
                // the recomputed layer would draw another dropout mask than the forward did
                return bad(
                    "model.lora.dropout > 0 needs model.gradient_checkpointing = false".into(),
                );
            }
        }
        let a = &self.actor;
        if self.rollout.n < 2 {
            return bad(format!(
                "rollout.n = {}: GRPO needs at least 2 responses per prompt",
                self.rollout.n
            ));
        }
        if self.rollout.max_num_seqs == 0
            || self
                .rollout
                .kv_cache_gib
                .is_some_and(|g| g.is_nan() || g <= 0.0)
        {
            return bad(format!(
                "rollout.max_num_seqs = {} and rollout.kv_cache_gib = {:?}: the generation \
                 engine needs at least one row and a positive budget",
                self.rollout.max_num_seqs, self.rollout.kv_cache_gib
            ));
        }
        let (t, vt) = (self.rollout.temperature, self.rollout.val_temperature);
        if t.is_nan() || t <= 0.0 || vt.is_nan() || vt < 0.0 {
            return bad("rollout.temperature must be > 0 and val_temperature >= 0".into());
        }
        if !a.lr.is_finite() || a.lr < 0.0 {
            return bad(format!("actor.lr = {} must be a finite number >= 0", a.lr));
        }
        if !(0.0..1.0).contains(&a.clip_ratio_low)
            || a.clip_ratio_high <= 0.0
            || a.clip_ratio_dual <= 1.0
        {
            return bad("actor clip ratios: need 0 <= clip_ratio_low < 1, clip_ratio_high > 0, clip_ratio_dual > 1".into());
        }
        if !(0.0..=1.0).contains(&a.lr_warmup_ratio) {
            return bad(format!(
                "actor.lr_warmup_ratio = {} must be in [0, 1]",
                a.lr_warmup_ratio
            ));
        }
        if a.global_batch_size == 0
            || !self
                .data
                .rollout_batch_size
                .is_multiple_of(a.global_batch_size)
        {
            return bad(format!(
                "data.rollout_batch_size = {} must be a positive multiple of actor.global_batch_size = {}",
                self.data.rollout_batch_size, a.global_batch_size
            ));
        }
        let mini = a.global_batch_size * self.rollout.n;
        if a.micro_batch_size_per_device_for_update == 0
            || !mini.is_multiple_of(a.micro_batch_size_per_device_for_update)
        {
            return bad(format!(
                "actor.global_batch_size × rollout.n = {mini} must be a multiple of micro_batch_size_per_device_for_update = {}",
                a.micro_batch_size_per_device_for_update
            ));
        }
        if a.max_tokens_per_micro_batch == Some(0) {
            return bad("actor.max_tokens_per_micro_batch must be positive (leave it out for fixed-count micro-batches)".into());
        }
        if a.micro_batch_size_per_device_for_experience == 0 || a.ppo_epochs == 0 {
            return bad(
                "actor.micro_batch_size_per_device_for_experience and ppo_epochs must be positive"
                    .into(),
            );
        }
        if self.data.max_prompt_length == 0 || self.data.max_response_length == 0 {
            return bad("data.max_prompt_length and max_response_length must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.data.max_skipped_fraction) {
            return bad(format!(
                "data.max_skipped_fraction = {} must be in [0, 1]",
                self.data.max_skipped_fraction
            ));
        }
        if self.data.min_pixels > self.data.max_pixels {
            return bad("data.min_pixels must not exceed data.max_pixels".into());
        }
        if self.trainer.save_limit == 0 {
            return bad("trainer.save_limit must be at least 1".into());
        }
        if self.sft.enabled && (self.sft.steps == 0 || self.sft.batch_size == 0) {
            return bad("sft.enabled needs sft.steps and sft.batch_size > 0".into());
        }
        self.distributed.validate().map_err(TrainError::Config)?;
        Ok(())
    }

    /// Checks that the batch geometry splits over `world` data-parallel ranks: each optimiser
    /// step's prompts (`actor.global_batch_size`) into equal whole groups per rank, and each
    /// rank's share of responses into whole micro-batches.
    pub fn validate_world(&self, world: usize) -> Result<()> {
        let a = &self.actor;
        if world <= 1 {
            return Ok(());
        }
        if !a.global_batch_size.is_multiple_of(world) {
            return Err(TrainError::Config(format!(
                "actor.global_batch_size = {} prompts per optimiser step does not split over {world} ranks: use a multiple of {world}",
                a.global_batch_size
            )));
        }
        let per_rank = a.global_batch_size / world * self.rollout.n;
        if !per_rank.is_multiple_of(a.micro_batch_size_per_device_for_update) {
            return Err(TrainError::Config(format!(
                "each of {world} ranks holds {per_rank} responses per optimiser step (global_batch_size / {world} × n), not a multiple of actor.micro_batch_size_per_device_for_update = {}",
                a.micro_batch_size_per_device_for_update
            )));
        }
        Ok(())
    }

    /// The actor-update geometry of one of `world` data-parallel ranks: its share of each
    /// mini-batch ([`crate::grpo::actor::update_actor_with`]).
    pub fn update_config_for(&self, world: usize) -> UpdateConfig {
        let mut cfg = self.update_config();
        cfg.mini_batch_size /= world.max(1);
        cfg
    }

    /// Responses per optimiser step (`global_batch_size × n`).
    pub fn mini_batch_responses(&self) -> usize {
        self.actor.global_batch_size * self.rollout.n
    }

    /// Optimiser steps per RL step (`rollout_batch_size / global_batch_size × ppo_epochs`).
    pub fn optimizer_steps_per_rl_step(&self) -> usize {
        self.data.rollout_batch_size / self.actor.global_batch_size * self.actor.ppo_epochs
    }

    /// The actor-update geometry for [`super::step::RlStep`].
    pub fn update_config(&self) -> UpdateConfig {
        UpdateConfig {
            mini_batch_size: self.mini_batch_responses(),
            micro_batch_size: self.actor.micro_batch_size_per_device_for_update,
            max_tokens_per_forward: self.actor.max_tokens_per_micro_batch,
            ppo_epochs: self.actor.ppo_epochs,
            clip: PolicyClip {
                clip_ratio_low: self.actor.clip_ratio_low,
                clip_ratio_high: self.actor.clip_ratio_high,
                clip_ratio_dual: self.actor.clip_ratio_dual,
            },
            kl_coef: self.algorithm.use_kl_loss.then_some(self.algorithm.kl_coef),
            max_grad_norm: self.actor.max_grad_norm,
        }
    }

    /// The optimiser hyper-parameters.
    pub fn adamw_config(&self) -> AdamWConfig {
        AdamWConfig {
            betas: self.actor.betas,
            eps: self.actor.eps,
            weight_decay: self.actor.weight_decay,
            state_dtype: self.actor.optimizer_state_dtype,
            kahan_summation: self.actor.kahan_summation,
        }
    }

    /// The learning-rate schedule over `trainer.max_steps` RL steps.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            lr: self.actor.lr,
            warmup_steps: (self.actor.lr_warmup_ratio * self.trainer.max_steps as f64) as u64,
            zero_lr_first_step: self.actor.zero_lr_first_step,
        }
    }
}
