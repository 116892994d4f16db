//! The generation engine: continuous batching over a KV pool of fixed capacity. Every caller that
//! generates — training rollouts and validation, `infer`, `eval`, `generate`, `serve` and the
//! benchmarks — goes through it (docs/architecture.md, "Generation engine").
//!
//! The pool is one [`KvCache`] of `rows × max_seq_len` slots, sized from a byte budget (or
//! `max_num_seqs`) when the engine is built and never grown. A request is a *group*: one prompt
//! and `n` samples, each with its own seed. A group's prompt is prefilled once, alone (batch 1,
//! so no padding; its images go through the vision tower once), and its keys and values are
//! copied into a free row for each sample. Every [`Engine::step`] then
//!
//! 1. **admits** waiting samples into free rows (with `refill` off, only into an empty pool:
//!    static chunks, the baseline of `bench rollout`);
//! 2. **samples** one token for every live sequence, each from its own seeded generator, so a
//!    sequence's tokens depend on its own request only, never on its neighbours or on the pool
//!    size; a sequence that stops frees its row at once;
//! 3. **decodes** one token for every live row in one forward, each row writing at its own slot
//!    ([`KvCache::set_row_positions`]) and attending to its own slots only.
//!
//! Rows are taken lowest first and a step runs only up to the highest live row, so a draining
//! pool also computes less. The engine keeps each row's final hidden state, not its logits: the
//! head and the sampler run only for live rows, as many at a time as keep the f32 logits within
//! one logits chunk ([`crate::model::LmHead::rows_per_logits_chunk`]: 55 rows of the full
//! vocabulary on the CPU, where a larger block would be mapped fresh from the kernel every step;
//! every row on an accelerator). The tokens sampled stay on the device until one transfer per
//! chunk (one per step on an accelerator) brings ids and log-probs to the host for the stop
//! check.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use data::rng::SplitMix64;
use tch::{Device, Tensor};

use super::decode::{decode_step, prefill};
use super::sampling::{choose_to_host, SamplingConfig};
use super::GeneratedSequence;
use crate::model::{
    KvCache, KvLayout, ModelError, Qwen2_5VLForConditionalGeneration, VisionInputs,
};

/// Identifies one sequence (one sample of one group) inside an engine.
pub type SeqId = u64;

/// The pool's size and the admission policy.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Most sequences decoded together (the pool's rows, unless the budget allows fewer).
    pub max_num_seqs: usize,
    /// Slots per row: the longest prompt plus its `max_new_tokens` must fit.
    pub max_seq_len: usize,
    /// Bytes the pool and the prefill of one waiting prompt may take together; `None`:
    /// `max_num_seqs` rows.
    pub kv_budget_bytes: Option<u64>,
    /// Give a row to the next waiting sequence the moment its sequence stops (continuous
    /// batching). Off: admit only into an empty pool, one static chunk at a time.
    pub refill: bool,
    /// The pool's layout. `None`: [`KvLayout::for_pool`] — token-major, decoded by
    /// flash-attention's varlen kernel, on CUDA in half precision; head-major, decoded by SDPA
    /// with a mask, elsewhere. `Some(HeadMajor)` forces the masked decode (the baseline
    /// `bench rollout --decode-attention masked` measures); `Some(TokenMajor)` off CUDA runs the
    /// varlen path through its reference (tests).
    pub kv_layout: Option<KvLayout>,
}

impl EngineConfig {
    /// `max_num_seqs` rows of `max_seq_len` slots, refilled continuously.
    pub fn new(max_num_seqs: usize, max_seq_len: usize) -> Self {
        EngineConfig {
            max_num_seqs,
            max_seq_len,
            kv_budget_bytes: None,
            refill: true,
            kv_layout: None,
        }
    }

    /// This config with a KV budget of `gib` GiB (`rollout.kv_cache_gib`), or none.
    pub fn with_kv_cache_gib(self, gib: Option<f64>) -> Self {
        EngineConfig {
            kv_budget_bytes: gib.map(|g| (g * (1u64 << 30) as f64) as u64),
            ..self
        }
    }

    /// Rows of the pool when one row of `max_seq_len` slots takes `row_bytes`: `max_num_seqs`,
    /// or as many as the KV budget holds with one row's worth kept for a waiting prompt's
    /// prefill (0 when it holds none). The engine allocates this; the memory plan counts it.
    pub fn pool_rows(&self, row_bytes: u64) -> usize {
        let budget = self
            .kv_budget_bytes
            .unwrap_or(row_bytes * (self.max_num_seqs as u64 + 1));
        self.max_num_seqs
            .min((budget / row_bytes.max(1)).saturating_sub(1) as usize)
    }
}

/// One prompt and its samples.
#[derive(Debug)]
pub struct GroupRequest {
    /// Prompt ids (image pads expanded).
    pub prompt_ids: Vec<i64>,
    /// The prompt's images, in the order of its image blocks.
    pub images: Option<VisionInputs>,
    /// How every sample of the group picks tokens.
    pub sampling: SamplingConfig,
    /// One seed per sample; the group has `seeds.len()` samples.
    pub seeds: Vec<u64>,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop id was sampled (it is the sequence's last token).
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

/// One token of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    /// The sequence.
    pub seq: SeqId,
    /// The order of its group among the engine's requests (0 for the first [`Engine::add`]).
    pub group: usize,
    /// The token id.
    pub token: i64,
    /// Its log-prob under the temperature-scaled distribution it was drawn from.
    pub logprob: f32,
    /// Set on the sequence's last token; its row is free from then on.
    pub finish: Option<Finish>,
}

/// The sequences an engine's steps produce, gathered token by token.
#[derive(Debug, Default)]
pub struct Sequences {
    by_id: HashMap<SeqId, GeneratedSequence>,
    finished: usize,
}

impl Sequences {
    /// Appends one step's tokens to their sequences.
    pub fn extend(&mut self, tokens: impl IntoIterator<Item = TokenOut>) {
        for t in tokens {
            let s = self
                .by_id
                .entry(t.seq)
                .or_insert_with(|| GeneratedSequence {
                    prompt_index: t.group,
                    ids: Vec::new(),
                    logprobs: Vec::new(),
                    stopped: false,
                });
            s.ids.push(t.token);
            s.logprobs.push(t.logprob);
            if let Some(f) = t.finish {
                s.stopped = f == Finish::Stop;
                self.finished += 1;
            }
        }
    }

    /// Sequences that have ended.
    pub fn finished(&self) -> usize {
        self.finished
    }

    /// All sequences in id order.
    pub fn into_sorted(self) -> Vec<GeneratedSequence> {
        let mut sequences: Vec<(SeqId, GeneratedSequence)> = self.by_id.into_iter().collect();
        sequences.sort_by_key(|(id, _)| *id);
        sequences.into_iter().map(|(_, s)| s).collect()
    }
}

/// What the engine allocated and did: its own accounting, which tests and `bench rollout` read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Rows of the pool.
    pub rows: usize,
    /// Bytes of the pool (allocated once).
    pub pool_bytes: u64,
    /// Largest prefill cache of a waiting prompt alive at once.
    pub peak_prefill_bytes: u64,
    /// Steps that sampled at least one token.
    pub steps: u64,
    /// Tokens sampled (one per live sequence per step).
    pub tokens: u64,
    /// Prompts prefilled.
    pub prefills: u64,
    /// The pool's layout.
    pub kv_layout: KvLayout,
    /// True when decode steps run flash-attention's varlen kernel over the pool.
    pub fused_decode: bool,
    /// Seconds spent admitting (prefill and copies into rows), sampling (head and sampler) and
    /// decoding (the batched forward), as the host saw them.
    pub admit_s: f64,
    pub sample_s: f64,
    pub decode_s: f64,
}

impl EngineStats {
    /// Mean fraction of the pool's rows holding a live sequence over the sampling steps.
    pub fn occupancy(&self) -> f64 {
        if self.steps == 0 || self.rows == 0 {
            return 0.0;
        }
        self.tokens as f64 / (self.steps as f64 * self.rows as f64)
    }

    /// The most KV bytes held at once: the pool plus the largest prefill cache.
    pub fn peak_bytes(&self) -> u64 {
        self.pool_bytes + self.peak_prefill_bytes
    }
}

/// A group waiting for rows, prefilled when its first sample is admitted.
struct Waiting {
    first: SeqId,
    index: usize,
    prompt_ids: Vec<i64>,
    images: Option<VisionInputs>,
    sampling: Arc<SamplingConfig>,
    seeds: Vec<u64>,
    /// Samples given a row (or released) so far.
    placed: usize,
    released: Vec<SeqId>,
    prefilled: Option<Prefilled>,
}

impl Waiting {
    /// Ids of the samples not given a row yet.
    fn unplaced(&self) -> Range<SeqId> {
        self.first + self.placed as u64..self.first + self.seeds.len() as u64
    }

    /// Unplaced samples that were not released.
    fn wanted(&self) -> usize {
        self.unplaced()
            .filter(|id| !self.released.contains(id))
            .count()
    }
}

/// A prompt's keys and values and its last hidden state, copied into each sample's row.
struct Prefilled {
    cache: KvCache,
    hidden: Tensor,
    next_position: i64,
}

/// A sequence holding a row.
struct Live {
    id: SeqId,
    group: usize,
    sampling: Arc<SamplingConfig>,
    rng: SplitMix64,
    /// Filled slots of its row: the next token is written at this slot.
    len: i64,
    /// M-RoPE position of the next token (the same on all three axes after the prompt).
    position: i64,
    produced: usize,
    /// The token sampled last step, fed by the next forward.
    feed: i64,
}

/// Continuous-batching generation over one model (passed to every call that runs it, so the
/// same weights serve the trainer, other engines and the server).
pub struct Engine {
    config: EngineConfig,
    pool: KvCache,
    rows: Vec<Option<Live>>,
    waiting: VecDeque<Waiting>,
    next_id: SeqId,
    next_group: usize,
    /// Rows admitted since the last forward, with their prompt's last hidden state `[1, D]`.
    fresh: Vec<(usize, Tensor)>,
    /// `[h, D]` final hidden states of the last forward's rows.
    hidden: Option<Tensor>,
    device: Device,
    stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("live", &self.live())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Allocates the pool for `model`'s shapes, device and dtype: `max_num_seqs` rows, or as
    /// many as the budget holds after keeping one row's worth for a prompt's prefill.
    pub fn new(
        model: &Qwen2_5VLForConditionalGeneration,
        config: EngineConfig,
    ) -> Result<Self, ModelError> {
        let slots = config.max_seq_len.max(1) as i64;
        let row_bytes = KvCache::bytes_for(&model.config, 1, slots, model.kind());
        let rows = config.pool_rows(row_bytes);
        if rows == 0 {
            let budget = config
                .kv_budget_bytes
                .unwrap_or(row_bytes * (config.max_num_seqs as u64 + 1));
            return Err(ModelError::Input(format!(
                "a KV budget of {budget} bytes holds no sequence: a row of {slots} slots takes \
                 {row_bytes} bytes and one more row's worth is kept for a prompt's prefill \
                 (max_num_seqs = {})",
                config.max_num_seqs
            )));
        }
        let (device, kind) = (model.device(), model.kind());
        let layout = config
            .kv_layout
            .unwrap_or_else(|| KvLayout::for_pool(device, kind, model.config.text.head_dim()));
        let pool = KvCache::with_layout(&model.config, rows as i64, slots, device, kind, layout)?;
        let stats = EngineStats {
            rows,
            pool_bytes: pool.bytes(),
            kv_layout: layout,
            fused_decode: pool.fused_decode(),
            ..EngineStats::default()
        };
        Ok(Engine {
            config,
            pool,
            rows: (0..rows).map(|_| None).collect(),
            waiting: VecDeque::new(),
            next_id: 0,
            next_group: 0,
            fresh: Vec::new(),
            hidden: None,
            device: model.device(),
            stats,
        })
    }

    /// Queues a group; returns its sequences' ids (consecutive, in sample order).
    pub fn add(&mut self, request: GroupRequest) -> Result<Range<SeqId>, ModelError> {
        let GroupRequest {
            prompt_ids,
            images,
            sampling,
            seeds,
        } = request;
        let needed = prompt_ids.len() + sampling.max_new_tokens;
        if prompt_ids.is_empty() || seeds.is_empty() || sampling.max_new_tokens == 0 {
            return Err(ModelError::Input(
                "a generation request needs a prompt, at least one sample and max_new_tokens >= 1"
                    .into(),
            ));
        }
        if needed > self.config.max_seq_len {
            return Err(ModelError::Input(format!(
                "a prompt of {} tokens plus {} new tokens exceeds the engine's {} slots per sequence",
                prompt_ids.len(),
                sampling.max_new_tokens,
                self.config.max_seq_len
            )));
        }
        let first = self.next_id;
        self.next_id += seeds.len() as u64;
        self.waiting.push_back(Waiting {
            first,
            index: self.next_group,
            prompt_ids,
            images,
            sampling: Arc::new(sampling),
            seeds,
            placed: 0,
            released: Vec::new(),
            prefilled: None,
        });
        self.next_group += 1;
        Ok(first..self.next_id)
    }

    /// Queues one group of `n_samples` per prompt, each sample seeded from `rng` in turn.
    pub fn add_groups(
        &mut self,
        prompts: impl IntoIterator<Item = (Vec<i64>, Option<VisionInputs>)>,
        n_samples: usize,
        cfg: &SamplingConfig,
        rng: &mut SplitMix64,
    ) -> Result<(), ModelError> {
        for (prompt_ids, images) in prompts {
            self.add(GroupRequest {
                prompt_ids,
                images,
                sampling: cfg.clone(),
                seeds: (0..n_samples).map(|_| rng.next_u64()).collect(),
            })?;
        }
        Ok(())
    }

    /// Admits, samples one token per live sequence and decodes them (see the module docs);
    /// returns the tokens sampled.
    pub fn step(
        &mut self,
        model: &Qwen2_5VLForConditionalGeneration,
    ) -> Result<Vec<TokenOut>, ModelError> {
        let _guard = tch::no_grad_guard();
        // 1. admit
        let t = Instant::now();
        self.admit(model)?;
        self.stats.admit_s += t.elapsed().as_secs_f64();
        let Some(hi) = self.highest_live_row() else {
            return Ok(Vec::new());
        };
        // 2. sample
        let t = Instant::now();
        let hidden = self.current_hidden(hi)?;
        let chosen = self.sample(model, &hidden, hi)?;
        let mut out = Vec::with_capacity(chosen.len());
        for (row, token, logprob) in chosen {
            let live = self.rows[row].as_mut().expect("sampled rows are live");
            live.produced += 1;
            let finish = if live.sampling.stop_token_ids.contains(&token) {
                Some(Finish::Stop)
            } else if live.produced >= live.sampling.max_new_tokens {
                Some(Finish::Length)
            } else {
                None
            };
            live.feed = token;
            out.push(TokenOut {
                seq: live.id,
                group: live.group,
                token,
                logprob,
                finish,
            });
            if finish.is_some() {
                self.rows[row] = None;
            }
        }
        self.stats.steps += 1;
        self.stats.tokens += out.len() as u64;
        self.fresh.clear();
        self.stats.sample_s += t.elapsed().as_secs_f64();
        // 3. decode
        let t = Instant::now();
        self.hidden = match self.highest_live_row() {
            Some(hi) => Some(self.decode(model, hi)?),
            None => None,
        };
        self.stats.decode_s += t.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Gives free rows to waiting sequences now (prefilling their prompts), as the next
    /// [`Engine::step`] would first; lets a caller time prefill apart from decoding.
    pub fn admit_waiting(
        &mut self,
        model: &Qwen2_5VLForConditionalGeneration,
    ) -> Result<(), ModelError> {
        let _guard = tch::no_grad_guard();
        self.admit(model)
    }

    /// Steps until every queued sequence has finished; returns them in id order (prompt-major
    /// when groups were added in order). `on_finished` is told how many have finished after
    /// each step that finished one.
    pub fn run(
        &mut self,
        model: &Qwen2_5VLForConditionalGeneration,
        on_finished: &mut dyn FnMut(usize),
    ) -> Result<Vec<GeneratedSequence>, ModelError> {
        let mut sequences = Sequences::default();
        while !self.is_idle() {
            let before = sequences.finished();
            sequences.extend(self.step(model)?);
            if sequences.finished() > before {
                on_finished(sequences.finished());
            }
        }
        Ok(sequences.into_sorted())
    }

    /// Drops a sequence, waiting or live; its row is free at the next step.
    pub fn release(&mut self, seq: SeqId) {
        for row in &mut self.rows {
            if row.as_ref().is_some_and(|l| l.id == seq) {
                *row = None;
            }
        }
        let rows = &self.rows;
        self.fresh.retain(|(row, _)| rows[*row].is_some());
        for w in &mut self.waiting {
            if w.unplaced().contains(&seq) && !w.released.contains(&seq) {
                w.released.push(seq);
            }
        }
        self.waiting.retain(|w| w.wanted() > 0);
    }

    /// Sequences holding a row.
    pub fn live(&self) -> usize {
        self.rows.iter().filter(|r| r.is_some()).count()
    }

    /// Nothing live and nothing waiting.
    pub fn is_idle(&self) -> bool {
        self.live() == 0 && self.waiting.is_empty()
    }

    /// Slots per row.
    pub fn max_seq_len(&self) -> usize {
        self.config.max_seq_len
    }

    /// The engine's accounting so far.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// One past the highest row holding a live sequence.
    fn highest_live_row(&self) -> Option<usize> {
        self.rows.iter().rposition(Option::is_some).map(|r| r + 1)
    }

    /// Gives free rows (lowest first) to waiting samples, prefilling a group's prompt when its
    /// first sample is admitted.
    fn admit(&mut self, model: &Qwen2_5VLForConditionalGeneration) -> Result<(), ModelError> {
        if !self.config.refill && self.rows.iter().any(Option::is_some) {
            return Ok(());
        }
        while let Some(row) = self.rows.iter().position(Option::is_none) {
            let Some(group) = self.waiting.front_mut() else {
                break;
            };
            let sample = group.placed;
            group.placed += 1;
            let id = group.first + sample as u64;
            if group.released.contains(&id) {
                if group.placed == group.seeds.len() {
                    self.waiting.pop_front();
                }
                continue;
            }
            if group.prefilled.is_none() {
                let prefilled = prefill_prompt(model, &group.prompt_ids, group.images.as_ref())?;
                self.stats.prefills += 1;
                self.stats.peak_prefill_bytes =
                    self.stats.peak_prefill_bytes.max(prefilled.cache.bytes());
                group.prefilled = Some(prefilled);
            }
            let p = group.prefilled.as_ref().expect("prefilled above");
            self.pool.write_row(row as i64, 0, &p.cache)?;
            self.fresh.push((row, p.hidden.shallow_clone()));
            self.rows[row] = Some(Live {
                id,
                group: group.index,
                sampling: group.sampling.clone(),
                rng: SplitMix64::new(group.seeds[sample]),
                len: group.prompt_ids.len() as i64,
                position: p.next_position,
                produced: 0,
                feed: 0,
            });
            if group.placed == group.seeds.len() {
                self.waiting.pop_front();
            }
        }
        Ok(())
    }

    /// `[hi, D]` hidden states of rows `0..hi`: the last forward's, with the rows admitted since
    /// then set to their prompt's (rows without a sequence hold values nobody reads).
    fn current_hidden(&mut self, hi: usize) -> Result<Tensor, ModelError> {
        let hi = hi as i64;
        let (width, kind) = match (&self.hidden, self.fresh.first()) {
            (Some(h), _) => (h.size()[1], h.kind()),
            (None, Some((_, f))) => (f.size()[1], f.kind()),
            (None, None) => {
                return Err(ModelError::Input("no hidden states to sample from".into()))
            }
        };
        let base = match self.hidden.take() {
            Some(h) if h.size()[0] >= hi => h.f_narrow(0, 0, hi)?,
            Some(h) => {
                let extra = Tensor::f_zeros([hi - h.size()[0], width], (kind, self.device))?;
                Tensor::f_cat(&[h, extra], 0)?
            }
            None => Tensor::f_zeros([hi, width], (kind, self.device))?,
        };
        for (row, hidden) in &self.fresh {
            base.f_narrow(0, *row as i64, 1)?.f_copy_(hidden)?;
        }
        Ok(base)
    }

    /// One token per live row of `0..hi` from its hidden state in `hidden [hi, D]`, each drawn
    /// with its sequence's generator: `(row, token id, log-prob)` in row order. Rows sharing a
    /// sampling configuration go through the head and the sampler together, a logits chunk of
    /// rows at a time.
    fn sample(
        &mut self,
        model: &Qwen2_5VLForConditionalGeneration,
        hidden: &Tensor,
        hi: usize,
    ) -> Result<Vec<(usize, i64, f32)>, ModelError> {
        // live rows grouped by sampling configuration (one group in rollouts)
        let mut groups: Vec<(Arc<SamplingConfig>, Vec<usize>)> = Vec::new();
        for (r, live) in self.rows[..hi].iter().enumerate() {
            let Some(live) = live else { continue };
            match groups
                .iter_mut()
                .find(|(cfg, _)| Arc::ptr_eq(cfg, &live.sampling) || **cfg == *live.sampling)
            {
                Some((_, rows)) => rows.push(r),
                None => groups.push((live.sampling.clone(), vec![r])),
            }
        }
        let chunk = model.lm_head.rows_per_logits_chunk(self.device);
        let mut out = Vec::new();
        for (cfg, rows) in groups {
            let selected = if rows.len() == hi {
                hidden.shallow_clone()
            } else {
                let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                hidden
                    .f_index_select(0, &Tensor::f_from_slice(&index)?.f_to_device(self.device)?)?
            };
            for (c, part) in rows.chunks(chunk).enumerate() {
                let h = selected.f_narrow(0, (c * chunk) as i64, part.len() as i64)?;
                let logits = model.lm_head.output_logits(&h)?;
                let draws: Vec<f64> = if cfg.greedy {
                    Vec::new()
                } else {
                    part.iter()
                        .map(|&r| self.rows[r].as_mut().map_or(0.5, |l| l.rng.unit()))
                        .collect()
                };
                let (columns, logprobs) = choose_to_host(&logits, &cfg, &draws)?;
                let tokens = model.lm_head.token_ids(&columns)?;
                for ((&r, token), logprob) in part.iter().zip(tokens).zip(logprobs) {
                    out.push((r, token, logprob));
                }
            }
        }
        out.sort_by_key(|(r, _, _)| *r);
        Ok(out)
    }

    /// Feeds each live row of `0..hi` its last token at its own slot; rows without a sequence
    /// write a padding token at their slot 0 (overwritten by their next prompt). Returns the
    /// `[hi, D]` final hidden states.
    fn decode(
        &mut self,
        model: &Qwen2_5VLForConditionalGeneration,
        hi: usize,
    ) -> Result<Tensor, ModelError> {
        let mut tokens = vec![0i64; hi];
        let mut slots = vec![0i64; hi];
        let mut positions = vec![0i64; hi];
        for (r, live) in self.rows[..hi].iter().enumerate() {
            if let Some(l) = live {
                tokens[r] = l.feed;
                slots[r] = l.len;
                positions[r] = l.position;
            }
        }
        self.pool.set_row_positions(&slots)?;
        // each row's own slots, its new one included (unused by the fused decode)
        let mask = self.pool.ragged_mask()?;
        let hidden = decode_step(model, &tokens, &positions, &mask, &mut self.pool)?;
        for l in self.rows[..hi].iter_mut().flatten() {
            l.len += 1;
            l.position += 1;
        }
        Ok(hidden)
    }
}

/// Prefills one prompt alone into a cache of its own length.
fn prefill_prompt(
    model: &Qwen2_5VLForConditionalGeneration,
    ids: &[i64],
    images: Option<&VisionInputs>,
) -> Result<Prefilled, ModelError> {
    let len = ids.len() as i64;
    let mut cache = KvCache::new(&model.config, 1, len, model.device(), model.kind())?;
    let prompt = prefill(
        model,
        &[ids.to_vec()],
        &[vec![1; ids.len()]],
        images,
        &mut cache,
    )?;
    Ok(Prefilled {
        cache,
        hidden: prompt.hidden,
        next_position: prompt.next_position[0],
    })
}
