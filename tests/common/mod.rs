//! Helpers shared by the integration tests that train on the tiny fixture model with a synthetic
//! dataset (`mod common;` in each; a test file uses what it needs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use trainer::processor::Processor;
use trainer::train::rollout::{PromptBuilder, PromptItem};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `tiny3b` fixture: real vocabulary, width 16, a vision tower.
pub fn tiny_model() -> PathBuf {
    root().join("tests/fixtures/qwen25vl/tiny3b")
}

/// A synthetic dataset of 8 training and 2 validation rows under `dir/data`.
pub fn synthetic(dir: &Path, seed: u64) -> PathBuf {
    let data = dir.join("data");
    let cfg = data::synth::SynthConfig {
        seed,
        ..Default::default()
    };
    data::synth::write_dataset(&cfg, &data, 8, 2).unwrap();
    data
}

/// The first `rows` training rows of `data` as prompts (images of 64 patches).
pub fn encode_first(processor: &Processor, data: &Path, rows: usize) -> Vec<PromptItem> {
    let files = data::DatasetFiles::from_path(data).unwrap();
    let mut loader = data::Loader::open(
        files.split("train").unwrap(),
        data::LoaderConfig {
            batch_size: rows,
            shuffle: false,
            ..Default::default()
        },
        data::Cursor::default(),
    )
    .unwrap();
    let builder = PromptBuilder {
        min_pixels: 3136,
        max_pixels: 12544,
        max_prompt_length: 4096,
        format_prompt: None,
    };
    builder
        .encode_all(processor, &loader.next_batch().unwrap().samples)
        .unwrap()
}
