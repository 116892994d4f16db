//! The output head `lm_head`: final hidden states to logits, greedy ids and the log-probs of
//! given targets, over the full vocabulary or a restricted output vocabulary.
//!
//! Every product with the `[vocab, D]` output matrix goes through [`LmHead`]: full-width logits
//! for a forward pass ([`LmHead::logits`]), logits over the output columns for sampling
//! ([`LmHead::output_logits`], with the CPU fast path of [`super::cpu_head`] for a handful of
//! rows) and chunked target log-probs for GRPO ([`LmHead::target_log_probs`]).

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{cpu_head, ModelError};
use crate::tokenizer::TOKENIZER_VOCAB;

/// File of a checkpoint folder in which the trainer saves the token ids its output vocabulary
/// was restricted to (a JSON list). Loading never applies it; see [`read_output_vocab`].
pub const OUTPUT_VOCAB_FILE: &str = "output_vocab.json";

/// Bytes of f32 logits materialised at once by [`LmHead::target_log_probs`] on the CPU: 32 MiB,
/// the largest block glibc's allocator serves from its heap instead of fresh zeroed pages (with
/// the thresholds [`tune_cpu_allocator`] sets).
pub const CPU_LOGITS_CHUNK_BYTES: i64 = 32 << 20;
/// The same bound on a GPU (fewer, larger matmuls).
pub const GPU_LOGITS_CHUNK_BYTES: i64 = 1 << 30;

/// Reads a restricted output vocabulary: a JSON list of token ids, as the trainer writes it to
/// [`OUTPUT_VOCAB_FILE`].
pub fn read_output_vocab(path: &Path) -> Result<Vec<i64>, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| {
        ModelError::Input(format!(
            "{}: expected a JSON list of token ids: {e}",
            path.display()
        ))
    })
}

/// A restriction of the softmax to a subset of token ids (every other id gets probability 0):
/// generation and log-probs then multiply `lm_head` by only those rows. The tiny CPU preset uses
/// it so the 151,936-row head costs ~1% on a small dataset; the weights stay a full checkpoint.
#[derive(Debug)]
pub struct OutputVocab {
    /// Allowed ids, sorted, as a list.
    pub ids: Vec<i64>,
    /// The same ids as a tensor `[K]` on the head's device.
    pub ids_tensor: Tensor,
    /// `[vocab]` position of each id in `ids`, or 0 for ids outside it.
    pub position: Tensor,
}

/// `lm_head`, optionally restricted to an [`OutputVocab`].
///
/// Its *output columns* are the ids of the output vocabulary (column `j` is `ids[j]`) or, without
/// a restriction, the tokenizer's ids (column `j` is token `j`; the untrained padding rows past
/// [`TOKENIZER_VOCAB`] are left out).
#[derive(Debug)]
pub struct LmHead {
    /// `[vocab, D]`; the same tensor as `model.embed_tokens` when embeddings are tied.
    pub weight: Tensor,
    output_vocab: Option<OutputVocab>,
}

impl LmHead {
    /// The full-vocabulary head with `weight [vocab, D]`.
    pub fn new(weight: Tensor) -> Self {
        LmHead {
            weight,
            output_vocab: None,
        }
    }

    /// Rows of the weight (the config's `vocab_size`).
    pub fn vocab_size(&self) -> i64 {
        self.weight.size()[0]
    }

    /// Restricts the output distribution to `ids` (see [`OutputVocab`]).
    pub fn restrict_output_vocab(&mut self, ids: &[i64]) -> Result<(), ModelError> {
        let vocab = self.vocab_size();
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() || ids[0] < 0 || ids[ids.len() - 1] >= vocab {
            return Err(ModelError::Input(format!(
                "output vocabulary must be non-empty ids below {vocab}"
            )));
        }
        let mut position = vec![0i64; vocab as usize];
        for (i, &id) in ids.iter().enumerate() {
            position[id as usize] = i as i64;
        }
        let device = self.weight.device();
        self.output_vocab = Some(OutputVocab {
            ids_tensor: Tensor::f_from_slice(&ids)?.f_to_device(device)?,
            position: Tensor::f_from_slice(&position)?.f_to_device(device)?,
            ids,
        });
        Ok(())
    }

    /// Lifts an output restriction (the full vocabulary again).
    pub fn clear_output_vocab(&mut self) {
        self.output_vocab = None;
    }

    /// The output restriction, if any.
    pub fn output_vocab(&self) -> Option<&OutputVocab> {
        self.output_vocab.as_ref()
    }

    /// Token ids of output columns (the identity without a restriction).
    pub fn token_ids(&self, columns: &[i64]) -> Result<Vec<i64>, ModelError> {
        let Some(v) = &self.output_vocab else {
            return Ok(columns.to_vec());
        };
        columns
            .iter()
            .map(|&c| {
                usize::try_from(c)
                    .ok()
                    .and_then(|c| v.ids.get(c).copied())
                    .ok_or_else(|| {
                        ModelError::Input(format!(
                            "output column {c} outside the {} ids of the output vocabulary",
                            v.ids.len()
                        ))
                    })
            })
            .collect()
    }

    /// Output columns `K`: the restricted vocabulary's size, else the tokenizer's ids.
    pub fn output_columns(&self) -> i64 {
        match &self.output_vocab {
            Some(v) => v.ids.len() as i64,
            None => self.vocab_size().min(TOKENIZER_VOCAB),
        }
    }

    /// Rows of hidden states whose f32 output logits `[rows, K]` stay within one logits chunk
    /// ([`CPU_LOGITS_CHUNK_BYTES`] on the CPU, the heap block the allocator reuses;
    /// [`GPU_LOGITS_CHUNK_BYTES`] elsewhere), at least 1.
    pub fn rows_per_logits_chunk(&self, device: Device) -> usize {
        let budget = if device == Device::Cpu {
            CPU_LOGITS_CHUNK_BYTES
        } else {
            GPU_LOGITS_CHUNK_BYTES
        };
        (budget / (self.output_columns().max(1) * 4)).max(1) as usize
    }

    /// The weight rows of the output columns, `[K, D]`.
    fn output_weight(&self) -> Result<Tensor, ModelError> {
        Ok(match &self.output_vocab {
            Some(v) => self.weight.f_index_select(0, &v.ids_tensor)?,
            None => self
                .weight
                .f_narrow(0, 0, self.vocab_size().min(TOKENIZER_VOCAB))?,
        })
    }

    /// Final hidden states `[..., D]` -> f32 logits `[..., vocab]` (what transformers' `lm_head`
    /// returns), with the untrained ids >= [`TOKENIZER_VOCAB`] and, under an [`OutputVocab`],
    /// every id outside it set to -inf.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        tune_cpu_allocator();
        let vocab = self.vocab_size();
        if let Some(v) = &self.output_vocab {
            let picked = project(hidden, &self.output_weight()?)?;
            let mut shape = picked.size();
            let last = shape.len() - 1;
            shape[last] = vocab;
            let index = v.ids_tensor.f_expand(picked.size(), false)?;
            return Ok(
                Tensor::f_full(&shape, f64::NEG_INFINITY, (Kind::Float, picked.device()))?
                    .f_scatter(-1, &index, &picked)?,
            );
        }
        let logits = project(hidden, &self.weight)?;
        if vocab <= TOKENIZER_VOCAB {
            return Ok(logits);
        }
        let ids = Tensor::f_arange(vocab, (Kind::Int64, logits.device()))?;
        Ok(logits.f_masked_fill(&ids.f_ge(TOKENIZER_VOCAB)?, f64::NEG_INFINITY)?)
    }

    /// Final hidden states `[..., D]` -> f32 logits over the output columns only, `[..., K]`:
    /// what sampling draws from (map the chosen columns back with [`LmHead::token_ids`]).
    pub fn output_logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        tune_cpu_allocator();
        let weight = self.output_weight()?;
        if let Some(logits) = skinny_head(hidden, &weight)? {
            return Ok(logits);
        }
        project(hidden, &weight)
    }

    /// The greedy token of each row of output logits `[R, K]` (from [`LmHead::output_logits`]);
    /// ties go to the first column.
    pub fn greedy_ids(&self, output_logits: &Tensor) -> Result<Vec<i64>, ModelError> {
        self.token_ids(&argmax_columns(output_logits)?)
    }

    /// `log softmax(h·Wᵀ / temperature)[target]` for final hidden states `hidden [N, D]` and
    /// token ids `targets [N]`, as `logit[target]/T − logsumexp(logits/T)` over the output
    /// columns (the untrained rows past the tokenizer's ids are −inf in [`LmHead::logits`], so
    /// leaving them out gives the same value; under an [`OutputVocab`] the normalisation runs
    /// over its ids only and targets outside it are the caller's error). Logits are built for a
    /// chunk of positions at a time ([`CPU_LOGITS_CHUNK_BYTES`], [`GPU_LOGITS_CHUNK_BYTES`]), so
    /// no full `[N, V]` log-softmax is ever stored; with grad on, autograd keeps each chunk's
    /// logits for the backward pass.
    pub fn target_log_probs(
        &self,
        hidden: &Tensor,
        targets: &Tensor,
        temperature: f64,
    ) -> Result<Tensor, ModelError> {
        tune_cpu_allocator();
        let weight = self.output_weight()?.f_tr()?;
        let targets = match &self.output_vocab {
            Some(v) => v.position.f_index_select(0, targets)?,
            None => targets.shallow_clone(),
        };
        let vocab = weight.size()[1];
        let n = hidden.size()[0];
        let budget = if self.weight.device().is_cuda() {
            GPU_LOGITS_CHUNK_BYTES
        } else {
            CPU_LOGITS_CHUNK_BYTES
        };
        let chunk = (budget / (vocab * 4)).max(1);
        let mut parts = Vec::with_capacity((n / chunk + 1) as usize);
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let mut logits = hidden
                .f_narrow(0, start, len)?
                .f_matmul(&weight)?
                .f_to_kind(Kind::Float)?;
            if temperature != 1.0 {
                logits = logits.f_div_scalar(temperature)?;
            }
            let picked = logits
                .f_gather(
                    -1,
                    &targets.f_narrow(0, start, len)?.f_unsqueeze(-1)?,
                    false,
                )?
                .f_squeeze_dim(-1)?;
            parts.push(picked.f_sub(&logits.f_logsumexp([-1], false)?)?);
            start += len;
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }
}

/// `hidden [..., D] · weight [K, D]ᵀ` in f32 through libtorch.
fn project(hidden: &Tensor, weight: &Tensor) -> Result<Tensor, ModelError> {
    Ok(hidden.f_matmul(&weight.f_tr()?)?.f_to_kind(Kind::Float)?)
}

/// The column of the largest value of each row of f32 `logits [R, K]`: a row scan on the CPU
/// ([`cpu_head::argmax_rows`], several times faster than libtorch's argmax there), `argmax` on
/// other devices. Ties go to the first column on both.
pub fn argmax_columns(logits: &Tensor) -> Result<Vec<i64>, ModelError> {
    let rows = logits.size().first().copied().unwrap_or(0);
    if logits.device() == Device::Cpu && logits.kind() == Kind::Float && rows > 0 {
        let logits = logits.f_contiguous()?;
        let n = logits.numel();
        // SAFETY: a contiguous f32 CPU tensor of `n` elements, alive for the call.
        let values = unsafe { std::slice::from_raw_parts(logits.data_ptr() as *const f32, n) };
        let threads = tch::get_num_threads().max(1) as usize;
        return Ok(cpu_head::argmax_rows(values, rows as usize, threads)
            .into_iter()
            .map(|i| i as i64)
            .collect());
    }
    Ok(Vec::<i64>::try_from(
        logits
            .f_argmax(-1, false)?
            .f_flatten(0, -1)?
            .f_to_device(Device::Cpu)?,
    )?)
}

/// `hidden [..., D] x weight [V, D]^T` through [`cpu_head::matmul_transposed`] when it applies
/// (f32 on the CPU, at most [`cpu_head::MAX_ROWS`] rows, no autograd graph to record); `None`
/// leaves the product to libtorch.
fn skinny_head(hidden: &Tensor, weight: &Tensor) -> Result<Option<Tensor>, ModelError> {
    let mut shape = hidden.size();
    let (Some(&dim), Some(&vocab)) = (shape.last(), weight.size().first()) else {
        return Ok(None);
    };
    let rows = if dim > 0 {
        hidden.numel() as i64 / dim
    } else {
        0
    };
    let cpu_f32 = |t: &Tensor| t.device() == Device::Cpu && t.kind() == Kind::Float;
    if !cpu_f32(hidden)
        || !cpu_f32(weight)
        || rows == 0
        || rows as usize > cpu_head::MAX_ROWS
        || weight.size() != [vocab, dim]
        || (super::checkpoint::grad_mode_enabled()
            && (hidden.requires_grad() || weight.requires_grad()))
    {
        return Ok(None);
    }
    let hidden = hidden.f_contiguous()?;
    let weight = weight.f_contiguous()?;
    let last = shape.len() - 1;
    shape[last] = vocab;
    let out = Tensor::f_empty(&shape, (Kind::Float, Device::Cpu))?;
    let (rows, dim, vocab) = (rows as usize, dim as usize, vocab as usize);
    // SAFETY: all three are contiguous f32 CPU tensors of exactly these element counts, alive
    // for the whole call; `out` is freshly allocated and aliases neither input.
    unsafe {
        cpu_head::matmul_transposed(
            std::slice::from_raw_parts(hidden.data_ptr() as *const f32, rows * dim),
            rows,
            std::slice::from_raw_parts(weight.data_ptr() as *const f32, vocab * dim),
            dim,
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, rows * vocab),
            tch::get_num_threads().max(1) as usize,
        );
    }
    Ok(Some(out))
}

/// glibc: allocations below this come from the heap and are reused, instead of a fresh `mmap`
/// (and a page fault per 4 KiB) each time: decoding allocates and frees logits of
/// `rows × 151,665` floats (4.6 MiB for 8 rows) every step, and [`CPU_LOGITS_CHUNK_BYTES`] is
/// sized to this. glibc's own adaptive threshold stops at this value too.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// glibc: free heap memory kept for reuse before it is returned to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: i32 = 256 << 20;

/// Sets the glibc allocator thresholds above, once per process, on the head's first use: the
/// head's CPU paths are sized for them (other allocators and platforms are left alone).
fn tune_cpu_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static TUNED: std::sync::Once = std::sync::Once::new();
        TUNED.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; glibc takes its arena lock for
            // the change, so other threads may allocate meanwhile (later allocations see the new
            // thresholds).
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIM: i64 = 8;

    /// A head of `vocab` random rows (f32, CPU) and `rows` random hidden states.
    fn head_and_hidden(vocab: i64, rows: i64) -> (LmHead, Tensor) {
        tch::manual_seed(7);
        let weight = Tensor::randn([vocab, DIM], (Kind::Float, Device::Cpu));
        let hidden = Tensor::randn([rows, DIM], (Kind::Float, Device::Cpu));
        (LmHead::new(weight), hidden)
    }

    /// Plain reference: full logits, every id outside `allowed` at -inf, then log_softmax/argmax.
    fn reference(head: &LmHead, hidden: &Tensor, allowed: Option<&[i64]>) -> Tensor {
        let logits = hidden.matmul(&head.weight.tr());
        match allowed {
            None => logits,
            Some(ids) => {
                let outside: Vec<bool> =
                    (0..head.vocab_size()).map(|i| !ids.contains(&i)).collect();
                logits.masked_fill(&Tensor::from_slice(&outside), f64::NEG_INFINITY)
            }
        }
    }

    /// Largest difference where `b` is finite; both must be -inf at the same places.
    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let finite = b.isfinite();
        assert!(a.isfinite().equal(&finite), "-inf at different places");
        let zero = Tensor::zeros_like(b);
        let diff = (a.where_self(&finite, &zero) - b.where_self(&finite, &zero)).abs();
        f64::try_from(diff.max()).unwrap()
    }

    #[test]
    fn greedy_ids_and_target_log_probs_match_a_plain_softmax_over_full_logits() {
        let (mut head, hidden) = head_and_hidden(50, 5);
        let targets = Tensor::from_slice(&[3i64, 17, 17, 0, 42]);
        for allowed in [None, Some(&[0i64, 3, 17, 29, 42][..])] {
            match allowed {
                Some(ids) => head.restrict_output_vocab(ids).unwrap(),
                None => head.clear_output_vocab(),
            }
            let full = reference(&head, &hidden, allowed);
            let want_ids = Vec::<i64>::try_from(full.argmax(-1, false)).unwrap();
            let got_ids = head
                .greedy_ids(&head.output_logits(&hidden).unwrap())
                .unwrap();
            assert_eq!(got_ids, want_ids, "{allowed:?}");
            for temperature in [1.0, 0.7] {
                let want = (&full / temperature)
                    .log_softmax(-1, Kind::Float)
                    .gather(-1, &targets.unsqueeze(-1), false)
                    .squeeze_dim(-1);
                let got = head
                    .target_log_probs(&hidden, &targets, temperature)
                    .unwrap();
                assert!(max_diff(&got, &want) < 1e-5, "{allowed:?} at {temperature}");
            }
            // full-width logits: the same values, -inf outside the output vocabulary
            let logits = head.logits(&hidden).unwrap();
            assert!(max_diff(&logits, &full) < 1e-5, "{allowed:?}");
        }
    }

    #[test]
    fn output_columns_map_back_to_token_ids() {
        let (mut head, _) = head_and_hidden(20, 1);
        assert_eq!(head.token_ids(&[4, 0]).unwrap(), [4, 0]);
        head.restrict_output_vocab(&[9, 2, 9, 5]).unwrap();
        assert_eq!(head.output_vocab().unwrap().ids, [2, 5, 9]);
        assert_eq!(head.token_ids(&[2, 0]).unwrap(), [9, 2]);
        assert!(head.token_ids(&[3]).is_err());
        assert!(head.restrict_output_vocab(&[20]).is_err());
        assert!(head.restrict_output_vocab(&[]).is_err());
    }

    #[test]
    fn the_cpu_fast_path_agrees_with_libtorch() {
        // 3 rows take the CPU kernel; under grad the same product goes through libtorch
        let (head, hidden) = head_and_hidden(300, 3);
        let fast = tch::no_grad(|| head.output_logits(&hidden)).unwrap();
        let slow = hidden.matmul(&head.weight.tr());
        assert!(max_diff(&fast, &slow) < 1e-5);
    }

    #[test]
    fn the_untrained_rows_past_the_tokenizer_are_masked() {
        let weight = Tensor::zeros([TOKENIZER_VOCAB + 3, 2], (Kind::Float, Device::Cpu));
        let head = LmHead::new(weight);
        let logits = head
            .logits(&Tensor::ones([1, 2], (Kind::Float, Device::Cpu)))
            .unwrap();
        let tail =
            Vec::<f32>::try_from(logits.view([-1]).narrow(0, TOKENIZER_VOCAB - 1, 4)).unwrap();
        assert_eq!(
            tail,
            [0.0, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY]
        );
        let columns = head
            .output_logits(&Tensor::ones([1, 2], (Kind::Float, Device::Cpu)))
            .unwrap();
        assert_eq!(columns.size(), [1, TOKENIZER_VOCAB]);
    }

    #[test]
    fn a_saved_output_vocabulary_is_read_or_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join(OUTPUT_VOCAB_FILE);
        std::fs::write(&good, "[5, 1, 9]").unwrap();
        assert_eq!(read_output_vocab(&good).unwrap(), [5, 1, 9]);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"ids\": 1}").unwrap();
        let err = read_output_vocab(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.json"), "{err}");
        let err = read_output_vocab(&dir.path().join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.json"), "{err}");
    }
}
