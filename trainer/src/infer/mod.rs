//! Single-image inference with a SpatialThinker checkpoint: the prompt, the parsed response and
//! the scene-graph overlay. The model call itself lives with the model; everything here is pure.

pub mod overlay;
pub mod parse;
pub mod prompt;
