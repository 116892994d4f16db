//! The prompt template a run trains with, recorded next to its checkpoints
//! ([`crate::infer::prompt::PROMPT_TEMPLATE_FILE`]) so that `infer`, `eval` and `serve` ask a
//! checkpoint in the words it was trained on rather than the authors' evaluation template
//! (docs/recipe.md, "Training prompt" and "Evaluation prompt").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use data::{Cursor, Loader, RowRef};

use super::config::TrainConfig;
use super::rollout::PromptBuilder;
use super::setup::loader_config;
use super::Result;
use crate::infer::prompt::{TrainedTemplate, PROMPT_TEMPLATE_FILE};
use crate::processor::ContentPart;

/// Derives the template from the first usable training row (its text exactly as
/// [`PromptBuilder::messages`] sends it) and writes it to `out_dir`; returns the file, which
/// every checkpoint then copies. A prompt the template cannot be derived from (no question or
/// image-size line found) is a warning, not an error: the run goes on and its checkpoints record
/// no template.
pub fn record_prompt_template(
    cfg: &TrainConfig,
    builder: &PromptBuilder,
    train_files: &[PathBuf],
    exclude: &BTreeSet<RowRef>,
    out_dir: &Path,
) -> Result<Option<PathBuf>> {
    let mut loader = Loader::open(
        train_files,
        loader_config(cfg, 1, false, 0, exclude),
        Cursor::default(),
    )?;
    let Some(batch) = loader.next_batch_of(0)? else {
        return Ok(None);
    };
    let Some(sample) = batch.samples.first() else {
        return Ok(None);
    };
    let [message] = builder.messages(&sample.record.prompt);
    let text: String = message
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let derived = TrainedTemplate::derive(
        &text,
        sample.record.question_with_options.as_deref(),
        sample.stated_size,
        &sample.record.source.to_string(),
        (builder.min_pixels, builder.max_pixels),
    );
    match derived {
        Ok(template) => {
            let path = out_dir.join(PROMPT_TEMPLATE_FILE);
            template
                .write(&path)
                .map_err(|e| super::TrainError::Config(e.to_string()))?;
            Ok(Some(path))
        }
        Err(e) => {
            eprintln!(
                "warning: no prompt template recorded in the checkpoints ({e}); infer, eval and \
                 serve will default to the SpatialThinker evaluation template"
            );
            Ok(None)
        }
    }
}
