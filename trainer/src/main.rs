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
    /// Check the installation: libtorch version, CUDA, bf16, threads, tokenizer.
    Doctor(cli::doctor::Args),
    /// Dataset tools: stats, validate, synth, import.
    Data(cli::data::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor(args) => cli::doctor::run(args),
        Command::Data(args) => cli::data::run(args),
    }
}
