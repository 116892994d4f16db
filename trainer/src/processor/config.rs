//! `preprocessor_config.json` of a Qwen2-VL / Qwen2.5-VL checkpoint.

use std::path::Path;

use serde::Deserialize;

use super::ProcessorError;

/// `PILImageResampling.BICUBIC`, the only filter Qwen2-VL checkpoints use.
pub const RESAMPLE_BICUBIC: u32 = 3;
/// OpenAI CLIP per-channel mean (`image_mean` of every Qwen2-VL checkpoint).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP per-channel standard deviation.
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// `min_pixels` of the published Qwen2.5-VL-3B/7B preprocessor configs (56·56).
pub const QWEN25VL_MIN_PIXELS: u64 = 3136;
/// `max_pixels` of the published Qwen2.5-VL-3B/7B preprocessor configs (16384·28·28).
pub const QWEN25VL_MAX_PIXELS: u64 = 12_845_056;
/// Class default `size.shortest_edge` of `Qwen2VLImageProcessor` when a config names no limit.
pub const CLASS_DEFAULT_MIN_PIXELS: u64 = 56 * 56;
/// Class default `size.longest_edge` of `Qwen2VLImageProcessor` when a config names no limit.
pub const CLASS_DEFAULT_MAX_PIXELS: u64 = 28 * 28 * 1280;

/// The `size` entry of newer configs: pixel-count limits under transformers' key names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SizeConfig {
    /// Minimum pixel count (despite the name, an area).
    pub shortest_edge: Option<u64>,
    /// Maximum pixel count (despite the name, an area).
    pub longest_edge: Option<u64>,
}

/// The fields of `preprocessor_config.json` that change what the image processor computes.
/// Unknown keys (`image_processor_type`, `processor_class`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PreprocessorConfig {
    /// Legacy minimum pixel count; takes precedence over `size.shortest_edge`.
    #[serde(default)]
    pub min_pixels: Option<u64>,
    /// Legacy maximum pixel count; takes precedence over `size.longest_edge`.
    #[serde(default)]
    pub max_pixels: Option<u64>,
    /// Newer pixel limits.
    #[serde(default)]
    pub size: Option<SizeConfig>,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "default_merge_size")]
    pub merge_size: usize,
    #[serde(default = "default_image_mean")]
    pub image_mean: [f64; 3],
    #[serde(default = "default_image_std")]
    pub image_std: [f64; 3],
    #[serde(default = "default_rescale_factor")]
    pub rescale_factor: f64,
    #[serde(default = "default_true")]
    pub do_resize: bool,
    #[serde(default = "default_true")]
    pub do_rescale: bool,
    #[serde(default = "default_true")]
    pub do_normalize: bool,
    #[serde(default = "default_true")]
    pub do_convert_rgb: bool,
    /// PIL resampling filter id; only 3 (BICUBIC) is supported.
    #[serde(default = "default_resample")]
    pub resample: u32,
}

fn default_patch_size() -> usize {
    14
}
fn default_temporal_patch_size() -> usize {
    2
}
fn default_merge_size() -> usize {
    2
}
fn default_image_mean() -> [f64; 3] {
    OPENAI_CLIP_MEAN
}
fn default_image_std() -> [f64; 3] {
    OPENAI_CLIP_STD
}
fn default_rescale_factor() -> f64 {
    1.0 / 255.0
}
fn default_true() -> bool {
    true
}
fn default_resample() -> u32 {
    RESAMPLE_BICUBIC
}

impl PreprocessorConfig {
    /// The values of the published Qwen2.5-VL-3B/7B `preprocessor_config.json`.
    pub fn qwen25vl() -> Self {
        Self {
            min_pixels: Some(QWEN25VL_MIN_PIXELS),
            max_pixels: Some(QWEN25VL_MAX_PIXELS),
            size: None,
            patch_size: default_patch_size(),
            temporal_patch_size: default_temporal_patch_size(),
            merge_size: default_merge_size(),
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            rescale_factor: default_rescale_factor(),
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            do_convert_rgb: true,
            resample: RESAMPLE_BICUBIC,
        }
    }

    /// Reads and validates `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ProcessorError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProcessorError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|e| ProcessorError::Config {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Pixel limits `(min, max)` with transformers 5.23's precedence: `min_pixels`/`max_pixels`
    /// override `size`, a config with neither gets the class defaults, and a `size` entry
    /// missing a key that no legacy field supplies gives `None` (transformers raises then).
    pub fn pixel_limits(&self) -> Option<(u64, u64)> {
        let size = self.size.clone().unwrap_or(SizeConfig {
            shortest_edge: Some(CLASS_DEFAULT_MIN_PIXELS),
            longest_edge: Some(CLASS_DEFAULT_MAX_PIXELS),
        });
        let min = self.min_pixels.or(size.shortest_edge)?;
        let max = self.max_pixels.or(size.longest_edge)?;
        Some((min, max))
    }

    /// Checks the values the processor relies on; `origin` names the file in errors.
    pub fn validate(&self, origin: &str) -> Result<(), ProcessorError> {
        let bad = |message: String| {
            Err(ProcessorError::Config {
                path: origin.to_string(),
                message,
            })
        };
        if self.resample != RESAMPLE_BICUBIC {
            return bad(format!(
                "resample {} is not supported (only 3 = BICUBIC)",
                self.resample
            ));
        }
        if self.patch_size == 0 || self.merge_size == 0 || self.temporal_patch_size == 0 {
            return bad(format!(
                "patch_size {}, merge_size {} and temporal_patch_size {} must be positive",
                self.patch_size, self.merge_size, self.temporal_patch_size
            ));
        }
        if self.image_std.contains(&0.0) {
            return bad("image_std contains 0".into());
        }
        let Some((min, max)) = self.pixel_limits() else {
            return bad("`size` needs both shortest_edge and longest_edge".into());
        };
        if min == 0 || max < min {
            return bad(format!(
                "pixel limits min {min} / max {max} are not 0 < min <= max"
            ));
        }
        Ok(())
    }
}
