//! Qwen2.5-VL on libtorch (tch) and the GRPO trainer that reproduces SpatialThinker.

pub mod device;
pub mod generate;
pub mod model;
pub mod processor;
pub mod tokenizer;
