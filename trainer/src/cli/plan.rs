//! `spatialthinker plan`: the per-device memory plan of a recipe — every phase of an RL step
//! with its items and peak — from the model's `config.json` alone (no weights are loaded), and
//! whether it fits a device of a given size.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use trainer::model::config::Qwen2_5VLConfig;
use trainer::train::config::TrainConfig;
use trainer::train::memory::{MemoryPlan, ModelShape};
use trainer::train::setup::resolve_device;
use trainer::train::tiny::{preset_shape, tiny_config_json, DEEP_RANDOM, MID_RANDOM, TINY_RANDOM};

use super::train::ConfigArgs;

/// The published `config.json` of the hub checkpoints the recipes name, shipped under
/// `configs/models/` so their plans need neither the weights nor the hub.
const SHIPPED_CONFIGS: [(&str, &str); 2] = [
    (
        "Qwen/Qwen2.5-VL-7B-Instruct",
        include_str!("../../../configs/models/Qwen2.5-VL-7B-Instruct/config.json"),
    ),
    (
        "Qwen/Qwen2.5-VL-3B-Instruct",
        include_str!("../../../configs/models/Qwen2.5-VL-3B-Instruct/config.json"),
    ),
];
const GIB: f64 = (1u64 << 30) as f64;

/// Print the per-device memory plan of a recipe and check it against a device.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  spatialthinker plan --config configs/spatialthinker-7b.toml --gpus 1 --gpu-memory-gib 141
  spatialthinker plan --config configs/spatialthinker-7b.toml --gpu-memory-gib 80
  spatialthinker plan --config configs/spatialthinker-3b.toml --gpu-memory-gib 80 \\
      --set actor.max_tokens_per_micro_batch=16384

The table lists, per phase of an RL step (rollout, the old/reference log-prob passes, the
update), what one device holds: weights, gradients, optimizer states, the reference, the KV
pool, activations and transients; items marked * exist at one moment of their phase only.
Exit status 0 when the plan fits (or the device memory is unknown); otherwise 1, with an error
that names the largest items and the --set changes that would make the plan fit. The model
shape comes from model.path: a random preset (tiny-random, mid-random, deep-random), a local
folder's config.json, the shipped configs/models/ shapes of Qwen/Qwen2.5-VL-{7B,3B}-Instruct,
or the Hugging Face cache.")]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Data-parallel ranks (GPUs). Each device's plan covers its share of the rollouts and of
    /// the update and 1/N of the optimizer states (ZeRO-1, `distributed.shard_optimizer`);
    /// weights, gradients and the reference are replicated on every rank.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub gpus: u64,
    /// Memory of one device in GiB (2^30 bytes); 10 % is kept as allocator headroom. Without
    /// it: trainer.device_memory_gib, else the free memory of the CUDA device trainer.device
    /// names, else not checked. A card's marketed GB is close to GiB: an "80 GB" H100 reports
    /// 81,559 MiB (79.6 GiB) and a "141 GB" H200 143,771 MiB (140.4 GiB) in nvidia-smi.
    #[arg(long, value_name = "GIB")]
    pub gpu_memory_gib: Option<f64>,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = args.config.load()?;
    let (text, source) = model_config_text(&cfg.model.path)?;
    let model = Qwen2_5VLConfig::from_json_str(&text)
        .with_context(|| format!("parsing the model config {source}"))?;
    let (capacity, capacity_source) = capacity(args.gpu_memory_gib, &cfg)?;
    let plan = MemoryPlan::estimate_ranks(
        &cfg,
        &ModelShape::from_config(&model),
        capacity,
        args.gpus as usize,
    );
    println!("model shape: {source}");
    println!("device memory: {capacity_source}");
    print!("{plan}");
    if plan.fits() == Some(false) {
        bail!("{}", plan.shortfall());
    }
    Ok(())
}

/// The device capacity in bytes (0: unknown) and where it came from.
fn capacity(flag: Option<f64>, cfg: &TrainConfig) -> Result<(u64, String)> {
    if let Some(gib) = flag {
        if !gib.is_finite() || gib <= 0.0 {
            bail!("--gpu-memory-gib {gib}: must be a positive number of GiB");
        }
        return Ok(((gib * GIB) as u64, format!("{gib} GiB (--gpu-memory-gib)")));
    }
    let gib = cfg.trainer.device_memory_gib;
    if gib > 0.0 {
        return Ok((
            (gib * GIB) as u64,
            format!("{gib} GiB (trainer.device_memory_gib)"),
        ));
    }
    let unknown = "unknown: not checked (pass --gpu-memory-gib)";
    Ok(match resolve_device(&cfg.trainer.device) {
        Ok(tch::Device::Cuda(index)) => match trainer::device::cuda_memory_info(index) {
            Some((free, total)) => (
                free,
                format!(
                    "{:.2} GiB free of {:.2} GiB on cuda:{index}",
                    free as f64 / GIB,
                    total as f64 / GIB
                ),
            ),
            None => (0, format!("cuda:{index} did not report it; {unknown}")),
        },
        Ok(_) => (0, format!("{unknown}; trainer.device is the CPU")),
        Err(e) => (0, format!("{unknown}; {e}")),
    })
}

/// The `config.json` text of `model.path` and a description of where it was found.
fn model_config_text(path: &str) -> Result<(String, String)> {
    if let Some(shape) = preset_shape(path) {
        let json = tiny_config_json(&shape);
        return Ok((json.to_string(), format!("the {path} preset")));
    }
    let local = Path::new(path);
    if local.is_dir() {
        let file = local.join("config.json");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("model.path {path}: reading {}", file.display()))?;
        return Ok((text, file.display().to_string()));
    }
    if let Some((_, text)) = SHIPPED_CONFIGS.iter().find(|(id, _)| *id == path) {
        let name = path.rsplit('/').next().unwrap_or(path);
        return Ok((
            text.to_string(),
            format!("configs/models/{name}/config.json (the published {path})"),
        ));
    }
    let cached = cached_config(path);
    match cached {
        Some(file) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            Ok((text, format!("{} (Hugging Face cache)", file.display())))
        }
        None => bail!(
            "model.path {path}: not a preset ({TINY_RANDOM}, {MID_RANDOM}, {DEEP_RANDOM}), not a \
             folder, not one of the shipped shapes ({}) and not in the Hugging Face cache ({}); \
             pass a folder holding its config.json, or fetch that file alone with \
             `huggingface-cli download {path} config.json`",
            SHIPPED_CONFIGS.map(|(id, _)| id).join(", "),
            data::hub::cache_dir().display()
        ),
    }
}

/// `config.json` of hub id `path` (`owner/name[@revision]`) in the Hugging Face cache: the
/// snapshot its ref names (`main` by default), without touching the network.
fn cached_config(path: &str) -> Option<PathBuf> {
    let (repo, revision) = path.split_once('@').unwrap_or((path, "main"));
    if repo.split('/').count() != 2 {
        return None;
    }
    let dir = data::hub::repo_cache_dir(&data::hub::cache_dir(), repo, data::hub::RepoType::Model);
    let commit = std::fs::read_to_string(dir.join("refs").join(revision))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let file = dir.join("snapshots").join(commit).join("config.json");
    file.is_file().then_some(file)
}
