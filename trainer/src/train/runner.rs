//! The training loop of `spatialthinker train` / `sft` / `bench train`: resolve the model and
//! the data, optionally warm up with supervised steps, then run GRPO RL steps (spec §3.2) with
//! validation, metrics, checkpoints and exact resume.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use data::{ColumnNames, Cursor, DatasetFiles, Loader, LoaderConfig};
use indicatif::{ProgressBar, ProgressStyle};
use rewards::{ExactLabelSimilarity, LabelSimilarity, WordVectorSimilarity};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::policy::{ModelPolicy, SequenceRef};
use super::rollout::{
    response_mask, sample_responses, score_samples, PromptBuilder, PromptItem, Rollout,
};
use super::sft::{sft_step, target_ids};
use super::tiny::{write_tiny_random, TinyShape, TINY_RANDOM};
use super::{Result, TrainError};
use crate::generate::{SamplingConfig, DEFAULT_STOP_IDS};
use crate::grpo::checkpoint::{
    restore_state, CheckpointManager, ModelFiles, TrainerState, DEFAULT_MAX_SHARD_BYTES, INDEX_FILE,
};
use crate::grpo::config::{OutputVocabMode, RewardKind, TrainConfig, WeightDtype};
use crate::grpo::memory::{peak_rss_bytes, MemoryPlan, ModelShape};
use crate::grpo::metrics::{MetricsLogger, Sample as LoggedSample};
use crate::grpo::optim::AnyPrecisionAdamW;
use crate::grpo::step::{RlStep, RolloutBatch, UpdateMetrics};
use crate::model::{read_output_vocab, Qwen2_5VLForConditionalGeneration, OUTPUT_VOCAB_FILE};
use crate::processor::Processor;
use crate::tokenizer::ENDOFTEXT_ID;
use data::rng::SplitMix64;

/// `data.train_files` / `val_files` value that asks for the synthetic dataset.
pub const SYNTHETIC: &str = "synthetic";
/// Folder (under the output folder) of the base model built for `tiny-random`.
pub const BASE_MODEL_DIR: &str = "base-model";
/// Folder (under the output folder) of the synthetic dataset.
pub const SYNTHETIC_DATA_DIR: &str = "synthetic-data";
/// Folder (under the output folder) of the supervised warm-up's checkpoint and logs.
pub const SFT_DIR: &str = "sft";
/// The resolved configuration, written into the output folder.
pub const CONFIG_FILE: &str = "config.toml";
/// Salt of the validation sampler's seed, so validation never draws from the rollout stream.
const VALIDATION_SEED_SALT: u64 = 0x5641_4c49_4441_5445;
const GIB: f64 = (1u64 << 30) as f64;

/// Phases of an RL step, timed separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Sampling `n` responses per prompt.
    Rollout,
    /// Decoding and scoring.
    Reward,
    /// Log-probs of the current policy before the update.
    OldLogProbs,
    /// Log-probs of the frozen reference.
    RefLogProbs,
    /// Forward/backward and optimiser steps.
    Update,
}

impl Phase {
    /// Metric name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Rollout => "rollout",
            Phase::Reward => "reward",
            Phase::OldLogProbs => "old_log_probs",
            Phase::RefLogProbs => "ref_log_probs",
            Phase::Update => "update",
        }
    }

    /// All phases in execution order.
    pub const ALL: [Phase; 5] = [
        Phase::Rollout,
        Phase::Reward,
        Phase::OldLogProbs,
        Phase::RefLogProbs,
        Phase::Update,
    ];
}

/// Seconds spent in each phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseTimes(pub BTreeMap<Phase, f64>);

impl PhaseTimes {
    /// Seconds of `phase` (0 when it did not run).
    pub fn get(&self, phase: Phase) -> f64 {
        self.0.get(&phase).copied().unwrap_or(0.0)
    }

    /// Sum over phases.
    pub fn total(&self) -> f64 {
        self.0.values().sum()
    }

    fn add(&mut self, phase: Phase, since: Instant) {
        *self.0.entry(phase).or_default() += since.elapsed().as_secs_f64();
    }
}

/// Mean reward components over a set of rollouts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidationReport {
    /// Responses scored.
    pub responses: usize,
    /// Mean overall reward.
    pub reward: f64,
    /// Fraction with a valid format.
    pub format: f64,
    /// Fraction answered correctly.
    pub accuracy: f64,
    /// Mean count reward.
    pub count: f64,
    /// Mean spatial (grounding) reward.
    pub spatial: f64,
    /// Mean response length in tokens.
    pub response_length: f64,
}

impl ValidationReport {
    /// Means over `rollouts`.
    pub fn from_rollouts(rollouts: &[Rollout]) -> Self {
        let n = rollouts.len().max(1) as f64;
        let mean = |f: &dyn Fn(&Rollout) -> f64| rollouts.iter().map(f).sum::<f64>() / n;
        ValidationReport {
            responses: rollouts.len(),
            reward: mean(&|r| r.score.overall),
            format: mean(&|r| r.score.format),
            accuracy: mean(&|r| r.score.accuracy),
            count: mean(&|r| r.score.count),
            spatial: mean(&|r| r.score.spatial),
            response_length: mean(&|r| r.ids.len() as f64),
        }
    }

    /// Scalars under `prefix/`.
    pub fn scalars(&self, prefix: &str) -> BTreeMap<String, f64> {
        [
            ("reward", self.reward),
            ("format", self.format),
            ("accuracy", self.accuracy),
            ("count", self.count),
            ("spatial", self.spatial),
            ("response_length", self.response_length),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}/{k}"), v))
        .collect()
    }
}

impl std::fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reward {:.3} | accuracy {:.3} | format {:.3} | count {:.3} | spatial {:.3} | length {:.1} ({} responses)",
            self.reward,
            self.accuracy,
            self.format,
            self.count,
            self.spatial,
            self.response_length,
            self.responses
        )
    }
}

/// What one RL step did.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// RL step number (1-based).
    pub step: u64,
    /// Rollout reward means.
    pub rollouts: ValidationReport,
    /// Update diagnostics.
    pub update: UpdateMetrics,
    /// Learning rate used.
    pub lr: f64,
    /// Seconds per phase.
    pub times: PhaseTimes,
    /// Response tokens generated.
    pub response_tokens: usize,
}

/// How a [`Trainer`] runs, besides its config.
#[derive(Debug, Clone, Default)]
pub struct TrainerOptions {
    /// Continue from this checkpoint folder (or the newest checkpoint in this output folder).
    pub resume: Option<PathBuf>,
    /// Remove the output folder first.
    pub overwrite: bool,
    /// Write no checkpoints, metrics or samples (benchmarks).
    pub dry: bool,
    /// Sample exactly this many tokens per response, ignoring stop ids (benchmarks).
    pub forced_response_length: Option<usize>,
    /// Draw progress bars.
    pub progress: bool,
}

/// The GRPO trainer: policy, frozen reference, optimiser, data, RNG and outputs.
pub struct Trainer {
    cfg: TrainConfig,
    opts: TrainerOptions,
    device: Device,
    out_dir: PathBuf,
    model_dir: PathBuf,
    reference_dir: PathBuf,
    config_json: serde_json::Value,
    copy_files: Vec<PathBuf>,
    processor: Processor,
    builder: PromptBuilder,
    policy: Qwen2_5VLForConditionalGeneration,
    reference: Option<Qwen2_5VLForConditionalGeneration>,
    optimizer: AnyPrecisionAdamW,
    train_files: Vec<PathBuf>,
    val_files: Vec<PathBuf>,
    loader: Loader,
    rng: SplitMix64,
    rl_step: u64,
    optimizer_steps: u64,
    logger: Option<MetricsLogger>,
    checkpoints: CheckpointManager,
    similarity: Box<dyn LabelSimilarity>,
    resumed: bool,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("out_dir", &self.out_dir)
            .field("model_dir", &self.model_dir)
            .field("rl_step", &self.rl_step)
            .finish_non_exhaustive()
    }
}

/// Resolves `trainer.device`: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`.
pub fn resolve_device(name: &str) -> Result<Device> {
    if name == "auto" {
        return Ok(Device::cuda_if_available());
    }
    let arg: crate::device::DeviceArg = name
        .parse()
        .map_err(|e| TrainError::Config(format!("trainer.device: {e}")))?;
    arg.resolve()
        .map_err(|e| TrainError::Config(format!("trainer.device: {e}")))
}

fn weight_kind(dtype: WeightDtype) -> Kind {
    match dtype {
        WeightDtype::Bf16 => Kind::BFloat16,
        WeightDtype::F32 => Kind::Float,
    }
}

/// Resolves `model.path`: the `tiny-random` preset (built under `out_dir` on first use), a
/// local folder, or a hub id ([`crate::model::locate_checkpoint`]).
pub fn resolve_model_dir(cfg: &TrainConfig, out_dir: &Path) -> Result<PathBuf> {
    let path = &cfg.model.path;
    if path == TINY_RANDOM {
        let dir = out_dir.join(BASE_MODEL_DIR);
        if !dir.join("model.safetensors").exists() {
            write_tiny_random(
                &dir,
                &TinyShape::default(),
                cfg.trainer.seed,
                (cfg.data.min_pixels, cfg.data.max_pixels),
            )?;
        }
        return Ok(dir);
    }
    crate::model::locate_checkpoint(path)
        .map_err(|e| TrainError::Config(format!("model.path: {e}")))
}

/// Resolves a dataset value (`synthetic`, a parquet file or folder, or a hub id) to the files
/// of `split`. A single parquet file is taken whole.
pub fn resolve_split(
    value: &str,
    split: &str,
    cfg: &TrainConfig,
    out_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let root = if value == SYNTHETIC {
        let dir = out_dir.join(SYNTHETIC_DATA_DIR);
        if DatasetFiles::from_path(&dir).is_err() {
            let synth = data::synth::SynthConfig {
                seed: cfg.data.seed,
                ..Default::default()
            };
            data::synth::write_dataset(
                &synth,
                &dir,
                cfg.data.synthetic_train_rows,
                cfg.data.synthetic_val_rows,
            )?;
        }
        dir.to_string_lossy().into_owned()
    } else {
        value.to_string()
    };
    if Path::new(&root).is_file() {
        return Ok(vec![PathBuf::from(root)]);
    }
    Ok(DatasetFiles::locate(&root)?.split(split)?.to_vec())
}

/// Files of a model folder that a checkpoint copies verbatim (tokenizer, processor, generation
/// and chat-template files): every file but `config.json`, the weights and their index.
fn model_side_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let path = entry.map_err(|e| TrainError::io(dir, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let copy = path.is_file()
            && name != "config.json"
            && name != INDEX_FILE
            && !name.ends_with(".safetensors")
            && !name.ends_with(".tmp")
            && (name.ends_with(".json") || name.ends_with(".txt") || name.ends_with(".jinja"));
        if copy {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The token ids of every reference response and ground truth of the training split, plus the
/// end tokens: the output vocabulary of `model.output_vocab = "dataset"`.
fn dataset_vocab(cfg: &TrainConfig, files: &[PathBuf], processor: &Processor) -> Result<Vec<i64>> {
    let mut loader = Loader::open(files, loader_config(cfg, 256, false, 0), Cursor::default())?;
    let mut ids: std::collections::BTreeSet<i64> = DEFAULT_STOP_IDS.into_iter().collect();
    while let Some(batch) = loader.next_batch_of(0)? {
        for s in &batch.samples {
            let r = &s.record;
            for text in [
                r.reference_response.as_deref(),
                Some(r.ground_truth.as_str()),
            ]
            .into_iter()
            .flatten()
            {
                ids.extend(processor.tokenize(text)?);
            }
        }
    }
    Ok(ids.into_iter().collect())
}

fn loader_config(cfg: &TrainConfig, batch_size: usize, shuffle: bool, seed: u64) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        seed,
        shuffle,
        drop_last: shuffle,
        columns: ColumnNames {
            prompt: cfg.data.prompt_key.clone(),
            image: cfg.data.image_key.clone(),
            answer: cfg.data.answer_key.clone(),
        },
        checks: match cfg.reward.kind {
            RewardKind::Spatial => data::Checks::Spatial,
            RewardKind::R1v => data::Checks::Plain,
        },
        ..LoaderConfig::default()
    }
}

fn bar(len: u64, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

impl Trainer {
    /// Prepares a run: output folder, model (built, local or from the hub cache), data
    /// (synthesised when asked), optimiser, and — with `opts.resume` — the checkpoint's weights,
    /// optimiser state, step, data cursor and RNG. Prints the memory plan and refuses plans that
    /// do not fit `trainer.device_memory_gib`.
    pub fn new(cfg: TrainConfig, opts: TrainerOptions) -> Result<Self> {
        let device = resolve_device(&cfg.trainer.device)?;
        let out_dir = cfg.trainer.output_dir.clone();
        if opts.overwrite && out_dir.exists() {
            fs::remove_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        }
        fs::create_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        let checkpoints =
            CheckpointManager::new(&out_dir, cfg.trainer.save_limit, DEFAULT_MAX_SHARD_BYTES);
        let resume_dir = match &opts.resume {
            Some(p) if p.join(crate::grpo::checkpoint::TRAINER_STATE_FILE).exists() => {
                Some(p.clone())
            }
            Some(p) => Some(
                CheckpointManager::new(p, 1, DEFAULT_MAX_SHARD_BYTES)
                    .latest()?
                    .ok_or_else(|| {
                        TrainError::Config(format!(
                            "--resume {}: neither a checkpoint nor a folder holding checkpoint-<step>",
                            p.display()
                        ))
                    })?,
            ),
            None => {
                if !opts.dry {
                    if let Some(existing) = checkpoints.latest()? {
                        return Err(TrainError::Config(format!(
                            "{} already holds {}; continue it with --resume {}, or start over with --overwrite or another --set trainer.output_dir=…",
                            out_dir.display(),
                            existing.display(),
                            out_dir.display()
                        )));
                    }
                }
                None
            }
        };

        let model_dir = resolve_model_dir(&cfg, &out_dir)?;
        let train_files =
            resolve_split(&cfg.data.train_files, &cfg.data.train_split, &cfg, &out_dir)?;
        let val_files = resolve_split(&cfg.data.val_files, &cfg.data.val_split, &cfg, &out_dir)?;
        if cfg.sft.response_column != "reference_response" {
            return Err(TrainError::Config(format!(
                "sft.response_column = {:?}: only the reference_response column is read",
                cfg.sft.response_column
            )));
        }

        let config_text = fs::read_to_string(model_dir.join("config.json"))
            .map_err(|e| TrainError::io(model_dir.join("config.json"), e))?;
        let config_json: serde_json::Value = serde_json::from_str(&config_text)?;
        let shape = ModelShape::from_hf_config(&config_json)?;
        let capacity = (cfg.trainer.device_memory_gib * GIB) as u64;
        let plan = MemoryPlan::estimate(&cfg, &shape, capacity);
        if opts.progress {
            eprint!("{plan}");
        }
        plan.check()?;

        let processor = Processor::from_model_dir(&model_dir)?;
        let kind = weight_kind(cfg.model.dtype);
        // a checkpoint is a complete model folder: resuming loads the weights from it directly
        let weights_dir = resume_dir.as_deref().unwrap_or(&model_dir);
        let mut policy = Qwen2_5VLForConditionalGeneration::load(weights_dir, device, kind)?;
        let mut copy_files = model_side_files(&model_dir)?;
        if cfg.model.output_vocab == OutputVocabMode::Dataset {
            let ids = dataset_vocab(&cfg, &train_files, &processor)?;
            let path = out_dir.join(OUTPUT_VOCAB_FILE);
            fs::write(&path, serde_json::to_string(&ids)?).map_err(|e| TrainError::io(&path, e))?;
            policy.restrict_output_vocab(&ids)?;
            copy_files.retain(|p| !p.ends_with(OUTPUT_VOCAB_FILE));
            copy_files.push(path);
        } else {
            // a resumed checkpoint's own restriction does not outlive a switch to the full vocabulary
            policy.clear_output_vocab();
        }
        let trainable: Vec<(String, Tensor)> = policy
            .named_tensors()
            .into_iter()
            .filter(|(name, _)| !(cfg.model.freeze_vision_tower && name.starts_with("visual.")))
            .collect();
        for (_, t) in &trainable {
            let _ = t.shallow_clone().set_requires_grad(true);
        }
        let mut optimizer = AnyPrecisionAdamW::new(trainable, cfg.adamw_config())?;

        let mut cursor = Cursor::default();
        let mut rng = SplitMix64::new(cfg.trainer.seed);
        let mut rl_step = 0;
        let mut optimizer_steps = 0;
        let mut reference_dir = model_dir.clone();
        if let Some(dir) = &resume_dir {
            let state = restore_state(dir, Some(&mut optimizer))?;
            rl_step = state.rl_step;
            optimizer_steps = state.optimizer_step;
            cursor = serde_json::from_value(state.data_cursor.clone())
                .map_err(|e| TrainError::Config(format!("{}: data cursor: {e}", dir.display())))?;
            let seed = state
                .rng
                .get("sampler")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| {
                    TrainError::Config(format!(
                        "{}: trainer state has no sampler RNG",
                        dir.display()
                    ))
                })?;
            rng = SplitMix64::new(seed);
            if let Some(r) = state.extra.get("reference_model").and_then(|v| v.as_str()) {
                reference_dir = PathBuf::from(r);
            }
        }
        let loader = Loader::open(
            &train_files,
            loader_config(
                &cfg,
                cfg.data.rollout_batch_size,
                cfg.data.shuffle,
                cfg.data.seed,
            ),
            cursor,
        )?;
        let similarity: Box<dyn LabelSimilarity> = match &cfg.reward.word_vectors {
            Some(path) => Box::new(WordVectorSimilarity::from_file(path).map_err(|e| {
                TrainError::Config(format!("reward.word_vectors {}: {e}", path.display()))
            })?),
            None => Box::new(ExactLabelSimilarity),
        };
        let logger = if opts.dry {
            None
        } else {
            fs::write(out_dir.join(CONFIG_FILE), cfg.to_toml_string()?)
                .map_err(|e| TrainError::io(out_dir.join(CONFIG_FILE), e))?;
            Some(MetricsLogger::create(&out_dir)?)
        };
        let builder = PromptBuilder {
            min_pixels: cfg.data.min_pixels,
            max_pixels: cfg.data.max_pixels,
            max_prompt_length: cfg.data.max_prompt_length,
            format_prompt: cfg.data.format_prompt.clone(),
        };
        Ok(Trainer {
            copy_files,
            cfg,
            opts,
            device,
            out_dir,
            model_dir,
            reference_dir,
            config_json,
            processor,
            builder,
            policy,
            reference: None,
            optimizer,
            train_files,
            val_files,
            loader,
            rng,
            rl_step,
            optimizer_steps,
            logger,
            checkpoints,
            similarity,
            resumed: resume_dir.is_some(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// RL steps completed.
    pub fn rl_step(&self) -> u64 {
        self.rl_step
    }

    /// Whether the run continues a checkpoint.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The output folder.
    pub fn output_dir(&self) -> &Path {
        &self.out_dir
    }

    /// The policy model.
    pub fn policy(&self) -> &Qwen2_5VLForConditionalGeneration {
        &self.policy
    }

    fn say(&self, line: &str) {
        if self.opts.progress {
            eprintln!("{line}");
        }
    }

    /// Supervised warm-up (`[sft]`): `sft.steps` optimiser steps of `sft.batch_size` rows at the
    /// constant `sft.lr`, with a fresh optimiser; writes `<output>/sft/checkpoint-<steps>` (the
    /// frozen reference of the RL phase) and `<output>/sft/metrics.jsonl`. Returns the folder.
    pub fn run_sft(&mut self) -> Result<PathBuf> {
        let sft = self.cfg.sft.clone();
        let dir = self.out_dir.join(SFT_DIR);
        let mut loader = Loader::open(
            &self.train_files,
            loader_config(
                &self.cfg,
                sft.batch_size,
                true,
                self.cfg.data.seed.wrapping_add(1),
            ),
            Cursor::default(),
        )?;
        let params: Vec<(String, Tensor)> = self
            .optimizer
            .params()
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let mut optimizer = AnyPrecisionAdamW::new(params, self.cfg.adamw_config())?;
        let mut logger = if self.opts.dry {
            None
        } else {
            Some(MetricsLogger::create(&dir)?)
        };
        let pb = bar(sft.steps as u64, "sft", self.opts.progress);
        let micro = self.cfg.actor.micro_batch_size_per_device_for_update;
        let mut last = 0.0;
        for step in 1..=sft.steps {
            let started = Instant::now();
            let batch = loader.next_batch()?;
            let prompts = self.builder.encode_all(&self.processor, &batch.samples)?;
            let targets = target_ids(&self.processor, &prompts, self.cfg.data.max_response_length)?;
            let stats = sft_step(
                &self.policy,
                &prompts,
                &targets,
                micro,
                &mut optimizer,
                sft.lr,
                self.cfg.actor.max_grad_norm,
            )?;
            last = stats.loss;
            pb.set_message(format!("loss {:.3}", stats.loss));
            pb.inc(1);
            if let Some(l) = logger.as_mut() {
                let scalars = BTreeMap::from([
                    ("sft/loss".to_string(), stats.loss),
                    ("sft/grad_norm".to_string(), stats.grad_norm),
                    ("sft/tokens".to_string(), stats.tokens as f64),
                    ("sft/lr".to_string(), sft.lr),
                    ("time/step".to_string(), started.elapsed().as_secs_f64()),
                ]);
                l.log(step as u64, &scalars)?;
            }
        }
        pb.finish_and_clear();
        self.say(&format!(
            "sft: {} steps of {} rows, final loss {last:.3}",
            sft.steps, sft.batch_size
        ));
        let tensors = self.policy.named_tensors();
        let state = TrainerState {
            rl_step: 0,
            optimizer_step: sft.steps as u64,
            data_cursor: json!(loader.cursor()),
            rng: json!({}),
            optimizer_param_steps: Vec::new(),
            extra: json!({"phase": "sft"}),
        };
        let saved = CheckpointManager::new(&dir, 1, DEFAULT_MAX_SHARD_BYTES).save(
            sft.steps as u64,
            &ModelFiles {
                tensors: &tensors,
                save_kind: None,
                config_json: &self.config_json,
                copy_files: &self.copy_files,
            },
            None,
            &state,
        )?;
        self.reference_dir = saved.clone();
        self.reference = None;
        Ok(saved)
    }

    fn ensure_reference(&mut self) -> Result<()> {
        if self.reference.is_none() && self.cfg.algorithm.use_kl_loss {
            let device = if self.cfg.model.offload_reference {
                Device::Cpu
            } else {
                self.device
            };
            let mut reference = Qwen2_5VLForConditionalGeneration::load(
                &self.reference_dir,
                device,
                weight_kind(self.cfg.model.dtype),
            )?;
            // the reference keeps the output vocabulary its checkpoint was saved with
            let saved = self.reference_dir.join(OUTPUT_VOCAB_FILE);
            if saved.is_file() {
                reference.restrict_output_vocab(&read_output_vocab(&saved)?)?;
            }
            self.reference = Some(reference);
        }
        Ok(())
    }

    fn sampling(&self, temperature: f64) -> SamplingConfig {
        let forced = self.opts.forced_response_length;
        SamplingConfig {
            max_new_tokens: forced.unwrap_or(self.cfg.data.max_response_length),
            greedy: temperature == 0.0,
            temperature: if temperature == 0.0 { 1.0 } else { temperature },
            top_p: self.cfg.rollout.top_p,
            top_k: self.cfg.rollout.top_k.max(0) as usize,
            stop_token_ids: if forced.is_some() {
                Vec::new()
            } else {
                DEFAULT_STOP_IDS.to_vec()
            },
            pad_token_id: ENDOFTEXT_ID,
        }
    }

    /// Generates on the whole validation split at `rollout.val_temperature` with a sampler
    /// seeded from `trainer.seed` (the same draws at every validation) and scores it.
    pub fn validate(&mut self) -> Result<ValidationReport> {
        let mut loader = Loader::open(
            &self.val_files,
            loader_config(&self.cfg, self.cfg.data.val_batch_size, false, 0),
            Cursor::default(),
        )?;
        let mut rng = SplitMix64::new(self.cfg.trainer.seed ^ VALIDATION_SEED_SALT);
        let sampling = self.sampling(self.cfg.rollout.val_temperature);
        let n = self.cfg.rollout.val_n;
        let pb = bar(
            loader.rows_per_epoch() * n as u64,
            "validate",
            self.opts.progress,
        );
        let mut all = Vec::new();
        while let Some(batch) = loader.next_batch_of(0)? {
            let prompts = self.builder.encode_all(&self.processor, &batch.samples)?;
            let samples = sample_responses(
                &self.policy,
                &prompts,
                n,
                &sampling,
                self.cfg.rollout.generation_batch_size,
                &mut rng,
                &mut |_| {},
            )?;
            pb.inc(samples.len() as u64);
            all.extend(score_samples(
                &self.processor,
                &prompts,
                samples,
                self.cfg.reward.kind,
                self.similarity.as_ref(),
            )?);
        }
        pb.finish_and_clear();
        Ok(ValidationReport::from_rollouts(&all))
    }

    /// One RL step (spec §3.2): rollouts, rewards, old and reference log-probs, GRPO advantages
    /// and the actor update.
    pub fn step(&mut self) -> Result<StepReport> {
        self.ensure_reference()?;
        let mut times = PhaseTimes::default();
        let n = self.cfg.rollout.n;
        let batch = self.loader.next_batch()?;
        let prompts = self.builder.encode_all(&self.processor, &batch.samples)?;

        let t = Instant::now();
        let sampling = self.sampling(self.cfg.rollout.temperature);
        let pb = bar((prompts.len() * n) as u64, "rollout", self.opts.progress);
        let samples = sample_responses(
            &self.policy,
            &prompts,
            n,
            &sampling,
            self.cfg.rollout.generation_batch_size,
            &mut self.rng,
            &mut |done| pb.set_position(done as u64),
        )?;
        pb.finish_and_clear();
        times.add(Phase::Rollout, t);

        let t = Instant::now();
        let rollouts = score_samples(
            &self.processor,
            &prompts,
            samples,
            self.cfg.reward.kind,
            self.similarity.as_ref(),
        )?;
        times.add(Phase::Reward, t);

        let update = self.update(&prompts, &rollouts, &mut times)?;
        self.rl_step += 1;
        self.optimizer_steps += update.0.grad_norms.len() as u64;
        let response_tokens = rollouts.iter().map(|r| r.ids.len()).sum();
        let report = StepReport {
            step: self.rl_step,
            rollouts: ValidationReport::from_rollouts(&rollouts),
            update: update.0,
            lr: update.1,
            times,
            response_tokens,
        };
        self.log_step(&report, &prompts, &rollouts)?;
        Ok(report)
    }

    fn update(
        &mut self,
        prompts: &[PromptItem],
        rollouts: &[Rollout],
        times: &mut PhaseTimes,
    ) -> Result<(UpdateMetrics, f64)> {
        let cfg = &self.cfg;
        let temperature = cfg.rollout.temperature;
        let micro_exp = cfg.actor.micro_batch_size_per_device_for_experience;
        let sequences: Vec<SequenceRef<'_>> = rollouts
            .iter()
            .map(|r| SequenceRef {
                prompt: &prompts[r.prompt],
                response: &r.ids,
            })
            .collect();
        let lengths: Vec<usize> = rollouts.iter().map(|r| r.ids.len()).collect();
        let rows = rollouts.len();

        let t = Instant::now();
        let old = RlStep::compute_log_probs(
            &mut ModelPolicy::new(&self.policy, sequences.clone(), temperature),
            rows,
            micro_exp,
        )?;
        times.add(Phase::OldLogProbs, t);

        let t = Instant::now();
        let reference = match &self.reference {
            Some(model) => {
                // An offloaded reference lives on the CPU and visits the device for its pass.
                let visiting;
                let model = if model.device() != self.device {
                    visiting = model.to_device(self.device)?;
                    &visiting
                } else {
                    model
                };
                let lp = RlStep::compute_log_probs(
                    &mut ModelPolicy::new(model, sequences.clone(), temperature),
                    rows,
                    micro_exp,
                )?;
                Some(lp.f_to_device(self.device)?)
            }
            None => None,
        };
        times.add(Phase::RefLogProbs, t);

        let t = Instant::now();
        let scores: Vec<f32> = rollouts.iter().map(|r| r.score.overall as f32).collect();
        let groups: Vec<u64> = rollouts.iter().map(|r| r.prompt as u64).collect();
        let batch = RolloutBatch::from_scores(
            response_mask(&lengths, self.device)?,
            old,
            reference,
            &scores,
            &groups,
        )?;
        let lr = cfg.lr_schedule().lr_at(self.rl_step);
        let step = RlStep::new(cfg.update_config())?;
        let metrics = step.update(
            &mut ModelPolicy::new(&self.policy, sequences, temperature),
            &batch,
            &mut self.optimizer,
            lr,
        )?;
        times.add(Phase::Update, t);
        Ok((metrics, lr))
    }

    fn log_step(
        &mut self,
        report: &StepReport,
        prompts: &[PromptItem],
        rollouts: &[Rollout],
    ) -> Result<()> {
        let step = report.step;
        let Some(logger) = self.logger.as_mut() else {
            return Ok(());
        };
        let u = &report.update;
        let mut s = report.rollouts.scalars("reward");
        let clipped = rollouts.iter().filter(|r| !r.stopped).count() as f64;
        s.insert(
            "response_length/mean".into(),
            report.rollouts.response_length,
        );
        s.insert(
            "response_length/clip_ratio".into(),
            clipped / rollouts.len().max(1) as f64,
        );
        s.insert("actor/pg_loss".into(), u.pg_loss);
        s.insert("actor/pg_clipfrac_higher".into(), u.pg_clipfrac_higher);
        s.insert("actor/pg_clipfrac_lower".into(), u.pg_clipfrac_lower);
        s.insert("actor/ppo_kl".into(), u.ppo_kl);
        s.insert("actor/entropy_loss".into(), u.entropy_loss);
        if let Some(kl) = u.kl_loss {
            s.insert("actor/kl_loss".into(), kl);
        }
        let gn = u.grad_norms.iter().sum::<f64>() / u.grad_norms.len().max(1) as f64;
        s.insert("actor/grad_norm".into(), gn);
        s.insert("actor/skipped_steps".into(), u.skipped_steps as f64);
        s.insert("actor/lr".into(), report.lr);
        for phase in Phase::ALL {
            s.insert(format!("time/{}", phase.name()), report.times.get(phase));
        }
        s.insert("time/step".into(), report.times.total());
        let rollout_s = report.times.get(Phase::Rollout).max(1e-9);
        s.insert(
            "perf/rollout_tokens_per_s".into(),
            report.response_tokens as f64 / rollout_s,
        );
        s.insert(
            "perf/peak_rss_gib".into(),
            peak_rss_bytes().unwrap_or(0) as f64 / GIB,
        );
        logger.log(step, &s)?;
        let freq = self.cfg.trainer.sample_freq as u64;
        if freq > 0 && step.is_multiple_of(freq) {
            let n = self.cfg.rollout.n;
            let picked: Vec<LoggedSample<'_>> = rollouts
                .iter()
                .step_by(n.max(1))
                .take(4)
                .map(|r| LoggedSample {
                    step,
                    prompt: &prompts[r.prompt].problem,
                    response: &r.text,
                    ground_truth: &prompts[r.prompt].ground_truth,
                    reward: r.score.overall,
                    components: BTreeMap::from([
                        ("format".to_string(), r.score.format),
                        ("accuracy".to_string(), r.score.accuracy),
                        ("count".to_string(), r.score.count),
                        ("spatial".to_string(), r.score.spatial),
                    ]),
                })
                .collect();
            logger.log_samples(&picked)?;
        }
        Ok(())
    }

    /// Logs a validation report at the current RL step.
    pub fn log_validation(&mut self, report: &ValidationReport) -> Result<()> {
        if let Some(logger) = self.logger.as_mut() {
            logger.log(self.rl_step, &report.scalars("val"))?;
        }
        Ok(())
    }

    /// Writes `checkpoint-<rl_step>` (weights in the HF layout, optimiser, step, data cursor,
    /// sampler RNG, reference model path), pruning to `trainer.save_limit`.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let tensors = self.policy.named_tensors();
        let state = TrainerState {
            rl_step: self.rl_step,
            optimizer_step: self.optimizer_steps,
            data_cursor: json!(self.loader.cursor()),
            rng: json!({"sampler": self.rng.state()}),
            optimizer_param_steps: Vec::new(),
            extra: json!({
                "reference_model": self.reference_dir,
                "base_model": self.model_dir,
            }),
        };
        Ok(self.checkpoints.save(
            self.rl_step,
            &ModelFiles {
                tensors: &tensors,
                save_kind: None,
                config_json: &self.config_json,
                copy_files: &self.copy_files,
            },
            Some(&self.optimizer),
            &state,
        )?)
    }

    /// The whole run: supervised warm-up when enabled (fresh runs only), validation before
    /// training, `trainer.max_steps` RL steps with validation every `val_freq` and checkpoints
    /// every `save_freq` and at the end. Returns the first and last validation reports.
    pub fn run(&mut self) -> Result<RunSummary> {
        let started = Instant::now();
        if self.cfg.sft.enabled && !self.resumed {
            let dir = self.run_sft()?;
            self.say(&format!("sft checkpoint: {}", dir.display()));
        }
        let mut summary = RunSummary::default();
        let max_steps = self.cfg.trainer.max_steps as u64;
        if self.cfg.trainer.val_before_train && self.rl_step == 0 {
            let v = self.validate()?;
            self.say(&format!("validation before GRPO: {v}"));
            self.log_validation(&v)?;
            summary.before = Some(v);
        }
        while self.rl_step < max_steps {
            let r = self.step()?;
            self.say(&step_line(&r, max_steps));
            let step = self.rl_step;
            let val_freq = self.cfg.trainer.val_freq as u64;
            if (val_freq > 0 && step.is_multiple_of(val_freq)) || step == max_steps {
                let v = self.validate()?;
                self.say(&format!("validation at step {step}: {v}"));
                self.log_validation(&v)?;
                summary.after = Some(v);
            }
            let save_freq = self.cfg.trainer.save_freq as u64;
            if (save_freq > 0 && step.is_multiple_of(save_freq)) || step == max_steps {
                let dir = self.save_checkpoint()?;
                self.say(&format!("saved {}", dir.display()));
                summary.checkpoint = Some(dir);
            }
        }
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }
}

/// Outcome of [`Trainer::run`].
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Validation before the first RL step (when run).
    pub before: Option<ValidationReport>,
    /// The last validation.
    pub after: Option<ValidationReport>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The one-line summary of an RL step.
pub fn step_line(r: &StepReport, max_steps: u64) -> String {
    let u = &r.update;
    let times: Vec<String> = Phase::ALL
        .iter()
        .map(|p| format!("{} {:.1}", p.name(), r.times.get(*p)))
        .collect();
    format!(
        "step {}/{max_steps} | reward {:.3} (fmt {:.2} acc {:.2} cnt {:.2} sp {:.2}) | len {:.0} | kl {:.4} | clip {:.3} | gnorm {:.2} | lr {:.1e} | {:.1}s ({})",
        r.step,
        r.rollouts.reward,
        r.rollouts.format,
        r.rollouts.accuracy,
        r.rollouts.count,
        r.rollouts.spatial,
        r.rollouts.response_length,
        u.kl_loss.unwrap_or(0.0),
        u.pg_clipfrac_higher,
        u.grad_norms.iter().copied().fold(0.0, f64::max),
        r.lr,
        r.times.total(),
        times.join(", ")
    )
}
