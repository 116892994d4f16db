//! One module per subcommand: its clap `Args` and a `run` function.

pub mod data;
pub mod doctor;
