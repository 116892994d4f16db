//! Text columns of a row: the training prompt (`problem`, the structure of docs/recipe.md,
//! "Training prompt", in this project's own, shorter words), the question/option strings and the ground-truth answers
//! (docs/recipe.md, "Dataset schema"), and the reference response used for supervised warm-up.

use crate::scene::SceneGraph;

/// Letters of the options, in order; STVQA-7K uses 2–4 options.
pub const OPTION_LETTERS: [char; 6] = ['A', 'B', 'C', 'D', 'E', 'F'];

/// Instruction placed before the image-size line. Same parts and order as the SpatialThinker
/// prefix (role, task list, output skeleton, worked example), kept short because a tiny model
/// pays for every prompt token.
const INSTRUCTION: &str = "<image> You are a vision-language assistant. Answer by looking at the image, \
finding the objects and relations the question is about, and reasoning over a scene graph of them.
- Locate the question-relevant objects and relations; the scene graph holds only those.
- Name each object name.number (e.g. cup.1, car.2) with a pixel box [x1, y1, x2, y2].
- Think step by step from what you observed and the scene graph.
Format:
<observe>the relevant objects</observe>
<scene>{\"objects\": [{\"id\": \"name.1\", \"bbox\": [x1, y1, x2, y2]}], \"relationships\": [{\"subject\": \"name.1\", \"predicate\": \"word\", \"object\": \"name.2\"}]}</scene>
<think>reasoning</think>
<answer>(letter) option</answer>
Example: Where is the cup with respect to the car? (A) right of (B) left of
<observe>A cup and a car.</observe>
<scene>{\"objects\": [{\"id\": \"cup.1\", \"bbox\": [6, 40, 28, 62]}, {\"id\": \"car.1\", \"bbox\": [60, 50, 100, 75]}], \"relationships\": [{\"subject\": \"cup.1\", \"predicate\": \"left of\", \"object\": \"car.1\"}]}</scene>
<think>The cup ends at x=28, before the car starts at x=60, so it is left of the car.</think>
<answer>(B) left of</answer>";

/// The full training prompt: instruction, `Image size: (W x H)`, a blank line,
/// `Now answer the following question:`, then `\nQ. ` and the question with options (docs/recipe.md, "Training prompt").
pub fn problem_text(width: u32, height: u32, question_with_options: &str) -> String {
    format!(
        "{INSTRUCTION}\nImage size: ({width} x {height})\n\nNow answer the following question:\n\nQ. {question_with_options}"
    )
}

/// The short instruction of [`short_problem_text`]: the four sections and the scene-graph
/// schema in one sentence, no worked example.
const SHORT_INSTRUCTION: &str = "<image> Reply with <observe>objects</observe>, \
<scene>{\"objects\": [{\"id\": \"name.1\", \"bbox\": [x1, y1, x2, y2]}], \"relationships\": []}</scene>, \
<think>reasoning</think> and <answer>(letter) option</answer>.";

/// A short training prompt for tiny models (`data.synthetic_short_instruction`): the short
/// instruction, `Image size: (W x H)`, then `\nQ. ` and the question with options; the same
/// image-size line and question marker as [`problem_text`], so the reward and the recorded prompt
/// template read it the same way.
pub fn short_problem_text(width: u32, height: u32, question_with_options: &str) -> String {
    format!("{SHORT_INSTRUCTION}\nImage size: ({width} x {height})\nQ. {question_with_options}")
}

/// A multiple-choice question with its ground-truth subgraph.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The bare question.
    pub question: String,
    /// Option texts in display order.
    pub options: Vec<String>,
    /// Index of the correct option in `options`.
    pub answer_index: usize,
    /// Ground-truth subgraph: only the question's objects and their relations.
    pub scene: SceneGraph,
}

/// The six answer columns of the dataset schema for one row.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerColumns {
    /// `<scene>…</scene>\n<answer>B</answer>`.
    pub answer: String,
    /// `B`.
    pub answer_only: String,
    /// `<scene>…</scene>\n<answer>behind</answer>`.
    pub answer_text: String,
    /// `behind`.
    pub answer_text_only: String,
    /// `<scene>…</scene>\n<answer>(B) behind</answer>`.
    pub answer_option_text: String,
    /// `(B) behind`.
    pub answer_option_text_only: String,
}

impl Question {
    /// Letter of the correct option.
    pub fn letter(&self) -> char {
        OPTION_LETTERS[self.answer_index]
    }

    /// Question, `\nOptions:`, then one `\n(A) text` line per option.
    pub fn question_with_options(&self) -> String {
        let mut s = format!("{}\nOptions:", self.question);
        for (letter, option) in OPTION_LETTERS.iter().zip(&self.options) {
            s.push_str(&format!("\n({letter}) {option}"));
        }
        s
    }

    /// `(B) behind`: the text the reward compares answers against.
    pub fn option_text(&self) -> String {
        format!("({}) {}", self.letter(), self.options[self.answer_index])
    }

    /// The ground-truth columns, with the scene written as Python `json.dumps` text.
    pub fn answer_columns(&self) -> AnswerColumns {
        let scene = format!("<scene>{}</scene>", self.scene.to_python_json());
        let letter = self.letter().to_string();
        let text = self.options[self.answer_index].clone();
        let option_text = self.option_text();
        AnswerColumns {
            answer: format!("{scene}\n<answer>{letter}</answer>"),
            answer_text: format!("{scene}\n<answer>{text}</answer>"),
            answer_option_text: format!("{scene}\n<answer>{option_text}</answer>"),
            answer_only: letter,
            answer_text_only: text,
            answer_option_text_only: option_text,
        }
    }

    /// A complete observe/scene/think/answer response whose scene is the ground truth and whose
    /// answer is the correct option, so it earns the full spatial reward.
    pub fn reference_response(&self, observe: &str, think: &str) -> String {
        format!(
            "<observe>{observe}</observe>\n<scene>{}</scene>\n<think>{think}</think>\n<answer>{}</answer>",
            self.scene.to_python_json(),
            self.option_text()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::{Relationship, SceneObject};

    fn example() -> Question {
        Question {
            question: "Where is the man with respect to the bike?".into(),
            options: vec!["in front of".into(), "behind".into(), "beside".into()],
            answer_index: 1,
            scene: SceneGraph {
                objects: vec![
                    SceneObject::with_int_box("bike.1", [0, 272, 310, 551]),
                    SceneObject::with_int_box("man.1", [0, 165, 38, 278]),
                ],
                relationships: vec![Relationship {
                    subject: "man.1".into(),
                    predicate: "behind".into(),
                    object: "bike.1".into(),
                }],
            },
        }
    }

    #[test]
    fn columns_follow_the_published_layout() {
        // An example row (the bike/man scene of the training prompt), written out by hand.
        let q = example();
        assert_eq!(
            q.question_with_options(),
            "Where is the man with respect to the bike?\nOptions:\n(A) in front of\n(B) behind\n(C) beside"
        );
        let c = q.answer_columns();
        assert_eq!(
            c.answer_option_text,
            "<scene>{\"objects\": [{\"id\": \"bike.1\", \"bbox\": [0, 272, 310, 551]}, {\"id\": \"man.1\", \"bbox\": [0, 165, 38, 278]}], \"relationships\": [{\"subject\": \"man.1\", \"predicate\": \"behind\", \"object\": \"bike.1\"}]}</scene>\n<answer>(B) behind</answer>"
        );
        assert_eq!(c.answer_only, "B");
        assert_eq!(c.answer_text_only, "behind");
        assert_eq!(c.answer_option_text_only, "(B) behind");
        assert!(c.answer.ends_with("</scene>\n<answer>B</answer>"));
        assert!(c.answer_text.ends_with("</scene>\n<answer>behind</answer>"));
    }

    #[test]
    fn problem_ends_with_size_line_and_question() {
        let p = problem_text(800, 600, &example().question_with_options());
        assert!(p.starts_with("<image> You are"));
        assert!(p.contains("\nImage size: (800 x 600)\n\nNow answer the following question:\n\nQ. Where is the man"));
        assert!(p.ends_with("(C) beside"));
    }
}
