//! `spatialthinker data`: dataset statistics, validation, synthetic data and JSONL import.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use data::schema::ColumnNames;
use data::synth::{ImageEncoding, SynthConfig};
use data::validate::Severity;
use data::{DatasetFiles, Policy};

/// Inspect, validate, synthesise or import datasets in the STVQA-7K schema.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

/// Column names of the three training columns.
#[derive(Debug, Clone, clap::Args)]
struct Columns {
    /// Prompt column.
    #[arg(long, default_value = data::schema::PROBLEM)]
    prompt_column: String,
    /// Image column (HF Image struct {bytes, path}).
    #[arg(long, default_value = data::schema::IMAGES)]
    image_column: String,
    /// Ground-truth column read by the reward.
    #[arg(long, default_value = data::schema::ANSWER_OPTION_TEXT)]
    answer_column: String,
}

impl Columns {
    fn names(&self) -> ColumnNames {
        ColumnNames {
            prompt: self.prompt_column.clone(),
            image: self.image_column.clone(),
            answer: self.answer_column.clone(),
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum DataCommand {
    /// Rows per split, categories, levels, image sizes, objects per scene, answer letters.
    Stats {
        /// HF dataset folder, parquet folder or file, or hub id (owner/name[@revision]).
        path: String,
        #[command(flatten)]
        columns: Columns,
    },
    /// Check every row; exits non-zero if any row is bad.
    Validate {
        /// HF dataset folder, parquet folder or file, or hub id.
        path: String,
        #[command(flatten)]
        columns: Columns,
        /// `skip`: report all bad rows; `error`: stop at the first.
        #[arg(long, default_value = "skip")]
        policy: String,
        /// Issues to print (counts are always complete).
        #[arg(long, default_value_t = 50)]
        show: usize,
    },
    /// Write a synthetic spatial VQA dataset (exact boxes and answers) in the STVQA-7K schema.
    Synth {
        /// Output folder (an HF dataset folder: README.md and data/*.parquet).
        #[arg(long)]
        out: PathBuf,
        /// Training rows.
        #[arg(long, default_value_t = 1000)]
        train: u64,
        /// Validation rows.
        #[arg(long, default_value_t = 100)]
        val: u64,
        /// Seed; the same seed writes identical files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Square image side in pixels (or use --width/--height).
        #[arg(long, default_value_t = data::synth::DEFAULT_IMAGE_SIZE)]
        image_size: u32,
        /// Image width (overrides --image-size).
        #[arg(long)]
        width: Option<u32>,
        /// Image height (overrides --image-size).
        #[arg(long)]
        height: Option<u32>,
        /// Most distinct objects per scene (2 to 6).
        #[arg(long, default_value_t = 4)]
        max_objects: u32,
        /// png (lossless, default) or jpeg.
        #[arg(long, default_value = "png")]
        image_format: String,
        /// Rows per parquet row group.
        #[arg(long, default_value_t = data::writer::DEFAULT_ROWS_PER_GROUP)]
        rows_per_group: usize,
    },
    /// Convert a JSONL of {image, question, options, answer, objects, relationships, category?}.
    Import {
        /// The JSONL file.
        #[arg(long)]
        jsonl: PathBuf,
        /// Folder the `image` paths are relative to.
        #[arg(long)]
        images: PathBuf,
        /// Output folder (an HF dataset folder).
        #[arg(long)]
        out: PathBuf,
        /// Split name of the written file.
        #[arg(long, default_value = "train")]
        split: String,
        /// `skip`: skip and list bad lines; `error`: stop at the first.
        #[arg(long, default_value = "error")]
        policy: String,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        DataCommand::Stats { path, columns } => {
            let files = DatasetFiles::locate(&path)?;
            let mut splits = BTreeMap::new();
            for (split, paths) in &files.splits {
                splits.insert(
                    split.clone(),
                    data::stats::split_stats(paths, &columns.names())?,
                );
            }
            println!("{}", files.root.display());
            print!("{}", data::stats::render_tables(&splits));
            Ok(())
        }
        DataCommand::Validate {
            path,
            columns,
            policy,
            show,
        } => {
            let policy: Policy = policy.parse()?;
            let files = DatasetFiles::locate(&path)?;
            let mut bad = 0;
            for (split, paths) in &files.splits {
                let report = data::loader::validate_files(paths, &columns.names(), policy)
                    .with_context(|| format!("validating split `{split}`"))?;
                println!(
                    "{split}: {} rows, {} bad, {} warnings",
                    report.rows, report.bad_rows, report.warnings
                );
                for issue in report.issues.iter().take(show) {
                    println!("  {issue}");
                }
                let errors = report
                    .issues
                    .iter()
                    .filter(|i| i.severity == Severity::Error)
                    .count();
                if report.issues.len() > show {
                    println!(
                        "  … {} more issues ({errors} errors listed in all)",
                        report.issues.len() - show
                    );
                }
                bad += report.bad_rows;
            }
            if bad > 0 {
                bail!("{bad} bad rows");
            }
            Ok(())
        }
        DataCommand::Synth {
            out,
            train,
            val,
            seed,
            image_size,
            width,
            height,
            max_objects,
            image_format,
            rows_per_group,
        } => {
            let cfg = SynthConfig {
                width: width.unwrap_or(image_size),
                height: height.unwrap_or(image_size),
                seed,
                max_objects,
                encoding: image_format.parse::<ImageEncoding>()?,
                rows_per_group,
            };
            let files = data::synth::write_dataset(&cfg, &out, train, val)?;
            for f in files {
                println!("wrote {}", f.display());
            }
            Ok(())
        }
        DataCommand::Import {
            jsonl,
            images,
            out,
            split,
            policy,
        } => {
            let report =
                data::import::import_jsonl(&jsonl, &images, &out, &split, policy.parse()?)?;
            println!("wrote {} rows to {}", report.written, report.file.display());
            for (line, reason) in &report.skipped {
                println!("  skipped line {line}: {reason}");
            }
            for (line, warning) in &report.warnings {
                println!("  warning line {line}: {warning}");
            }
            Ok(())
        }
    }
}
