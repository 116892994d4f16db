//! The evaluation loop: batches of prompts go to an [`AnswerGenerator`] (the model, greedy), each
//! response is extracted, matched and appended to the sample log at once, and samples already in
//! the log are skipped.

use std::collections::HashSet;

use image::RgbImage;

use super::dataset::EvalSample;
use super::extract::extract_answer;
use super::matching::{score, MatchMode};
use super::report::{SampleLog, SampleRecord};
use super::EvalError;
use crate::infer::generator::ModelGenerator;
use crate::infer::prompt::{question_with_options, render, Template};

/// Greedy decoding budget of the authors' evaluation.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 2048;

/// One prompt handed to the generator.
#[derive(Debug, Clone)]
pub struct EvalPrompt {
    /// The sample id.
    pub id: String,
    /// The user text (template applied, options included).
    pub text: String,
    /// The image at its original size, if the sample has one.
    pub image: Option<RgbImage>,
}

/// Produces one response per prompt; implemented by the model (greedy, `max_new_tokens`) and by
/// test doubles.
pub trait AnswerGenerator {
    /// Responses for `batch`, in order.
    fn generate(&mut self, batch: &[EvalPrompt]) -> Result<Vec<String>, EvalError>;
}

/// The model itself: one batched greedy (or sampled) generation over the prompts' `[image, text]`
/// user turns.
impl AnswerGenerator for ModelGenerator {
    fn generate(&mut self, batch: &[EvalPrompt]) -> Result<Vec<String>, EvalError> {
        let turns: Vec<(&str, Option<&RgbImage>)> = batch
            .iter()
            .map(|p| (p.text.as_str(), p.image.as_ref()))
            .collect();
        self.answer(&turns)
            .map_err(|e| EvalError::Generator(e.to_string()))
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

/// Build the prompt for one sample, loading its image.
pub fn build_prompt(sample: &EvalSample, template: Template) -> Result<EvalPrompt, EvalError> {
    let image = match (&sample.pixels, &sample.image) {
        (Some(pixels), _) => Some(pixels.as_ref().clone()),
        (None, Some(path)) => Some(
            image::open(path)
                .map_err(|e| EvalError::Image {
                    path: path.clone(),
                    message: e.to_string(),
                })?
                .to_rgb8(),
        ),
        (None, None) => None,
    };
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
        render(
            template,
            &question_with_options(&sample.question, &sample.options),
            size,
        )
    };
    Ok(EvalPrompt {
        id: sample.id.clone(),
        text,
        image,
    })
}

/// Score one response.
pub fn score_response(
    sample: &EvalSample,
    prompt: &str,
    response: String,
    matching: MatchMode,
) -> SampleRecord {
    let answer = extract_answer(&response);
    let outcome = score(&sample.answer, answer.as_deref(), &sample.options, matching);
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
