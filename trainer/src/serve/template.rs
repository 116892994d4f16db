//! The instruction `serve` wraps around a request's question, as `infer` and `eval` do: by
//! default the prompt template the checkpoint was trained with (its `prompt_template.json`), so
//! a client sends only the question and the image and the model reads them in the words it
//! was trained on; `--template` picks the authors' evaluation template, one of the baselines'
//! templates, or none (the messages exactly as the client sends them).
//!
//! Only the last user message is wrapped: its text parts (joined by newlines) are the question,
//! its first image gives the size the template states, and under the trained template its images
//! are resized as training resized them (EasyR1's pixel-count pre-resize). A message whose text
//! already begins with the template's opening words is passed through (the client wrote the full
//! prompt itself), as is a message without text, and, under the templates that state the image
//! size, one without an image.

use image::{DynamicImage, RgbImage};

use super::engine::{ChatMessage, ContentPart};
use crate::infer::prompt::{render, Template, TrainedTemplate};
use crate::processor::easyr1_pre_resize;

/// Characters of a template's opening that mark a message as already wrapped.
const OPENING_CHARS: usize = 48;

/// How `serve` turns a request's question into the model's prompt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PromptWrap {
    /// The messages as the client sends them.
    #[default]
    None,
    /// The template the checkpoint was trained with (`prompt_template.json`).
    Trained(TrainedTemplate),
    /// One of the fixed templates of `infer` and `eval` (not [`Template::Dataset`], which is
    /// [`PromptWrap::Trained`] here).
    Fixed(Template),
}

impl PromptWrap {
    /// A short name for logs: `dataset`, `spatialthinker`, `reasoning`, `plain` or `none`.
    pub fn name(&self) -> &'static str {
        match self {
            PromptWrap::None => "none",
            PromptWrap::Trained(_) => "dataset",
            PromptWrap::Fixed(Template::Spatialthinker) => "spatialthinker",
            PromptWrap::Fixed(Template::Reasoning) => "reasoning",
            PromptWrap::Fixed(Template::Plain | Template::Dataset) => "plain",
        }
    }

    /// The user text for `question` about an image of `size`.
    fn render(&self, question: &str, size: (u32, u32)) -> Option<String> {
        match self {
            PromptWrap::None => None,
            PromptWrap::Trained(t) => Some(t.render(question, size)),
            PromptWrap::Fixed(t) => Some(render(*t, question, size)),
        }
    }

    /// Whether the template states the image size (and so needs an image to wrap a question).
    fn needs_image(&self) -> bool {
        matches!(
            self,
            PromptWrap::Trained(_) | PromptWrap::Fixed(Template::Spatialthinker)
        )
    }

    /// The messages with the last user message's question wrapped (see the module docs).
    pub fn apply(&self, messages: &[ChatMessage]) -> Vec<ChatMessage> {
        let mut out = messages.to_vec();
        if matches!(self, PromptWrap::None) {
            return out;
        }
        let Some(last) = out.iter_mut().rev().find(|m| m.role == "user") else {
            return out;
        };
        let texts: Vec<&str> = last
            .content
            .iter()
            .filter_map(|p| match p {
                ContentPart::Text(t) => Some(t.as_str()),
                ContentPart::Image(_) => None,
            })
            .collect();
        let question = texts.join("\n");
        if question.trim().is_empty() {
            return out;
        }
        let first_image = last.content.iter().find_map(|p| match p {
            ContentPart::Image(img) => Some(img.dimensions()),
            ContentPart::Text(_) => None,
        });
        let size = match first_image {
            Some(size) => size,
            None if self.needs_image() => return out,
            None => (0, 0),
        };
        let Some(text) = self.render(question.trim(), size) else {
            return out;
        };
        if self.already_wrapped(&question) {
            return out;
        }
        let mut content: Vec<ContentPart> = last
            .content
            .iter()
            .filter_map(|p| match p {
                ContentPart::Image(img) => Some(ContentPart::Image(self.model_image(img))),
                ContentPart::Text(_) => None,
            })
            .collect();
        content.push(ContentPart::Text(text));
        last.content = content;
        out
    }

    /// Whether `text` already begins with this template's opening words (what it writes before
    /// the image size or the question, whichever comes first).
    fn already_wrapped(&self, text: &str) -> bool {
        let (Some(a), Some(b)) = (self.render("\u{1}", (1, 1)), self.render("\u{2}", (2, 2)))
        else {
            return true;
        };
        let opening: String = a
            .chars()
            .zip(b.chars())
            .take_while(|(x, y)| x == y)
            .map(|(x, _)| x)
            .take(OPENING_CHARS)
            .collect();
        let opening = opening.trim();
        !opening.is_empty() && text.trim_start().starts_with(opening)
    }

    /// The image as the model sees it: under the trained template, resized as training resized
    /// it; otherwise unchanged.
    fn model_image(&self, img: &RgbImage) -> RgbImage {
        match self {
            PromptWrap::Trained(t) => easyr1_pre_resize(
                &DynamicImage::ImageRgb8(img.clone()),
                t.min_pixels,
                t.max_pixels,
            ),
            _ => img.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trained() -> TrainedTemplate {
        TrainedTemplate {
            text: " Look at the picture.\nImage size: ({width} x {height})\nQ. {question}".into(),
            derived_from: "test".into(),
            min_pixels: 56 * 56,
            max_pixels: 56 * 56,
        }
    }

    fn user(content: Vec<ContentPart>) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content,
        }
    }

    fn text(t: &str) -> ContentPart {
        ContentPart::Text(t.into())
    }

    fn image(w: u32, h: u32) -> ContentPart {
        ContentPart::Image(RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30])))
    }

    #[test]
    fn the_trained_template_wraps_the_last_question_and_resizes_its_image() {
        let wrap = PromptWrap::Trained(trained());
        let messages = vec![
            user(vec![text("an earlier question")]),
            ChatMessage {
                role: "assistant".into(),
                content: vec![text("an answer")],
            },
            user(vec![
                image(112, 112),
                text("Is there a cup?"),
                text("Options:\n(A) yes\n(B) no"),
            ]),
        ];
        let out = wrap.apply(&messages);
        assert_eq!(out[..2], messages[..2]);
        let ContentPart::Image(img) = &out[2].content[0] else {
            panic!("the image comes first");
        };
        assert_eq!(
            img.dimensions(),
            (56, 56),
            "resized to training's 56 x 56 pixels"
        );
        assert_eq!(
            out[2].content[1],
            text(
                " Look at the picture.\nImage size: (112 x 112)\nQ. Is there a cup?\nOptions:\n(A) yes\n(B) no"
            ),
            "the template states the size the client sent"
        );
        assert_eq!(out[2].content.len(), 2);
    }

    #[test]
    fn full_prompts_text_only_messages_and_none_pass_through() {
        let wrap = PromptWrap::Trained(trained());
        let full = vec![user(vec![
            image(64, 64),
            text(" Look at the picture.\nImage size: (64 x 64)\nQ. Is there a cup?"),
        ])];
        assert_eq!(wrap.apply(&full), full, "already wrapped by the client");
        let no_image = vec![user(vec![text("Is there a cup?")])];
        assert_eq!(
            wrap.apply(&no_image),
            no_image,
            "no image to state the size of"
        );
        let question = vec![user(vec![image(64, 64), text("Is there a cup?")])];
        assert_eq!(PromptWrap::None.apply(&question), question);
        let plain = PromptWrap::Fixed(Template::Plain).apply(&no_image);
        assert_eq!(plain[0].content, vec![text("Question: Is there a cup?")]);
        let st = PromptWrap::Fixed(Template::Spatialthinker).apply(&question);
        let ContentPart::Text(t) = &st[0].content[1] else {
            panic!("text after the image");
        };
        assert!(t.starts_with("You FIRST observe the image"));
        assert!(t.ends_with("(64 x 64)\n\nNow answer the following question:\nIs there a cup?"));
        assert_eq!(st[0].content[0], question[0].content[0], "not resized");
    }
}
