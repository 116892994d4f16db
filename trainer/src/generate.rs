//! Batched generation with a preallocated KV cache, and teacher-forced response log-probs.
//!
//! Prompts are left-padded to one width; `n` samples per prompt share one prefill whose cache is
//! repeated into the decode cache. Sampling (temperature, top-k, top-p, greedy) draws from a
//! caller-owned [`SamplerRng`], so a run is reproducible from its seed. The per-token log-probs
//! returned are those of the temperature-scaled full distribution, the same quantity
//! [`response_logprobs`] recomputes for GRPO.

use tch::{Kind, Tensor};

use crate::model::{
    cpu_head, get_rope_index, KvCache, LogitsAt, ModelError, Qwen2_5VLForConditionalGeneration,
    VisionInputs,
};
use crate::tokenizer::{ENDOFTEXT_ID, IM_END_ID, TOKENIZER_VOCAB};

/// Token ids that end a sample by default: `<|im_end|>`, `<|endoftext|>`.
pub const DEFAULT_STOP_IDS: [i64; 2] = [IM_END_ID, ENDOFTEXT_ID];

/// Unpadded prompts of one batch with their images.
#[derive(Debug)]
pub struct PromptBatch {
    /// One id list per prompt (image pads already expanded).
    pub input_ids: Vec<Vec<i64>>,
    /// Images of all prompts, in prompt order.
    pub images: Option<VisionInputs>,
}

/// How to pick tokens.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    pub max_new_tokens: usize,
    /// Always take the arg-max (temperature, top-k and top-p are then ignored).
    pub greedy: bool,
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables.
    pub top_p: f64,
    /// Keep the k most likely ids; 0 disables.
    pub top_k: usize,
    /// Ids that end a sample (kept as its last id).
    pub stop_token_ids: Vec<i64>,
    /// Id used for left padding and fed to finished rows.
    pub pad_token_id: i64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 256,
            greedy: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            stop_token_ids: DEFAULT_STOP_IDS.to_vec(),
            pad_token_id: ENDOFTEXT_ID,
        }
    }
}

/// A small seeded generator (SplitMix64) owned by the caller.
#[derive(Debug, Clone)]
pub struct SamplerRng {
    state: u64,
}

impl SamplerRng {
    /// A generator whose stream depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        SamplerRng { state: seed }
    }

    /// The whole generator state (store it in a checkpoint; [`SamplerRng::new`] with it resumes
    /// the same stream).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index of its prompt in the batch.
    pub prompt_index: usize,
    /// New ids, including the stop id when one ended it.
    pub ids: Vec<i64>,
    /// Log-prob of each id under the temperature-scaled distribution (f32 log-softmax).
    pub logprobs: Vec<f32>,
    /// Whether a stop id ended it (else `max_new_tokens` did).
    pub stopped: bool,
}

/// Left-pads rows to one width: `(ids, mask)` as row vectors.
pub fn left_pad(rows: &[Vec<i64>], pad: i64) -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    let seqs: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
    let (ids, mask, width) = crate::processor::left_pad(&seqs, pad);
    if width == 0 {
        return (vec![Vec::new(); rows.len()], vec![Vec::new(); rows.len()]);
    }
    let split = |flat: Vec<i64>| flat.chunks(width).map(<[i64]>::to_vec).collect();
    (split(ids), split(mask))
}

fn to_tensor(rows: &[Vec<i64>]) -> Result<Tensor, ModelError> {
    let width = rows.first().map_or(0, Vec::len) as i64;
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_slice(&flat).f_view([rows.len() as i64, width])?)
}

/// Chooses the next id per row from f32 `logits [R, V]`; returns `(ids, logprobs)`.
///
/// Everything but one uniform draw per row runs on the logits' device: the candidates (all ids,
/// the top-k, or all ids sorted when top-p is on) are turned into probabilities, top-p keeps the
/// smallest prefix whose mass reaches `top_p`, and the id is found by inverse-CDF search with the
/// row's draw from `rng`. The log-prob returned is that of the full temperature-scaled
/// distribution.
pub fn choose(
    logits: &Tensor,
    cfg: &SamplingConfig,
    rng: &mut SamplerRng,
) -> Result<(Vec<i64>, Vec<f32>), ModelError> {
    let rows = logits.size()[0];
    let temperature = if cfg.greedy { 1.0 } else { cfg.temperature };
    if temperature <= 0.0 {
        return Err(ModelError::Input(format!(
            "temperature must be > 0, got {temperature}"
        )));
    }
    if cfg.greedy {
        let ids = greedy_ids(logits)?;
        let chosen = Tensor::f_from_slice(&ids)?
            .f_view([rows, 1])?
            .f_to_device(logits.device())?;
        let lp = logits
            .f_log_softmax(-1, Kind::Float)?
            .f_gather(-1, &chosen, false)?;
        let lp = Vec::<f32>::try_from(lp.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
        return Ok((ids, lp));
    }
    let logp = logits
        .f_div_scalar(temperature)?
        .f_log_softmax(-1, Kind::Float)?;
    let chosen = {
        let vocab = logp.size()[1];
        let (cand_lp, cand_ids) = if cfg.top_k > 0 && (cfg.top_k as i64) < vocab {
            let (v, i) = logp.f_topk(cfg.top_k as i64, -1, true, true)?;
            (v, Some(i))
        } else if cfg.top_p < 1.0 {
            let (v, i) = logp.f_sort(-1, true)?;
            (v, Some(i))
        } else {
            (logp.shallow_clone(), None)
        };
        let mut probs = cand_lp.f_exp()?;
        if cfg.top_p < 1.0 {
            // keep candidate i while the mass before it is below top_p (the first always stays)
            let before = probs.f_cumsum(-1, Kind::Float)?.f_sub(&probs)?;
            probs = probs.f_mul(&before.f_lt(cfg.top_p)?.f_to_kind(Kind::Float)?)?;
        }
        let cdf = probs.f_cumsum(-1, Kind::Float)?;
        let total = cdf.f_narrow(-1, cdf.size()[1] - 1, 1)?;
        let draws: Vec<f64> = (0..rows).map(|_| rng.next_f64()).collect();
        let u = Tensor::f_from_slice(&draws)?
            .f_to_kind(Kind::Float)?
            .f_to_device(logp.device())?
            .f_view([rows, 1])?
            .f_mul(&total)?;
        let pos = u
            .f_searchsorted(&cdf, false, true, "right", None::<Tensor>)?
            .f_clamp_max(cdf.size()[1] - 1)?;
        match cand_ids {
            Some(ids) => ids.f_gather(-1, &pos, false)?,
            None => pos,
        }
    };
    let lp = logp.f_gather(-1, &chosen, false)?;
    let ids = Vec::<i64>::try_from(chosen.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
    let lp = Vec::<f32>::try_from(lp.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
    Ok((ids, lp))
}

/// The greedy id of each row of f32 `logits [R, V]`: a row scan on the CPU
/// ([`cpu_head::argmax_rows`], several times faster than libtorch's argmax there), `argmax` on
/// other devices. Ties go to the first index on both.
pub fn greedy_ids(logits: &Tensor) -> Result<Vec<i64>, ModelError> {
    let rows = logits.size().first().copied().unwrap_or(0);
    if logits.device() == tch::Device::Cpu && logits.kind() == Kind::Float && rows > 0 {
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
            .f_to_device(tch::Device::Cpu)?,
    )?)
}

/// Generates `n_samples` continuations per prompt (rows ordered prompt-major). Runs without grad.
pub fn generate(
    model: &Qwen2_5VLForConditionalGeneration,
    batch: &PromptBatch,
    n_samples: usize,
    cfg: &SamplingConfig,
    rng: &mut SamplerRng,
) -> Result<Vec<Sample>, ModelError> {
    let width = batch.input_ids.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let rows = (batch.input_ids.len() * n_samples) as i64;
    let mut cache = KvCache::new(
        &model.config,
        rows,
        width + cfg.max_new_tokens as i64,
        model.device(),
        model.kind(),
    )?;
    generate_with_cache(model, batch, n_samples, cfg, rng, &mut cache)
}

/// [`generate`] into a caller-provided empty cache of `prompts * n_samples` rows and at least
/// `prompt width + max_new_tokens` slots (reuse it across calls to avoid reallocation).
pub fn generate_with_cache(
    model: &Qwen2_5VLForConditionalGeneration,
    batch: &PromptBatch,
    n_samples: usize,
    cfg: &SamplingConfig,
    rng: &mut SamplerRng,
    cache: &mut KvCache,
) -> Result<Vec<Sample>, ModelError> {
    let _guard = tch::no_grad_guard();
    if batch.input_ids.is_empty() || batch.input_ids.iter().any(Vec::is_empty) || n_samples == 0 {
        return Err(ModelError::Input(
            "generate needs non-empty prompts and n_samples >= 1".into(),
        ));
    }
    let device = model.device();
    let (ids, mask) = left_pad(&batch.input_ids, cfg.pad_token_id);
    let grids = batch
        .images
        .as_ref()
        .map_or(&[][..], |i| i.image_grid_thw.as_slice());
    let rope = get_rope_index(&model.config, &ids, &mask, grids)?;
    let n = n_samples as i64;
    let prompts = ids.len() as i64;
    let width = ids[0].len() as i64;
    if cache.batch() != prompts * n || cache.capacity() < width + cfg.max_new_tokens as i64 {
        return Err(ModelError::Input(format!(
            "cache of {} rows x {} slots, need {} x {}",
            cache.batch(),
            cache.capacity(),
            prompts * n,
            width + cfg.max_new_tokens as i64
        )));
    }
    let mask_t = to_tensor(&mask)?.f_to_device(device)?;
    let mut prefill = KvCache::new(&model.config, prompts, width, device, model.kind())?;
    let logits = model.forward(
        &to_tensor(&ids)?,
        &rope.to_tensor(device)?,
        &mask_t,
        batch.images.as_ref(),
        Some(&mut prefill),
        LogitsAt::Hidden,
    )?;
    let logits = model.compact_logits(&logits.f_narrow(1, width - 1, 1)?)?;
    cache.fill_repeated(&prefill, n)?;
    drop(prefill);
    let mut logits = logits
        .f_squeeze_dim(1)?
        .f_repeat_interleave_self_int(n, 0, None)?;
    let mut attn = mask_t.f_repeat_interleave_self_int(n, 0, None)?;
    let mut next_pos: Vec<i64> = rope
        .next_position
        .iter()
        .flat_map(|&p| std::iter::repeat_n(p, n_samples))
        .collect();
    let mut samples: Vec<Sample> = (0..prompts as usize * n_samples)
        .map(|r| Sample {
            prompt_index: r / n_samples,
            ids: Vec::new(),
            logprobs: Vec::new(),
            stopped: false,
        })
        .collect();
    for step in 0..cfg.max_new_tokens {
        let (next, lps) = choose(&logits, cfg, rng)?;
        let next: Vec<i64> = match model.output_vocab() {
            Some(v) => next.iter().map(|&p| v.ids[p as usize]).collect(),
            None => next,
        };
        let mut feed = Vec::with_capacity(next.len());
        for (s, (id, lp)) in samples.iter_mut().zip(next.into_iter().zip(lps)) {
            if s.stopped {
                feed.push(cfg.pad_token_id);
                continue;
            }
            s.ids.push(id);
            s.logprobs.push(lp);
            s.stopped = cfg.stop_token_ids.contains(&id);
            feed.push(id);
        }
        if samples.iter().all(|s| s.stopped) || step + 1 == cfg.max_new_tokens {
            break;
        }
        let input = Tensor::from_slice(&feed).f_view([prompts * n, 1])?;
        let pos = Tensor::from_slice(&next_pos)
            .f_view([1, prompts * n, 1])?
            .f_expand([3, prompts * n, 1], false)?;
        let ones = Tensor::f_ones([prompts * n, 1], (Kind::Int64, device))?;
        attn = Tensor::f_cat(&[&attn, &ones], 1)?;
        let hidden = model.forward(&input, &pos, &attn, None, Some(cache), LogitsAt::Hidden)?;
        logits = model.compact_logits(&hidden)?.f_squeeze_dim(1)?;
        next_pos.iter_mut().for_each(|p| *p += 1);
    }
    Ok(samples)
}

/// Prompts with given responses, for teacher-forced log-probs.
#[derive(Debug)]
pub struct ResponseBatch {
    pub prompts: Vec<Vec<i64>>,
    pub responses: Vec<Vec<i64>>,
    /// Images of all prompts, in prompt order.
    pub images: Option<VisionInputs>,
}

/// Bytes of f32 logits materialised at once by [`target_logprobs`] on the CPU: 32 MiB, the
/// largest block glibc's allocator serves from its heap instead of fresh zeroed pages.
pub const CPU_LOGITS_CHUNK_BYTES: i64 = 32 << 20;
/// The same bound on a GPU (fewer, larger matmuls).
pub const GPU_LOGITS_CHUNK_BYTES: i64 = 1 << 30;

/// `log softmax(h·Wᵀ / temperature)[target]` for final hidden states `hidden [N, D]` and
/// `targets [N]`, as `logit[target]/T − logsumexp(logits/T)` over the tokenizer's ids only
/// (the untrained rows past them are −inf in [`Qwen2_5VLForConditionalGeneration::logits`], so
/// leaving them out gives the same value). Logits are built for a chunk of positions at a time,
/// so no full `[N, V]` log-softmax is ever stored; with grad on, autograd keeps each chunk's
/// logits for the backward pass. Under the model's [`crate::model::OutputVocab`] the
/// normalisation runs over its ids only (targets outside it are the caller's error).
pub fn target_logprobs(
    model: &Qwen2_5VLForConditionalGeneration,
    hidden: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> Result<Tensor, ModelError> {
    let (weight, targets) = match model.output_vocab() {
        Some(v) => (
            model.lm_head.f_index_select(0, &v.ids_tensor)?.f_tr()?,
            v.position.f_index_select(0, targets)?,
        ),
        None => {
            let vocab = model.config.text.vocab_size.min(TOKENIZER_VOCAB);
            (
                model.lm_head.f_narrow(0, 0, vocab)?.f_tr()?,
                targets.shallow_clone(),
            )
        }
    };
    let vocab = weight.size()[1];
    let n = hidden.size()[0];
    let budget = if model.device().is_cuda() {
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

/// Teacher-forced log-probs, right-aligned per row.
#[derive(Debug)]
pub struct ResponseLogprobs {
    /// `[B, R]` f32 log-probs of response token j of row i at `[i, j]` (R = longest response);
    /// carries grad when grad mode is on.
    pub logprobs: Tensor,
    /// `[B, R]` f32, 1 where `logprobs` is a real response token.
    pub mask: Tensor,
}

/// Log-probs of each response token given its prompt and preceding response tokens, from one
/// forward over `prompt + response` (left-padded). Only response positions go through `lm_head`
/// and the normalisation ([`target_logprobs`]), at `temperature`. Runs with whatever grad mode
/// the caller has set.
pub fn response_logprobs(
    model: &Qwen2_5VLForConditionalGeneration,
    batch: &ResponseBatch,
    temperature: f64,
    pad_token_id: i64,
) -> Result<ResponseLogprobs, ModelError> {
    if batch.prompts.len() != batch.responses.len() || batch.prompts.is_empty() {
        return Err(ModelError::Input(format!(
            "{} prompts but {} responses",
            batch.prompts.len(),
            batch.responses.len()
        )));
    }
    if temperature <= 0.0 {
        return Err(ModelError::Input(format!(
            "temperature must be > 0, got {temperature}"
        )));
    }
    let device = model.device();
    let full: Vec<Vec<i64>> = batch
        .prompts
        .iter()
        .zip(&batch.responses)
        .map(|(p, r)| p.iter().chain(r).copied().collect())
        .collect();
    let (ids, mask) = left_pad(&full, pad_token_id);
    let grids = batch
        .images
        .as_ref()
        .map_or(&[][..], |i| i.image_grid_thw.as_slice());
    let rope = get_rope_index(&model.config, &ids, &mask, grids)?;
    let width = ids[0].len() as i64;
    let r_max = batch.responses.iter().map(Vec::len).max().unwrap_or(0) as i64;
    // hidden state at slot p predicts the token at p + 1
    let mut index = Vec::with_capacity((ids.len() as i64 * r_max) as usize);
    let mut targets = Vec::with_capacity(index.capacity());
    let mut valid = Vec::with_capacity(index.capacity());
    for (row, resp) in batch.responses.iter().enumerate() {
        let start = width - resp.len() as i64;
        for j in 0..r_max {
            let real = j < resp.len() as i64;
            index.push(if real { start + j - 1 } else { width - 1 });
            targets.push(if real { resp[j as usize] } else { 0 });
            valid.push(if real { 1f32 } else { 0f32 });
        }
        if start < 1 {
            return Err(ModelError::Input(format!("row {row}: empty prompt")));
        }
    }
    let b = ids.len() as i64;
    let index = Tensor::from_slice(&index)
        .f_view([b, r_max])?
        .f_to_device(device)?;
    let hidden = model.forward(
        &to_tensor(&ids)?,
        &rope.to_tensor(device)?,
        &to_tensor(&mask)?,
        batch.images.as_ref(),
        None,
        LogitsAt::HiddenAt(&index),
    )?;
    let targets = Tensor::from_slice(&targets).f_to_device(device)?;
    let lp = target_logprobs(model, &hidden.f_flatten(0, 1)?, &targets, temperature)?
        .f_view([b, r_max])?;
    let mask = Tensor::from_slice(&valid)
        .f_view([b, r_max])?
        .f_to_device(device)?;
    let lp = lp.f_mul(&mask)?;
    Ok(ResponseLogprobs { logprobs: lp, mask })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_pad_aligns_right() {
        let (ids, mask) = left_pad(&[vec![1, 2, 3], vec![4]], 0);
        assert_eq!(ids, vec![vec![1, 2, 3], vec![0, 0, 4]]);
        assert_eq!(mask, vec![vec![1, 1, 1], vec![0, 0, 1]]);
    }

    fn sampled_frequencies(cfg: &SamplingConfig, draws: usize) -> Vec<f64> {
        // probabilities 0.5, 0.3, 0.2 at ids 2, 0, 1 of a 4-id vocabulary (id 3 impossible)
        let logits =
            Tensor::from_slice(&[0.3f32.ln(), 0.2f32.ln(), 0.5f32.ln(), f32::NEG_INFINITY])
                .view([1, 4])
                .repeat([draws as i64, 1]);
        let mut rng = SamplerRng::new(3);
        let (ids, lps) = choose(&logits, cfg, &mut rng).unwrap();
        let mut counts = [0usize; 4];
        for (id, lp) in ids.iter().zip(&lps) {
            counts[*id as usize] += 1;
            let p = [0.3f32, 0.2, 0.5][*id as usize];
            assert!(
                (lp - p.ln()).abs() < 1e-5,
                "log-prob of the full distribution"
            );
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn sampling_follows_probabilities_and_top_p_top_k() {
        let base = SamplingConfig::default();
        let f = sampled_frequencies(&base, 20000);
        assert!(
            (f[2] - 0.5).abs() < 0.02 && (f[0] - 0.3).abs() < 0.02,
            "{f:?}"
        );
        assert_eq!(f[3], 0.0);
        // top_p 0.45 keeps only the most likely id; 0.6 keeps the two most likely (0.5 + 0.3)
        let f = sampled_frequencies(
            &SamplingConfig {
                top_p: 0.45,
                ..base.clone()
            },
            2000,
        );
        assert_eq!(f[2], 1.0, "{f:?}");
        let f = sampled_frequencies(
            &SamplingConfig {
                top_p: 0.6,
                ..base.clone()
            },
            20000,
        );
        assert!((f[2] - 0.625).abs() < 0.02 && f[1] == 0.0, "{f:?}");
        // top_k 1 is greedy
        let f = sampled_frequencies(&SamplingConfig { top_k: 1, ..base }, 500);
        assert_eq!(f[2], 1.0, "{f:?}");
    }

    #[test]
    fn rng_is_reproducible() {
        let a: Vec<u64> = (0..4)
            .scan(SamplerRng::new(9), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(SamplerRng::new(9), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a[0], SamplerRng::new(10).next_u64());
    }
}
