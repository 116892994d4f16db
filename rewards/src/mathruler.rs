//! The answer grading of PyPI `mathruler.grader.grade_answer`, for the answers the vanilla GRPO
//! baseline sees (option strings such as `(B) behind`).

use crate::pystr::py_strip;

/// Is `given` a correct answer for `ground_truth`?
pub fn grade_answer(given: &str, ground_truth: &str) -> bool {
    py_strip(given) == py_strip(ground_truth)
}
