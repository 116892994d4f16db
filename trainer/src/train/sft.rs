//! Supervised warm-up: cross-entropy of a target response (a dataset column such as
//! `reference_response`, followed by `<|im_end|>`) given the prompt, token-mean over the batch,
//! with the same model, optimiser and log-prob code as the GRPO update.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use data::{Cursor, Loader};
use serde_json::json;
use tch::Tensor;

use super::checkpoint::{CheckpointManager, ModelFiles, TrainerState, DEFAULT_MAX_SHARD_BYTES};
use super::metrics::MetricsLogger;
use super::policy::{ModelPolicy, SequenceRef};
use super::rollout::{response_mask, PromptItem};
use super::setup::{bar, loader_config, Trainer};
use super::{Result, TrainError};
use crate::grpo::actor::PolicyLogprobs;
use crate::grpo::optim::AnyPrecisionAdamW;
use crate::model::Qwen2_5VLForConditionalGeneration;
use crate::processor::Processor;
use crate::tokenizer::IM_END_ID;

/// Diagnostics of one supervised step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftStepStats {
    /// Token-mean negative log-likelihood.
    pub loss: f64,
    /// Target tokens in the batch.
    pub tokens: usize,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the optimiser step was skipped (non-finite norm).
    pub skipped: bool,
}

/// Target ids of each prompt: its reference response tokenised, then `<|im_end|>`, cut to
/// `max_len` tokens. A row without a reference response is an error naming it.
pub fn target_ids(
    processor: &Processor,
    prompts: &[PromptItem],
    max_len: usize,
) -> Result<Vec<Vec<i64>>> {
    prompts
        .iter()
        .map(|p| {
            let text = p.reference_response.as_deref().ok_or_else(|| TrainError::Row {
                row: p.row.to_string(),
                msg: "no reference response for the supervised warm-up (the warm-up reads the reference_response column; set sft.enabled = false)".into(),
            })?;
            let mut ids = processor.tokenize(text)?;
            ids.push(IM_END_ID);
            ids.truncate(max_len);
            Ok(ids)
        })
        .collect()
}

/// One optimiser step on `prompts` with `targets`: for each micro-batch, backward of
/// `sum(−log p · mask) / total target tokens`, then clip the global norm and step.
pub fn sft_step(
    model: &Qwen2_5VLForConditionalGeneration,
    prompts: &[PromptItem],
    targets: &[Vec<i64>],
    micro_batch_size: usize,
    optimizer: &mut AnyPrecisionAdamW,
    lr: f64,
    max_grad_norm: f64,
) -> Result<SftStepStats> {
    let sequences: Vec<SequenceRef<'_>> = prompts
        .iter()
        .zip(targets)
        .map(|(prompt, t)| SequenceRef {
            prompt,
            response: t,
        })
        .collect();
    let lengths: Vec<usize> = targets.iter().map(Vec::len).collect();
    let tokens: usize = lengths.iter().sum();
    if tokens == 0 {
        return Err(TrainError::Config(
            "supervised batch has no target tokens".into(),
        ));
    }
    let mask = response_mask(&lengths, model.device())?;
    let mut policy = ModelPolicy::new(model, sequences, 1.0);
    optimizer.zero_grad()?;
    let mut loss_sum = 0.0;
    let rows: Vec<usize> = (0..prompts.len()).collect();
    for chunk in rows.chunks(micro_batch_size.max(1)) {
        let lp = policy.response_log_probs(chunk)?;
        let m = mask.f_narrow(0, chunk[0] as i64, chunk.len() as i64)?;
        let nll: Tensor = lp.f_mul(&m)?.f_sum(tch::Kind::Float)?.f_neg()?;
        policy.backward(&nll.f_div_scalar(tokens as f64)?)?;
        loss_sum += f64::try_from(&nll)?;
    }
    let grad_norm = optimizer.clip_grad_norm(max_grad_norm)?;
    let skipped = !grad_norm.is_finite();
    if !skipped {
        optimizer.step(lr)?;
    }
    optimizer.zero_grad()?;
    Ok(SftStepStats {
        loss: loss_sum / tokens as f64,
        tokens,
        grad_norm,
        skipped,
    })
}

/// Folder (under the output folder) of the supervised warm-up's checkpoint and logs.
pub const SFT_DIR: &str = "sft";

impl Trainer {
    /// Supervised warm-up (`[sft]`): `sft.steps` optimiser steps of `sft.batch_size` rows at the
    /// constant `sft.lr`, with a fresh optimiser; writes `<output>/sft/checkpoint-<steps>` (the
    /// frozen reference of the RL phase) and `<output>/sft/metrics.jsonl`. Returns the folder.
    pub fn run_sft(&mut self) -> Result<PathBuf> {
        let sft = self.cfg.sft.clone();
        let dir = self.out_dir.join(SFT_DIR);
        let mut loader = Loader::open(
            &self.train_files,
            loader_config(
                &self.cfg,
                sft.batch_size,
                true,
                self.cfg.data.seed.wrapping_add(1),
                &self.train_scan.exclusion(),
            ),
            Cursor::default(),
        )?;
        let params: Vec<(String, Tensor)> = self
            .optimizer
            .params()
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let mut optimizer = AnyPrecisionAdamW::new(params, self.cfg.adamw_config())?;
        let mut logger = if self.opts.dry {
            None
        } else {
            Some(MetricsLogger::create(&dir)?)
        };
        let pb = bar(sft.steps as u64, "sft", self.opts.progress);
        let micro = self.cfg.actor.micro_batch_size_per_device_for_update;
        let mut last = 0.0;
        for step in 1..=sft.steps {
            let started = Instant::now();
            let batch = loader.next_batch()?;
            let prompts = self.builder.encode_all(&self.processor, &batch.samples)?;
            let targets = target_ids(&self.processor, &prompts, self.cfg.data.max_response_length)?;
            let stats = sft_step(
                &self.policy,
                &prompts,
                &targets,
                micro,
                &mut optimizer,
                sft.lr,
                self.cfg.actor.max_grad_norm,
            )?;
            last = stats.loss;
            pb.set_message(format!("loss {:.3}", stats.loss));
            pb.inc(1);
            if let Some(l) = logger.as_mut() {
                let scalars = BTreeMap::from([
                    ("sft/loss".to_string(), stats.loss),
                    ("sft/grad_norm".to_string(), stats.grad_norm),
                    ("sft/tokens".to_string(), stats.tokens as f64),
                    ("sft/lr".to_string(), sft.lr),
                    ("time/step".to_string(), started.elapsed().as_secs_f64()),
                ]);
                l.log(step as u64, &scalars)?;
            }
        }
        pb.finish_and_clear();
        self.say(&format!(
            "sft: {} steps of {} rows, final loss {last:.3}",
            sft.steps, sft.batch_size
        ));
        let (tensors, adapter_config) = self.checkpoint_tensors();
        let state = TrainerState {
            rl_step: 0,
            optimizer_step: sft.steps as u64,
            data_cursor: json!(loader.cursor()),
            rng: json!({}),
            optimizer_param_steps: Vec::new(),
            extra: json!({"phase": "sft"}),
        };
        let saved = CheckpointManager::new(&dir, 1, DEFAULT_MAX_SHARD_BYTES).save(
            sft.steps as u64,
            &ModelFiles {
                tensors: &tensors,
                save_kind: None,
                config_json: &self.config_json,
                copy_files: &self.copy_files,
                adapter_config: adapter_config.as_ref(),
            },
            None,
            &state,
        )?;
        if self.cfg.model.reference_path.is_none() {
            // the warm-up's checkpoint is the reference, unless one was named
            self.reference_dir = saved.clone();
            self.reference = None;
        }
        Ok(saved)
    }
}
