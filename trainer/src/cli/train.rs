//! `spatialthinker train` and `spatialthinker sft`: run the GRPO recipe (with its optional
//! supervised warm-up) or the warm-up alone, from a TOML config or the embedded tiny CPU default.

use std::path::PathBuf;

use anyhow::{Context, Result};
use trainer::distributed::{Backend, DataParallel, DistEnv, LOST_RANK_EXIT_CODE};
use trainer::train::config::TrainConfig;
use trainer::train::{Trainer, TrainerOptions, DEFAULT_CONFIG, DEFAULT_CONFIG_NAME};

/// Where the configuration comes from and how to change it.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML recipe (configs/spatialthinker-7b.toml, -3b, vanilla-grpo-7b, tiny-cpu). Without it,
    /// the embedded configs/tiny-cpu.toml: a tiny random Qwen2.5-VL and a synthetic dataset on CPU.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one value, e.g. `--set actor.lr=2e-6 --set trainer.device=cuda` (repeatable;
    /// the value is parsed as TOML, else taken as a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl ConfigArgs {
    /// Loads the file (or the embedded default) with the overrides applied.
    pub fn load(&self) -> Result<TrainConfig> {
        Ok(match &self.config {
            Some(path) => TrainConfig::load(path, &self.overrides)
                .with_context(|| format!("loading {}", path.display()))?,
            None => {
                TrainConfig::from_toml_str(DEFAULT_CONFIG, &self.overrides, DEFAULT_CONFIG_NAME)?
            }
        })
    }
}

/// Train with GRPO (and the supervised warm-up when `[sft] enabled`).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  spatialthinker train                                   # tiny CPU demo: SFT warm-up, then GRPO
  spatialthinker train --config configs/spatialthinker-7b.toml --set trainer.device=cuda
  spatialthinker train --config configs/spatialthinker-7b.toml --resume runs/spatialthinker-7b
Outputs in trainer.output_dir: checkpoint-<step>/ (Hugging Face layout + optimizer and trainer
state), metrics.jsonl, tensorboard/, samples.jsonl, config.toml.")]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Continue from a checkpoint folder, or from the newest checkpoint of an output folder.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Delete trainer.output_dir first (its checkpoints, logs and generated data).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Only validate (the `--resume` checkpoint, else the starting model) and exit; e.g. with
    /// `--set rollout.val_temperature=0` for greedy validation.
    #[arg(long)]
    pub validate_only: bool,
    /// No progress bars or per-step lines.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Supervised warm-up only: cross-entropy on each row's `reference_response`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Writes <trainer.output_dir>/sft/checkpoint-<sft.steps> (Hugging Face layout) and
<trainer.output_dir>/sft/metrics.jsonl. Example:
  spatialthinker sft --set sft.steps=200 --set trainer.output_dir=runs/sft-only"
)]
pub struct SftArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Delete trainer.output_dir first.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = args.config.load()?;
    if args.print_config {
        print!("{}", cfg.to_toml_string()?);
        return Ok(());
    }
    // one rank of a job launched by `spatialthinker launch`, torchrun or srun
    let dp = join_job(&cfg)?;
    match dp.as_ref().map(|d| (d.rank(), d.world())) {
        // a rank's error says which rank it is
        Some((r, w)) => run_rank(args, cfg, dp).with_context(|| format!("rank {r} of {w}")),
        None => run_rank(args, cfg, dp),
    }
}

/// The data-parallel job this process belongs to (docs/distributed.md), `None` when it runs
/// alone. A rank that learns another one is lost prints why and exits at once with
/// [`LOST_RANK_EXIT_CODE`].
fn join_job(cfg: &TrainConfig) -> Result<Option<DataParallel>> {
    let Some(env) = DistEnv::from_env()? else {
        return Ok(None);
    };
    let device = trainer::train::setup::resolve_device(&cfg.trainer.device)?;
    let backend = Backend::for_device(device);
    let on_lost: Box<dyn Fn(&str) + Send> = Box::new(|msg: &str| {
        eprintln!("error: {msg}");
        // SAFETY: `_exit` ends the process without running atexit handlers or destructors,
        // which is what a rank must do while its main thread may be blocked inside a
        // collective; stderr is unbuffered, so the message is out.
        unsafe { libc::_exit(LOST_RANK_EXIT_CODE) }
    });
    let dp = DataParallel::init(&env, backend, &cfg.distributed, on_lost).with_context(|| {
        format!(
            "rank {} of {} joining the job at {}:{} ({})",
            env.rank,
            env.world_size,
            env.master_addr,
            env.master_port,
            backend.name()
        )
    })?;
    if dp.is_main() {
        eprintln!(
            "data parallel: {} ranks ({} per node), backend {}, optimizer {}",
            env.world_size,
            env.local_world_size,
            backend.name(),
            if cfg.distributed.shard_optimizer {
                "sharded (ZeRO-1)"
            } else {
                "replicated"
            }
        );
    }
    Ok(Some(dp))
}

fn run_rank(args: Args, cfg: TrainConfig, dp: Option<DataParallel>) -> Result<()> {
    let main = dp.as_ref().is_none_or(DataParallel::is_main);
    let quiet = args.quiet || !main;
    let source = args
        .config
        .config
        .as_ref()
        .map_or(DEFAULT_CONFIG_NAME.to_string(), |p| p.display().to_string());
    if !quiet {
        eprintln!(
            "config: {source}; model {}; output {}",
            cfg.model.path,
            cfg.trainer.output_dir.display()
        );
    }
    let mut trainer = Trainer::new_with(
        cfg,
        TrainerOptions {
            resume: args.resume,
            overwrite: args.overwrite,
            progress: !quiet,
            dry: args.validate_only,
            ..Default::default()
        },
        dp,
    )?;
    if trainer.resumed() && !quiet {
        eprintln!("resumed at RL step {}", trainer.rl_step());
    }
    if args.validate_only {
        let v = trainer.validate()?;
        trainer.finish()?;
        if main {
            println!("validation at step {}: {v}", trainer.rl_step());
        }
        return Ok(());
    }
    let summary = trainer.run()?;
    if !main {
        return Ok(());
    }
    let fmt = |v: &Option<trainer::train::RewardSummary>| {
        v.as_ref().map_or("not run".to_string(), |v| v.to_string())
    };
    println!("validation before GRPO: {}", fmt(&summary.before));
    println!("validation after GRPO:  {}", fmt(&summary.after));
    if let Some(dir) = &summary.checkpoint {
        println!("checkpoint: {}", dir.display());
    }
    if let Some(report) = &summary.report {
        println!("report: {}", report.display());
    }
    println!(
        "wall time: {:.1} s; logs: {}",
        summary.seconds,
        trainer.output_dir().display()
    );
    Ok(())
}

pub fn run_sft(args: SftArgs) -> Result<()> {
    let mut cfg = args.config.load()?;
    if cfg.sft.steps == 0 {
        anyhow::bail!("sft.steps is 0: set it, e.g. --set sft.steps=100");
    }
    cfg.sft.enabled = true;
    let mut trainer = Trainer::new(
        cfg,
        TrainerOptions {
            overwrite: args.overwrite,
            progress: !args.quiet,
            ..Default::default()
        },
    )?;
    let dir = trainer.run_sft()?;
    println!("sft checkpoint: {}", dir.display());
    Ok(())
}
