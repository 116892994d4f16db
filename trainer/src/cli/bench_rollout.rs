//! `spatialthinker bench rollout`: the RL step's rollout workload (P prompts × n responses with
//! natural, sampled stop lengths, under a KV budget) through the generation engine with
//! continuous refill, and the same workload through the same engine with refill off (static
//! chunks that step until their longest sequence ends, as rollouts did before the engine).
//!
//! After one pass of each mode alone, the timed passes run both at once, interleaved step by
//! step in proportion to their durations, so that both see the same machine (a shared
//! machine's speed moves by tens of percent from one minute to the next); each step's time is
//! charged to its own mode. Both runs draw each
//! sequence from its own seed, so they sample the same distribution and differ
//! in scheduling only (and, for a few sequences, where batched matmuls of other shapes round
//! differently and a draw lands on the other side of a boundary); the benchmark prints the share
//! of sequences identical in both, the length distribution, tokens/s, mean row occupancy and KV
//! bytes of each.
//!
//! Without `--model` it writes the tiny-random preset (full 151,936-row vocabulary) and gives it a
//! natural stop length: every token embedding carries a constant in hidden dimension 0, and the
//! `<|im_end|>` row of the (tied) head is raised along that dimension so that its logit stands
//! `--stop-logit` above the others. Sampling at temperature 1 then ends a response after a
//! geometrically distributed number of tokens (mean ≈ V / e^stop_logit), the wide spread of RL
//! response lengths.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use data::rng::SplitMix64;
use trainer::generate::{
    Engine, EngineConfig, EngineStats, GeneratedSequence, SamplingConfig, Sequences,
};
use trainer::model::{KvLayout, LogitsAt, Qwen2_5VLForConditionalGeneration};
use trainer::tokenizer::IM_END_ID;
use trainer::train::tiny::{write_tiny_random, TinyShape};

use super::bench::bench_prompt_ids;

/// Constant put in hidden dimension 0 of every token embedding of the generated checkpoint.
const EMBED_OFFSET: f64 = 1.0;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  spatialthinker bench rollout --prompts 64 --group-size 8      # the README's figures
  spatialthinker bench rollout --preset mid --device cuda --dtype bf16 --decode-attention masked")]
pub struct RolloutArgs {
    /// Checkpoint folder; without it the tiny-random preset with a stop bias is written to
    /// runs/bench-rollout/tiny-random-stop and used.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompts (GRPO groups).
    #[arg(long, default_value_t = 64)]
    prompts: usize,
    /// Responses per prompt (rollout.n).
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Prompt length in tokens (synthetic text ids). The recipe's prompts are ~1,000-5,400
    /// tokens, most of them the image's.
    #[arg(long, default_value_t = 2048)]
    prompt_len: usize,
    /// Response limit (data.max_response_length; the recipe's is 2,048).
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Rollout temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Rows of the KV pool (rollout.max_num_seqs); also the static chunk size.
    #[arg(long, default_value_t = 32)]
    max_num_seqs: usize,
    /// KV pool budget in GiB (rollout.kv_cache_gib); default: max_num_seqs rows.
    #[arg(long)]
    kv_cache_gib: Option<f64>,
    /// The generated checkpoint's `<|im_end|>` logit above the others (mean response length
    /// ≈ 151,665 / e^x before the --max-new-tokens cap: 7.3 gives ≈ 100, ≈ 91 after a cap of
    /// 512). Ignored with --model unless given.
    #[arg(long)]
    stop_logit: Option<f64>,
    /// Seed of the responses' generators.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed passes, each running both modes interleaved step by step (after one untimed
    /// pass of each alone that measures how to interleave them); each mode's fastest is
    /// reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Shape of the generated checkpoint without --model: `tiny` (2 layers of width 64) or
    /// `mid` (8 layers of width 1,024, head dim 128 as in the 7B; for GPU measurements).
    #[arg(long, value_enum, default_value_t = Preset::Tiny)]
    preset: Preset,
    /// Attention of the decode steps: `auto` (flash-attention's varlen kernel over a
    /// token-major pool on CUDA in bf16/f16, SDPA with a mask elsewhere), `masked` (SDPA with a
    /// mask everywhere: the baseline of the fused path), `varlen` (the token-major pool
    /// everywhere; off CUDA through the kernel's reference, which is slow and for checking).
    #[arg(long, value_enum, default_value_t = DecodeAttention::Auto)]
    decode_attention: DecodeAttention,
    #[command(flatten)]
    placement: super::Placement,
}

/// The generated checkpoint's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Preset {
    Tiny,
    Mid,
}

/// Which attention the decode steps use (see `--decode-attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DecodeAttention {
    Auto,
    Masked,
    Varlen,
}

impl DecodeAttention {
    /// The pool layout that selects it.
    fn kv_layout(self) -> Option<KvLayout> {
        match self {
            DecodeAttention::Auto => None,
            DecodeAttention::Masked => Some(KvLayout::HeadMajor),
            DecodeAttention::Varlen => Some(KvLayout::TokenMajor),
        }
    }
}

/// Default stop logit of the generated checkpoint.
const DEFAULT_STOP_LOGIT: f64 = 7.3;

/// One run of the workload.
struct RunResult {
    sequences: Vec<GeneratedSequence>,
    seconds: f64,
    stats: EngineStats,
}

pub fn bench_rollout(a: RolloutArgs) -> Result<()> {
    let (dir, stop_logit) = match &a.model {
        Some(m) => (super::generate::model_dir(m)?, a.stop_logit),
        None => {
            let (dir, shape) = match a.preset {
                Preset::Tiny => ("runs/bench-rollout/tiny-random-stop", TinyShape::default()),
                Preset::Mid => ("runs/bench-rollout/mid-random-stop", TinyShape::mid()),
            };
            let dir = PathBuf::from(dir);
            if !dir.join("model.safetensors").exists() {
                write_tiny_random(&dir, &shape, 0, (3136, 12544))?;
            }
            (dir, Some(a.stop_logit.unwrap_or(DEFAULT_STOP_LOGIT)))
        }
    };
    let model = a.placement.load_model(&dir)?;
    if let Some(x) = stop_logit {
        raise_stop_logit(&model, x)?;
    }
    let sampling = SamplingConfig {
        max_new_tokens: a.max_new_tokens,
        ..SamplingConfig::from_temperature(a.temperature)
    };
    let config = EngineConfig {
        kv_layout: a.decode_attention.kv_layout(),
        ..EngineConfig::new(a.max_num_seqs, a.prompt_len + a.max_new_tokens)
            .with_kv_cache_gib(a.kv_cache_gib)
    };
    // warm-up: a few rows through the same path
    run_workload(&model, &a, &sampling, &config, 2)?;
    let static_config = EngineConfig {
        refill: false,
        ..config.clone()
    };
    // one pass of each alone gives each mode's expected duration; the timed passes then
    // interleave the two step by step in proportion to it (see `run_interleaved`)
    let expected = [
        run_workload(&model, &a, &sampling, &config, a.prompts)?.seconds,
        run_workload(&model, &a, &sampling, &static_config, a.prompts)?.seconds,
    ];
    let mut best: [Option<RunResult>; 2] = [None, None];
    for _ in 0..a.rounds.max(1) {
        let runs = run_interleaved(&model, &a, &sampling, [&config, &static_config], expected)?;
        for (slot, r) in best.iter_mut().zip(runs) {
            if slot.as_ref().is_none_or(|b| r.seconds < b.seconds) {
                *slot = Some(r);
            }
        }
    }
    let [Some(continuous), Some(static_chunks)] = best else {
        bail!("no timed pass ran");
    };
    let identical = continuous
        .sequences
        .iter()
        .zip(&static_chunks.sequences)
        .filter(|(a, b)| a.ids == b.ids)
        .count();
    let lengths: Vec<f64> = continuous
        .sequences
        .iter()
        .map(|s| s.ids.len() as f64)
        .collect();
    let n = lengths.len() as f64;
    let mean = lengths.iter().sum::<f64>() / n;
    let sd = (lengths.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n).sqrt();
    let stopped = continuous.sequences.iter().filter(|s| s.stopped).count();
    let tokens: usize = continuous.sequences.iter().map(|s| s.ids.len()).sum();
    let static_tokens: usize = static_chunks.sequences.iter().map(|s| s.ids.len()).sum();
    println!(
        "{}",
        serde_json::json!({
            "model": dir, "device": a.placement.device.to_string(), "threads": tch::get_num_threads(),
            "dtype": format!("{:?}", model.kind()),
            "decode_attention": if continuous.stats.fused_decode { "flash-varlen" } else if continuous.stats.kv_layout == KvLayout::TokenMajor { "varlen-reference" } else { "sdpa-masked" },
            "prompts": a.prompts, "group_size": a.group_size, "prompt_len": a.prompt_len,
            "max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "stop_logit": stop_logit,
            "lengths": {
                "mean": mean, "min": lengths.iter().copied().fold(f64::INFINITY, f64::min),
                "max": lengths.iter().copied().fold(0.0, f64::max), "cv": sd / mean,
                "stopped_fraction": stopped as f64 / n,
            },
            "tokens": tokens,
            // same seeds: the runs differ only where batched matmuls round differently
            "identical_in_both_runs": identical as f64 / n,
        })
    );
    for (name, r) in [("continuous", &continuous), ("static", &static_chunks)] {
        println!(
            "{}",
            serde_json::json!({
                "run": name, "seconds": r.seconds,
                "tokens": r.sequences.iter().map(|s| s.ids.len()).sum::<usize>(),
                "tokens_per_s": r.sequences.iter().map(|s| s.ids.len()).sum::<usize>() as f64 / r.seconds,
                "steps": r.stats.steps, "pool_rows": r.stats.rows, "occupancy": r.stats.occupancy(),
                "kv_bytes_allocated": r.stats.peak_bytes(),
                "admit_s": r.stats.admit_s, "sample_s": r.stats.sample_s, "decode_s": r.stats.decode_s,
            })
        );
    }
    let (x, y) = (
        tokens as f64 / continuous.seconds,
        static_tokens as f64 / static_chunks.seconds,
    );
    println!(
        "rollout_tok_s={x:.1} static_tok_s={y:.1} ratio={:.2} occupancy={:.3}",
        x / y,
        continuous.stats.occupancy()
    );
    Ok(())
}

/// `prompts` groups of `group_size` through one engine built from `config`, timed.
fn run_workload(
    model: &Qwen2_5VLForConditionalGeneration,
    a: &RolloutArgs,
    sampling: &SamplingConfig,
    config: &EngineConfig,
    prompts: usize,
) -> Result<RunResult> {
    let start = Instant::now();
    let mut engine = loaded_engine(model, a, sampling, config, prompts)?;
    let sequences = engine.run(model, &mut |_| {})?;
    Ok(RunResult {
        sequences,
        seconds: start.elapsed().as_secs_f64(),
        stats: engine.stats().clone(),
    })
}

/// An engine built from `config` with the workload's `prompts` groups queued, every sequence
/// seeded from `--seed` in the same order whatever the config.
fn loaded_engine(
    model: &Qwen2_5VLForConditionalGeneration,
    a: &RolloutArgs,
    sampling: &SamplingConfig,
    config: &EngineConfig,
    prompts: usize,
) -> Result<Engine> {
    let mut engine = Engine::new(model, config.clone())?;
    let groups = (0..prompts).map(|p| (bench_prompt_ids(p, a.prompt_len), None));
    engine.add_groups(groups, a.group_size, sampling, &mut SplitMix64::new(a.seed))?;
    Ok(engine)
}

/// The whole workload through one engine per config at once, each step timed to its engine:
/// the next step always goes to the engine furthest behind its `expected` duration, so both
/// runs spread over the same stretch of wall time and a slow phase of a shared machine slows
/// them alike (timed one after the other, one mode can land in a fast minute and the other in
/// a slow one).
fn run_interleaved(
    model: &Qwen2_5VLForConditionalGeneration,
    a: &RolloutArgs,
    sampling: &SamplingConfig,
    configs: [&EngineConfig; 2],
    expected: [f64; 2],
) -> Result<[RunResult; 2]> {
    let mut engines = Vec::with_capacity(2);
    let mut seconds = [0.0f64; 2];
    for (i, config) in configs.into_iter().enumerate() {
        let start = Instant::now();
        engines.push(loaded_engine(model, a, sampling, config, a.prompts)?);
        seconds[i] += start.elapsed().as_secs_f64();
    }
    let mut sequences = [Sequences::default(), Sequences::default()];
    loop {
        let behind = (0..2)
            .filter(|&i| !engines[i].is_idle())
            .min_by(|&i, &j| (seconds[i] / expected[i]).total_cmp(&(seconds[j] / expected[j])));
        let Some(i) = behind else { break };
        let start = Instant::now();
        let tokens = engines[i].step(model)?;
        seconds[i] += start.elapsed().as_secs_f64();
        sequences[i].extend(tokens);
    }
    let [c, s] = sequences;
    let mut engines = engines.into_iter();
    let mut result = |sequences: Sequences, seconds: f64| -> Result<RunResult> {
        let engine = engines.next().expect("two engines");
        Ok(RunResult {
            sequences: sequences.into_sorted(),
            seconds,
            stats: engine.stats().clone(),
        })
    };
    Ok([result(c, seconds[0])?, result(s, seconds[1])?])
}

/// Gives `model` a stop logit `x` above the rest (see the module docs): dimension 0 of every
/// token embedding is set to [`EMBED_OFFSET`], then the `<|im_end|>` head row is raised along
/// dimension 0 by `x` over the mean final hidden value there (measured on a probe prompt).
fn raise_stop_logit(model: &Qwen2_5VLForConditionalGeneration, x: f64) -> Result<()> {
    let _guard = tch::no_grad_guard();
    model
        .model
        .embed_tokens
        .f_narrow(1, 0, 1)?
        .f_fill_(EMBED_OFFSET)
        .map(drop)?;
    let probe = bench_prompt_ids(0, 32);
    let ids = tch::Tensor::from_slice(&probe).view([1, -1]);
    let len = probe.len() as i64;
    let positions = tch::Tensor::arange(len, (tch::Kind::Int64, model.device()))
        .view([1, 1, len])
        .expand([3, 1, len], false);
    let mask = tch::Tensor::ones([1, len], (tch::Kind::Int64, model.device()));
    let hidden = model.hidden_states(&ids, &positions, &mask, None, None, LogitsAt::All)?;
    let h0 = f64::try_from(hidden.f_select(2, 0)?.f_mean(tch::Kind::Float)?)?;
    if h0.abs() < 1e-3 {
        bail!("the probe's final hidden dimension 0 is {h0}: cannot raise the stop logit");
    }
    let row = model
        .lm_head
        .weight
        .f_narrow(0, IM_END_ID, 1)?
        .f_narrow(1, 0, 1)?;
    let raised = row.f_add_scalar(x / h0)?;
    row.shallow_clone().f_copy_(&raised)?;
    Ok(())
}
