//! `config.json` of a Qwen2.5-VL checkpoint, in both schemas that exist in the wild.
//!
//! * flat (as published for Qwen/Qwen2.5-VL-{3B,7B}-Instruct): text fields at the top level,
//!   `rope_scaling: {"type": "mrope", "mrope_section": [...]}`;
//! * nested (written by transformers >= 4.5x / 5.x): text fields under `text_config`, rope block
//!   named `rope_parameters` (v5) or `rope_scaling`.
//!
//! Text fields resolve as `text_config.X`, then top-level `X`. Vision fields have no defaults:
//! the transformers class defaults are not the checkpoint values, so a missing one is an error.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::ModelError;
use crate::tokenizer::{IMAGE_PAD_ID, VIDEO_PAD_ID, VISION_END_ID, VISION_START_ID};

/// Text decoder hyper-parameters (Qwen2 decoder with M-RoPE).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Frequencies per stream (t, h, w); sums to `head_dim / 2`.
    pub mrope_section: [i64; 3],
    pub max_position_embeddings: i64,
    /// `eos_token_id` of the config, as a list (may be empty).
    pub eos_token_ids: Vec<i64>,
}

impl TextConfig {
    /// Per-head width (`hidden_size / num_attention_heads`).
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// Vision tower hyper-parameters (`vision_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_heads: i64,
    pub in_channels: i64,
    pub patch_size: i64,
    pub temporal_patch_size: i64,
    pub spatial_merge_size: i64,
    /// Window side in pixels for the windowed-attention blocks.
    pub window_size: i64,
    pub fullatt_block_indexes: Vec<i64>,
    pub tokens_per_second: i64,
    pub out_hidden_size: i64,
    /// Theta of the 2-D rotary embedding (10000 in every published checkpoint).
    pub rope_theta: f64,
}

impl VisionConfig {
    /// Per-head width (`hidden_size / num_heads`).
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_heads
    }
    /// Columns of one `pixel_values` row: `in_channels * temporal_patch * patch * patch`.
    pub fn patch_dim(&self) -> i64 {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

/// The whole `Qwen2_5_VLConfig`, resolved and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2_5VLConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub tie_word_embeddings: bool,
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub vision_start_token_id: i64,
    pub vision_end_token_id: i64,
}

/// Raw `vision_config` as written on disk.
#[derive(Debug, Deserialize)]
struct RawVision {
    depth: Option<i64>,
    hidden_size: Option<i64>,
    intermediate_size: Option<i64>,
    num_heads: Option<i64>,
    in_chans: Option<i64>,
    in_channels: Option<i64>,
    patch_size: Option<i64>,
    spatial_patch_size: Option<i64>,
    temporal_patch_size: Option<i64>,
    spatial_merge_size: Option<i64>,
    window_size: Option<i64>,
    fullatt_block_indexes: Option<Vec<i64>>,
    tokens_per_second: Option<i64>,
    out_hidden_size: Option<i64>,
    hidden_act: Option<String>,
    rope_parameters: Option<Value>,
}

const DEFAULT_VISION_ROPE_THETA: f64 = 10000.0;

impl Qwen2_5VLConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            ModelError::Config(msg) => ModelError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses a `config.json` text in either schema.
    pub fn from_json_str(text: &str) -> Result<Self, ModelError> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("invalid JSON: {e}")))?;
        let obj = root
            .as_object()
            .ok_or_else(|| ModelError::Config("config.json is not an object".into()))?;
        let nested = obj.get("text_config").and_then(Value::as_object);
        // text_config.X, then top-level X
        let field = |name: &str| -> Option<&Value> {
            nested
                .and_then(|t| t.get(name))
                .filter(|v| !v.is_null())
                .or_else(|| obj.get(name).filter(|v| !v.is_null()))
        };
        let int = |name: &str| -> Result<i64, ModelError> {
            field(name)
                .ok_or_else(|| ModelError::Config(format!("missing text field `{name}`")))?
                .as_i64()
                .ok_or_else(|| ModelError::Config(format!("text field `{name}` is not an integer")))
        };
        let rope = field("rope_parameters").or_else(|| field("rope_scaling"));
        let mrope: Vec<i64> = rope
            .and_then(|r| r.get("mrope_section"))
            .ok_or_else(|| ModelError::Config("missing `rope_scaling.mrope_section`".into()))
            .and_then(|v| {
                serde_json::from_value(v.clone())
                    .map_err(|e| ModelError::Config(format!("bad `mrope_section`: {e}")))
            })?;
        let mrope_section: [i64; 3] = mrope.as_slice().try_into().map_err(|_| {
            ModelError::Config(format!(
                "`mrope_section` must have 3 entries, got {mrope:?}"
            ))
        })?;
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| field("rope_theta"))
            .and_then(Value::as_f64)
            .ok_or_else(|| ModelError::Config("missing `rope_theta`".into()))?;
        let eos_token_ids = match field("eos_token_id") {
            None => vec![],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
            Some(v) => v.as_i64().into_iter().collect(),
        };
        let num_attention_heads = int("num_attention_heads")?;
        let text = TextConfig {
            vocab_size: int("vocab_size")?,
            hidden_size: int("hidden_size")?,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: field("num_key_value_heads")
                .and_then(Value::as_i64)
                .unwrap_or(num_attention_heads),
            rms_norm_eps: field("rms_norm_eps")
                .and_then(Value::as_f64)
                .ok_or_else(|| ModelError::Config("missing `rms_norm_eps`".into()))?,
            rope_theta,
            mrope_section,
            max_position_embeddings: int("max_position_embeddings")?,
            eos_token_ids,
        };
        if let Some(act) = field("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(ModelError::Config(format!(
                    "text hidden_act `{act}` unsupported (Qwen2.5-VL uses silu)"
                )));
            }
        }

        let raw_vision = obj
            .get("vision_config")
            .ok_or_else(|| ModelError::Config("missing `vision_config`".into()))?;
        let rv: RawVision = serde_json::from_value(raw_vision.clone())
            .map_err(|e| ModelError::Config(format!("bad `vision_config`: {e}")))?;
        let need = |v: Option<i64>, name: &str| {
            v.ok_or_else(|| ModelError::Config(format!("missing `vision_config.{name}`")))
        };
        if let Some(act) = &rv.hidden_act {
            if act != "silu" {
                return Err(ModelError::Config(format!(
                    "vision hidden_act `{act}` unsupported (Qwen2.5-VL uses silu)"
                )));
            }
        }
        let vision = VisionConfig {
            depth: need(rv.depth, "depth")?,
            hidden_size: need(rv.hidden_size, "hidden_size")?,
            intermediate_size: need(rv.intermediate_size, "intermediate_size")?,
            num_heads: need(rv.num_heads, "num_heads")?,
            in_channels: need(rv.in_channels.or(rv.in_chans), "in_channels")?,
            patch_size: need(rv.patch_size.or(rv.spatial_patch_size), "patch_size")?,
            temporal_patch_size: need(rv.temporal_patch_size, "temporal_patch_size")?,
            spatial_merge_size: need(rv.spatial_merge_size, "spatial_merge_size")?,
            window_size: need(rv.window_size, "window_size")?,
            fullatt_block_indexes: rv.fullatt_block_indexes.ok_or_else(|| {
                ModelError::Config("missing `vision_config.fullatt_block_indexes`".into())
            })?,
            tokens_per_second: need(rv.tokens_per_second, "tokens_per_second")?,
            out_hidden_size: need(rv.out_hidden_size, "out_hidden_size")?,
            rope_theta: rv
                .rope_parameters
                .as_ref()
                .and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(DEFAULT_VISION_ROPE_THETA),
        };
        let top_int =
            |name: &str, default: i64| obj.get(name).and_then(Value::as_i64).unwrap_or(default);
        let tie_word_embeddings = obj
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .or_else(|| {
                nested
                    .and_then(|t| t.get("tie_word_embeddings"))
                    .and_then(Value::as_bool)
            })
            .unwrap_or(false);
        let cfg = Qwen2_5VLConfig {
            text,
            vision,
            tie_word_embeddings,
            image_token_id: top_int("image_token_id", IMAGE_PAD_ID),
            video_token_id: top_int("video_token_id", VIDEO_PAD_ID),
            vision_start_token_id: top_int("vision_start_token_id", VISION_START_ID),
            vision_end_token_id: top_int("vision_end_token_id", VISION_END_ID),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the shape constraints the forward pass relies on.
    pub fn validate(&self) -> Result<(), ModelError> {
        let t = &self.text;
        let v = &self.vision;
        let err = |m: String| Err(ModelError::Config(m));
        let positive = [
            ("vocab_size", t.vocab_size),
            ("hidden_size", t.hidden_size),
            ("num_hidden_layers", t.num_hidden_layers),
            ("num_attention_heads", t.num_attention_heads),
            ("num_key_value_heads", t.num_key_value_heads),
            ("vision_config.depth", v.depth),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_heads", v.num_heads),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.spatial_merge_size", v.spatial_merge_size),
        ];
        for (name, value) in positive {
            if value <= 0 {
                return err(format!("`{name}` must be positive, got {value}"));
            }
        }
        if t.hidden_size % t.num_attention_heads != 0 {
            return err(format!(
                "hidden_size {} not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if t.num_attention_heads % t.num_key_value_heads != 0 {
            return err(format!(
                "num_attention_heads {} not divisible by num_key_value_heads {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        if 2 * t.mrope_section.iter().sum::<i64>() != t.head_dim() {
            return err(format!(
                "mrope_section {:?} must sum to head_dim/2 = {}",
                t.mrope_section,
                t.head_dim() / 2
            ));
        }
        if v.hidden_size % v.num_heads != 0 || v.head_dim() % 4 != 0 {
            return err(format!(
                "vision head_dim {}/{} must be an integer divisible by 4",
                v.hidden_size, v.num_heads
            ));
        }
        if v.out_hidden_size != t.hidden_size {
            return err(format!(
                "vision_config.out_hidden_size {} != text hidden_size {}",
                v.out_hidden_size, t.hidden_size
            ));
        }
        let unit = v.patch_size * v.spatial_merge_size;
        if v.window_size % unit != 0 {
            return err(format!(
                "vision_config.window_size {} is not a multiple of patch_size*spatial_merge_size {unit}",
                v.window_size
            ));
        }
        if let Some(bad) = v
            .fullatt_block_indexes
            .iter()
            .find(|&&i| i < 0 || i >= v.depth)
        {
            return err(format!(
                "fullatt_block_indexes entry {bad} outside 0..{}",
                v.depth
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT_7B: &str = r#"{
      "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
      "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
      "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
      "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 128000,
      "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
      "tie_word_embeddings": false, "vocab_size": 152064, "bos_token_id": 151643,
      "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
      "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
      "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
        "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584,
        "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
        "temporal_patch_size": 2}
    }"#;

    #[test]
    fn parses_published_flat_schema() {
        let c = Qwen2_5VLConfig::from_json_str(FLAT_7B).unwrap();
        assert_eq!(c.text.hidden_size, 3584);
        assert_eq!(c.text.head_dim(), 128);
        assert_eq!(c.text.mrope_section, [16, 24, 24]);
        assert_eq!(c.text.rope_theta, 1e6);
        assert_eq!(c.text.eos_token_ids, vec![151645]);
        assert_eq!(c.vision.in_channels, 3);
        assert_eq!(c.vision.head_dim(), 80);
        assert_eq!(c.vision.patch_dim(), 1176);
        assert_eq!(c.vision.fullatt_block_indexes, vec![7, 15, 23, 31]);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.image_token_id, 151655);
    }

    #[test]
    fn nested_v5_schema_matches_flat() {
        let nested = r#"{
          "model_type": "qwen2_5_vl", "tie_word_embeddings": false, "image_token_id": 151655,
          "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
            "rms_norm_eps": 1e-06, "max_position_embeddings": 128000, "vocab_size": 152064,
            "eos_token_id": 151645,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                "mrope_section": [16, 24, 24]}},
          "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
            "intermediate_size": 3420, "num_heads": 16, "in_channels": 3, "out_hidden_size": 3584,
            "patch_size": 14, "spatial_merge_size": 2, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
            "temporal_patch_size": 2}
        }"#;
        assert_eq!(
            Qwen2_5VLConfig::from_json_str(nested).unwrap(),
            Qwen2_5VLConfig::from_json_str(FLAT_7B).unwrap()
        );
    }

    #[test]
    fn missing_vision_field_is_an_error() {
        let text = FLAT_7B.replace("\"window_size\": 112,", "");
        let err = Qwen2_5VLConfig::from_json_str(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vision_config.window_size"), "{err}");
    }

    #[test]
    fn inconsistent_mrope_is_an_error() {
        let text = FLAT_7B.replace("[16, 24, 24]", "[16, 24, 20]");
        let err = Qwen2_5VLConfig::from_json_str(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mrope_section"), "{err}");
    }
}
