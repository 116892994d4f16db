//! What a step and a run report: per-phase times, reward means over a set of rollouts, the step
//! summary line, and the scalars and sample rollouts written to `metrics.jsonl`/TensorBoard.

use std::collections::BTreeMap;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::memory::peak_rss_bytes;
use super::metrics::LoggedRollout;
use super::rollout::{PromptItem, Rollout};
use super::Result;
use crate::generate::EngineStats;
use crate::grpo::actor::UpdateMetrics;

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Sampling `n` responses per prompt.
    Rollout,
    /// Decoding and scoring.
    Reward,
    /// Log-probs of the current policy before the update.
    OldLogProbs,
    /// Log-probs of the frozen reference.
    RefLogProbs,
    /// Forward/backward and optimiser steps.
    Update,
}

impl Phase {
    /// Metric name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Rollout => "rollout",
            Phase::Reward => "reward",
            Phase::OldLogProbs => "old_log_probs",
            Phase::RefLogProbs => "ref_log_probs",
            Phase::Update => "update",
        }
    }

    /// All phases in execution order.
    pub const ALL: [Phase; 5] = [
        Phase::Rollout,
        Phase::Reward,
        Phase::OldLogProbs,
        Phase::RefLogProbs,
        Phase::Update,
    ];
}

/// Seconds spent in each phase, and each phase's peak resident host memory (where the platform
/// reports it: `VmHWM`, reset when a phase starts; the memory a CPU run measures against its
/// plan).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseTimes {
    /// Seconds per phase.
    pub seconds: BTreeMap<Phase, f64>,
    /// Peak resident bytes per phase.
    pub peak_rss: BTreeMap<Phase, u64>,
    /// Tokens the decoder ran per phase (a prompt shared by a forward's rows counts once).
    pub tokens: BTreeMap<Phase, u64>,
}

impl PhaseTimes {
    /// Seconds of `phase` (0 when it did not run).
    pub fn get(&self, phase: Phase) -> f64 {
        self.seconds.get(&phase).copied().unwrap_or(0.0)
    }

    /// Sum over phases.
    pub fn total(&self) -> f64 {
        self.seconds.values().sum()
    }

    /// Counts `tokens` decoder tokens to `phase`.
    pub fn add_tokens(&mut self, phase: Phase, tokens: usize) {
        *self.tokens.entry(phase).or_default() += tokens as u64;
    }

    /// Marks the start of a phase: its peak memory is counted from here.
    pub fn begin(&self) -> Instant {
        reset_peak_rss();
        Instant::now()
    }

    /// Adds the time since `since` (from [`PhaseTimes::begin`]) to `phase`, with the peak
    /// resident memory since then.
    pub fn add(&mut self, phase: Phase, since: Instant) {
        *self.seconds.entry(phase).or_default() += since.elapsed().as_secs_f64();
        if let Some(peak) = peak_rss_bytes() {
            let p = self.peak_rss.entry(phase).or_default();
            *p = (*p).max(peak);
        }
    }
}

/// Restarts the process' peak-resident-memory count (`VmHWM`) from the current resident size
/// (Linux: `5` written to `/proc/self/clear_refs`); elsewhere a no-op.
pub fn reset_peak_rss() {
    let _ignored = std::fs::write("/proc/self/clear_refs", "5");
}

/// Mean reward components over a set of rollouts: a step's rollouts or a validation pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RewardSummary {
    /// Responses scored.
    pub responses: usize,
    /// Mean overall reward.
    pub reward: f64,
    /// Fraction with a valid format.
    pub format: f64,
    /// Fraction answered correctly.
    pub accuracy: f64,
    /// Mean count reward.
    pub count: f64,
    /// Mean spatial (grounding) reward.
    pub spatial: f64,
    /// Mean response length in tokens.
    pub response_length: f64,
    /// Fraction of responses cut at the length limit (no stop token).
    pub truncated: f64,
}

/// The sums a [`RewardSummary`] is made of (responses, then the sum of each mean's values, in
/// field order): they add over the ranks of a data-parallel run.
pub type RewardSums = [f64; 8];

impl RewardSummary {
    /// Means over `rollouts`.
    pub fn from_rollouts(rollouts: &[Rollout]) -> Self {
        Self::from_sums(&Self::sums(rollouts))
    }

    /// The sums behind the means over `rollouts`.
    pub fn sums(rollouts: &[Rollout]) -> RewardSums {
        let sum = |f: &dyn Fn(&Rollout) -> f64| rollouts.iter().map(f).sum::<f64>();
        [
            rollouts.len() as f64,
            sum(&|r| r.score.overall),
            sum(&|r| r.score.format),
            sum(&|r| r.score.accuracy),
            sum(&|r| r.score.count),
            sum(&|r| r.score.spatial),
            sum(&|r| r.ids.len() as f64),
            sum(&|r| f64::from(u8::from(!r.stopped))),
        ]
    }

    /// The means of `sums` ([`Self::sums`], possibly added over ranks).
    pub fn from_sums(sums: &RewardSums) -> Self {
        let n = sums[0].max(1.0);
        RewardSummary {
            responses: sums[0] as usize,
            reward: sums[1] / n,
            format: sums[2] / n,
            accuracy: sums[3] / n,
            count: sums[4] / n,
            spatial: sums[5] / n,
            response_length: sums[6] / n,
            truncated: sums[7] / n,
        }
    }

    /// Scalars under `prefix/`.
    pub fn scalars(&self, prefix: &str) -> BTreeMap<String, f64> {
        [
            ("reward", self.reward),
            ("format", self.format),
            ("accuracy", self.accuracy),
            ("count", self.count),
            ("spatial", self.spatial),
            ("response_length", self.response_length),
            ("responses", self.responses as f64),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}/{k}"), v))
        .collect()
    }
}

impl std::fmt::Display for RewardSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reward {:.3} | accuracy {:.3} | format {:.3} | count {:.3} | spatial {:.3} | length {:.1} ({} responses)",
            self.reward,
            self.accuracy,
            self.format,
            self.count,
            self.spatial,
            self.response_length,
            self.responses
        )
    }
}

/// What one RL step did.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// RL step number (1-based).
    pub step: u64,
    /// Reward means over the step's rollouts.
    pub rollouts: RewardSummary,
    /// Update diagnostics.
    pub update: UpdateMetrics,
    /// Learning rate used.
    pub lr: f64,
    /// Seconds per phase.
    pub times: PhaseTimes,
    /// Response tokens generated.
    pub response_tokens: usize,
    /// What the generation engine did.
    pub generation: GenerationReport,
}

/// The rollout phase seen from the generation engine.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationReport {
    /// Mean fraction of the KV pool's rows holding a live sequence.
    pub occupancy: f64,
    /// Bytes of the KV pool.
    pub kv_pool_bytes: u64,
    /// Mean and max `|sampling log-prob - old-policy log-prob|` over the response tokens: the
    /// mismatch between the engine and the training forward (0 up to rounding on CPU f32).
    pub logprob_diff_mean: f64,
    pub logprob_diff_max: f64,
}

impl GenerationReport {
    /// The engine's accounting, with the log-prob mismatch of `rollouts` against the old
    /// policy's log-probs `old [N, T]` (response tokens left-aligned, rollout order).
    pub fn new(stats: &EngineStats, rollouts: &[Rollout], old: &Tensor) -> Result<Self> {
        let (rows, width) = (old.size()[0] as usize, old.size()[1] as usize);
        let old = Vec::<f32>::try_from(
            old.f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?
                .f_flatten(0, -1)?,
        )?;
        let (mut sum, mut max, mut count) = (0.0f64, 0.0f64, 0usize);
        for (i, r) in rollouts.iter().enumerate().take(rows) {
            for (t, &lp) in r.sampling_logprobs.iter().enumerate().take(width) {
                let d = f64::from((lp - old[i * width + t]).abs());
                sum += d;
                max = max.max(d);
                count += 1;
            }
        }
        Ok(GenerationReport {
            occupancy: stats.occupancy(),
            kv_pool_bytes: stats.pool_bytes,
            logprob_diff_mean: sum / count.max(1) as f64,
            logprob_diff_max: max,
        })
    }
}

/// The one-line summary of an RL step.
pub fn step_line(r: &StepReport, max_steps: u64) -> String {
    let u = &r.update;
    let times: Vec<String> = Phase::ALL
        .iter()
        .map(|p| format!("{} {:.1}", p.name(), r.times.get(*p)))
        .collect();
    format!(
        "step {}/{max_steps} | reward {:.3} (fmt {:.2} acc {:.2} cnt {:.2} sp {:.2}) | len {:.0} | kl {:.4} | clip {:.3} | gnorm {:.2} | lr {:.1e} | {:.1}s ({})",
        r.step,
        r.rollouts.reward,
        r.rollouts.format,
        r.rollouts.accuracy,
        r.rollouts.count,
        r.rollouts.spatial,
        r.rollouts.response_length,
        u.kl_loss.unwrap_or(0.0),
        u.pg_clipfrac_higher,
        u.grad_norms.iter().copied().fold(0.0, f64::max),
        r.lr,
        r.times.total(),
        times.join(", ")
    )
}

/// The scalars of one RL step, for `metrics.jsonl` and TensorBoard.
pub fn step_scalars(report: &StepReport) -> BTreeMap<String, f64> {
    let u = &report.update;
    let mut s = report.rollouts.scalars("reward");
    s.insert(
        "response_length/mean".into(),
        report.rollouts.response_length,
    );
    s.insert(
        "response_length/clip_ratio".into(),
        report.rollouts.truncated,
    );
    s.insert("actor/pg_loss".into(), u.pg_loss);
    s.insert("actor/pg_clipfrac_higher".into(), u.pg_clipfrac_higher);
    s.insert("actor/pg_clipfrac_lower".into(), u.pg_clipfrac_lower);
    s.insert("actor/ppo_kl".into(), u.ppo_kl);
    s.insert("actor/entropy_loss".into(), u.entropy_loss);
    if let Some(kl) = u.kl_loss {
        s.insert("actor/kl_loss".into(), kl);
    }
    let gn = u.grad_norms.iter().sum::<f64>() / u.grad_norms.len().max(1) as f64;
    s.insert("actor/grad_norm".into(), gn);
    s.insert("actor/skipped_steps".into(), u.skipped_steps as f64);
    s.insert("actor/lr".into(), report.lr);
    for phase in Phase::ALL {
        s.insert(format!("time/{}", phase.name()), report.times.get(phase));
    }
    s.insert("time/step".into(), report.times.total());
    let rollout_s = report.times.get(Phase::Rollout).max(1e-9);
    s.insert(
        "perf/rollout_tokens_per_s".into(),
        report.response_tokens as f64 / rollout_s,
    );
    let g = &report.generation;
    s.insert("rollout/logprob_diff_mean".into(), g.logprob_diff_mean);
    s.insert("rollout/logprob_diff_max".into(), g.logprob_diff_max);
    s.insert("rollout/occupancy".into(), g.occupancy);
    s.insert("rollout/kv_pool_gib".into(), g.kv_pool_bytes as f64 / GIB);
    // the step's peak: the kernel's count restarts at every phase (PhaseTimes::begin)
    let peak = report.times.peak_rss.values().copied().max().unwrap_or(0);
    s.insert("perf/peak_rss_gib".into(), peak as f64 / GIB);
    s
}

/// The first response of each of the step's first four groups, for `samples.jsonl`.
pub fn sample_rollouts<'a>(
    step: u64,
    group_size: usize,
    prompts: &'a [PromptItem],
    rollouts: &'a [Rollout],
) -> Vec<LoggedRollout<'a>> {
    rollouts
        .iter()
        .step_by(group_size.max(1))
        .take(4)
        .map(|r| LoggedRollout {
            step,
            prompt: &prompts[r.prompt].problem,
            response: &r.text,
            ground_truth: &prompts[r.prompt].ground_truth,
            reward: r.score.overall,
            components: BTreeMap::from([
                ("format".to_string(), r.score.format),
                ("accuracy".to_string(), r.score.accuracy),
                ("count".to_string(), r.score.count),
                ("spatial".to_string(), r.score.spatial),
            ]),
            row: Some(super::metrics::SampleRow {
                file: prompts[r.prompt].row.file.as_ref().clone(),
                row: prompts[r.prompt].row.row,
            }),
        })
        .collect()
}
