//! From dataset rows to scored rollouts (docs/recipe.md, "Training prompt" and "One RL step"):
//! build each prompt the way EasyR1's dataset does, sample `n` responses per prompt with a shared
//! prefill, decode them and score them with the reward in parallel.

use data::rng::SplitMix64;
use image::DynamicImage;
use tch::{Device, Kind, Tensor};

use rewards::{LabelSimilarity, RewardInput, RewardKind, RewardScore};

use super::{Result, TrainError};
use crate::generate::{
    Engine, EngineConfig, EngineStats, GeneratedSequence, GroupRequest, SamplingConfig,
};
use crate::model::{Qwen2_5VLForConditionalGeneration, VisionInputs};
use crate::processor::{easyr1_pre_resize, ChatMessage, ContentPart, Processor};

/// The image marker of the dataset's prompt column; EasyR1 removes every marker and puts one
/// image before the text.
pub const IMAGE_MARKER: &str = "<image>";

/// One prompt ready for the model, with what its rollouts are scored against.
#[derive(Debug)]
pub struct PromptItem {
    /// Prompt ids after the chat template, image pads expanded.
    pub ids: Vec<i64>,
    /// `[patches, 1176]` f32 pixel values of its image (CPU).
    pub pixel_values: Tensor,
    /// Patch grid of its image.
    pub grid: [i64; 3],
    /// The prompt column's text (the spatial reward reads `Image size: (W x H)` from it).
    pub problem: String,
    /// The reward's ground truth (the configured answer column).
    pub ground_truth: String,
    /// Target of the supervised warm-up, when the dataset has one.
    pub reference_response: Option<String>,
    /// Where the row came from (file and row), for messages and skips.
    pub row: data::RowRef,
}

/// Builds model prompts from dataset rows.
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    /// EasyR1's `min_pixels` (images below are scaled up before the processor).
    pub min_pixels: u64,
    /// EasyR1's `max_pixels` (images above are scaled down).
    pub max_pixels: u64,
    /// Longest prompt in tokens; a longer row is an error naming it.
    pub max_prompt_length: usize,
    /// EasyR1's `format_prompt`, put before the prompt column's text.
    pub format_prompt: Option<String>,
}

impl PromptBuilder {
    /// Encodes one decoded dataset sample: the user turn is `[image, prompt without <image>
    /// markers]` under the default system prompt, the image pre-resized as EasyR1 does.
    pub fn encode(&self, processor: &Processor, sample: &data::Sample) -> Result<PromptItem> {
        let record = &sample.record;
        let row = record.source.clone();
        let image = DynamicImage::ImageRgb8(sample.image.clone());
        let resized = easyr1_pre_resize(&image, self.min_pixels, self.max_pixels);
        let encoded = processor
            .encode_prompt(
                &self.messages(&record.prompt),
                &[DynamicImage::ImageRgb8(resized)],
            )
            .map_err(|e| TrainError::Row {
                row: row.to_string(),
                msg: e.to_string(),
            })?;
        if encoded.input_ids.len() > self.max_prompt_length {
            return Err(TrainError::Row {
                row: row.to_string(),
                msg: format!(
                    "prompt has {} tokens (image included), more than data.max_prompt_length = {}",
                    encoded.input_ids.len(),
                    self.max_prompt_length
                ),
            });
        }
        Ok(PromptItem {
            ids: encoded.input_ids,
            pixel_values: encoded.pixel_values,
            grid: encoded.image_grid_thw[0],
            problem: record.prompt.clone(),
            ground_truth: record.ground_truth.clone(),
            reference_response: record.reference_response.clone(),
            row,
        })
    }

    /// The chat sent for a row: one user turn holding the image, then the prompt column's text
    /// with `format_prompt` put before it and every `<image>` marker removed.
    pub fn messages(&self, prompt: &str) -> [ChatMessage; 1] {
        let prompt = match &self.format_prompt {
            Some(prefix) => format!("{} {}", prefix.trim(), prompt),
            None => prompt.to_string(),
        };
        let text = prompt.replace(IMAGE_MARKER, "");
        [ChatMessage::new(
            "user",
            vec![ContentPart::Image, ContentPart::Text(text)],
        )]
    }

    /// Encodes a batch of samples in order.
    pub fn encode_all(
        &self,
        processor: &Processor,
        samples: &[data::Sample],
    ) -> Result<Vec<PromptItem>> {
        samples.iter().map(|s| self.encode(processor, s)).collect()
    }
}

/// The images of `prompts` (one per prompt, in order) as vision-tower input.
pub fn vision_inputs(prompts: &[&PromptItem]) -> Result<VisionInputs> {
    // a prompt that occurs several times (one per response of its group) is encoded once
    let mut distinct: Vec<&PromptItem> = Vec::new();
    let sources: Vec<usize> = prompts
        .iter()
        .map(
            |&p| match distinct.iter().position(|&d| std::ptr::eq(d, p)) {
                Some(i) => i,
                None => {
                    distinct.push(p);
                    distinct.len() - 1
                }
            },
        )
        .collect();
    let pixels: Vec<&Tensor> = distinct.iter().map(|p| &p.pixel_values).collect();
    Ok(VisionInputs {
        pixel_values: Tensor::f_cat(&pixels, 0)?,
        image_grid_thw: prompts.iter().map(|p| p.grid).collect(),
        sources: if distinct.len() < prompts.len() {
            sources
        } else {
            Vec::new()
        },
    })
}

/// One sampled response.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Index of its prompt.
    pub prompt: usize,
    /// Response ids, the stop id included when one ended it.
    pub ids: Vec<i64>,
    /// Each id's log-prob as the engine sampled it (temperature-scaled distribution).
    pub sampling_logprobs: Vec<f32>,
    /// Decoded text (special tokens skipped), what the reward reads.
    pub text: String,
    /// Whether a stop id ended it (else the length limit).
    pub stopped: bool,
    /// Reward and its components.
    pub score: RewardScore,
}

/// Draws the generator seeds of `rows` prompts × `n` responses from `rng`, row by row. Every row
/// of a batch draws its seeds whichever rank samples it (and whether or not it is left out), so
/// a response's randomness does not depend on how the batch is sharded.
pub fn draw_seeds(rng: &mut SplitMix64, rows: usize, n: usize) -> Vec<Vec<u64>> {
    (0..rows)
        .map(|_| (0..n).map(|_| rng.next_u64()).collect())
        .collect()
}

/// Samples `n` responses per prompt through one generation engine (`engine` sizes its KV pool;
/// [`generate_groups`]), rows in prompt-major order: each prompt is prefilled once and each
/// response draws from its own generator, seeded from `rng` in that order. `on_rows` is told how
/// many responses are done as they finish. Returns the sequences and the engine's accounting.
pub fn sample_responses(
    model: &Qwen2_5VLForConditionalGeneration,
    prompts: &[PromptItem],
    n: usize,
    sampling: &SamplingConfig,
    engine: EngineConfig,
    rng: &mut SplitMix64,
    on_rows: &mut dyn FnMut(usize),
) -> Result<(Vec<GeneratedSequence>, EngineStats)> {
    let seeds = draw_seeds(rng, prompts.len(), n);
    sample_responses_seeded(model, prompts, &seeds, sampling, engine, on_rows)
}

/// [`sample_responses`] with each prompt's response seeds given (`seeds[p]`, one per response).
pub fn sample_responses_seeded(
    model: &Qwen2_5VLForConditionalGeneration,
    prompts: &[PromptItem],
    seeds: &[Vec<u64>],
    sampling: &SamplingConfig,
    engine: EngineConfig,
    on_rows: &mut dyn FnMut(usize),
) -> Result<(Vec<GeneratedSequence>, EngineStats)> {
    if seeds.len() != prompts.len() {
        return Err(TrainError::Invalid(format!(
            "{} prompts but seeds for {}",
            prompts.len(),
            seeds.len()
        )));
    }
    let mut engine = Engine::new(model, engine)?;
    for (p, seeds) in prompts.iter().zip(seeds) {
        engine.add(GroupRequest {
            prompt_ids: p.ids.clone(),
            images: Some(vision_inputs(&[p])?),
            sampling: sampling.clone(),
            seeds: seeds.clone(),
        })?;
    }
    let sequences = engine.run(model, on_rows)?;
    Ok((sequences, engine.stats().clone()))
}

/// Rollouts of a batch, and the prompts whose reward raised.
#[derive(Debug, Default)]
pub struct ScoredRollouts {
    /// Every response of the prompts that scored, in sampling order.
    pub rollouts: Vec<Rollout>,
    /// Prompts (by index) whose reward raised on some response, with the first error: their
    /// whole group is left out (its advantages would be computed over a partial group).
    pub failed: Vec<(usize, rewards::RewardError)>,
}

/// Decodes the samples and scores them in parallel.
pub fn score_samples(
    processor: &Processor,
    prompts: &[PromptItem],
    samples: Vec<GeneratedSequence>,
    kind: RewardKind,
    similarity: &dyn LabelSimilarity,
) -> Result<ScoredRollouts> {
    let texts = samples
        .iter()
        .map(|s| {
            let ids: Vec<u32> = s.ids.iter().map(|&i| i as u32).collect();
            processor
                .tokenizer
                .decode(&ids, true)
                .map_err(|e| TrainError::Config(format!("decoding a response: {e}")))
        })
        .collect::<Result<Vec<String>>>()?;
    let inputs: Vec<RewardInput<'_>> = samples
        .iter()
        .zip(&texts)
        .map(|(s, text)| {
            let p = &prompts[s.prompt_index];
            RewardInput {
                response: text,
                ground_truth: &p.ground_truth,
                problem: &p.problem,
            }
        })
        .collect();
    let scores = rewards::score_batch(kind, &inputs, similarity);
    let mut out = ScoredRollouts::default();
    for ((s, text), score) in samples.into_iter().zip(texts).zip(scores) {
        match score {
            Ok(score) => out.rollouts.push(Rollout {
                prompt: s.prompt_index,
                ids: s.ids,
                sampling_logprobs: s.logprobs,
                text,
                stopped: s.stopped,
                score,
            }),
            Err(e) if !out.failed.iter().any(|(p, _)| *p == s.prompt_index) => {
                out.failed.push((s.prompt_index, e));
            }
            Err(_) => {}
        }
    }
    out.rollouts
        .retain(|r| !out.failed.iter().any(|(p, _)| *p == r.prompt));
    Ok(out)
}

/// `[N, T]` f32 mask with 1 on the first `len_i` positions of row i (`T` = longest).
pub fn response_mask(lengths: &[usize], device: Device) -> Result<Tensor> {
    let t = lengths.iter().copied().max().unwrap_or(0);
    let mut mask = vec![0f32; lengths.len() * t];
    for (i, &len) in lengths.iter().enumerate() {
        mask[i * t..i * t + len].fill(1.0);
    }
    Ok(Tensor::f_from_slice(&mask)?
        .f_view([lengths.len() as i64, t as i64])?
        .f_to_kind(Kind::Float)?
        .f_to_device(device)?)
}
