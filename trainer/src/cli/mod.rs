//! One module per subcommand: its clap `Args` and a `run` function.

pub mod bench;
pub mod data;
pub mod doctor;
pub mod eval;
pub mod generate;
pub mod infer;
pub mod logprobs;
pub mod reward;
pub mod serve;
pub mod train;

use trainer::device::{DeviceArg, DtypeArg};

/// Where a model runs and in which precision (`--device`, `--dtype`), shared by every command
/// that loads one.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Placement {
    /// Device: `cpu`, `cuda` or `cuda:K`.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Weight precision: `f32`, or `bf16` (the CUDA default of the recipes).
    #[arg(long, default_value = "f32")]
    pub dtype: DtypeArg,
}
