//! A JSON parser with the semantics of Python's `json.loads` (C scanner, `strict=True`).
//!
//! The reference reward parses the `<scene>` block with `json.loads`, which is more permissive than
//! RFC 8259: it accepts `NaN`, `Infinity` and `-Infinity`, keeps arbitrary-precision integers, lets the
//! last of several duplicate keys win, and rejects integers with more than 4300 digits (CPython's
//! `int_max_str_digits`). No maintained crate offers that combination, so this is the minimum by hand.
//!
//! Known deviation: Rust strings cannot hold lone UTF-16 surrogates, which Python strings can; an
//! escaped lone surrogate (`"\ud800"`) decodes to U+FFFD here.

use std::fmt;

use bumpalo::collections::{String as BumpString, Vec as BumpVec};
use bumpalo::Bump;

use crate::short_eq;

/// Python's default `sys.get_int_max_str_digits()`: longer integer literals make `json.loads` raise.
pub const INT_MAX_STR_DIGITS: usize = 4300;

/// Room reserved up front for a list's or dict's items: a box has four numbers, an object two or
/// three keys (space is arena space, so over-reserving costs nothing to free).
const TYPICAL_LEN: usize = 4;

/// Integer literals with at most this many characters (sign included) always fit in an `i64`.
const MAX_EXACT_DIGITS: usize = 18;

/// Nesting depth at which CPython's scanner hits its recursion limit when called from the reward
/// (measured with the reference: ~990 nested containers pass at top level, 1000 fail).
pub const MAX_DEPTH: usize = 985;

/// A Python integer as `json.loads` or `int()` returns it: machine-sized, or kept as decimal text.
#[derive(Debug, Clone, PartialEq)]
pub enum PyInt {
    /// Fits in an `i64`.
    Small(i64),
    /// Does not fit in an `i64`: optional `-` then decimal digits without leading zeros.
    Big(String),
}

impl PyInt {
    /// Parse `-?[0-9]+` (ASCII, as produced by the scanner or by [`crate::pystr::py_int`]).
    pub fn from_decimal(text: &str) -> PyInt {
        if let Ok(v) = text.parse::<i64>() {
            return PyInt::Small(v);
        }
        let (neg, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let digits = digits.trim_start_matches('0');
        let digits = if digits.is_empty() { "0" } else { digits };
        if digits == "0" {
            return PyInt::Small(0);
        }
        PyInt::Big(format!("{}{digits}", if neg { "-" } else { "" }))
    }

    /// Python's `float(int)`: correctly rounded, `None` where Python raises `OverflowError`.
    pub fn to_f64(&self) -> Option<f64> {
        match self {
            PyInt::Small(v) => Some(*v as f64),
            PyInt::Big(text) => text.parse::<f64>().ok().filter(|x| x.is_finite()),
        }
    }

    /// Python truthiness (`0` is falsy).
    pub fn is_zero(&self) -> bool {
        matches!(self, PyInt::Small(0))
    }
}

/// A value as Python's `json.loads` returns it, allocated in an arena ([`bumpalo::Bump`]) that
/// outlives it: strings borrow from the parsed text (or from the arena when they contain
/// escapes) and lists and dicts are arena slices, so a value owns nothing, is `Copy`, and
/// parsing a scene costs no heap allocation once the arena has grown to size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PyValue<'a> {
    /// `null` → `None`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer literal that fits in an `i64`.
    Int(i64),
    /// A larger integer literal: its text (`-?[1-9][0-9]*`, as JSON writes integers).
    BigInt(&'a str),
    /// A literal with a fraction or exponent, or `NaN` / `Infinity` / `-Infinity`.
    Float(f64),
    /// A string.
    Str(&'a str),
    /// An array.
    List(&'a [PyValue<'a>]),
    /// An object: keys in first-insertion order, the last duplicate's value wins (like `dict`).
    Dict(&'a [(&'a str, PyValue<'a>)]),
}

impl<'a> PyValue<'a> {
    /// `dict.get(key)` for a `Dict`; `None` for other values or a missing key.
    pub fn get(&self, key: &str) -> Option<&'a PyValue<'a>> {
        match self {
            PyValue::Dict(entries) => entries
                .iter()
                .find(|(k, _)| short_eq(k, key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a `Str`, else `None`.
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Python truthiness (`bool(value)`).
    pub fn is_truthy(&self) -> bool {
        match self {
            PyValue::Null => false,
            PyValue::Bool(b) => *b,
            PyValue::Int(i) => *i != 0,
            PyValue::BigInt(_) => true,
            PyValue::Float(f) => *f != 0.0,
            PyValue::Str(s) => !s.is_empty(),
            PyValue::List(l) => !l.is_empty(),
            PyValue::Dict(d) => !d.is_empty(),
        }
    }

    /// `isinstance(value, (int, float))`, which includes `bool`.
    pub fn is_number(&self) -> bool {
        matches!(
            self,
            PyValue::Bool(_) | PyValue::Int(_) | PyValue::BigInt(_) | PyValue::Float(_)
        )
    }

    /// `len(value)` for the types that have one (`str` counts code points); `None` where Python
    /// raises `TypeError`.
    pub fn py_len(&self) -> Option<usize> {
        match self {
            PyValue::Str(s) => Some(s.chars().count()),
            PyValue::List(l) => Some(l.len()),
            PyValue::Dict(d) => Some(d.len()),
            _ => None,
        }
    }

    /// Python's `float(value)` for a number (`bool` included); `None` for other values and where
    /// Python raises `OverflowError` (an integer beyond the float range).
    pub fn to_f64(&self) -> Option<f64> {
        match self {
            PyValue::Bool(b) => Some(f64::from(u8::from(*b))),
            PyValue::Int(i) => Some(*i as f64),
            PyValue::BigInt(text) => text.parse::<f64>().ok().filter(|x| x.is_finite()),
            PyValue::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// [`Parser::small_int`] at byte `start` of `s`: the value and the offset just past it.
#[cfg_attr(not(debug_assertions), inline(always))]
fn small_int_at(s: &[u8], start: usize) -> Option<(i64, usize)> {
    let mut j = start;
    let negative = s.get(j) == Some(&b'-');
    j += usize::from(negative);
    let first = *s.get(j).filter(|c| c.is_ascii_digit())?;
    let mut v = i64::from(first - b'0');
    j += 1;
    if first != b'0' {
        // at most MAX_EXACT_DIGITS characters (sign included) in all
        let end = s.len().min(start + MAX_EXACT_DIGITS);
        while j < end && s[j].is_ascii_digit() {
            v = v * 10 + i64::from(s[j] - b'0');
            j += 1;
        }
        if s.get(j).is_some_and(u8::is_ascii_digit) {
            return None;
        }
    }
    if matches!(s.get(j), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((if negative { -v } else { v }, j))
}

/// Length of the prefix of `s` free of `"`, `\\` and control bytes (< 0x20): the part of a string
/// literal that is copied as is. Eight bytes at a time (SWAR), then byte by byte.
#[inline]
fn plain_run(s: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // high bit of each byte set where that byte of `x` is 0 (exact: no carry crosses a byte)
    let zero = |x: u64| !(((x & LOW7).wrapping_add(LOW7)) | x) & HIGH;
    let mut n = 0;
    while let Some(chunk) = s.get(n..n + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // bytes below 0x20: a borrow can only flag bytes after a flagged one, so the lowest
        // flag is exact, and the lowest flag is all that is used
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let stop =
            zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\'))) | control;
        if stop != 0 {
            return n + (stop.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + s[n..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(s.len() - n)
}

/// Why `json.loads` would raise (`JSONDecodeError`, or the `ValueError`/`RecursionError` it lets through).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PyJsonError {
    /// Malformed JSON at a character offset.
    #[error("{msg} at char {pos}")]
    Syntax {
        /// What was expected or found.
        msg: &'static str,
        /// Character (code point) offset, as Python reports it.
        pos: usize,
    },
    /// An integer literal longer than [`INT_MAX_STR_DIGITS`].
    #[error("integer literal with {0} digits exceeds the limit of {INT_MAX_STR_DIGITS}")]
    IntTooLong(usize),
    /// Deeper than [`MAX_DEPTH`] nested arrays/objects (Python: `RecursionError`).
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Parse `text` exactly as Python's `json.loads(text)` would, allocating in `arena`.
pub fn loads<'a>(text: &'a str, arena: &'a Bump) -> Result<PyValue<'a>, PyJsonError> {
    parse(text, arena, true)
}

/// [`loads`], with or without the scene-object fast path ([`Parser::scene_object`]).
fn parse<'a>(
    text: &'a str,
    arena: &'a Bump,
    fast_objects: bool,
) -> Result<PyValue<'a>, PyJsonError> {
    let mut p = Parser {
        text,
        s: text.as_bytes(),
        i: 0,
        arena,
        error: None,
        fast_objects,
    };
    let mut value = PyValue::Null;
    let parsed = (|| {
        p.skip_ws();
        p.value_into(0, &mut value)?;
        p.skip_ws();
        if p.i != p.s.len() {
            return Err(p.syntax("Extra data"));
        }
        Ok(())
    })();
    match parsed {
        Ok(()) => Ok(value),
        Err(Fail) => Err(p.error.take().expect("a failed parse records its error")),
    }
}

/// A failed parse; the reason is in [`Parser::error`]. Zero-sized, so the parser's results fit
/// in registers: returning `PyValue`s or rich errors through memory made every container
/// element a store-forwarding stall.
#[derive(Debug)]
struct Fail;

/// The result of a parsing step.
type Parse<T> = Result<T, Fail>;

/// A scanner over the UTF-8 bytes of the text. Every token JSON defines is ASCII and UTF-8 never
/// uses ASCII bytes inside a multi-byte character, so byte-wise scanning finds the same tokens as
/// Python's scan over code points; positions are converted to code points only for errors.
/// Values are written into their final place (`out` parameters): a list item or dict value is
/// parsed straight into its slot.
struct Parser<'a> {
    text: &'a str,
    s: &'a [u8],
    i: usize,
    arena: &'a Bump,
    /// Why the parse failed, once it has.
    error: Option<PyJsonError>,
    /// Try [`Self::scene_object`] before the general object path (off only in tests, to check
    /// that both build the same values).
    fast_objects: bool,
}

impl fmt::Debug for Parser<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parser at byte {}", self.i)
    }
}

impl<'a> Parser<'a> {
    /// Record `error` as the reason the parse fails.
    #[cold]
    #[inline(never)]
    fn fail(&mut self, error: PyJsonError) -> Fail {
        self.error = Some(error);
        Fail
    }

    /// A syntax error at the current position, counted in code points as Python reports it.
    #[cold]
    #[inline(never)]
    fn syntax(&mut self, msg: &'static str) -> Fail {
        let pos = self.s[..self.i.min(self.s.len())]
            .iter()
            .filter(|&&b| b & 0xC0 != 0x80)
            .count();
        self.fail(PyJsonError::Syntax { msg, pos })
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    /// One value into `out`. Inlined into the array and object loops (which are the recursion).
    #[cfg_attr(not(debug_assertions), inline(always))]
    fn value_into(&mut self, depth: usize, out: &mut PyValue<'a>) -> Parse<()> {
        *out = match self.peek() {
            Some(b'"') => {
                self.i += 1;
                PyValue::Str(self.string()?)
            }
            Some(b'{') => return self.object(depth + 1, out),
            Some(b'[') => return self.array(depth + 1, out),
            Some(b'n') if self.eat_word("null") => PyValue::Null,
            Some(b't') if self.eat_word("true") => PyValue::Bool(true),
            Some(b'f') if self.eat_word("false") => PyValue::Bool(false),
            Some(b'N') if self.eat_word("NaN") => PyValue::Float(f64::NAN),
            Some(b'I') if self.eat_word("Infinity") => PyValue::Float(f64::INFINITY),
            Some(b'-') if self.eat_word("-Infinity") => PyValue::Float(f64::NEG_INFINITY),
            Some(b'-' | b'0'..=b'9') => return self.number(out),
            _ => return Err(self.syntax("Expecting value")),
        };
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    /// The common case of [`Self::number`] on its own: an integer literal short enough for an
    /// `i64` and not followed by `.`, `e` or `E` (those take the general path). Returning the
    /// value in a register is what makes it worth having: boxes are mostly such integers.
    #[cfg_attr(not(debug_assertions), inline(always))]
    fn small_int(&mut self) -> Option<i64> {
        let (v, end) = small_int_at(self.s, self.i)?;
        self.i = end;
        Some(v)
    }

    /// A number literal into `out`.
    #[inline(never)]
    fn number(&mut self, out: &mut PyValue<'a>) -> Parse<()> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => {
                self.i = start;
                return Err(self.syntax("Expecting value"));
            }
        }
        let int_end = self.i;
        let mut is_float = false;
        if self.peek() == Some(b'.') && matches!(self.s.get(self.i + 1), Some(b'0'..=b'9')) {
            self.i += 1;
            self.digits();
            is_float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let save = self.i;
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                self.i = save;
            } else {
                is_float = true;
            }
        }
        // ASCII only, so these are character boundaries
        let text = &self.text[start..self.i];
        *out = if is_float {
            // Rust's float parsing is correctly rounded like Python's `float(str)`; overflow → ±inf.
            match text.parse() {
                Ok(v) => PyValue::Float(v),
                Err(_) => return Err(self.syntax("Invalid number")),
            }
        } else {
            let n_digits = int_end - start - usize::from(negative);
            if n_digits > INT_MAX_STR_DIGITS {
                return Err(self.fail(PyJsonError::IntTooLong(n_digits)));
            }
            // JSON integers have no leading zeros or `+`, so the text is already canonical
            match text.parse::<i64>() {
                Ok(v) => PyValue::Int(v),
                Err(_) => PyValue::BigInt(text),
            }
        };
        Ok(())
    }

    fn hex4(&mut self) -> Parse<u32> {
        if self.i + 4 > self.s.len() {
            return Err(self.syntax("Invalid \\uXXXX escape"));
        }
        let mut v = 0u32;
        for k in 0..4 {
            match char::from(self.s[self.i + k]).to_digit(16) {
                Some(d) => v = v * 16 + d,
                None => return Err(self.syntax("Invalid \\uXXXX escape")),
            }
        }
        self.i += 4;
        Ok(v)
    }

    /// Body of a string; the opening quote is consumed. Borrowed when it has no escapes.
    fn string(&mut self) -> Parse<&'a str> {
        let start = self.i;
        self.i += plain_run(&self.s[self.i..]);
        match self.peek() {
            None => return Err(self.syntax("Unterminated string")),
            Some(b'"') => {
                let body = &self.text[start..self.i];
                self.i += 1;
                return Ok(body);
            }
            Some(b'\\') => {}
            Some(_) => return Err(self.syntax("Invalid control character")),
        }
        self.escaped_string(start)
    }

    /// The rest of a string from its first backslash: decoded into the arena.
    #[inline(never)]
    fn escaped_string(&mut self, start: usize) -> Parse<&'a str> {
        let mut out = BumpString::from_str_in(&self.text[start..self.i], self.arena);
        loop {
            let Some(c) = self.peek() else {
                return Err(self.syntax("Unterminated string"));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(out.into_bump_str());
                }
                b'\\' => {
                    self.i += 1;
                    let Some(e) = self.peek() else {
                        return Err(self.syntax("Unterminated string"));
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let mut code = hi;
                            if (0xD800..0xDC00).contains(&hi)
                                && self.s.get(self.i) == Some(&b'\\')
                                && self.s.get(self.i + 1) == Some(&b'u')
                            {
                                let save = self.i;
                                self.i += 2;
                                // a bad second escape is not an error here: the scan restarts
                                // at it and reports it there
                                let error = self.error.take();
                                match self.hex4() {
                                    Ok(lo) if (0xDC00..0xE000).contains(&lo) => {
                                        code = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                    }
                                    _ => {
                                        self.i = save;
                                        self.error = error;
                                    }
                                }
                            }
                            out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                        }
                        _ => {
                            self.i -= 1;
                            return Err(self.syntax("Invalid \\escape"));
                        }
                    }
                }
                c if c < 0x20 => return Err(self.syntax("Invalid control character")),
                _ => {
                    // copy the run up to the next quote, backslash or control byte at once
                    let run = self.i;
                    self.i += plain_run(&self.s[self.i..]);
                    out.push_str(&self.text[run..self.i]);
                }
            }
        }
    }

    /// After a list item or dict entry: whitespace, then the container's closing byte (`true`,
    /// not consumed) or a comma and whitespace (`false`).
    #[cfg_attr(not(debug_assertions), inline(always))]
    fn item_end(&mut self, close: u8) -> Parse<bool> {
        self.skip_ws();
        match self.peek() {
            Some(c) if c == close => Ok(true),
            Some(b',') => {
                self.i += 1;
                self.skip_ws();
                Ok(false)
            }
            _ => Err(self.syntax("Expecting ',' delimiter")),
        }
    }

    /// An array into `out`; the items are parsed straight into their slots.
    #[inline(never)]
    fn array(&mut self, depth: usize, out: &mut PyValue<'a>) -> Parse<()> {
        if depth > MAX_DEPTH {
            return Err(self.fail(PyJsonError::TooDeep));
        }
        self.i += 1;
        let mut items = BumpVec::with_capacity_in(TYPICAL_LEN, self.arena);
        self.skip_ws();
        if self.peek() != Some(b']') {
            loop {
                match self.small_int() {
                    Some(v) => items.push(PyValue::Int(v)),
                    None => {
                        items.push(PyValue::Null);
                        let slot = items.last_mut().expect("just pushed");
                        self.value_into(depth, slot)?;
                    }
                }
                if self.item_end(b']')? {
                    break;
                }
            }
        }
        self.i += 1;
        *out = PyValue::List(items.into_bump_slice());
        Ok(())
    }

    /// The object at `{` if it is a scene object laid out as Python's `json.dumps` writes one,
    /// `{"id": "<text without escapes>", "bbox": [<int>, <int>, <int>, <int>]}` (`", "` and
    /// `": "` separators, integers that [`Self::small_int`] reads): the same value the general
    /// path builds, in a fraction of its steps (fixed tokens compared at once, no dispatch, no
    /// duplicate-key search, slices allocated at their final size). `None`, with the position
    /// unchanged, for anything else, which the general path then parses. Needs one nesting
    /// level of room for the box.
    #[cfg_attr(not(debug_assertions), inline(always))]
    fn scene_object(&mut self) -> Option<PyValue<'a>> {
        const OPEN: &[u8] = br#"{"id": ""#;
        const MIDDLE: &[u8] = br#"", "bbox": ["#;
        let s = self.s;
        let mut j = self.i;
        if s.get(j..j + OPEN.len())? != OPEN {
            return None;
        }
        j += OPEN.len();
        let id_start = j;
        j += plain_run(&s[j..]);
        // `plain_run` stops at an ASCII byte, so this is a character boundary
        let id = self.text.get(id_start..j)?;
        if s.get(j..j + MIDDLE.len())? != MIDDLE {
            return None;
        }
        j += MIDDLE.len();
        let mut numbers = [PyValue::Null; 4];
        for (k, number) in numbers.iter_mut().enumerate() {
            let (v, end) = small_int_at(s, j)?;
            *number = PyValue::Int(v);
            let separator: &[u8] = if k == 3 { b"]}" } else { b", " };
            if s.get(end..end + 2)? != separator {
                return None;
            }
            j = end + 2;
        }
        self.i = j;
        let bbox = &*self.arena.alloc_slice_copy(&numbers);
        let entries = self
            .arena
            .alloc_slice_copy(&[("id", PyValue::Str(id)), ("bbox", PyValue::List(bbox))]);
        Some(PyValue::Dict(entries))
    }

    /// An object into `out`; each value is parsed straight into its entry (the first
    /// occurrence's entry for a repeated key, as a `dict` keeps it).
    #[inline(never)]
    fn object(&mut self, depth: usize, out: &mut PyValue<'a>) -> Parse<()> {
        if depth > MAX_DEPTH {
            return Err(self.fail(PyJsonError::TooDeep));
        }
        if self.fast_objects && depth < MAX_DEPTH {
            if let Some(object) = self.scene_object() {
                *out = object;
                return Ok(());
            }
        }
        self.i += 1;
        let mut entries: BumpVec<(&'a str, PyValue<'a>)> =
            BumpVec::with_capacity_in(TYPICAL_LEN, self.arena);
        self.skip_ws();
        if self.peek() != Some(b'}') {
            loop {
                if self.peek() != Some(b'"') {
                    return Err(self.syntax("Expecting property name enclosed in double quotes"));
                }
                self.i += 1;
                let key = self.string()?;
                self.skip_ws();
                if self.peek() != Some(b':') {
                    return Err(self.syntax("Expecting ':' delimiter"));
                }
                self.i += 1;
                self.skip_ws();
                let slot = match entries.iter().position(|(k, _)| short_eq(k, key)) {
                    Some(k) => &mut entries[k].1,
                    None => {
                        entries.push((key, PyValue::Null));
                        &mut entries.last_mut().expect("just pushed").1
                    }
                };
                match self.small_int() {
                    Some(v) => *slot = PyValue::Int(v),
                    None => self.value_into(depth, slot)?,
                }
                if self.item_end(b'}')? {
                    break;
                }
            }
        }
        self.i += 1;
        *out = PyValue::Dict(entries.into_bump_slice());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `loads` with a fresh arena, leaked for the test's duration.
    fn loads(text: &str) -> Result<PyValue<'_>, PyJsonError> {
        super::loads(text, Box::leak(Box::new(Bump::new())))
    }

    #[test]
    fn plain_run_stops_at_the_first_quote_backslash_or_control_byte() {
        let alphabet = [
            b'a',
            b'"',
            b'\\',
            0x1f,
            0x20,
            0x00,
            0x7f,
            0x80,
            0xa2,
            0xdc,
            0x21,
            0x5c ^ 0x80,
        ];
        let mut state = 3u64;
        for len in 0..40 {
            for _ in 0..50 {
                let s: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        // mostly plain bytes, so runs get long
                        let k = (state >> 33) as usize % (alphabet.len() * 3);
                        alphabet.get(k).copied().unwrap_or(b'x')
                    })
                    .collect();
                let naive = s
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                    .unwrap_or(s.len());
                assert_eq!(plain_run(&s), naive, "{s:?}");
            }
        }
    }

    #[test]
    fn scene_object_fast_path_builds_what_the_general_path_builds() {
        let arena = Bump::new();
        let both = |text: &str| {
            let fast = parse(text, &arena, true);
            let general = parse(text, &arena, false);
            assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{text:?}");
        };
        let shapes = [
            r#"{"id": "man.1", "bbox": [1, 2, 3, 4]}"#,
            r#"{"id": "a", "bbox": [-0, 0, -12, 999999999999999999]}"#,
            r#"{"id": "a", "bbox": [-0, 0, -12, 9223372036854775807]}"#,
            "{\"id\":\"a\",\"bbox\":[-0,0,-12,9223372036854775807]}",
            " {\n\t\"id\" :\r \"x y\" , \"bbox\" : [ 1 ,2, 3 , 4 ] } ",
            r#"{"id": "man.1", "bbox": [1, 2, 3, 4] }"#,
            r#"{"id": "man.1", "bbox": [1, 2, 3, 4 ]}"#,
            r#"{"id": "man.1", "bbox": [1,2, 3, 4]}"#,
            r#"{"id": "", "bbox": [1, 2, 3, 4]}"#,
            r#"{"id": "é.1", "bbox": [1, 2, 3, 4]}"#,
            // near misses: each must take the general path (or fail like it)
            r#"{"id": "man.1", "bbox": [1, 2, 3]}"#,
            r#"{"id": "man.1", "bbox": [1, 2, 3, 4, 5]}"#,
            r#"{"id": "man.1", "bbox": [1.5, 2, 3, 4]}"#,
            r#"{"id": "man.1", "bbox": [1e2, 2, 3, 4]}"#,
            r#"{"id": "man.1", "bbox": [99999999999999999999, 2, 3, 4]}"#,
            r#"{"id": "man.1", "bbox": [01, 2, 3, 4]}"#,
            r#"{"id": "man.1", "bbox": [NaN, 2, 3, 4]}"#,
            r#"{"id": "m\u0061n.1", "bbox": [1, 2, 3, 4]}"#,
            r#"{"id": 5, "bbox": [1, 2, 3, 4]}"#,
            r#"{"bbox": [1, 2, 3, 4], "id": "man.1"}"#,
            r#"{"id": "man.1", "bbox": [1, 2, 3, 4], "id": "dog.2"}"#,
            r#"{"id": "man.1", "bbox": [1, 2, 3, 4],}"#,
            r#"{"id": "man.1", "bbox": [1, 2, 3, 4]"#,
            r#"{"id": "man.1", "bbox": [1, 2, 3, 4]}}"#,
            r#"{"idx": "man.1", "bbox": [1, 2, 3, 4]}"#,
            r#"{"id": "man.1", "bboxes": [1, 2, 3, 4]}"#,
            "{\"id\": \"man\n.1\", \"bbox\": [1, 2, 3, 4]}",
            r#"{"id": "man.1" "bbox": [1, 2, 3, 4]}"#,
            r#"{"id": "man.1", "bbox": [1, 2, 3, 4 5]}"#,
            r#"{"id": "man.1", "bbox": [-, 2, 3, 4]}"#,
            r#"{"id": "man.1", "bbox": [1, 2, 3, 4], }"#,
            r#"{"id": "man.1", "bbox": {"x": 1}}"#,
        ];
        for shape in shapes {
            both(shape);
            both(&format!(
                r#"{{"objects": [{shape}, {shape}], "relationships": []}}"#
            ));
            for cut in 0..shape.len() {
                if shape.is_char_boundary(cut) {
                    both(&shape[..cut]);
                }
            }
        }
        // at the nesting limit the box no longer fits, so the general path reports it
        let deep = |n: usize| {
            format!(
                "{}{}{}",
                "[".repeat(n),
                r#"{"id": "a", "bbox": [1, 2, 3, 4]}"#,
                "]".repeat(n)
            )
        };
        for n in [MAX_DEPTH - 3, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH] {
            both(&deep(n));
        }
    }

    #[test]
    fn python_extensions() {
        assert!(matches!(loads("NaN"), Ok(PyValue::Float(x)) if x.is_nan()));
        assert_eq!(loads(" -Infinity "), Ok(PyValue::Float(f64::NEG_INFINITY)));
        assert_eq!(loads("1e400"), Ok(PyValue::Float(f64::INFINITY)));
        assert_eq!(
            loads(r#"{"a": 1, "b": 2, "a": 3}"#),
            Ok(PyValue::Dict(&[
                ("a", PyValue::Int(3)),
                ("b", PyValue::Int(2))
            ]))
        );
        assert_eq!(
            loads("-123456789012345678901234567890"),
            Ok(PyValue::BigInt("-123456789012345678901234567890"))
        );
        assert_eq!(loads(&"9".repeat(4300)).map(|_| ()), Ok(()));
        assert_eq!(loads(&"9".repeat(4301)), Err(PyJsonError::IntTooLong(4301)));
        assert_eq!(loads(r#""\ud83d\ude00""#), Ok(PyValue::Str("😀")));
    }

    #[test]
    fn rejects_what_python_rejects() {
        for bad in [
            "",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "+1",
            "-",
            "nan",
            "infinity",
            "-NaN",
            "'a'",
            "{a:1}",
            "\"\t\"",
            "\"\\x\"",
            "[1] x",
            "\u{feff}{}",
            "{\"a\" 1}",
            "[1 2]",
        ] {
            assert!(loads(bad).is_err(), "{bad:?} should fail");
        }
        assert!(loads(&("[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH))).is_ok());
        assert_eq!(
            loads(&("[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1))),
            Err(PyJsonError::TooDeep)
        );
    }

    #[test]
    fn numbers_keep_int_float_distinction() {
        assert_eq!(loads("-0"), Ok(PyValue::Int(0)));
        assert_eq!(loads("2E+2"), Ok(PyValue::Float(200.0)));
        assert_eq!(
            loads("[1.5e-3, 7]"),
            Ok(PyValue::List(&[PyValue::Float(0.0015), PyValue::Int(7)]))
        );
    }
}
