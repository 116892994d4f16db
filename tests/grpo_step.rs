//! The GRPO update step with a toy bigram policy: micro-batch aggregation, clipping and AdamW
//! against `scripts/make_grpo_fixtures.py`, and the direction of one step on a tiny model.

use std::collections::HashMap;
use std::path::PathBuf;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use trainer::grpo::actor::{
    compute_log_probs, update_actor, PolicyLogprobs, RolloutBatch, UpdateConfig,
};
use trainer::grpo::advantage::{grpo_advantages, token_advantages, GRPO_EPS};
use trainer::grpo::loss::PolicyClip;
use trainer::grpo::optim::{AdamWConfig, AnyPrecisionAdamW, StateDtype};
use trainer::grpo::Result;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/grpo")
        .join(name)
}

/// `log p(x_t | x_{t-1}) = log_softmax(embed[x_{t-1}] · lm_headᵀ)[x_t]`.
struct Bigram {
    embed: Tensor,
    lm_head: Tensor,
    prev: Tensor,
    tokens: Tensor,
}

impl PolicyLogprobs for Bigram {
    fn response_log_probs(&mut self, rows: &[usize]) -> Result<Tensor> {
        let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
        let prev = self.prev.index_select(0, &idx);
        let tokens = self.tokens.index_select(0, &idx);
        let logits = self
            .embed
            .index_select(0, &prev.reshape([-1]))
            .matmul(&self.lm_head.tr());
        let logits = logits.reshape([prev.size()[0], prev.size()[1], -1]);
        Ok(logits
            .log_softmax(-1, Kind::Float)
            .gather(-1, &tokens.unsqueeze(-1), false)
            .squeeze_dim(-1))
    }
}

#[test]
fn update_matches_reference_aggregation_clip_and_adamw() {
    tch::set_num_threads(1);
    let fx: HashMap<String, Tensor> = Tensor::read_safetensors(fixture("update.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("update.json")).unwrap()).unwrap();
    let embed = fx["init.embed"].copy().set_requires_grad(true);
    let lm_head = fx["init.lm_head"].copy().set_requires_grad(true);
    let mut policy = Bigram {
        embed: embed.shallow_clone(),
        lm_head: lm_head.shallow_clone(),
        prev: fx["prev_tokens"].shallow_clone(),
        tokens: fx["tokens"].shallow_clone(),
    };
    let scores: Vec<f32> = Vec::try_from(&fx["scores"]).unwrap();
    let groups: Vec<i64> = Vec::try_from(&fx["group_ids"]).unwrap();
    let groups: Vec<u64> = groups.into_iter().map(|g| g as u64).collect();
    let batch = batch_from_scores(
        fx["response_mask"].shallow_clone(),
        fx["old_log_probs"].shallow_clone(),
        Some(fx["ref_log_probs"].shallow_clone()),
        &scores,
        &groups,
    );
    let step = UpdateConfig {
        mini_batch_size: meta["mini_batch"].as_u64().unwrap() as usize,
        max_tokens_per_forward: None,
        micro_batch_size: meta["micro_batch"].as_u64().unwrap() as usize,
        ppo_epochs: 1,
        clip: PolicyClip::default(),
        kl_coef: Some(meta["kl_coef"].as_f64().unwrap()),
        max_grad_norm: meta["max_grad_norm"].as_f64().unwrap(),
    };
    let cfg = AdamWConfig {
        weight_decay: meta["weight_decay"].as_f64().unwrap(),
        state_dtype: StateDtype::Bf16,
        kahan_summation: true,
        ..AdamWConfig::default()
    };
    let mut opt = AnyPrecisionAdamW::new(
        vec![
            ("embed".into(), embed.shallow_clone()),
            ("lm_head".into(), lm_head.shallow_clone()),
        ],
        cfg,
    )
    .unwrap();
    let metrics = update_actor(
        &step,
        &mut policy,
        &batch,
        &mut opt,
        meta["lr"].as_f64().unwrap(),
    )
    .unwrap();

    let want_norms: Vec<f32> = Vec::try_from(&fx["grad_norms"]).unwrap();
    assert_eq!(
        metrics.grad_norms.len(),
        2,
        "two mini-batches → two optimiser steps"
    );
    for (g, w) in metrics.grad_norms.iter().zip(&want_norms) {
        assert!((g - *w as f64).abs() < 1e-5, "grad norm {g} vs {w}");
    }
    assert_eq!(metrics.micro_batches, 4);
    let losses: Vec<f32> = Vec::try_from(&fx["micro_losses"]).unwrap();
    let mean_loss = losses.iter().map(|&x| x as f64).sum::<f64>() / losses.len() as f64;
    assert!(
        (metrics.pg_loss - mean_loss).abs() < 1e-5,
        "{} vs {mean_loss}",
        metrics.pg_loss
    );
    assert_eq!(metrics.skipped_steps, 0);
    for (name, t) in [("embed", &embed), ("lm_head", &lm_head)] {
        let want = &fx[&format!("final.{name}")];
        let d = f64::try_from((t - want).abs().max()).unwrap();
        // lr 1e-2 updates through bf16 moments: allow a bf16 rounding of one update.
        assert!(d < 2e-4, "{name} after the update differs by {d}");
        let moved = f64::try_from((t - &fx[&format!("init.{name}")]).abs().max()).unwrap();
        assert!(moved > 1e-3, "{name} did not move");
    }
}

/// A tiny autoregressive policy: embedding, one hidden layer, vocabulary head, conditioned on
/// the previous token; responses are scored from a fixed prompt token.
struct TinyLm {
    vs: nn::VarStore,
    embed: nn::Embedding,
    mlp: nn::Linear,
    head: nn::Linear,
    /// `[N, T+1]`: prompt token followed by the response tokens.
    seqs: Tensor,
}

impl TinyLm {
    fn new(seqs: Tensor, vocab: i64) -> Self {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let embed = nn::embedding(&root / "embed_tokens", vocab, 16, Default::default());
        let mlp = nn::linear(&root / "mlp", 16, 16, Default::default());
        let head = nn::linear(&root / "lm_head", 16, vocab, Default::default());
        TinyLm {
            vs,
            embed,
            mlp,
            head,
            seqs,
        }
    }
}

impl PolicyLogprobs for TinyLm {
    fn response_log_probs(&mut self, rows: &[usize]) -> Result<Tensor> {
        let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
        let seqs = self.seqs.index_select(0, &idx);
        let t = seqs.size()[1] - 1;
        let prev = seqs.narrow(1, 0, t);
        let next = seqs.narrow(1, 1, t);
        let h = self.mlp.forward(&self.embed.forward(&prev)).tanh();
        let logp = self.head.forward(&h).log_softmax(-1, Kind::Float);
        Ok(logp.gather(-1, &next.unsqueeze(-1), false).squeeze_dim(-1))
    }
}

fn sequence_log_probs(policy: &mut TinyLm, mask: &Tensor) -> Vec<f64> {
    let lp = compute_log_probs(policy, 4, 4, None).unwrap();
    let per_seq = (lp * mask).sum_dim_intlist(&[-1i64][..], false, Kind::Double);
    Vec::try_from(&per_seq).unwrap()
}

#[test]
fn one_step_raises_best_and_lowers_worst_response() {
    tch::set_num_threads(1);
    let vocab = 12;
    // One prompt (token 0), four sampled responses of 5 tokens (the last one 3 tokens + padding).
    let seqs = Tensor::from_slice2(&[
        [0i64, 3, 5, 7, 2, 9],
        [0, 4, 4, 8, 1, 6],
        [0, 11, 2, 2, 10, 3],
        [0, 6, 9, 1, 0, 0],
    ]);
    let mask = Tensor::from_slice2(&[
        [1f32, 1., 1., 1., 1.],
        [1., 1., 1., 1., 1.],
        [1., 1., 1., 1., 1.],
        [1., 1., 1., 0., 0.],
    ]);
    let mut policy = TinyLm::new(seqs, vocab);
    let scores = [2.0f32, 0.0, 0.5, 1.0];
    let before = sequence_log_probs(&mut policy, &mask);
    let old = compute_log_probs(&mut policy, 4, 2, None).unwrap();
    let reference = old.copy();
    let batch = batch_from_scores(
        mask.shallow_clone(),
        old,
        Some(reference),
        &scores,
        &[7, 7, 7, 7],
    );
    let params = AnyPrecisionAdamW::trainable_from_var_store(&policy.vs);
    assert_eq!(
        params.len(),
        5,
        "embedding, mlp weight+bias, head weight+bias"
    );
    let mut opt = AnyPrecisionAdamW::new(
        params,
        AdamWConfig {
            state_dtype: StateDtype::F32,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let step = UpdateConfig {
        mini_batch_size: 4,
        max_tokens_per_forward: None,
        micro_batch_size: 2,
        ppo_epochs: 1,
        clip: PolicyClip::default(),
        kl_coef: Some(1e-2),
        max_grad_norm: 1.0,
    };
    let m = update_actor(&step, &mut policy, &batch, &mut opt, 1e-2).unwrap();
    let after = sequence_log_probs(&mut policy, &mask);
    println!("log p before {before:?}\nlog p after  {after:?}\nmetrics {m:?}");
    assert!(
        after[0] > before[0] + 1e-3,
        "highest-advantage response must gain: {} → {}",
        before[0],
        after[0]
    );
    assert!(
        after[1] < before[1] - 1e-3,
        "lowest-advantage response must lose: {} → {}",
        before[1],
        after[1]
    );
    assert!(m.grad_norms[0].is_finite() && m.grad_norms[0] > 0.0);
    // At the rollout policy, ratios are 1: nothing is clipped and the KL to the reference is 0.
    assert_eq!(m.pg_clipfrac_higher, 0.0);
    assert!(m.kl_loss.unwrap().abs() < 1e-9);
}

#[test]
fn non_finite_gradient_skips_the_step() {
    tch::set_num_threads(1);
    let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
    let mut opt = AnyPrecisionAdamW::new(
        vec![("w".into(), w.shallow_clone())],
        AdamWConfig::default(),
    )
    .unwrap();
    (&w * Tensor::from_slice(&[f32::NAN, 1.0]))
        .sum(Kind::Float)
        .backward();
    let norm = opt.clip_grad_norm(1.0).unwrap();
    assert!(norm.is_nan());
    // Finite gradients larger than the clip are scaled to norm 1 (within the 1e-6 guard).
    opt.zero_grad().unwrap();
    (&w * Tensor::from_slice(&[3.0f32, 4.0]))
        .sum(Kind::Float)
        .backward();
    let norm = opt.clip_grad_norm(1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let clipped: Vec<f32> = Vec::try_from(&w.grad()).unwrap();
    assert!((clipped[0] - 0.6).abs() < 1e-6 && (clipped[1] - 0.8).abs() < 1e-6);
}

/// A policy whose log-probs (and hence gradients) are NaN.
struct NanPolicy {
    w: Tensor,
}

impl PolicyLogprobs for NanPolicy {
    fn response_log_probs(&mut self, rows: &[usize]) -> Result<Tensor> {
        let nan = Tensor::full([rows.len() as i64, 3], f64::NAN, (Kind::Float, Device::Cpu));
        Ok(&self.w * nan)
    }
}

#[test]
fn rl_step_skips_the_optimizer_step_on_non_finite_norm() {
    tch::set_num_threads(1);
    let w = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
    let mut policy = NanPolicy {
        w: w.shallow_clone(),
    };
    let mut opt = AnyPrecisionAdamW::new(
        vec![("w".into(), w.shallow_clone())],
        AdamWConfig::default(),
    )
    .unwrap();
    let zeros = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let batch = batch_from_scores(
        Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
        zeros.copy(),
        None,
        &[1.0, 0.0],
        &[1, 1],
    );
    let step = UpdateConfig {
        mini_batch_size: 2,
        max_tokens_per_forward: None,
        micro_batch_size: 1,
        ppo_epochs: 1,
        clip: PolicyClip::default(),
        kl_coef: None,
        max_grad_norm: 1.0,
    };
    let m = update_actor(&step, &mut policy, &batch, &mut opt, 0.1).unwrap();
    assert_eq!(m.skipped_steps, 1);
    assert!(m.grad_norms[0].is_nan());
    assert_eq!(f64::try_from(&w).unwrap(), 0.5, "weights untouched");
    assert!(opt.state(0).is_none(), "no AdamW state was created");
}

/// The update's batch from one reward per response and its group id: GRPO advantages
/// broadcast over the response mask, as the trainer's advantage phase builds it.
fn batch_from_scores(
    response_mask: Tensor,
    old_log_probs: Tensor,
    ref_log_probs: Option<Tensor>,
    scores: &[f32],
    groups: &[u64],
) -> RolloutBatch {
    let adv = grpo_advantages(scores, groups, GRPO_EPS).unwrap();
    let advantages = token_advantages(&adv, &response_mask).unwrap();
    RolloutBatch::new(response_mask, old_log_probs, ref_log_probs, advantages).unwrap()
}
