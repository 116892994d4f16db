//! Single-image inference with a SpatialThinker checkpoint: the prompt, the parsed response and
//! the scene-graph overlay, and the batched model call ([`generator::ModelGenerator`]) that
//! `infer` and `eval` share.

pub mod generator;
pub mod overlay;
pub mod parse;
pub mod prompt;
