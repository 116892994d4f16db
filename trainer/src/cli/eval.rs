//! `spatialthinker eval`: benchmark accuracy of a checkpoint, as the authors' evaluation computes
//! it (greedy, 2048 new tokens) with the letter-fallback bug fixed unless `--legacy-matching`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use trainer::eval::dataset::{read_mcq_jsonl, read_stvqa_parquet, EvalSample};
use trainer::eval::matching::MatchMode;
use trainer::eval::report::{EvalReport, SampleLog};
use trainer::eval::runner::{build_prompt, run_eval, EvalOptions, DEFAULT_MAX_NEW_TOKENS};
use trainer::infer::prompt::Template;

/// Evaluate a checkpoint on a multiple-choice benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint folder.
    #[arg(long)]
    model: PathBuf,
    /// Benchmark file: generic MCQ JSONL (`question`, `options`, `answer`, `image`, `category`).
    #[arg(long)]
    data: PathBuf,
    /// Split to read from parquet datasets.
    #[arg(long, default_value = "val")]
    split: String,
    /// Instruction wrapped around each question.
    #[arg(long, value_enum, default_value_t = Template::Spatialthinker)]
    template: Template,
    /// Evaluate only the first N rows.
    #[arg(long)]
    limit: Option<usize>,
    /// Output folder (samples.jsonl, report.json, report.md).
    #[arg(long, default_value = "eval-out")]
    out: PathBuf,
    /// Prompts per batch.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Most new tokens (greedy).
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    max_new_tokens: usize,
    /// Reproduce the authors' matcher, including its bug that scores bare letters as `A`.
    #[arg(long)]
    legacy_matching: bool,
    #[command(flatten)]
    placement: super::Placement,
}

/// Load the benchmark rows.
fn load(args: &Args) -> Result<Vec<EvalSample>> {
    let ext = args.data.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut rows = match ext {
        "jsonl" => read_mcq_jsonl(&args.data)?,
        _ => {
            let (rows, report) = read_stvqa_parquet(&args.data, &args.split)?;
            if report.bad_rows > 0 {
                eprintln!(
                    "{}: skipped {} unusable rows",
                    args.data.display(),
                    report.bad_rows
                );
            }
            rows
        }
    };
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    Ok(rows)
}

/// Run the evaluation.
pub fn run(args: Args) -> Result<()> {
    let samples = load(&args)?;
    // Check every prompt can be built (images readable) before the expensive part.
    for s in &samples {
        build_prompt(s, args.template)?;
    }
    let matching = if args.legacy_matching {
        MatchMode::Legacy
    } else {
        MatchMode::Fixed
    };
    let (mut log, mut done) = SampleLog::open(&args.out.join("samples.jsonl"))
        .with_context(|| format!("opening the sample log in {}", args.out.display()))?;
    let done_ids: HashSet<String> = done.iter().map(|r| r.id.clone()).collect();
    let remaining = samples
        .iter()
        .filter(|s| !done_ids.contains(s.id.as_str()))
        .count();
    eprintln!(
        "{} samples, {} already in the log, {remaining} to evaluate ({:?} matching, batch {}, {} new tokens)",
        samples.len(),
        done.len(),
        matching,
        args.batch_size,
        args.max_new_tokens
    );
    if remaining > 0 {
        let mut generator =
            crate::cli::generate::load_generator(&args.model, args.placement, args.max_new_tokens)?;
        let bar = indicatif::ProgressBar::new(remaining as u64);
        let new = run_eval(
            &samples,
            &mut generator,
            EvalOptions {
                template: args.template,
                matching,
                batch_size: args.batch_size,
            },
            &mut log,
            &done_ids,
            &mut |n, _| bar.set_position(n as u64),
        )?;
        bar.finish_and_clear();
        done.extend(new);
    }
    let run: BTreeMap<String, String> = [
        ("model", args.model.display().to_string()),
        ("data", args.data.display().to_string()),
        ("template", format!("{:?}", args.template).to_lowercase()),
        ("matching", format!("{matching:?}").to_lowercase()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let ids: HashSet<&str> = samples.iter().map(|s| s.id.as_str()).collect();
    let records: Vec<_> = done
        .into_iter()
        .filter(|r| ids.contains(r.id.as_str()))
        .collect();
    let report = EvalReport::from_records(&records, run);
    report.write(&args.out)?;
    print!("{}", report.to_markdown());
    Ok(())
}
