//! The run report: one self-contained `report.html` in a training run's folder (no network;
//! every image inlined as a base64 PNG) with the reward and reward-component curves, the KL,
//! the response length, the validation before and after GRPO, and a gallery of the sampled
//! rollouts — each image with the ground-truth and the predicted scene-graph boxes drawn
//! ([`crate::infer::overlay`]), the response and its reward parts — plus the curves as PNG files
//! in `report/` beside it for terminals.
//!
//! It reads only what a run writes (docs/architecture.md, "Outputs"): `metrics.jsonl` (per-step
//! scalars, `val/*` at each validation), `samples.jsonl` (sampled rollouts; newer runs name the
//! dataset row of each, older ones do not and get a blank canvas of the prompt's stated size),
//! `sft/metrics.jsonl`, `config.toml` and the `checkpoint-*` folders. The trainer writes the
//! report at the end of every run; `spatialthinker report RUN_DIR` writes it for any run folder.

pub mod html;
pub mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use data::scene::SceneGraph;
use image::{imageops, Rgb, RgbImage};
use serde::Deserialize;

use crate::infer::overlay::{draw_scene_graph, draw_text};
use crate::infer::parse::{parse_response, section};
use crate::train::metrics::{SampleRow, METRICS_FILE, SAMPLES_FILE};
use plot::{line_chart, Series};

/// File name of the report in the run folder.
pub const REPORT_FILE: &str = "report.html";
/// Folder (beside the report) of the PNG curves.
pub const CURVES_DIR: &str = "report";
/// Most rollouts shown in the gallery.
pub const GALLERY_SIZE: usize = 8;
/// Smallest side a gallery panel is drawn at (small images are enlarged without smoothing).
const PANEL_MIN_SIDE: u32 = 280;
/// Largest side of a gallery panel.
const PANEL_MAX_SIDE: u32 = 448;

/// Errors of reading a run folder or writing its report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {msg}")]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{0} is not a run folder: it holds neither metrics.jsonl nor samples.jsonl")]
    NotARun(PathBuf),
    #[error("encoding {what}: {msg}")]
    Image { what: String, msg: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Scalars logged at one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricLine {
    /// The step.
    pub step: u64,
    /// Name → value (non-finite values were logged as null and are absent).
    pub values: BTreeMap<String, f64>,
}

/// One line of `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SampleLine {
    /// RL step.
    pub step: u64,
    /// The dataset's prompt text.
    pub prompt: String,
    /// The sampled response.
    pub response: String,
    /// The reward's ground truth.
    pub ground_truth: String,
    /// Total reward.
    pub reward: f64,
    /// Reward parts.
    #[serde(default)]
    pub components: BTreeMap<String, f64>,
    /// The dataset row (absent in runs written before rows were logged).
    #[serde(default)]
    pub row: Option<SampleRow>,
}

/// What a run folder holds, read back.
#[derive(Debug, Clone, Default)]
pub struct RunData {
    /// The run folder.
    pub dir: PathBuf,
    /// Scalar lines of `metrics.jsonl` (event lines left out).
    pub metrics: Vec<MetricLine>,
    /// Scalar lines of `sft/metrics.jsonl`.
    pub sft: Vec<MetricLine>,
    /// `samples.jsonl`.
    pub samples: Vec<SampleLine>,
    /// `config.toml`, when present.
    pub config: Option<String>,
    /// Names of the `checkpoint-*` folders, in step order.
    pub checkpoints: Vec<String>,
}

/// Reads a JSONL file line by line (a missing file reads as empty); a malformed line is an error
/// naming the file and line, except a last line cut short by a run that is still writing.
fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>, ReportError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => {
                return Err(ReportError::Line {
                    path: path.to_path_buf(),
                    line: i + 1,
                    msg: e.to_string(),
                })
            }
        }
    }
    Ok(out)
}

fn metric_lines(path: &Path) -> Result<Vec<MetricLine>, ReportError> {
    let mut out = Vec::new();
    for v in read_jsonl(path)? {
        let Some(obj) = v.as_object() else { continue };
        if obj.contains_key("event") {
            continue;
        }
        let Some(step) = obj.get("step").and_then(|s| s.as_u64()) else {
            continue;
        };
        let values = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "step")
            .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
            .collect();
        out.push(MetricLine { step, values });
    }
    Ok(out)
}

impl RunData {
    /// Reads the run folder `dir`.
    pub fn load(dir: &Path) -> Result<Self, ReportError> {
        let metrics_path = dir.join(METRICS_FILE);
        let samples_path = dir.join(SAMPLES_FILE);
        if !metrics_path.is_file() && !samples_path.is_file() {
            return Err(ReportError::NotARun(dir.to_path_buf()));
        }
        let mut samples = Vec::new();
        for (i, v) in read_jsonl(&samples_path)?.into_iter().enumerate() {
            let s: SampleLine = serde_json::from_value(v).map_err(|e| ReportError::Line {
                path: samples_path.clone(),
                line: i + 1,
                msg: e.to_string(),
            })?;
            samples.push(s);
        }
        let config_path = dir.join("config.toml");
        let config = if config_path.is_file() {
            Some(std::fs::read_to_string(&config_path).map_err(io(&config_path))?)
        } else {
            None
        };
        let mut checkpoints: Vec<(u64, String)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name
                .strip_prefix("checkpoint-")
                .and_then(|s| s.parse::<u64>().ok())
            {
                if entry.path().is_dir() {
                    checkpoints.push((step, name));
                }
            }
        }
        checkpoints.sort();
        Ok(RunData {
            dir: dir.to_path_buf(),
            metrics: metric_lines(&metrics_path)?,
            sft: metric_lines(&dir.join("sft").join(METRICS_FILE))?,
            samples,
            config,
            checkpoints: checkpoints.into_iter().map(|(_, n)| n).collect(),
        })
    }

    /// `(step, value)` of every metrics line holding `name`.
    pub fn series(&self, name: &str) -> Vec<(f64, f64)> {
        series_of(&self.metrics, name)
    }

    /// The validation lines (those with `val/reward`), in step order.
    pub fn validations(&self) -> Vec<&MetricLine> {
        self.metrics
            .iter()
            .filter(|m| m.values.contains_key("val/reward"))
            .collect()
    }
}

fn series_of(lines: &[MetricLine], name: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|m| m.values.get(name).map(|&v| (m.step as f64, v)))
        .collect()
}

/// One curve of the report: a file name stem, its title and the chart.
#[derive(Debug, Clone)]
pub struct Curve {
    /// File stem (`reward` → `report/reward.png`).
    pub name: &'static str,
    /// Title shown above the chart.
    pub title: String,
    /// The chart.
    pub image: RgbImage,
}

/// The report's curves: reward, reward components, KL, response length, validation, and the
/// warm-up's loss when the run had one.
pub fn curves(run: &RunData) -> Vec<Curve> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, title: &str, series: Vec<Series>, from_zero: bool| {
        let image = line_chart(title, "RL step", &series, from_zero);
        out.push(Curve {
            name,
            title: title.to_string(),
            image,
        });
    };
    let val = |k: &str| run.series(&format!("val/{k}"));
    add(
        "reward",
        "reward (training rollouts, validation)",
        vec![
            Series::line("train reward", run.series("reward/reward")),
            Series::line("val reward", val("reward")).with_markers(),
        ],
        true,
    );
    add(
        "components",
        "reward components (training rollouts)",
        ["format", "accuracy", "count", "spatial"]
            .iter()
            .map(|k| Series::line(*k, run.series(&format!("reward/{k}"))))
            .collect(),
        true,
    );
    add(
        "validation",
        "validation",
        ["accuracy", "format", "reward"]
            .iter()
            .map(|k| Series::line(format!("val {k}"), val(k)).with_markers())
            .collect(),
        true,
    );
    add(
        "kl",
        "KL to the reference (actor/kl_loss)",
        vec![Series::line("kl", run.series("actor/kl_loss"))],
        true,
    );
    let length = {
        let mean = run.series("response_length/mean");
        if mean.is_empty() {
            run.series("reward/response_length")
        } else {
            mean
        }
    };
    add(
        "length",
        "response length (tokens)",
        vec![
            Series::line("train", length),
            Series::line("val", val("response_length")).with_markers(),
        ],
        true,
    );
    if !run.sft.is_empty() {
        let image = line_chart(
            "supervised warm-up loss",
            "SFT step",
            &[Series::line("loss", series_of(&run.sft, "sft/loss"))],
            true,
        );
        out.push(Curve {
            name: "sft_loss",
            title: "supervised warm-up loss".into(),
            image,
        });
    }
    out
}

/// One gallery entry: the drawn image and what is shown next to it.
#[derive(Debug, Clone)]
pub struct GalleryItem {
    /// The sample.
    pub sample: SampleLine,
    /// Ground truth (left) and prediction (right), boxes drawn.
    pub image: RgbImage,
    /// Whether the dataset image was found (else the panels are a blank canvas).
    pub has_image: bool,
    /// What could not be parsed in the response.
    pub problems: Vec<String>,
    /// Objects in the ground truth and in the prediction.
    pub objects: (usize, usize),
}

/// The rollouts the gallery shows: up to [`GALLERY_SIZE`], half from the first sampled step and
/// half from the last (all of them when only one step was sampled).
pub fn gallery_samples(samples: &[SampleLine]) -> Vec<SampleLine> {
    let (Some(first), Some(last)) = (
        samples.iter().map(|s| s.step).min(),
        samples.iter().map(|s| s.step).max(),
    ) else {
        return Vec::new();
    };
    if first == last {
        return samples.iter().take(GALLERY_SIZE).cloned().collect();
    }
    let half = GALLERY_SIZE / 2;
    samples
        .iter()
        .filter(|s| s.step == first)
        .take(half)
        .chain(samples.iter().filter(|s| s.step == last).take(half))
        .cloned()
        .collect()
}

/// Reads the image of `row` from its parquet file (the run's configured image column, else
/// `images`); `None` when the file is gone or the row cannot be read.
fn row_image(row: &SampleRow, columns: &data::ColumnNames) -> Option<RgbImage> {
    let file = data::reader::ParquetFile::open(&row.file, columns).ok()?;
    let record = file.read_row(row.row).ok()??;
    Some(image::load_from_memory(&record.image.bytes).ok()?.to_rgb8())
}

/// The dataset columns named in a run's `config.toml` (defaults where it names none).
fn columns_of(config: Option<&str>) -> data::ColumnNames {
    let mut columns = data::ColumnNames::default();
    let Some(table) = config.and_then(|c| c.parse::<toml::Table>().ok()) else {
        return columns;
    };
    let Some(data) = table.get("data").and_then(|d| d.as_table()) else {
        return columns;
    };
    let get = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_string);
    if let Some(v) = get("prompt_key") {
        columns.prompt = v;
    }
    if let Some(v) = get("image_key") {
        columns.image = v;
    }
    if let Some(v) = get("answer_key") {
        columns.answer = v;
    }
    columns
}

/// `image` scaled so its longer side is within the panel limits (nearest neighbour when
/// enlarging, so pixels stay sharp).
fn panel_base(image: &RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    let long = w.max(h).max(1);
    if long < PANEL_MIN_SIDE {
        let k = PANEL_MIN_SIDE.div_ceil(long);
        imageops::resize(image, w * k, h * k, imageops::FilterType::Nearest)
    } else if long > PANEL_MAX_SIDE {
        let s = f64::from(PANEL_MAX_SIDE) / f64::from(long);
        let (nw, nh) = (
            ((f64::from(w) * s) as u32).max(1),
            ((f64::from(h) * s) as u32).max(1),
        );
        imageops::resize(image, nw, nh, imageops::FilterType::Triangle)
    } else {
        image.clone()
    }
}

/// The ground truth's scene graph (its `<scene>` block), empty when it has none.
fn ground_truth_graph(ground_truth: &str) -> SceneGraph {
    section(ground_truth, "scene")
        .and_then(|s| SceneGraph::parse_lenient(&s).ok())
        .unwrap_or_default()
}

/// Draws one gallery item: two panels of the image, the ground-truth boxes on the left and the
/// predicted ones on the right, each under a caption.
pub fn gallery_item(sample: &SampleLine, image: Option<RgbImage>) -> GalleryItem {
    let stated = data::validate::stated_image_size(&sample.prompt);
    let has_image = image.is_some();
    let base = image.unwrap_or_else(|| {
        let (w, h) = stated.unwrap_or((PANEL_MIN_SIDE, PANEL_MIN_SIDE));
        let s = (f64::from(PANEL_MAX_SIDE) / f64::from(w.max(h).max(1))).min(1.0);
        RgbImage::from_pixel(
            ((f64::from(w) * s) as u32).max(1),
            ((f64::from(h) * s) as u32).max(1),
            Rgb([96, 96, 96]),
        )
    });
    let frame = stated.unwrap_or(base.dimensions());
    let panel = panel_base(&base);
    let truth = ground_truth_graph(&sample.ground_truth);
    let parsed = parse_response(&sample.response);
    let predicted = parsed.scene.clone().unwrap_or_default();
    let left = draw_scene_graph(&panel, &truth, frame);
    let right = draw_scene_graph(&panel, &predicted, frame);
    const CAPTION: u32 = 20;
    const GAP: u32 = 8;
    let (pw, ph) = panel.dimensions();
    let mut out = RgbImage::from_pixel(2 * pw + GAP, ph + CAPTION, Rgb([255, 255, 255]));
    let ink = Rgb([30, 30, 30]);
    draw_text(&mut out, "ground truth", 2, 4, 1, ink);
    draw_text(&mut out, "prediction", i64::from(pw + GAP) + 2, 4, 1, ink);
    imageops::replace(&mut out, &left, 0, i64::from(CAPTION));
    imageops::replace(&mut out, &right, i64::from(pw + GAP), i64::from(CAPTION));
    GalleryItem {
        sample: sample.clone(),
        image: out,
        has_image,
        problems: parsed.problems(),
        objects: (truth.objects.len(), predicted.objects.len()),
    }
}

/// PNG bytes of `image`.
pub fn png_bytes(image: &RgbImage, what: &str) -> Result<Vec<u8>, ReportError> {
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| ReportError::Image {
            what: what.to_string(),
            msg: e.to_string(),
        })?;
    Ok(out.into_inner())
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    /// `report.html`.
    pub html: PathBuf,
    /// The PNG curves.
    pub curves: Vec<PathBuf>,
    /// Rollouts in the gallery.
    pub gallery: usize,
}

/// Writes `report.html` and `report/*.png` into the run folder `dir`.
pub fn write_report(dir: &Path) -> Result<ReportFiles, ReportError> {
    let run = RunData::load(dir)?;
    let curves = curves(&run);
    let curves_dir = dir.join(CURVES_DIR);
    std::fs::create_dir_all(&curves_dir).map_err(io(&curves_dir))?;
    let mut curve_files = Vec::new();
    let mut curve_pngs = Vec::new();
    for c in &curves {
        let bytes = png_bytes(&c.image, c.name)?;
        let path = curves_dir.join(format!("{}.png", c.name));
        std::fs::write(&path, &bytes).map_err(io(&path))?;
        curve_files.push(path);
        curve_pngs.push((c, bytes));
    }
    let columns = columns_of(run.config.as_deref());
    let gallery: Vec<GalleryItem> = gallery_samples(&run.samples)
        .iter()
        .map(|s| gallery_item(s, s.row.as_ref().and_then(|r| row_image(r, &columns))))
        .collect();
    let mut gallery_pngs = Vec::new();
    for (i, g) in gallery.iter().enumerate() {
        gallery_pngs.push((g, png_bytes(&g.image, &format!("gallery image {i}"))?));
    }
    let page = html::page(&run, &curve_pngs, &gallery_pngs);
    let path = dir.join(REPORT_FILE);
    let tmp = dir.join(format!("{REPORT_FILE}.tmp"));
    std::fs::write(&tmp, page).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(ReportFiles {
        html: path,
        curves: curve_files,
        gallery: gallery.len(),
    })
}
