//! AdamW with low-precision states and Kahan-compensated updates (EasyR1's `adamw_bf16`, i.e.
//! AnyPrecisionAdamW), gradient-norm clipping with skip on non-finite norms, and the learning-rate
//! schedule (docs/recipe.md, "Optimiser and learning-rate schedule").
//!
//! Per parameter `p` with gradient `g`, at step `t` (per-parameter counter):
//! `p ← p·(1 − lr·wd)`; `m ← β1·m + (1−β1)·g`; `v ← β2·v + (1−β2)·g²`;
//! `u = −lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)`; with Kahan summation the update is first added to
//! the compensation buffer `c ← c + u`, then `p' = p + c` and `c ← c + (p − p')`, which carries the
//! bits that the low-precision `p` cannot hold into the next step. Rounding happens where the
//! reference rounds: each in-place op produces its tensor's dtype, fused multiply-adds are done in
//! f32 and rounded once.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{GrpoError, Result};

/// Data type of the optimiser's moment and compensation buffers.
/// Tensors with their names (parameter or buffer keys).
pub type NamedTensors = Vec<(String, Tensor)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateDtype {
    /// bfloat16 (EasyR1 `adamw_bf16`).
    Bf16,
    /// float32 (plain AdamW when combined with `kahan = false`).
    F32,
}

impl StateDtype {
    /// The tch kind.
    pub fn kind(self) -> Kind {
        match self {
            StateDtype::Bf16 => Kind::BFloat16,
            StateDtype::F32 => Kind::Float,
        }
    }
}

/// Hyper-parameters of [`AnyPrecisionAdamW`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// `(β1, β2)`.
    pub betas: (f64, f64),
    /// Added to the bias-corrected `√v`.
    pub eps: f64,
    /// Decoupled weight decay: `p ← p·(1 − lr·wd)` before the Adam update.
    pub weight_decay: f64,
    /// Dtype of `exp_avg`, `exp_avg_sq` and the compensation buffer.
    pub state_dtype: StateDtype,
    /// Keep a Kahan compensation buffer for the weight update.
    pub kahan_summation: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            state_dtype: StateDtype::Bf16,
            kahan_summation: true,
        }
    }
}

/// State kept for one parameter.
#[derive(Debug)]
pub struct ParamState {
    /// Number of updates applied to this parameter.
    pub step: u64,
    /// First moment (EMA of gradients).
    pub exp_avg: Tensor,
    /// Uncentred second moment (EMA of squared gradients).
    pub exp_avg_sq: Tensor,
    /// Kahan compensation buffer (`None` without Kahan summation).
    pub compensation: Option<Tensor>,
}

/// AdamW with states in a chosen precision and optional Kahan-compensated updates.
///
/// Holds shallow clones of the parameters (sharing storage with the `VarStore`), in a fixed,
/// named order so its state can be checkpointed by name.
#[derive(Debug)]
pub struct AnyPrecisionAdamW {
    cfg: AdamWConfig,
    params: Vec<(String, Tensor)>,
    states: Vec<Option<ParamState>>,
}

/// Prefixes of the optimiser-state tensor names in a checkpoint.
pub const STATE_PREFIXES: [&str; 3] = ["exp_avg.", "exp_avg_sq.", "compensation."];

impl AnyPrecisionAdamW {
    /// An optimiser over named parameters (e.g. a `VarStore`'s trainable variables, sorted).
    pub fn new(params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Result<Self> {
        for (name, p) in &params {
            if !p.is_floating_point() {
                return Err(GrpoError::Invalid(format!(
                    "parameter {name} is not floating point"
                )));
            }
        }
        let states = params.iter().map(|_| None).collect();
        Ok(AnyPrecisionAdamW {
            cfg,
            params,
            states,
        })
    }

    /// The trainable variables of a `VarStore`, sorted by name (the order used by checkpoints).
    pub fn trainable_from_var_store(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The parameters, in order.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// The state of parameter `i` (`None` before its first update).
    pub fn state(&self, i: usize) -> Option<&ParamState> {
        self.states.get(i).and_then(|s| s.as_ref())
    }

    /// Sets every gradient to zero (keeps the buffers allocated).
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Global L2 norm of all gradients (f32, like `torch.nn.utils.clip_grad_norm_`) and, when it
    /// exceeds `max_norm`, scales every gradient by `max_norm / (norm + 1e-6)`. Returns the norm
    /// before clipping; a non-finite norm is returned unchanged and the gradients are not touched.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        let mut sq = Vec::new();
        for (_, p) in &self.params {
            let g = p.grad();
            if g.defined() {
                sq.push(g.f_to_kind(Kind::Float)?.f_norm()?.f_square()?);
            }
        }
        if sq.is_empty() {
            return Ok(0.0);
        }
        let total = Tensor::f_stack(&sq, 0)?.f_sum(Kind::Float)?.f_sqrt()?;
        let norm = f64::try_from(&total)?;
        if !norm.is_finite() {
            return Ok(norm);
        }
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        if coef < 1.0 {
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.f_mul_scalar_(coef)?;
                }
            }
        }
        Ok(norm)
    }

    /// One AdamW update with learning rate `lr` for every parameter that has a gradient.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let cfg = self.cfg;
        let (beta1, beta2) = cfg.betas;
        for ((_, p), state) in self.params.iter_mut().zip(self.states.iter_mut()) {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let kind = cfg.state_dtype.kind();
            if state.is_none() {
                *state = Some(ParamState {
                    step: 0,
                    exp_avg: p.f_zeros_like()?.f_to_kind(kind)?,
                    exp_avg_sq: p.f_zeros_like()?.f_to_kind(kind)?,
                    compensation: if cfg.kahan_summation {
                        Some(p.f_zeros_like()?.f_to_kind(kind)?)
                    } else {
                        None
                    },
                });
            }
            let st = state.as_mut().expect("initialised above");
            st.step += 1;
            // The reference keeps `step` as an f32 tensor: bias corrections are f32.
            let t = st.step as f32;
            let g32 = grad.f_to_kind(Kind::Float)?;
            if cfg.weight_decay != 0.0 {
                let _ = p.f_mul_scalar_(1.0 - lr * cfg.weight_decay)?;
            }
            // m ← β1·m, then m ← m + (1−β1)·g rounded once.
            let _ = st.exp_avg.f_mul_scalar_(beta1)?;
            let m = st
                .exp_avg
                .f_to_kind(Kind::Float)?
                .f_add(&g32.f_mul_scalar((1.0 - beta1) as f32 as f64)?)?;
            st.exp_avg.f_copy_(&m)?;
            let _ = st.exp_avg_sq.f_mul_scalar_(beta2)?;
            let v = st
                .exp_avg_sq
                .f_to_kind(Kind::Float)?
                .f_add(&g32.f_mul(&g32)?.f_mul_scalar((1.0 - beta2) as f32 as f64)?)?;
            st.exp_avg_sq.f_copy_(&v)?;
            let bias1 = 1.0f32 - (beta1 as f32).powf(t);
            let step_size = (lr as f32 / bias1) as f64;
            let denom_correction = Tensor::from((1.0f32 - (beta2 as f32).powf(t)).sqrt());
            let centered = st
                .exp_avg_sq
                .f_sqrt()?
                .f_div(&denom_correction)?
                .f_add_scalar(cfg.eps)?;
            let update = st
                .exp_avg
                .f_to_kind(Kind::Float)?
                .f_div(&centered.f_to_kind(Kind::Float)?)?
                .f_mul_scalar(-step_size)?;
            match &mut st.compensation {
                Some(comp) => {
                    let c = comp.f_to_kind(Kind::Float)?.f_add(&update)?;
                    comp.f_copy_(&c)?;
                    let before = p.detach().copy();
                    let new_p = p
                        .f_to_kind(Kind::Float)?
                        .f_add(&comp.f_to_kind(Kind::Float)?)?;
                    p.f_copy_(&new_p)?;
                    let lost = before.f_sub(p)?;
                    let c = comp
                        .f_to_kind(Kind::Float)?
                        .f_add(&lost.f_to_kind(Kind::Float)?)?;
                    comp.f_copy_(&c)?;
                }
                None => {
                    let new_p = p.f_to_kind(Kind::Float)?.f_add(&update)?;
                    p.f_copy_(&new_p)?;
                }
            }
        }
        Ok(())
    }

    /// The optimiser state as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`,
    /// `compensation.<param>`) plus the per-parameter step counts, for checkpoints.
    pub fn state_tensors(&self) -> (NamedTensors, Vec<(String, u64)>) {
        let mut tensors = Vec::new();
        let mut steps = Vec::new();
        for ((name, _), st) in self.params.iter().zip(&self.states) {
            if let Some(st) = st {
                tensors.push((format!("exp_avg.{name}"), st.exp_avg.shallow_clone()));
                tensors.push((format!("exp_avg_sq.{name}"), st.exp_avg_sq.shallow_clone()));
                if let Some(c) = &st.compensation {
                    tensors.push((format!("compensation.{name}"), c.shallow_clone()));
                }
                steps.push((name.clone(), st.step));
            }
        }
        (tensors, steps)
    }

    /// Restores the state written by [`Self::state_tensors`]; every parameter with a step count
    /// must have its buffers, with the parameter's shape.
    pub fn load_state(
        &mut self,
        tensors: Vec<(String, Tensor)>,
        steps: &[(String, u64)],
    ) -> Result<()> {
        let mut by_name: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let kind = self.cfg.state_dtype.kind();
        let step_of: std::collections::HashMap<&str, u64> =
            steps.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        for ((name, p), state) in self.params.iter().zip(self.states.iter_mut()) {
            let Some(&step) = step_of.get(name.as_str()) else {
                *state = None;
                continue;
            };
            let device = p.device();
            let mut take = |prefix: &str| -> Result<Tensor> {
                let key = format!("{prefix}{name}");
                let t = by_name
                    .remove(&key)
                    .ok_or_else(|| GrpoError::Invalid(format!("optimizer state lacks {key}")))?;
                if t.size() != p.size() {
                    return Err(GrpoError::Invalid(format!(
                        "optimizer state {key} has shape {:?}, parameter has {:?}",
                        t.size(),
                        p.size()
                    )));
                }
                Ok(t.f_to_device(device)?.f_to_kind(kind)?)
            };
            let exp_avg = take(STATE_PREFIXES[0])?;
            let exp_avg_sq = take(STATE_PREFIXES[1])?;
            let compensation = if self.cfg.kahan_summation {
                Some(take(STATE_PREFIXES[2])?)
            } else {
                None
            };
            *state = Some(ParamState {
                step,
                exp_avg,
                exp_avg_sq,
                compensation,
            });
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(GrpoError::Invalid(format!(
                "optimizer state has {extra}, which names no trainable parameter"
            )));
        }
        Ok(())
    }
}

/// Learning-rate schedule: constant after a linear warm-up, stepped once per RL step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak (constant) learning rate.
    pub lr: f64,
    /// Number of RL steps of linear warm-up from 0.
    pub warmup_steps: u64,
    /// Reproduce EasyR1's `min(1, s / max(1, warmup))` factor even when `warmup_steps` is 0,
    /// which makes the whole first RL step run with lr = 0 (docs/recipe.md, "Optimiser and
    /// learning-rate schedule").
    pub zero_lr_first_step: bool,
}

impl LrSchedule {
    /// The learning rate used during RL step `rl_step` (0-based).
    pub fn lr_at(&self, rl_step: u64) -> f64 {
        if self.warmup_steps == 0 && !self.zero_lr_first_step {
            return self.lr;
        }
        let factor = (rl_step as f64 / self.warmup_steps.max(1) as f64).min(1.0);
        self.lr * factor
    }
}
