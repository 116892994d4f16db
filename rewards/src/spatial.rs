//! The SpatialThinker dense spatial reward (`spatial_sgg` in the reference), reproduced exactly,
//! including the reference's behaviour on malformed responses and its Python float semantics.
//!
//! `R = 0.1·F + 0.2·C + 0.5·A + 0.2·S`, gated lexicographically: count C and accuracy A only if the
//! format F passes, spatial S only if the answer is also correct.

use std::f64::consts::PI;
use std::sync::OnceLock;

use regex::Regex;

use crate::lsap::linear_sum_assignment;
use crate::pyjson::{self, PyInt, PyValue};
use crate::pystr::{py_int, py_lower, py_strip};
use crate::similarity::LabelSimilarity;
use crate::{RewardError, RewardScore};

/// Weight of the format reward F.
pub const FORMAT_WEIGHT: f64 = 0.1;
/// Weight of the count reward C.
pub const COUNT_WEIGHT: f64 = 0.2;
/// Weight of the accuracy reward A.
pub const ACCURACY_WEIGHT: f64 = 0.5;
/// Weight of the spatial reward S.
pub const SPATIAL_WEIGHT: f64 = 0.2;
/// Weight of the object-count term in C when the GT has relationships.
pub const OBJ_COUNT_WEIGHT: f64 = 0.7;
/// Weight of the relationship-count term in C.
pub const REL_COUNT_WEIGHT: f64 = 0.3;
/// Weight of the label dissimilarity in the Hungarian cost (`SEM_W`).
pub const SEM_W: f64 = 2.0;
/// Weight of the box dissimilarity `1 − CIoU01` in the Hungarian cost (`IOU_W`).
pub const IOU_W: f64 = 1.0;
/// Cost of the dummy rows that pad the cost matrix when there are fewer predictions than GT objects.
pub const PAD_COST: f64 = 1e5;
/// Epsilon of the CIoU computation.
pub const CIOU_EPS: f64 = 1e-7;
/// The four tags of a SpatialThinker response; each opening tag must occur exactly once.
pub const TAGS: [&str; 4] = ["observe", "think", "scene", "answer"];

fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("static regex"))
}

/// What `(?s)<tag>(.*?)</tag>` captures, found with plain substring search: the text between the
/// first `open` and the first `close` after it. (The leftmost match of the regex starts at the
/// first `open`: if no `close` follows it, none follows a later one either.)
fn tag_block<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// `(<tag>, </tag>)` of each of [`TAGS`].
const TAG_PAIRS: [(&str, &str); 4] = [
    ("<observe>", "</observe>"),
    ("<think>", "</think>"),
    ("<scene>", "</scene>"),
    ("<answer>", "</answer>"),
];

fn id_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    regex(&RE, r"\A[a-zA-Z_]+\.\d+\z")
}

/// Text inside the first `<answer>…</answer>` (non-greedy, across lines), stripped; `""` if absent.
pub fn extract_answer(text: &str) -> String {
    tag_block(text, "<answer>", "</answer>")
        .map(|c| py_strip(c).to_string())
        .unwrap_or_default()
}

/// The first `<scene>…</scene>` block parsed as a JSON object (Python `json.loads` semantics);
/// `None` if the tag is missing, the JSON is invalid or it is not an object (the reference's `{}`).
pub fn extract_scene(text: &str) -> Option<PyValue> {
    let c = tag_block(text, "<scene>", "</scene>")?;
    match pyjson::loads(py_strip(c)) {
        Ok(v @ PyValue::Dict(_)) => Some(v),
        _ => None,
    }
}

/// Image size read from the prompt's `Image size: (W x H)` line, as Python integers.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSize {
    /// `W`.
    pub width: PyInt,
    /// `H`.
    pub height: PyInt,
}

impl ImageSize {
    /// `(W, H)` where both fit in an `i64`.
    pub fn as_i64(&self) -> Option<(i64, i64)> {
        match (&self.width, &self.height) {
            (PyInt::Small(w), PyInt::Small(h)) => Some((*w, *h)),
            _ => None,
        }
    }

    /// `(1.0 / W, 1.0 / H)` with Python's errors (int too large for a float, division by zero).
    fn inverse(&self) -> Result<(f64, f64), RewardError> {
        let inv = |v: &PyInt| {
            let f = v.to_f64().ok_or(RewardError::Overflow(
                "image size too large to convert to float",
            ))?;
            py_div(1.0, f, "1.0 / image size")
        };
        Ok((inv(&self.width)?, inv(&self.height)?))
    }
}

/// Parse the first `Image size: (W x H)` in the prompt with Python's `int()` on each group.
pub fn parse_image_size(problem: &str) -> Result<ImageSize, RewardError> {
    let (w, h) = image_size_groups(problem).ok_or(RewardError::ImageSizeMissing)?;
    let group = |v: &str, which: &'static str| {
        py_int(v).ok_or_else(|| RewardError::ImageSizeInvalid {
            which,
            value: v.to_string(),
        })
    };
    Ok(ImageSize {
        width: group(w, "width")?,
        height: group(h, "height")?,
    })
}

/// The two groups of the first match of `Image size: \((.*?) x (.*?)\)` (`.` not matching a
/// newline), found with substring search: at each `Image size: (` from the left, the shortest
/// text up to ` x ` and then up to `)`, both on the same line.
fn image_size_groups(text: &str) -> Option<(&str, &str)> {
    const PREFIX: &str = "Image size: (";
    let mut from = 0;
    while let Some(at) = text[from..].find(PREFIX) {
        let start = from + at + PREFIX.len();
        let line = &text[start..text[start..].find('\n').map_or(text.len(), |n| start + n)];
        if let Some(x) = line.find(" x ") {
            if let Some(close) = line[x + 3..].find(')') {
                return Some((&line[..x], &line[x + 3..x + 3 + close]));
            }
        }
        from += at + 1;
    }
    None
}

/// `[a-zA-Z_]+\.\d+` full match (`\d` = any Unicode decimal digit, as in Python's `re`).
pub fn is_valid_id(s: &str) -> bool {
    id_re().is_match(s)
}

/// A predicted object: a dict with exactly the keys `id` and `bbox`, a valid id, 4 numbers
/// (`bool` included, as Python's `isinstance(x, int)` says).
pub fn is_valid_object(obj: &PyValue) -> bool {
    let PyValue::Dict(entries) = obj else {
        return false;
    };
    if entries.len() != 2 {
        return false;
    }
    match (obj.get("id"), obj.get("bbox")) {
        (Some(PyValue::Str(id)), Some(PyValue::List(bbox))) => {
            is_valid_id(id) && bbox.len() == 4 && bbox.iter().all(PyValue::is_number)
        }
        _ => false,
    }
}

/// A predicted relationship: a dict with string `subject`, `predicate`, `object` (extra keys
/// allowed) whose subject and object are valid ids.
pub fn is_valid_relation(rel: &PyValue) -> bool {
    match (rel.get("subject"), rel.get("predicate"), rel.get("object")) {
        (Some(PyValue::Str(s)), Some(PyValue::Str(_)), Some(PyValue::Str(o))) => {
            is_valid_id(s) && is_valid_id(o)
        }
        _ => false,
    }
}

/// Format reward F ∈ {0, 1}: all four tag pairs present, each opening tag exactly once, and a
/// non-empty scene object whose objects and relationships are valid with no duplicate ids.
pub fn format_reward(text: &str) -> f64 {
    if !TAG_PAIRS
        .iter()
        .all(|(open, close)| tag_block(text, open, close).is_some())
    {
        return 0.0;
    }
    if TAGS
        .iter()
        .any(|t| text.matches(&format!("<{t}>")).count() != 1)
    {
        return 0.0;
    }
    let Some(scene) = extract_scene(text) else {
        return 0.0;
    };
    if !scene.is_truthy() {
        return 0.0;
    }
    let empty = PyValue::List(Vec::new());
    let (PyValue::List(objs), PyValue::List(rels)) = (
        scene.get("objects").unwrap_or(&empty),
        scene.get("relationships").unwrap_or(&empty),
    ) else {
        return 0.0;
    };
    if !objs.iter().all(is_valid_object) || !rels.iter().all(is_valid_relation) {
        return 0.0;
    }
    let mut ids: Vec<&PyValue> = objs.iter().filter_map(|o| o.get("id")).collect();
    let n = ids.len();
    ids.sort_by(|a, b| match (a, b) {
        (PyValue::Str(a), PyValue::Str(b)) => a.cmp(b),
        _ => std::cmp::Ordering::Equal,
    });
    ids.dedup();
    if ids.len() != n {
        return 0.0;
    }
    1.0
}

/// Accuracy reward A: case-insensitive exact match after stripping.
pub fn acc_reward(pred: &str, gt: &str) -> f64 {
    f64::from(u8::from(py_lower(py_strip(pred)) == py_lower(py_strip(gt))))
}

/// `value or []` as the reference writes it.
fn or_empty<'a>(value: Option<&'a PyValue>, empty: &'a PyValue) -> &'a PyValue {
    match value {
        Some(v) if v.is_truthy() => v,
        _ => empty,
    }
}

/// `max(0.0, x)` / `max(a, b)` with Python's rule: the first argument unless the second is greater.
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// `min(a, b)` with Python's rule: the first argument unless the second is smaller.
fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// Python float division: raises on a zero divisor (whatever the dividend).
fn py_div(a: f64, b: f64, what: &'static str) -> Result<f64, RewardError> {
    if b == 0.0 {
        Err(RewardError::ZeroDivision(what))
    } else {
        Ok(a / b)
    }
}

/// Python `x ** 2` on a float: raises `OverflowError` when a finite base overflows.
fn py_sq(x: f64, what: &'static str) -> Result<f64, RewardError> {
    let r = x * x;
    if x.is_finite() && r.is_infinite() {
        Err(RewardError::Overflow(what))
    } else {
        Ok(r)
    }
}

/// Count reward C ∈ [0, 1] from the number of objects and relationships.
pub fn count_reward(pred: &PyValue, gt: &PyValue) -> Result<f64, RewardError> {
    let empty = PyValue::List(Vec::new());
    let pred_rels = or_empty(pred.get("relationships"), &empty);
    let gt_rels = or_empty(gt.get("relationships"), &empty);
    let (Some(PyValue::List(pred_objs)), Some(PyValue::List(gt_objs))) =
        (pred.get("objects"), gt.get("objects"))
    else {
        return Ok(0.0);
    };
    let term = |p: usize, g: usize| py_max(0.0, 1.0 - p.abs_diff(g) as f64 / g.max(1) as f64);
    let obj_c = term(pred_objs.len(), gt_objs.len());
    let n_gt_rels = gt_rels
        .py_len()
        .ok_or_else(|| RewardError::GroundTruth("`relationships` has no len()".into()))?;
    if n_gt_rels == 0 {
        return Ok(obj_c);
    }
    let n_pred_rels = pred_rels
        .py_len()
        .ok_or_else(|| RewardError::GroundTruth("predicted `relationships` has no len()".into()))?;
    Ok(obj_c * OBJ_COUNT_WEIGHT + term(n_pred_rels, n_gt_rels) * REL_COUNT_WEIGHT)
}

/// The reference's `refine_node_edge`: `_` and `-` become spaces, then strip and lower-case.
pub fn refine_node_edge(label: &str) -> String {
    py_lower(py_strip(&label.replace(['_', '-'], " ")))
}

/// The label compared by `sem_sim`: the refined text before the first `.` of a (refined) id.
pub fn sim_label(id: &str) -> String {
    refine_node_edge(id.split('.').next().unwrap_or(""))
}

/// Complete IoU of two `[x1, y1, x2, y2]` boxes mapped to `(CIoU + 1) / 2`, exactly as the
/// reference computes it (no sanitising of inverted boxes; Python's errors on division by zero
/// and on `**` overflow). Not symmetric for NaN inputs, so argument order follows the reference.
pub fn ciou01(a: &[f64; 4], b: &[f64; 4]) -> Result<f64, RewardError> {
    let (wa, ha) = (a[2] - a[0], a[3] - a[1]);
    let (wb, hb) = (b[2] - b[0], b[3] - b[1]);
    let (area_a, area_b) = (wa * ha, wb * hb);
    let inter_w = py_max(0.0, py_min(a[2], b[2]) - py_max(a[0], b[0]));
    let inter_h = py_max(0.0, py_min(a[3], b[3]) - py_max(a[1], b[1]));
    let inter = inter_w * inter_h;
    let union = area_a + area_b - inter + CIOU_EPS;
    let iou = py_div(inter, union, "CIoU union")?;
    let (cxa, cya) = ((a[0] + a[2]) / 2.0, (a[1] + a[3]) / 2.0);
    let (cxb, cyb) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let center_dist_sq =
        py_sq(cxa - cxb, "CIoU centre distance")? + py_sq(cya - cyb, "CIoU centre distance")?;
    let (ex1, ey1) = (py_min(a[0], b[0]), py_min(a[1], b[1]));
    let (ex2, ey2) = (py_max(a[2], b[2]), py_max(a[3], b[3]));
    let diag_sq = py_sq(ex2 - ex1, "CIoU enclosing box")?
        + py_sq(ey2 - ey1, "CIoU enclosing box")?
        + CIOU_EPS;
    let atan_b = py_div(wb, hb + CIOU_EPS, "CIoU aspect ratio")?.atan();
    let atan_a = py_div(wa, ha + CIOU_EPS, "CIoU aspect ratio")?.atan();
    let v = (4.0 / (PI * PI)) * py_sq(atan_b - atan_a, "CIoU aspect ratio")?;
    let with_v = (1.0 - iou) + v;
    let alpha = if with_v != 0.0 { v / with_v } else { 0.0 };
    let ciou = iou - (py_div(center_dist_sq, diag_sq, "CIoU enclosing box")? + alpha * v);
    Ok((ciou + 1.0) / 2.0)
}

/// An object after the reference's preprocessing: refined id, box divided by the image size.
#[derive(Debug, Clone)]
struct SceneObject {
    id: String,
    bbox: [f64; 4],
}

/// Preprocess one object as `{**o, "id": refine(o["id"]), "bbox": scale_box(o["bbox"], (1/W, 1/H))}`.
/// Ground-truth objects are not validated by the reference, so anything it would raise on is an error.
fn preprocess_object(o: &PyValue, size: &ImageSize) -> Result<SceneObject, RewardError> {
    let gt_err = |m: &str| RewardError::GroundTruth(m.to_string());
    if !matches!(o, PyValue::Dict(_)) {
        return Err(gt_err("object is not a dict"));
    }
    let id = match o.get("id") {
        Some(PyValue::Str(s)) => refine_node_edge(s),
        Some(_) => return Err(gt_err("object id is not a string")),
        None => return Err(gt_err("object without `id`")),
    };
    let bbox = o
        .get("bbox")
        .ok_or_else(|| gt_err("object without `bbox`"))?;
    let (sw, sh) = size.inverse()?;
    let PyValue::List(items) = bbox else {
        return Err(gt_err("bbox is not a list"));
    };
    if items.len() < 4 {
        return Err(gt_err("bbox has fewer than 4 values"));
    }
    let mut out = [0.0; 4];
    for (k, slot) in out.iter_mut().enumerate() {
        let x = match &items[k] {
            PyValue::Bool(b) => f64::from(u8::from(*b)),
            PyValue::Int(i) => i.to_f64().ok_or(RewardError::Overflow(
                "bbox int too large to convert to float",
            ))?,
            PyValue::Float(f) => *f,
            _ => return Err(gt_err("bbox value is not a number")),
        };
        *slot = x * if k % 2 == 0 { sw } else { sh };
    }
    Ok(SceneObject { id, bbox: out })
}

/// Check a GT relationship the way the reference's preprocessing touches it (`{**r, "subject":
/// refine(r["subject"]), "object": refine(r["object"])}`).
fn check_relation(r: &PyValue) -> Result<(), RewardError> {
    if !matches!(r, PyValue::Dict(_)) {
        return Err(RewardError::GroundTruth(
            "relationship is not a dict".into(),
        ));
    }
    for key in ["subject", "object"] {
        match r.get(key) {
            Some(PyValue::Str(_)) => {}
            Some(_) => {
                return Err(RewardError::GroundTruth(format!(
                    "relationship {key} is not a string"
                )))
            }
            None => {
                return Err(RewardError::GroundTruth(format!(
                    "relationship without `{key}`"
                )))
            }
        }
    }
    Ok(())
}

/// Object score: Hungarian matching (rows = predictions padded with [`PAD_COST`] rows, cost
/// `2·(1−sim) + (1−CIoU01)`), then Σ matched CIoU01 / #GT.
fn compute_obj_score(
    gt: &[SceneObject],
    pred: &[SceneObject],
    sim: &dyn LabelSimilarity,
) -> Result<f64, RewardError> {
    let (p, g) = (pred.len(), gt.len());
    if g == 0 {
        return Ok(1.0);
    }
    let rows = p + g.saturating_sub(p);
    let mut cost = vec![PAD_COST; rows * g];
    let gt_labels: Vec<String> = gt.iter().map(|o| sim_label(&o.id)).collect();
    for (i, po) in pred.iter().enumerate() {
        let label = sim_label(&po.id);
        for (j, go) in gt.iter().enumerate() {
            let iou = ciou01(&po.bbox, &go.bbox)?;
            let s = sim.similarity(&label, &gt_labels[j]);
            cost[i * g + j] = SEM_W * (1.0 - s) + IOU_W * (1.0 - iou);
        }
    }
    let assignment = linear_sum_assignment(rows, g, &cost)?;
    let mut mapping: Vec<Option<usize>> = vec![None; g];
    for (r, c) in assignment.into_iter().enumerate() {
        if let (Some(c), true) = (c, r < p) {
            mapping[c] = Some(r);
        }
    }
    let mut total = 0.0;
    for (j, m) in mapping.iter().enumerate() {
        if let Some(i) = m {
            total += ciou01(&gt[j].bbox, &pred[*i].bbox)?;
        }
    }
    Ok(total / g as f64)
}

/// Spatial reward S (`relaxed_spatial_reward` with `threshold=0`, `rel_gating=False`).
pub fn spatial_reward(
    pred: &PyValue,
    gt: &PyValue,
    size: &ImageSize,
    sim: &dyn LabelSimilarity,
) -> Result<f64, RewardError> {
    let empty = PyValue::List(Vec::new());
    let (
        PyValue::List(gt_objs),
        PyValue::List(pr_objs),
        PyValue::List(gt_rels),
        PyValue::List(pr_rels),
    ) = (
        or_empty(gt.get("objects"), &empty),
        or_empty(pred.get("objects"), &empty),
        or_empty(gt.get("relationships"), &empty),
        or_empty(pred.get("relationships"), &empty),
    )
    else {
        return Ok(0.0);
    };
    if !pr_objs.iter().all(is_valid_object) || !pr_rels.iter().all(is_valid_relation) {
        return Ok(0.0);
    }
    let gt_objs: Vec<SceneObject> = gt_objs
        .iter()
        .map(|o| preprocess_object(o, size))
        .collect::<Result<_, _>>()?;
    let pr_objs: Vec<SceneObject> = pr_objs
        .iter()
        .map(|o| preprocess_object(o, size))
        .collect::<Result<_, _>>()?;
    gt_rels.iter().try_for_each(check_relation)?;
    if gt_rels.is_empty() {
        if gt_objs.is_empty() {
            return Ok(if pr_objs.is_empty() { 1.0 } else { 0.0 });
        }
        return compute_obj_score(&gt_objs, &pr_objs, sim);
    }
    // The reference also matches relationship triplets here, but with `rel_gating=False` the result
    // is discarded; only its failure mode matters: each GT predicate is read as a string as soon as
    // there is a predicted relationship to compare it with.
    if !pr_rels.is_empty() {
        for r in gt_rels {
            if !matches!(r.get("predicate"), Some(PyValue::Str(_))) {
                return Err(RewardError::GroundTruth(
                    "relationship predicate missing or not a string".into(),
                ));
            }
        }
    }
    compute_obj_score(&gt_objs, &pr_objs, sim)
}

/// Score one response against its ground truth (`<scene>…</scene><answer>…</answer>`) and prompt.
pub fn compute_score(
    response: &str,
    ground_truth: &str,
    problem: &str,
    sim: &dyn LabelSimilarity,
) -> Result<RewardScore, RewardError> {
    let empty = PyValue::Dict(Vec::new());
    let pred_answer = extract_answer(response);
    let gt_answer = extract_answer(ground_truth);
    let pred_scene = extract_scene(response).unwrap_or_else(|| empty.clone());
    let gt_scene = extract_scene(ground_truth).unwrap_or(empty);
    let size = parse_image_size(problem)?;
    let format = format_reward(response);
    let (count, accuracy, spatial) = if format == 1.0 {
        let count = count_reward(&pred_scene, &gt_scene)?;
        let accuracy = acc_reward(&pred_answer, &gt_answer);
        let spatial = if accuracy == 1.0 {
            spatial_reward(&pred_scene, &gt_scene, &size, sim)?
        } else {
            0.0
        };
        (count, accuracy, spatial)
    } else {
        (0.0, 0.0, 0.0)
    };
    let overall = format * FORMAT_WEIGHT
        + count * COUNT_WEIGHT
        + accuracy * ACCURACY_WEIGHT
        + spatial * SPATIAL_WEIGHT;
    Ok(RewardScore {
        overall,
        format,
        count,
        accuracy,
        spatial,
    })
}
