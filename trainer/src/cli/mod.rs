//! One module per subcommand: its clap `Args` and a `run` function.

pub mod bench;
pub mod bench_rollout;
pub mod data;
pub mod doctor;
pub mod eval;
pub mod export;
pub mod generate;
pub mod infer;
pub mod launch;
pub mod logprobs;
pub mod plan;
pub mod report;
pub mod reward;
pub mod serve;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use trainer::device::{DeviceArg, DtypeArg};
use trainer::model::{read_output_vocab, Qwen2_5VLForConditionalGeneration, OUTPUT_VOCAB_FILE};

/// How a command loads its model (`--device`, `--dtype`, `--output-vocab`), shared by every
/// command that loads one.
#[derive(Debug, Clone, clap::Args)]
pub struct Placement {
    /// Device: `cpu`, `cuda` or `cuda:K`.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Weight precision: `f32`, or `bf16` (the CUDA default of the recipes).
    #[arg(long, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Restrict the output distribution to the token ids listed in FILE (a JSON list, as the
    /// trainer saves `output_vocab.json` with `model.output_vocab = "dataset"`); every other id
    /// gets probability 0. Without it the full vocabulary is used.
    #[arg(long, value_name = "FILE")]
    pub output_vocab: Option<PathBuf>,
    /// A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`: a LoRA
    /// run's checkpoint, or one PEFT saved) to apply on top of `--model`.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

impl Placement {
    /// Loads the checkpoint folder `dir` on the chosen device and precision, with the output
    /// vocabulary [`Placement::apply_output_vocab`] sets.
    pub fn load_model(&self, dir: &Path) -> Result<Qwen2_5VLForConditionalGeneration> {
        let mut model =
            Qwen2_5VLForConditionalGeneration::load(dir, self.device.resolve()?, self.dtype.kind())
                .with_context(|| format!("loading {}", dir.display()))?;
        self.apply_adapter(&mut model)?;
        self.apply_output_vocab(&mut model, dir)?;
        Ok(model)
    }

    /// Puts the `--adapter` folder's LoRA adapters on `model` (nothing without the flag).
    pub fn apply_adapter(&self, model: &mut Qwen2_5VLForConditionalGeneration) -> Result<()> {
        if let Some(dir) = &self.adapter {
            let cfg = model
                .load_adapter(dir)
                .with_context(|| format!("--adapter {}", dir.display()))?;
            let layers = model.lora_tensors().len() / 2;
            eprintln!(
                "adapter {}: rank {}, alpha {} on {layers} layers",
                dir.display(),
                cfg.r,
                cfg.alpha
            );
        }
        Ok(())
    }

    /// Restricts `model`'s output vocabulary to `--output-vocab` and says so; without the flag,
    /// says once that an `output_vocab.json` saved in the checkpoint folder `dir` is ignored.
    pub fn apply_output_vocab(
        &self,
        model: &mut Qwen2_5VLForConditionalGeneration,
        dir: &Path,
    ) -> Result<()> {
        match &self.output_vocab {
            Some(file) => {
                let ids = read_output_vocab(file)?;
                model
                    .restrict_output_vocab(&ids)
                    .with_context(|| format!("--output-vocab {}", file.display()))?;
                let kept = model.output_vocab().map_or(0, |v| v.ids.len());
                eprintln!(
                    "output vocabulary restricted to {kept} ids from {}",
                    file.display()
                );
            }
            None => {
                let saved = dir.join(OUTPUT_VOCAB_FILE);
                if saved.is_file() {
                    eprintln!(
                        "note: {} is ignored, the full vocabulary is used; pass --output-vocab {} to restrict the output to its ids",
                        saved.display(),
                        saved.display()
                    );
                }
            }
        }
        Ok(())
    }
}
