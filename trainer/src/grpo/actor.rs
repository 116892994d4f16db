//! The actor update of one RL step (docs/recipe.md, "Loss aggregation"): split the scored
//! rollouts into mini-batches (one optimiser step each) and micro-batches (one backward each),
//! form each micro-batch's loss as a token-mean over its response tokens, divide it by the
//! number of micro-batches per mini-batch, accumulate gradients, clip the global norm (skipping
//! the step when it is not finite) and apply AdamW.
//!
//! The model is reached only through [`PolicyLogprobs`], so this code runs unchanged with the
//! Qwen2.5-VL policy and with the toy policies of the tests.

use std::ops::Range;

use tch::{Kind, Tensor};

use super::loss::{micro_batch_loss, MicroBatchInputs, PolicyClip};
use super::optim::AnyPrecisionAdamW;
use super::{GrpoError, Result};

/// A policy that can score the response tokens of rows of the current rollout batch.
pub trait PolicyLogprobs {
    /// Log-probabilities (f32, `[rows.len(), T]`, `T` = the batch's padded response length) of
    /// each row's response tokens under the current weights, computed from logits divided by the
    /// rollout temperature. Must carry the autograd graph when grad mode is enabled; padding
    /// positions may hold any finite value.
    fn response_log_probs(&mut self, rows: &[usize]) -> Result<Tensor>;

    /// Tokens row `row` occupies in a forward (prompt + response), which token-budget forwards
    /// are packed by. Policies without a notion of length count every row as one token.
    fn sequence_len(&self, _row: usize) -> usize {
        1
    }

    /// Backpropagates `loss`, built on the log-probs of this policy's last grad-mode
    /// [`PolicyLogprobs::response_log_probs`] call (a policy that recomputes activations in the
    /// backward, [`crate::model::RecomputeTape`], does so here).
    fn backward(&mut self, loss: &Tensor) -> Result<()> {
        Ok(loss.f_backward()?)
    }
}

/// Consecutive `units` (row ranges that must stay together) packed into forwards: with a token
/// budget as many as keep `rows × longest row` within it (one unit at least, even when it alone
/// exceeds the budget), else `per_forward` units each. Returns ranges of `units`.
fn pack_forwards<P: PolicyLogprobs + ?Sized>(
    policy: &P,
    units: &[Range<usize>],
    max_tokens: Option<usize>,
    per_forward: usize,
) -> Vec<Range<usize>> {
    let mut packs = Vec::new();
    let mut start = 0;
    while start < units.len() {
        let mut end = start + 1;
        match max_tokens {
            Some(budget) => {
                let longest = |u: &Range<usize>| u.clone().map(|r| policy.sequence_len(r)).max();
                let mut width = longest(&units[start]).unwrap_or(0);
                let mut rows = units[start].len();
                while end < units.len() {
                    let w = width.max(longest(&units[end]).unwrap_or(0));
                    let n = rows + units[end].len();
                    if n * w > budget {
                        break;
                    }
                    (width, rows, end) = (w, n, end + 1);
                }
            }
            None => end = (start + per_forward.max(1)).min(units.len()),
        }
        packs.push(start..end);
        start = end;
    }
    packs
}

/// The per-token tensors of a scored rollout batch, all `[N, T]` f32 on the training device.
#[derive(Debug)]
pub struct RolloutBatch {
    /// 1 on response tokens (up to and including EOS), 0 on padding.
    pub response_mask: Tensor,
    /// Log-probs recomputed with the policy before the update (no grad).
    pub old_log_probs: Tensor,
    /// Log-probs of the frozen reference policy (no grad); `None` when the KL loss is off.
    pub ref_log_probs: Option<Tensor>,
    /// Group-normalised advantage broadcast over response tokens (0 on padding).
    pub advantages: Tensor,
    /// Leading rows whose old log-probs are not computed yet: the update takes them from its
    /// first epoch's forward (detached), where no optimiser step has happened since sampling, so
    /// the current policy is the old one ([`RolloutBatch::with_old_from_update`]).
    pub old_from_update: usize,
}

impl RolloutBatch {
    /// Assembles the batch and checks that every tensor has the response mask's `[N, T]` shape.
    /// The advantages come from [`super::advantage::grpo_advantages`] broadcast by
    /// [`super::advantage::token_advantages`]; this type computes nothing.
    pub fn new(
        response_mask: Tensor,
        old_log_probs: Tensor,
        ref_log_probs: Option<Tensor>,
        advantages: Tensor,
    ) -> Result<Self> {
        let batch = RolloutBatch {
            response_mask: response_mask.f_to_kind(Kind::Float)?,
            old_log_probs,
            ref_log_probs,
            advantages,
            old_from_update: 0,
        };
        batch.check()?;
        Ok(batch)
    }

    /// This batch with the old log-probs of its first `rows` rows (at most the update's first
    /// mini-batch) left to the update, which writes them into `old_log_probs` from its first
    /// forward over them: the old-policy pass need not run over those rows.
    pub fn with_old_from_update(mut self, rows: usize) -> Self {
        self.old_from_update = rows.min(self.len());
        self
    }

    /// Number of responses.
    pub fn len(&self) -> usize {
        self.response_mask.size()[0] as usize
    }

    /// Whether the batch has no responses.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self) -> Result<()> {
        let shape = self.response_mask.size();
        if shape.len() != 2 {
            return Err(GrpoError::Invalid(format!(
                "response mask has shape {shape:?}, want [N, T]"
            )));
        }
        let mut named = vec![
            ("old_log_probs", &self.old_log_probs),
            ("advantages", &self.advantages),
        ];
        if let Some(r) = &self.ref_log_probs {
            named.push(("ref_log_probs", r));
        }
        for (name, t) in named {
            if t.size() != shape {
                return Err(GrpoError::Invalid(format!(
                    "{name} has shape {:?}, response mask has {shape:?}",
                    t.size()
                )));
            }
        }
        Ok(())
    }
}

/// How the actor update splits and weighs a rollout batch (EasyR1 `ActorConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateConfig {
    /// Responses per optimiser step (EasyR1 `global_batch_size` × n, per device): 1,024 for 7B.
    pub mini_batch_size: usize,
    /// Responses per token-mean of the loss (`micro_batch_size_per_device_for_update`): 4.
    /// Without a token budget, also the responses of one forward/backward.
    pub micro_batch_size: usize,
    /// Token budget of one forward/backward (`actor.max_tokens_per_micro_batch`): whole
    /// micro-batches are packed into one forward while `rows × longest row` fits. The loss is
    /// still the sum of each micro-batch's token-mean, so the weighting does not change.
    pub max_tokens_per_forward: Option<usize>,
    /// Passes over the rollout batch (`ppo_epochs`): 1.
    pub ppo_epochs: usize,
    /// Ratio clip constants.
    pub clip: PolicyClip,
    /// Coefficient of the low-variance KL loss (`None`: no KL term, no reference log-probs).
    pub kl_coef: Option<f64>,
    /// Global gradient-norm clip (`max_grad_norm`): 1.0.
    pub max_grad_norm: f64,
}

/// Averages of the per-micro-batch diagnostics and the per-optimiser-step norms of one update.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateMetrics {
    /// Mean policy loss (`pg_loss`, plus `kl_coef · kl_loss` as EasyR1 logs it).
    pub pg_loss: f64,
    /// Mean fraction of tokens hitting the ratio clip.
    pub pg_clipfrac_higher: f64,
    /// Mean fraction of tokens hitting the dual clip.
    pub pg_clipfrac_lower: f64,
    /// Mean `logπ_old − logπ` (drift from the rollout policy).
    pub ppo_kl: f64,
    /// Mean low-variance KL to the reference (when on).
    pub kl_loss: Option<f64>,
    /// Mean `−logπ` of response tokens (entropy estimate).
    pub entropy_loss: f64,
    /// Gradient norm before clipping, one per optimiser step.
    pub grad_norms: Vec<f64>,
    /// Optimiser steps skipped because the gradient norm was not finite.
    pub skipped_steps: usize,
    /// Number of micro-batches processed.
    pub micro_batches: usize,
}

impl UpdateConfig {
    /// Checks the batch geometry: positive sizes, mini-batch a multiple of the micro-batch.
    pub fn validate(&self) -> Result<()> {
        if self.micro_batch_size == 0 || self.mini_batch_size == 0 || self.ppo_epochs == 0 {
            return Err(GrpoError::Config(
                "mini_batch_size, micro_batch_size and ppo_epochs must be positive".into(),
            ));
        }
        if !self.mini_batch_size.is_multiple_of(self.micro_batch_size) {
            return Err(GrpoError::Config(format!(
                "mini-batch of {} responses is not a multiple of the micro-batch {}",
                self.mini_batch_size, self.micro_batch_size
            )));
        }
        Ok(())
    }
}

/// Log-probs of all `n_rows` rows without grad, concatenated to `[n_rows, T]`: the old-policy
/// log-probs with the current weights, or the reference log-probs with the frozen ones
/// (docs/recipe.md, "One RL step"). Forwards take `micro_batch_size` rows each, or as many as
/// fit `max_tokens` ([`UpdateConfig::max_tokens_per_forward`]) when set.
pub fn compute_log_probs<P: PolicyLogprobs + ?Sized>(
    policy: &mut P,
    n_rows: usize,
    micro_batch_size: usize,
    max_tokens: Option<usize>,
) -> Result<Tensor> {
    compute_log_probs_of(policy, 0..n_rows, micro_batch_size, max_tokens)
}

/// [`compute_log_probs`] of the rows `rows` only, `[rows.len(), T]`.
pub fn compute_log_probs_of<P: PolicyLogprobs + ?Sized>(
    policy: &mut P,
    rows: Range<usize>,
    micro_batch_size: usize,
    max_tokens: Option<usize>,
) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let units: Vec<Range<usize>> = rows.map(|r| r..r + 1).collect();
    let mut parts = Vec::new();
    for pack in pack_forwards(policy, &units, max_tokens, micro_batch_size) {
        let rows: Vec<usize> = units[pack].iter().map(|u| u.start).collect();
        parts.push(policy.response_log_probs(&rows)?.f_detach()?);
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

/// The other copies of the policy in a data-parallel run, as the update meets them: a single
/// process has none ([`SingleReplica`]); [`crate::distributed::DataParallel`] is the
/// multi-process one. Every method is called by every replica at the same point.
pub trait Replicas {
    /// Number of replicas.
    fn world(&self) -> usize {
        1
    }

    /// Sums `values` over the replicas in place.
    fn sum(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }

    /// The largest `n` over the replicas.
    fn max(&self, n: usize) -> Result<usize> {
        Ok(n)
    }

    /// Sums the gradients of `params` over the replicas (after the micro-batch loop).
    fn reduce_gradients(&self, _params: &[(String, Tensor)]) -> Result<()> {
        Ok(())
    }

    /// After each replica stepped the parameters whose optimiser state it holds: every replica
    /// gets all parameters.
    fn gather_parameters(&self, _params: &[(String, Tensor)]) -> Result<()> {
        Ok(())
    }
}

/// One process, no other replicas.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleReplica;

impl Replicas for SingleReplica {}

/// The actor update of one RL step with learning rate `lr` on a single device
/// ([`update_actor_with`] without replicas).
pub fn update_actor<P: PolicyLogprobs + ?Sized>(
    cfg: &UpdateConfig,
    policy: &mut P,
    batch: &RolloutBatch,
    optimizer: &mut AnyPrecisionAdamW,
    lr: f64,
) -> Result<UpdateMetrics> {
    update_actor_with(cfg, policy, batch, optimizer, lr, &SingleReplica)
}

/// The actor update of one RL step with learning rate `lr`: for every mini-batch, one backward
/// per micro-batch of `(pg_loss + kl_coef·kl_loss) / (mini / micro)`, then gradient clipping and
/// an AdamW step (skipped when the norm is not finite), then zeroed gradients; at the end the
/// gradient buffers are released ([`AnyPrecisionAdamW::release_grads`]).
///
/// With replicas, `cfg.mini_batch_size` is this replica's share of the mini-batch: each loss is
/// divided by the micro-batches of the whole mini-batch over all replicas and the gradients are
/// summed over replicas before the norm, so the weighting is the single-device recipe's and the
/// clip and the non-finite skip are the same decision everywhere. Every replica runs as many
/// optimiser steps as the one with the most rows (one left without rows adds zero gradients).
pub fn update_actor_with<P: PolicyLogprobs + ?Sized>(
    cfg: &UpdateConfig,
    policy: &mut P,
    batch: &RolloutBatch,
    optimizer: &mut AnyPrecisionAdamW,
    lr: f64,
    replicas: &dyn Replicas,
) -> Result<UpdateMetrics> {
    cfg.validate()?;
    batch.check()?;
    if cfg.kl_coef.is_some() && batch.ref_log_probs.is_none() {
        return Err(GrpoError::Invalid(
            "KL loss is on but the batch has no reference log-probs".into(),
        ));
    }
    if batch.old_from_update > cfg.mini_batch_size.min(batch.len()) {
        return Err(GrpoError::Invalid(format!(
            "old log-probs of {} rows are left to the update, more than its first mini-batch of {}",
            batch.old_from_update, cfg.mini_batch_size
        )));
    }
    let n = batch.len();
    let grad_accum = (cfg.mini_batch_size / cfg.micro_batch_size * replicas.world()) as f64;
    let mini_batches = replicas.max(n.div_ceil(cfg.mini_batch_size))?;
    let mut m = UpdateMetrics::default();
    let mut kl_sum = 0.0;
    optimizer.zero_grad()?;
    for epoch in 0..cfg.ppo_epochs {
        for mini in 0..mini_batches {
            let mini_start = (mini * cfg.mini_batch_size).min(n);
            let mini_end = (mini_start + cfg.mini_batch_size).min(n);
            let micro_batches: Vec<Range<usize>> = (mini_start..mini_end)
                .step_by(cfg.micro_batch_size)
                .map(|s| s..(s + cfg.micro_batch_size).min(mini_end))
                .collect();
            for pack in pack_forwards(policy, &micro_batches, cfg.max_tokens_per_forward, 1) {
                let packed = &micro_batches[pack];
                let first = packed[0].start;
                let rows: Vec<usize> = (first..packed[packed.len() - 1].end).collect();
                let log_probs = policy.response_log_probs(&rows)?;
                let width = batch.response_mask.size()[1];
                if log_probs.size() != [rows.len() as i64, width] {
                    return Err(GrpoError::Invalid(format!(
                        "policy returned log-probs of shape {:?} for rows {first}..{}, expected [{}, {width}]",
                        log_probs.size(),
                        first + rows.len(),
                        rows.len()
                    )));
                }
                let mut loss: Option<Tensor> = None;
                for micro in packed {
                    let len = micro.len() as i64;
                    let slice = |t: &Tensor| t.f_narrow(0, micro.start as i64, len);
                    if epoch == 0 && micro.start < batch.old_from_update {
                        // no optimiser step since sampling: the old policy is the current one
                        let current = log_probs
                            .f_narrow(0, (micro.start - first) as i64, len)?
                            .f_detach()?;
                        slice(&batch.old_log_probs)?.f_copy_(&current)?;
                    }
                    let reference = match (&batch.ref_log_probs, cfg.kl_coef) {
                        (Some(r), Some(_)) => Some(slice(r)?),
                        _ => None,
                    };
                    let out = micro_batch_loss(
                        &MicroBatchInputs {
                            log_probs: &log_probs.f_narrow(0, (micro.start - first) as i64, len)?,
                            old_log_probs: &slice(&batch.old_log_probs)?,
                            ref_log_probs: reference.as_ref(),
                            advantages: &slice(&batch.advantages)?,
                            response_mask: &slice(&batch.response_mask)?,
                        },
                        &cfg.clip,
                        cfg.kl_coef.unwrap_or(0.0),
                    )?;
                    let scaled = out.loss.f_div_scalar(grad_accum)?;
                    loss = Some(match loss {
                        Some(l) => l.f_add(&scaled)?,
                        None => scaled,
                    });
                    m.pg_loss += f64::try_from(&out.loss)?;
                    m.pg_clipfrac_higher += f64::try_from(&out.policy.pg_clipfrac_higher)?;
                    m.pg_clipfrac_lower += f64::try_from(&out.policy.pg_clipfrac_lower)?;
                    m.ppo_kl += f64::try_from(&out.policy.ppo_kl)?;
                    m.entropy_loss += f64::try_from(&out.entropy_loss)?;
                    if let Some(kl) = &out.kl_loss {
                        kl_sum += f64::try_from(kl)?;
                    }
                    m.micro_batches += 1;
                }
                if let Some(loss) = loss {
                    policy.backward(&loss)?;
                }
            }
            // the global gradient: summed over replicas before the norm, so the clip and the
            // non-finite skip are one decision everywhere (docs/distributed.md)
            replicas.reduce_gradients(optimizer.params())?;
            let norm = optimizer.clip_grad_norm(cfg.max_grad_norm)?;
            m.grad_norms.push(norm);
            if norm.is_finite() {
                optimizer.step(lr)?;
                replicas.gather_parameters(optimizer.params())?;
            } else {
                m.skipped_steps += 1;
            }
            optimizer.zero_grad()?;
        }
    }
    // gradient buffers live only during the update (docs/architecture.md, "Memory")
    optimizer.release_grads()?;
    // the diagnostics are means over every replica's micro-batches
    let mut sums = [
        m.pg_loss,
        m.pg_clipfrac_higher,
        m.pg_clipfrac_lower,
        m.ppo_kl,
        m.entropy_loss,
        kl_sum,
        m.micro_batches as f64,
    ];
    replicas.sum(&mut sums)?;
    let [pg_loss, higher, lower, ppo_kl, entropy, kl_sum, micro_batches] = sums;
    let k = micro_batches.max(1.0);
    m.pg_loss = pg_loss / k;
    m.pg_clipfrac_higher = higher / k;
    m.pg_clipfrac_lower = lower / k;
    m.ppo_kl = ppo_kl / k;
    m.entropy_loss = entropy / k;
    m.kl_loss = cfg.kl_coef.map(|_| kl_sum / k);
    m.micro_batches = micro_batches as usize;
    Ok(m)
}
