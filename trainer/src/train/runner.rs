//! The training loop of `spatialthinker train`: the optional supervised warm-up, validation
//! before GRPO, then `trainer.max_steps` RL steps ([`Trainer::step`], in [`super::rl_step`])
//! with validation every `val_freq` steps and checkpoints every `save_freq` steps and at the end.

use std::path::PathBuf;
use std::time::Instant;

use data::{Cursor, Loader};
use serde_json::json;

use super::checkpoint::{ModelFiles, TrainerState};
use super::report::{step_line, RewardSummary};
use super::rollout::sample_responses;
use super::setup::{bar, loader_config, Trainer};
use super::Result;
use data::rng::SplitMix64;

/// Salt of the validation sampler's seed, so validation never draws from the rollout stream.
const VALIDATION_SEED_SALT: u64 = 0x5641_4c49_4441_5445;

impl Trainer {
    /// Generates on the whole validation split at `rollout.val_temperature` with a sampler
    /// seeded from `trainer.seed` (the same draws at every validation) and scores it.
    pub fn validate(&mut self) -> Result<RewardSummary> {
        let mut loader = Loader::open(
            &self.val_files,
            loader_config(
                &self.cfg,
                self.cfg.data.val_batch_size,
                false,
                0,
                &self.val_exclusion,
            ),
            Cursor::default(),
        )?;
        let mut rng = SplitMix64::new(self.cfg.trainer.seed ^ VALIDATION_SEED_SALT);
        let sampling = self.sampling(self.cfg.rollout.val_temperature);
        let n = self.cfg.rollout.val_n;
        let pb = bar(
            loader.rows_per_epoch() * n as u64,
            "validate",
            self.opts.progress,
        );
        let mut all = Vec::new();
        while let Some(batch) = loader.next_batch_of(0)? {
            let prompts = self.builder.encode_all(&self.processor, &batch.samples)?;
            let (samples, _) = sample_responses(
                &self.policy,
                &prompts,
                n,
                &sampling,
                self.engine_config(&prompts, n, &sampling),
                &mut rng,
                &mut |_| {},
            )?;
            pb.inc(samples.len() as u64);
            let scored = self.score_responses(&prompts, samples)?;
            for (p, e) in &scored.failed {
                eprintln!(
                    "warning: validation leaves out {}: the reward raised ({e})",
                    prompts[*p].row
                );
            }
            all.extend(scored.rollouts);
        }
        pb.finish_and_clear();
        Ok(RewardSummary::from_rollouts(&all))
    }

    /// Logs a validation report at the current RL step.
    pub fn log_validation(&mut self, report: &RewardSummary) -> Result<()> {
        if let Some(logger) = self.logger.as_mut() {
            logger.log(self.rl_step, &report.scalars("val"))?;
        }
        Ok(())
    }

    /// Writes `checkpoint-<rl_step>` (weights in the HF layout, optimiser, step, data cursor,
    /// sampler RNG, reference model path), pruning to `trainer.save_limit`.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let tensors = self.policy.named_tensors();
        let state = TrainerState {
            rl_step: self.rl_step,
            optimizer_step: self.optimizer_steps,
            data_cursor: json!(self.loader.cursor()),
            rng: json!({"sampler": self.rng.state()}),
            optimizer_param_steps: Vec::new(),
            extra: json!({
                "reference_model": self.reference_dir,
                "base_model": self.model_dir,
            }),
        };
        self.checkpoints.save(
            self.rl_step,
            &ModelFiles {
                tensors: &tensors,
                save_kind: None,
                config_json: &self.config_json,
                copy_files: &self.copy_files,
            },
            Some(&self.optimizer),
            &state,
        )
    }

    /// The whole run: supervised warm-up when enabled (fresh runs only), validation before
    /// training, `trainer.max_steps` RL steps with validation every `val_freq` and checkpoints
    /// every `save_freq` and at the end. Returns the first and last validation reports.
    pub fn run(&mut self) -> Result<RunSummary> {
        let started = Instant::now();
        if self.cfg.sft.enabled && !self.resumed {
            let dir = self.run_sft()?;
            self.say(&format!("sft checkpoint: {}", dir.display()));
        }
        let mut summary = RunSummary::default();
        let max_steps = self.cfg.trainer.max_steps as u64;
        if self.cfg.trainer.val_before_train && self.rl_step == 0 {
            let v = self.validate()?;
            self.say(&format!("validation before GRPO: {v}"));
            self.log_validation(&v)?;
            summary.before = Some(v);
        }
        while self.rl_step < max_steps {
            let r = self.step()?;
            self.say(&step_line(&r, max_steps));
            let step = self.rl_step;
            let val_freq = self.cfg.trainer.val_freq as u64;
            if (val_freq > 0 && step.is_multiple_of(val_freq)) || step == max_steps {
                let v = self.validate()?;
                self.say(&format!("validation at step {step}: {v}"));
                self.log_validation(&v)?;
                summary.after = Some(v);
            }
            let save_freq = self.cfg.trainer.save_freq as u64;
            if (save_freq > 0 && step.is_multiple_of(save_freq)) || step == max_steps {
                let dir = self.save_checkpoint()?;
                self.say(&format!("saved {}", dir.display()));
                summary.checkpoint = Some(dir);
            }
        }
        summary.seconds = started.elapsed().as_secs_f64();
        summary.report = self.write_run_report();
        Ok(summary)
    }
}

/// Outcome of [`Trainer::run`].
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Validation before the first RL step (when run).
    pub before: Option<RewardSummary>,
    /// The last validation.
    pub after: Option<RewardSummary>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The run report (`report.html`), when it could be written.
    pub report: Option<PathBuf>,
}
