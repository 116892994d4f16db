//! Per-step metrics: one JSON object per line in `metrics.jsonl`, the same scalars as
//! TensorBoard event files (via `tensorboard-rs`), and sample rollouts in `samples.jsonl`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tensorboard_rs::summary_writer::SummaryWriter;

use super::{Result, TrainError};

/// File name of the per-step metrics.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// File name of the sample rollouts.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// Sub-folder of the TensorBoard event files.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// One sampled rollout, for inspection.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRollout<'a> {
    /// RL step.
    pub step: u64,
    /// Prompt text.
    pub prompt: &'a str,
    /// Generated response.
    pub response: &'a str,
    /// Ground-truth answer.
    pub ground_truth: &'a str,
    /// Total reward.
    pub reward: f64,
    /// Reward components (format, accuracy, count, spatial…).
    pub components: BTreeMap<String, f64>,
    /// The dataset row the prompt came from (its image is drawn by the run report).
    pub row: Option<SampleRow>,
}

/// A dataset row named by parquet file and row index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SampleRow {
    /// The parquet file.
    pub file: PathBuf,
    /// Row index within the file.
    pub row: usize,
}

/// Writes metrics of every step to JSONL and TensorBoard.
pub struct MetricsLogger {
    dir: PathBuf,
    jsonl: BufWriter<File>,
    samples: Option<BufWriter<File>>,
    tensorboard: SummaryWriter,
}

impl std::fmt::Debug for MetricsLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLogger")
            .field("dir", &self.dir)
            .finish()
    }
}

fn append(path: &Path) -> Result<BufWriter<File>> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    Ok(BufWriter::new(f))
}

impl MetricsLogger {
    /// Opens (appending) `dir/metrics.jsonl` and a new event file under `dir/tensorboard/`.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let tb = dir.join(TENSORBOARD_DIR);
        std::fs::create_dir_all(&tb).map_err(|e| TrainError::io(&tb, e))?;
        Ok(MetricsLogger {
            dir: dir.to_path_buf(),
            jsonl: append(&dir.join(METRICS_FILE))?,
            samples: None,
            tensorboard: SummaryWriter::new(&tb),
        })
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Logs one step: a JSON line `{"step": s, <name>: value, …}` and one TensorBoard scalar per
    /// finite value (tag = name, e.g. `reward/mean`, `actor/grad_norm`, `perf/tokens_per_s`).
    pub fn log(&mut self, step: u64, scalars: &BTreeMap<String, f64>) -> Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), step.into());
        for (k, &v) in scalars {
            let json = serde_json::Number::from_f64(v)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null);
            obj.insert(k.clone(), json);
            if v.is_finite() {
                self.tensorboard.add_scalar(k, v as f32, step as usize);
            }
        }
        self.write_line(&obj)?;
        self.tensorboard.flush();
        Ok(())
    }

    /// Logs an event that is not a scalar, as a JSON line `{"step": s, "event": name, …fields}`
    /// (e.g. the dataset rows a run skipped).
    pub fn log_event(
        &mut self,
        step: u64,
        name: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), step.into());
        obj.insert("event".into(), name.into());
        obj.extend(fields);
        self.write_line(&obj)
    }

    fn write_line(&mut self, obj: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
        let path = self.dir.join(METRICS_FILE);
        serde_json::to_writer(&mut self.jsonl, obj).map_err(|e| TrainError::io(&path, e.into()))?;
        self.jsonl
            .write_all(b"\n")
            .map_err(|e| TrainError::io(&path, e))?;
        self.jsonl.flush().map_err(|e| TrainError::io(&path, e))
    }

    /// Appends sample rollouts to `samples.jsonl`.
    pub fn log_samples(&mut self, samples: &[LoggedRollout<'_>]) -> Result<()> {
        let path = self.dir.join(SAMPLES_FILE);
        if self.samples.is_none() {
            self.samples = Some(append(&path)?);
        }
        let w = self.samples.as_mut().expect("opened above");
        for s in samples {
            serde_json::to_writer(&mut *w, s).map_err(|e| TrainError::io(&path, e.into()))?;
            w.write_all(b"\n").map_err(|e| TrainError::io(&path, e))?;
        }
        w.flush().map_err(|e| TrainError::io(&path, e))
    }
}
