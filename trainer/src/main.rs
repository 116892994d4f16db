//! `spatialthinker`: train Qwen2.5-VL with GRPO and SpatialThinker's dense spatial reward, and
//! run, serve and evaluate the checkpoints it writes.

mod cli;

use clap::{Parser, Subcommand};

/// Reproduce SpatialThinker (Qwen2.5-VL + GRPO + dense spatial rewards) on libtorch.
#[derive(Debug, Parser)]
#[command(name = "spatialthinker", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train with GRPO and the dense spatial reward (no arguments: the tiny CPU demo).
    Train(cli::train::Args),
    /// Run `train` as the ranks of a data-parallel job on this node (like torchrun).
    Launch(cli::launch::Args),
    /// Supervised warm-up only (cross-entropy on a reference-response column).
    Sft(cli::train::SftArgs),
    /// Per-device memory plan of a recipe (every phase's peak), checked against a device size.
    Plan(cli::plan::Args),
    /// Check the installation: libtorch version, CUDA, bf16, threads, tokenizer.
    Doctor(cli::doctor::Args),
    /// Generate from a checkpoint for one image and prompt.
    Generate(cli::generate::Args),
    /// Teacher-forced log-probs of a response.
    Logprobs(cli::logprobs::Args),
    /// Throughput benchmarks (`bench generate`).
    Bench(cli::bench::Args),
    /// Answer one question about one image and draw the predicted scene graph.
    Infer(cli::infer::Args),
    /// Serve an OpenAI-compatible chat-completions API with continuous batching.
    Serve(cli::serve::Args),
    /// Evaluate a checkpoint on a multiple-choice benchmark.
    Eval(cli::eval::Args),
    /// Score responses (JSONL) with the spatial or the r1v reward.
    Reward(cli::reward::Args),
    /// Dataset tools: stats, validate, synth, import.
    Data(cli::data::Args),
    /// Write a run folder's report.html: curves, validation, a gallery of sampled rollouts.
    Report(cli::report::Args),
    /// Write a LoRA checkpoint merged into its base as a full Hugging Face model folder.
    Export(cli::export::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train(args) => cli::train::run(args),
        Command::Launch(args) => cli::launch::run(args),
        Command::Sft(args) => cli::train::run_sft(args),
        Command::Plan(args) => cli::plan::run(args),
        Command::Doctor(args) => cli::doctor::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Generate(args) => cli::generate::run(args),
        Command::Logprobs(args) => cli::logprobs::run(args),
        Command::Infer(args) => cli::infer::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Reward(args) => cli::reward::run(args),
        Command::Data(args) => cli::data::run(args),
        Command::Report(args) => cli::report::run(args),
        Command::Export(args) => cli::export::run(args),
    }
}
