//! `spatialthinker logprobs`: teacher-forced log-probs of a response to one image + text turn.

use anyhow::Result;
use trainer::generate::{response_logprobs, ResponseBatch};
use trainer::model::VisionInputs;
use trainer::processor::PAD_ID;

use super::generate::ImageTurn;

/// Log-probs of each response token given the prompt (the quantity GRPO uses).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    turn: ImageTurn,
    /// Response text, tokenised without special tokens.
    #[arg(long)]
    response: String,
    /// Softmax temperature applied to the logits.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Print `{"prompt_tokens": n, "response_ids": [...], "logprobs": [...]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let (processor, encoded, model) = args.turn.load()?;
    let response = processor.tokenize(&args.response)?;
    let prompt_tokens = encoded.input_ids.len();
    let batch = ResponseBatch {
        prompts: vec![encoded.input_ids],
        responses: vec![response.clone()],
        images: Some(VisionInputs::new(
            encoded.pixel_values,
            encoded.image_grid_thw,
        )),
    };
    let lp = tch::no_grad(|| response_logprobs(&model, &batch, args.temperature, PAD_ID))?;
    let values = Vec::<f32>::try_from(
        lp.logprobs
            .f_flatten(0, -1)?
            .f_to_device(tch::Device::Cpu)?,
    )?;
    let report = serde_json::json!({
        "prompt_tokens": prompt_tokens, "response_ids": response, "logprobs": values,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("prompt tokens: {prompt_tokens}");
        for (id, v) in response.iter().zip(&values) {
            println!("{id:>8} {v:>12.6}");
        }
    }
    Ok(())
}
