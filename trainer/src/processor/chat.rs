//! The Qwen2-VL / Qwen2.5-VL chat template (`chat_template.json`), rendered without a Jinja
//! engine, and the expansion of `<|image_pad|>` placeholders (docs/recipe.md,
//! "Training prompt").

/// System prompt the template inserts when the first message is not a system message.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";
/// Turn start marker.
pub const IM_START: &str = "<|im_start|>";
/// Turn end marker.
pub const IM_END: &str = "<|im_end|>";
/// Placeholder block of one image before expansion.
pub const IMAGE_BLOCK: &str = "<|vision_start|><|image_pad|><|vision_end|>";
/// Placeholder block of one video before expansion.
pub const VIDEO_BLOCK: &str = "<|vision_start|><|video_pad|><|vision_end|>";

/// One content part of a chat message, in the order the template emits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentPart {
    /// An image; the i-th image part corresponds to the i-th image given to the processor.
    Image,
    /// A video (rendered as its placeholder; video inputs are not processed here).
    Video,
    /// Text, emitted verbatim.
    Text(String),
}

/// A chat message: `role` (`system`, `user`, `assistant`) and its content parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: Vec<ContentPart>,
}

impl ChatMessage {
    /// A message with the given role and parts.
    pub fn new(role: impl Into<String>, content: Vec<ContentPart>) -> Self {
        Self {
            role: role.into(),
            content,
        }
    }

    /// A text-only message.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self::new(role, vec![ContentPart::Text(text.into())])
    }

    /// The user turn SpatialThinker trains and evaluates with: one image, then the text.
    pub fn user_image_text(text: impl Into<String>) -> Self {
        Self::new(
            "user",
            vec![ContentPart::Image, ContentPart::Text(text.into())],
        )
    }

    /// Number of image parts.
    pub fn num_images(&self) -> usize {
        self.content
            .iter()
            .filter(|p| matches!(p, ContentPart::Image))
            .count()
    }
}

/// Renders messages with the Qwen2.5-VL chat template: a default system turn unless the first
/// message is `system`, each turn as `<|im_start|>{role}\n…<|im_end|>\n` with image parts as
/// `<|vision_start|><|image_pad|><|vision_end|>` (no `Picture n:` prefixes), and
/// `<|im_start|>assistant\n` appended when `add_generation_prompt`.
pub fn render_chat(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for (i, message) in messages.iter().enumerate() {
        if i == 0 && message.role != "system" {
            out.push_str(IM_START);
            out.push_str("system\n");
            out.push_str(DEFAULT_SYSTEM_PROMPT);
            out.push_str(IM_END);
            out.push('\n');
        }
        out.push_str(IM_START);
        out.push_str(&message.role);
        out.push('\n');
        for part in &message.content {
            match part {
                ContentPart::Image => out.push_str(IMAGE_BLOCK),
                ContentPart::Video => out.push_str(VIDEO_BLOCK),
                ContentPart::Text(text) => out.push_str(text),
            }
        }
        out.push_str(IM_END);
        out.push('\n');
    }
    if add_generation_prompt {
        out.push_str(IM_START);
        out.push_str("assistant\n");
    }
    out
}

/// Replaces the i-th single `pad_id` in `ids` by `counts[i]` copies (the processor's
/// placeholder expansion, done on ids). Errors if the number of placeholders differs from
/// `counts.len()`.
pub fn expand_placeholders(
    ids: &[i64],
    pad_id: i64,
    counts: &[usize],
) -> Result<Vec<i64>, super::ProcessorError> {
    let found = ids.iter().filter(|&&id| id == pad_id).count();
    if found != counts.len() {
        return Err(super::ProcessorError::ImageCount {
            placeholders: found,
            images: counts.len(),
        });
    }
    let mut out = Vec::with_capacity(ids.len() + counts.iter().sum::<usize>());
    let mut next = counts.iter();
    for &id in ids {
        if id == pad_id {
            let n = *next.next().expect("counted above");
            out.extend(std::iter::repeat_n(pad_id, n));
        } else {
            out.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_image_turn_matches_spec_example() {
        let text = render_chat(
            &[ChatMessage::user_image_text("What is shown in this image?")],
            true,
        );
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             <|vision_start|><|image_pad|><|vision_end|>What is shown in this image?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn explicit_system_replaces_default() {
        let text = render_chat(
            &[
                ChatMessage::text("system", "Be brief."),
                ChatMessage::text("user", "Hi"),
            ],
            false,
        );
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn expansion_counts_and_errors() {
        let ids = [1, 9, 2, 9, 3];
        assert_eq!(
            expand_placeholders(&ids, 9, &[2, 1]).unwrap(),
            vec![1, 9, 9, 2, 9, 3]
        );
        assert!(expand_placeholders(&ids, 9, &[2]).is_err());
    }
}
