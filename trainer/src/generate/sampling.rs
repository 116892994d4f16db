//! Token choice: [`SamplingConfig`] (greedy, or temperature with top-k / top-p) and the sampler
//! drawing from a caller-owned, seeded [`SplitMix64`], so a run is reproducible from its seed
//! and resumes bit for bit from the generator's [`SplitMix64::state`].

use data::rng::SplitMix64;
use tch::{Device, Kind, Tensor};

use crate::model::lm_head::argmax_columns;
use crate::model::ModelError;
use crate::tokenizer::{ENDOFTEXT_ID, IM_END_ID};

/// Token ids that end a sample by default: `<|im_end|>`, `<|endoftext|>`.
pub const DEFAULT_STOP_IDS: [i64; 2] = [IM_END_ID, ENDOFTEXT_ID];

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq)]
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
    /// Return each token's log-prob. Sampling gets it for free; a greedy pick needs one more
    /// pass over the logits (a log-softmax), skipped when off (the log-probs are then NaN):
    /// `infer`, `eval`, `serve` and `bench generate` turn it off, rollouts keep it on.
    pub logprobs: bool,
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
            logprobs: true,
        }
    }
}

impl SamplingConfig {
    /// The defaults at `temperature`, where 0 means greedy (as in EasyR1's rollout config and
    /// OpenAI's API). The one place that rule is decided.
    pub fn from_temperature(temperature: f64) -> Self {
        SamplingConfig::default().with_temperature(temperature)
    }

    /// This config at `temperature` (0 = greedy, see [`SamplingConfig::from_temperature`]).
    pub fn with_temperature(self, temperature: f64) -> Self {
        let greedy = temperature == 0.0;
        SamplingConfig {
            greedy,
            temperature: if greedy { 1.0 } else { temperature },
            ..self
        }
    }
}

/// Chooses the next output column per row of f32 `logits [R, K]`; returns `(columns, logprobs)`.
/// Draws one uniform per row from `rng` (none when greedy), then [`choose_with_draws`].
pub fn choose(
    logits: &Tensor,
    cfg: &SamplingConfig,
    rng: &mut SplitMix64,
) -> Result<(Vec<i64>, Vec<f32>), ModelError> {
    let rows = logits.size()[0] as usize;
    let draws: Vec<f64> = if cfg.greedy {
        Vec::new()
    } else {
        (0..rows).map(|_| rng.unit()).collect()
    };
    choose_to_host(logits, cfg, &draws)
}

/// The sampling rule, with row `r`'s uniform draw `draws[r]` given (so each row may have its
/// own generator; greedy takes none). Returns the chosen columns `[R]` (int64) and their
/// log-probs `[R]` (f32), left on the logits' device.
///
/// Everything runs on the logits' device: the candidates (all columns, the top-k, or all
/// columns sorted when top-p is on) are turned into probabilities, top-p keeps the smallest
/// prefix whose mass reaches `top_p`, and the column is found by inverse-CDF search with the
/// row's draw. The log-prob returned is that of the full temperature-scaled distribution
/// (temperature 1 when greedy). Every operation is row-wise, so a row's choice does not depend
/// on the other rows.
pub fn choose_with_draws(
    logits: &Tensor,
    cfg: &SamplingConfig,
    draws: &[f64],
) -> Result<(Tensor, Tensor), ModelError> {
    let rows = logits.size()[0];
    let temperature = if cfg.greedy { 1.0 } else { cfg.temperature };
    if temperature <= 0.0 {
        return Err(ModelError::Input(format!(
            "temperature must be > 0, got {temperature}"
        )));
    }
    if !cfg.greedy && draws.len() as i64 != rows {
        return Err(ModelError::Input(format!(
            "{} draws for {rows} rows",
            draws.len()
        )));
    }
    if cfg.greedy {
        let chosen = if logits.device() == Device::Cpu {
            Tensor::f_from_slice(&argmax_columns(logits)?)?
        } else {
            logits.f_argmax(-1, false)?
        }
        .f_view([rows, 1])?;
        let lp = if cfg.logprobs {
            logits
                .f_log_softmax(-1, Kind::Float)?
                .f_gather(-1, &chosen, false)?
        } else {
            Tensor::f_full([rows, 1], f64::NAN, (Kind::Float, logits.device()))?
        };
        return Ok((chosen.f_flatten(0, -1)?, lp.f_flatten(0, -1)?));
    }
    if cfg.top_k == 0 && cfg.top_p >= 1.0 {
        return sample_full(logits, temperature, draws);
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
        let u = Tensor::f_from_slice(draws)?
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
    Ok((chosen.f_flatten(0, -1)?, lp.f_flatten(0, -1)?))
}

/// Columns searched together by [`sample_full`]'s first level.
const SAMPLE_BLOCK: i64 = 1024;

/// Inverse-CDF sampling from the whole temperature-scaled distribution (no top-k, no top-p), in
/// two levels so that no cumulative sum runs over the whole vocabulary: `e = exp(x/T - max)`,
/// the sum of each block of [`SAMPLE_BLOCK`] columns, the block where the row's draw `u · Σe`
/// falls (a cumulative sum over ~150 block sums), then the column inside that block (a
/// cumulative sum over one block). The same distribution as one search over the whole
/// cumulative sum, in about a third of the passes over the logits; the log-prob is
/// `x_c/T - max - ln Σe`.
fn sample_full(
    logits: &Tensor,
    temperature: f64,
    draws: &[f64],
) -> Result<(Tensor, Tensor), ModelError> {
    let (rows, vocab) = (logits.size()[0], logits.size()[1]);
    let device = logits.device();
    let scaled = if temperature == 1.0 {
        logits.shallow_clone()
    } else {
        logits.f_div_scalar(temperature)?
    };
    let max = scaled.f_amax(-1, true)?;
    let mut e = scaled.f_sub(&max)?;
    e = e.f_exp_()?;
    // first level: each block's mass
    let full = vocab / SAMPLE_BLOCK;
    let mut sums = vec![e
        .f_narrow(1, 0, full * SAMPLE_BLOCK)?
        .f_view([rows, full, SAMPLE_BLOCK])?
        .f_sum_dim_intlist(-1, false, Kind::Float)?];
    if vocab > full * SAMPLE_BLOCK {
        sums.push(
            e.f_narrow(1, full * SAMPLE_BLOCK, vocab - full * SAMPLE_BLOCK)?
                .f_sum_dim_intlist(-1, true, Kind::Float)?,
        );
    }
    let block_mass = Tensor::f_cat(&sums, 1)?;
    let blocks = block_mass.size()[1];
    let block_cdf = block_mass.f_cumsum(-1, Kind::Float)?;
    let total = block_cdf.f_narrow(1, blocks - 1, 1)?;
    let u = Tensor::f_from_slice(draws)?
        .f_to_kind(Kind::Float)?
        .f_to_device(device)?
        .f_view([rows, 1])?
        .f_mul(&total)?;
    let block = u
        .f_searchsorted(&block_cdf, false, true, "right", None::<Tensor>)?
        .f_clamp_max(blocks - 1)?;
    let before = block_cdf
        .f_gather(1, &block, false)?
        .f_sub(&block_mass.f_gather(1, &block, false)?)?;
    // second level: the column inside the chosen block
    let offsets =
        Tensor::f_arange(SAMPLE_BLOCK, (Kind::Int64, device))?.f_view([1, SAMPLE_BLOCK])?;
    let columns = block.f_mul_scalar(SAMPLE_BLOCK)?.f_add(&offsets)?;
    let inside = columns.f_lt(vocab)?;
    let columns = columns.f_clamp_max(vocab - 1)?;
    let mass = e
        .f_gather(1, &columns, false)?
        .f_mul(&inside.f_to_kind(Kind::Float)?)?;
    let cdf = mass.f_cumsum(-1, Kind::Float)?.f_add(&before)?;
    let last = inside
        .f_sum_dim_intlist(-1, true, Kind::Int64)?
        .f_sub_scalar(1)?;
    let pos = u
        .f_searchsorted(&cdf, false, true, "right", None::<Tensor>)?
        .f_minimum(&last)?;
    let chosen = columns.f_gather(1, &pos, false)?;
    let lp = scaled
        .f_gather(1, &chosen, false)?
        .f_sub(&max)?
        .f_sub(&total.f_log()?)?;
    Ok((chosen.f_flatten(0, -1)?, lp.f_flatten(0, -1)?))
}

/// [`choose_with_draws`] with its results on the host. A greedy pick on the CPU without
/// log-probs takes the row scan's columns as they are, with no tensor round trip.
pub fn choose_to_host(
    logits: &Tensor,
    cfg: &SamplingConfig,
    draws: &[f64],
) -> Result<(Vec<i64>, Vec<f32>), ModelError> {
    if cfg.greedy && !cfg.logprobs && logits.device() == Device::Cpu {
        let columns = argmax_columns(logits)?;
        let logprobs = vec![f32::NAN; columns.len()];
        return Ok((columns, logprobs));
    }
    let (columns, logprobs) = choose_with_draws(logits, cfg, draws)?;
    to_host(&columns, &logprobs)
}

/// Columns `[R]` and log-probs `[R]` of [`choose_with_draws`] to the host in one transfer (the
/// one synchronisation a decode step needs on an accelerator): both travel as f64, which holds
/// every column index and every f32 exactly.
pub fn to_host(columns: &Tensor, logprobs: &Tensor) -> Result<(Vec<i64>, Vec<f32>), ModelError> {
    let rows = columns.size()[0] as usize;
    let both = Tensor::f_cat(
        &[
            columns.f_to_kind(Kind::Double)?,
            logprobs.f_to_kind(Kind::Double)?,
        ],
        0,
    )?
    .f_to_device(Device::Cpu)?;
    let both = Vec::<f64>::try_from(both)?;
    let columns = both[..rows].iter().map(|&c| c as i64).collect();
    let logprobs = both[rows..].iter().map(|&l| l as f32).collect();
    Ok((columns, logprobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled_frequencies(cfg: &SamplingConfig, draws: usize) -> Vec<f64> {
        // probabilities 0.5, 0.3, 0.2 at ids 2, 0, 1 of a 4-id vocabulary (id 3 impossible)
        let logits =
            Tensor::from_slice(&[0.3f32.ln(), 0.2f32.ln(), 0.5f32.ln(), f32::NEG_INFINITY])
                .view([1, 4])
                .repeat([draws as i64, 1]);
        let mut rng = SplitMix64::new(3);
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

    /// The two-level search over a vocabulary of several blocks draws each column with its
    /// probability and returns the full log-softmax of the column drawn.
    #[test]
    fn the_full_distribution_is_sampled_across_blocks() {
        let vocab = 2 * SAMPLE_BLOCK as usize + 300;
        let mut logits = vec![-30f32; vocab];
        // mass 0.1 / 0.2 / 0.3 / 0.4 in three different blocks (two in the last, partial one)
        let picks = [5usize, 1500, 2100, 2347];
        for (i, &c) in picks.iter().enumerate() {
            logits[c] = ((i + 1) as f32 / 10.0).ln();
        }
        let row = Tensor::from_slice(&logits).view([1, vocab as i64]);
        let draws = 20000;
        let x = row.repeat([draws as i64, 1]);
        let mut rng = SplitMix64::new(11);
        let u: Vec<f64> = (0..draws).map(|_| rng.unit()).collect();
        let cfg = SamplingConfig::default();
        let (cols, lps) = choose_with_draws(&x, &cfg, &u).unwrap();
        let (cols, lps) = to_host(&cols, &lps).unwrap();
        let want = row.log_softmax(-1, Kind::Float);
        for (c, lp) in cols.iter().zip(&lps) {
            assert!((f64::from(*lp) - want.double_value(&[0, *c])).abs() < 1e-5);
        }
        for (i, &c) in picks.iter().enumerate() {
            let f = cols.iter().filter(|&&x| x == c as i64).count() as f64 / draws as f64;
            assert!((f - (i + 1) as f64 / 10.0).abs() < 0.015, "column {c}: {f}");
        }
        assert!(cols.iter().all(|c| picks.contains(&(*c as usize))));
        // a draw at the top of the range takes the last column with mass
        let (c, _) = choose_with_draws(&row, &cfg, &[1.0 - 1e-12]).unwrap();
        assert_eq!(i64::try_from(c.get(0)).unwrap(), 2347);
    }

    #[test]
    fn temperature_zero_is_greedy_and_takes_no_draw() {
        let cfg = SamplingConfig::from_temperature(0.0);
        assert!(cfg.greedy && cfg.temperature == 1.0);
        let cfg = SamplingConfig::from_temperature(0.7);
        assert!(!cfg.greedy && cfg.temperature == 0.7);
        let kept = SamplingConfig {
            max_new_tokens: 9,
            ..SamplingConfig::default()
        }
        .with_temperature(0.0);
        assert!(kept.greedy && kept.max_new_tokens == 9);

        let logits = Tensor::from_slice(&[0.1f32, 2.0, 2.0, -1.0, 5.0, 0.0]).view([2, 3]);
        let mut rng = SplitMix64::new(5);
        let (ids, lps) = choose(&logits, &SamplingConfig::from_temperature(0.0), &mut rng).unwrap();
        assert_eq!(ids, [1, 1], "first maximum");
        let want = logits.log_softmax(-1, Kind::Float);
        assert!((f64::from(lps[1]) - want.double_value(&[1, 1])).abs() < 1e-6);
        assert_eq!(rng.state(), 5, "greedy draws nothing");
        // a negative temperature is refused, not taken as greedy
        let bad = SamplingConfig::from_temperature(-1.0);
        assert!(choose(&logits, &bad, &mut rng).is_err());
    }

    #[test]
    fn draws_are_the_seeded_splitmix64_stream() {
        // the stream the trainer's checkpoints were written with (SplitMix64, 53-bit uniforms)
        let mut rng = SplitMix64::new(1234567);
        assert_eq!(rng.next_u64(), 6457827717110365317);
        let mut a = SplitMix64::new(9);
        let mut b = SplitMix64::new(9);
        let logits = Tensor::from_slice(&[0.0f32; 8]).view([2, 4]);
        let cfg = SamplingConfig::default();
        let first = choose(&logits, &cfg, &mut a).unwrap();
        assert_eq!(first, choose(&logits, &cfg, &mut b).unwrap());
        // one uniform per row: the state advanced twice
        let mut two = SplitMix64::new(9);
        two.next_u64();
        two.next_u64();
        assert_eq!(a.state(), two.state());
    }
}
