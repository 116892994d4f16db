//! The GRPO actor loss (docs/recipe.md, "Policy loss" and "KL to the reference"; EasyR1
//! `compute_policy_loss`, `compute_kl`).
//!
//! Per token, with `Δ = logπ − logπ_old`: the PPO ratio clipped asymmetrically to
//! `[1 − clip_ratio_low, 1 + clip_ratio_high]`, a dual clip `clip_ratio_dual` for negative
//! advantages, and the low-variance KL estimator (k3) to the reference policy clamped to
//! `±KL_CLAMP`. Both terms are token means over one micro-batch's response tokens.

use tch::{Kind, Tensor};

use super::{GrpoError, Result};

/// `eps` in the denominator of the masked mean (EasyR1 `masked_mean`).
pub const MASKED_MEAN_EPS: f64 = 1e-8;
/// The low-variance KL estimate is clamped to `[-KL_CLAMP, KL_CLAMP]`.
pub const KL_CLAMP: f64 = 10.0;

/// Clip constants of the policy loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyClip {
    /// Lower clip: the ratio is not allowed below `1 - clip_ratio_low` (0.2).
    pub clip_ratio_low: f64,
    /// Upper clip (DAPO "clip higher"): the ratio is not allowed above `1 + clip_ratio_high` (0.3).
    pub clip_ratio_high: f64,
    /// Dual-clip constant bounding the loss of negative-advantage tokens at `-A·c` (3.0).
    pub clip_ratio_dual: f64,
}

impl Default for PolicyClip {
    fn default() -> Self {
        PolicyClip {
            clip_ratio_low: 0.2,
            clip_ratio_high: 0.3,
            clip_ratio_dual: 3.0,
        }
    }
}

/// The policy-gradient loss of one micro-batch and its diagnostics (all scalar tensors).
#[derive(Debug)]
pub struct PolicyLoss {
    /// Masked token-mean of the clipped per-token loss (carries the graph of `log_probs`).
    pub pg_loss: Tensor,
    /// Fraction of tokens where the upper/lower ratio clip was active.
    pub pg_clipfrac_higher: Tensor,
    /// Fraction of negative-advantage tokens where the dual clip was active.
    pub pg_clipfrac_lower: Tensor,
    /// Masked mean of `logπ_old − logπ` (an estimate of KL(old‖new)).
    pub ppo_kl: Tensor,
}

fn check_same_shape(tensors: &[(&str, &Tensor)]) -> Result<()> {
    let first = tensors[0].1.size();
    for (name, t) in tensors {
        if t.size() != first {
            return Err(GrpoError::Invalid(format!(
                "{name} has shape {:?}, expected {first:?} like {}",
                t.size(),
                tensors[0].0
            )));
        }
    }
    Ok(())
}

/// `sum(values · mask) / (sum(mask) + 1e-8)` over all elements.
pub fn masked_mean(values: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let num = values.f_mul(mask)?.f_sum(Kind::Float)?;
    let den = mask.f_sum(Kind::Float)?.f_add_scalar(MASKED_MEAN_EPS)?;
    Ok(num.f_div(&den)?)
}

/// Per-token clipped policy loss before averaging, plus the two clip indicators (f32, `[N, T]`).
pub fn policy_loss_per_token(
    old_log_probs: &Tensor,
    log_probs: &Tensor,
    advantages: &Tensor,
    clip: &PolicyClip,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_same_shape(&[
        ("log_probs", log_probs),
        ("old_log_probs", old_log_probs),
        ("advantages", advantages),
    ])?;
    let delta = log_probs.f_sub(old_log_probs)?;
    let ratio = delta.f_exp()?;
    let lo = (1.0 - clip.clip_ratio_low).ln();
    let hi = (1.0 + clip.clip_ratio_high).ln();
    let clipped_ratio = delta.f_clamp(lo, hi)?.f_exp()?;
    let neg_adv = advantages.f_neg()?;
    let loss1 = neg_adv.f_mul(&ratio)?;
    let loss2 = neg_adv.f_mul(&clipped_ratio)?;
    let loss3 = neg_adv.f_mul_scalar(clip.clip_ratio_dual)?;
    let higher = loss1.f_maximum(&loss2)?;
    let clipfrac_higher = loss1.f_lt_tensor(&loss2)?.f_to_kind(Kind::Float)?;
    let lower = higher.f_minimum(&loss3)?;
    let negative = advantages.f_lt(0.0)?;
    let per_token = lower.f_where_self(&negative, &higher)?;
    let clipfrac_lower = higher
        .f_gt_tensor(&loss3)?
        .f_logical_and(&negative)?
        .f_to_kind(Kind::Float)?;
    Ok((per_token, clipfrac_higher, clipfrac_lower))
}

/// The clipped policy loss of one micro-batch (docs/recipe.md, "Policy loss"), token-mean over
/// `response_mask`.
pub fn compute_policy_loss(
    old_log_probs: &Tensor,
    log_probs: &Tensor,
    advantages: &Tensor,
    response_mask: &Tensor,
    clip: &PolicyClip,
) -> Result<PolicyLoss> {
    check_same_shape(&[("log_probs", log_probs), ("response_mask", response_mask)])?;
    let mask = response_mask.f_to_kind(Kind::Float)?;
    let (per_token, higher, lower) =
        policy_loss_per_token(old_log_probs, log_probs, advantages, clip)?;
    let ppo_kl = masked_mean(&old_log_probs.f_sub(&log_probs.f_detach()?)?, &mask)?;
    Ok(PolicyLoss {
        pg_loss: masked_mean(&per_token, &mask)?,
        pg_clipfrac_higher: masked_mean(&higher, &mask)?,
        pg_clipfrac_lower: masked_mean(&lower, &mask)?,
        ppo_kl,
    })
}

/// Low-variance KL estimator (k3) per token: `d = logπ_ref − logπ`, `exp(d) − d − 1`, clamped
/// to `±KL_CLAMP`; computed in f32.
pub fn low_var_kl(log_probs: &Tensor, ref_log_probs: &Tensor) -> Result<Tensor> {
    check_same_shape(&[("log_probs", log_probs), ("ref_log_probs", ref_log_probs)])?;
    let d = ref_log_probs
        .f_to_kind(Kind::Float)?
        .f_sub(&log_probs.f_to_kind(Kind::Float)?)?;
    let k3 = d.f_exp()?.f_sub(&d)?.f_sub_scalar(1.0)?;
    Ok(k3.f_clamp(-KL_CLAMP, KL_CLAMP)?)
}

/// Inputs of one micro-batch of the actor update, all `[m, T]`.
#[derive(Debug)]
pub struct MicroBatchInputs<'a> {
    /// Current log-probs of the response tokens (with grad).
    pub log_probs: &'a Tensor,
    /// Log-probs recomputed with the policy before the update.
    pub old_log_probs: &'a Tensor,
    /// Log-probs of the frozen reference policy (`None` when KL is off).
    pub ref_log_probs: Option<&'a Tensor>,
    /// Per-token advantages (already multiplied by the mask).
    pub advantages: &'a Tensor,
    /// 1 on response tokens, 0 on padding.
    pub response_mask: &'a Tensor,
}

/// The total loss of one micro-batch, `pg_loss + kl_coef · kl_loss`, with diagnostics.
#[derive(Debug)]
pub struct MicroBatchLoss {
    /// `pg_loss + kl_coef · kl_loss` (before division by the accumulation count).
    pub loss: Tensor,
    /// The policy loss and its diagnostics.
    pub policy: PolicyLoss,
    /// Masked token-mean of the low-variance KL (`None` when KL is off).
    pub kl_loss: Option<Tensor>,
    /// `−mean(logπ)` over response tokens, EasyR1's entropy estimate (detached).
    pub entropy_loss: Tensor,
}

/// The actor loss of one micro-batch exactly as EasyR1's `update_policy` forms it.
pub fn micro_batch_loss(
    inputs: &MicroBatchInputs<'_>,
    clip: &PolicyClip,
    kl_coef: f64,
) -> Result<MicroBatchLoss> {
    let mask = inputs.response_mask.f_to_kind(Kind::Float)?;
    let policy = compute_policy_loss(
        inputs.old_log_probs,
        inputs.log_probs,
        inputs.advantages,
        &mask,
        clip,
    )?;
    let entropy_loss = masked_mean(&inputs.log_probs.f_detach()?, &mask)?.f_neg()?;
    let (loss, kl_loss) = match inputs.ref_log_probs {
        Some(ref_lp) => {
            let kl = masked_mean(&low_var_kl(inputs.log_probs, ref_lp)?, &mask)?;
            (policy.pg_loss.f_add(&kl.f_mul_scalar(kl_coef)?)?, Some(kl))
        }
        None => (policy.pg_loss.shallow_clone(), None),
    };
    Ok(MicroBatchLoss {
        loss,
        policy,
        kl_loss,
        entropy_loss,
    })
}
