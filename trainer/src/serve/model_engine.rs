//! The Qwen2.5-VL [`DecodeEngine`]: the server's side of the generation [`Engine`].
//!
//! A request's conversation (its last question wrapped by the engine's [`PromptWrap`], by
//! default none) is rendered with the chat template and queued as a one-sample group
//! with the request's sampling settings and seed; the engine admits it into a free row of its KV
//! pool (`max_batch` rows of `max_context` slots), steps it with every other live sequence and
//! frees the row the moment it stops. Each token is decoded into text as it arrives, holding back
//! an incomplete UTF-8 character until its last byte.

use std::collections::HashMap;

use image::DynamicImage;
use tch::{Device, Kind};

use super::engine::{
    Admitted, ContentPart, DecodeEngine, EngineError, FinishReason, GenerationRequest, SeqId,
    TokenEvent,
};
use super::template::PromptWrap;
use crate::generate::{self, Engine, EngineConfig, Finish, GroupRequest, SamplingConfig};
use crate::model::{Qwen2_5VLForConditionalGeneration, VisionInputs};
use crate::processor::{self, Processor};

/// One request's sequence inside the engine.
struct Seq {
    id: SeqId,
    generated: Vec<i64>,
    /// Bytes of decoded text already emitted.
    emitted: usize,
}

/// Continuous-batching engine over a checkpoint.
pub struct ModelEngine {
    model_id: String,
    model: Qwen2_5VLForConditionalGeneration,
    processor: Processor,
    engine: Engine,
    /// The server's sequences by the engine's ids.
    seqs: HashMap<generate::SeqId, Seq>,
    /// The instruction wrapped around each request's question.
    template: PromptWrap,
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
    /// (prompt plus generated).
    pub fn new(
        model_id: impl Into<String>,
        model: Qwen2_5VLForConditionalGeneration,
        processor: Processor,
        max_batch: usize,
        max_context: usize,
    ) -> Result<Self, EngineError> {
        let engine = Engine::new(
            &model,
            EngineConfig::new(max_batch.max(1), max_context.max(1)),
        )
        .map_err(internal)?;
        Ok(ModelEngine {
            model_id: model_id.into(),
            model,
            processor,
            engine,
            seqs: HashMap::new(),
            template: PromptWrap::None,
        })
    }

    /// Wraps each request's question in `template` (see [`PromptWrap::apply`]).
    pub fn with_template(mut self, template: PromptWrap) -> Self {
        self.template = template;
        self
    }

    /// The instruction wrapped around each request's question.
    pub fn template(&self) -> &PromptWrap {
        &self.template
    }

    /// The generation engine's accounting (pool size, steps, occupancy).
    pub fn stats(&self) -> &generate::EngineStats {
        self.engine.stats()
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
        let mut images = Vec::new();
        let wrapped = self.template.apply(&request.messages);
        let messages: Vec<processor::ChatMessage> = wrapped
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
        let prompt_len = enc.input_ids.len();
        let max_tokens = request.params.max_tokens.max(1);
        if prompt_len + max_tokens > self.engine.max_seq_len() {
            return Err(EngineError::InvalidRequest(format!(
                "prompt of {prompt_len} tokens plus max_tokens {max_tokens} exceeds the context of {} tokens",
                self.engine.max_seq_len()
            )));
        }
        let images = (!enc.image_grid_thw.is_empty())
            .then(|| VisionInputs::new(enc.pixel_values, enc.image_grid_thw));
        let p = request.params;
        let sampling = SamplingConfig {
            max_new_tokens: max_tokens,
            top_p: f64::from(p.top_p),
            logprobs: false,
            ..SamplingConfig::from_temperature(f64::from(p.temperature))
        };
        let ids = self
            .engine
            .add(GroupRequest {
                prompt_ids: enc.input_ids,
                images,
                sampling,
                seeds: vec![p.seed],
            })
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        self.seqs.insert(
            ids.start,
            Seq {
                id: seq,
                generated: Vec::new(),
                emitted: 0,
            },
        );
        Ok(Admitted {
            prompt_tokens: prompt_len,
        })
    }

    fn step(&mut self) -> Result<Vec<TokenEvent>, EngineError> {
        let tokens = self.engine.step(&self.model).map_err(internal)?;
        let mut events = Vec::with_capacity(tokens.len());
        for t in tokens {
            let Some(s) = self.seqs.get(&t.seq) else {
                continue;
            };
            let mut generated = s.generated.clone();
            generated.push(t.token);
            let finish = t.finish.map(|f| match f {
                Finish::Stop => FinishReason::Stop,
                Finish::Length => FinishReason::Length,
            });
            let text = self.text_so_far(&generated)?;
            // hold back an incomplete UTF-8 sequence until its last byte arrives
            let ready = if finish.is_none() && text.ends_with('\u{FFFD}') {
                s.emitted
            } else {
                text.len()
            };
            let delta = text.get(s.emitted..ready).unwrap_or_default().to_string();
            let id = s.id;
            if finish.is_some() {
                self.seqs.remove(&t.seq);
            } else if let Some(s) = self.seqs.get_mut(&t.seq) {
                s.emitted = ready.max(s.emitted);
                s.generated = generated;
            }
            events.push(TokenEvent {
                seq: id,
                text: delta,
                finish,
            });
        }
        Ok(events)
    }

    fn release(&mut self, seq: SeqId) {
        let ours: Vec<generate::SeqId> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.id == seq)
            .map(|(id, _)| *id)
            .collect();
        for id in ours {
            self.engine.release(id);
            self.seqs.remove(&id);
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
