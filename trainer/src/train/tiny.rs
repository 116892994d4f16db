//! The `tiny-random` model preset: a Qwen2.5-VL-architecture checkpoint small enough to train on
//! two CPU cores in minutes, built from a seed (no download) and written in the Hugging Face
//! layout, so every later stage (training, `transformers`, `serve`) reads it like a real one.
//!
//! It keeps everything that makes the architecture what it is (the real 151,936-row vocabulary
//! and tokenizer, M-RoPE with sections, window + full attention blocks in the vision tower, the
//! 2×2 patch merger, tied embeddings as in the 3B) and shrinks the widths and depths.

use std::fs;
use std::path::Path;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::{Result, TrainError};
use crate::model::weights::expected_tensors;
use crate::model::Qwen2_5VLConfig;
use crate::processor::PreprocessorConfig;
use crate::tokenizer::{embedded_tokenizer_json, ENDOFTEXT_ID, IM_END_ID};

/// Name of the preset in `model.path`.
pub const TINY_RANDOM: &str = "tiny-random";
/// `model.path` of [`TinyShape::mid`].
pub const MID_RANDOM: &str = "mid-random";
/// `model.path` of [`TinyShape::deep`].
pub const DEEP_RANDOM: &str = "deep-random";
/// `model.path` of [`TinyShape::bench`].
pub const BENCH_RANDOM: &str = "bench-random";
/// `model.path` of [`TinyShape::small`].
pub const SMALL_RANDOM: &str = "small-random";

/// The shape of a random preset named in `model.path` (`tiny-random`, `mid-random`,
/// `deep-random`), if `name` is one.
pub fn preset_shape(name: &str) -> Option<TinyShape> {
    match name {
        TINY_RANDOM => Some(TinyShape::default()),
        MID_RANDOM => Some(TinyShape::mid()),
        DEEP_RANDOM => Some(TinyShape::deep()),
        BENCH_RANDOM => Some(TinyShape::bench()),
        SMALL_RANDOM => Some(TinyShape::small()),
        _ => None,
    }
}
/// Standard deviation of the normal initialisation (`initializer_range` of the published config).
pub const INITIALIZER_RANGE: f64 = 0.02;
/// Vocabulary rows of the published 3B checkpoint (151,665 tokenizer ids padded to 151,936).
pub const QWEN25VL_VOCAB_ROWS: i64 = 151_936;
/// Vocabulary rows of the published 7B checkpoint (padded to 152,064; its head is untied).
pub const QWEN25VL_7B_VOCAB_ROWS: i64 = 152_064;

/// Widths and depths of the tiny preset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TinyShape {
    /// Text `hidden_size`.
    pub hidden_size: i64,
    /// Text `intermediate_size`.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: i64,
    /// M-RoPE split of the rotary half-dimension over (t, h, w).
    pub mrope_section: [i64; 3],
    /// Vision tower width.
    pub vision_hidden_size: i64,
    /// Vision MLP width.
    pub vision_intermediate_size: i64,
    /// Vision blocks (the last one uses full attention, the others windowed).
    pub vision_depth: i64,
    /// Vision heads.
    pub vision_num_heads: i64,
    /// Rows of the embedding and of the head.
    pub vocab_size: i64,
    /// Whether the head shares the embedding matrix (the 3B) or has its own `lm_head` (the 7B).
    pub tie_word_embeddings: bool,
}

impl Default for TinyShape {
    /// 2 decoder layers of width 64 (head dim 16), a 2-block vision tower of width 32.
    fn default() -> Self {
        TinyShape {
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            mrope_section: [4, 2, 2],
            vision_hidden_size: 32,
            vision_intermediate_size: 64,
            vision_depth: 2,
            vision_num_heads: 2,
            vocab_size: QWEN25VL_VOCAB_ROWS,
            tie_word_embeddings: true,
        }
    }
}

impl TinyShape {
    /// A mid-size shape for GPU and memory measurements: 8 decoder layers of width 1,024 with the
    /// 7B's head dimension (8 query heads of 128, 2 KV heads, M-RoPE sections 16/24/24) and MLP
    /// ratio; ≈ 0.31 B parameters with the full vocabulary, so its attention and KV traffic have
    /// the real model's per-head shape while it is written in seconds.
    pub fn mid() -> Self {
        TinyShape {
            hidden_size: 1024,
            intermediate_size: 5504,
            num_hidden_layers: 8,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            mrope_section: [16, 24, 24],
            ..TinyShape::default()
        }
    }

    /// The shape of the GRPO step comparison with TRL (`bench train` against
    /// `scripts/bench_trl_grpo.py`): 4 decoder layers of width 256 (8 query heads of 32, 2 KV
    /// heads, MLP 688), a 4-block vision tower of width 128 and the 7B's untied 152,064-row head,
    /// so the decoder and not the head dominates the step, as it does at scale.
    pub fn bench() -> Self {
        TinyShape {
            hidden_size: 256,
            intermediate_size: 688,
            num_hidden_layers: 4,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            mrope_section: [4, 6, 6],
            vision_hidden_size: 128,
            vision_intermediate_size: 512,
            vision_depth: 4,
            vision_num_heads: 4,
            vocab_size: QWEN25VL_7B_VOCAB_ROWS,
            tie_word_embeddings: false,
        }
    }

    /// Twice the tiny preset's depth and width, for CPU demos that need a little more capacity:
    /// 4 decoder layers of width 128 (4 query heads of 32, 2 KV heads, MLP 256) and a 2-block
    /// vision tower of width 64, with the tied full vocabulary.
    pub fn small() -> Self {
        TinyShape {
            hidden_size: 128,
            intermediate_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            mrope_section: [4, 6, 6],
            vision_hidden_size: 64,
            vision_intermediate_size: 128,
            vision_depth: 2,
            vision_num_heads: 2,
            ..TinyShape::default()
        }
    }

    /// A mid-size shape whose training activations dominate its state, for memory
    /// measurements on the CPU: 16 decoder layers of width 512 (8 query heads of 64, 2 KV heads,
    /// MLP 2,048), ≈ 0.14 B parameters with the tied full vocabulary; a micro-batch of 4
    /// sequences of 3,000 tokens keeps ≈ 10 GiB of activations without checkpointing.
    pub fn deep() -> Self {
        TinyShape {
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 16,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            mrope_section: [8, 12, 12],
            ..TinyShape::default()
        }
    }
}

/// `config.json` of the preset (the `transformers` 5 layout of Qwen2.5-VL).
pub fn tiny_config_json(shape: &TinyShape) -> serde_json::Value {
    let text = json!({
        "model_type": "qwen2_5_vl_text",
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": 128000,
        "max_window_layers": shape.num_hidden_layers,
        "layer_types": vec!["full_attention"; shape.num_hidden_layers as usize],
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": shape.mrope_section,
        },
        "attention_dropout": 0.0,
        "initializer_range": INITIALIZER_RANGE,
        "sliding_window": null,
        "use_sliding_window": false,
        "use_cache": true,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "vocab_size": shape.vocab_size,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "pad_token_id": null,
    });
    let full_attention_block = shape.vision_depth - 1;
    let vision = json!({
        "model_type": "qwen2_5_vl_vision",
        "depth": shape.vision_depth,
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_heads": shape.vision_num_heads,
        "out_hidden_size": shape.hidden_size,
        "hidden_act": "silu",
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
        "fullatt_block_indexes": [full_attention_block],
        "initializer_range": INITIALIZER_RANGE,
    });
    json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "image_token_id": crate::tokenizer::IMAGE_PAD_ID,
        "video_token_id": crate::tokenizer::VIDEO_PAD_ID,
        "vision_start_token_id": crate::tokenizer::VISION_START_ID,
        "vision_end_token_id": crate::tokenizer::VISION_END_ID,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "text_config": text,
        "vision_config": vision,
    })
}

/// Initial value of one weight, by the rules of `transformers`' `_init_weights`: RMSNorm
/// weights 1, biases 0, every other matrix (embeddings, projections, the patch embedding)
/// normal with std [`INITIALIZER_RANGE`].
fn init_tensor(name: &str, shape: &[i64]) -> Tensor {
    let opts = (Kind::Float, Device::Cpu);
    let leaf = name.rsplit('.').nth(1).unwrap_or_default();
    let is_norm = leaf.contains("norm") || leaf == "ln_q";
    if name.ends_with(".bias") {
        Tensor::zeros(shape, opts)
    } else if is_norm {
        Tensor::ones(shape, opts)
    } else {
        Tensor::randn(shape, opts) * INITIALIZER_RANGE
    }
}

/// Writes the preset into `dir`: `config.json`, `model.safetensors` (f32, seeded), the embedded
/// tokenizer as `tokenizer.json` + `tokenizer_config.json`, `preprocessor_config.json` with the
/// given pixel limits, and `generation_config.json`. The same seed writes identical weights.
pub fn write_tiny_random(
    dir: &Path,
    shape: &TinyShape,
    seed: u64,
    pixels: (u64, u64),
) -> Result<()> {
    let config = tiny_config_json(shape);
    let parsed = Qwen2_5VLConfig::from_json_str(&config.to_string())?;
    fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    tch::manual_seed(seed as i64);
    let tensors: Vec<(String, Tensor)> = expected_tensors(&parsed)?
        .into_iter()
        .map(|(name, shape)| {
            let t = init_tensor(&name, &shape);
            (name, t)
        })
        .collect();
    let tmp = dir.join("model.safetensors.tmp");
    Tensor::write_safetensors(&tensors, &tmp)?;
    fs::rename(&tmp, dir.join("model.safetensors")).map_err(|e| TrainError::io(dir, e))?;

    let pre = PreprocessorConfig::qwen25vl();
    let preprocessor = json!({
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "min_pixels": pixels.0,
        "max_pixels": pixels.1,
        "size": {"shortest_edge": pixels.0, "longest_edge": pixels.1},
        "patch_size": pre.patch_size,
        "temporal_patch_size": pre.temporal_patch_size,
        "merge_size": pre.merge_size,
        "image_mean": pre.image_mean,
        "image_std": pre.image_std,
        "rescale_factor": pre.rescale_factor,
        "do_resize": true,
        "do_rescale": true,
        "do_normalize": true,
        "do_convert_rgb": true,
        "resample": pre.resample,
    });
    let files = [
        ("config.json", serde_json::to_string_pretty(&config)?),
        ("tokenizer.json", embedded_tokenizer_json()?),
        (
            "tokenizer_config.json",
            serde_json::to_string_pretty(&json!({
                "tokenizer_class": "Qwen2Tokenizer",
                "model_max_length": 131072,
                "pad_token": "<|endoftext|>",
                "eos_token": "<|im_end|>",
                "unk_token": null,
                "bos_token": null,
                "add_bos_token": false,
                "clean_up_tokenization_spaces": false,
                "errors": "replace",
                "split_special_tokens": false,
            }))?,
        ),
        (
            "preprocessor_config.json",
            serde_json::to_string_pretty(&preprocessor)?,
        ),
        (
            "generation_config.json",
            serde_json::to_string_pretty(&json!({
                "bos_token_id": ENDOFTEXT_ID,
                "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
                "pad_token_id": ENDOFTEXT_ID,
                "do_sample": true,
                "temperature": 1.0,
            }))?,
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| TrainError::io(&path, e))?;
    }
    Ok(())
}
