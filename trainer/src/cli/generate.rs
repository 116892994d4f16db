//! `spatialthinker generate`: sample continuations of one image + text user turn.

use std::path::{Path, PathBuf};

use super::Placement;
use anyhow::{Context, Result};
use data::rng::SplitMix64;
use trainer::generate::{generate, PromptBatch, SamplingConfig};
use trainer::model::{Qwen2_5VLForConditionalGeneration, VisionInputs};
use trainer::processor::{ChatMessage, EncodedPrompt, Processor};

/// A checkpoint and one `[image, text]` user turn (what `generate` and `logprobs` read).
#[derive(Debug, clap::Args)]
pub struct ImageTurn {
    /// Checkpoint folder (config.json + safetensors) or hub id.
    #[arg(long)]
    model: PathBuf,
    /// Image file.
    #[arg(long)]
    image: PathBuf,
    /// User text, placed after the image.
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    placement: Placement,
}

impl ImageTurn {
    /// Resolves `--model`, encodes the turn with its processor (so a bad image fails before the
    /// weights are read), then loads the weights as `placement` says.
    pub fn load(&self) -> Result<(Processor, EncodedPrompt, Qwen2_5VLForConditionalGeneration)> {
        let dir = model_dir(&self.model)?;
        self.placement.device.resolve()?; // a bad --device fails before anything is read
        let processor = load_processor(&dir)?;
        let encoded = encode_user_turn(&processor, &self.image, &self.prompt)?;
        let model = self.placement.load_model(&dir)?;
        Ok((processor, encoded, model))
    }
}

/// Generate from a checkpoint for one image and one prompt.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    turn: ImageTurn,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Arg-max decoding (ignores temperature, top-p, top-k).
    #[arg(long)]
    greedy: bool,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Samples for the prompt (sharing one prefill).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Print `{"samples":[{"ids":[...],"text":"..."}]}`.
    #[arg(long)]
    json: bool,
}

/// Resolves `--model`: a local checkpoint folder or a hub id in the Hugging Face cache.
pub fn model_dir(model: &Path) -> Result<PathBuf> {
    Ok(trainer::model::locate_checkpoint(&model.to_string_lossy())?)
}

/// Resolves `--model` and loads it as a batched answer generator (greedy, `max_new_tokens`).
pub fn load_generator(
    model: &Path,
    placement: Placement,
    max_new_tokens: usize,
) -> Result<trainer::infer::generator::ModelGenerator> {
    let dir = model_dir(model)?;
    let mut generator = trainer::infer::generator::ModelGenerator::load(
        &dir,
        placement.device.resolve()?,
        placement.dtype.kind(),
        max_new_tokens,
    )
    .with_context(|| format!("loading {}", dir.display()))?;
    placement.apply_adapter(&mut generator.model)?;
    placement.apply_output_vocab(&mut generator.model, &dir)?;
    Ok(generator)
}

/// Loads the processor of a checkpoint folder: its tokenizer (or the embedded one) and its
/// `preprocessor_config.json` (or the published Qwen2.5-VL one).
pub fn load_processor(dir: &Path) -> Result<Processor> {
    Ok(Processor::from_model_dir(dir)?)
}

/// Encodes one `[image, text]` user turn with the chat template and the generation prompt.
pub fn encode_user_turn(
    processor: &Processor,
    image: &Path,
    prompt: &str,
) -> Result<EncodedPrompt> {
    let img = image::open(image).with_context(|| format!("reading image {}", image.display()))?;
    let messages = [ChatMessage::user_image_text(prompt)];
    Ok(processor.encode_prompt(&messages, &[img])?)
}

pub fn run(args: Args) -> Result<()> {
    let (processor, encoded, model) = args.turn.load()?;
    let batch = PromptBatch {
        input_ids: vec![encoded.input_ids],
        images: Some(VisionInputs::new(
            encoded.pixel_values,
            encoded.image_grid_thw,
        )),
    };
    let cfg = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        greedy: args.greedy,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        ..SamplingConfig::default()
    };
    let samples = generate(
        &model,
        &batch,
        args.samples,
        &cfg,
        &mut SplitMix64::new(args.seed),
    )?;
    let mut out = Vec::new();
    for s in &samples {
        let ids: Vec<u32> = s.ids.iter().map(|&i| i as u32).collect();
        let text = processor
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
        out.push(serde_json::json!({"ids": s.ids, "text": text}));
    }
    if args.json {
        println!("{}", serde_json::json!({ "samples": out }));
    } else {
        for (i, s) in out.iter().enumerate() {
            println!("--- sample {i}\n{}", s["text"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}
