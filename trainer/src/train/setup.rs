//! Set-up of a training run ([`Trainer::new`]): the output folder, the device, the model (built,
//! local or from the hub cache), the data (synthesised when asked), the optimiser, the memory
//! plan, and — when resuming — the checkpoint's weights, optimiser state, step, data cursor and
//! sampler RNG. Everything a run holds lives in [`Trainer`]'s fields.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use data::{ColumnNames, Cursor, DatasetFiles, Loader, LoaderConfig, RowRef};
use indicatif::{ProgressBar, ProgressStyle};
use rewards::{ExactLabelSimilarity, LabelSimilarity, WordVectorSimilarity};
use tch::{Device, Kind};

use super::checkpoint::{
    restore_state_sharded, CheckpointManager, DEFAULT_MAX_SHARD_BYTES, INDEX_FILE,
    TRAINER_STATE_FILE,
};
use super::config::{OutputVocabMode, TrainConfig, WeightDtype};
use super::memory::{MemoryPlan, ModelShape};
use super::metrics::MetricsLogger;
use super::rollout::PromptBuilder;
use super::row_filter::{checks_for, scan_split, skipped_rows_event, PromptLengthCheck, RowScan};
use super::tiny::{preset_shape, write_tiny_random};
use super::{Result, TrainError};
use crate::distributed::{DataParallel, FlatLayout};
use crate::generate::DEFAULT_STOP_IDS;
use crate::grpo::optim::AnyPrecisionAdamW;
use crate::model::config::Qwen2_5VLConfig;
use crate::model::{Qwen2_5VLForConditionalGeneration, OUTPUT_VOCAB_FILE};
use crate::processor::Processor;
use data::rng::SplitMix64;

/// `data.train_files` / `val_files` value that asks for the synthetic dataset.
pub const SYNTHETIC: &str = "synthetic";
/// Folder (under the output folder) of the base model built for `tiny-random`.
pub const BASE_MODEL_DIR: &str = "base-model";
/// Key of the trainer state's `extra` that records [`Trainer::rollout_logprobs_trusted`].
pub(super) const ROLLOUT_LOGPROBS_TRUSTED: &str = "rollout_logprobs_trusted";
/// Folder (under the output folder) of the synthetic dataset.
pub const SYNTHETIC_DATA_DIR: &str = "synthetic-data";
/// The resolved configuration, written into the output folder.
pub const CONFIG_FILE: &str = "config.toml";
const GIB: f64 = (1u64 << 30) as f64;

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
    /// The resolved configuration.
    pub(super) cfg: TrainConfig,
    /// How this run was started.
    pub(super) opts: TrainerOptions,
    /// Where the policy and the update live.
    pub(super) device: Device,
    /// `trainer.output_dir`.
    pub(super) out_dir: PathBuf,
    /// The starting model's folder (config, tokenizer and processor files are copied from it).
    pub(super) model_dir: PathBuf,
    /// Weights of the frozen reference: the starting model, or the warm-up's checkpoint.
    pub(super) reference_dir: PathBuf,
    /// The starting model's `config.json`, written into every checkpoint.
    pub(super) config_json: serde_json::Value,
    /// Tokenizer, processor and generation files copied into every checkpoint.
    pub(super) copy_files: Vec<PathBuf>,
    /// Chat template, tokenizer and image preprocessing.
    pub(super) processor: Processor,
    /// Dataset row → model prompt.
    pub(super) builder: PromptBuilder,
    /// The policy being trained.
    pub(super) policy: Qwen2_5VLForConditionalGeneration,
    /// The frozen reference, loaded on first use when the KL loss is on.
    pub(super) reference: Option<Qwen2_5VLForConditionalGeneration>,
    /// AdamW over the trainable tensors of `policy`.
    pub(super) optimizer: AnyPrecisionAdamW,
    /// Parquet files of the training split.
    pub(super) train_files: Vec<PathBuf>,
    /// Parquet files of the validation split.
    pub(super) val_files: Vec<PathBuf>,
    /// Prompt order and position over the training split (saved for resume).
    pub(super) loader: Loader,
    /// The rollout sampler's random stream (saved for resume).
    pub(super) rng: SplitMix64,
    /// RL steps completed.
    pub(super) rl_step: u64,
    /// Optimiser steps completed.
    pub(super) optimizer_steps: u64,
    /// `metrics.jsonl`, TensorBoard and samples (none in dry runs).
    pub(super) logger: Option<MetricsLogger>,
    /// Writes and prunes `checkpoint-<step>` folders.
    pub(super) checkpoints: CheckpointManager,
    /// Label similarity of the spatial reward's matching.
    pub(super) similarity: Box<dyn LabelSimilarity>,
    /// Whether this run continues a checkpoint.
    pub(super) resumed: bool,
    /// The training split's rows and those left out so far (at set-up and during the run).
    pub(super) train_scan: RowScan,
    /// Validation rows left out at set-up.
    pub(super) val_exclusion: BTreeSet<RowRef>,
    /// The other ranks of a data-parallel run (`None`: one process).
    pub(super) dp: Option<DataParallel>,
    /// With `algorithm.old_logprobs = "rollout"`: whether the engine's sampling log-probs are
    /// still taken as the old policy's (false once a step measured them off by more than
    /// `algorithm.rollout_logprobs_tolerance`; saved for resume).
    pub(super) rollout_logprobs_trusted: bool,
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

pub(super) fn weight_kind(dtype: WeightDtype) -> Kind {
    match dtype {
        WeightDtype::Bf16 => Kind::BFloat16,
        WeightDtype::F32 => Kind::Float,
    }
}

/// Bytes the memory plan may use: `trainer.device_memory_gib` when set, else a CUDA device's
/// free memory as its runtime reports it, else 0 (the CPU: not checked).
pub fn device_capacity(cfg: &TrainConfig, device: Device) -> u64 {
    if cfg.trainer.device_memory_gib > 0.0 {
        return (cfg.trainer.device_memory_gib * GIB) as u64;
    }
    match device {
        Device::Cuda(index) => crate::device::cuda_memory_info(index).map_or(0, |(free, _)| free),
        _ => 0,
    }
}

/// Resolves `model.path`: a random preset ([`preset_shape`]: `tiny-random`, built under
/// `out_dir` on first use), a local folder, or a hub id ([`crate::model::locate_checkpoint`]).
pub fn resolve_model_dir(cfg: &TrainConfig, out_dir: &Path) -> Result<PathBuf> {
    let path = &cfg.model.path;
    if let Some(shape) = preset_shape(path) {
        let dir = out_dir.join(BASE_MODEL_DIR);
        if !dir.join("model.safetensors").exists() {
            write_tiny_random(
                &dir,
                &shape,
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
                width: cfg.data.synthetic_image_size,
                height: cfg.data.synthetic_image_size,
                max_objects: cfg.data.synthetic_max_objects,
                categories: cfg.data.synthetic_categories.clone(),
                fixed_option_order: cfg.data.synthetic_fixed_option_order,
                short_instruction: cfg.data.synthetic_short_instruction,
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
fn dataset_vocab(
    cfg: &TrainConfig,
    files: &[PathBuf],
    exclude: &BTreeSet<RowRef>,
    processor: &Processor,
) -> Result<Vec<i64>> {
    let mut loader = Loader::open(
        files,
        loader_config(cfg, 256, false, 0, exclude),
        Cursor::default(),
    )?;
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

/// The dataset columns the config names.
pub(super) fn data_columns(cfg: &TrainConfig) -> ColumnNames {
    ColumnNames {
        prompt: cfg.data.prompt_key.clone(),
        image: cfg.data.image_key.clone(),
        answer: cfg.data.answer_key.clone(),
    }
}

/// A loader over the config's columns with the reward's row checks, leaving out `exclude`.
pub(super) fn loader_config(
    cfg: &TrainConfig,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    exclude: &BTreeSet<RowRef>,
) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        seed,
        shuffle,
        drop_last: shuffle,
        columns: data_columns(cfg),
        checks: checks_for(cfg.reward.kind),
        exclude: exclude.clone(),
        ..LoaderConfig::default()
    }
}

pub(super) fn bar(len: u64, what: &str, show: bool) -> ProgressBar {
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

/// The checkpoint a run continues: `--resume DIR` names a checkpoint or a folder holding
/// `checkpoint-<step>` (the newest is taken); without it, an output folder that already holds
/// a checkpoint is refused unless the run is dry.
fn find_resume_dir(
    opts: &TrainerOptions,
    checkpoints: &CheckpointManager,
    out_dir: &Path,
) -> Result<Option<PathBuf>> {
    Ok(match &opts.resume {
        Some(p) if p.join(TRAINER_STATE_FILE).exists() => Some(p.clone()),
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
    })
}

impl Trainer {
    /// Prepares a run: output folder, model (built, local or from the hub cache), data
    /// (synthesised when asked), optimiser, and — with `opts.resume` — the checkpoint's weights,
    /// optimiser state, step, data cursor and RNG. Prints the memory plan and, before touching
    /// the dataset, refuses a plan that does not fit the device ([`device_capacity`]) unless
    /// `trainer.allow_overcommit` is set.
    pub fn new(cfg: TrainConfig, opts: TrainerOptions) -> Result<Self> {
        Self::new_with(cfg, opts, None)
    }

    /// [`Self::new`] as one rank of a data-parallel run ([`DataParallel`]; docs/distributed.md):
    /// rank 0 prepares the output folder, model and data while the others wait, then they all
    /// load the same weights, rank 0's are broadcast, and each rank keeps its shard of the
    /// optimiser state. Only rank 0 logs and prints.
    pub fn new_with(
        cfg: TrainConfig,
        mut opts: TrainerOptions,
        dp: Option<DataParallel>,
    ) -> Result<Self> {
        let main = dp.as_ref().is_none_or(DataParallel::is_main);
        if let Some(dp) = &dp {
            cfg.validate_world(dp.world())?;
            if !main {
                // rank 0 writes what the others read (base model, data, output folder) first
                opts.progress = false;
                opts.overwrite = false;
                dp.barrier()?;
            }
        }
        let device = match &dp {
            Some(dp) => dp.device(resolve_device(&cfg.trainer.device)?),
            None => resolve_device(&cfg.trainer.device)?,
        };
        let out_dir = cfg.trainer.output_dir.clone();
        if opts.overwrite && out_dir.exists() {
            fs::remove_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        }
        fs::create_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        let checkpoints =
            CheckpointManager::new(&out_dir, cfg.trainer.save_limit, DEFAULT_MAX_SHARD_BYTES);
        let resume_dir = find_resume_dir(&opts, &checkpoints, &out_dir)?;

        let model_dir = resolve_model_dir(&cfg, &out_dir)?;
        let config_text = fs::read_to_string(model_dir.join("config.json"))
            .map_err(|e| TrainError::io(model_dir.join("config.json"), e))?;
        let config_json: serde_json::Value = serde_json::from_str(&config_text)?;
        let model_config = Qwen2_5VLConfig::from_json_str(&config_text)?;
        // the memory plan, before the dataset is touched: a run that cannot fit stops here
        let plan = MemoryPlan::estimate_ranks(
            &cfg,
            &ModelShape::from_config(&model_config),
            device_capacity(&cfg, device),
            dp.as_ref().map_or(1, DataParallel::world),
        );
        match plan.check() {
            Ok(()) if opts.progress => eprint!("{plan}"),
            Ok(()) => {}
            // the refusal carries the whole plan
            Err(e) if cfg.trainer.allow_overcommit => {
                eprintln!("warning: trainer.allow_overcommit is set, starting anyway: {e}")
            }
            Err(e) => return Err(e),
        }

        let train_files =
            resolve_split(&cfg.data.train_files, &cfg.data.train_split, &cfg, &out_dir)?;
        let val_files = resolve_split(&cfg.data.val_files, &cfg.data.val_split, &cfg, &out_dir)?;

        let processor = Processor::from_model_dir(&model_dir)?;
        let builder = PromptBuilder {
            min_pixels: cfg.data.min_pixels,
            max_pixels: cfg.data.max_pixels,
            max_prompt_length: cfg.data.max_prompt_length,
            format_prompt: cfg.data.format_prompt.clone(),
        };
        // rows that cannot be used are left out before anything is trained (docs/architecture.md)
        let check = PromptLengthCheck {
            processor: &processor,
            builder: &builder,
        };
        let train_scan = scan_split("scan train", &train_files, &cfg, check, opts.progress)?;
        let val_scan = scan_split("scan val", &val_files, &cfg, check, opts.progress)?;
        train_scan.check_budget(cfg.data.max_skipped_fraction)?;
        val_scan.check_budget(cfg.data.max_skipped_fraction)?;
        let train_exclusion = train_scan.exclusion();
        let kind = weight_kind(cfg.model.dtype);
        // a checkpoint is a complete model folder: resuming loads the weights from it directly
        let weights_dir = super::lora::weights_dir(&cfg, resume_dir.as_deref(), &model_dir);
        let mut policy = Qwen2_5VLForConditionalGeneration::load(weights_dir, device, kind)?;
        let mut copy_files = model_side_files(&model_dir)?;
        if cfg.model.output_vocab == OutputVocabMode::Dataset {
            let ids = dataset_vocab(&cfg, &train_files, &train_exclusion, &processor)?;
            let path = out_dir.join(OUTPUT_VOCAB_FILE);
            if main {
                fs::write(&path, serde_json::to_string(&ids)?)
                    .map_err(|e| TrainError::io(&path, e))?;
            }
            policy.restrict_output_vocab(&ids)?;
            copy_files.retain(|p| !p.ends_with(OUTPUT_VOCAB_FILE));
            copy_files.push(path);
        } else {
            // a resumed checkpoint's own restriction does not outlive a switch to the full vocabulary
            policy.clear_output_vocab();
        }
        // the prompt template the checkpoints record for infer, eval and serve
        copy_files.retain(|p| !p.ends_with(crate::infer::prompt::PROMPT_TEMPLATE_FILE));
        if main {
            copy_files.extend(super::prompt_template::record_prompt_template(
                &cfg,
                &builder,
                &train_files,
                &train_exclusion,
                &out_dir,
            )?);
        }
        // every weight, or with `[model.lora]` the adapters only (the base stays frozen)
        let trainable = super::lora::trainable_tensors(&cfg, &mut policy, resume_dir.as_deref())?;
        for (_, t) in &trainable {
            let _ = t.shallow_clone().set_requires_grad(true);
        }
        let mut optimizer = AnyPrecisionAdamW::new(trainable, cfg.adamw_config())?;
        if let Some(dp) = dp.as_ref().filter(|_| cfg.distributed.shard_optimizer) {
            // ZeRO-1: this rank keeps and updates its shard of the optimiser state
            let layout = FlatLayout::of(optimizer.params(), dp.world());
            optimizer = optimizer.with_shard(layout.owned(dp.rank()))?;
        }

        let mut cursor = Cursor::default();
        let mut rng = SplitMix64::new(cfg.trainer.seed);
        let mut rl_step = 0;
        let mut optimizer_steps = 0;
        let mut rollout_logprobs_trusted = true;
        let mut reference_dir = match &cfg.model.reference_path {
            Some(path) => crate::model::locate_checkpoint(path)
                .map_err(|e| TrainError::Config(format!("model.reference_path: {e}")))?,
            None => model_dir.clone(),
        };
        if let Some(dir) = &resume_dir {
            let shard = dp.as_ref().map(|d| (d.rank(), d.world()));
            let state = restore_state_sharded(dir, Some(&mut optimizer), shard)?;
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
            if let Some(t) = state
                .extra
                .get(ROLLOUT_LOGPROBS_TRUSTED)
                .and_then(|v| v.as_bool())
            {
                rollout_logprobs_trusted = t;
            }
        }
        let loader = Loader::open(
            &train_files,
            loader_config(
                &cfg,
                cfg.data.rollout_batch_size,
                cfg.data.shuffle,
                cfg.data.seed,
                &train_exclusion,
            ),
            cursor,
        )?;
        let similarity: Box<dyn LabelSimilarity> = match &cfg.reward.word_vectors {
            Some(path) => Box::new(WordVectorSimilarity::from_file(path).map_err(|e| {
                TrainError::Config(format!("reward.word_vectors {}: {e}", path.display()))
            })?),
            None => Box::new(ExactLabelSimilarity),
        };
        let logger = if opts.dry || !main {
            None
        } else {
            fs::write(out_dir.join(CONFIG_FILE), cfg.to_toml_string()?)
                .map_err(|e| TrainError::io(out_dir.join(CONFIG_FILE), e))?;
            let mut logger = MetricsLogger::create(&out_dir)?;
            for (split, scan) in [("train", &train_scan), ("val", &val_scan)] {
                if !scan.skipped.is_empty() {
                    let event = skipped_rows_event(split, &scan.skipped);
                    logger.log_event(rl_step, "skipped_rows", event)?;
                }
            }
            Some(logger)
        };
        Trainer {
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
            val_exclusion: val_scan.exclusion(),
            train_scan,
            dp,
            rollout_logprobs_trusted,
        }
        .synchronised(main)
    }

    /// A data-parallel trainer once set up: rank 0 releases the ranks waiting for its set-up,
    /// then every rank takes rank 0's weights, so all replicas start identical.
    fn synchronised(self, main: bool) -> Result<Self> {
        if let Some(dp) = &self.dp {
            if main {
                dp.barrier()?;
            }
            dp.broadcast_from_main(self.optimizer.params())?;
        }
        Ok(self)
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

    pub(super) fn say(&self, line: &str) {
        if self.opts.progress {
            eprintln!("{line}");
        }
    }
}
