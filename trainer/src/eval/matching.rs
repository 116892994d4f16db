//! Scoring a multiple-choice answer against the ground-truth letter, as the SpatialThinker
//! evaluation does it (docs/recipe.md, "Answer matching"), with its letter-fallback bug fixed.
//!
//! The authors' matcher maps the extracted answer to a choice letter: it strips a leading `(X)`,
//! looks the rest up among the choices, and otherwise runs a loop meant to find `(X)`, `X)` or
//! `X.` in the answer. Two defects make the legacy behaviour differ from the intent:
//! * the loop's middle test is a non-empty string, always true, so every answer that is not a
//!   choice's exact text becomes `A` (a bare `C` is scored as `A`);
//! * the pattern meant to strip a leading `X)` escapes its bracket and never matches.
//!
//! [`MatchMode::Fixed`] (the default) keeps the intent: choice text first, then a leading letter
//! marker (`B`, `(B)`, `B)`, `B.`, `B:`), then the intended anywhere-loop, and otherwise leaves the
//! answer unmapped (scored wrong unless it equals the ground truth). [`MatchMode::Legacy`]
//! reproduces the authors' numbers.

/// Which matcher to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    /// The intended behaviour (default).
    #[default]
    Fixed,
    /// The authors' code as published, fallback bug included (`--legacy-matching`).
    Legacy,
}

/// Which rule decided the predicted letter; recorded per sample so reports can be audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchRule {
    /// No answer could be extracted (empty response).
    NoAnswer,
    /// The sample has no choices; the answer text is compared as it is.
    NoChoices,
    /// The answer (after its leading letter marker) equals a choice's text.
    ChoiceText,
    /// Fixed mode: the answer is a bare letter or starts with a letter marker.
    LeadingLetter,
    /// Fixed mode: `(X)`, `X)` or `X.` occurs somewhere in the answer.
    LetterAnywhere,
    /// Fixed mode: nothing maps to a choice; the answer is kept as is.
    Unmapped,
    /// Legacy mode: the buggy fallback that always answers `A`.
    LegacyDefaultA,
}

/// The outcome of scoring one sample.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MatchOutcome {
    /// Ground truth after normalisation (`(B)` → `B`; longer strings → first char lower-cased).
    pub gt: String,
    /// Prediction after mapping (a letter where a rule applied, else the answer text).
    pub pred: String,
    /// Whether the prediction counts as correct.
    pub correct: bool,
    /// The rule that produced `pred`.
    pub rule: MatchRule,
}

/// What the authors record as the prediction when nothing could be extracted.
pub const FAILED_TO_EXTRACT: &str = "Failed to extract.";

/// Letter of choice `index` (`0` → `A`).
pub fn choice_letter(index: usize) -> char {
    char::from(b'A' + (index % 26) as u8)
}

/// Normalise a ground-truth answer as the authors do: parentheses removed and trimmed; when there
/// are choices and the rest is longer than one character, only its first character, lower-cased.
pub fn normalise_ground_truth(gt: &str, has_choices: bool) -> String {
    let stripped: String = gt.chars().filter(|c| *c != '(' && *c != ')').collect();
    let stripped = stripped.trim();
    if has_choices && stripped.chars().count() > 1 {
        stripped
            .chars()
            .next()
            .map(|c| c.to_lowercase().collect())
            .unwrap_or_default()
    } else {
        stripped.to_string()
    }
}

/// Score `answer` (from [`super::extract::extract_answer`]) against `gt` given the sample's
/// `choices` (option texts in letter order; may be empty).
pub fn score(gt: &str, answer: Option<&str>, choices: &[String], mode: MatchMode) -> MatchOutcome {
    let has_choices = !choices.is_empty();
    let gt = normalise_ground_truth(gt, has_choices);
    let Some(answer) = answer else {
        return MatchOutcome {
            gt,
            pred: FAILED_TO_EXTRACT.to_string(),
            correct: false,
            rule: MatchRule::NoAnswer,
        };
    };
    let (pred, rule) = if has_choices {
        map_to_letter(answer, choices, mode)
    } else {
        (answer.to_string(), MatchRule::NoChoices)
    };
    let correct = gt.to_lowercase() == pred.to_lowercase()
        || grade_answer(&gt, &pred)
        || parenthesised_equal(&gt, &pred);
    MatchOutcome {
        gt,
        pred,
        correct,
        rule,
    }
}

/// Score a free-text answer as `evals.py` does for RealWorldQA and SpatialBench (`trim_truth`:
/// the ground truth is stripped) and for MMVP (kept as stored): correct when equal ignoring case,
/// or [`grade_answer`] agrees, or the text in the answer's first parentheses (or the whole answer)
/// without a trailing `.` equals the ground truth. No letter mapping is involved, so the fixed and
/// legacy matchers agree here.
pub fn score_text(gt: &str, answer: Option<&str>, trim_truth: bool) -> MatchOutcome {
    let gt = if trim_truth { gt.trim() } else { gt }.to_string();
    let Some(answer) = answer else {
        return MatchOutcome {
            gt,
            pred: FAILED_TO_EXTRACT.to_string(),
            correct: false,
            rule: MatchRule::NoAnswer,
        };
    };
    let pred = answer.trim().to_string();
    let correct = gt.to_lowercase() == pred.to_lowercase()
        || grade_answer(&gt, &pred)
        || parenthesised_equal(&gt, &pred);
    MatchOutcome {
        gt,
        pred,
        correct,
        rule: MatchRule::NoChoices,
    }
}

/// Map an answer to a choice letter (or leave it as text) under `mode`.
fn map_to_letter(answer: &str, choices: &[String], mode: MatchMode) -> (String, MatchRule) {
    let lowered: Vec<String> = choices.iter().map(|c| c.to_lowercase()).collect();
    let mut rest = strip_paren_letter(answer);
    if rest == answer {
        rest = match mode {
            // The published pattern `^\[A-Za-z]\)\s*` only matches the literal text "[A-Za-z])".
            MatchMode::Legacy => answer
                .strip_prefix("[A-Za-z])")
                .map(str::trim_start)
                .unwrap_or(answer),
            MatchMode::Fixed => strip_bare_letter(answer),
        };
    }
    let rest: String = rest.chars().filter(|c| *c != '{' && *c != '}').collect();
    let lookup = match mode {
        MatchMode::Legacy => rest.to_lowercase(),
        MatchMode::Fixed => rest.trim().to_lowercase(),
    };
    if let Some(i) = lowered.iter().position(|c| match mode {
        MatchMode::Legacy => *c == lookup,
        MatchMode::Fixed => c.trim() == lookup,
    }) {
        return (choice_letter(i).to_string(), MatchRule::ChoiceText);
    }
    match mode {
        MatchMode::Legacy => ("A".to_string(), MatchRule::LegacyDefaultA),
        MatchMode::Fixed => {
            if let Some(letter) = leading_letter(answer, choices.len()) {
                return (letter.to_string(), MatchRule::LeadingLetter);
            }
            for j in 0..choices.len() {
                let x = choice_letter(j);
                if answer.contains(&format!("({x})"))
                    || answer.contains(&format!("{x})"))
                    || answer.contains(&format!("{x}."))
                {
                    return (x.to_string(), MatchRule::LetterAnywhere);
                }
            }
            (answer.to_string(), MatchRule::Unmapped)
        }
    }
}

/// Strip a leading `(X)` and the whitespace after it (`X` any ASCII letter).
fn strip_paren_letter(s: &str) -> &str {
    let b = s.as_bytes();
    if b.len() >= 3 && b[0] == b'(' && b[1].is_ascii_alphabetic() && b[2] == b')' {
        s[3..].trim_start()
    } else {
        s
    }
}

/// Strip a leading `X)` and the whitespace after it (the fixed form of the authors' pattern 2).
fn strip_bare_letter(s: &str) -> &str {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b')' {
        s[2..].trim_start()
    } else {
        s
    }
}

/// The letter of an answer that is a bare letter or starts with `(X)`, `X)`, `X.` or `X:`,
/// when `X` names one of `n_choices` choices.
fn leading_letter(answer: &str, n_choices: usize) -> Option<char> {
    let t = answer.trim();
    let t = t.strip_prefix('(').unwrap_or(t);
    let mut chars = t.chars();
    let x = chars.next()?.to_ascii_uppercase();
    let next = chars.next();
    let is_marker = matches!(next, None | Some(')') | Some('.') | Some(':'));
    let index = (x as u32).checked_sub('A' as u32)? as usize;
    (x.is_ascii_uppercase() && is_marker && index < n_choices).then_some(x)
}

/// The authors' secondary check: the text in the prediction's first parentheses (or the whole
/// prediction), without a trailing `.`, equals the ground truth (trimmed, case-insensitive).
fn parenthesised_equal(gt: &str, pred: &str) -> bool {
    let mut p = pred;
    if p.contains('(') && p.contains(')') {
        p = p.split('(').nth(1).unwrap_or("");
        p = p.split(')').next().unwrap_or("");
    }
    let p = p.strip_suffix('.').unwrap_or(p);
    p.trim().to_lowercase() == gt.trim().to_lowercase()
}

/// A small stand-in for `mathruler.grader.grade_answer`: equal after normalisation (TeX `$`,
/// `\text{}`, spaces, case, a trailing `.`), or numerically equal. For letter and short-text
/// answers this is what the original decides; it does not do symbolic algebra.
pub fn grade_answer(gt: &str, pred: &str) -> bool {
    let (a, b) = (normalise_math(gt), normalise_math(pred));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// Normalise a short answer for [`grade_answer`].
fn normalise_math(s: &str) -> String {
    let mut t = s.trim().replace("\\text{", "").replace(['$', '{', '}'], "");
    t.retain(|c| !c.is_whitespace() && c != ',');
    let t = t.strip_suffix('.').unwrap_or(&t).to_string();
    t.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn spatial() -> Vec<String> {
        opts(&["behind", "in front of", "beside", "on top of"])
    }

    #[test]
    fn ground_truth_normalisation() {
        assert_eq!(normalise_ground_truth("(B)", true), "B");
        assert_eq!(normalise_ground_truth(" C ", true), "C");
        assert_eq!(normalise_ground_truth("(B) behind", true), "b");
        // Without choices nothing is truncated.
        assert_eq!(normalise_ground_truth("(B) behind", false), "B behind");
    }

    #[test]
    fn full_option_text_maps_to_its_letter_in_both_modes() {
        for mode in [MatchMode::Fixed, MatchMode::Legacy] {
            let o = score("(B)", Some("(B) in front of"), &spatial(), mode);
            assert_eq!(o.pred, "B");
            assert_eq!(o.rule, MatchRule::ChoiceText);
            assert!(o.correct);
            // Text without letter, different case, braces removed.
            let o = score("(D)", Some("{On Top Of}"), &spatial(), mode);
            assert_eq!((o.pred.as_str(), o.correct), ("D", true));
        }
    }

    #[test]
    fn wrong_letter_with_right_text_is_scored_by_the_text() {
        // The text decides, not the stated letter: "(A) beside" is choice C.
        let o = score("(C)", Some("(A) beside"), &spatial(), MatchMode::Fixed);
        assert_eq!((o.pred.as_str(), o.correct), ("C", true));
    }

    #[test]
    fn bare_letter_legacy_bug_always_answers_a() {
        let o = score("(C)", Some("C"), &spatial(), MatchMode::Legacy);
        assert_eq!(o.pred, "A");
        assert_eq!(o.rule, MatchRule::LegacyDefaultA);
        assert!(!o.correct);
        // ... and a bare wrong letter is scored right when the truth is A.
        let o = score("(A)", Some("D"), &spatial(), MatchMode::Legacy);
        assert!(o.correct);
    }

    #[test]
    fn bare_letter_fixed() {
        let o = score("(C)", Some("C"), &spatial(), MatchMode::Fixed);
        assert_eq!(
            (o.pred.as_str(), o.rule, o.correct),
            ("C", MatchRule::LeadingLetter, true)
        );
        let o = score("(A)", Some("d"), &spatial(), MatchMode::Fixed);
        assert_eq!((o.pred.as_str(), o.correct), ("D", false));
        for a in ["(C)", "C)", "C.", "C: beside", "C. next to it"] {
            let o = score("(C)", Some(a), &spatial(), MatchMode::Fixed);
            assert_eq!((o.pred.as_str(), o.correct), ("C", true), "answer {a:?}");
        }
    }

    #[test]
    fn letter_x_paren_prefix_is_stripped_only_when_fixed() {
        let o = score("(B)", Some("B) in front of"), &spatial(), MatchMode::Fixed);
        assert_eq!((o.pred.as_str(), o.rule), ("B", MatchRule::ChoiceText));
        let o = score("(B)", Some("B) in front of"), &spatial(), MatchMode::Legacy);
        assert_eq!((o.pred.as_str(), o.correct), ("A", false));
        // The only prefix the published pattern strips is its literal text.
        let o = score(
            "(C)",
            Some("[A-Za-z]) beside"),
            &spatial(),
            MatchMode::Legacy,
        );
        assert_eq!((o.pred.as_str(), o.rule), ("C", MatchRule::ChoiceText));
    }

    #[test]
    fn letter_anywhere_fallback_fixed() {
        let o = score(
            "(D)",
            Some("I pick (D) as it sits above"),
            &spatial(),
            MatchMode::Fixed,
        );
        assert_eq!(
            (o.pred.as_str(), o.rule, o.correct),
            ("D", MatchRule::LetterAnywhere, true)
        );
        let o = score(
            "(B)",
            Some("the option B) fits"),
            &spatial(),
            MatchMode::Fixed,
        );
        assert_eq!((o.pred.as_str(), o.rule), ("B", MatchRule::LetterAnywhere));
        let o = score("(C)", Some("so it is C."), &spatial(), MatchMode::Fixed);
        assert_eq!(
            (o.pred.as_str(), o.rule, o.correct),
            ("C", MatchRule::LetterAnywhere, true)
        );
        // A letter beyond the number of choices is not a choice.
        let o = score("(A)", Some("see (E)"), &spatial(), MatchMode::Fixed);
        assert_eq!(o.rule, MatchRule::Unmapped);
    }

    #[test]
    fn unmapped_answer_is_wrong_in_fixed_mode() {
        let o = score("(A)", Some("underneath"), &spatial(), MatchMode::Fixed);
        assert_eq!(
            (o.pred.as_str(), o.rule, o.correct),
            ("underneath", MatchRule::Unmapped, false)
        );
        // Legacy gives it A, hence correct when the truth is A.
        let o = score("(A)", Some("underneath"), &spatial(), MatchMode::Legacy);
        assert!(o.correct);
    }

    #[test]
    fn no_answer_is_wrong() {
        let o = score("(A)", None, &spatial(), MatchMode::Fixed);
        assert_eq!(
            (o.pred.as_str(), o.rule, o.correct),
            (FAILED_TO_EXTRACT, MatchRule::NoAnswer, false)
        );
    }

    #[test]
    fn without_choices_text_and_parenthesised_comparisons() {
        // Exact (case-insensitive).
        assert!(score("B", Some("b"), &[], MatchMode::Fixed).correct);
        // Text inside the first parentheses, trailing dot ignored.
        let o = score("B", Some("(B) behind"), &[], MatchMode::Legacy);
        assert_eq!((o.rule, o.correct), (MatchRule::NoChoices, true));
        assert!(score("yes", Some("Yes."), &[], MatchMode::Fixed).correct);
        // Numeric answers through the grade_answer stand-in.
        assert!(score("3", Some("3.0"), &[], MatchMode::Fixed).correct);
        assert!(!score("3", Some("4"), &[], MatchMode::Fixed).correct);
    }

    #[test]
    fn grade_answer_normalises() {
        assert!(grade_answer("$\\text{B}$", "b"));
        assert!(grade_answer("1,000", "1000"));
        assert!(!grade_answer("", ""));
        assert!(!grade_answer("left", "right"));
    }
}
