//! A checkpoint answering batches of `[image, text]` user turns: what `infer` and `eval` run
//! (`eval` adapts it to its `AnswerGenerator` trait; this module knows nothing of evaluation).
//! Images go to the processor at their original size, without the training-time pixel-count
//! resize (docs/recipe.md, "Evaluation prompt"); decoding is greedy unless a temperature is set.

use std::path::Path;

use data::rng::SplitMix64;
use image::{DynamicImage, RgbImage};
use tch::{Device, Kind, Tensor};

use crate::generate::{generate, PromptBatch, SamplingConfig};
use crate::model::{ModelError, Qwen2_5VLForConditionalGeneration, VisionInputs};
use crate::processor::{ChatMessage, ContentPart, Processor, ProcessorError};

/// Errors of [`ModelGenerator`].
#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("processor: {0}")]
    Processor(#[from] ProcessorError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("decoding: {0}")]
    Decode(String),
}

/// A loaded checkpoint with its processor and sampling settings.
pub struct ModelGenerator {
    /// The model.
    pub model: Qwen2_5VLForConditionalGeneration,
    /// Its tokenizer and image processor.
    pub processor: Processor,
    /// How tokens are picked (greedy by default).
    pub sampling: SamplingConfig,
    rng: SplitMix64,
}

impl std::fmt::Debug for ModelGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelGenerator")
            .field("sampling", &self.sampling)
            .finish_non_exhaustive()
    }
}

impl ModelGenerator {
    /// Loads `dir` (config, weights, tokenizer, preprocessor config) on `device` as `kind`,
    /// decoding greedily up to `max_new_tokens`.
    pub fn load(
        dir: &Path,
        device: Device,
        kind: Kind,
        max_new_tokens: usize,
    ) -> Result<Self, GeneratorError> {
        Ok(ModelGenerator {
            model: Qwen2_5VLForConditionalGeneration::load(dir, device, kind)?,
            processor: Processor::from_model_dir(dir)?,
            sampling: SamplingConfig {
                max_new_tokens,
                greedy: true,
                logprobs: false,
                ..SamplingConfig::default()
            },
            rng: SplitMix64::new(0),
        })
    }

    /// Uses `sampling` and a sampler seeded with `seed`.
    pub fn with_sampling(mut self, sampling: SamplingConfig, seed: u64) -> Self {
        self.sampling = sampling;
        self.rng = SplitMix64::new(seed);
        self
    }

    /// One response per `(text, image)` user turn, in order, from one batched generation.
    pub fn answer(
        &mut self,
        turns: &[(&str, Option<&RgbImage>)],
    ) -> Result<Vec<String>, GeneratorError> {
        let mut ids = Vec::with_capacity(turns.len());
        let mut pixels: Vec<Tensor> = Vec::new();
        let mut grids = Vec::new();
        for (text, image) in turns {
            let mut content = Vec::new();
            let mut images = Vec::new();
            if let Some(img) = image {
                content.push(ContentPart::Image);
                images.push(DynamicImage::ImageRgb8((*img).clone()));
            }
            content.push(ContentPart::Text(text.to_string()));
            let enc = self
                .processor
                .encode_prompt(&[ChatMessage::new("user", content)], &images)?;
            if !enc.image_grid_thw.is_empty() {
                pixels.push(enc.pixel_values);
                grids.extend(enc.image_grid_thw);
            }
            ids.push(enc.input_ids);
        }
        let images = if grids.is_empty() {
            None
        } else {
            Some(VisionInputs::new(Tensor::f_cat(&pixels, 0)?, grids))
        };
        let batch = PromptBatch {
            input_ids: ids,
            images,
        };
        let samples = generate(&self.model, &batch, 1, &self.sampling, &mut self.rng)?;
        samples
            .iter()
            .map(|s| {
                let ids: Vec<u32> = s.ids.iter().map(|&i| i as u32).collect();
                self.processor
                    .tokenizer
                    .decode(&ids, true)
                    .map_err(|e| GeneratorError::Decode(e.to_string()))
            })
            .collect()
    }
}
