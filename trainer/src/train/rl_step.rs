//! One GRPO RL step, phase by phase (docs/recipe.md, "One RL step"; docs/architecture.md):
//!
//! 1. **sample** `n` responses per prompt from the current policy;
//! 2. **score** them with the reward;
//! 3. **old log-probs**: the current policy's log-probs of the responses, before the update;
//! 4. **reference log-probs**: the frozen reference's, for the KL term;
//! 5. **advantages**: group-normalised rewards, broadcast over each response's tokens;
//! 6. **actor update**: the clipped policy loss with the KL term, micro-batch by micro-batch;
//! 7. **metrics**: what the step did, logged.
//!
//! Each phase is one named call with explicit inputs and outputs; [`Trainer::step`] reads as the
//! list above. The loop around it (validation and checkpoint cadence) is [`super::runner`].

use tch::{Device, Kind, Tensor};

use super::config::OldLogprobs;
use super::policy::{ModelPolicy, SequenceRef};
use super::report::{
    sample_rollouts, step_scalars, GenerationReport, Phase, PhaseTimes, RewardSummary, StepReport,
};
use super::rollout::{
    draw_seeds, response_mask, sample_responses_seeded, score_samples, PromptItem, Rollout,
    ScoredRollouts,
};
use super::row_filter::{SkipReason, SkippedRow};
use super::setup::{bar, weight_kind, Trainer};
use super::{Result, TrainError};
use crate::distributed::{shard_rows, ReduceOp};
use crate::generate::{
    EngineConfig, EngineStats, GeneratedSequence, SamplingConfig, DEFAULT_STOP_IDS,
};
use crate::grpo::actor::{compute_log_probs_of, update_actor, update_actor_with, RolloutBatch};
use crate::grpo::advantage::{grpo_advantages, token_advantages, GRPO_EPS};
use crate::model::Qwen2_5VLForConditionalGeneration;
use crate::tokenizer::ENDOFTEXT_ID;

impl Trainer {
    /// One RL step on the next `rollout_batch_size` prompts.
    pub fn step(&mut self) -> Result<StepReport> {
        self.ensure_reference()?;
        let mut times = PhaseTimes::default();
        // this rank's share of the batch: whole GRPO groups, so the advantages below need no
        // communication (docs/distributed.md, "Sharding")
        let (prompts, seeds) = self.next_prompts()?;

        // 1. sample
        let t = times.begin();
        let (responses, engine) = self.sample(&prompts, &seeds)?;
        times.add(Phase::Rollout, t);

        // 2. score
        let t = times.begin();
        let rollouts = self.score(&prompts, responses)?;
        times.add(Phase::Reward, t);

        // 3. old log-probs: the rows after the first mini-batch (the update's first forward
        // gives those of the first, where no optimiser step has happened yet), from a pass or
        // from the engine
        let sequences = sequences(&prompts, &rollouts);
        let t = times.begin();
        let fresh = match self.cfg.algorithm.old_logprobs {
            OldLogprobs::Reuse | OldLogprobs::Rollout => {
                self.update_config().mini_batch_size.min(sequences.len())
            }
            OldLogprobs::Recompute => 0,
        };
        let from_engine = self.cfg.algorithm.old_logprobs == OldLogprobs::Rollout
            && self.rollout_logprobs_trusted;
        let (old_log_probs, tokens) = if from_engine {
            (self.sampling_log_probs(&rollouts, fresh)?, 0)
        } else {
            self.old_log_probs(&sequences, fresh)?
        };
        times.add(Phase::OldLogProbs, t);
        times.add_tokens(Phase::OldLogProbs, tokens);

        // 4. reference log-probs
        let t = times.begin();
        let (ref_log_probs, tokens) = self.reference_log_probs(&sequences)?;
        times.add(Phase::RefLogProbs, t);
        times.add_tokens(Phase::RefLogProbs, tokens);

        // 5. advantages, 6. actor update
        let t = times.begin();
        let batch = self
            .advantages(&rollouts, old_log_probs, ref_log_probs)?
            .with_old_from_update(fresh);
        let lr = self.cfg.lr_schedule().lr_at(self.rl_step);
        let mut policy = ModelPolicy::new(&self.policy, sequences, self.cfg.rollout.temperature)
            .with_gradient_checkpointing(self.cfg.model.gradient_checkpointing)
            .with_shared_prompts(self.cfg.actor.shared_prompt_forward);
        let update_cfg = self.update_config();
        let update = match &self.dp {
            None => update_actor(&update_cfg, &mut policy, &batch, &mut self.optimizer, lr)?,
            Some(dp) => update_actor_with(
                &update_cfg,
                &mut policy,
                &batch,
                &mut self.optimizer,
                lr,
                dp,
            )?,
        };
        times.add_tokens(Phase::Update, policy.tokens_run());
        drop(policy);
        times.add(Phase::Update, t);
        // every row's old log-probs are known now (with the engine's, the first mini-batch's
        // are the only ones measured against a forward)
        let measured = if from_engine {
            batch.old_log_probs.f_narrow(0, 0, fresh as i64)?
        } else {
            batch.old_log_probs.shallow_clone()
        };
        let generation = GenerationReport::new(&engine, &rollouts, &measured)?;
        if from_engine {
            self.check_rollout_log_probs(generation.logprob_diff_mean)?;
        }

        // 7. metrics
        self.rl_step += 1;
        self.optimizer_steps += update.grad_norms.len() as u64;
        let report = StepReport {
            step: self.rl_step,
            rollouts: self.global_summary(&rollouts)?,
            update,
            lr,
            times,
            response_tokens: rollouts.iter().map(|r| r.ids.len()).sum(),
            generation,
        };
        self.log_step(&report, &prompts, &rollouts)?;
        Ok(report)
    }

    /// This rank's rows of the next training batch as model prompts, with each one's response
    /// seeds (every row of the batch draws its seeds, [`draw_seeds`]); a row the processor
    /// rejects is left out ([`Trainer::skip_rows`]).
    fn next_prompts(&mut self) -> Result<(Vec<PromptItem>, Vec<Vec<u64>>)> {
        let batch = self.loader.next_batch()?;
        let seeds = draw_seeds(&mut self.rng, batch.samples.len(), self.cfg.rollout.n);
        let rows = self.my_rows(batch.samples.len(), self.cfg.actor.global_batch_size);
        let mut prompts = Vec::with_capacity(rows.len());
        let mut kept_seeds = Vec::with_capacity(rows.len());
        let mut skipped = Vec::new();
        for row in rows {
            let sample = &batch.samples[row];
            match self.builder.encode(&self.processor, sample) {
                Ok(prompt) => {
                    prompts.push(prompt);
                    kept_seeds.push(seeds[row].clone());
                }
                Err(TrainError::Row { msg, .. }) => skipped.push(SkippedRow {
                    row: sample.record.source.clone(),
                    reason: SkipReason::Unprocessable { message: msg },
                }),
                Err(e) => return Err(e),
            }
        }
        self.skip_rows(skipped)?;
        Ok((prompts, kept_seeds))
    }

    /// The rows of a batch of `rows` this rank takes, `per_step` prompts per optimiser step
    /// ([`shard_rows`]; all of them in a single process).
    pub(super) fn my_rows(&self, rows: usize, per_step: usize) -> Vec<usize> {
        match &self.dp {
            Some(dp) => shard_rows(rows, per_step, dp.world(), dp.rank()),
            None => (0..rows).collect(),
        }
    }

    /// The reward means of `rollouts` over every rank's rollouts.
    pub(super) fn global_summary(&self, rollouts: &[Rollout]) -> Result<RewardSummary> {
        let mut sums = RewardSummary::sums(rollouts);
        if let Some(dp) = &self.dp {
            dp.all_reduce_f64(&mut sums, ReduceOp::Sum)?;
        }
        Ok(RewardSummary::from_sums(&sums))
    }

    /// Phase 1: `rollout.n` responses per prompt at the rollout temperature, each response
    /// from its own seed.
    fn sample(
        &mut self,
        prompts: &[PromptItem],
        seeds: &[Vec<u64>],
    ) -> Result<(Vec<GeneratedSequence>, EngineStats)> {
        let sampling = self.sampling(self.cfg.rollout.temperature);
        let engine = self.engine_config(prompts, self.cfg.rollout.n, &sampling);
        let pb = bar(
            (prompts.len() * self.cfg.rollout.n) as u64,
            "rollout",
            self.opts.progress,
        );
        let responses = sample_responses_seeded(
            &self.policy,
            prompts,
            seeds,
            &sampling,
            engine,
            &mut |done| pb.set_position(done as u64),
        )?;
        pb.finish_and_clear();
        Ok(responses)
    }

    /// Phase 2: decode and score every response. A group whose reward raises is left out with
    /// its row ([`Trainer::skip_rows`]).
    fn score(
        &mut self,
        prompts: &[PromptItem],
        responses: Vec<GeneratedSequence>,
    ) -> Result<Vec<Rollout>> {
        let scored = self.score_responses(prompts, responses)?;
        let skipped = scored
            .failed
            .iter()
            .map(|(p, e)| SkippedRow {
                row: prompts[*p].row.clone(),
                reason: SkipReason::RewardRaised {
                    message: e.to_string(),
                },
            })
            .collect();
        self.skip_rows(skipped)?;
        if scored.rollouts.is_empty() {
            return Err(TrainError::Invalid(format!(
                "every prompt of RL step {} was left out (see the warnings above)",
                self.rl_step + 1
            )));
        }
        Ok(scored.rollouts)
    }

    /// Decodes `responses` and scores them with the configured reward and label similarity
    /// (training and validation alike).
    pub(super) fn score_responses(
        &self,
        prompts: &[PromptItem],
        responses: Vec<GeneratedSequence>,
    ) -> Result<ScoredRollouts> {
        score_samples(
            &self.processor,
            prompts,
            responses,
            self.cfg.reward.kind,
            self.similarity.as_ref(),
        )
    }

    /// Phases 3 and 4: log-probs `[rows.len(), T]` of `sequences[rows]` under `model`, without
    /// grad, in micro-batches of `micro_batch_size_per_device_for_experience` (or token
    /// budgets), logits divided by the rollout temperature; with the decoder tokens run.
    fn log_probs(
        &self,
        model: &Qwen2_5VLForConditionalGeneration,
        sequences: &[SequenceRef<'_>],
        rows: std::ops::Range<usize>,
    ) -> Result<(Tensor, usize)> {
        let mut policy = ModelPolicy::new(model, sequences.to_vec(), self.cfg.rollout.temperature)
            .with_shared_prompts(self.cfg.actor.shared_prompt_forward);
        let lp = compute_log_probs_of(
            &mut policy,
            rows,
            self.cfg.actor.micro_batch_size_per_device_for_experience,
            self.cfg.actor.max_tokens_per_micro_batch,
        )?;
        Ok((lp, policy.tokens_run()))
    }

    /// This rank's actor-update geometry.
    fn update_config(&self) -> crate::grpo::actor::UpdateConfig {
        self.cfg
            .update_config_for(self.dp.as_ref().map_or(1, |d| d.world()))
    }

    /// Phase 3: the old policy's log-probs `[N, T]` of every row but the first `fresh`, which
    /// stay 0 until the update writes them ([`RolloutBatch::with_old_from_update`]); with the
    /// decoder tokens run.
    fn old_log_probs(
        &self,
        sequences: &[SequenceRef<'_>],
        fresh: usize,
    ) -> Result<(Tensor, usize)> {
        let width = sequences
            .iter()
            .map(|s| s.response.len())
            .max()
            .unwrap_or(0) as i64;
        let first = Tensor::f_zeros([fresh as i64, width], (Kind::Float, self.device))?;
        if fresh == sequences.len() {
            return Ok((first, 0));
        }
        let (rest, tokens) = self.log_probs(&self.policy, sequences, fresh..sequences.len())?;
        Ok((Tensor::f_cat(&[first, rest], 0)?, tokens))
    }

    /// Phase 3 with `algorithm.old_logprobs = "rollout"`: the engine's sampling log-probs
    /// `[N, T]` (left-aligned, zero past each response) of every row but the first `fresh`, which
    /// stay 0 until the update writes them.
    fn sampling_log_probs(&self, rollouts: &[Rollout], fresh: usize) -> Result<Tensor> {
        let width = rollouts.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let mut flat = vec![0f32; rollouts.len() * width];
        for (i, r) in rollouts.iter().enumerate().skip(fresh) {
            if r.sampling_logprobs.len() != r.ids.len() {
                return Err(TrainError::Invalid(format!(
                    "rollout {i}: {} sampling log-probs for {} tokens",
                    r.sampling_logprobs.len(),
                    r.ids.len()
                )));
            }
            flat[i * width..i * width + r.ids.len()].copy_from_slice(&r.sampling_logprobs);
        }
        Ok(Tensor::f_from_slice(&flat)?
            .f_view([rollouts.len() as i64, width as i64])?
            .f_to_device(self.device)?)
    }

    /// After a step that took the engine's log-probs: `mean_diff` is this rank's mean
    /// `|sampling − update forward|` over the first mini-batch; above
    /// `algorithm.rollout_logprobs_tolerance` on any rank, every rank computes the old
    /// log-probs from now on.
    fn check_rollout_log_probs(&mut self, mean_diff: f64) -> Result<()> {
        let mut worst = [mean_diff];
        if let Some(dp) = &self.dp {
            dp.all_reduce_f64(&mut worst, ReduceOp::Max)?;
        }
        let tolerance = self.cfg.algorithm.rollout_logprobs_tolerance;
        if worst[0] > tolerance || worst[0].is_nan() {
            self.rollout_logprobs_trusted = false;
            if self.dp.as_ref().is_none_or(|d| d.is_main()) {
                eprintln!(
                    "warning: the engine's sampling log-probs differ from the training forward by \
                     {:.3e} on average (algorithm.rollout_logprobs_tolerance {tolerance:e}); \
                     old log-probs are computed by a forward from the next step on",
                    worst[0]
                );
            }
        }
        Ok(())
    }

    /// Phase 4: the frozen reference's log-probs (`None` when the KL loss is off). An offloaded
    /// reference computes on the device with its layers streamed from host memory, one at a
    /// time ([`Qwen2_5VLForConditionalGeneration::stream_to`]).
    fn reference_log_probs(
        &self,
        sequences: &[SequenceRef<'_>],
    ) -> Result<(Option<Tensor>, usize)> {
        let Some(model) = &self.reference else {
            return Ok((None, 0));
        };
        let (lp, tokens) = self.log_probs(model, sequences, 0..sequences.len())?;
        Ok((Some(lp), tokens))
    }

    /// Phase 5: GRPO advantages of each response's reward within its group, broadcast over its
    /// tokens, assembled with the log-probs into the update's batch.
    fn advantages(
        &self,
        rollouts: &[Rollout],
        old_log_probs: Tensor,
        ref_log_probs: Option<Tensor>,
    ) -> Result<RolloutBatch> {
        let lengths: Vec<usize> = rollouts.iter().map(|r| r.ids.len()).collect();
        let mask = response_mask(&lengths, self.device)?;
        let scores: Vec<f32> = rollouts.iter().map(|r| r.score.overall as f32).collect();
        let groups: Vec<u64> = rollouts.iter().map(|r| r.prompt as u64).collect();
        let advantages = token_advantages(&grpo_advantages(&scores, &groups, GRPO_EPS)?, &mask)?;
        Ok(RolloutBatch::new(
            mask,
            old_log_probs,
            ref_log_probs,
            advantages,
        )?)
    }

    /// Phase 7: the step's scalars (and every `sample_freq` steps a few rollouts) to the logs.
    fn log_step(
        &mut self,
        report: &StepReport,
        prompts: &[PromptItem],
        rollouts: &[Rollout],
    ) -> Result<()> {
        let Some(logger) = self.logger.as_mut() else {
            return Ok(());
        };
        logger.log(report.step, &step_scalars(report))?;
        let freq = self.cfg.trainer.sample_freq as u64;
        if freq > 0 && report.step.is_multiple_of(freq) {
            let n = self.cfg.rollout.n;
            logger.log_samples(&sample_rollouts(report.step, n, prompts, rollouts))?;
        }
        Ok(())
    }

    /// Loads the frozen reference on first use (when the KL loss is on).
    pub(super) fn ensure_reference(&mut self) -> Result<()> {
        if self.reference.is_none() && self.cfg.algorithm.use_kl_loss {
            // LoRA: the policy's own base weights with the adapters off (train/lora.rs)
            if let Some(base) = self.lora_reference()? {
                self.reference = Some(base);
                return Ok(());
            }
            let device = if self.cfg.model.offload_reference {
                Device::Cpu
            } else {
                self.device
            };
            let mut reference = Qwen2_5VLForConditionalGeneration::load(
                &self.reference_dir,
                device,
                weight_kind(self.cfg.model.dtype),
            )?
            .stream_to(self.device)?;
            // the reference's log-probs are over the policy's output vocabulary
            if let Some(vocab) = self.policy.output_vocab() {
                reference.restrict_output_vocab(&vocab.ids)?;
            }
            self.reference = Some(reference);
        }
        Ok(())
    }

    /// The generation engine for `n` responses to each of `prompts`: rows of their longest
    /// prompt plus `max_new_tokens`.
    pub(super) fn engine_config(
        &self,
        prompts: &[PromptItem],
        n: usize,
        sampling: &SamplingConfig,
    ) -> EngineConfig {
        let longest = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        self.cfg
            .rollout
            .engine_config(longest, sampling.max_new_tokens, prompts.len() * n)
    }

    /// Sampling settings at `temperature` (0: greedy), `rollout.top_p`/`top_k`, stopping at the
    /// end tokens unless a benchmark forces every response's length.
    pub(super) fn sampling(&self, temperature: f64) -> SamplingConfig {
        let forced = self.opts.forced_response_length;
        SamplingConfig {
            max_new_tokens: forced.unwrap_or(self.cfg.data.max_response_length),
            top_p: self.cfg.rollout.top_p,
            top_k: self.cfg.rollout.top_k.max(0) as usize,
            stop_token_ids: if forced.is_some() {
                Vec::new()
            } else {
                DEFAULT_STOP_IDS.to_vec()
            },
            pad_token_id: ENDOFTEXT_ID,
            ..SamplingConfig::from_temperature(temperature)
        }
    }
}

/// Each rollout as (its prompt, its response ids), in rollout order.
fn sequences<'a>(prompts: &'a [PromptItem], rollouts: &'a [Rollout]) -> Vec<SequenceRef<'a>> {
    rollouts
        .iter()
        .map(|r| SequenceRef {
            prompt: &prompts[r.prompt],
            response: &r.ids,
        })
        .collect()
}
