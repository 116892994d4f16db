//! OpenAI chat-completions wire types and their validation into [`GenerationRequest`]s.

use std::io::Cursor;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::engine::{ChatMessage, ContentPart, FinishReason, GenerationRequest, SamplingParams};
use super::error::ApiError;

/// Server-side limits applied to each request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted image, in pixels (width × height), checked before decoding.
    pub max_image_pixels: u64,
    /// Largest `max_tokens`; also the default when a request gives none.
    pub max_tokens: usize,
    /// Largest `n`.
    pub max_n: u32,
    /// Whether `image_url` may name a local file (`file://` or an absolute path).
    pub allow_local_files: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            max_image_pixels: 12_845_056,
            max_tokens: 2048,
            max_n: 8,
            allow_local_files: false,
        }
    }
}

/// `POST /v1/chat/completions` body (unknown fields are ignored, as OpenAI-compatible servers do).
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    /// Model name; must be the served one when given.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<MessageIn>,
    /// Sampling temperature in [0, 2]; default 1 as in OpenAI's API (0 = greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1]; default 1.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Most new tokens (legacy name).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Most new tokens (current name; wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Sampler seed; choice `i` uses `seed + i`.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Number of choices.
    #[serde(default)]
    pub n: Option<u32>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `stream_options`.
#[derive(Debug, Deserialize, Default, Clone, Copy)]
pub struct StreamOptions {
    /// Send a final chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// One message of the request.
#[derive(Debug, Deserialize)]
pub struct MessageIn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// A string or a list of parts.
    pub content: ContentIn,
}

/// Message content: a plain string or typed parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentIn {
    /// Plain text.
    Text(String),
    /// Text and image parts.
    Parts(Vec<PartIn>),
}

/// A typed content part.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PartIn {
    /// `{"type": "text", "text": …}`.
    Text {
        /// The text.
        text: String,
    },
    /// `{"type": "image_url", "image_url": {"url": …}}`.
    ImageUrl {
        /// The image reference.
        image_url: ImageUrl,
    },
}

/// `image_url` object.
#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    /// A `data:image/…;base64,…` URL, or (with local files allowed) a file path.
    pub url: String,
}

/// A validated request: one [`GenerationRequest`] per choice plus response options.
#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    /// Choice `i` at index `i`.
    pub choices: Vec<GenerationRequest>,
    /// Whether to stream.
    pub stream: bool,
    /// Whether a streamed response ends with a usage chunk.
    pub include_usage: bool,
}

/// Roles accepted in messages.
const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Parse and validate a request body.
pub fn validate(
    body: &[u8],
    limits: &Limits,
    model_id: &str,
) -> Result<ValidatedRequest, ApiError> {
    let req: ChatCompletionRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("Invalid request body: {e}")))?;
    if let Some(m) = &req.model {
        if m != model_id {
            return Err(ApiError::not_found(format!(
                "The model `{m}` does not exist; this server serves `{model_id}`."
            )));
        }
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "`messages` must not be empty.",
        ));
    }
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) || temperature.is_nan() {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("`temperature` must be in [0, 2], got {temperature}."),
        ));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            format!("`top_p` must be in (0, 1], got {top_p}."),
        ));
    }
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(limits.max_tokens as u64);
    if max_tokens == 0 || max_tokens > limits.max_tokens as u64 {
        return Err(ApiError::invalid(
            Some("max_tokens"),
            format!(
                "`max_tokens` must be between 1 and {}, got {max_tokens}.",
                limits.max_tokens
            ),
        ));
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > limits.max_n {
        return Err(ApiError::invalid(
            Some("n"),
            format!("`n` must be between 1 and {}, got {n}.", limits.max_n),
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ApiError::invalid(
                Some(&format!("messages[{i}].role")),
                format!(
                    "Unsupported role `{}`; use system, user or assistant.",
                    m.role
                ),
            ));
        }
        let content = match m.content {
            ContentIn::Text(t) => vec![ContentPart::Text(t)],
            ContentIn::Parts(parts) => parts
                .into_iter()
                .enumerate()
                .map(|(j, p)| match p {
                    PartIn::Text { text } => Ok(ContentPart::Text(text)),
                    PartIn::ImageUrl { image_url } => {
                        let param = format!("messages[{i}].content[{j}].image_url");
                        load_image(&image_url.url, limits, &param).map(ContentPart::Image)
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        messages.push(ChatMessage {
            role: m.role,
            content,
        });
    }
    let base_seed = req.seed.unwrap_or_else(random_seed);
    let choices = (0..n)
        .map(|i| GenerationRequest {
            messages: messages.clone(),
            params: SamplingParams {
                temperature,
                top_p,
                max_tokens: max_tokens as usize,
                seed: base_seed.wrapping_add(u64::from(i)),
            },
        })
        .collect();
    Ok(ValidatedRequest {
        choices,
        stream: req.stream.unwrap_or(false),
        include_usage: req.stream_options.unwrap_or_default().include_usage,
    })
}

/// A seed for requests that give none (time-based; sampling need not be reproducible then).
fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Decode an `image_url`: base64 data URLs always, local files only when allowed. The pixel
/// limit is checked from the header, before the image is decoded.
pub fn load_image(url: &str, limits: &Limits, param: &str) -> Result<image::RgbImage, ApiError> {
    let bytes = if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| ApiError::invalid(Some(param), "Malformed data URL: no `,`."))?;
        if !meta.ends_with(";base64") {
            return Err(ApiError::invalid(
                Some(param),
                "Only base64 data URLs are supported (`data:image/png;base64,…`).",
            ));
        }
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| ApiError::invalid(Some(param), format!("Invalid base64 image: {e}")))?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        return Err(ApiError::invalid(
            Some(param),
            "Remote image URLs are not fetched; send the image as a base64 data URL.",
        ));
    } else if limits.allow_local_files {
        let path = url.strip_prefix("file://").unwrap_or(url);
        if !Path::new(path).is_absolute() {
            return Err(ApiError::invalid(
                Some(param),
                "Local image paths must be absolute.",
            ));
        }
        std::fs::read(path)
            .map_err(|e| ApiError::invalid(Some(param), format!("Cannot read image {path}: {e}")))?
    } else {
        return Err(ApiError::invalid(
            Some(param),
            "Unsupported image URL; send a base64 data URL (local files need --allow-local-files).",
        ));
    };
    let reader = image::ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::invalid(Some(param), format!("Unreadable image: {e}")))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ApiError::invalid(Some(param), format!("Unreadable image: {e}")))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_image_pixels {
        return Err(ApiError::too_large(
            Some(param),
            format!(
                "Image of {w}x{h} = {pixels} pixels exceeds the limit of {} pixels.",
                limits.max_image_pixels
            ),
        ));
    }
    let image = image::load_from_memory(&bytes)
        .map_err(|e| ApiError::invalid(Some(param), format!("Unreadable image: {e}")))?;
    Ok(image.to_rgb8())
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens (counted once per request).
    pub prompt_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

/// An assistant message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageOut {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text.
    pub content: String,
}

/// One choice of a non-streamed response.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// Choice index.
    pub index: u32,
    /// The message.
    pub message: MessageOut,
    /// Why generation ended.
    pub finish_reason: Option<FinishReason>,
    /// Not supported; always null.
    pub logprobs: Option<()>,
}

/// A non-streamed response.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model.
    pub model: String,
    /// One per `n`.
    pub choices: Vec<Choice>,
    /// Token counts.
    pub usage: Usage,
}

/// The delta of a streamed chunk.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Delta {
    /// `assistant` on a choice's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a streamed chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    /// Choice index.
    pub index: u32,
    /// What is new.
    pub delta: Delta,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<FinishReason>,
    /// Always null.
    pub logprobs: Option<()>,
}

/// A streamed chunk (`chat.completion.chunk`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    /// Same id on every chunk of a response.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model.
    pub model: String,
    /// Zero or one choice.
    pub choices: Vec<ChunkChoice>,
    /// Only on the final usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_data_url(w: u32, h: u32) -> String {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]));
        let mut buf = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
            .unwrap();
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(buf)
        )
    }

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn valid_request_expands_choices_with_seeds() {
        let limits = Limits::default();
        let b = body(serde_json::json!({
            "model": "m", "n": 2, "seed": 7, "temperature": 0.5, "max_tokens": 9,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": png_data_url(3, 2)}}]}]
        }));
        let v = validate(&b, &limits, "m").unwrap();
        assert_eq!(v.choices.len(), 2);
        assert_eq!(v.choices[1].params.seed, 8);
        assert_eq!(v.choices[0].params.max_tokens, 9);
        match &v.choices[0].messages[0].content[1] {
            ContentPart::Image(img) => assert_eq!(img.dimensions(), (3, 2)),
            other => panic!("expected image, got {other:?}"),
        }
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let limits = Limits {
            max_image_pixels: 10,
            ..Limits::default()
        };
        let cases = [
            (serde_json::json!({"messages": []}), "messages", 400),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3.0}),
                "temperature",
                400,
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "top_p": 0.0}),
                "top_p",
                400,
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 999_999}),
                "max_tokens",
                400,
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "n": 0}),
                "n",
                400,
            ),
            (
                serde_json::json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
                400,
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url(4, 3)}}]}]}),
                "messages[0].content[0].image_url",
                413,
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]}),
                "messages[0].content[0].image_url",
                400,
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]}),
                "messages[0].content[0].image_url",
                400,
            ),
        ];
        for (v, param, status) in cases {
            let e = validate(&body(v.clone()), &limits, "m").unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{v}");
            assert_eq!(e.status.as_u16(), status, "{v}");
        }
        let e = validate(b"{not json", &limits, "m").unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        let e = validate(&body(serde_json::json!({"model": "other", "messages": [{"role": "user", "content": "x"}]})), &limits, "m").unwrap_err();
        assert_eq!(e.status.as_u16(), 404);
    }
}
