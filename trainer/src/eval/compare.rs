//! `eval report`: the benchmarks and categories of one or more evaluation runs in one table,
//! beside the paper's published numbers (trainer/assets/paper_results.json, taken from the
//! project page's results tables; docs/benchmarks.md), as Markdown and a PNG chart.
//!
//! A run folder holds one sub-folder per benchmark (`<run>/<benchmark>/report.json`, what
//! `eval --benchmark` writes), or is itself one benchmark's folder. Headline rows follow the
//! paper's columns: CV-Bench 2D and 3D are the pooled accuracy of their tasks (Count + Relation,
//! Depth + Distance) when a run evaluated all of CV-Bench, and "CV-Bench" is the mean of the two,
//! as the page's "CV Avg" is (78.2 = (77.7 + 78.7) / 2); "BLINK" is the mean of Rel and Depth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::benchmarks::Benchmark;
use super::report::{Accuracy, EvalReport};
use super::EvalError;

/// The paper's numbers, committed as data with their source.
pub const PAPER_RESULTS_JSON: &str = include_str!("../../assets/paper_results.json");

/// The benchmarks of the paper's headline tables (its 6 spatial and 6 real-world columns).
pub const PAPER_TWELVE: [&str; 12] = [
    "3dsrbench",
    "cv-bench",
    "blink",
    "mmvp",
    "spatialreasoner",
    "spatialbench",
    "mm-star",
    "vstar",
    "realworld_qa",
    "mme-rw-lite",
    "robospatial",
    "hallusionbench",
];

/// Headline rows: metric id and label, in table order.
pub const METRICS: [(&str, &str); 21] = [
    ("3dsrbench", "3DSRBench"),
    ("cv-bench-2d", "CV-Bench 2D"),
    ("cv-bench-3d", "CV-Bench 3D"),
    ("cv-bench", "CV-Bench (mean of 2D, 3D)"),
    ("blink-spatial", "BLINK Rel"),
    ("blink-depth", "BLINK Depth"),
    ("blink", "BLINK (mean of Rel, Depth)"),
    ("mmvp", "MMVP"),
    ("spatialreasoner", "SpatialReasonerEval"),
    ("spatialbench", "SpatialBench"),
    ("mm-star", "MM-Star"),
    ("vstar", "VStar"),
    ("realworld_qa", "RealWorldQA"),
    ("mme-rw-lite", "MME-RW-Lite"),
    ("robospatial", "RoboSpatial-Home"),
    ("hallusionbench", "HallusionBench"),
    ("blink-object", "BLINK Object Loc."),
    ("blink-counting", "BLINK Counting"),
    ("blink-multi-view", "BLINK Multi-view"),
    ("blink-jigsaw", "BLINK Jigsaw"),
    ("stvqa", "STVQA-7K val"),
];

/// The label of metric `id`.
pub fn metric_label(id: &str) -> &str {
    METRICS
        .iter()
        .find(|(m, _)| *m == id)
        .map_or(id, |(_, l)| *l)
}

/// One model's published numbers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PaperModel {
    /// Model name as on the page.
    pub name: String,
    /// Accuracy in percent per metric id.
    pub results: BTreeMap<String, f64>,
    /// The page's "Avg. Acc. (12)".
    pub stated_avg12: f64,
}

#[derive(Debug, Deserialize)]
struct PaperFile {
    source: serde_json::Value,
    models: Vec<PaperModel>,
}

/// The published numbers and their source (URL with commit).
pub fn paper_results() -> Result<(Vec<PaperModel>, String), EvalError> {
    let file: PaperFile =
        serde_json::from_str(PAPER_RESULTS_JSON).map_err(|e| EvalError::Json {
            path: PathBuf::from("trainer/assets/paper_results.json"),
            line: e.line(),
            message: e.to_string(),
        })?;
    let url = file.source["url"].as_str().unwrap_or_default().to_string();
    Ok((file.models, url))
}

/// The reports of one run folder, per benchmark.
#[derive(Debug, Clone)]
pub struct Run {
    /// Column label (the folder's name).
    pub label: String,
    /// The folder.
    pub dir: PathBuf,
    /// One report per benchmark found.
    pub reports: BTreeMap<Benchmark, EvalReport>,
}

/// The benchmark a report belongs to: its `benchmark` entry, else its folder's name.
fn benchmark_of(report: &EvalReport, folder: &Path) -> Option<Benchmark> {
    report
        .run
        .get("benchmark")
        .and_then(|b| Benchmark::from_name(b))
        .or_else(|| {
            folder
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(Benchmark::from_name)
        })
}

fn read_report(path: &Path) -> Result<EvalReport, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| EvalError::Json {
        path: path.to_path_buf(),
        line: e.line(),
        message: e.to_string(),
    })
}

/// Read the benchmark reports of run folder `dir`.
pub fn load_run(dir: &Path) -> Result<Run, EvalError> {
    let mut reports = BTreeMap::new();
    let own = dir.join("report.json");
    if own.is_file() {
        let r = read_report(&own)?;
        if let Some(b) = benchmark_of(&r, dir) {
            reports.insert(b, r);
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|source| EvalError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut subdirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("report.json").is_file())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        let r = read_report(&sub.join("report.json"))?;
        if let Some(b) = benchmark_of(&r, &sub) {
            reports.insert(b, r);
        }
    }
    if reports.is_empty() {
        return Err(EvalError::Unsupported(format!(
            "{}: no benchmark report found (expected <run>/<benchmark>/report.json as `eval --benchmark` writes)",
            dir.display()
        )));
    }
    let label = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(Run {
        label,
        dir: dir.to_path_buf(),
        reports,
    })
}

/// One cell: accuracy in percent, with its binomial standard error where measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Value {
    /// Accuracy, %.
    pub percent: f64,
    /// Standard error, % (measured values and means of measured values).
    pub std_err: Option<f64>,
    /// Samples behind the number (measured values).
    pub n: Option<usize>,
}

impl Value {
    fn measured(a: &Accuracy) -> Self {
        Value {
            percent: a.accuracy * 100.0,
            std_err: Some(a.std_err * 100.0),
            n: Some(a.total),
        }
    }

    fn published(p: f64) -> Self {
        Value {
            percent: p,
            std_err: None,
            n: None,
        }
    }

    /// Mean of `values`; the standard error of a mean of independent estimates is
    /// sqrt(sum se²) / k.
    fn mean(values: &[Value]) -> Self {
        let k = values.len() as f64;
        let percent = values.iter().map(|v| v.percent).sum::<f64>() / k;
        let std_err = values
            .iter()
            .map(|v| v.std_err.map(|s| s * s))
            .sum::<Option<f64>>()
            .map(|s| s.sqrt() / k);
        Value {
            percent,
            std_err,
            n: None,
        }
    }
}

/// Pooled accuracy of those of `cats` that `report` has (`None` when it has none of them).
fn pooled(report: &EvalReport, cats: &[&str]) -> Option<Accuracy> {
    let mut correct = 0;
    let mut total = 0;
    for a in cats.iter().filter_map(|c| report.categories.get(*c)) {
        correct += a.correct;
        total += a.total;
    }
    (total > 0).then(|| Accuracy::new(correct, total))
}

/// Headline metric `id` of a run.
pub fn run_metric(run: &Run, id: &str) -> Option<Value> {
    let overall = |b: Benchmark| run.reports.get(&b).map(|r| Value::measured(&r.overall));
    match id {
        "cv-bench-2d" => overall(Benchmark::CvBench2d).or_else(|| {
            run.reports
                .get(&Benchmark::CvBench)
                .and_then(|r| pooled(r, &["Count", "Relation"]))
                .map(|a| Value::measured(&a))
        }),
        "cv-bench-3d" => overall(Benchmark::CvBench3d).or_else(|| {
            run.reports
                .get(&Benchmark::CvBench)
                .and_then(|r| pooled(r, &["Depth", "Distance"]))
                .map(|a| Value::measured(&a))
        }),
        "cv-bench" => Some(Value::mean(&[
            run_metric(run, "cv-bench-2d")?,
            run_metric(run, "cv-bench-3d")?,
        ])),
        "blink" => Some(Value::mean(&[
            run_metric(run, "blink-spatial")?,
            run_metric(run, "blink-depth")?,
        ])),
        other => Benchmark::from_name(other).and_then(overall),
    }
}

/// A column of the comparison: a run or a paper model.
#[derive(Debug, Clone)]
pub enum Column {
    /// An evaluation run.
    Run(Run),
    /// The paper's numbers for one model.
    Paper(PaperModel),
}

impl Column {
    /// Header text.
    pub fn label(&self) -> String {
        match self {
            Column::Run(r) => r.label.clone(),
            Column::Paper(p) => format!("paper: {}", p.name),
        }
    }

    /// Headline metric `id`.
    pub fn metric(&self, id: &str) -> Option<Value> {
        match self {
            Column::Run(r) => run_metric(r, id),
            Column::Paper(p) => p.results.get(id).copied().map(Value::published),
        }
    }
}

/// One row of the comparison table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Row label.
    pub label: String,
    /// Short label for the chart (ASCII).
    pub short: String,
    /// Whether this is a headline row (charted) rather than a category or average row.
    pub headline: bool,
    /// One value per column.
    pub values: Vec<Option<Value>>,
}

/// The comparison of runs and published numbers.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Columns, runs first.
    pub columns: Vec<Column>,
    /// Rows: headline metrics with their categories, then the averages.
    pub rows: Vec<Row>,
    /// The benchmarks (of the paper's twelve) that every column has; the first average covers
    /// exactly these.
    pub common: Vec<&'static str>,
    /// Source of the paper's numbers, when shown.
    pub paper_source: Option<String>,
}

impl Comparison {
    /// Build the table for `runs`, with the paper's models when `paper`.
    pub fn build(runs: Vec<Run>, paper: bool) -> Result<Self, EvalError> {
        let mut columns: Vec<Column> = runs.into_iter().map(Column::Run).collect();
        let mut paper_source = None;
        if paper {
            let (models, url) = paper_results()?;
            columns.extend(models.into_iter().map(Column::Paper));
            paper_source = Some(url);
        }
        let mut rows = Vec::new();
        for (id, label) in METRICS {
            let values: Vec<Option<Value>> = columns.iter().map(|c| c.metric(id)).collect();
            if values.iter().all(Option::is_none) {
                continue;
            }
            let short = match id {
                "cv-bench" => "CV-Bench mean 2D,3D",
                "blink" => "BLINK mean Rel,Depth",
                _ => label,
            };
            rows.push(Row {
                label: label.to_string(),
                short: short.to_string(),
                headline: true,
                values,
            });
            // Category rows under the benchmark the metric reads.
            if let Some(bench) = Benchmark::from_name(id) {
                rows.extend(category_rows(&columns, bench));
            }
        }
        let common: Vec<&'static str> = PAPER_TWELVE
            .into_iter()
            .filter(|id| columns.iter().all(|c| c.metric(id).is_some()))
            .collect();
        let mean_over = |ids: &[&str], c: &Column| -> Option<Value> {
            if ids.is_empty() {
                return None;
            }
            let vals = ids
                .iter()
                .map(|id| c.metric(id))
                .collect::<Option<Vec<_>>>()?;
            Some(Value::mean(&vals))
        };
        rows.push(Row {
            label: format!(
                "Mean over the {} of the paper's 12 benchmarks every column has ({})",
                common.len(),
                if common.is_empty() {
                    "none".to_string()
                } else {
                    common
                        .iter()
                        .map(|id| metric_label(id))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            short: format!("Mean of {} common", common.len()),
            headline: !common.is_empty(),
            values: columns.iter().map(|c| mean_over(&common, c)).collect(),
        });
        rows.push(Row {
            label: format!(
                "Mean over all 12 ({}); – where one is missing",
                PAPER_TWELVE
                    .iter()
                    .map(|id| metric_label(id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            short: "Mean of all 12".to_string(),
            headline: false,
            values: columns
                .iter()
                .map(|c| mean_over(&PAPER_TWELVE, c))
                .collect(),
        });
        if paper {
            rows.push(Row {
                label: "Avg. Acc. (12) as stated on the page (its benchmark set is not stated)"
                    .to_string(),
                short: "Stated Avg (12)".to_string(),
                headline: false,
                values: columns
                    .iter()
                    .map(|c| match c {
                        Column::Paper(p) => Some(Value::published(p.stated_avg12)),
                        Column::Run(_) => None,
                    })
                    .collect(),
            });
        }
        Ok(Self {
            columns,
            rows,
            common,
            paper_source,
        })
    }

    /// The Markdown table (runs as `acc ± s.e.`, published numbers as printed on the page).
    pub fn to_markdown(&self) -> String {
        let mut md = String::from("# Benchmark comparison\n\n");
        for c in &self.columns {
            if let Column::Run(r) = c {
                let model = r
                    .reports
                    .values()
                    .find_map(|rep| rep.run.get("model").cloned())
                    .unwrap_or_default();
                let matching = r
                    .reports
                    .values()
                    .find_map(|rep| rep.run.get("matching").cloned())
                    .unwrap_or_default();
                let _ = writeln!(
                    md,
                    "- `{}`: {} (model `{model}`, {matching} matching)",
                    r.label,
                    r.dir.display()
                );
            }
        }
        if let Some(src) = &self.paper_source {
            let _ = writeln!(
                md,
                "- paper columns: the project page's results tables, {src}"
            );
        }
        md.push_str("\nAccuracy in %; measured values ± binomial standard error.\n\n| Benchmark |");
        for c in &self.columns {
            let _ = write!(md, " {} |", c.label());
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(self.columns.len()));
        md.push('\n');
        for row in &self.rows {
            let _ = write!(md, "| {} |", row.label);
            for (v, c) in row.values.iter().zip(&self.columns) {
                let _ = write!(md, " {} |", format_value(v.as_ref(), c));
            }
            md.push('\n');
        }
        md
    }

    /// Write `comparison.md` and `comparison.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), EvalError> {
        std::fs::create_dir_all(dir).map_err(|source| EvalError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let md = dir.join("comparison.md");
        std::fs::write(&md, self.to_markdown()).map_err(|source| EvalError::Io {
            path: md.clone(),
            source,
        })?;
        let png = dir.join("comparison.png");
        super::chart::draw(self)
            .save(&png)
            .map_err(|e| EvalError::Image {
                path: png.clone(),
                message: e.to_string(),
            })?;
        Ok((md, png))
    }
}

/// Category rows of `bench` for the run columns that have it.
fn category_rows(columns: &[Column], bench: Benchmark) -> Vec<Row> {
    let mut cats: Vec<String> = Vec::new();
    for c in columns {
        if let Column::Run(r) = c {
            if let Some(rep) = r.reports.get(&bench) {
                for k in rep.categories.keys() {
                    if !cats.contains(k) {
                        cats.push(k.clone());
                    }
                }
            }
        }
    }
    cats.sort();
    cats.into_iter()
        .map(|cat| Row {
            label: format!("{} · {cat}", bench.name()),
            short: format!("{} / {cat}", bench.name()),
            headline: false,
            values: columns
                .iter()
                .map(|c| match c {
                    Column::Run(r) => r
                        .reports
                        .get(&bench)
                        .and_then(|rep| rep.categories.get(&cat))
                        .map(Value::measured),
                    Column::Paper(_) => None,
                })
                .collect(),
        })
        .collect()
}

fn format_value(v: Option<&Value>, column: &Column) -> String {
    match (v, column) {
        (None, _) => "–".to_string(),
        (Some(v), Column::Paper(_)) => format!("{:.1}", v.percent),
        (Some(v), Column::Run(_)) => match v.std_err {
            Some(se) => format!("{:.2} ± {:.2}", v.percent, se),
            None => format!("{:.2}", v.percent),
        },
    }
}
