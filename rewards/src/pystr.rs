//! Python `str` semantics the reference reward relies on: `strip()`, `lower()`, `int(str)`.

use std::sync::OnceLock;

use regex::Regex;

use crate::pyjson::{PyInt, INT_MAX_STR_DIGITS};

/// Python's `str.isspace()` for one character: Unicode `White_Space` plus the ASCII separators
/// U+001C..U+001F, which Python also treats as whitespace.
pub fn py_isspace(c: char) -> bool {
    matches!(c, '\u{1c}'..='\u{1f}') || c.is_whitespace()
}

/// Python's `str.strip()` with no arguments.
pub fn py_strip(s: &str) -> &str {
    trim(
        s,
        |b| matches!(b, b'\t'..=b'\r' | b'\x1c'..=b'\x1f' | b' '),
        py_isspace,
    )
}

/// `s.trim_matches(space)`, where `ascii_space` is `space` on ASCII bytes: ASCII whitespace is
/// trimmed byte by byte and the general (UTF-8 decoding) trim runs only when a non-ASCII
/// character is left at either end.
fn trim(s: &str, ascii_space: impl Fn(u8) -> bool, space: fn(char) -> bool) -> &str {
    let b = s.as_bytes();
    let start = b.iter().position(|&c| !ascii_space(c)).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|&c| !ascii_space(c))
        .map_or(start, |k| k + 1);
    // ASCII bytes are character boundaries
    let s = &s[start..end];
    let b = s.as_bytes();
    if b.first().is_some_and(|c| !c.is_ascii()) || b.last().is_some_and(|c| !c.is_ascii()) {
        s.trim_matches(space)
    } else {
        s
    }
}

/// Python's `str.lower()` (full Unicode case mapping, final sigma included).
pub fn py_lower(s: &str) -> String {
    s.to_lowercase()
}

fn unicode_digit() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\A\d\z").expect("static regex"))
}

/// The decimal value of a Unicode decimal digit (general category Nd, what `re`'s `\d` matches),
/// or `None`. Nd characters come in contiguous runs of ten starting at zero, so the value is the
/// distance to the start of the run modulo ten.
pub fn decimal_value(c: char) -> Option<u32> {
    if c.is_ascii_digit() {
        return c.to_digit(10);
    }
    let is_digit = |c: char| {
        let mut buf = [0u8; 4];
        unicode_digit().is_match(c.encode_utf8(&mut buf))
    };
    if !is_digit(c) {
        return None;
    }
    let mut run = 0u32;
    let mut code = c as u32;
    while code > 0 {
        match char::from_u32(code - 1) {
            Some(prev) if is_digit(prev) => {
                run += 1;
                code -= 1;
            }
            _ => break,
        }
    }
    Some(run % 10)
}

/// The whitespace `int()` and `float()` strip: unlike `str.strip()`, not U+001C..U+001F (CPython
/// maps non-ASCII whitespace to spaces, then skips only ASCII whitespace).
pub fn py_number_strip(s: &str) -> &str {
    trim(
        s,
        |b| matches!(b, b'\t'..=b'\r' | b' '),
        char::is_whitespace,
    )
}

/// Decimal literals of at most this many digits always fit in an `i64`.
const MAX_SMALL_DIGITS: usize = 18;

/// Python's `int(text)` (base 10): surrounding whitespace, one optional sign, any Unicode decimal
/// digits, single underscores between digits, leading zeros, at most 4300 digits. `None` where
/// Python raises `ValueError`.
pub fn py_int(text: &str) -> Option<PyInt> {
    let body = py_number_strip(text);
    // the usual case, plain ASCII digits that fit an i64, without the general path's copies
    let unsigned = body.strip_prefix(['-', '+']).unwrap_or(body);
    if (1..=MAX_SMALL_DIGITS).contains(&unsigned.len())
        && unsigned.bytes().all(|c| c.is_ascii_digit())
    {
        return body.parse().ok().map(PyInt::Small);
    }
    let (neg, body) = match body.chars().next() {
        Some('-') => (true, &body[1..]),
        Some('+') => (false, &body[1..]),
        _ => (false, body),
    };
    let mut digits = String::with_capacity(body.len());
    let mut prev_underscore = true; // no leading underscore
    for c in body.chars() {
        if c == '_' {
            if prev_underscore {
                return None;
            }
            prev_underscore = true;
            continue;
        }
        let d = decimal_value(c)?;
        digits.push(char::from_digit(d, 10)?);
        prev_underscore = false;
    }
    if digits.is_empty() || prev_underscore || digits.len() > INT_MAX_STR_DIGITS {
        return None;
    }
    Some(PyInt::from_decimal(&format!(
        "{}{digits}",
        if neg { "-" } else { "" }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_trims_agree_with_the_unicode_ones() {
        let pieces = [
            "", " ", "\t", "\u{b}", "\u{1c}", "\u{1f}", "\u{85}", "\u{3000}", "a", "é", "\u{200b}",
            "x y",
        ];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let s = format!("{a}{b}{c}{a}");
                    assert_eq!(py_strip(&s), s.trim_matches(py_isspace), "{s:?}");
                    assert_eq!(
                        py_number_strip(&s),
                        s.trim_matches(char::is_whitespace),
                        "{s:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn strip_matches_python() {
        assert_eq!(py_strip("\u{1f}\u{3000} a b\u{85}\u{a0}"), "a b");
        assert_eq!(py_strip("\u{200b}a"), "\u{200b}a"); // zero-width space is not whitespace
    }

    #[test]
    fn int_matches_python() {
        assert_eq!(py_int(" +0_1\u{663} "), Some(PyInt::Small(13)));
        assert_eq!(py_int("007"), Some(PyInt::Small(7)));
        assert_eq!(py_int(" +5\n"), Some(PyInt::Small(5)));
        assert_eq!(py_int("-0"), Some(PyInt::Small(0)));
        assert_eq!(py_int("-"), None);
        assert_eq!(py_int("+"), None);
        assert_eq!(
            py_int("999999999999999999"),
            Some(PyInt::Small(999_999_999_999_999_999))
        );
        assert_eq!(py_int("-9223372036854775808"), Some(PyInt::Small(i64::MIN)));
        assert_eq!(
            py_int("9223372036854775808"),
            Some(PyInt::Big("9223372036854775808".into()))
        );
        assert_eq!(py_int("\u{3000}7\u{85}"), Some(PyInt::Small(7)));
        assert_eq!(py_int("7\u{1c}"), None); // str.isspace() but not stripped by int()
        assert_eq!(py_int("-\u{ff15}"), Some(PyInt::Small(-5)));
        assert_eq!(py_int("\u{1d7d9}"), Some(PyInt::Small(1))); // MATHEMATICAL DOUBLE-STRUCK DIGIT ONE
        for bad in [
            "", " ", "1_", "_1", "1__0", "- 1", "+-1", "1.0", "0x10", "1e3", "²", "١ ٢",
        ] {
            assert_eq!(py_int(bad), None, "{bad:?}");
        }
        assert!(matches!(py_int(&"1".repeat(30)), Some(PyInt::Big(_))));
        assert_eq!(py_int(&"1".repeat(4301)), None);
    }
}
