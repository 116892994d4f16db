//! Pulling the final answer out of a generated response, as the SpatialThinker evaluation does it
//! (docs/recipe.md, "Answer matching"): text after the last `Answer:`, else the text between
//! `<answer>` tags, else the whole response.

/// Opening tag of the answer section.
pub const ANSWER_OPEN: &str = "<answer>";
/// Closing tag of the answer section.
pub const ANSWER_CLOSE: &str = "</answer>";
/// Marker some models write before a final answer instead of tags; everything after its last
/// occurrence is taken as the answer.
pub const ANSWER_PREFIX: &str = "Answer:";

/// The answer text of one response, or `None` when the response is empty (the authors record
/// "Failed to extract." and score it wrong).
///
/// Order of the rules: split on the last `Answer:`; a response with neither tag is the answer
/// itself; a response with only `</answer>` is cut there; with `<answer>` but no `</answer>` the
/// text after the last `<answer>`; with both, the text between the last `<answer>` and the next
/// `</answer>`. The result is trimmed.
pub fn extract_answer(response: &str) -> Option<String> {
    let mut text = response;
    if let Some(pos) = text.rfind(ANSWER_PREFIX) {
        text = text[pos + ANSWER_PREFIX.len()..].trim();
    }
    if text.is_empty() {
        return None;
    }
    let has_open = text.contains(ANSWER_OPEN);
    let has_close = text.contains(ANSWER_CLOSE);
    let answer = match (has_open, has_close) {
        (false, false) => text,
        (false, true) => text.split(ANSWER_CLOSE).next().unwrap_or(""),
        (true, _) => {
            let after_open = text.rsplit(ANSWER_OPEN).next().unwrap_or("");
            after_open.split(ANSWER_CLOSE).next().unwrap_or("")
        }
    };
    Some(answer.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_between_tags() {
        let r = "<think>B is nearer</think>\n<answer> (B) behind </answer>";
        assert_eq!(extract_answer(r).as_deref(), Some("(B) behind"));
    }

    #[test]
    fn last_open_tag_wins() {
        let r = "<answer>draft</answer> then <answer>(C) left</answer> trailing";
        assert_eq!(extract_answer(r).as_deref(), Some("(C) left"));
    }

    #[test]
    fn missing_close_tag_takes_rest() {
        assert_eq!(
            extract_answer("<think>x</think><answer> (A) red ").as_deref(),
            Some("(A) red")
        );
    }

    #[test]
    fn only_close_tag_cuts_before_it() {
        assert_eq!(
            extract_answer("(D) on top of</answer> junk").as_deref(),
            Some("(D) on top of")
        );
    }

    #[test]
    fn no_tags_is_whole_response() {
        assert_eq!(extract_answer("  B  ").as_deref(), Some("B"));
    }

    #[test]
    fn answer_prefix_split_on_last() {
        let r = "Answer: maybe A. Final Answer: (B) behind";
        assert_eq!(extract_answer(r).as_deref(), Some("(B) behind"));
        // The prefix is applied before the tags: tags after it are still honoured.
        assert_eq!(
            extract_answer("Answer: <answer>C</answer>").as_deref(),
            Some("C")
        );
    }

    #[test]
    fn empty_response_fails() {
        assert_eq!(extract_answer(""), None);
        assert_eq!(extract_answer("Answer:   "), None);
    }
}
