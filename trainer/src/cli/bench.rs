//! `spatialthinker bench generate`: prefill and decode throughput of batched greedy generation.
//!
//! Prompts are synthetic text ids (`bench_prompt_ids`), so `scripts/bench_hf_generate.py` can
//! feed transformers exactly the same inputs and print the ratio.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use tch::{Kind, Tensor};
use trainer::generate::{greedy_ids, left_pad, SamplingConfig};
use trainer::model::{get_rope_index, KvCache, LogitsAt, Qwen2_5VLForConditionalGeneration};

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
        What::Train(a) => bench_train(a),
    }
}

/// Returns (prefill seconds, decode seconds).
fn one_run(model: &Qwen2_5VLForConditionalGeneration, a: &GenerateArgs) -> Result<(f64, f64)> {
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let prompts: Vec<Vec<i64>> = (0..a.batch)
        .map(|b| bench_prompt_ids(b, a.prompt_len))
        .collect();
    let (ids, mask) = left_pad(&prompts, SamplingConfig::default().pad_token_id);
    let rope = get_rope_index(&model.config, &ids, &mask, &[])?;
    let b = a.batch as i64;
    let l = a.prompt_len as i64;
    let mut cache = KvCache::new(
        &model.config,
        b,
        l + a.new_tokens as i64,
        device,
        model.kind(),
    )?;
    let flat: Vec<i64> = ids.concat();
    let mut attn = Tensor::f_ones([b, l], (Kind::Int64, device))?;
    // the greedy pick generation uses; it also waits for the device
    let sync = |logits: &Tensor| -> Result<Vec<i64>> { Ok(greedy_ids(&logits.f_flatten(0, -2)?)?) };
    let start = Instant::now();
    let logits = model.forward(
        &Tensor::from_slice(&flat).f_view([b, l])?,
        &rope.to_tensor(device)?,
        &attn,
        None,
        Some(&mut cache),
        LogitsAt::Hidden,
    )?;
    let mut next = sync(&model.compact_logits(&logits.f_narrow(1, l - 1, 1)?)?)?;
    let prefill = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for step in 0..a.new_tokens.saturating_sub(1) {
        let pos: Vec<i64> = rope.next_position.iter().map(|p| p + step as i64).collect();
        let pos = Tensor::from_slice(&pos)
            .f_view([1, b, 1])?
            .f_expand([3, b, 1], false)?;
        attn = Tensor::f_cat(&[&attn, &Tensor::f_ones([b, 1], (Kind::Int64, device))?], 1)?;
        let input = Tensor::from_slice(&next).f_view([b, 1])?;
        let hidden = model.forward(
            &input,
            &pos,
            &attn,
            None,
            Some(&mut cache),
            LogitsAt::Hidden,
        )?;
        next = sync(&model.compact_logits(&hidden)?)?;
    }
    Ok((prefill, start.elapsed().as_secs_f64()))
}

fn bench_generate(a: GenerateArgs) -> Result<()> {
    let device = a.placement.device.resolve()?;
    let model = Qwen2_5VLForConditionalGeneration::load(&a.model, device, a.placement.dtype.kind())
        .with_context(|| format!("loading {}", a.model.display()))?;
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
    let mut tokens = 0usize;
    let mut wall = 0.0;
    for _ in 0..a.steps {
        let r = trainer.step()?;
        for (t, p) in totals.iter_mut().zip(Phase::ALL) {
            *t += r.times.get(p);
        }
        tokens += r.response_tokens;
        wall += r.times.total();
    }
    let steps = a.steps.max(1) as f64;
    let cfg = trainer.config();
    let mut phases = serde_json::Map::new();
    for (t, p) in totals.iter().zip(Phase::ALL) {
        phases.insert(format!("{}_s", p.name()), (t / steps).into());
    }
    println!(
        "{}",
        serde_json::json!({
            "model": cfg.model.path, "device": cfg.trainer.device, "dtype": cfg.model.dtype.name(),
            "threads": tch::get_num_threads(),
            "prompts": cfg.data.rollout_batch_size, "group_size": cfg.rollout.n,
            "forced_response_length": a.response_length,
            "timed_steps": a.steps, "step_s": wall / steps, "phases": phases,
            "response_tokens_per_step": tokens as f64 / steps,
            "tokens_per_s": tokens as f64 / wall.max(1e-9),
            "peak_rss_gib": trainer::train::memory::peak_rss_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64,
        })
    );
    Ok(())
}
