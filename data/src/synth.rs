//! Synthetic spatial VQA in the STVQA-7K schema, exact by construction.
//!
//! Each image is a plain background with 2–6 flat-coloured shapes (one colour per class, so a
//! class is recognisable from colour alone). Shapes are rasterised into an id mask, so every box
//! is the exact pixel extent of what is visible (`[x1, y1, x2, y2]`, right/bottom exclusive, like
//! Visual Genome's `[x, y, x + w, y + h]`). Questions are asked only when geometry answers them
//! with a clear margin, in seven of the nine STVQA categories (reach and orientation need poses
//! that flat shapes do not have). The ground-truth subgraph holds only the question's objects.
//! The `reference_response` column holds a short observe/scene/think/answer response with the
//! ground-truth scene and the correct option, which earns the full spatial reward.
//!
//! Images are PNG by default: lossless, so decoded pixels equal the rendered geometry exactly and
//! do not depend on an encoder's quality settings, and flat colours compress smaller than JPEG.
//! JPEG (quality 90, as STVQA-7K stores) is available for benchmarking the JPEG decode path.

use std::io::Cursor;

use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::prompt::{problem_text, short_problem_text, Question};
use crate::record::ImageData;
use crate::rng::SplitMix64;
use crate::scene::{Relationship, SceneGraph, SceneObject};
use crate::writer::{write_readme, SplitWriter, StvqaRow};

/// Default image side: 112 px = 8 × 14-px patches, 16 merged vision tokens in Qwen2.5-VL.
pub const DEFAULT_IMAGE_SIZE: u32 = 112;
/// Background colour.
const BACKGROUND: [u8; 3] = [240, 240, 240];
/// Colour of car wheels.
const WHEEL: [u8; 3] = [40, 40, 40];
/// Minimum gap in pixels between boxes for a left/right/above/below relation.
const RELATION_GAP: i64 = 2;
/// Minimum ratio between two quantities compared by a size or distance question.
const CLEAR_RATIO: f64 = 1.5;
/// Minimum fraction of an occluded object that stays visible.
const MIN_VISIBLE: f64 = 0.5;
/// Layout attempts per row before falling back to a relation question.
const ATTEMPTS: usize = 40;
/// Rating written for every synthetic question (answers are exact).
const RATING: i32 = 10;

/// A drawable object class.
#[derive(Debug, Clone, Copy)]
pub struct ShapeClass {
    /// Id prefix and question noun.
    pub name: &'static str,
    /// Colour name used in observations.
    pub colour_name: &'static str,
    /// RGB fill.
    pub colour: [u8; 3],
    /// Width / height of the full shape.
    pub aspect: f64,
}

/// The object classes, each with its own colour.
pub const CLASSES: [ShapeClass; 6] = [
    ShapeClass {
        name: "circle",
        colour_name: "red",
        colour: [220, 50, 47],
        aspect: 1.0,
    },
    ShapeClass {
        name: "square",
        colour_name: "blue",
        colour: [38, 110, 220],
        aspect: 1.0,
    },
    ShapeClass {
        name: "triangle",
        colour_name: "green",
        colour: [40, 160, 70],
        aspect: 1.0,
    },
    ShapeClass {
        name: "diamond",
        colour_name: "orange",
        colour: [245, 150, 30],
        aspect: 1.0,
    },
    ShapeClass {
        name: "cup",
        colour_name: "purple",
        colour: [150, 70, 190],
        aspect: 1.0,
    },
    ShapeClass {
        name: "car",
        colour_name: "teal",
        colour: [20, 170, 170],
        aspect: 1.6,
    },
];

/// Categories generated and their sampling weights (relation dominates, as in STVQA-7K).
pub const SYNTH_CATEGORIES: [(&str, u32); 7] = [
    ("relation", 4),
    ("size", 1),
    ("count", 1),
    ("existence", 1),
    ("instance_location", 1),
    ("distance", 1),
    ("depth", 1),
];

/// Categories generated only when named in [`SynthConfig::categories`], with their weights.
///
/// `single_object_location` is an easier `instance_location` (the category its rows carry): the
/// scene holds one object, which lies inside one quarter of the image, and all four quarters are
/// the options. The question still names the object, but the answer follows from where the one
/// shape is, without matching the name to a colour among several shapes, the step tiny models
/// find hardest. Used by the tiny CPU demo.
///
/// `object_identity` is a multiple-choice `existence` question (the category its rows carry):
/// the scene holds one object and the question asks which of the six object classes is in the
/// image, with all six as the options. The question text is the same for every row (and, with
/// [`SynthConfig::fixed_option_order`], so are the options), so the answer can only come from
/// the image; it is read from the shape's colour, without locating it. The shape is drawn large
/// (45–70% of the image's side) so that most image tokens show it. Used by the tiny CPU demo.
pub const OPT_IN_CATEGORIES: [(&str, u32); 2] =
    [("single_object_location", 1), ("object_identity", 1)];

/// The category column of a row generated as `category`.
fn row_category(category: &str) -> &str {
    match category {
        "single_object_location" => "instance_location",
        "object_identity" => "existence",
        other => other,
    }
}

/// Image encoding of synthetic rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageEncoding {
    /// Lossless PNG (default).
    #[default]
    Png,
    /// JPEG at quality 90.
    Jpeg,
}

impl std::str::FromStr for ImageEncoding {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            other => Err(DataError::Config(format!(
                "unknown image format `{other}` (png or jpeg)"
            ))),
        }
    }
}

/// Parameters of a synthetic dataset.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Seed: the same seed gives byte-identical parquet files.
    pub seed: u64,
    /// Most distinct objects in a scene (2..=6; count questions may add repeats).
    pub max_objects: u32,
    /// PNG or JPEG.
    pub encoding: ImageEncoding,
    /// Rows per parquet row group.
    pub rows_per_group: usize,
    /// Question categories to generate (names of [`SYNTH_CATEGORIES`] or [`OPT_IN_CATEGORIES`],
    /// drawn with their weights); empty: all of [`SYNTH_CATEGORIES`].
    pub categories: Vec<String>,
    /// List the options in a fixed order (yes before no, the correct count among 1–5 in
    /// ascending order, …: each category's canonical order) instead of shuffling them, so the
    /// option letter follows from the option text; an easier task for tiny models. Off in
    /// STVQA-7K.
    pub fixed_option_order: bool,
    /// Write the `problem` column with the short instruction
    /// ([`crate::prompt::short_problem_text`]: the output format in one sentence, then the image
    /// size and the question) instead of the full one with its worked example, so the image is a
    /// larger share of a tiny model's prompt. Off by default.
    pub short_instruction: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            width: DEFAULT_IMAGE_SIZE,
            height: DEFAULT_IMAGE_SIZE,
            seed: 0,
            max_objects: 4,
            encoding: ImageEncoding::Png,
            rows_per_group: crate::writer::DEFAULT_ROWS_PER_GROUP,
            categories: Vec::new(),
            fixed_option_order: false,
            short_instruction: false,
        }
    }
}

impl SynthConfig {
    /// The categories drawn and their weights; an unknown name is an error listing the known.
    pub fn category_weights(&self) -> Result<Vec<(&'static str, u32)>> {
        if self.categories.is_empty() {
            return Ok(SYNTH_CATEGORIES.to_vec());
        }
        self.categories
            .iter()
            .map(|name| {
                SYNTH_CATEGORIES
                    .iter()
                    .chain(OPT_IN_CATEGORIES.iter())
                    .find(|(c, _)| c == name)
                    .copied()
                    .ok_or_else(|| {
                        DataError::Config(format!(
                            "unknown synthetic category `{name}` (known: {}, {})",
                            SYNTH_CATEGORIES.map(|c| c.0).join(", "),
                            OPT_IN_CATEGORIES.map(|c| c.0).join(", ")
                        ))
                    })
            })
            .collect()
    }
}

/// Canonical position of an option text: yes before no, numbers ascending, the four relations
/// and quadrants in a fixed order, anything else after them in text order.
fn canonical_rank(option: &str) -> (usize, String) {
    const ORDER: [&str; 10] = [
        "yes",
        "no",
        "left of",
        "right of",
        "above",
        "below",
        "top left",
        "top right",
        "bottom left",
        "bottom right",
    ];
    match ORDER.iter().position(|o| *o == option) {
        Some(i) => (i, String::new()),
        None => match option.parse::<u32>() {
            Ok(n) => (ORDER.len() + n as usize, String::new()),
            Err(_) => (usize::MAX, option.to_string()),
        },
    }
}

/// A placed shape: class and full rectangle (x, y, w, h).
#[derive(Debug, Clone, Copy)]
struct Placed {
    class: usize,
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

/// A drawn object as seen in the image.
#[derive(Debug, Clone)]
struct Object {
    class: usize,
    id: String,
    /// Visible box, right/bottom exclusive.
    bbox: [i64; 4],
    visible: u64,
    full: u64,
    /// Draw order (later = in front).
    order: usize,
}

impl Object {
    fn name(&self) -> &'static str {
        CLASSES[self.class].name
    }
    fn colour(&self) -> &'static str {
        CLASSES[self.class].colour_name
    }
    fn centre(&self) -> (f64, f64) {
        (
            (self.bbox[0] + self.bbox[2]) as f64 / 2.0,
            (self.bbox[1] + self.bbox[3]) as f64 / 2.0,
        )
    }
    fn area(&self) -> i64 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }
    fn scene_object(&self) -> SceneObject {
        SceneObject::with_int_box(self.id.clone(), self.bbox)
    }
    fn box_text(&self) -> String {
        format!(
            "[{}, {}, {}, {}]",
            self.bbox[0], self.bbox[1], self.bbox[2], self.bbox[3]
        )
    }
}

/// A rendered scene.
struct Scene {
    image: RgbImage,
    objects: Vec<Object>,
}

/// Colour of pixel (u, v) ∈ [0,1]² of a class' shape in a w × h rectangle, if inside.
fn shape_pixel(class: usize, u: f64, v: f64, w: f64, h: f64) -> Option<[u8; 3]> {
    let c = CLASSES[class].colour;
    let inside = match CLASSES[class].name {
        "circle" => (u - 0.5).powi(2) + (v - 0.5).powi(2) <= 0.25,
        "square" => true,
        "triangle" => v >= 2.0 * (u - 0.5).abs(),
        "diamond" => (u - 0.5).abs() + (v - 0.5).abs() <= 0.5,
        "cup" => {
            let body = u <= 0.72 && v >= 0.08;
            let (du, dv) = ((u - 0.72) / 0.28, (v - 0.5) / 0.3);
            let r = (du * du + dv * dv).sqrt();
            body || (u > 0.72 && (0.45..=1.0).contains(&r))
        }
        "car" => {
            for cx in [0.25, 0.75] {
                let (dx, dy) = ((u - cx) * w, (v - 0.78) * h);
                if (dx * dx + dy * dy).sqrt() <= 0.22 * h {
                    return Some(WHEEL);
                }
            }
            (0.38..=0.8).contains(&v) || ((0.08..0.4).contains(&v) && (0.22..=0.72).contains(&u))
        }
        _ => false,
    };
    inside.then_some(c)
}

fn render(width: u32, height: u32, placed: &[Placed]) -> Scene {
    let mut image = RgbImage::from_pixel(width, height, Rgb(BACKGROUND));
    let mut mask = vec![0usize; (width * height) as usize];
    let mut full = vec![0u64; placed.len()];
    for (k, p) in placed.iter().enumerate() {
        for py in p.y..p.y + p.h {
            for px in p.x..p.x + p.w {
                let u = (px - p.x) as f64 / p.w as f64 + 0.5 / p.w as f64;
                let v = (py - p.y) as f64 / p.h as f64 + 0.5 / p.h as f64;
                if let Some(c) = shape_pixel(p.class, u, v, p.w as f64, p.h as f64) {
                    image.put_pixel(px as u32, py as u32, Rgb(c));
                    mask[(py as u32 * width + px as u32) as usize] = k + 1;
                    full[k] += 1;
                }
            }
        }
    }
    let mut boxes = vec![[i64::MAX, i64::MAX, i64::MIN, i64::MIN]; placed.len()];
    let mut visible = vec![0u64; placed.len()];
    for y in 0..height as i64 {
        for x in 0..width as i64 {
            let k = mask[(y * width as i64 + x) as usize];
            if k > 0 {
                let b = &mut boxes[k - 1];
                b[0] = b[0].min(x);
                b[1] = b[1].min(y);
                b[2] = b[2].max(x + 1);
                b[3] = b[3].max(y + 1);
                visible[k - 1] += 1;
            }
        }
    }
    let mut objects: Vec<Object> = placed
        .iter()
        .enumerate()
        .map(|(k, p)| Object {
            class: p.class,
            id: String::new(),
            bbox: boxes[k],
            visible: visible[k],
            full: full[k],
            order: k,
        })
        .collect();
    // Instance numbers per class, left to right (then top to bottom).
    let mut by_position: Vec<usize> = (0..objects.len()).collect();
    by_position.sort_by_key(|&k| (objects[k].bbox[0], objects[k].bbox[1], k));
    let mut counts = [0usize; CLASSES.len()];
    for k in by_position {
        let class = objects[k].class;
        counts[class] += 1;
        objects[k].id = format!("{}.{}", CLASSES[class].name, counts[class]);
    }
    Scene { image, objects }
}

/// Sample a rectangle for `class` inside the canvas.
fn sample_rect(rng: &mut SplitMix64, class: usize, width: u32, height: u32) -> Placed {
    let side = width.min(height) as f64;
    let h = (side * (0.16 + 0.16 * rng.unit())).round().max(6.0);
    let w = (h * CLASSES[class].aspect).round().min(width as f64 / 2.0);
    let (w, h) = (w as i64, h as i64);
    let x = 1 + rng.below((width as i64 - w - 1).max(1) as u64) as i64;
    let y = 1 + rng.below((height as i64 - h - 1).max(1) as u64) as i64;
    Placed { class, x, y, w, h }
}

/// A rectangle for `class` whose height is 45–70% of the shorter side (an `object_identity`
/// scene: one object that covers a good part of the image).
fn large_rect(rng: &mut SplitMix64, class: usize, width: u32, height: u32) -> Placed {
    let side = width.min(height) as f64;
    let h = (side * (0.45 + 0.25 * rng.unit())).round().max(6.0);
    let w = (h * CLASSES[class].aspect).round().min(width as f64 - 2.0);
    let (w, h) = (w as i64, h as i64);
    let x = 1 + rng.below((width as i64 - w - 1).max(1) as u64) as i64;
    let y = 1 + rng.below((height as i64 - h - 1).max(1) as u64) as i64;
    Placed { class, x, y, w, h }
}

/// Whether two rectangles, grown by `gap` pixels, intersect.
fn rects_touch(a: &Placed, b: &Placed, gap: i64) -> bool {
    a.x < b.x + b.w + gap && b.x < a.x + a.w + gap && a.y < b.y + b.h + gap && b.y < a.y + a.h + gap
}

fn overlap_area(a: &Placed, b: &Placed) -> i64 {
    let w = (a.x + a.w).min(b.x + b.w) - a.x.max(b.x);
    let h = (a.y + a.h).min(b.y + b.h) - a.y.max(b.y);
    w.max(0) * h.max(0)
}

/// Place `classes` without overlaps (gap of 3 px); if `occlude`, the second object is placed
/// over part of the first. `None` when the canvas is too crowded.
fn layout(
    rng: &mut SplitMix64,
    classes: &[usize],
    width: u32,
    height: u32,
    occlude: bool,
) -> Option<Vec<Placed>> {
    let mut placed: Vec<Placed> = Vec::with_capacity(classes.len());
    for (k, &class) in classes.iter().enumerate() {
        let mut ok = None;
        for _ in 0..100 {
            let r = sample_rect(rng, class, width, height);
            let fits = if occlude && k == 1 {
                let a = &placed[0];
                let ratio = overlap_area(a, &r) as f64 / (a.w * a.h).min(r.w * r.h) as f64;
                (0.15..=0.45).contains(&ratio)
            } else {
                placed.iter().all(|p| !rects_touch(p, &r, 3))
            };
            if fits {
                ok = Some(r);
                break;
            }
        }
        placed.push(ok?);
    }
    Some(placed)
}

/// A generated question with its observation and reasoning texts.
struct Generated {
    question: Question,
    observe: String,
    think: String,
    objects_in_scene: usize,
}

fn shuffle_options(
    rng: &mut SplitMix64,
    correct: String,
    distractors: Vec<String>,
) -> (Vec<String>, usize) {
    let mut options = vec![correct.clone()];
    options.extend(distractors);
    rng.shuffle(&mut options);
    let index = options
        .iter()
        .position(|o| *o == correct)
        .expect("correct option present");
    (options, index)
}

fn rel(subject: &Object, predicate: &str, object: &Object) -> Relationship {
    Relationship {
        subject: subject.id.clone(),
        predicate: predicate.to_string(),
        object: object.id.clone(),
    }
}

fn plural(name: &str, n: usize) -> String {
    if n == 1 {
        name.to_string()
    } else {
        format!("{name}s")
    }
}

/// Distinct classes for a scene of `n` objects, excluding `exclude`.
fn distinct_classes(rng: &mut SplitMix64, n: usize, exclude: Option<usize>) -> Vec<usize> {
    let mut all: Vec<usize> = (0..CLASSES.len()).filter(|&c| Some(c) != exclude).collect();
    rng.shuffle(&mut all);
    all.truncate(n);
    all
}

/// True predicates of `a` relative to `b` on each axis, with the axis gap.
fn axis_relations(a: &Object, b: &Object) -> Vec<(&'static str, i64, char)> {
    let mut out = Vec::new();
    if a.bbox[2] + RELATION_GAP <= b.bbox[0] {
        out.push(("left of", b.bbox[0] - a.bbox[2], 'x'));
    }
    if b.bbox[2] + RELATION_GAP <= a.bbox[0] {
        out.push(("right of", a.bbox[0] - b.bbox[2], 'x'));
    }
    if a.bbox[3] + RELATION_GAP <= b.bbox[1] {
        out.push(("above", b.bbox[1] - a.bbox[3], 'y'));
    }
    if b.bbox[3] + RELATION_GAP <= a.bbox[1] {
        out.push(("below", a.bbox[1] - b.bbox[3], 'y'));
    }
    out
}

fn relation_question(rng: &mut SplitMix64, objs: &[Object]) -> Option<Generated> {
    let n = objs.len();
    let i = rng.below(n as u64) as usize;
    let j = (i + 1 + rng.below(n as u64 - 1) as usize) % n;
    let (a, b) = (&objs[i], &objs[j]);
    let truths = axis_relations(a, b);
    let &(pred, _, axis) = truths.iter().max_by_key(|t| t.1)?;
    let false_preds: Vec<String> = ["left of", "right of", "above", "below"]
        .iter()
        .filter(|p| !truths.iter().any(|t| t.0 == **p))
        .map(|p| p.to_string())
        .collect();
    let mut distractors = false_preds;
    rng.shuffle(&mut distractors);
    distractors.truncate(1 + rng.below(distractors.len() as u64) as usize);
    let (options, answer_index) = shuffle_options(rng, pred.to_string(), distractors);
    let (lo, hi) = if axis == 'x' { (0, 2) } else { (1, 3) };
    let think = format!(
        "The {an} spans {axis} {}-{} and the {bn} spans {axis} {}-{}, so the {an} is {pred} the {bn}.",
        a.bbox[lo], a.bbox[hi], b.bbox[lo], b.bbox[hi],
        an = a.name(), bn = b.name()
    );
    Some(Generated {
        question: Question {
            question: format!(
                "Where is the {} with respect to the {}?",
                a.name(),
                b.name()
            ),
            options,
            answer_index,
            scene: SceneGraph {
                objects: vec![a.scene_object(), b.scene_object()],
                relationships: vec![rel(a, pred, b)],
            },
        },
        observe: format!(
            "A {} {} and a {} {}.",
            a.colour(),
            a.name(),
            b.colour(),
            b.name()
        ),
        think,
        objects_in_scene: n,
    })
}

fn pick_pair(rng: &mut SplitMix64, n: usize) -> (usize, usize) {
    let i = rng.below(n as u64) as usize;
    let j = (i + 1 + rng.below(n as u64 - 1) as usize) % n;
    (i, j)
}

fn size_question(rng: &mut SplitMix64, objs: &[Object]) -> Option<Generated> {
    let (i, j) = pick_pair(rng, objs.len());
    let (a, b) = (&objs[i], &objs[j]);
    let (big, small) = if a.area() >= b.area() { (a, b) } else { (b, a) };
    if (big.area() as f64) < CLEAR_RATIO * small.area() as f64 {
        return None;
    }
    let mut distractors = vec![format!("{} is larger", small.name())];
    if rng.below(2) == 0 {
        distractors.push("they are the same size".into());
    }
    let (options, answer_index) =
        shuffle_options(rng, format!("{} is larger", big.name()), distractors);
    let dims = |o: &Object| format!("{}x{}", o.bbox[2] - o.bbox[0], o.bbox[3] - o.bbox[1]);
    Some(Generated {
        question: Question {
            question: format!("Which is larger, the {} or the {}?", a.name(), b.name()),
            options,
            answer_index,
            scene: SceneGraph {
                objects: vec![a.scene_object(), b.scene_object()],
                relationships: vec![rel(big, "larger than", small)],
            },
        },
        observe: format!(
            "A {} {} and a {} {}.",
            a.colour(),
            a.name(),
            b.colour(),
            b.name()
        ),
        think: format!(
            "The {} box is {} and the {} box is {}, so the {} is larger.",
            a.name(),
            dims(a),
            b.name(),
            dims(b),
            big.name()
        ),
        objects_in_scene: objs.len(),
    })
}

fn count_question(rng: &mut SplitMix64, objs: &[Object], target: usize) -> Option<Generated> {
    let members: Vec<&Object> = objs.iter().filter(|o| o.class == target).collect();
    let k = members.len();
    let name = CLASSES[target].name;
    let mut others: Vec<String> = (1..=5).filter(|&c| c != k).map(|c| c.to_string()).collect();
    rng.shuffle(&mut others);
    others.truncate(1 + rng.below(3) as usize);
    let (options, answer_index) = shuffle_options(rng, k.to_string(), others);
    let mut sorted = members.clone();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    Some(Generated {
        question: Question {
            question: format!("How many {} are there in the image?", plural(name, 2)),
            options,
            answer_index,
            scene: SceneGraph {
                objects: sorted.iter().map(|o| o.scene_object()).collect(),
                relationships: vec![],
            },
        },
        observe: format!("{k} {} {}.", CLASSES[target].colour_name, plural(name, k)),
        think: format!(
            "The scene graph holds {k} {} objects, so the answer is {k}.",
            name
        ),
        objects_in_scene: objs.len(),
    })
}

fn existence_question(rng: &mut SplitMix64, objs: &[Object], target: usize) -> Option<Generated> {
    let name = CLASSES[target].name;
    let present: Vec<&Object> = objs.iter().filter(|o| o.class == target).collect();
    let yes = !present.is_empty();
    let (correct, wrong) = if yes { ("yes", "no") } else { ("no", "yes") };
    let (options, answer_index) = shuffle_options(rng, correct.into(), vec![wrong.into()]);
    let (observe, think) = match present.first() {
        Some(o) => (
            format!("A {} {}.", o.colour(), name),
            format!("There is a {name} at {}, so yes.", o.box_text()),
        ),
        None => (
            format!("No {name} is visible."),
            format!("None of the objects is a {name}, so no."),
        ),
    };
    Some(Generated {
        question: Question {
            question: format!("Is there a {name} in the image?"),
            options,
            answer_index,
            scene: SceneGraph {
                objects: present.iter().map(|o| o.scene_object()).collect(),
                relationships: vec![],
            },
        },
        observe,
        think,
        objects_in_scene: objs.len(),
    })
}

/// Where one of the objects lies (`all_options`: the four quarters are the options, else the
/// correct one and one to three others).
fn location_question(
    rng: &mut SplitMix64,
    objs: &[Object],
    width: u32,
    height: u32,
    all_options: bool,
) -> Option<Generated> {
    let (w2, h2) = (i64::from(width) / 2, i64::from(height) / 2);
    let a = &objs[rng.below(objs.len() as u64) as usize];
    let horizontal = if a.bbox[2] <= w2 {
        "left"
    } else if a.bbox[0] >= w2 {
        "right"
    } else {
        return None;
    };
    let vertical = if a.bbox[3] <= h2 {
        "top"
    } else if a.bbox[1] >= h2 {
        "bottom"
    } else {
        return None;
    };
    let correct = format!("{vertical} {horizontal}");
    let mut distractors: Vec<String> = ["top left", "top right", "bottom left", "bottom right"]
        .iter()
        .filter(|c| **c != correct)
        .map(|c| c.to_string())
        .collect();
    rng.shuffle(&mut distractors);
    if !all_options {
        distractors.truncate(1 + rng.below(3) as usize);
    }
    let (options, answer_index) = shuffle_options(rng, correct.clone(), distractors);
    Some(Generated {
        question: Question {
            question: format!("In which part of the image is the {} located?", a.name()),
            options,
            answer_index,
            scene: SceneGraph {
                objects: vec![a.scene_object()],
                relationships: vec![],
            },
        },
        observe: format!("A {} {}.", a.colour(), a.name()),
        think: format!(
            "The {} box {} lies within the {vertical} {horizontal} quarter of the {width}x{height} image.",
            a.name(),
            a.box_text()
        ),
        objects_in_scene: objs.len(),
    })
}

/// Which of the six classes the one object of the scene is (all six are the options).
fn identity_question(rng: &mut SplitMix64, objs: &[Object]) -> Option<Generated> {
    let a = objs.first()?;
    let distractors: Vec<String> = CLASSES
        .iter()
        .filter(|c| c.name != a.name())
        .map(|c| c.name.to_string())
        .collect();
    let (options, answer_index) = shuffle_options(rng, a.name().into(), distractors);
    Some(Generated {
        question: Question {
            question: "Which object is in the image?".into(),
            options,
            answer_index,
            scene: SceneGraph {
                objects: vec![a.scene_object()],
                relationships: vec![],
            },
        },
        observe: format!("A {} {}.", a.colour(), a.name()),
        think: format!("The shape is {}, so it is the {}.", a.colour(), a.name()),
        objects_in_scene: objs.len(),
    })
}

fn distance_question(rng: &mut SplitMix64, objs: &[Object]) -> Option<Generated> {
    if objs.len() < 3 {
        return None;
    }
    let mut idx: Vec<usize> = (0..objs.len()).collect();
    rng.shuffle(&mut idx);
    let (x, a, b) = (&objs[idx[0]], &objs[idx[1]], &objs[idx[2]]);
    let dist = |p: &Object, q: &Object| {
        let (pc, qc) = (p.centre(), q.centre());
        ((pc.0 - qc.0).powi(2) + (pc.1 - qc.1).powi(2)).sqrt()
    };
    let (da, db) = (dist(x, a), dist(x, b));
    let (near, far) = if da <= db { (a, b) } else { (b, a) };
    if da.max(db) < CLEAR_RATIO * da.min(db) {
        return None;
    }
    let (options, answer_index) = shuffle_options(rng, near.name().into(), vec![far.name().into()]);
    Some(Generated {
        question: Question {
            question: format!(
                "Which object is closer to the {}, the {} or the {}?",
                x.name(),
                a.name(),
                b.name()
            ),
            options,
            answer_index,
            scene: SceneGraph {
                objects: vec![x.scene_object(), a.scene_object(), b.scene_object()],
                relationships: vec![rel(near, "closer to", x)],
            },
        },
        observe: format!(
            "A {} {}, a {} {} and a {} {}.",
            x.colour(),
            x.name(),
            a.colour(),
            a.name(),
            b.colour(),
            b.name()
        ),
        think: format!(
            "From the {} centre, the {} is {:.0} px away and the {} {:.0} px, so the {} is closer.",
            x.name(),
            a.name(),
            da,
            b.name(),
            db,
            near.name()
        ),
        objects_in_scene: objs.len(),
    })
}

/// The occluded pair is objects 0 (behind) and 1 (in front) in draw order.
fn depth_question(rng: &mut SplitMix64, objs: &[Object]) -> Option<Generated> {
    let back = objs.iter().find(|o| o.order == 0)?;
    let front = objs.iter().find(|o| o.order == 1)?;
    let hidden = back.full - back.visible;
    if hidden == 0
        || (back.visible as f64) < MIN_VISIBLE * back.full as f64
        || front.visible != front.full
    {
        return None;
    }
    let (a, b) = if rng.below(2) == 0 {
        (back, front)
    } else {
        (front, back)
    };
    let mut distractors = vec![back.name().to_string()];
    if rng.below(2) == 0 {
        distractors.push("they are at the same distance".into());
    }
    let (options, answer_index) = shuffle_options(rng, front.name().into(), distractors);
    Some(Generated {
        question: Question {
            question: format!(
                "Which is closer to the camera, the {} or the {}?",
                a.name(),
                b.name()
            ),
            options,
            answer_index,
            scene: SceneGraph {
                objects: vec![a.scene_object(), b.scene_object()],
                relationships: vec![rel(front, "in front of", back)],
            },
        },
        observe: format!(
            "A {} {} partly hidden behind a {} {}.",
            back.colour(),
            back.name(),
            front.colour(),
            front.name()
        ),
        think: format!(
            "The {} covers part of the {}, so the {} is closer to the camera.",
            front.name(),
            back.name(),
            front.name()
        ),
        objects_in_scene: objs.len(),
    })
}

/// Try to build one row of `category`.
fn attempt(rng: &mut SplitMix64, cfg: &SynthConfig, category: &str) -> Option<(Scene, Generated)> {
    let max = cfg.max_objects.clamp(2, CLASSES.len() as u32);
    let (classes, target, occlude) = match category {
        "count" => {
            let target = rng.below(CLASSES.len() as u64) as usize;
            let k = rng.range(1, 4) as usize;
            let mut classes = vec![target; k];
            let extra = rng.range(0, 2) as usize;
            classes.extend(distinct_classes(rng, extra, Some(target)));
            rng.shuffle(&mut classes);
            (classes, target, false)
        }
        "existence" => {
            let target = rng.below(CLASSES.len() as u64) as usize;
            let n = rng.range(1, max) as usize;
            let classes = if rng.below(2) == 0 {
                let mut c = distinct_classes(rng, n - 1, Some(target));
                c.push(target);
                rng.shuffle(&mut c);
                c
            } else {
                distinct_classes(rng, n, Some(target))
            };
            (classes, target, false)
        }
        "distance" => {
            let n = rng.range(3, max.max(3)) as usize;
            (distinct_classes(rng, n, None), 0, false)
        }
        "single_object_location" | "object_identity" => (distinct_classes(rng, 1, None), 0, false),
        other => {
            let n = rng.range(2, max) as usize;
            (distinct_classes(rng, n, None), 0, other == "depth")
        }
    };
    let placed = if category == "object_identity" {
        vec![large_rect(rng, classes[0], cfg.width, cfg.height)]
    } else {
        layout(rng, &classes, cfg.width, cfg.height, occlude)?
    };
    let scene = render(cfg.width, cfg.height, &placed);
    let objs = &scene.objects;
    let generated = match category {
        "relation" => relation_question(rng, objs),
        "size" => size_question(rng, objs),
        "count" => count_question(rng, objs, target),
        "existence" => existence_question(rng, objs, target),
        "instance_location" => location_question(rng, objs, cfg.width, cfg.height, false),
        "single_object_location" => location_question(rng, objs, cfg.width, cfg.height, true),
        "object_identity" => identity_question(rng, objs),
        "distance" => distance_question(rng, objs),
        "depth" => depth_question(rng, objs),
        _ => None,
    }?;
    Some((scene, generated))
}

/// FNV-1a of a split name: the split's stream id in the row seeds.
fn split_stream(split: &str) -> u64 {
    split.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

fn encode(image: &RgbImage, encoding: ImageEncoding) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    let (w, h) = image.dimensions();
    let res = match encoding {
        ImageEncoding::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(
            image.as_raw(),
            w,
            h,
            ExtendedColorType::Rgb8,
        ),
        ImageEncoding::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8),
    };
    res.map_err(|source| DataError::Image {
        what: "encoding a synthetic image".into(),
        source,
    })?;
    Ok(out.into_inner())
}

/// Generate row `index` of `split`: a pure function of (config, split, index).
pub fn generate_row(cfg: &SynthConfig, split: &str, index: u64) -> Result<StvqaRow> {
    if cfg.width < 32 || cfg.height < 32 {
        return Err(DataError::Config(format!(
            "synthetic images must be at least 32 x 32, got {} x {}",
            cfg.width, cfg.height
        )));
    }
    let mut rng = SplitMix64::derive(&[cfg.seed, split_stream(split), index]);
    let categories = cfg.category_weights()?;
    let weights: Vec<u32> = categories.iter().map(|c| c.1).collect();
    let chosen = categories[rng.weighted(&weights)].0;
    let mut category = chosen;
    let mut made = None;
    for attempt_no in 0..2 * ATTEMPTS {
        // a category that cannot be laid out falls back to a relation question, when asked for
        if attempt_no == ATTEMPTS && categories.iter().any(|c| c.0 == "relation") {
            category = "relation";
        }
        if let Some(m) = attempt(&mut rng, cfg, category) {
            made = Some(m);
            break;
        }
    }
    let (scene, mut g) = made.ok_or_else(|| {
        DataError::Config(format!(
            "could not lay out a scene on a {} x {} canvas (row {index})",
            cfg.width, cfg.height
        ))
    })?;
    if cfg.fixed_option_order {
        let correct = g.question.options[g.question.answer_index].clone();
        g.question.options.sort_by_key(|o| canonical_rank(o));
        g.question.answer_index = g
            .question
            .options
            .iter()
            .position(|o| *o == correct)
            .expect("the correct option is kept");
    }
    let image_id = format!("synth-{split}-{index:06}");
    let ext = match cfg.encoding {
        ImageEncoding::Png => "png",
        ImageEncoding::Jpeg => "jpg",
    };
    let level = match g.objects_in_scene {
        0..=2 => "easy",
        3 => "medium",
        _ => "hard",
    };
    let qwo = g.question.question_with_options();
    let answers = g.question.answer_columns();
    Ok(StvqaRow {
        image: ImageData {
            bytes: encode(&scene.image, cfg.encoding)?,
            path: Some(format!("{image_id}.{ext}")),
        },
        image_id,
        problem: if cfg.short_instruction {
            short_problem_text(cfg.width, cfg.height, &qwo)
        } else {
            problem_text(cfg.width, cfg.height, &qwo)
        },
        question_only: g.question.question.clone(),
        question_with_options: qwo,
        options: g.question.options.clone(),
        answer: answers.answer,
        answer_only: answers.answer_only,
        answer_text: answers.answer_text,
        answer_text_only: answers.answer_text_only,
        answer_option_text: answers.answer_option_text,
        answer_option_text_only: answers.answer_option_text_only,
        category: row_category(category).to_string(),
        level: level.to_string(),
        rating: RATING,
        reference_response: Some(g.question.reference_response(&g.observe, &g.think)),
    })
}

/// Write `rows` rows of `split` to `<out>/data/<split>-00000-of-00001.parquet`, generating one
/// row group at a time in parallel. Returns the file written.
pub fn write_split(
    cfg: &SynthConfig,
    out: &std::path::Path,
    split: &str,
    rows: u64,
) -> Result<std::path::PathBuf> {
    write_split_with(cfg, out, split, rows, |_, _| {})
}

/// [`write_split`] with `edit(index, row)` applied to every generated row before it is written
/// (test fixtures use it to break chosen rows).
pub fn write_split_with(
    cfg: &SynthConfig,
    out: &std::path::Path,
    split: &str,
    rows: u64,
    edit: impl Fn(u64, &mut StvqaRow) + Sync,
) -> Result<std::path::PathBuf> {
    let mut writer = SplitWriter::create(out, split, cfg.rows_per_group)?;
    let group = cfg.rows_per_group.max(1) as u64;
    let mut start = 0;
    while start < rows {
        let end = (start + group).min(rows);
        let batch: Vec<StvqaRow> = (start..end)
            .into_par_iter()
            .map(|i| {
                let mut row = generate_row(cfg, split, i)?;
                edit(i, &mut row);
                Ok(row)
            })
            .collect::<Result<_>>()?;
        for row in batch {
            writer.write(row)?;
        }
        start = end;
    }
    Ok(writer.finish()?.0)
}

/// Write a synthetic HF dataset folder with `train` and `val` splits and a README.
pub fn write_dataset(
    cfg: &SynthConfig,
    out: &std::path::Path,
    train: u64,
    val: u64,
) -> Result<Vec<std::path::PathBuf>> {
    let files = vec![
        write_split(cfg, out, crate::source::TRAIN, train)?,
        write_split(cfg, out, crate::source::VAL, val)?,
    ];
    write_readme(
        out,
        &[crate::source::TRAIN, crate::source::VAL],
        &format!(
            "Synthetic spatial VQA in the STVQA-7K schema (seed {}, {} x {} images, {train} train / {val} val rows), \
             written by `spatialthinker data synth`. Boxes and answers are exact by construction.",
            cfg.seed, cfg.width, cfg.height
        ),
    )?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_the_exact_visible_extent() {
        // A 10x10 square at (5, 7) covers pixels 5..15 x 7..17.
        let scene = render(
            40,
            40,
            &[Placed {
                class: 1,
                x: 5,
                y: 7,
                w: 10,
                h: 10,
            }],
        );
        assert_eq!(scene.objects[0].bbox, [5, 7, 15, 17]);
        assert_eq!(scene.objects[0].visible, 100);
        assert_eq!(scene.objects[0].id, "square.1");
        assert_eq!(scene.image.get_pixel(5, 7).0, CLASSES[1].colour);
        assert_eq!(scene.image.get_pixel(15, 7).0, BACKGROUND);
    }

    #[test]
    fn occlusion_hides_the_back_object() {
        // Square 0..10 behind square 5..15 (drawn later): 25 of 100 pixels hidden, and the
        // back square's visible box is unchanged except where fully covered.
        let scene = render(
            40,
            40,
            &[
                Placed {
                    class: 1,
                    x: 0,
                    y: 0,
                    w: 10,
                    h: 10,
                },
                Placed {
                    class: 0,
                    x: 5,
                    y: 5,
                    w: 10,
                    h: 10,
                },
            ],
        );
        let back = &scene.objects[0];
        assert_eq!(back.full, 100);
        assert!(back.visible < 100);
        assert_eq!(back.bbox, [0, 0, 10, 10]);
    }

    #[test]
    fn instances_are_numbered_left_to_right() {
        let scene = render(
            60,
            20,
            &[
                Placed {
                    class: 0,
                    x: 40,
                    y: 2,
                    w: 8,
                    h: 8,
                },
                Placed {
                    class: 0,
                    x: 2,
                    y: 2,
                    w: 8,
                    h: 8,
                },
            ],
        );
        assert_eq!(scene.objects[0].id, "circle.2");
        assert_eq!(scene.objects[1].id, "circle.1");
    }

    #[test]
    fn categories_and_fixed_option_order() {
        let cfg = SynthConfig {
            categories: vec!["existence".into()],
            fixed_option_order: true,
            ..SynthConfig::default()
        };
        for i in 0..20 {
            let row = generate_row(&cfg, "train", i).unwrap();
            assert_eq!(row.category, "existence");
            assert_eq!(row.options, vec!["yes".to_string(), "no".to_string()]);
            let letter = if row.answer_text_only == "yes" {
                "A"
            } else {
                "B"
            };
            assert_eq!(row.answer_only, letter);
        }
        let bad = SynthConfig {
            categories: vec!["reach".into()],
            ..SynthConfig::default()
        };
        let e = generate_row(&bad, "train", 0).unwrap_err().to_string();
        assert!(e.contains("unknown synthetic category `reach`"), "{e}");
    }

    #[test]
    fn single_object_location_is_opt_in_with_one_object_and_four_quarters() {
        let cfg = SynthConfig {
            categories: vec!["single_object_location".into()],
            fixed_option_order: true,
            ..SynthConfig::default()
        };
        let quarters = ["top left", "top right", "bottom left", "bottom right"];
        let mut answers = std::collections::BTreeSet::new();
        for i in 0..40 {
            let row = generate_row(&cfg, "val", i).unwrap();
            assert_eq!(row.category, "instance_location");
            assert_eq!(row.options, quarters.map(String::from).to_vec());
            let scene = &row.answer;
            assert_eq!(scene.matches("\"id\"").count(), 1, "one object: {scene}");
            // the box lies inside the answered quarter
            let b: Vec<i64> = scene[scene.find("\"bbox\": [").unwrap() + 9..]
                .split(']')
                .next()
                .unwrap()
                .split(',')
                .map(|v| v.trim().parse().unwrap())
                .collect();
            let half = i64::from(DEFAULT_IMAGE_SIZE) / 2;
            let vertical = if b[3] <= half { "top" } else { "bottom" };
            let horizontal = if b[2] <= half { "left" } else { "right" };
            assert!(b[1] >= half || b[3] <= half, "{b:?}");
            assert!(b[0] >= half || b[2] <= half, "{b:?}");
            assert_eq!(row.answer_text_only, format!("{vertical} {horizontal}"));
            answers.insert(row.answer_only.clone());
        }
        assert_eq!(answers.len(), 4, "every quarter is an answer");
        // not drawn unless named: the default mix is unchanged
        let all = SynthConfig::default();
        assert!(all
            .category_weights()
            .unwrap()
            .iter()
            .all(|c| c.0 != "single_object_location"));
    }

    #[test]
    fn object_identity_asks_the_same_question_of_one_object() {
        let cfg = SynthConfig {
            categories: vec!["object_identity".into()],
            fixed_option_order: true,
            short_instruction: true,
            ..SynthConfig::default()
        };
        let names = ["car", "circle", "cup", "diamond", "square", "triangle"];
        let mut answers = std::collections::BTreeSet::new();
        let mut problems = std::collections::BTreeSet::new();
        for i in 0..40 {
            let row = generate_row(&cfg, "val", i).unwrap();
            assert_eq!(row.category, "existence");
            assert_eq!(row.question_only, "Which object is in the image?");
            assert_eq!(row.options, names.map(String::from).to_vec());
            assert_eq!(row.answer.matches("\"id\"").count(), 1, "{}", row.answer);
            let id = format!("\"id\": \"{}.1\"", row.answer_text_only);
            assert!(row.answer.contains(&id), "{}", row.answer);
            assert!(row.problem.starts_with("<image> Reply with <observe>"));
            assert!(row
                .problem
                .contains("\nImage size: (112 x 112)\nQ. Which object"));
            answers.insert(row.answer_only.clone());
            problems.insert(row.problem.clone());
        }
        assert_eq!(answers.len(), 6, "every class is an answer");
        assert_eq!(
            problems.len(),
            1,
            "the prompt text is the same for every row"
        );
        // the full instruction stays the default
        let full = generate_row(&SynthConfig::default(), "val", 0).unwrap();
        assert!(full.problem.contains("Example:"));
    }

    #[test]
    fn rows_are_deterministic_per_seed() {
        let cfg = SynthConfig::default();
        let a = generate_row(&cfg, "train", 3).unwrap();
        let b = generate_row(&cfg, "train", 3).unwrap();
        assert_eq!(a, b);
        let c = generate_row(&cfg, "val", 3).unwrap();
        assert_ne!(a.image.bytes, c.image.bytes);
    }
}
