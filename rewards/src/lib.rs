//! SpatialThinker rewards: the dense spatial reward (`spatial`) and the vanilla GRPO reward (`r1v`).
//!
//! Pure Rust, no libtorch: the trainer scores rollouts with it, and so can any other tool.
