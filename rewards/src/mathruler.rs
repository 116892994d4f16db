//! The answer grading of PyPI `mathruler.grader.grade_answer` (used by the vanilla GRPO `r1v`
//! reward), ported for the answers that baseline sees: option strings such as `(B) behind`, short
//! numbers, fractions and tuples.
//!
//! An answer is correct when (a) the MATH-style normalisation of both sides is equal, or (b) the
//! grader's own normalisation is equal, or (c) element by element (tuples split on commas), both
//! sides are equal fractions / integers, or sympy finds the difference to simplify to 0.
//!
//! Deviations, all outside option strings: LaTeX with a backslash left after normalisation is not
//! converted to text (the grader uses pylatexenc there) and such an answer is graded wrong unless
//! the MATH normalisation already matched, and step (c)'s sympy check is replaced by
//! evaluating both expressions (numbers, at most two one-letter symbols, `pi`, `sqrt`, `+ - * / ^`,
//! parentheses, implicit multiplication) at fixed sample points; anything else counts as unequal.

use std::sync::OnceLock;

use regex::Regex;

use crate::pystr::{decimal_value, py_int, py_lower, py_number_strip, py_strip};

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("static regex"))
}

fn text_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    re(&RE, r"\A\\text\{(.+?)\}\n?\z")
}

/// Python's `float(text)`: whitespace, Unicode digits, `_` between digits, `inf`/`nan` spellings.
pub fn py_float(text: &str) -> Option<f64> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let shape = re(
        &RE,
        r"(?i)\A[+-]?(?:(?:[0-9](?:_?[0-9])*)(?:\.(?:[0-9](?:_?[0-9])*)?)?|\.[0-9](?:_?[0-9])*)(?:e[+-]?[0-9](?:_?[0-9])*)?\z",
    );
    let body = py_number_strip(text);
    let mut ascii = String::with_capacity(body.len());
    for c in body.chars() {
        match decimal_value(c) {
            Some(d) if !c.is_ascii_digit() => ascii.push(char::from_digit(d, 10)?),
            _ => ascii.push(c),
        }
    }
    let lower = ascii.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if lower.len() - unsigned.len() <= 1 && matches!(unsigned, "inf" | "infinity" | "nan") {
        return lower.parse().ok();
    }
    if !shape.is_match(&ascii) {
        return None;
    }
    ascii.replace('_', "").parse().ok()
}

/// `str(int(x))` for a float already integral.
fn int_text(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else {
        format!("{x:.0}")
    }
}

/// `abs(x - int(round(x))) <= 1e-7`, false where `round` raises (inf, nan).
fn is_int(x: f64) -> bool {
    x.is_finite() && (x - x.round_ties_even()).abs() <= 1e-7
}

fn strip_properly_formatted_commas(expr: &str) -> String {
    static RE: OnceLock<Regex> = OnceLock::new();
    let p = re(&RE, r"(\d)(,)(\d\d\d)(\z|\D)");
    let mut expr = expr.to_string();
    loop {
        let next = p.replace_all(&expr, "${1}${3}${4}").into_owned();
        if next == expr {
            return next;
        }
        expr = next;
    }
}

fn str_is_int(x: &str) -> bool {
    py_float(&strip_properly_formatted_commas(x)).is_some_and(is_int)
}

/// `str(int(float(x.replace(",", ""))))`; `None` where Python raises.
fn str_to_int(x: &str) -> Option<String> {
    let v = py_float(&x.replace(',', ""))?;
    v.is_finite().then(|| int_text(v.trunc()))
}

// ---------------------------------------------------------------- MATH (mathd) normalisation

fn fix_fracs(s: &str) -> Option<String> {
    let mut parts = s.split("\\frac");
    let mut out = parts.next().unwrap_or("").to_string();
    for sub in parts {
        out.push_str("\\frac");
        let chars: Vec<char> = sub.chars().collect();
        let first = *chars.first()?; // IndexError in the reference → whole normalisation aborts
        if first == '{' {
            out.push_str(sub);
            continue;
        }
        if chars.len() < 2 {
            return Some(s.to_string());
        }
        let (a, b) = (chars[0], chars[1]);
        let post: String = chars[2..].iter().collect();
        if b != '{' {
            out.push_str(&format!("{{{a}}}{{{b}}}{post}"));
        } else {
            out.push_str(&format!("{{{a}}}{b}{post}"));
        }
    }
    Some(out)
}

fn fix_a_slash_b(s: &str) -> String {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() != 2 {
        return s.to_string();
    }
    let text = |i: &crate::PyInt| match i {
        crate::PyInt::Small(v) => v.to_string(),
        crate::PyInt::Big(t) => t.clone(),
    };
    match (py_int(parts[0]), py_int(parts[1])) {
        (Some(a), Some(b)) if s == format!("{}/{}", text(&a), text(&b)) => {
            format!("\\frac{{{}}}{{{}}}", text(&a), text(&b))
        }
        _ => s.to_string(),
    }
}

fn fix_sqrt(s: &str) -> Option<String> {
    if !s.contains("\\sqrt") {
        return Some(s.to_string());
    }
    let mut parts = s.split("\\sqrt");
    let mut out = parts.next().unwrap_or("").to_string();
    for split in parts {
        let first = split.chars().next()?;
        if first != '{' {
            out.push_str(&format!("\\sqrt{{{first}}}{}", &split[first.len_utf8()..]));
        } else {
            out.push_str("\\sqrt");
            out.push_str(split);
        }
    }
    Some(out)
}

fn strip_string(s: &str) -> Option<String> {
    let mut s = s
        .replace('\n', "")
        .replace("\\!", "")
        .replace("\\\\", "\\")
        .replace("tfrac", "frac")
        .replace("dfrac", "frac")
        .replace("\\left", "")
        .replace("\\right", "")
        .replace("^{\\circ}", "")
        .replace("^\\circ", "")
        .replace("\\$", "");
    if s.contains("\\text{ ") {
        let splits: Vec<&str> = s.split("\\text{ ").collect();
        if splits.len() != 2 {
            return None; // AssertionError
        }
        s = splits[0].to_string();
    }
    s = s
        .replace("\\%", "")
        .replace('%', "")
        .replace(" .", " 0.")
        .replace("{.", "{0.");
    if s.is_empty() {
        return Some(s);
    }
    if s.starts_with('.') {
        s = format!("0{s}");
    }
    let eq: Vec<&str> = s.split('=').collect();
    if eq.len() == 2 && eq[0].chars().count() <= 2 {
        s = eq[1].to_string();
    }
    s = fix_sqrt(&s)?;
    s = s.replace(' ', "");
    s = fix_fracs(&s)?;
    if s == "0.5" {
        s = "\\frac{1}{2}".into();
    }
    Some(fix_a_slash_b(&s))
}

/// `mathruler.math_normalize.normalize_answer`.
pub fn normalize_answer(answer: &str) -> String {
    let answer = py_strip(answer);
    let answer = match text_re().captures(answer) {
        Some(c) => py_strip(&c[1]).to_string(),
        None => answer.to_string(),
    };
    strip_string(&answer).unwrap_or(answer)
}

// ---------------------------------------------------------------- grader normalisation

const UNITS: [&str; 16] = [
    "degree",
    "cm",
    "centimeter",
    "meter",
    "mile",
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
    "foot",
    "feet",
    "inch",
    "yard",
];

fn unit_res() -> &'static [Regex] {
    static RE: OnceLock<Vec<Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        UNITS
            .iter()
            .map(|u| Regex::new(&format!(r"{u}(es)?(s)? *(\^[0-9]+)?")).expect("static regex"))
            .collect()
    })
}

/// `mathruler.grader._normalize`; `None` where the reference raises.
fn normalize(expr: &str) -> Option<String> {
    static CIRC: OnceLock<Regex> = OnceLock::new();
    static THIN: OnceLock<Regex> = OnceLock::new();
    static MINUS: OnceLock<Regex> = OnceLock::new();
    static MIXED: OnceLock<Regex> = OnceLock::new();
    let mut e = match text_re().captures(expr) {
        Some(c) => c[1].to_string(),
        None => expr.to_string(),
    };
    e = e
        .replace("\\%", "%")
        .replace("\\$", "$")
        .replace(['$', '%'], "")
        .replace(" or ", " , ")
        .replace(" and ", " , ")
        .replace("million", "*10^6")
        .replace("billion", "*10^9")
        .replace("trillion", "*10^12");
    for unit in unit_res() {
        e = unit.replace_all(&e, "").into_owned();
    }
    e = re(&CIRC, r"\^ *\\circ").replace_all(&e, "").into_owned();
    if e.starts_with('{') && e.ends_with('}') && !e.is_empty() {
        let n = e.chars().count();
        e = e.chars().skip(1).take(n.saturating_sub(2)).collect();
    }
    e = re(&THIN, r",\\! *").replace_all(&e, "").into_owned();
    if let Some(v) = py_float(&e).filter(|v| is_int(*v)) {
        e = int_text(v.round_ties_even());
    }
    if e.contains('\\') {
        // The reference converts LaTeX to text with pylatexenc here. Without it, identical LaTeX
        // still compares equal (the conversion is deterministic) and anything else unequal: the
        // NUL marker keeps the text out of the numeric checks that follow.
        return Some(format!("\0{e}"));
    }
    e = re(&MINUS, r"- *").replace_all(&e, "-").into_owned();
    // The implicit mixed-number rule: "7 3/4" → "7+3/4" (left to right, non-overlapping).
    e = re(&MIXED, r"([0-9]) +([0-9])")
        .replace_all(&e, "${1}+${2}")
        .into_owned();
    e = e.replace(' ', "").replace(['{', '}'], "");
    e = py_lower(&e);
    if str_is_int(&e) {
        e = str_to_int(&e)?;
    }
    Some(e)
}

fn split_tuple(expr: &str) -> Vec<String> {
    const TUPLE_CHARS: [char; 4] = ['(', ')', '[', ']'];
    let expr = strip_properly_formatted_commas(expr);
    let chars: Vec<char> = expr.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    if chars.len() > 2
        && TUPLE_CHARS.contains(&chars[0])
        && TUPLE_CHARS.contains(&chars[chars.len() - 1])
        && !chars[1..chars.len() - 1]
            .iter()
            .any(|c| TUPLE_CHARS.contains(c))
    {
        let inner: String = chars[1..chars.len() - 1].iter().collect();
        return inner.split(',').map(|s| py_strip(s).to_string()).collect();
    }
    vec![expr]
}

fn is_frac(expr: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    re(&RE, r"\A-?[0-9]+.?/0*[1-9][0-9]*.?\n?\z").is_match(expr)
}

fn should_allow_eval(expr: &str) -> bool {
    static R1: OnceLock<Regex> = OnceLock::new();
    static R2: OnceLock<Regex> = OnceLock::new();
    let stripped = expr.replace("sqrt", "").replace("frac", "");
    let mut letters: Vec<char> = stripped.chars().filter(|c| c.is_alphabetic()).collect();
    letters.sort_unstable();
    letters.dedup();
    letters.len() <= 2
        && !expr.contains("^{")
        && !expr.contains("^(")
        && !re(&R1, r"\^[0-9]+\^").is_match(expr)
        && !re(&R2, r"\^[0-9][0-9]+").is_match(expr)
}

// ---------------------------------------------------------------- expression check (sympy stand-in)

/// A tiny recursive-descent evaluator over `f64` with implicit multiplication.
struct Eval<'a> {
    s: &'a [char],
    i: usize,
    vars: [(char, f64); 2],
}

impl Eval<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn expr(&mut self) -> Option<f64> {
        let mut v = self.term()?;
        while let Some(c @ ('+' | '-')) = self.peek() {
            self.i += 1;
            let t = self.term()?;
            v = if c == '+' { v + t } else { v - t };
        }
        Some(v)
    }

    fn term(&mut self) -> Option<f64> {
        let mut v = self.unary()?;
        loop {
            match self.peek() {
                Some('*') => {
                    self.i += 1;
                    v *= self.unary()?;
                }
                Some('/') => {
                    self.i += 1;
                    let d = self.unary()?;
                    if d == 0.0 {
                        return None;
                    }
                    v /= d;
                }
                Some(c) if c == '(' || c == '.' || c.is_ascii_alphanumeric() => {
                    v *= self.power()?
                }
                _ => return Some(v),
            }
        }
    }

    fn unary(&mut self) -> Option<f64> {
        match self.peek() {
            Some('-') => {
                self.i += 1;
                Some(-self.unary()?)
            }
            Some('+') => {
                self.i += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Option<f64> {
        let base = self.atom()?;
        if self.peek() == Some('^') {
            self.i += 1;
            let start = self.i;
            let e = self.unary()?;
            // sympy keeps `x**2.0` apart from `x**2`: a float exponent never simplifies away.
            if self.s[start..self.i].contains(&'.') {
                return None;
            }
            return Some(base.powf(e));
        }
        Some(base)
    }

    fn atom(&mut self) -> Option<f64> {
        let c = self.peek()?;
        if c == '(' {
            self.i += 1;
            let v = self.expr()?;
            if self.peek() != Some(')') {
                return None;
            }
            self.i += 1;
            return Some(v);
        }
        if c.is_ascii_digit() || c == '.' {
            let start = self.i;
            while matches!(self.peek(), Some('0'..='9' | '.')) {
                self.i += 1;
            }
            let t: String = self.s[start..self.i].iter().collect();
            return t.parse().ok();
        }
        let rest: String = self.s[self.i..].iter().take(4).collect();
        if rest.starts_with("sqrt") {
            self.i += 4;
            return Some(self.power()?.sqrt());
        }
        if rest.starts_with("pi") {
            self.i += 2;
            return Some(std::f64::consts::PI);
        }
        let v = self.vars.iter().find(|(n, _)| *n == c)?.1;
        self.i += 1;
        Some(v)
    }
}

fn evaluate(expr: &str, vars: [(char, f64); 2]) -> Option<f64> {
    let s: Vec<char> = expr.chars().collect();
    let mut e = Eval { s: &s, i: 0, vars };
    let v = e.expr()?;
    (e.i == s.len() && v.is_finite()).then_some(v)
}

fn equal_as_expressions(gt: &str, given: &str) -> bool {
    let expr = format!("({gt})-({given})");
    if !should_allow_eval(&expr) {
        return false;
    }
    let expr = expr.replace("**", "^");
    let mut names: Vec<char> = expr
        .replace("sqrt", "")
        .replace("pi", "")
        .chars()
        .filter(|c| c.is_ascii_lowercase())
        .collect();
    names.sort_unstable();
    names.dedup();
    let name = |k: usize| names.get(k).copied().unwrap_or('\0');
    [(0.7316, 1.3791), (2.2113, -0.4142), (-1.618, 3.0517)]
        .iter()
        .all(|(a, b)| {
            let (x, y) = (
                evaluate(gt, [(name(0), *a), (name(1), *b)]),
                evaluate(given, [(name(0), *a), (name(1), *b)]),
            );
            match (x, y) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * (1.0 + x.abs().max(y.abs())),
                _ => false,
            }
        })
}

/// Is `given` a correct answer for `ground_truth` (mathruler's `grade_answer`)? Where the reference
/// raises, the r1v reward counts the answer as wrong, and so does this (returns false).
pub fn grade_answer(given: &str, ground_truth: &str) -> bool {
    if normalize_answer(ground_truth) == normalize_answer(given) {
        return true;
    }
    let (Some(gt), Some(given)) = (normalize(ground_truth), normalize(given)) else {
        return false;
    };
    if gt == given {
        return true;
    }
    if given.is_empty() {
        return false;
    }
    let (gt_elems, given_elems) = (split_tuple(&gt), split_tuple(&given));
    if gt_elems.len() > 1
        && (gt.chars().next() != given.chars().next() || gt.chars().last() != given.chars().last())
    {
        return false;
    }
    if gt_elems.len() != given_elems.len() {
        return false;
    }
    gt_elems.iter().zip(&given_elems).all(|(g, p)| {
        if is_frac(g) && is_frac(p) {
            g == p
        } else if str_is_int(g) != str_is_int(p) {
            false
        } else {
            equal_as_expressions(g, p)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_strings() {
        assert!(grade_answer("(B) behind", "(B) behind"));
        assert!(grade_answer("(b) BEHIND", "(B) behind"));
        assert!(grade_answer("(B)  behind", "(B) behind")); // spaces are removed
        assert!(!grade_answer("B", "(B) behind"));
        assert!(!grade_answer("behind", "(B) behind"));
        assert!(!grade_answer("(A) in front of", "(B) behind"));
        assert!(grade_answer("\\text{(B) behind}", "(B) behind"));
        assert!(!grade_answer("", "(B) behind"));
    }

    #[test]
    fn numbers() {
        assert!(grade_answer("3.0", "3"));
        assert!(grade_answer("1/2", "\\frac{1}{2}"));
        assert!(grade_answer("0.5", "\\frac12"));
        assert!(grade_answer("3,000", "3000"));
        assert!(!grade_answer("2", "3"));
        assert!(grade_answer("(1,2)", "(1, 2)"));
        assert!(grade_answer("2a", "a+a"));
        assert!(!grade_answer("x^2.", "x^2")); // sympy: x**2.0 - x**2 does not simplify to 0
        assert!(!grade_answer("\\FRAC{1}{2}", "\\frac{1}{2}"));
        assert!(grade_answer("$\\frac{1}{2}$", "\\frac{1}{2}"));
        assert_eq!(py_float(" 1_0.5e1 "), Some(105.0));
        assert_eq!(py_float("1__0"), None);
        assert_eq!(py_float("-Infinity"), Some(f64::NEG_INFINITY));
    }
}
