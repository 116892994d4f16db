//! `spatialthinker data`: dataset statistics, validation, one row shown (its image written out),
//! synthetic data and JSONL import.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use data::schema::ColumnNames;
use data::synth::{ImageEncoding, SynthConfig};
use data::{DatasetFiles, Policy};
use trainer::processor::Processor;
use trainer::train::rollout::PromptBuilder;
use trainer::train::row_filter::{self, PromptLengthCheck};

use super::train::ConfigArgs;

/// Inspect, validate, synthesise or import datasets in the STVQA-7K schema.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

/// Column names of the three training columns.
#[derive(Debug, Clone, clap::Args)]
struct Columns {
    /// Prompt column [default: `validate`: the config's data.prompt_key; else problem].
    #[arg(long)]
    prompt_column: Option<String>,
    /// Image column, an HF Image struct {bytes, path} [default: data.image_key; else images].
    #[arg(long)]
    image_column: Option<String>,
    /// Ground-truth column read by the reward [default: data.answer_key; else
    /// answer_option_text].
    #[arg(long)]
    answer_column: Option<String>,
}

impl Columns {
    /// The names given, the others from `defaults`.
    fn names_or(&self, defaults: ColumnNames) -> ColumnNames {
        ColumnNames {
            prompt: self.prompt_column.clone().unwrap_or(defaults.prompt),
            image: self.image_column.clone().unwrap_or(defaults.image),
            answer: self.answer_column.clone().unwrap_or(defaults.answer),
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
    /// List the rows a training run leaves out (file, row, reason): an image that does not
    /// decode, an answer without what the reward reads, a prompt without the `Image size: (W x H)`
    /// line and, with --model, a prompt longer than max_prompt_length. Exits non-zero if any.
    #[command(
        after_help = "The column names, the reward kind and the prompt settings \
(max_prompt_length, min_pixels, max_pixels, format_prompt) come from the training config
(--config, --set; default the embedded configs/tiny-cpu.toml), so the rows listed are the rows
`train` with that config skips. Example:
  spatialthinker data validate hunarbatra/STVQA-7K --config configs/spatialthinker-7b.toml \\
      --model Qwen/Qwen2.5-VL-7B-Instruct"
    )]
    Validate {
        /// HF dataset folder, parquet folder or file, or hub id.
        path: String,
        #[command(flatten)]
        columns: Columns,
        #[command(flatten)]
        config: ConfigArgs,
        /// Model folder or hub id whose tokenizer and image processor count prompt tokens;
        /// without it prompt lengths are not checked.
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Longest prompt in tokens, image tokens included [default: the config's
        /// data.max_prompt_length].
        #[arg(long, value_name = "N")]
        max_prompt_length: Option<usize>,
        /// `skip`: list every row; `error`: stop with the first as the error.
        #[arg(long, default_value = "skip")]
        policy: String,
        /// Rows and warnings to print per split (counts are always complete).
        #[arg(long, default_value_t = 50)]
        show: usize,
    },
    /// Print one row (image id, category, question, options, answer) and write its image to a
    /// file, e.g. to ask `infer` about it.
    #[command(after_help = "Example (a row of the tiny demo's validation split):
  spatialthinker data show runs/tiny-cpu/synthetic-data --split val --row 3 --image val3.png")]
    Show {
        /// HF dataset folder, parquet folder or file, or hub id.
        path: String,
        /// Split.
        #[arg(long, default_value = "val")]
        split: String,
        /// Row number within the split (0-based, across its files in order).
        #[arg(long, default_value_t = 0)]
        row: usize,
        /// Write the row's image here (its bytes as stored, PNG or JPEG).
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        #[command(flatten)]
        columns: Columns,
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

/// `data show`: one row's fields, its image written to `image`.
fn show(
    path: &str,
    split: &str,
    row: usize,
    image: Option<&std::path::Path>,
    columns: &ColumnNames,
) -> Result<()> {
    let files = DatasetFiles::locate(path)?;
    let paths = files.splits.get(split).with_context(|| {
        format!(
            "{} has no split `{split}` (splits: {})",
            files.root.display(),
            files.splits.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let mut first = 0;
    for file in paths {
        let parquet = data::reader::ParquetFile::open(file, columns)?;
        let rows = parquet.num_rows();
        if row >= first + rows {
            first += rows;
            continue;
        }
        let local = row - first;
        let record = parquet
            .read_row(local)?
            .with_context(|| format!("{}: row {local}", file.display()))?;
        let field = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        println!("file:      {} (row {local})", file.display());
        println!("image_id:  {}", field(&record.image_id));
        println!("category:  {}", field(&record.category));
        println!("question:  {}", field(&record.question_only));
        println!(
            "options:   {}",
            record.options.as_ref().map_or("-".into(), |o| o.join(";"))
        );
        println!("answer:    {}", field(&record.answer_option_text_only));
        println!("truth:     {}", record.ground_truth.replace('\n', " "));
        if let Some(out) = image {
            std::fs::write(out, &record.image.bytes)
                .with_context(|| format!("writing {}", out.display()))?;
            let size = image::load_from_memory(&record.image.bytes)
                .map(|i| format!("{} x {}", i.width(), i.height()))
                .unwrap_or_else(|e| format!("does not decode: {e}"));
            println!("image:     {} ({size})", out.display());
        }
        return Ok(());
    }
    bail!("split `{split}` has {first} rows; --row {row} is past its end")
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        DataCommand::Show {
            path,
            split,
            row,
            image,
            columns,
        } => show(
            &path,
            &split,
            row,
            image.as_deref(),
            &columns.names_or(ColumnNames::default()),
        ),
        DataCommand::Stats { path, columns } => {
            let files = DatasetFiles::locate(&path)?;
            let mut splits = BTreeMap::new();
            let columns = columns.names_or(ColumnNames::default());
            for (split, paths) in &files.splits {
                splits.insert(split.clone(), data::stats::split_stats(paths, &columns)?);
            }
            println!("{}", files.root.display());
            print!("{}", data::stats::render_tables(&splits));
            Ok(())
        }
        DataCommand::Validate {
            path,
            columns,
            config,
            model,
            max_prompt_length,
            policy,
            show,
        } => validate(ValidateArgs {
            path,
            columns,
            config,
            model,
            max_prompt_length,
            policy: policy.parse()?,
            show,
        }),
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
                ..SynthConfig::default()
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

/// The arguments of `data validate`.
struct ValidateArgs {
    path: String,
    columns: Columns,
    config: ConfigArgs,
    model: Option<PathBuf>,
    max_prompt_length: Option<usize>,
    policy: Policy,
    show: usize,
}

/// `data validate`: the row scan the trainer runs before training, on every split.
fn validate(args: ValidateArgs) -> Result<()> {
    let cfg = args.config.load()?;
    let columns = args.columns.names_or(ColumnNames {
        prompt: cfg.data.prompt_key.clone(),
        image: cfg.data.image_key.clone(),
        answer: cfg.data.answer_key.clone(),
    });
    let reward = cfg.reward.kind;
    let builder = PromptBuilder {
        min_pixels: cfg.data.min_pixels,
        max_pixels: cfg.data.max_pixels,
        max_prompt_length: args.max_prompt_length.unwrap_or(cfg.data.max_prompt_length),
        format_prompt: cfg.data.format_prompt.clone(),
    };
    let processor = match &args.model {
        Some(model) => {
            let dir = super::generate::model_dir(model)?;
            let processor = Processor::from_model_dir(&dir)
                .with_context(|| format!("loading the processor of {}", dir.display()))?;
            println!(
                "prompt lengths: checked against max_prompt_length = {} with the processor of {}",
                builder.max_prompt_length,
                dir.display()
            );
            Some(processor)
        }
        None => {
            println!(
                "prompt lengths: not checked (pass --model DIR to count prompt tokens against \
                 max_prompt_length = {})",
                builder.max_prompt_length
            );
            None
        }
    };
    let prompts = processor.as_ref().map(|processor| PromptLengthCheck {
        processor,
        builder: &builder,
    });
    let files = DatasetFiles::locate(&args.path)?;
    let mut skipped = 0;
    for (split, paths) in &files.splits {
        let scan = row_filter::scan_rows(paths, &columns, reward, prompts, &mut |_| {})
            .with_context(|| format!("validating split `{split}`"))?;
        if args.policy == Policy::Error {
            scan.check_budget(0.0)?;
        }
        println!(
            "{split}: {} rows, {} to skip, {} warnings",
            scan.rows,
            scan.skipped.len(),
            scan.warnings
        );
        for row in scan.skipped.iter().take(args.show) {
            println!("  {row}");
        }
        if scan.skipped.len() > args.show {
            println!("  … {} more rows to skip", scan.skipped.len() - args.show);
        }
        for warning in scan.warning_list.iter().take(args.show) {
            println!("  {warning}");
        }
        if scan.warnings > args.show {
            println!("  … {} more warnings", scan.warnings - args.show);
        }
        skipped += scan.skipped.len();
    }
    if skipped > 0 {
        bail!("{skipped} rows to skip");
    }
    Ok(())
}
