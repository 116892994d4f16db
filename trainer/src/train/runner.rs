//! The training loop of `spatialthinker train`: the optional supervised warm-up, validation
//! before GRPO, then `trainer.max_steps` RL steps ([`Trainer::step`], in [`super::rl_step`])
//! with validation every `val_freq` steps and checkpoints every `save_freq` steps and at the end.

use std::path::PathBuf;
use std::time::Instant;

use data::{Cursor, Loader};
use serde_json::json;

use super::checkpoint::{
    write_optimizer_shard, CheckpointManager, ModelFiles, TrainerState, DEFAULT_MAX_SHARD_BYTES,
};
use super::report::{step_line, RewardSummary};
use super::rollout::{draw_seeds, sample_responses_seeded};
use super::setup::{bar, loader_config, Trainer, ROLLOUT_LOGPROBS_TRUSTED};
use super::{Result, TrainError};
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
            // every row draws its seeds; this rank samples its consecutive share of the batch
            let seeds = draw_seeds(&mut rng, batch.samples.len(), n);
            let rows = self.my_rows(batch.samples.len(), batch.samples.len());
            let mine: Vec<data::Sample> = rows.iter().map(|&r| batch.samples[r].clone()).collect();
            let seeds: Vec<Vec<u64>> = rows.iter().map(|&r| seeds[r].clone()).collect();
            let prompts = self.builder.encode_all(&self.processor, &mine)?;
            let (samples, _) = sample_responses_seeded(
                &self.policy,
                &prompts,
                &seeds,
                &sampling,
                self.engine_config(&prompts, n, &sampling),
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
        self.global_summary(&all)
    }

    /// Logs a validation report at the current RL step.
    pub fn log_validation(&mut self, report: &RewardSummary) -> Result<()> {
        if let Some(logger) = self.logger.as_mut() {
            logger.log(self.rl_step, &report.scalars("val"))?;
        }
        Ok(())
    }

    /// Writes `checkpoint-<rl_step>` (weights in the HF layout, optimiser, step, data cursor,
    /// sampler RNG, reference model path), pruning to `trainer.save_limit`. In a data-parallel
    /// run every rank calls it: with a sharded optimiser each rank stages its shard and rank 0
    /// publishes the folder with all of them; every rank returns the folder.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let Some(dp) = &self.dp else {
            return self.write_checkpoint(None);
        };
        let step = self.rl_step;
        let sharded = self.cfg.distributed.shard_optimizer;
        if sharded && !dp.is_main() {
            let staged = self.checkpoints.shard_staging_dir(step);
            write_optimizer_shard(&staged, &self.optimizer, dp.rank(), dp.world())?;
        }
        // every shard is on disk before rank 0 moves them into the checkpoint
        dp.barrier()?;
        let dir = if dp.is_main() {
            self.write_checkpoint(sharded.then_some(dp.world()))?
        } else {
            self.checkpoints.checkpoint_dir(step)
        };
        // nobody goes on (or exits) before the checkpoint is published
        dp.barrier()?;
        Ok(dir)
    }

    /// Rank 0's part of [`Self::save_checkpoint`] (`sharded`: the optimiser's world size).
    fn write_checkpoint(&self, sharded: Option<usize>) -> Result<PathBuf> {
        let (tensors, adapter_config) = self.checkpoint_tensors();
        let state = TrainerState {
            rl_step: self.rl_step,
            optimizer_step: self.optimizer_steps,
            data_cursor: json!(self.loader.cursor()),
            rng: json!({"sampler": self.rng.state()}),
            optimizer_param_steps: Vec::new(),
            extra: json!({
                "reference_model": self.reference_dir,
                "base_model": self.model_dir,
                ROLLOUT_LOGPROBS_TRUSTED: self.rollout_logprobs_trusted,
            }),
        };
        let model = ModelFiles {
            tensors: &tensors,
            save_kind: None,
            config_json: &self.config_json,
            copy_files: &self.copy_files,
            adapter_config: adapter_config.as_ref(),
        };
        match sharded {
            Some(world) => {
                self.checkpoints
                    .save_sharded(self.rl_step, &model, &self.optimizer, world, &state)
            }
            None => self
                .checkpoints
                .save(self.rl_step, &model, Some(&self.optimizer), &state),
        }
    }

    /// The whole run: supervised warm-up when enabled (fresh runs only), validation before
    /// training, `trainer.max_steps` RL steps with validation every `val_freq` and checkpoints
    /// every `save_freq` and at the end. Returns the first and last validation reports.
    pub fn run(&mut self) -> Result<RunSummary> {
        let started = Instant::now();
        if self.cfg.sft.enabled && !self.resumed {
            let dir = self.warm_up()?;
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
        self.finish()?;
        Ok(summary)
    }

    /// Leaves a data-parallel job in order ([`crate::distributed::DataParallel::finish`]);
    /// nothing for a single process. No collective may follow.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(dp) = self.dp.take() {
            dp.finish()?;
        }
        Ok(())
    }

    /// The supervised warm-up ([`Trainer::run_sft`]). In a data-parallel run rank 0 alone
    /// trains and saves it while the others wait; then every rank takes its weights and its
    /// checkpoint as the reference.
    fn warm_up(&mut self) -> Result<PathBuf> {
        let main = match &self.dp {
            None => return self.run_sft(),
            Some(dp) => dp.is_main(),
        };
        let saved = if main { Some(self.run_sft()?) } else { None };
        let dp = self.dp.as_ref().expect("checked above");
        dp.barrier()?;
        dp.broadcast_from_main(self.optimizer.params())?;
        let dir = match saved {
            Some(d) => d,
            None => {
                let root = self.out_dir.join(super::sft::SFT_DIR);
                CheckpointManager::new(&root, 1, DEFAULT_MAX_SHARD_BYTES)
                    .latest()?
                    .ok_or_else(|| TrainError::Checkpoint {
                        path: root.clone(),
                        msg: "rank 0 wrote no warm-up checkpoint".into(),
                    })?
            }
        };
        if self.cfg.model.reference_path.is_none() {
            self.reference_dir = dir.clone();
            self.reference = None;
        }
        Ok(dir)
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
