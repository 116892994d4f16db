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
