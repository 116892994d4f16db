//! GRPO outcome advantages (docs/recipe.md, "Advantages"; EasyR1
//! `compute_grpo_outcome_advantage`).
//!
//! Each response's score is normalised within the group of responses sampled for the same prompt:
//! `A = (R - mean) / (std + eps)` with the unbiased standard deviation (divides by `n - 1`).

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::{GrpoError, Result};

/// The `eps` added to the group standard deviation (EasyR1 default).
pub const GRPO_EPS: f64 = 1e-6;

/// Group-normalised advantages, one per response, in the order of `scores`.
///
/// `group_ids[i]` names the prompt response `i` was sampled for. Every group needs at least two
/// responses (the unbiased std of one value is undefined). A group whose scores are all equal gets
/// advantage 0 for every member. A group's mean and unbiased standard deviation are accumulated
/// in f64 and rounded to f32 (the reference accumulates in f32, so the last bit can differ); the
/// normalisation itself is f32 like the reference's.
pub fn grpo_advantages(scores: &[f32], group_ids: &[u64], eps: f64) -> Result<Vec<f32>> {
    if scores.len() != group_ids.len() {
        return Err(GrpoError::Invalid(format!(
            "{} scores but {} group ids",
            scores.len(),
            group_ids.len()
        )));
    }
    let mut groups: HashMap<u64, Vec<f32>> = HashMap::new();
    for (&s, &g) in scores.iter().zip(group_ids) {
        if !s.is_finite() {
            return Err(GrpoError::Invalid(format!(
                "non-finite score {s} in group {g}"
            )));
        }
        groups.entry(g).or_default().push(s);
    }
    let mut stats: HashMap<u64, (f32, f32)> = HashMap::with_capacity(groups.len());
    for (g, members) in &groups {
        if members.len() < 2 {
            return Err(GrpoError::Invalid(format!(
                "group {g} has {} response(s); GRPO needs at least 2 per prompt",
                members.len()
            )));
        }
        let n = members.len() as f64;
        let mean = members.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = members
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        stats.insert(*g, (mean as f32, var.sqrt() as f32));
    }
    Ok(scores
        .iter()
        .zip(group_ids)
        .map(|(&s, g)| {
            let (mean, std) = stats[g];
            (s - mean) / (std + eps as f32)
        })
        .collect())
}

/// Broadcasts one advantage per response over its response tokens: `[N, T]` = `adv[:, None] * mask`.
pub fn token_advantages(advantages: &[f32], response_mask: &Tensor) -> Result<Tensor> {
    let size = response_mask.size();
    if size.len() != 2 || size[0] != advantages.len() as i64 {
        return Err(GrpoError::Invalid(format!(
            "response mask of shape {size:?} for {} advantages",
            advantages.len()
        )));
    }
    let adv = Tensor::from_slice(advantages)
        .f_to_device(response_mask.device())?
        .f_unsqueeze(-1)?;
    Ok(adv.f_mul(&response_mask.f_to_kind(Kind::Float)?)?)
}
