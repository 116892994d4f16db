//! The vanilla GRPO reward (`r1v` in the reference): `0.5·format + 0.5·accuracy`.

use std::sync::OnceLock;

use regex::Regex;

use crate::mathruler::grade_answer;
use crate::pystr::py_strip;
use crate::RewardScore;

/// Weight of both the format and the accuracy term.
pub const R1V_WEIGHT: f64 = 0.5;

/// Format F ∈ {0, 1}: the whole response matches `<think>.*?</think>\s*<answer>.*?</answer>`
/// (dot matches newlines).
pub fn format_reward(response: &str) -> f64 {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"(?s)\A(?:<think>.*?</think>\s*<answer>.*?</answer>)\z").expect("static regex")
    });
    f64::from(u8::from(re.is_match(response)))
}

fn answer_line_re() -> &'static Regex {
    // No DOTALL here: the reference's answer extraction stops at a newline.
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"<answer>(.*?)</answer>").expect("static regex"))
}

/// Accuracy A ∈ {0, 1}: mathruler's `grade_answer` on the answer texts (the whole stripped string
/// where a side has no single-line `<answer>…</answer>`).
pub fn accuracy_reward(response: &str, ground_truth: &str) -> f64 {
    let gt = if ground_truth.contains("<answer>") && ground_truth.contains("</answer>") {
        match answer_line_re().captures(ground_truth) {
            Some(c) => py_strip(&c[1]).to_string(),
            None => py_strip(ground_truth).to_string(),
        }
    } else {
        py_strip(ground_truth).to_string()
    };
    let pred = match answer_line_re().captures(response) {
        Some(c) => py_strip(&c[1]).to_string(),
        None => py_strip(response).to_string(),
    };
    f64::from(u8::from(grade_answer(&pred, &gt)))
}

/// Score one response (count and spatial are 0: this reward has neither).
pub fn compute_score(response: &str, ground_truth: &str) -> RewardScore {
    let format = format_reward(response);
    let accuracy = accuracy_reward(response, ground_truth);
    RewardScore {
        overall: R1V_WEIGHT * accuracy + R1V_WEIGHT * format,
        format,
        count: 0.0,
        accuracy,
        spatial: 0.0,
    }
}
