//! The SpatialThinker dense spatial reward (`spatial_sgg` in the reference), reproduced exactly,
//! including the reference's behaviour on malformed responses and its Python float semantics.
//!
//! `R = 0.1·F + 0.2·C + 0.5·A + 0.2·S`, gated lexicographically: count C and accuracy A only if the
//! format F passes, spatial S only if the answer is also correct.

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::f64::consts::PI;
use std::sync::OnceLock;

use bumpalo::collections::Vec as BumpVec;
use bumpalo::Bump;
use memchr::memmem::Finder;
use regex::Regex;

use crate::lsap::linear_sum_assignment_into;
use crate::pyjson::{self, PyInt, PyValue};
use crate::pystr::{py_int, py_isspace, py_lower, py_strip};
use crate::similarity::LabelSimilarity;
use crate::{short_eq, RewardError, RewardScore};

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

/// The four tags of a text, located in one pass over its `<` characters: what
/// `(?s)<tag>(.*?)</tag>` captures for each (the text between the first `<tag>` and the first
/// `</tag>` after it — the regex's leftmost match starts at the first `<tag>`, and if no
/// `</tag>` follows it none follows a later one either) and how often each `<tag>` occurs.
#[derive(Debug)]
struct TagScan<'t> {
    text: &'t str,
    /// Number of `<tag>` occurrences per tag.
    opens: [usize; 4],
    /// Byte offset just past the first `<tag>`.
    body_start: [Option<usize>; 4],
    /// Byte range of the captured block.
    block: [Option<(usize, usize)>; 4],
}

impl<'t> TagScan<'t> {
    fn new(text: &'t str) -> Self {
        let mut scan = TagScan {
            text,
            opens: [0; 4],
            body_start: [None; 4],
            block: [None; 4],
        };
        let bytes = text.as_bytes();
        for at in memchr::memchr_iter(b'<', bytes) {
            let rest = &bytes[at + 1..];
            let (closing, name) = match rest.strip_prefix(b"/") {
                Some(name) => (true, name),
                None => (false, rest),
            };
            // the four tags differ in their first letter
            let t = match name.first() {
                Some(b'o') => 0,
                Some(b't') => 1,
                Some(b's') => 2,
                Some(b'a') => 3,
                _ => continue,
            };
            let tag = TAGS[t].as_bytes();
            debug_assert_eq!(tag[0], name[0], "TAGS order");
            // compared in line: a `memcmp` call per candidate costs more than these few bytes
            let is_tag = name.len() > tag.len()
                && name[tag.len()] == b'>'
                && name.iter().zip(tag).all(|(a, b)| a == b);
            if is_tag {
                let end = at + 1 + usize::from(closing) + tag.len() + 1;
                if !closing {
                    scan.opens[t] += 1;
                    scan.body_start[t].get_or_insert(end);
                } else if let (Some(start), None) = (scan.body_start[t], scan.block[t]) {
                    if at >= start {
                        scan.block[t] = Some((start, at));
                    }
                }
            }
        }
        scan
    }

    /// The captured text of tag `t` (an index into [`TAGS`]).
    fn block(&self, t: usize) -> Option<&'t str> {
        self.block[t].map(|(a, b)| &self.text[a..b])
    }
}

/// Byte offset of the first match of `needle` in `text` (SIMD substring search; the needles are
/// ASCII, so the offsets are character boundaries).
fn find(text: &str, needle: &Finder<'_>) -> Option<usize> {
    needle.find(text.as_bytes())
}

/// Index of `<scene>` in [`TAGS`].
const SCENE: usize = 2;
/// Index of `<answer>` in [`TAGS`].
const ANSWER: usize = 3;
/// What the image-size line starts with in the prompt.
const IMAGE_SIZE_PREFIX: &str = "Image size: (";

/// The searcher for [`IMAGE_SIZE_PREFIX`], built once (building one costs about as much as a
/// search).
fn image_size_finder() -> &'static Finder<'static> {
    static FINDER: OnceLock<Finder<'static>> = OnceLock::new();
    FINDER.get_or_init(|| Finder::new(IMAGE_SIZE_PREFIX))
}

fn id_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    regex(&RE, r"\A[a-zA-Z_]+\.\d+\z")
}

/// Text inside the first `<answer>…</answer>` (non-greedy, across lines), stripped; `""` if absent.
pub fn extract_answer(text: &str) -> String {
    answer_text(&TagScan::new(text)).to_string()
}

/// [`extract_answer`] from a scan, without the copy.
fn answer_text<'t>(tags: &TagScan<'t>) -> &'t str {
    tags.block(ANSWER).map_or("", py_strip)
}

/// The first `<scene>…</scene>` block parsed as a JSON object (Python `json.loads` semantics);
/// `None` if the tag is missing, the JSON is invalid or it is not an object (the reference's `{}`).
pub fn extract_scene<'a>(text: &'a str, arena: &'a Bump) -> Option<PyValue<'a>> {
    scene_of(&TagScan::new(text), arena)
}

/// Whether the first `<scene>` block parses as a JSON object (what [`extract_scene`] returns
/// `Some` for), without keeping the parse.
pub fn has_scene_object(text: &str) -> bool {
    extract_scene(text, &Bump::new()).is_some()
}

/// [`extract_scene`] from a scan.
fn scene_of<'a>(tags: &TagScan<'a>, arena: &'a Bump) -> Option<PyValue<'a>> {
    let c = tags.block(SCENE)?;
    match pyjson::loads(py_strip(c), arena) {
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
    let mut from = 0;
    while let Some(at) = find(&text[from..], image_size_finder()) {
        let start = from + at + IMAGE_SIZE_PREFIX.len();
        let line = &text[start..text[start..].find('\n').map_or(text.len(), |n| start + n)];
        // ` x ` found byte-wise: building a substring searcher costs more than this short scan
        let x = line
            .as_bytes()
            .windows(3)
            .position(|w| w[0] == b' ' && w[1] == b'x' && w[2] == b' ');
        if let Some(x) = x {
            if let Some(close) = line[x + 3..].find(')') {
                return Some((&line[..x], &line[x + 3..x + 3 + close]));
            }
        }
        from += at + 1;
    }
    None
}

/// `[a-zA-Z_]+\.\d+` full match (`\d` = any Unicode decimal digit, as in Python's `re`). ASCII
/// ids are checked by hand; the regex decides only when non-ASCII digits may be involved.
pub fn is_valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    let letters = b
        .iter()
        .take_while(|c| c.is_ascii_alphabetic() || **c == b'_')
        .count();
    if letters == 0 || b.get(letters) != Some(&b'.') || b.len() == letters + 1 {
        return false;
    }
    let digits = &b[letters + 1..];
    if digits.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if digits.iter().any(|c| c.is_ascii() && !c.is_ascii_digit()) {
        return false;
    }
    id_re().is_match(s)
}

/// A predicted object: a dict with exactly the keys `id` and `bbox`, a valid id, 4 numbers
/// (`bool` included, as Python's `isinstance(x, int)` says).
pub fn is_valid_object(obj: &PyValue<'_>) -> bool {
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
pub fn is_valid_relation(rel: &PyValue<'_>) -> bool {
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
    let (tags, arena) = (TagScan::new(text), Bump::new());
    format_of(&tags, scene_of(&tags, &arena).as_ref())
}

/// [`format_reward`] with the response's scene already parsed by [`extract_scene`].
fn format_of(tags: &TagScan<'_>, scene: Option<&PyValue<'_>>) -> f64 {
    if !(0..TAGS.len()).all(|t| tags.block(t).is_some()) {
        return 0.0;
    }
    if tags.opens.iter().any(|&n| n != 1) {
        return 0.0;
    }
    let Some(scene) = scene else {
        return 0.0;
    };
    if !scene.is_truthy() {
        return 0.0;
    }
    let (PyValue::List(objs), PyValue::List(rels)) = (
        scene.get("objects").unwrap_or(&EMPTY_LIST),
        scene.get("relationships").unwrap_or(&EMPTY_LIST),
    ) else {
        return 0.0;
    };
    if !objs.iter().all(is_valid_object) || !rels.iter().all(is_valid_relation) {
        return 0.0;
    }
    // every object passed `is_valid_object`, so every id is a string
    let ids = objs
        .iter()
        .filter_map(|o| o.get("id").and_then(PyValue::as_str));
    let duplicate = if objs.len() <= PAIRWISE_DUPLICATE_CHECK {
        let mut seen = [""; PAIRWISE_DUPLICATE_CHECK];
        let mut n = 0;
        ids.into_iter().any(|id| {
            let repeated = seen[..n].iter().any(|s| short_eq(s, id));
            seen[n] = id;
            n += 1;
            repeated
        })
    } else {
        let mut ids: Vec<&str> = ids.collect();
        ids.sort_unstable();
        ids.windows(2).any(|w| w[0] == w[1])
    };
    if duplicate {
        return 0.0;
    }
    1.0
}

/// Up to this many objects, duplicate ids are looked for pair by pair (no allocation; cheaper
/// than sorting at these sizes).
const PAIRWISE_DUPLICATE_CHECK: usize = 24;

/// Accuracy reward A: case-insensitive exact match after stripping.
pub fn acc_reward(pred: &str, gt: &str) -> f64 {
    let (pred, gt) = (py_strip(pred), py_strip(gt));
    let same = if pred.is_ascii() && gt.is_ascii() {
        // ASCII lower-casing maps byte to byte, so no copies are needed
        pred.eq_ignore_ascii_case(gt)
    } else {
        py_lower(pred) == py_lower(gt)
    };
    f64::from(u8::from(same))
}

/// `value or []` as the reference writes it.
fn or_empty<'a>(value: Option<&'a PyValue<'a>>) -> &'a PyValue<'a> {
    match value {
        Some(v) if v.is_truthy() => v,
        _ => &EMPTY_LIST,
    }
}

/// `[]`.
const EMPTY_LIST: PyValue<'static> = PyValue::List(&[]);

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
pub fn count_reward<'a>(pred: &PyValue<'a>, gt: &PyValue<'a>) -> Result<f64, RewardError> {
    let pred_rels = or_empty(pred.get("relationships"));
    let gt_rels = or_empty(gt.get("relationships"));
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
/// Borrows when that changes nothing (lower-case ASCII without `_`, `-` or outer whitespace).
pub fn refine_node_edge(label: &str) -> Cow<'_, str> {
    let b = label.as_bytes();
    let unchanged = b
        .iter()
        .all(|&c| c.is_ascii() && !c.is_ascii_uppercase() && c != b'_' && c != b'-')
        && !b.first().is_some_and(|&c| py_isspace(char::from(c)))
        && !b.last().is_some_and(|&c| py_isspace(char::from(c)));
    if unchanged {
        Cow::Borrowed(label)
    } else {
        Cow::Owned(py_lower(py_strip(&label.replace(['_', '-'], " "))))
    }
}

/// The label compared by `sem_sim`: the refined text before the first `.` of a (refined) id.
pub fn sim_label(id: &str) -> Cow<'_, str> {
    refine_node_edge(id.split('.').next().unwrap_or(""))
}

/// [`sim_label`] of the refined id, from the raw id: what matching compares for an object.
/// Labels that had to be rewritten are copied into `arena`.
fn object_label<'a>(raw_id: &'a str, arena: &'a Bump) -> &'a str {
    let b = raw_id.as_bytes();
    if b.is_ascii() {
        // ASCII refinement maps byte to byte and strips, and no stripped byte is a `.`, so the
        // label is the raw text before the first `.`, mapped, without the bytes that map to
        // whitespace at either end: one pass finds the first and last byte that stays non-blank
        let (mut start, mut stop) = (None, 0);
        for (k, &c) in b.iter().enumerate() {
            match c {
                b'.' => break,
                b'_'
                | b'-'
                | b' '
                | b'\t'
                | b'\n'
                | b'\x0b'
                | b'\x0c'
                | b'\r'
                | b'\x1c'..=b'\x1f' => {}
                _ => {
                    start.get_or_insert(k);
                    stop = k + 1;
                }
            }
        }
        let start = start.unwrap_or(0);
        let stop = stop.max(start);
        let core = &b[start..stop];
        if !core
            .iter()
            .any(|&c| c.is_ascii_uppercase() || matches!(c, b'_' | b'-'))
        {
            return &raw_id[start..stop];
        }
        let mapped = core.iter().map(|&c| match c {
            b'_' | b'-' => b' ',
            c => c.to_ascii_lowercase(),
        });
        let label = BumpVec::from_iter_in(mapped, arena).into_bump_slice();
        return std::str::from_utf8(label).expect("ASCII maps to ASCII");
    }
    match refine_node_edge(raw_id) {
        Cow::Borrowed(id) => match sim_label(id) {
            Cow::Borrowed(label) => label,
            Cow::Owned(label) => arena.alloc_str(&label),
        },
        Cow::Owned(id) => arena.alloc_str(&sim_label(&id)),
    }
}

/// Complete IoU of two `[x1, y1, x2, y2]` boxes mapped to `(CIoU + 1) / 2`, exactly as the
/// reference computes it (no sanitising of inverted boxes; Python's errors on division by zero
/// and on `**` overflow). Not symmetric for NaN inputs, so argument order follows the reference.
pub fn ciou01(a: &[f64; 4], b: &[f64; 4]) -> Result<f64, RewardError> {
    ciou01_prepared(&PreparedBox::new(*a), &PreparedBox::new(*b))
}

/// A box with the per-box terms of [`ciou01`] computed once (the same operations, so the same
/// values): each box meets every box of the other scene during matching.
#[derive(Debug, Clone, Copy)]
struct PreparedBox {
    b: [f64; 4],
    area: f64,
    cx: f64,
    cy: f64,
    /// `atan(w / (h + eps))`; `None` where the division raises.
    aspect_atan: Option<f64>,
    /// Finite coordinates of magnitude at most [`TAME_LIMIT`] and a defined aspect term: then no
    /// CIoU with another tame box can overflow a square or divide by zero in an aspect ratio or
    /// by the enclosing diagonal, so the zero union is the only check that can fire (see
    /// [`BoxColumns`]).
    tame: bool,
}

/// Coordinates up to this magnitude cannot overflow a squared difference
/// (`(2 · 1e150)² = 4e300 < f64::MAX`) nor make an area or a union infinite.
const TAME_LIMIT: f64 = 1e150;

impl PreparedBox {
    fn new(b: [f64; 4]) -> Self {
        let (w, h) = (b[2] - b[0], b[3] - b[1]);
        let h_eps = h + CIOU_EPS;
        // Python raises only on a zero divisor
        let aspect_atan = (h_eps != 0.0).then(|| (w / h_eps).atan());
        PreparedBox {
            b,
            area: w * h,
            cx: (b[0] + b[2]) / 2.0,
            cy: (b[1] + b[3]) / 2.0,
            aspect_atan,
            tame: aspect_atan.is_some() && b.iter().all(|v| v.abs() <= TAME_LIMIT),
        }
    }

    fn aspect_atan(&self) -> Result<f64, RewardError> {
        self.aspect_atan
            .ok_or(RewardError::ZeroDivision("CIoU aspect ratio"))
    }
}

/// [`ciou01`] on prepared boxes, with the reference's order of operations and of errors.
fn ciou01_prepared(pa: &PreparedBox, pb: &PreparedBox) -> Result<f64, RewardError> {
    let (a, b) = (&pa.b, &pb.b);
    let (area_a, area_b) = (pa.area, pb.area);
    let inter_w = py_max(0.0, py_min(a[2], b[2]) - py_max(a[0], b[0]));
    let inter_h = py_max(0.0, py_min(a[3], b[3]) - py_max(a[1], b[1]));
    let inter = inter_w * inter_h;
    let union = area_a + area_b - inter + CIOU_EPS;
    let iou = py_div(inter, union, "CIoU union")?;
    let (cxa, cya) = (pa.cx, pa.cy);
    let (cxb, cyb) = (pb.cx, pb.cy);
    let center_dist_sq =
        py_sq(cxa - cxb, "CIoU centre distance")? + py_sq(cya - cyb, "CIoU centre distance")?;
    let (ex1, ey1) = (py_min(a[0], b[0]), py_min(a[1], b[1]));
    let (ex2, ey2) = (py_max(a[2], b[2]), py_max(a[3], b[3]));
    let diag_sq = py_sq(ex2 - ex1, "CIoU enclosing box")?
        + py_sq(ey2 - ey1, "CIoU enclosing box")?
        + CIOU_EPS;
    let atan_b = pb.aspect_atan()?;
    let atan_a = pa.aspect_atan()?;
    let v = (4.0 / (PI * PI)) * py_sq(atan_b - atan_a, "CIoU aspect ratio")?;
    let with_v = (1.0 - iou) + v;
    let alpha = if with_v != 0.0 { v / with_v } else { 0.0 };
    let ciou = iou - (py_div(center_dist_sq, diag_sq, "CIoU enclosing box")? + alpha * v);
    Ok((ciou + 1.0) / 2.0)
}

/// The objects of one scene by field (structure of arrays), so that the CIoU of one box against
/// all of them is a branch-free loop the compiler vectorises. Only for tame boxes
/// ([`PreparedBox::tame`]), whose CIoU can raise only on a zero union: the loop performs
/// [`ciou01_prepared`]'s operations in the same order (so it gets the same values) without the
/// checks that cannot fire. That CIoU is also symmetric in its arguments: the coordinates are
/// finite and not NaN, so `min`/`max` differ at most in the sign of a zero that every later step
/// absorbs, and sums, squared differences and products commute exactly.
struct BoxColumns<'a> {
    labels: &'a [&'a str],
    x1: &'a [f64],
    y1: &'a [f64],
    x2: &'a [f64],
    y2: &'a [f64],
    area: &'a [f64],
    cx: &'a [f64],
    cy: &'a [f64],
    aspect_atan: &'a [f64],
}

impl<'a> BoxColumns<'a> {
    /// The columns of `objects`, whose boxes must all be tame.
    fn new(objects: &[SceneObject<'a>], arena: &'a Bump) -> Self {
        debug_assert!(objects.iter().all(|o| o.bbox.tame));
        let n = objects.len();
        let labels = arena.alloc_slice_fill_copy(n, "");
        let mut columns: [&mut [f64]; 8] =
            std::array::from_fn(|_| arena.alloc_slice_fill_copy(n, 0.0));
        for (j, o) in objects.iter().enumerate() {
            let b = &o.bbox;
            labels[j] = o.label;
            let fields = [
                b.b[0],
                b.b[1],
                b.b[2],
                b.b[3],
                b.area,
                b.cx,
                b.cy,
                b.aspect_atan.unwrap_or_default(),
            ];
            for (column, v) in columns.iter_mut().zip(fields) {
                column[j] = v;
            }
        }
        let [x1, y1, x2, y2, area, cx, cy, aspect_atan] = columns;
        BoxColumns {
            labels,
            x1,
            y1,
            x2,
            y2,
            area,
            cx,
            cy,
            aspect_atan,
        }
    }

    /// For each object `j`: `ious[j] = ciou01(a, j)` (`a` first, as the reference calls it)
    /// and `cost[j] = SEM_W·(1 − sims[j]) + IOU_W·(1 − ious[j])`. Returns whether any union was
    /// zero (where the reference raises; the outputs are then meaningless).
    fn ciou_row(&self, a: &PreparedBox, sims: &[f64], cost: &mut [f64], ious: &mut [f64]) -> bool {
        let n = self.x1.len();
        let (sims, cost, ious) = (&sims[..n], &mut cost[..n], &mut ious[..n]);
        let (x1, y1, x2, y2) = (&self.x1[..n], &self.y1[..n], &self.x2[..n], &self.y2[..n]);
        let (area, cx, cy, at) = (
            &self.area[..n],
            &self.cx[..n],
            &self.cy[..n],
            &self.aspect_atan[..n],
        );
        let [ax1, ay1, ax2, ay2] = a.b;
        let atan_a = a.aspect_atan.unwrap_or_default();
        let mut zero_union = false;
        for j in 0..n {
            let inter_w = py_max(0.0, py_min(ax2, x2[j]) - py_max(ax1, x1[j]));
            let inter_h = py_max(0.0, py_min(ay2, y2[j]) - py_max(ay1, y1[j]));
            let inter = inter_w * inter_h;
            let union = a.area + area[j] - inter + CIOU_EPS;
            zero_union |= union == 0.0;
            let iou = inter / union;
            let (dx, dy) = (a.cx - cx[j], a.cy - cy[j]);
            let center_dist_sq = dx * dx + dy * dy;
            let (ew, eh) = (
                py_max(ax2, x2[j]) - py_min(ax1, x1[j]),
                py_max(ay2, y2[j]) - py_min(ay1, y1[j]),
            );
            let diag_sq = ew * ew + eh * eh + CIOU_EPS;
            let d_atan = at[j] - atan_a;
            let v = (4.0 / (PI * PI)) * (d_atan * d_atan);
            let with_v = (1.0 - iou) + v;
            let alpha = if with_v != 0.0 { v / with_v } else { 0.0 };
            let ciou = iou - (center_dist_sq / diag_sq + alpha * v);
            let c01 = (ciou + 1.0) / 2.0;
            ious[j] = c01;
            cost[j] = SEM_W * (1.0 - sims[j]) + IOU_W * (1.0 - c01);
        }
        zero_union
    }
}

/// An object after the reference's preprocessing (refined id, box divided by the image size),
/// kept as what matching uses: the label of the refined id and the prepared box. This is the
/// reward's private, arena-borrowed form (for scoring speed and the reference's exact errors);
/// the scene-graph type the rest of the project shares is `data::scene::SceneGraph`.
#[derive(Debug, Clone, Copy)]
struct SceneObject<'a> {
    label: &'a str,
    bbox: PreparedBox,
}

/// Preprocess one object as `{**o, "id": refine(o["id"]), "bbox": scale_box(o["bbox"], (1/W, 1/H))}`.
/// Ground-truth objects are not validated by the reference, so anything it would raise on is an error.
fn preprocess_object<'a>(
    o: &PyValue<'a>,
    inverse_size: &Result<(f64, f64), RewardError>,
    arena: &'a Bump,
) -> Result<SceneObject<'a>, RewardError> {
    let gt_err = |m: &str| RewardError::GroundTruth(m.to_string());
    if !matches!(o, PyValue::Dict(_)) {
        return Err(gt_err("object is not a dict"));
    }
    let label = match o.get("id") {
        Some(PyValue::Str(s)) => object_label(s, arena),
        Some(_) => return Err(gt_err("object id is not a string")),
        None => return Err(gt_err("object without `id`")),
    };
    let bbox = o
        .get("bbox")
        .ok_or_else(|| gt_err("object without `bbox`"))?;
    let (sw, sh) = inverse_size.clone()?;
    let PyValue::List(items) = bbox else {
        return Err(gt_err("bbox is not a list"));
    };
    if items.len() < 4 {
        return Err(gt_err("bbox has fewer than 4 values"));
    }
    let mut out = [0.0; 4];
    for (k, slot) in out.iter_mut().enumerate() {
        let x = match items[k] {
            v if !v.is_number() => return Err(gt_err("bbox value is not a number")),
            v => v.to_f64().ok_or(RewardError::Overflow(
                "bbox int too large to convert to float",
            ))?,
        };
        *slot = x * if k % 2 == 0 { sw } else { sh };
    }
    Ok(SceneObject {
        label,
        bbox: PreparedBox::new(out),
    })
}

/// Check a GT relationship the way the reference's preprocessing touches it (`{**r, "subject":
/// refine(r["subject"]), "object": refine(r["object"])}`).
fn check_relation(r: &PyValue<'_>) -> Result<(), RewardError> {
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
    gt: &[SceneObject<'_>],
    pred: &[SceneObject<'_>],
    sim: &dyn LabelSimilarity,
    arena: &Bump,
) -> Result<f64, RewardError> {
    let (p, g) = (pred.len(), gt.len());
    if g == 0 {
        return Ok(1.0);
    }
    let rows = p + g.saturating_sub(p);
    let cost = arena.alloc_slice_fill_copy(rows * g, PAD_COST);
    let ious = arena.alloc_slice_fill_copy(p * g, 0.0);
    // Fast path: every box tame, so each CIoU is computed once without per-step checks and,
    // being symmetric then, reused for the matched pairs.
    let mut fast = pred.iter().chain(gt).all(|o| o.bbox.tame);
    if fast {
        let columns = BoxColumns::new(gt, arena);
        let sims = arena.alloc_slice_fill_copy(g, 0.0);
        for (i, po) in pred.iter().enumerate() {
            sim.similarity_row(po.label, columns.labels, sims);
            let row = i * g..(i + 1) * g;
            if columns.ciou_row(&po.bbox, sims, &mut cost[row.clone()], &mut ious[row]) {
                // a zero union: let the exact path raise at the reference's pair
                fast = false;
                break;
            }
        }
    }
    if !fast {
        for (i, po) in pred.iter().enumerate() {
            for (j, go) in gt.iter().enumerate() {
                let iou = ciou01_prepared(&po.bbox, &go.bbox)?;
                let s = sim.similarity(po.label, go.label);
                cost[i * g + j] = SEM_W * (1.0 - s) + IOU_W * (1.0 - iou);
            }
        }
    }
    let mapping = arena.alloc_slice_fill_copy(g, None::<usize>);
    if !clear_matching(p, g, cost, mapping, arena) {
        mapping.fill(None);
        let assignment = arena.alloc_slice_fill_copy(rows, None::<usize>);
        linear_sum_assignment_into(rows, g, cost, assignment)?;
        for (r, c) in assignment.iter().enumerate() {
            if let (Some(c), true) = (*c, r < p) {
                mapping[c] = Some(r);
            }
        }
    }
    let mut total = 0.0;
    for (j, m) in mapping.iter().enumerate() {
        if let Some(i) = *m {
            total += if fast {
                ious[i * g + j]
            } else {
                ciou01_prepared(&gt[j].bbox, &pred[i].bbox)?
            };
        }
    }
    Ok(total / g as f64)
}

/// How much cheaper than every alternative each matched pair must be for [`clear_matching`] to
/// decide the matching without the solver: far above the rounding in the solver's potentials
/// (costs are a few units, padding rows 1e5, so that rounding is below 1e-9).
const CLEAR_MARGIN: f64 = 1e-6;

/// Fill `mapping` (GT column → prediction row) when the cost matrix's optimum is unique by a
/// clear margin, so that every exact solver, scipy's included, returns it; `false` (with
/// `mapping` partly written) otherwise, or if a cost in the prediction rows is not finite.
///
/// With `p <= g`: every prediction row has one cheapest column, beating its other columns by
/// more than [`CLEAR_MARGIN`], and these columns are distinct. Any other assignment moves at
/// least one prediction off its cheapest column and costs more by more than the margin, and the
/// padding rows cost the same wherever they go, so the predictions' part of every optimum is
/// this one. With `p > g` the same holds column by column: every GT column has one cheapest
/// prediction, distinct across columns.
fn clear_matching(
    p: usize,
    g: usize,
    cost: &[f64],
    mapping: &mut [Option<usize>],
    arena: &Bump,
) -> bool {
    /// Cheapest entry, its index and the second cheapest value (∞ if there is none); `None` if
    /// an entry is not finite.
    fn cheapest(values: impl Iterator<Item = f64>) -> Option<(f64, usize, f64)> {
        let (mut best, mut at, mut second) = (f64::INFINITY, 0, f64::INFINITY);
        for (k, v) in values.enumerate() {
            if !v.is_finite() {
                return None;
            }
            if v < best {
                (best, at, second) = (v, k, best);
            } else if v < second {
                second = v;
            }
        }
        Some((best, at, second))
    }
    if p <= g {
        for (r, row) in cost.chunks_exact(g).take(p).enumerate() {
            let Some((best, c, second)) = cheapest(row.iter().copied()) else {
                return false;
            };
            if second - best <= CLEAR_MARGIN || mapping[c].is_some() {
                return false;
            }
            mapping[c] = Some(r);
        }
    } else {
        let used = arena.alloc_slice_fill_copy(p, false);
        for (c, slot) in mapping.iter_mut().enumerate() {
            let column = (0..p).map(|r| cost[r * g + c]);
            let Some((best, r, second)) = cheapest(column) else {
                return false;
            };
            if second - best <= CLEAR_MARGIN || used[r] {
                return false;
            }
            used[r] = true;
            *slot = Some(r);
        }
    }
    true
}

/// Spatial reward S (`relaxed_spatial_reward` with `threshold=0`, `rel_gating=False`).
fn spatial_reward<'a>(
    pred: &PyValue<'a>,
    truth: &GroundTruth<'_>,
    size: &ImageSize,
    sim: &dyn LabelSimilarity,
    arena: &'a Bump,
) -> Result<f64, RewardError> {
    let gt = &truth.scene;
    let (
        PyValue::List(gt_objs),
        PyValue::List(pr_objs),
        PyValue::List(gt_rels),
        PyValue::List(pr_rels),
    ) = (
        or_empty(gt.get("objects")),
        or_empty(pred.get("objects")),
        or_empty(gt.get("relationships")),
        or_empty(pred.get("relationships")),
    )
    else {
        return Ok(0.0);
    };
    // The reference returns 0 here unless every predicted object and relationship is valid;
    // this is only reached when the format reward is 1, which already required exactly that.
    debug_assert!(pr_objs.iter().all(is_valid_object) && pr_rels.iter().all(is_valid_relation));
    let gt_objs = truth.objects(gt_objs, size)?;
    let pr_objs = preprocess_objects(pr_objs, size, arena)?;
    gt_rels.iter().try_for_each(check_relation)?;
    if gt_rels.is_empty() {
        if gt_objs.is_empty() {
            return Ok(if pr_objs.is_empty() { 1.0 } else { 0.0 });
        }
        return compute_obj_score(gt_objs, pr_objs, sim, arena);
    }
    // The reference also matches relationship triplets here, but with `rel_gating=False` the result
    // is discarded; only its failure mode matters: each GT predicate is read as a string as soon as
    // there is a predicted relationship to compare it with.
    if !pr_rels.is_empty() {
        for r in gt_rels.iter() {
            if !matches!(r.get("predicate"), Some(PyValue::Str(_))) {
                return Err(RewardError::GroundTruth(
                    "relationship predicate missing or not a string".into(),
                ));
            }
        }
    }
    compute_obj_score(gt_objs, pr_objs, sim, arena)
}

/// [`preprocess_object`] of each object, in order, stopping at the first error.
fn preprocess_objects<'a>(
    objs: &[PyValue<'a>],
    size: &ImageSize,
    arena: &'a Bump,
) -> Result<&'a [SceneObject<'a>], RewardError> {
    // computed once; raised (like the reference) only at the first object that gets that far
    let inverse_size = size.inverse();
    let mut out = BumpVec::with_capacity_in(objs.len(), arena);
    for o in objs {
        out.push(preprocess_object(o, &inverse_size, arena)?);
    }
    Ok(out.into_bump_slice())
}

/// Arenas larger than this after a score are dropped instead of kept for the next one (a huge
/// adversarial scene should not pin its memory to the thread).
const ARENA_KEEP_BYTES: usize = 1 << 20;

thread_local! {
    /// The arena responses are parsed into, reset for every response scored on this thread.
    static ARENA: RefCell<Bump> = RefCell::new(Bump::new());
}

/// `f` with this thread's arena, emptied first.
fn with_arena<R>(f: impl FnOnce(&Bump) -> R) -> R {
    ARENA.with(|cell| match cell.try_borrow_mut() {
        Ok(mut arena) => {
            arena.reset();
            let result = f(&arena);
            if arena.allocated_bytes() > ARENA_KEEP_BYTES {
                *arena = Bump::new();
            }
            result
        }
        // only if a similarity implementation scores from inside a score
        Err(_) => f(&Bump::new()),
    })
}

/// A ground truth and its prompt, parsed once and shared by every response scored against them
/// (the n responses of a GRPO group). What the reference computes only for some responses (the
/// preprocessed objects) is computed when first needed, and its error, if any, is returned to
/// every response that reaches it, so each response gets exactly its own result.
#[derive(Debug)]
pub struct GroundTruth<'g> {
    answer: &'g str,
    scene: PyValue<'g>,
    size: Result<ImageSize, RewardError>,
    objects: OnceCell<Result<&'g [SceneObject<'g>], RewardError>>,
    arena: &'g Bump,
}

impl<'g> GroundTruth<'g> {
    /// Parse `ground_truth` (`<scene>…</scene><answer>…</answer>`) and the prompt's image size
    /// into `arena`.
    pub fn new(ground_truth: &'g str, problem: &str, arena: &'g Bump) -> Self {
        let tags = TagScan::new(ground_truth);
        GroundTruth {
            answer: answer_text(&tags),
            scene: scene_of(&tags, arena).unwrap_or(PyValue::Dict(&[])),
            size: parse_image_size(problem),
            objects: OnceCell::new(),
            arena,
        }
    }

    /// The preprocessed ground-truth objects (`list` is the scene's `objects`).
    fn objects(
        &self,
        list: &[PyValue<'g>],
        size: &ImageSize,
    ) -> Result<&'g [SceneObject<'g>], RewardError> {
        self.objects
            .get_or_init(|| preprocess_objects(list, size, self.arena))
            .clone()
    }

    /// Score one response against this ground truth (what [`compute_score`] returns).
    pub fn score(
        &self,
        response: &str,
        sim: &dyn LabelSimilarity,
    ) -> Result<RewardScore, RewardError> {
        with_arena(|arena| self.score_in(response, sim, arena))
    }

    /// [`Self::score`] with the response parsed into `arena`.
    fn score_in(
        &self,
        response: &str,
        sim: &dyn LabelSimilarity,
        arena: &Bump,
    ) -> Result<RewardScore, RewardError> {
        let tags = TagScan::new(response);
        let pred_scene = scene_of(&tags, arena);
        let size = self.size.as_ref().map_err(Clone::clone)?;
        let format = format_of(&tags, pred_scene.as_ref());
        let pred_scene = pred_scene.unwrap_or(PyValue::Dict(&[]));
        let (count, accuracy, spatial) = if format == 1.0 {
            let count = count_reward(&pred_scene, &self.scene)?;
            let accuracy = acc_reward(answer_text(&tags), self.answer);
            let spatial = if accuracy == 1.0 {
                spatial_reward(&pred_scene, self, size, sim, arena)?
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
}

/// Score one response against its ground truth (`<scene>…</scene><answer>…</answer>`) and prompt.
pub fn compute_score(
    response: &str,
    ground_truth: &str,
    problem: &str,
    sim: &dyn LabelSimilarity,
) -> Result<RewardScore, RewardError> {
    with_arena(|arena| {
        GroundTruth::new(ground_truth, problem, arena).score_in(response, sim, arena)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for the property checks below.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn label_fast_path_equals_refine_then_split() {
        let ids = [
            "man.1",
            "traffic_light.12",
            "Traffic-Light.3",
            "_man_.1",
            " -Car- .2",
            "a.b.c",
            "no dot",
            "\u{1f}x\u{1c}.4",
            "__.1",
            "",
            ".",
            "UPPER",
            "x\t.y",
            "Ünï.1",
            "\u{3000}man.1",
            "\u{b}Man\u{c}.2",
            "a-b_C.1",
            "--.1",
            "x y\r\u{1d}",
            "_A_",
        ];
        let arena = Bump::new();
        for id in ids {
            let slow = sim_label(&refine_node_edge(id)).into_owned();
            assert_eq!(object_label(id, &arena), slow, "{id:?}");
        }
    }

    #[test]
    fn clear_matching_agrees_with_the_solver() {
        let mut r = Lcg(4);
        let (mut decided, mut deferred) = (0, 0);
        for _ in 0..20_000 {
            let (p, g) = (r.next(7) as usize, 1 + r.next(6) as usize);
            let rows = p.max(g);
            let mut cost = vec![PAD_COST; rows * g];
            for v in &mut cost[..p * g] {
                // few distinct values, so ties and near-ties are common
                *v = match r.next(5) {
                    0 => r.next(4) as f64,
                    1 => r.next(4) as f64 + CLEAR_MARGIN / 2.0,
                    _ => r.next(1000) as f64 / 300.0,
                };
            }
            let arena = Bump::new();
            let mut mapping = vec![None; g];
            if !clear_matching(p, g, &cost, &mut mapping, &arena) {
                deferred += 1;
                continue;
            }
            decided += 1;
            let mut expected = vec![None; g];
            let assignment = crate::lsap::linear_sum_assignment(rows, g, &cost).unwrap();
            for (row, c) in assignment.into_iter().enumerate() {
                if let (Some(c), true) = (c, row < p) {
                    expected[c] = Some(row);
                }
            }
            assert_eq!(mapping, expected, "p={p} g={g} {cost:?}");
        }
        assert!(decided > 2_000 && deferred > 2_000, "{decided} {deferred}");
        let arena = Bump::new();
        let mut mapping = vec![None; 2];
        assert!(!clear_matching(
            1,
            2,
            &[f64::NAN, 0.0, PAD_COST, PAD_COST],
            &mut mapping,
            &arena
        ));
    }

    #[test]
    fn vectorised_ciou_equals_the_checked_one_and_is_symmetric() {
        let mut r = Lcg(2);
        let coord = |r: &mut Lcg| match r.next(4) {
            0 => r.next(5) as f64,            // small integers: ties, touching, zero sizes
            1 => -(r.next(5) as f64),         // inverted boxes
            2 => r.next(1000) as f64 / 997.0, // scaled coordinates
            _ => -0.0,
        };
        let mut checked = 0;
        for _ in 0..20_000 {
            let a = PreparedBox::new([coord(&mut r), coord(&mut r), coord(&mut r), coord(&mut r)]);
            let b = PreparedBox::new([coord(&mut r), coord(&mut r), coord(&mut r), coord(&mut r)]);
            if !(a.tame && b.tame) {
                continue;
            }
            checked += 1;
            let exact = ciou01_prepared(&a, &b).ok().map(f64::to_bits);
            let arena = Bump::new();
            let object = |bbox| SceneObject { label: "x", bbox };
            let row = |a: &PreparedBox, b: PreparedBox| {
                let (mut cost, mut iou) = ([0.0], [0.0]);
                let zero_union =
                    BoxColumns::new(&[object(b)], &arena).ciou_row(a, &[1.0], &mut cost, &mut iou);
                assert_eq!(cost[0].to_bits(), (IOU_W * (1.0 - iou[0])).to_bits());
                (!zero_union).then_some(iou[0].to_bits())
            };
            assert_eq!(row(&a, b), exact, "{a:?} {b:?}");
            assert_eq!(row(&b, a), exact, "{a:?} {b:?}");
        }
        assert!(checked > 10_000, "{checked}");
        let big = PreparedBox::new([0.0, 0.0, 1e200, 1.0]);
        let nan = PreparedBox::new([f64::NAN, 0.0, 1.0, 1.0]);
        let flat = PreparedBox::new([0.0, CIOU_EPS, 1.0, 0.0]);
        assert!(!big.tame && !nan.tame && !flat.tame);
    }
}
