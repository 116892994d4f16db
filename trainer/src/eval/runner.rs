//! The evaluation loop: batches of prompts go to an [`AnswerGenerator`] (the model, greedy), each
//! response is extracted, matched and appended to the sample log at once, and samples already in
//! the log are skipped.

use std::collections::HashSet;

use data::rng::SplitMix64;
use image::{DynamicImage, RgbImage};
use tch::Tensor;

use super::benchmarks::REALWORLDQA_LETTER_ONLY;
use super::dataset::{EvalSample, PromptStyle, Scoring};
use super::extract::extract_answer;
use super::matching::{score, score_text, MatchMode};
use super::report::{SampleLog, SampleRecord};
use super::EvalError;
use crate::generate::{generate, PromptBatch};
use crate::infer::generator::ModelGenerator;
use crate::infer::prompt::{question_with_options, render, Template};
use crate::model::VisionInputs;
use crate::processor::{ChatMessage, ContentPart};

/// Greedy decoding budget of the authors' evaluation.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 2048;

/// One prompt handed to the generator.
#[derive(Debug, Clone)]
pub struct EvalPrompt {
    /// The sample id.
    pub id: String,
    /// The user text (template applied, options included).
    pub text: String,
    /// The (first) image at its original size, if the sample has one.
    pub image: Option<RgbImage>,
    /// Further images of multi-image samples (BLINK multi-view and jigsaw, RoboSpatial's depth
    /// image), after `image` in the user turn.
    pub more_images: Vec<RgbImage>,
}

/// Produces one response per prompt; implemented by the model (greedy, `max_new_tokens`) and by
/// test doubles.
pub trait AnswerGenerator {
    /// Responses for `batch`, in order.
    fn generate(&mut self, batch: &[EvalPrompt]) -> Result<Vec<String>, EvalError>;
}

/// The model itself: one batched greedy (or sampled) generation over the prompts' user turns,
/// the images first and the text after them, as `evals.py` builds its messages.
impl AnswerGenerator for ModelGenerator {
    fn generate(&mut self, batch: &[EvalPrompt]) -> Result<Vec<String>, EvalError> {
        let gen_err = |e: &dyn std::fmt::Display| EvalError::Generator(e.to_string());
        if batch.iter().all(|p| p.more_images.is_empty()) {
            let turns: Vec<(&str, Option<&RgbImage>)> = batch
                .iter()
                .map(|p| (p.text.as_str(), p.image.as_ref()))
                .collect();
            return self.answer(&turns).map_err(|e| gen_err(&e));
        }
        // Several images in one turn: the same steps as `ModelGenerator::answer`, one image
        // part per image.
        let mut ids = Vec::with_capacity(batch.len());
        let mut pixels = Vec::new();
        let mut grids = Vec::new();
        for p in batch {
            let images: Vec<DynamicImage> = p
                .image
                .iter()
                .chain(&p.more_images)
                .map(|i| DynamicImage::ImageRgb8(i.clone()))
                .collect();
            let mut content = vec![ContentPart::Image; images.len()];
            content.push(ContentPart::Text(p.text.clone()));
            let enc = self
                .processor
                .encode_prompt(&[ChatMessage::new("user", content)], &images)
                .map_err(|e| gen_err(&e))?;
            if !enc.image_grid_thw.is_empty() {
                pixels.push(enc.pixel_values);
                grids.extend(enc.image_grid_thw);
            }
            ids.push(enc.input_ids);
        }
        let images = if grids.is_empty() {
            None
        } else {
            Some(VisionInputs::new(
                Tensor::f_cat(&pixels, 0).map_err(|e| gen_err(&e))?,
                grids,
            ))
        };
        let prompts = PromptBatch {
            input_ids: ids,
            images,
        };
        // Greedy decoding ignores the generator; sampling here is seeded per batch.
        let mut rng = SplitMix64::new(0);
        let samples = generate(&self.model, &prompts, 1, &self.sampling, &mut rng)
            .map_err(|e| gen_err(&e))?;
        samples
            .iter()
            .map(|s| {
                let ids: Vec<u32> = s.ids.iter().map(|&i| i as u32).collect();
                self.processor
                    .tokenizer
                    .decode(&ids, true)
                    .map_err(|e| gen_err(&e))
            })
            .collect()
    }
}

/// Settings of one evaluation run.
#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    /// Instruction wrapped around each question.
    pub template: Template,
    /// Matcher (fixed or the authors' legacy one).
    pub matching: MatchMode,
    /// Prompts per generator call.
    pub batch_size: usize,
}

/// Build the prompt for one sample, loading its images.
pub fn build_prompt(sample: &EvalSample, template: Template) -> Result<EvalPrompt, EvalError> {
    let mut images = sample
        .images
        .iter()
        .map(|i| i.load())
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let image = images.next();
    let more_images: Vec<RgbImage> = images.collect();
    if template == Template::Spatialthinker && image.is_none() {
        return Err(EvalError::Unsupported(format!(
            "sample {}: the spatialthinker template states the image size, but the sample has no image",
            sample.id
        )));
    }
    let size = image.as_ref().map(|i| i.dimensions()).unwrap_or((0, 0));
    let text = if template == Template::Dataset {
        let prompt = sample.prompt.as_deref().ok_or_else(|| {
            EvalError::Unsupported(format!(
                "sample {}: the dataset template needs the row's own prompt (STVQA parquet `problem`)",
                sample.id
            ))
        })?;
        // as in training: the image goes first, the prompt's <image> markers are dropped
        prompt.replace("<image>", "")
    } else {
        render(template, &instruction(sample, template), size)
    };
    Ok(EvalPrompt {
        id: sample.id.clone(),
        text,
        image,
        more_images,
    })
}

/// The question text the template wraps, per the sample's [`PromptStyle`].
pub fn instruction(sample: &EvalSample, template: Template) -> String {
    match sample.style {
        PromptStyle::Generic => question_with_options(&sample.question, &sample.options),
        PromptStyle::Verbatim => sample.question.clone(),
        PromptStyle::RealWorldQa if template == Template::Spatialthinker => {
            sample.question.replace(REALWORLDQA_LETTER_ONLY, "")
        }
        PromptStyle::RealWorldQa => sample.question.clone(),
    }
}

/// Score one response.
pub fn score_response(
    sample: &EvalSample,
    prompt: &str,
    response: String,
    matching: MatchMode,
) -> SampleRecord {
    let answer = extract_answer(&response);
    let outcome = match sample.scoring {
        Scoring::Choices => score(&sample.answer, answer.as_deref(), &sample.options, matching),
        Scoring::Text { trim_truth } => score_text(&sample.answer, answer.as_deref(), trim_truth),
    };
    let reward_accuracy = sample.reward_ground_truth.as_ref().map(|gt| {
        let problem = sample.prompt.as_deref().unwrap_or_default();
        rewards::score(
            rewards::RewardKind::Spatial,
            &response,
            gt,
            problem,
            &rewards::ExactLabelSimilarity,
        )
        .map_or(0.0, |s| s.accuracy)
    });
    SampleRecord {
        id: sample.id.clone(),
        category: sample.category.clone(),
        prompt: prompt.to_string(),
        response,
        answer,
        gt: outcome.gt,
        pred: outcome.pred,
        correct: outcome.correct,
        rule: outcome.rule,
        reward_accuracy,
    }
}

/// Evaluate every sample whose id is not in `done`, appending each record to `log` as soon as
/// its batch returns; returns the new records. `progress` is called after each batch with
/// (evaluated so far, to evaluate).
pub fn run_eval(
    samples: &[EvalSample],
    generator: &mut dyn AnswerGenerator,
    options: EvalOptions,
    log: &mut SampleLog,
    done: &HashSet<String>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<SampleRecord>, EvalError> {
    let todo: Vec<&EvalSample> = samples.iter().filter(|s| !done.contains(&s.id)).collect();
    let mut records = Vec::with_capacity(todo.len());
    for chunk in todo.chunks(options.batch_size.max(1)) {
        let prompts = chunk
            .iter()
            .map(|s| build_prompt(s, options.template))
            .collect::<Result<Vec<_>, _>>()?;
        let responses = generator.generate(&prompts)?;
        if responses.len() != prompts.len() {
            return Err(EvalError::Generator(format!(
                "{} responses for {} prompts",
                responses.len(),
                prompts.len()
            )));
        }
        for ((sample, prompt), response) in chunk.iter().zip(&prompts).zip(responses) {
            let record = score_response(sample, &prompt.text, response, options.matching);
            log.append(&record)?;
            records.push(record);
        }
        progress(records.len(), todo.len());
    }
    Ok(records)
}
