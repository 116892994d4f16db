//! SpatialThinker rewards: the dense spatial reward (`spatial`) and the vanilla GRPO reward (`r1v`).
//!
//! Pure Rust, no libtorch: the trainer scores rollouts with it, and so can any other tool. Both
//! rewards reproduce the Python reference number for number, including on malformed responses;
//! where the reference raises, [`score`] returns a [`RewardError`] instead of a made-up score.

pub mod lsap;
pub mod mathruler;
pub mod pyjson;
pub mod pystr;
pub mod r1v;
pub mod similarity;
pub mod spatial;

use std::str::FromStr;

use rayon::prelude::*;

pub use bumpalo::Bump;
pub use pyjson::{PyInt, PyValue};
pub use similarity::{ExactLabelSimilarity, LabelSimilarity, WordVectorSimilarity};
pub use spatial::{extract_answer, extract_scene, has_scene_object, parse_image_size, ImageSize};

/// `a == b` for the short strings of a scene (keys, ids, labels), compared in line: the general
/// slice comparison calls `memcmp`, which costs more than comparing a few bytes.
#[inline]
pub(crate) fn short_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

/// A reward and its components (all 0 for the ones a reward does not have, e.g. count in `r1v`).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct RewardScore {
    /// The scalar reward GRPO uses.
    pub overall: f64,
    /// Format reward F ∈ {0, 1}.
    pub format: f64,
    /// Count reward C ∈ [0, 1] (spatial only).
    pub count: f64,
    /// Accuracy reward A ∈ {0, 1}.
    pub accuracy: f64,
    /// Spatial reward S (spatial only; the reference's `spatial_score`).
    pub spatial: f64,
}

/// Which reward to compute (`spatial` or `r1v` in configs and on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// SpatialThinker's dense spatial reward (`spatial_sgg`).
    #[default]
    Spatial,
    /// The vanilla GRPO baseline reward (`r1v`): 0.5·format + 0.5·accuracy.
    R1v,
}

impl FromStr for RewardKind {
    type Err = RewardError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spatial" => Ok(RewardKind::Spatial),
            "r1v" => Ok(RewardKind::R1v),
            other => Err(RewardError::UnknownKind(other.to_string())),
        }
    }
}

/// Why a row cannot be scored: the cases where the Python reference raises.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewardError {
    /// The prompt has no `Image size: (W x H)` line.
    #[error("Image size not found in problem")]
    ImageSizeMissing,
    /// A size group is not something Python's `int()` accepts.
    #[error("image {which} {value:?} is not an integer")]
    ImageSizeInvalid {
        /// `width` or `height`.
        which: &'static str,
        /// The captured text.
        value: String,
    },
    /// Python `ZeroDivisionError`.
    #[error("division by zero in {0}")]
    ZeroDivision(&'static str),
    /// Python `OverflowError`.
    #[error("float overflow in {0}")]
    Overflow(&'static str),
    /// The ground-truth scene has a shape the reference cannot process (`TypeError`/`KeyError`).
    #[error("ground-truth scene: {0}")]
    GroundTruth(String),
    /// scipy's `linear_sum_assignment` rejects the cost matrix.
    #[error("assignment: {0}")]
    Assignment(#[from] lsap::LsapError),
    /// The word-vector file cannot be read.
    #[error("word vectors {path}: {reason}")]
    WordVectors {
        /// File path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Not `spatial` or `r1v`.
    #[error("unknown reward {0:?} (expected `spatial` or `r1v`)")]
    UnknownKind(String),
}

/// One response to score.
#[derive(Debug, Clone, Copy)]
pub struct RewardInput<'a> {
    /// The decoded policy response.
    pub response: &'a str,
    /// The dataset's answer column (`<scene>…</scene>\n<answer>(B) behind</answer>` for spatial).
    pub ground_truth: &'a str,
    /// The prompt text (the spatial reward reads `Image size: (W x H)` from it).
    pub problem: &'a str,
}

/// Score one response with the chosen reward.
pub fn score(
    kind: RewardKind,
    response: &str,
    ground_truth: &str,
    problem: &str,
    sim: &dyn LabelSimilarity,
) -> Result<RewardScore, RewardError> {
    match kind {
        RewardKind::Spatial => spatial::compute_score(response, ground_truth, problem, sim),
        RewardKind::R1v => Ok(r1v::compute_score(response, ground_truth)),
    }
}

/// Score many responses in parallel (rayon's global pool); results are in input order.
///
/// For the spatial reward, consecutive items with the same ground truth and prompt (the n
/// responses of a GRPO group, as the trainer lays them out) share one [`spatial::GroundTruth`]:
/// the ground truth is parsed and preprocessed once per group instead of once per response.
pub fn score_batch(
    kind: RewardKind,
    items: &[RewardInput<'_>],
    sim: &dyn LabelSimilarity,
) -> Vec<Result<RewardScore, RewardError>> {
    if kind != RewardKind::Spatial {
        return items
            .par_iter()
            .map(|it| score(kind, it.response, it.ground_truth, it.problem, sim))
            .collect();
    }
    let same_truth = |a: &RewardInput<'_>, b: &RewardInput<'_>| {
        a.ground_truth == b.ground_truth && a.problem == b.problem
    };
    items
        .par_chunk_by(same_truth)
        .flat_map_iter(|group| {
            let arena = Bump::new();
            let truth = spatial::GroundTruth::new(group[0].ground_truth, group[0].problem, &arena);
            group
                .iter()
                .map(|it| truth.score(it.response, sim))
                .collect::<Vec<_>>()
        })
        .collect()
}
