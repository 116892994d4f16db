//! The prompts SpatialThinker checkpoints are queried with at inference and evaluation time
//! (docs/recipe.md, "Evaluation prompt"): the model card's short template followed by the real
//! image size.

use std::fmt::Write as _;

/// The short SpatialThinker instruction (model card and evaluation template). The model is
/// queried with this text as is: its last line keeps the unformatted `{Width} x {Height}`
/// placeholder, and the real size follows on the next line (docs/recipe.md, "Evaluation prompt").
pub const SPATIAL_THINKER_TEMPLATE: &str = "You FIRST observe the image in <observe> </observe> tags, then visualise the relevant scene graph in <scene> </scene> tags, followed by thinking about the reasoning process as an internal monologue within <think> </think> tags and then provide the final answer. The final answer MUST BE put within <answer> </answer> tags, and only return the final choice including the correct option and answer within the answer tags, e.g., <answer> ({correct_option}) {correct_answer} </answer>.\n\nImage size: {Width} x {Height}";

/// The think/answer instruction of the evaluation's `reasoning` template (used for baselines).
pub const REASONING_TEMPLATE: &str = "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put within <answer> </answer> tags, and only return the final choice including the correct option and answer within the answer tags, e.g., <answer> ({correct_option}) {correct_answer} </answer>.";

/// Which instruction wraps a benchmark question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// Observe / scene / think / answer with the image size (SpatialThinker checkpoints).
    #[default]
    Spatialthinker,
    /// Think / answer (the `reasoning` template).
    Reasoning,
    /// The question alone, after `Question: ` (the `no_reasoning` template).
    Plain,
    /// The row's own prompt column, as training saw it (STVQA parquet `problem`); for checking
    /// a checkpoint against the trainer's validation.
    Dataset,
}

/// A question followed by its options as `\nOptions:\n(A) …` lines, as STVQA writes them. With no
/// options, or when the question already lists `(A)`, the question is returned unchanged.
pub fn question_with_options(question: &str, options: &[String]) -> String {
    if options.is_empty() || question.contains("(A)") {
        return question.to_string();
    }
    let mut text = format!("{question}\nOptions:");
    for (i, option) in options.iter().enumerate() {
        let letter = char::from(b'A' + (i % 26) as u8);
        let _ = write!(text, "\n({letter}) {option}");
    }
    text
}

/// The user text for `question` (options already included) under `template`; `image_size` is
/// the real (width, height) of the image the model sees, used by the SpatialThinker template.
pub fn render(template: Template, question: &str, image_size: (u32, u32)) -> String {
    match template {
        Template::Spatialthinker => {
            let (w, h) = image_size;
            format!(
                "{SPATIAL_THINKER_TEMPLATE}\n({w} x {h})\n\nNow answer the following question:\n{question}"
            )
        }
        Template::Reasoning => format!("{REASONING_TEMPLATE}\nQuestion: {question}"),
        Template::Plain | Template::Dataset => format!("Question: {question}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spatialthinker_prompt_layout() {
        let q = question_with_options("Where is the man?", &["behind".into(), "beside".into()]);
        assert_eq!(q, "Where is the man?\nOptions:\n(A) behind\n(B) beside");
        let p = render(Template::Spatialthinker, &q, (640, 480));
        assert!(p.starts_with("You FIRST observe the image in <observe> </observe> tags"));
        assert!(p.ends_with(
            "Image size: {Width} x {Height}\n(640 x 480)\n\nNow answer the following question:\nWhere is the man?\nOptions:\n(A) behind\n(B) beside"
        ));
    }

    #[test]
    fn other_templates() {
        assert_eq!(render(Template::Plain, "Q?", (1, 1)), "Question: Q?");
        let r = render(Template::Reasoning, "Q?", (1, 1));
        assert!(r.starts_with("You FIRST think") && r.ends_with("</answer>.\nQuestion: Q?"));
        // Options already in the question are not repeated.
        assert_eq!(
            question_with_options("Q? (A) x (B) y", &["x".into()]),
            "Q? (A) x (B) y"
        );
    }
}
