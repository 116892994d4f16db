//! The Qwen2.5-VL processor: chat template, tokenisation with `<|image_pad|>` expansion, and the
//! image processor (RGB conversion, `smart_resize`, Pillow-exact bicubic, normalise, patchify).
//!
//! Matches transformers 5.23 `Qwen2_5_VLProcessor` with the PIL image processor
//! (`Qwen2VLImageProcessorPil`, Pillow 13.0.0); parity is checked against fixtures written by
//! `scripts/make_processor_fixtures.py` (tests/processor.rs).

pub mod chat;
pub mod config;
pub mod image;
pub mod resize;

use std::path::PathBuf;

use ::image::DynamicImage;
use tch::{Kind, Tensor};
use thiserror::Error;

pub use self::chat::{expand_placeholders, render_chat, ChatMessage, ContentPart};
pub use self::config::PreprocessorConfig;
pub use self::image::{
    convert_to_rgb, easyr1_pre_resize, resize_rgb, smart_resize, ImageProcessor, PixelBatch,
};
use crate::tokenizer::{Tokenizer, ENDOFTEXT_ID, IMAGE_PAD_ID};

/// `min_pixels` of EasyR1's training-time pre-resize in the SpatialThinker run (512²).
pub const EASYR1_MIN_PIXELS: u64 = 262_144;
/// `max_pixels` of EasyR1's training-time pre-resize in the SpatialThinker run (2048²).
pub const EASYR1_MAX_PIXELS: u64 = 4_194_304;
/// Id used to left-pad prompts (`<|endoftext|>`, the tokenizer's pad token).
pub const PAD_ID: i64 = ENDOFTEXT_ID;

/// Errors of the processor.
#[derive(Debug, Error)]
pub enum ProcessorError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {path}: {message}")]
    Config { path: String, message: String },
    #[error("image of {height}x{width} (h x w) is empty")]
    EmptyImage { height: usize, width: usize },
    #[error(
        "image of {height}x{width} (h x w) has aspect ratio {ratio:.1}, above the limit of 200"
    )]
    AspectRatio {
        height: usize,
        width: usize,
        ratio: f64,
    },
    #[error("image of {height}x{width} (h x w) is not a multiple of {factor} and resizing is off")]
    NotPatchable {
        height: usize,
        width: usize,
        factor: usize,
    },
    #[error("image {index}: {source}")]
    Image {
        index: usize,
        source: Box<ProcessorError>,
    },
    #[error("the prompt has {placeholders} image placeholders but {images} images were given")]
    ImageCount { placeholders: usize, images: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("cannot batch zero prompts")]
    EmptyBatch,
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// One tokenised prompt with its processed images.
#[derive(Debug)]
pub struct EncodedPrompt {
    /// Token ids with every `<|image_pad|>` already expanded.
    pub input_ids: Vec<i64>,
    /// `[N, 1176]` f32 (CPU) rows of this prompt's images, `[0, 1176]` without images.
    pub pixel_values: Tensor,
    /// `[t, h, w]` per image, in prompt order.
    pub image_grid_thw: Vec<[i64; 3]>,
}

/// Several prompts left-padded to a common length.
#[derive(Debug)]
pub struct Batch {
    /// `[B, L]` int64, left-padded with [`PAD_ID`].
    pub input_ids: Tensor,
    /// `[B, L]` int64, 0 on padding and 1 on real tokens.
    pub attention_mask: Tensor,
    /// All images' rows, prompt by prompt, `[Σ N, 1176]` f32 (CPU).
    pub pixel_values: Tensor,
    /// Grids of all images in the same order as the rows of `pixel_values`.
    pub image_grid_thw: Vec<[i64; 3]>,
}

/// Tokeniser plus image processor: turns chat messages and images into model inputs.
#[derive(Clone)]
pub struct Processor {
    pub tokenizer: Tokenizer,
    pub image_processor: ImageProcessor,
}

impl Processor {
    /// Bundles a tokenizer with an image processor.
    pub fn new(tokenizer: Tokenizer, image_processor: ImageProcessor) -> Self {
        Self {
            tokenizer,
            image_processor,
        }
    }

    /// The processor of a model folder: its `tokenizer.json` (else the embedded Qwen2.5-VL
    /// tokenizer) and its `preprocessor_config.json` (else the published Qwen2.5-VL values).
    pub fn from_model_dir(dir: &std::path::Path) -> Result<Self, ProcessorError> {
        let tokenizer = crate::tokenizer::load_tokenizer(dir)
            .map_err(|e| ProcessorError::Tokenizer(e.to_string()))?;
        let image = if dir.join("preprocessor_config.json").exists() {
            ImageProcessor::from_preprocessor_config(dir)?
        } else {
            ImageProcessor::default_qwen25vl()
        };
        Ok(Self::new(tokenizer, image))
    }

    /// Tokenises `text` without adding special tokens (special tokens written in it still
    /// map to their ids).
    pub fn tokenize(&self, text: &str) -> Result<Vec<i64>, ProcessorError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ProcessorError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// Renders `messages` with the chat template and `add_generation_prompt`, processes
    /// `images` (the i-th image part gets the i-th image), tokenises and expands each
    /// `<|image_pad|>` into `grid_t·grid_h·grid_w / merge²` copies.
    pub fn encode_prompt(
        &self,
        messages: &[ChatMessage],
        images: &[DynamicImage],
    ) -> Result<EncodedPrompt, ProcessorError> {
        self.encode_text_with_images(&render_chat(messages, true), images)
    }

    /// Like [`Processor::encode_prompt`] for an already rendered prompt text.
    pub fn encode_text_with_images(
        &self,
        text: &str,
        images: &[DynamicImage],
    ) -> Result<EncodedPrompt, ProcessorError> {
        let ids = self.tokenize(text)?;
        let placeholders = ids.iter().filter(|&&id| id == IMAGE_PAD_ID).count();
        if placeholders != images.len() {
            return Err(ProcessorError::ImageCount {
                placeholders,
                images: images.len(),
            });
        }
        let batch = self.image_processor.preprocess(images)?;
        let merge = (self.image_processor.config.merge_size.pow(2)) as i64;
        let counts: Vec<usize> = batch
            .image_grid_thw
            .iter()
            .map(|[t, h, w]| (t * h * w / merge) as usize)
            .collect();
        Ok(EncodedPrompt {
            input_ids: expand_placeholders(&ids, IMAGE_PAD_ID, &counts)?,
            pixel_values: batch.pixel_values,
            image_grid_thw: batch.image_grid_thw,
        })
    }
}

/// Left-pads id sequences to their longest length: returns `(ids, mask, len)` row-major
/// `[B, len]`, pads being `pad_id` with mask 0.
pub fn left_pad(seqs: &[&[i64]], pad_id: i64) -> (Vec<i64>, Vec<i64>, usize) {
    let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * len);
    let mut mask = Vec::with_capacity(seqs.len() * len);
    for s in seqs {
        let pad = len - s.len();
        ids.extend(std::iter::repeat_n(pad_id, pad));
        ids.extend_from_slice(s);
        mask.extend(std::iter::repeat_n(0, pad));
        mask.extend(std::iter::repeat_n(1, s.len()));
    }
    (ids, mask, len)
}

/// Batches encoded prompts: left-padded `input_ids`/`attention_mask` `[B, L]` and all images
/// concatenated in prompt order.
pub fn batch_left_pad(prompts: &[EncodedPrompt]) -> Result<Batch, ProcessorError> {
    if prompts.is_empty() {
        return Err(ProcessorError::EmptyBatch);
    }
    let seqs: Vec<&[i64]> = prompts.iter().map(|p| p.input_ids.as_slice()).collect();
    let (ids, mask, len) = left_pad(&seqs, PAD_ID);
    let shape = [prompts.len() as i64, len as i64];
    let pixels: Vec<&Tensor> = prompts.iter().map(|p| &p.pixel_values).collect();
    Ok(Batch {
        input_ids: Tensor::f_from_slice(&ids)?.f_view(shape)?,
        attention_mask: Tensor::f_from_slice(&mask)?.f_view(shape)?,
        pixel_values: Tensor::f_cat(&pixels, 0)?.f_to_kind(Kind::Float)?,
        image_grid_thw: prompts
            .iter()
            .flat_map(|p| p.image_grid_thw.iter().copied())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_pad_pads_on_the_left() {
        let (ids, mask, len) = left_pad(&[&[5, 6, 7], &[8]], PAD_ID);
        assert_eq!(len, 3);
        assert_eq!(ids, vec![5, 6, 7, PAD_ID, PAD_ID, 8]);
        assert_eq!(mask, vec![1, 1, 1, 0, 0, 1]);
    }
}
