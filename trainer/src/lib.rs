//! Qwen2.5-VL on libtorch (tch) and the GRPO trainer that reproduces SpatialThinker.

pub mod device;
pub mod distributed;
pub mod eval;
pub mod generate;
pub mod grpo;
pub mod infer;
pub mod model;
pub mod processor;
pub mod report;
pub mod serve;
pub mod tokenizer;
pub mod train;
