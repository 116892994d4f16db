//! Per-sample records (JSONL, appended as evaluation goes so a rerun resumes) and the accuracy
//! report: overall and per category, each with its binomial standard error sqrt(p(1-p)/n).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::matching::MatchRule;
use super::EvalError;

/// What is logged for one evaluated sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// The sample's id.
    pub id: String,
    /// Its category, if any.
    pub category: Option<String>,
    /// The user text the model was given.
    pub prompt: String,
    /// The full generated response.
    pub response: String,
    /// The extracted answer (`None` when extraction failed).
    pub answer: Option<String>,
    /// Normalised ground truth.
    pub gt: String,
    /// Mapped prediction.
    pub pred: String,
    /// Whether it was scored correct.
    pub correct: bool,
    /// The matching rule that decided `pred`.
    pub rule: MatchRule,
    /// The SpatialThinker reward's accuracy component for this response (format-gated exact match
    /// of `(B) text`, what the trainer's validation reports), when the row has the reward's
    /// ground truth (STVQA parquet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_accuracy: Option<f64>,
}

/// An append-only JSONL file of [`SampleRecord`]s.
pub struct SampleLog {
    path: PathBuf,
    file: std::fs::File,
}

impl SampleLog {
    /// Open `path` for appending and return the records already in it (so they are not
    /// re-evaluated). A last line cut short by an interrupted run is dropped and rewritten later.
    pub fn open(path: &Path) -> Result<(Self, Vec<SampleRecord>), EvalError> {
        let io = |source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut done = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io)?;
            let mut valid_len = 0;
            for line in text.split_inclusive('\n') {
                if !line.ends_with('\n') {
                    break; // interrupted write
                }
                let record: SampleRecord =
                    serde_json::from_str(line.trim_end()).map_err(|e| EvalError::Json {
                        path: path.to_path_buf(),
                        line: done.len() + 1,
                        message: e.to_string(),
                    })?;
                done.push(record);
                valid_len += line.len();
            }
            if valid_len < text.len() {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io)?;
                f.set_len(valid_len as u64).map_err(io)?;
            }
        } else if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
            },
            done,
        ))
    }

    /// Append one record and flush it to the file.
    pub fn append(&mut self, record: &SampleRecord) -> Result<(), EvalError> {
        let mut line = serde_json::to_string(record).map_err(|e| EvalError::Json {
            path: self.path.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|source| EvalError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// Accuracy of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Samples scored correct.
    pub correct: usize,
    /// Samples scored.
    pub total: usize,
    /// correct / total (0 when total is 0).
    pub accuracy: f64,
    /// Binomial standard error sqrt(p(1-p)/n) (0 when total is 0).
    pub std_err: f64,
}

impl Accuracy {
    /// Accuracy and standard error of `correct` out of `total`.
    pub fn new(correct: usize, total: usize) -> Self {
        let (accuracy, std_err) = if total == 0 {
            (0.0, 0.0)
        } else {
            let p = correct as f64 / total as f64;
            (p, (p * (1.0 - p) / total as f64).sqrt())
        };
        Self {
            correct,
            total,
            accuracy,
            std_err,
        }
    }
}

/// The evaluation report written as `report.json` and `report.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Free-form run description (model, data, template, matching …), in insertion order.
    pub run: BTreeMap<String, String>,
    /// Accuracy over all samples.
    pub overall: Accuracy,
    /// Accuracy per category (samples without one are counted only overall).
    pub categories: BTreeMap<String, Accuracy>,
    /// Mean reward accuracy over the samples that have one (the trainer's validation metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_accuracy: Option<Accuracy>,
}

impl EvalReport {
    /// Summarise `records` (each id counted once, the last record winning).
    pub fn from_records(records: &[SampleRecord], run: BTreeMap<String, String>) -> Self {
        let mut seen = HashSet::new();
        let mut overall = (0, 0);
        let mut reward = (0, 0);
        let mut cats: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for r in records.iter().rev() {
            if !seen.insert(r.id.as_str()) {
                continue;
            }
            overall.0 += r.correct as usize;
            overall.1 += 1;
            if let Some(a) = r.reward_accuracy {
                reward.0 += (a > 0.5) as usize;
                reward.1 += 1;
            }
            if let Some(c) = &r.category {
                let e = cats.entry(c.clone()).or_default();
                e.0 += r.correct as usize;
                e.1 += 1;
            }
        }
        Self {
            run,
            overall: Accuracy::new(overall.0, overall.1),
            reward_accuracy: (reward.1 > 0).then(|| Accuracy::new(reward.0, reward.1)),
            categories: cats
                .into_iter()
                .map(|(k, (c, n))| (k, Accuracy::new(c, n)))
                .collect(),
        }
    }

    /// A Markdown table: accuracy ± standard error in percent, correct / total.
    pub fn to_markdown(&self) -> String {
        let mut md = String::from("# Evaluation report\n\n");
        for (k, v) in &self.run {
            let _ = writeln!(md, "- {k}: `{v}`");
        }
        md.push_str("\n| split | accuracy (%) | ± s.e. (%) | correct | total |\n|---|---:|---:|---:|---:|\n");
        let mut row = |name: &str, a: &Accuracy| {
            let _ = writeln!(
                md,
                "| {name} | {:.2} | {:.2} | {} | {} |",
                a.accuracy * 100.0,
                a.std_err * 100.0,
                a.correct,
                a.total
            );
        };
        row("overall", &self.overall);
        for (k, a) in &self.categories {
            row(k, a);
        }
        if let Some(a) = &self.reward_accuracy {
            let _ = writeln!(
                md,
                "\nReward accuracy (the SpatialThinker reward's format-gated exact answer match, as the trainer validates): {:.2}% ± {:.2}% ({} / {})",
                a.accuracy * 100.0,
                a.std_err * 100.0,
                a.correct,
                a.total
            );
        }
        md
    }

    /// Write `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), EvalError> {
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| EvalError::Io { path, source })
        };
        let json = serde_json::to_string_pretty(self).map_err(|e| EvalError::Json {
            path: dir.join("report.json"),
            line: 0,
            message: e.to_string(),
        })?;
        write("report.json", json + "\n")?;
        write("report.md", self.to_markdown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rec(id: &str, cat: Option<&str>, correct: bool) -> SampleRecord {
        SampleRecord {
            id: id.into(),
            category: cat.map(str::to_string),
            prompt: "p".into(),
            response: "r".into(),
            answer: Some("A".into()),
            gt: "A".into(),
            pred: "A".into(),
            correct,
            rule: MatchRule::LeadingLetter,
            reward_accuracy: None,
        }
    }

    #[test]
    fn reward_accuracy_is_reported_when_present() {
        let mut a = rec("a", None, true);
        a.reward_accuracy = Some(1.0);
        let mut b = rec("b", None, true);
        b.reward_accuracy = Some(0.0);
        let c = rec("c", None, false);
        let report = EvalReport::from_records(&[a, b, c], BTreeMap::new());
        let r = report.reward_accuracy.unwrap();
        assert_eq!((r.correct, r.total), (1, 2));
        assert_eq!((report.overall.correct, report.overall.total), (2, 3));
        assert!(report.to_markdown().contains("Reward accuracy"));
        let plain = EvalReport::from_records(&[rec("d", None, true)], BTreeMap::new());
        assert!(plain.reward_accuracy.is_none());
    }

    #[test]
    fn binomial_standard_error() {
        // 3 of 4: p = 0.75, se = sqrt(0.75 * 0.25 / 4) = 0.21650635...
        let a = Accuracy::new(3, 4);
        assert_eq!(a.accuracy, 0.75);
        assert!((a.std_err - 0.216_506_350_946_109_66).abs() < 1e-12);
        assert_eq!(Accuracy::new(0, 0).std_err, 0.0);
        assert_eq!(Accuracy::new(5, 5).std_err, 0.0);
    }

    #[test]
    fn report_per_category_and_markdown() {
        let records = vec![
            rec("1", Some("Depth"), true),
            rec("2", Some("Depth"), false),
            rec("3", Some("Count"), true),
            rec("4", None, false),
            rec("2", Some("Depth"), true), // a rerun of 2: the last one counts
        ];
        let r = EvalReport::from_records(&records, BTreeMap::new());
        assert_eq!((r.overall.correct, r.overall.total), (3, 4));
        assert_eq!(r.categories["Depth"], Accuracy::new(2, 2));
        assert_eq!(r.categories["Count"], Accuracy::new(1, 1));
        let md = r.to_markdown();
        assert!(md.contains("| overall | 75.00 | 21.65 | 3 | 4 |"), "{md}");
        assert!(md.contains("| Depth | 100.00 | 0.00 | 2 | 2 |"), "{md}");
    }

    #[test]
    fn log_resumes_and_drops_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/samples.jsonl");
        let (mut log, done) = SampleLog::open(&path).unwrap();
        assert!(done.is_empty());
        log.append(&rec("a", None, true)).unwrap();
        log.append(&rec("b", None, false)).unwrap();
        drop(log);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"id\":\"c\",\"categ").unwrap();
        drop(f);
        let (mut log, done) = SampleLog::open(&path).unwrap();
        assert_eq!(
            done.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        log.append(&rec("c", None, true)).unwrap();
        drop(log);
        let (_, done) = SampleLog::open(&path).unwrap();
        assert_eq!(done.len(), 3);
        assert_eq!(done[2], rec("c", None, true));
    }
}
