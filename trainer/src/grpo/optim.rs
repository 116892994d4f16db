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

use std::ops::Range;

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
    /// The elements of each parameter (flattened) whose state this optimiser holds and which it
    /// updates: all of them, or this rank's ZeRO-1 shard ([`Self::with_shard`]).
    owned: Vec<Range<i64>>,
    /// f32 bytes per chunk of the step ([`STEP_CHUNK_BYTES`] unless set for a test).
    chunk_bytes: i64,
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
        let owned = params.iter().map(|(_, p)| 0..p.numel() as i64).collect();
        Ok(AnyPrecisionAdamW {
            cfg,
            params,
            states,
            owned,
            chunk_bytes: STEP_CHUNK_BYTES,
        })
    }

    /// This optimiser holding state for, and updating, only `owned[i]` of parameter `i`'s
    /// flattened elements (a ZeRO-1 shard, [`crate::distributed::FlatLayout::owned`]); the other
    /// elements are left to the other ranks. Gradients, the norm and the clip stay whole.
    pub fn with_shard(mut self, owned: Vec<Range<i64>>) -> Result<Self> {
        if owned.len() != self.params.len() {
            return Err(GrpoError::Invalid(format!(
                "shard covers {} parameters, the optimiser has {}",
                owned.len(),
                self.params.len()
            )));
        }
        for ((name, p), r) in self.params.iter().zip(&owned) {
            if r.start < 0 || r.end < r.start || r.end > p.numel() as i64 {
                return Err(GrpoError::Invalid(format!(
                    "shard range {r:?} is outside parameter {name} of {} elements",
                    p.numel()
                )));
            }
        }
        self.owned = owned;
        self.states = self.params.iter().map(|_| None).collect();
        Ok(self)
    }

    /// The flattened elements of parameter `i` this optimiser holds state for.
    pub fn owned(&self, i: usize) -> Range<i64> {
        self.owned[i].clone()
    }

    /// Elements of optimiser state held per buffer (`exp_avg`, and likewise `exp_avg_sq` and
    /// the compensation): the sum of the owned ranges.
    pub fn state_elements(&self) -> i64 {
        self.owned.iter().map(|r| r.end - r.start).sum()
    }

    /// Parameter `p`'s owned elements: `p` itself when it owns all of them, else a flat view.
    fn owned_view(t: &Tensor, p_numel: i64, range: &Range<i64>) -> Result<Tensor> {
        if range.start == 0 && range.end == p_numel {
            return Ok(t.shallow_clone());
        }
        Ok(t.f_view([-1])?
            .f_narrow(0, range.start, range.end - range.start)?)
    }

    /// This optimiser with step chunks of at most `bytes` of f32 (at least one row): the results
    /// do not depend on it; tests use small chunks to cover the chunked path.
    pub fn with_chunk_bytes(mut self, bytes: i64) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
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

    /// Sets every gradient to zero, first giving a released one ([`Self::release_grads`]) its
    /// parameter's shape again.
    pub fn zero_grad(&mut self) -> Result<()> {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() && g.size() != p.size() {
                let _ = g.f_resize_(p.size())?;
            }
            p.zero_grad();
        }
        Ok(())
    }

    /// Frees every gradient's memory between updates: the gradient tensor is emptied in place
    /// (`set_()`), since tch cannot set it back to undefined (PyTorch's `p.grad = None`);
    /// [`Self::zero_grad`] gives it its shape again before the next backward.
    pub fn release_grads(&mut self) -> Result<()> {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_set_()?;
            }
        }
        Ok(())
    }

    /// Global L2 norm of all gradients (f32, like `torch.nn.utils.clip_grad_norm_`) and, when it
    /// exceeds `max_norm`, scales every gradient by `max_norm / (norm + 1e-6)`. Returns the norm
    /// before clipping; a non-finite norm is returned unchanged and the gradients are not touched.
    /// A gradient larger than the chunk bound is summed a row chunk at a time, so no f32 copy of
    /// a whole `[vocab, hidden]` gradient is made.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        let mut sq = Vec::new();
        for (_, p) in &self.params {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            for (start, len) in row_chunks(&g, self.chunk_bytes) {
                let part = match len {
                    Some(len) => g.f_narrow(0, start, len)?,
                    None => g.shallow_clone(),
                };
                sq.push(part.f_to_kind(Kind::Float)?.f_norm()?.f_square()?);
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

    /// One AdamW update with learning rate `lr` for every parameter that has a gradient. A
    /// parameter larger than the chunk bound ([`STEP_CHUNK_BYTES`] of f32) is updated a row chunk
    /// at a time: every operation is elementwise, so the result is bitwise that of one pass, and
    /// the f32 temporaries stay within a few chunks.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let cfg = self.cfg;
        let (beta1, beta2) = cfg.betas;
        for (((_, param), state), range) in self
            .params
            .iter()
            .zip(self.states.iter_mut())
            .zip(&self.owned)
        {
            let grad = param.grad();
            if !grad.defined() || range.is_empty() {
                continue;
            }
            let numel = param.numel() as i64;
            let p = &Self::owned_view(param, numel, range)?;
            let grad = Self::owned_view(&grad, numel, range)?;
            let kind = cfg.state_dtype.kind();
            if state.is_none() {
                let zeros = || Tensor::f_zeros(p.size(), (kind, p.device()));
                *state = Some(ParamState {
                    step: 0,
                    exp_avg: zeros()?,
                    exp_avg_sq: zeros()?,
                    compensation: if cfg.kahan_summation {
                        Some(zeros()?)
                    } else {
                        None
                    },
                });
            }
            let st = state.as_mut().expect("initialised above");
            st.step += 1;
            // The reference keeps `step` as an f32 tensor: bias corrections are f32.
            let t = st.step as f32;
            let bias1 = 1.0f32 - (beta1 as f32).powf(t);
            let coefficients = StepCoefficients {
                decay: (cfg.weight_decay != 0.0).then_some(1.0 - lr * cfg.weight_decay),
                beta1,
                beta2,
                eps: cfg.eps,
                step_size: (lr as f32 / bias1) as f64,
                denom_correction: Tensor::from((1.0f32 - (beta2 as f32).powf(t)).sqrt()),
            };
            for (start, len) in row_chunks(p, self.chunk_bytes) {
                let view = |t: &Tensor| -> Result<Tensor> {
                    Ok(match len {
                        Some(len) => t.f_narrow(0, start, len)?,
                        None => t.shallow_clone(),
                    })
                };
                let mut chunk = StateChunk {
                    param: view(p)?,
                    exp_avg: view(&st.exp_avg)?,
                    exp_avg_sq: view(&st.exp_avg_sq)?,
                    compensation: st.compensation.as_ref().map(view).transpose()?,
                };
                chunk.update(&view(&grad)?, &coefficients)?;
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
        for (((name, param), state), range) in self
            .params
            .iter()
            .zip(self.states.iter_mut())
            .zip(&self.owned)
        {
            let Some(&step) = step_of.get(name.as_str()) else {
                *state = None;
                continue;
            };
            let p = &Self::owned_view(param, param.numel() as i64, range)?;
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

/// Bytes of f32 that one chunk of the optimiser step (and of the gradient-norm sum) covers: a
/// larger parameter is processed a row block at a time, so the step's f32 temporaries stay
/// within a few of these instead of several copies of a `[152064, 3584]` matrix.
pub const STEP_CHUNK_BYTES: i64 = 64 << 20;

/// Whether gradient buffers stay allocated between updates: they do not
/// ([`AnyPrecisionAdamW::release_grads`] after each update), so the memory plan counts them in
/// the update only.
pub const GRADIENTS_KEPT_BETWEEN_UPDATES: bool = false;

/// The per-step scalars of one parameter's update, shared by its chunks.
struct StepCoefficients {
    /// `1 − lr·wd`, when weight decay is on.
    decay: Option<f64>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// `lr / (1 − β1ᵗ)`, rounded through f32 as the reference does.
    step_size: f64,
    /// `√(1 − β2ᵗ)` as an f32 scalar tensor.
    denom_correction: Tensor,
}

/// Views of the same rows of a parameter and of its optimiser buffers.
struct StateChunk {
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    compensation: Option<Tensor>,
}

impl StateChunk {
    /// The AdamW update of these rows given their gradient rows (module docs: rounding happens
    /// where the reference rounds).
    fn update(&mut self, grad: &Tensor, c: &StepCoefficients) -> Result<()> {
        let g32 = grad.f_to_kind(Kind::Float)?;
        if let Some(decay) = c.decay {
            let _ = self.param.f_mul_scalar_(decay)?;
        }
        // m ← β1·m, then m ← m + (1−β1)·g rounded once.
        let _ = self.exp_avg.f_mul_scalar_(c.beta1)?;
        let m = self
            .exp_avg
            .f_to_kind(Kind::Float)?
            .f_add(&g32.f_mul_scalar((1.0 - c.beta1) as f32 as f64)?)?;
        self.exp_avg.f_copy_(&m)?;
        let _ = self.exp_avg_sq.f_mul_scalar_(c.beta2)?;
        let v = self.exp_avg_sq.f_to_kind(Kind::Float)?.f_add(
            &g32.f_mul(&g32)?
                .f_mul_scalar((1.0 - c.beta2) as f32 as f64)?,
        )?;
        self.exp_avg_sq.f_copy_(&v)?;
        let centered = self
            .exp_avg_sq
            .f_sqrt()?
            .f_div(&c.denom_correction)?
            .f_add_scalar(c.eps)?;
        let update = self
            .exp_avg
            .f_to_kind(Kind::Float)?
            .f_div(&centered.f_to_kind(Kind::Float)?)?
            .f_mul_scalar(-c.step_size)?;
        let p = &mut self.param;
        match &mut self.compensation {
            Some(comp) => {
                let sum = comp.f_to_kind(Kind::Float)?.f_add(&update)?;
                comp.f_copy_(&sum)?;
                let before = p.f_detach()?.copy();
                let new_p = p
                    .f_to_kind(Kind::Float)?
                    .f_add(&comp.f_to_kind(Kind::Float)?)?;
                p.f_copy_(&new_p)?;
                let lost = before.f_sub(p)?;
                let sum = comp
                    .f_to_kind(Kind::Float)?
                    .f_add(&lost.f_to_kind(Kind::Float)?)?;
                comp.f_copy_(&sum)?;
            }
            None => {
                let new_p = p.f_to_kind(Kind::Float)?.f_add(&update)?;
                p.f_copy_(&new_p)?;
            }
        }
        Ok(())
    }
}

/// Row blocks of `t` covering at most `chunk_bytes` of f32 each, as `(first row, rows)`; a
/// tensor within the bound (or without rows) is one block `(0, None)`: the whole tensor.
fn row_chunks(t: &Tensor, chunk_bytes: i64) -> Vec<(i64, Option<i64>)> {
    let numel = t.numel() as i64;
    let rows = t.size().first().copied().unwrap_or(0);
    if numel * 4 <= chunk_bytes || rows <= 1 {
        return vec![(0, None)];
    }
    let row_bytes = numel / rows * 4;
    let per_chunk = (chunk_bytes / row_bytes.max(1)).max(1);
    (0..rows)
        .step_by(per_chunk as usize)
        .map(|start| (start, Some(per_chunk.min(rows - start))))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Runs three steps on a `[37, 19]` parameter of `kind` with seeded gradients and returns the
    /// parameter and its buffers.
    fn run(kind: Kind, cfg: AdamWConfig, chunk_bytes: Option<i64>) -> Vec<Tensor> {
        tch::manual_seed(7);
        let init = Tensor::randn([37, 19], (Kind::Float, Device::Cpu));
        let grads: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn([37, 19], (Kind::Float, Device::Cpu)) * 1e-2)
            .collect();
        let p = init.to_kind(kind).set_requires_grad(true);
        let mut opt = AnyPrecisionAdamW::new(vec![("w".into(), p.shallow_clone())], cfg).unwrap();
        if let Some(bytes) = chunk_bytes {
            opt = opt.with_chunk_bytes(bytes);
        }
        for g in &grads {
            opt.zero_grad().unwrap();
            (&p * g.to_kind(kind)).sum(kind).backward();
            opt.step(1e-2).unwrap();
        }
        let st = opt.state(0).unwrap();
        let mut out = vec![p.detach(), st.exp_avg.copy(), st.exp_avg_sq.copy()];
        out.extend(st.compensation.as_ref().map(Tensor::copy));
        out
    }

    /// A released gradient holds no memory; zero_grad gives it back its shape, and the next
    /// backward accumulates into it as into a fresh one.
    #[test]
    fn released_gradients_free_their_memory_and_come_back() {
        let p = Tensor::ones([64, 32], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = AnyPrecisionAdamW::new(
            vec![("w".into(), p.shallow_clone())],
            AdamWConfig::default(),
        )
        .unwrap();
        (&p * 2.0).sum(Kind::Float).backward();
        opt.release_grads().unwrap();
        assert_eq!(p.grad().numel(), 0);
        opt.zero_grad().unwrap();
        assert_eq!(p.grad().size(), [64, 32]);
        assert_eq!(f64::try_from(p.grad().abs().sum(Kind::Float)).unwrap(), 0.0);
        (&p * 3.0).sum(Kind::Float).backward();
        assert_eq!(f64::try_from(p.grad().mean(Kind::Float)).unwrap(), 3.0);
    }

    #[test]
    fn chunked_step_is_bitwise_the_whole_step() {
        let bf16 = AdamWConfig::default();
        let f32_states = AdamWConfig {
            state_dtype: StateDtype::F32,
            kahan_summation: false,
            ..AdamWConfig::default()
        };
        // 5 rows of 19 f32 per chunk: 8 chunks, the last one shorter.
        let chunk = 5 * 19 * 4;
        assert_eq!(
            row_chunks(&Tensor::zeros([37, 19], (Kind::Float, Device::Cpu)), chunk).len(),
            8
        );
        for (kind, cfg) in [(Kind::BFloat16, bf16), (Kind::Float, f32_states)] {
            let whole = run(kind, cfg, None);
            let chunked = run(kind, cfg, Some(chunk));
            assert_eq!(whole.len(), chunked.len());
            for (a, b) in whole.iter().zip(&chunked) {
                assert!(a.equal(b), "{kind:?}: chunked step differs");
            }
        }
    }

    #[test]
    fn chunked_gradient_norm_matches() {
        let p = Tensor::randn([37, 19], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let g = Tensor::randn([37, 19], (Kind::Float, Device::Cpu));
        (&p * &g).sum(Kind::Float).backward();
        let want = f64::try_from(g.norm()).unwrap();
        let mut opt = AnyPrecisionAdamW::new(
            vec![("w".into(), p.shallow_clone())],
            AdamWConfig::default(),
        )
        .unwrap()
        .with_chunk_bytes(3 * 19 * 4);
        let norm = opt.clip_grad_norm(f64::INFINITY).unwrap();
        assert!((norm - want).abs() <= 1e-5 * want, "{norm} vs {want}");
    }
}
