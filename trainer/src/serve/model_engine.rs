//! The Qwen2.5-VL [`DecodeEngine`]: continuous batching over one shared, slot-addressed KV cache.
//!
//! Every admitted sequence owns one row of a `[max_batch, kv_heads, capacity, head_dim]` cache.
//! All rows are written at the same slot each step (the cache's shared length); a row's attention
//! mask opens only the slots of its own sequence, so rows never see each other. A new request is
//! prefilled alone (batch 1, images included) and its keys/values are copied into a free row so
//! that they end at the shared length — the shared length jumps forward when a prompt is longer
//! than what has been written so far, and masked slots are simply skipped. When the cache is full
//! its live window is shifted to the front. Each step samples one token per row from that row's
//! logits with the row's own parameters and seeded sampler, then runs one batched forward.

use data::rng::SplitMix64;
use image::DynamicImage;
use tch::{Device, Kind, Tensor};

use super::engine::{
    Admitted, ContentPart, DecodeEngine, EngineError, FinishReason, GenerationRequest, SeqId,
    TokenEvent,
};
use crate::generate::{decode_step, next_tokens, prefill, SamplingConfig};
use crate::model::{KvCache, Qwen2_5VLForConditionalGeneration, VisionInputs};
use crate::processor::{self, Processor};
use crate::tokenizer::ENDOFTEXT_ID;

/// One live sequence.
struct Seq {
    id: SeqId,
    row: i64,
    /// First cache slot of this sequence (where the window shift may move it).
    start: i64,
    /// Next M-RoPE position (the same on all three axes after the prompt).
    next_pos: i64,
    /// Logits `[1, K]` for the next token.
    logits: Tensor,
    sampling: SamplingConfig,
    rng: SplitMix64,
    max_tokens: usize,
    generated: Vec<i64>,
    /// Bytes of decoded text already emitted.
    emitted: usize,
}

/// Continuous-batching engine over a checkpoint.
pub struct ModelEngine {
    model_id: String,
    model: Qwen2_5VLForConditionalGeneration,
    processor: Processor,
    cache: KvCache,
    max_batch: i64,
    seqs: Vec<Seq>,
    /// Per row, 1 on the cache slots its sequence may attend to.
    row_mask: Vec<Vec<i64>>,
    shifts: u64,
}

impl std::fmt::Debug for ModelEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEngine")
            .field("model_id", &self.model_id)
            .field("active", &self.seqs.len())
            .finish_non_exhaustive()
    }
}

fn internal(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(e.to_string())
}

impl ModelEngine {
    /// An engine for `max_batch` concurrent sequences of at most `max_context` tokens each
    /// (prompt plus generated); the shared cache holds twice that many slots per row.
    pub fn new(
        model_id: impl Into<String>,
        model: Qwen2_5VLForConditionalGeneration,
        processor: Processor,
        max_batch: usize,
        max_context: usize,
    ) -> Result<Self, EngineError> {
        let max_batch = max_batch.max(1) as i64;
        let cache = KvCache::new(
            &model.config,
            max_batch,
            2 * max_context.max(1) as i64,
            model.device(),
            model.kind(),
        )
        .map_err(internal)?;
        let row_mask = vec![vec![0; cache.capacity() as usize]; max_batch as usize];
        Ok(ModelEngine {
            model_id: model_id.into(),
            model,
            processor,
            cache,
            max_batch,
            seqs: Vec::new(),
            row_mask,
            shifts: 0,
        })
    }

    /// How many times the live window was moved to the front of the cache.
    pub fn window_shifts(&self) -> u64 {
        self.shifts
    }

    fn free_row(&self) -> Option<i64> {
        (0..self.max_batch).find(|r| self.seqs.iter().all(|s| s.row != *r))
    }

    /// Moves the live window to the front of the cache when `needed` more slots do not fit.
    fn make_room(&mut self, needed: i64) -> Result<(), EngineError> {
        if self.cache.len() + needed <= self.cache.capacity() {
            return Ok(());
        }
        let from = self
            .seqs
            .iter()
            .map(|s| s.start)
            .min()
            .unwrap_or(self.cache.len());
        self.cache.shift_left(from).map_err(internal)?;
        self.shifts += 1;
        for s in &mut self.seqs {
            s.start -= from;
        }
        for m in &mut self.row_mask {
            m.rotate_left(from as usize);
            let n = m.len();
            m[n - from as usize..].fill(0);
        }
        if self.cache.len() + needed > self.cache.capacity() {
            return Err(EngineError::InvalidRequest(format!(
                "context full: {} slots in use, {needed} more needed, capacity {}",
                self.cache.len(),
                self.cache.capacity()
            )));
        }
        Ok(())
    }

    fn text_so_far(&self, ids: &[i64]) -> Result<String, EngineError> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.processor
            .tokenizer
            .decode(&ids, true)
            .map_err(internal)
    }
}

impl DecodeEngine for ModelEngine {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn admit(&mut self, seq: SeqId, request: &GenerationRequest) -> Result<Admitted, EngineError> {
        let _guard = tch::no_grad_guard();
        let row = self
            .free_row()
            .ok_or_else(|| internal("no free batch row (the scheduler admitted too many)"))?;
        let mut images = Vec::new();
        let messages: Vec<processor::ChatMessage> = request
            .messages
            .iter()
            .map(|m| {
                let content = m
                    .content
                    .iter()
                    .map(|p| match p {
                        ContentPart::Text(t) => processor::ContentPart::Text(t.clone()),
                        ContentPart::Image(img) => {
                            images.push(DynamicImage::ImageRgb8(img.clone()));
                            processor::ContentPart::Image
                        }
                    })
                    .collect();
                processor::ChatMessage::new(m.role.clone(), content)
            })
            .collect();
        let enc = self
            .processor
            .encode_prompt(&messages, &images)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        let prompt_len = enc.input_ids.len() as i64;
        let max_tokens = request.params.max_tokens.max(1);
        if 2 * (prompt_len + max_tokens as i64) > self.cache.capacity() {
            return Err(EngineError::InvalidRequest(format!(
                "prompt of {prompt_len} tokens plus max_tokens {max_tokens} exceeds the context of {} tokens",
                self.cache.capacity() / 2
            )));
        }
        let grids = enc.image_grid_thw.clone();
        let vision = (!grids.is_empty())
            .then(|| VisionInputs::new(enc.pixel_values.shallow_clone(), grids.clone()));
        let ids = vec![enc.input_ids.clone()];
        let mask = vec![vec![1i64; prompt_len as usize]];
        let mut prefill_cache = KvCache::new(
            &self.model.config,
            1,
            prompt_len,
            self.model.device(),
            self.model.kind(),
        )
        .map_err(internal)?;
        let prompt = prefill(
            &self.model,
            &ids,
            &mask,
            vision.as_ref(),
            &mut prefill_cache,
        )
        .map_err(internal)?;
        // place the prompt so it ends at the shared length (advancing it if the prompt is longer)
        let end = self.cache.len().max(prompt_len);
        self.make_room(end - self.cache.len() + max_tokens as i64)?;
        let end = self.cache.len().max(prompt_len);
        self.cache
            .write_row(row, end - prompt_len, &prefill_cache)
            .map_err(internal)?;
        self.cache.set_len(end).map_err(internal)?;
        let m = &mut self.row_mask[row as usize];
        m.fill(0);
        m[(end - prompt_len) as usize..end as usize].fill(1);
        let p = request.params;
        let sampling = SamplingConfig {
            max_new_tokens: max_tokens,
            top_p: f64::from(p.top_p),
            ..SamplingConfig::from_temperature(f64::from(p.temperature))
        };
        self.seqs.push(Seq {
            id: seq,
            row,
            start: end - prompt_len,
            next_pos: prompt.next_position[0],
            logits: prompt.logits,
            sampling,
            rng: SplitMix64::new(p.seed),
            max_tokens,
            generated: Vec::new(),
            emitted: 0,
        });
        Ok(Admitted {
            prompt_tokens: prompt_len as usize,
        })
    }

    fn step(&mut self) -> Result<Vec<TokenEvent>, EngineError> {
        let _guard = tch::no_grad_guard();
        let mut events = Vec::with_capacity(self.seqs.len());
        let mut finished = Vec::new();
        for i in 0..self.seqs.len() {
            let (ids, _) = {
                let s = &mut self.seqs[i];
                next_tokens(&self.model.lm_head, &s.logits, &s.sampling, &mut s.rng)
                    .map_err(internal)?
            };
            let id = *ids.first().ok_or_else(|| internal("no token chosen"))?;
            let s = &self.seqs[i];
            let stop = s.sampling.stop_token_ids.contains(&id);
            let mut generated = s.generated.clone();
            generated.push(id);
            let finish = if stop {
                Some(FinishReason::Stop)
            } else if generated.len() >= s.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            let text = self.text_so_far(&generated)?;
            // hold back an incomplete UTF-8 sequence until its last byte arrives
            let ready = if finish.is_none() && text.ends_with('\u{FFFD}') {
                s.emitted
            } else {
                text.len()
            };
            let delta = text.get(s.emitted..ready).unwrap_or_default().to_string();
            let s = &mut self.seqs[i];
            s.emitted = ready.max(s.emitted);
            s.generated = generated;
            events.push(TokenEvent {
                seq: s.id,
                text: delta,
                finish,
            });
            if finish.is_some() {
                finished.push(s.id);
            }
        }
        self.seqs.retain(|s| !finished.contains(&s.id));
        if self.seqs.is_empty() {
            self.cache.set_len(0).map_err(internal)?;
            return Ok(events);
        }
        self.make_room(1)?;
        let b = self.max_batch;
        let slot = self.cache.len();
        let mut input = vec![ENDOFTEXT_ID; b as usize];
        let mut pos = vec![0i64; b as usize];
        for s in &self.seqs {
            input[s.row as usize] = *s.generated.last().unwrap_or(&ENDOFTEXT_ID);
            pos[s.row as usize] = s.next_pos;
            self.row_mask[s.row as usize][slot as usize] = 1;
        }
        let mut mask = Vec::with_capacity((b * (slot + 1)) as usize);
        for (r, m) in self.row_mask.iter().enumerate() {
            let live = self.seqs.iter().any(|s| s.row == r as i64);
            if live {
                mask.extend_from_slice(&m[..=slot as usize]);
            } else {
                // a row without a sequence attends to the new slot only (its output is ignored)
                mask.extend(std::iter::repeat_n(0, slot as usize));
                mask.push(1);
            }
        }
        let mask = Tensor::from_slice(&mask)
            .view([b, slot + 1])
            .to_device(self.model.device());
        let logits =
            decode_step(&self.model, &input, &pos, &mask, &mut self.cache).map_err(internal)?;
        for s in &mut self.seqs {
            s.logits = logits.narrow(0, s.row, 1);
            s.next_pos += 1;
        }
        Ok(events)
    }

    fn release(&mut self, seq: SeqId) {
        self.seqs.retain(|s| s.id != seq);
        if self.seqs.is_empty() {
            let _ = self.cache.set_len(0);
        }
    }

    fn active(&self) -> usize {
        self.seqs.len()
    }
}

/// Loads a checkpoint folder into an engine on `device` as `kind` (full output vocabulary).
pub fn load_engine(
    dir: &std::path::Path,
    device: Device,
    kind: Kind,
    max_batch: usize,
    max_context: usize,
) -> Result<ModelEngine, EngineError> {
    let model = Qwen2_5VLForConditionalGeneration::load(dir, device, kind).map_err(internal)?;
    engine_for_model(dir, model, max_batch, max_context)
}

/// An engine serving `model`, loaded from the checkpoint folder `dir` (which gives the processor
/// and the model id, its folder name).
pub fn engine_for_model(
    dir: &std::path::Path,
    model: Qwen2_5VLForConditionalGeneration,
    max_batch: usize,
    max_context: usize,
) -> Result<ModelEngine, EngineError> {
    let processor = Processor::from_model_dir(dir).map_err(internal)?;
    let id = dir
        .file_name()
        .map_or("model".to_string(), |n| n.to_string_lossy().into_owned());
    ModelEngine::new(id, model, processor, max_batch, max_context)
}
