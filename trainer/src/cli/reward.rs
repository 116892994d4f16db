//! `spatialthinker reward`: score a JSONL file of responses with the spatial or the r1v reward.
//!
//! Input lines: `{"id", "response", "ground_truth", "problem"}`. Output lines, in input order:
//! `{"id", "overall", "format", "count", "accuracy", "spatial"}`, or `{"id", "error"}` for a row
//! the reference reward would raise on. A malformed input line is reported with its line number
//! on stderr; the other lines are still scored and the command exits non-zero at the end.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rewards::{
    ExactLabelSimilarity, LabelSimilarity, RewardInput, RewardKind, WordVectorSimilarity,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// Score responses from a JSONL file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSONL input, one `{"id", "response", "ground_truth", "problem"}` object per line.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the scores (JSONL); standard output when omitted.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Which reward: `spatial` (SpatialThinker) or `r1v` (vanilla GRPO).
    #[arg(long, default_value = "spatial", value_parser = parse_kind)]
    reward: RewardKind,
    /// Word vectors (`word f1 f2 …` per line) for spaCy-style label similarity; without it labels
    /// are similar only when identical.
    #[arg(long)]
    word_vectors: Option<PathBuf>,
}

fn parse_kind(s: &str) -> Result<RewardKind, String> {
    s.parse().map_err(|e: rewards::RewardError| e.to_string())
}

/// One input row.
#[derive(Debug, Deserialize)]
struct Row {
    id: Value,
    response: String,
    ground_truth: String,
    problem: String,
}

/// Score the file; exits non-zero if any input line was malformed.
pub fn run(args: Args) -> Result<()> {
    let sim: Box<dyn LabelSimilarity> = match &args.word_vectors {
        Some(path) => Box::new(WordVectorSimilarity::from_file(path)?),
        None => Box::new(ExactLabelSimilarity),
    };
    let file = std::fs::File::open(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    let mut rows = Vec::new();
    let mut bad_lines = 0usize;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line =
            line.with_context(|| format!("{}: reading line {}", args.input.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Row>(&line) {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("{}: line {}: {e}", args.input.display(), n + 1);
                bad_lines += 1;
            }
        }
    }
    let inputs: Vec<RewardInput<'_>> = rows
        .iter()
        .map(|r| RewardInput {
            response: &r.response,
            ground_truth: &r.ground_truth,
            problem: &r.problem,
        })
        .collect();
    let scores = rewards::score_batch(args.reward, &inputs, sim.as_ref());

    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(out);
    for (row, score) in rows.iter().zip(scores) {
        let value = match score {
            Ok(s) => json!({
                "id": row.id, "overall": s.overall, "format": s.format, "count": s.count,
                "accuracy": s.accuracy, "spatial": s.spatial,
            }),
            Err(e) => json!({ "id": row.id, "error": e.to_string() }),
        };
        serde_json::to_writer(&mut out, &value)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    if bad_lines > 0 {
        bail!(
            "{bad_lines} malformed input line(s) in {}",
            args.input.display()
        );
    }
    Ok(())
}
