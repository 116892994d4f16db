//! `spatialthinker report RUN_DIR`: write (or rewrite) a run folder's `report.html` and its PNG
//! curves from what the run logged (`metrics.jsonl`, `samples.jsonl`, `sft/`), for any run
//! folder this trainer wrote — the tiny demo's or a 7B recipe's.

use std::path::PathBuf;

use anyhow::{Context, Result};
use trainer::report::write_report;

/// Write a run folder's report.html (curves, validation, gallery of sampled rollouts).
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  spatialthinker report runs/tiny-cpu        # writes runs/tiny-cpu/report.html and report/*.png")]
pub struct Args {
    /// The run folder (trainer.output_dir of the run).
    #[arg(value_name = "RUN_DIR")]
    run_dir: PathBuf,
}

/// Writes the report and says where.
pub fn run(args: Args) -> Result<()> {
    let files = write_report(&args.run_dir)
        .with_context(|| format!("writing the report of {}", args.run_dir.display()))?;
    println!(
        "report: {} ({} curves in {}, {} rollouts in the gallery)",
        files.html.display(),
        files.curves.len(),
        args.run_dir.join(trainer::report::CURVES_DIR).display(),
        files.gallery
    );
    Ok(())
}
