//! One module per subcommand: its clap `Args` and a `run` function.

pub mod doctor;
pub mod eval;
pub mod infer;
pub mod serve;
