//! `spatialthinker bench`: `generate` (prefill and decode throughput of batched greedy
//! generation through the engine), `rollout` (the RL rollout workload, [`super::bench_rollout`])
//! and `train` (seconds per RL-step phase).
//!
//! Prompts are synthetic text ids (`bench_prompt_ids`), so `scripts/bench_hf_generate.py` can
//! feed transformers exactly the same inputs and print the ratio.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use trainer::generate::{Engine, EngineConfig, GroupRequest, SamplingConfig};
use trainer::model::Qwen2_5VLForConditionalGeneration;

use super::bench_rollout::{bench_rollout, RolloutArgs};

/// Benchmarks.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Greedy generation: prefill and decode tokens/s.
    Generate(GenerateArgs),
    /// The RL rollout workload (P prompts x n, natural stop lengths): tokens/s and row
    /// occupancy of continuous batching against static chunks, through the same engine.
    Rollout(RolloutArgs),
    /// RL steps: seconds per phase (rollout, reward, old and reference log-probs, update),
    /// tokens/s and peak memory, with no checkpoints or logs written.
    Train(TrainArgs),
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example (the TRL comparison setting: 2 prompts x 8 completions x 64 tokens):
  spatialthinker bench train --prompts 2 --group-size 8 --response-length 64 --steps 3"
)]
struct TrainArgs {
    #[command(flatten)]
    config: crate::cli::train::ConfigArgs,
    /// Timed RL steps.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Untimed RL steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Prompts per RL step (sets data.rollout_batch_size, and actor.global_batch_size when it
    /// does not divide it).
    #[arg(long)]
    prompts: Option<usize>,
    /// Responses per prompt (rollout.n).
    #[arg(long)]
    group_size: Option<usize>,
    /// Sample exactly this many tokens per response, ignoring end tokens.
    #[arg(long)]
    response_length: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// Checkpoint folder.
    #[arg(long)]
    model: PathBuf,
    /// Prompts per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// New tokens per prompt (no early stop).
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    #[command(flatten)]
    placement: super::Placement,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
}

/// Synthetic prompt of row `b`: ids `(b * 31 + j * 7919) % 1000`, j = 0..len (the Python bench
/// builds the same).
pub fn bench_prompt_ids(b: usize, len: usize) -> Vec<i64> {
    (0..len)
        .map(|j| ((b * 31 + j * 7919) % 1000) as i64)
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Generate(a) => bench_generate(a),
        What::Rollout(a) => bench_rollout(a),
        What::Train(a) => bench_train(a),
    }
}

/// Returns (prefill seconds, decode seconds): the engine's admission of the batch (one prefill
/// per prompt), then its steps until every row has `new_tokens` tokens.
fn one_run(model: &Qwen2_5VLForConditionalGeneration, a: &GenerateArgs) -> Result<(f64, f64)> {
    let sampling = SamplingConfig {
        max_new_tokens: a.new_tokens,
        greedy: true,
        stop_token_ids: Vec::new(),
        logprobs: false,
        ..SamplingConfig::default()
    };
    let mut engine = Engine::new(
        model,
        EngineConfig::new(a.batch, a.prompt_len + a.new_tokens),
    )?;
    for b in 0..a.batch {
        engine.add(GroupRequest {
            prompt_ids: bench_prompt_ids(b, a.prompt_len),
            images: None,
            sampling: sampling.clone(),
            seeds: vec![b as u64],
        })?;
    }
    let start = Instant::now();
    engine.admit_waiting(model)?;
    let prefill_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    while !engine.is_idle() {
        engine.step(model)?;
    }
    Ok((prefill_s, start.elapsed().as_secs_f64()))
}

fn bench_generate(a: GenerateArgs) -> Result<()> {
    let dir = super::generate::model_dir(&a.model)?;
    let model = a.placement.load_model(&dir)?;
    for _ in 0..a.warmup {
        one_run(&model, &a)?;
    }
    let (prefill, decode) = one_run(&model, &a)?;
    let prefill_tps = (a.batch * a.prompt_len) as f64 / prefill;
    let decode_tps = (a.batch * a.new_tokens.saturating_sub(1)) as f64 / decode;
    println!(
        "{}",
        serde_json::json!({
            "batch": a.batch, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
            "device": a.placement.device.to_string(), "threads": tch::get_num_threads(),
            "prefill_s": prefill, "decode_s": decode,
            "prefill_tokens_per_s": prefill_tps, "decode_tokens_per_s": decode_tps,
        })
    );
    Ok(())
}

fn bench_train(a: TrainArgs) -> Result<()> {
    use trainer::train::memory::{MemoryPlan, ModelShape, PlanPhase};
    use trainer::train::{Phase, TrainerOptions};
    let mut cfg = a.config.load()?;
    if let Some(p) = a.prompts {
        cfg.data.rollout_batch_size = p;
        if !p.is_multiple_of(cfg.actor.global_batch_size) {
            cfg.actor.global_batch_size = p;
        }
    }
    if let Some(n) = a.group_size {
        cfg.rollout.n = n;
    }
    cfg.sft.enabled = false;
    cfg.validate()?;
    let mut trainer = trainer::train::Trainer::new(
        cfg,
        TrainerOptions {
            dry: true,
            forced_response_length: a.response_length,
            ..Default::default()
        },
    )?;
    for _ in 0..a.warmup {
        trainer.step()?;
    }
    let mut totals = vec![0.0; Phase::ALL.len()];
    let mut peaks = vec![0u64; Phase::ALL.len()];
    let mut tokens = 0usize;
    let mut pass_tokens = vec![0u64; Phase::ALL.len()];
    let mut wall = 0.0;
    for _ in 0..a.steps {
        let r = trainer.step()?;
        for (((t, m), k), p) in totals
            .iter_mut()
            .zip(&mut peaks)
            .zip(&mut pass_tokens)
            .zip(Phase::ALL)
        {
            *t += r.times.get(p);
            *m = (*m).max(r.times.peak_rss.get(&p).copied().unwrap_or(0));
            *k += r.times.tokens.get(&p).copied().unwrap_or(0);
        }
        tokens += r.response_tokens;
        wall += r.times.total();
    }
    let steps = a.steps.max(1) as f64;
    let cfg = trainer.config();
    let mut phases = serde_json::Map::new();
    // decoder tokens per pass next to its time: what sharing prompts and reusing the update's
    // forward for the old log-probs save
    let mut pass = serde_json::Map::new();
    for ((t, k), p) in totals.iter().zip(&pass_tokens).zip(Phase::ALL) {
        phases.insert(format!("{}_s", p.name()), (t / steps).into());
        if *k > 0 || matches!(p, Phase::OldLogProbs) {
            pass.insert(p.name().to_string(), (*k as f64 / steps).into());
        }
    }
    // the plan of this configuration next to what each phase measured (host memory: a CPU run)
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let plan = MemoryPlan::estimate(cfg, &ModelShape::from_config(&trainer.policy().config), 0);
    let measured = |ps: &[Phase]| {
        ps.iter()
            .filter_map(|p| Phase::ALL.iter().position(|q| q == p))
            .map(|i| peaks[i])
            .max()
            .unwrap_or(0)
    };
    let mut memory = serde_json::Map::new();
    for (phase, ours) in [
        (PlanPhase::Rollout, &[Phase::Rollout][..]),
        (
            PlanPhase::LogProbs,
            &[Phase::OldLogProbs, Phase::RefLogProbs][..],
        ),
        (PlanPhase::Update, &[Phase::Update][..]),
    ] {
        memory.insert(
            phase.name().to_string(),
            serde_json::json!({
                "plan_gib": gib(plan.phase_peak(phase)),
                "measured_peak_rss_gib": gib(measured(ours)),
            }),
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "model": cfg.model.path, "device": cfg.trainer.device, "dtype": cfg.model.dtype.name(),
            "threads": tch::get_num_threads(),
            "prompts": cfg.data.rollout_batch_size, "group_size": cfg.rollout.n,
            "forced_response_length": a.response_length,
            "timed_steps": a.steps, "step_s": wall / steps, "phases": phases,
            "decoder_tokens_per_pass": pass,
            "response_tokens_per_step": tokens as f64 / steps,
            "tokens_per_s": tokens as f64 / wall.max(1e-9),
            "peak_rss_gib": gib(peaks.iter().copied().max().unwrap_or(0)),
            "plan_peak_gib": gib(plan.peak()),
            "memory": memory,
        })
    );
    Ok(())
}
