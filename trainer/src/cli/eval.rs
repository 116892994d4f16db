//! `spatialthinker eval`: benchmark accuracy of one or more checkpoints, as the authors'
//! evaluation computes it (greedy, 2048 new tokens) with the letter-fallback bug fixed unless
//! `--legacy-matching`; `--benchmark` reads a published benchmark in its own layout
//! (docs/benchmarks.md). `eval report` puts runs beside the paper's numbers.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use trainer::eval::benchmarks::{self, Benchmark};
use trainer::eval::compare::{load_run, Comparison};
use trainer::eval::dataset::{read_mcq_jsonl, read_stvqa_parquet, EvalSample};
use trainer::eval::matching::MatchMode;
use trainer::eval::report::{EvalReport, SampleLog};
use trainer::eval::runner::{
    build_prompt, instruction, run_eval, EvalOptions, DEFAULT_MAX_NEW_TOKENS,
};
use trainer::infer::prompt::{Template, TrainedTemplate};

/// Evaluate checkpoints on a benchmark, or (`eval report`) compare finished runs.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// One table of the runs' benchmarks and categories (comparison.md) and a bar chart
    /// (comparison.png), optionally beside the paper's published numbers.
    Report(ReportArgs),
}

/// `eval report RUN_DIRS… [--paper]`.
#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// Run folders: each holds one sub-folder per benchmark (`<run>/<benchmark>/report.json`, as
    /// `eval --benchmark` writes), or is one benchmark's folder.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Add the paper's numbers for SpatialThinker-7B/3B and Qwen2.5-VL-7B/3B (project page).
    #[arg(long)]
    paper: bool,
    /// Where comparison.md and comparison.png are written.
    #[arg(long, default_value = "eval-report")]
    out: PathBuf,
}

/// `eval --model … (--benchmark NAME | --data PATH)`.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Checkpoint folder (or hub id). Repeat it to evaluate several checkpoints side by side:
    /// each goes to `<out>/<folder name>` and a comparison to `<out>/comparison.{md,png}`.
    #[arg(long)]
    model: Vec<PathBuf>,
    /// A published benchmark, read in its own layout (docs/benchmarks.md); results go to
    /// `<out>/<benchmark>`.
    #[arg(long, value_enum)]
    benchmark: Option<Benchmark>,
    /// Data: with `--benchmark`, a local copy (folder or parquet file) or a hub dataset id read
    /// from the Hugging Face cache [default: the benchmark's own repository]; without it, a
    /// generic MCQ JSONL (`question`, `options`, `answer`, `image`, `category`) or an
    /// STVQA-schema parquet file or folder.
    #[arg(long)]
    data: Option<String>,
    /// Split to read from STVQA-schema parquet datasets (without `--benchmark`).
    #[arg(long, default_value = "val")]
    split: String,
    /// Instruction wrapped around each question [default: `dataset` when the checkpoint records
    /// the prompt template it was trained with (prompt_template.json), else `spatialthinker`].
    #[arg(long, value_enum)]
    template: Option<Template>,
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
fn load(args: &RunArgs) -> Result<Vec<EvalSample>> {
    let mut rows = match (args.benchmark, &args.data) {
        (Some(bench), data) => {
            let root = benchmarks::locate(bench, data.as_deref(), &data::hub::cache_dir())?;
            let rows = benchmarks::load(bench, &root)?;
            let published: usize = bench.spec().tasks.iter().map(|(_, n)| n).sum();
            eprintln!(
                "{}: {} rows from {}",
                bench.name(),
                rows.len(),
                root.display()
            );
            if published > 0 && rows.len() != published {
                eprintln!(
                    "note: evals.py's per-task sizes of {} add up to {published} rows",
                    bench.name()
                );
            }
            rows
        }
        (None, None) => bail!("pass --benchmark NAME, or --data with a JSONL or parquet file"),
        (None, Some(data)) => {
            let path = Path::new(data);
            match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
                "jsonl" => read_mcq_jsonl(path)?,
                _ => {
                    let (rows, report) = read_stvqa_parquet(path, &args.split)?;
                    if report.bad_rows > 0 {
                        eprintln!("{data}: skipped {} unusable rows", report.bad_rows);
                    }
                    rows
                }
            }
        }
    };
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    Ok(rows)
}

/// The template to use: `--template`, else `dataset` when the checkpoint records its training
/// template, else `spatialthinker`. Under `dataset`, rows without their own prompt (JSONL
/// benchmarks) get the recorded template rendered around their question.
fn resolve_template(
    model: &Path,
    requested: Option<Template>,
    samples: &mut [EvalSample],
) -> Result<Template> {
    // A checkpoint that cannot be located records no template: loading it for generation
    // reports the error, and a run whose answers are all in the log needs no checkpoint.
    let recorded = match crate::cli::generate::model_dir(model) {
        Ok(dir) => TrainedTemplate::read(&dir)?,
        Err(_) => None,
    };
    let template = match (requested, &recorded) {
        (Some(t), _) => t,
        (None, Some(_)) => Template::Dataset,
        (None, None) => Template::Spatialthinker,
    };
    if let (Template::Dataset, Some(t)) = (template, &recorded) {
        for s in samples.iter_mut().filter(|s| s.prompt.is_none()) {
            // the image's size, as the runner loads it
            let size = build_prompt(s, Template::Plain)?
                .image
                .map_or((0, 0), |i| i.dimensions());
            s.prompt = Some(t.render(&instruction(s, Template::Dataset), size));
        }
    }
    Ok(template)
}

/// Run `eval` or `eval report`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Command::Report(r)) => report(r),
        None => evaluate(args.run),
    }
}

/// `eval report`: load the runs, build the table, write Markdown and PNG.
fn report(args: ReportArgs) -> Result<()> {
    let runs = args
        .runs
        .iter()
        .map(|d| load_run(d))
        .collect::<Result<Vec<_>, _>>()?;
    let cmp = Comparison::build(runs, args.paper)?;
    let (md, png) = cmp.write(&args.out)?;
    print!("{}", cmp.to_markdown());
    eprintln!("wrote {} and {}", md.display(), png.display());
    Ok(())
}

/// A folder name for each model (its last path component, numbered when two agree).
fn labels(models: &[PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let base = m
            .file_name()
            .map_or_else(|| format!("model{i}"), |n| n.to_string_lossy().into_owned());
        let label = if out.contains(&base) {
            format!("{base}-{i}")
        } else {
            base
        };
        out.push(label);
    }
    out
}

/// Evaluate every `--model` on the benchmark.
fn evaluate(args: RunArgs) -> Result<()> {
    if args.model.is_empty() {
        bail!("--model is required (repeat it to evaluate several checkpoints side by side)");
    }
    let samples = load(&args)?;
    let several = args.model.len() > 1;
    let mut run_dirs = Vec::new();
    for (model, label) in args.model.iter().zip(labels(&args.model)) {
        let run_dir = if several {
            args.out.join(&label)
        } else {
            args.out.clone()
        };
        let out = match args.benchmark {
            Some(b) => run_dir.join(b.name()),
            None => run_dir.clone(),
        };
        if several {
            eprintln!("== {} -> {}", model.display(), out.display());
        }
        evaluate_one(&args, model, samples.clone(), &out)?;
        run_dirs.push(run_dir);
    }
    if several && args.benchmark.is_some() {
        let runs = run_dirs
            .iter()
            .map(|d| load_run(d))
            .collect::<Result<Vec<_>, _>>()?;
        let cmp = Comparison::build(runs, false)?;
        let (md, png) = cmp.write(&args.out)?;
        print!("{}", cmp.to_markdown());
        eprintln!("wrote {} and {}", md.display(), png.display());
    }
    Ok(())
}

/// Evaluate one checkpoint, writing the sample log and report into `out`.
fn evaluate_one(
    args: &RunArgs,
    model: &Path,
    mut samples: Vec<EvalSample>,
    out: &Path,
) -> Result<()> {
    let template = resolve_template(model, args.template, &mut samples)?;
    // Check every prompt can be built (images readable) before the expensive part.
    for s in &samples {
        build_prompt(s, template)?;
    }
    let matching = if args.legacy_matching {
        MatchMode::Legacy
    } else {
        MatchMode::Fixed
    };
    let (mut log, mut done) = SampleLog::open(&out.join("samples.jsonl"))
        .with_context(|| format!("opening the sample log in {}", out.display()))?;
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
        let mut generator = crate::cli::generate::load_generator(
            model,
            args.placement.clone(),
            args.max_new_tokens,
        )?;
        let bar = indicatif::ProgressBar::new(remaining as u64);
        let new = run_eval(
            &samples,
            &mut generator,
            EvalOptions {
                template,
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
    let data = match (&args.data, args.benchmark) {
        (Some(d), _) => d.clone(),
        (None, Some(b)) => b.spec().repo.to_string(),
        (None, None) => String::new(),
    };
    let mut run: BTreeMap<String, String> = [
        ("model", model.display().to_string()),
        ("data", data),
        ("template", format!("{template:?}").to_lowercase()),
        ("matching", format!("{matching:?}").to_lowercase()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(b) = args.benchmark {
        run.insert("benchmark".into(), b.name().into());
    }
    let ids: HashSet<&str> = samples.iter().map(|s| s.id.as_str()).collect();
    let records: Vec<_> = done
        .into_iter()
        .filter(|r| ids.contains(r.id.as_str()))
        .collect();
    let report = EvalReport::from_records(&records, run);
    report.write(out)?;
    print!("{}", report.to_markdown());
    Ok(())
}
