//! Qwen2.5-VL on libtorch (tch) and the GRPO trainer that reproduces SpatialThinker.

pub mod device;
pub mod grpo;
pub mod tokenizer;
