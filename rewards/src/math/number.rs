//! Reading numbers out of free text: thousands separators, currency, percentages, units, fractions (`3/4`,
//! `1 1/2`, `\frac{3}{4}`), decimals, signs (ASCII and Unicode minus), and scientific notation.
//!
//! Written by hand rather than with `regex` because it is the hot path of math verification (the bench target is
//! ≥ 100k verifications/s on one core) and because the rules (a comma is a thousands separator only before exactly
//! three digits; `-` is a sign only after a non-word character) are awkward as one pattern.

/// A number found in text, with its byte span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    /// The value.
    pub value: f64,
    /// Byte offset of the first character (the sign, if any).
    pub start: usize,
    /// Byte offset one past the last character.
    pub end: usize,
}

/// All numbers in `text`, left to right.
pub fn numbers(text: &str) -> Numbers<'_> {
    Numbers { text, bytes: text.as_bytes(), pos: 0 }
}

/// The first number in `text`.
pub fn first_number(text: &str) -> Option<f64> {
    numbers(text).next().map(|f| f.value)
}

/// The last number in `text`.
pub fn last_number(text: &str) -> Option<f64> {
    numbers(text).last().map(|f| f.value)
}

/// Iterator returned by [`numbers`].
#[derive(Debug, Clone)]
pub struct Numbers<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

const UNICODE_MINUS: &str = "\u{2212}";

impl Iterator for Numbers<'_> {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        let b = self.bytes;
        while self.pos < b.len() {
            let i = self.pos;
            let c = b[i];
            let starts_digits = c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit));
            if !starts_digits {
                self.pos += 1;
                continue;
            }
            // Digits glued to a word (`x2`, `H2O`) are not numbers; a preceding digit cannot happen here.
            if i > 0 && (b[i - 1].is_ascii_alphabetic() || b[i - 1] == b'_') {
                self.pos = skip_word(b, i);
                continue;
            }
            let (value, end) = read_unsigned(b, i);
            let (mut value, mut end) = (value, end);
            // Mixed number `1 1/2` or fraction `3/4`.
            if let Some((frac, fend)) = read_fraction_tail(b, i, end, value) {
                value = frac;
                end = fend;
            }
            let (negative, start) = sign_before(self.text, i);
            self.pos = end;
            return Some(Found { value: if negative { -value } else { value }, start, end });
        }
        None
    }
}

fn skip_word(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
        i += 1;
    }
    i
}

/// Is there a sign right before byte `i`, itself not glued to a word (so `3-5` reads 3 and 5, `x-5` reads 5)?
fn sign_before(text: &str, i: usize) -> (bool, usize) {
    let before = &text[..i];
    let (sign_len, is_sign) = if before.ends_with('-') {
        (1, true)
    } else if before.ends_with(UNICODE_MINUS) {
        (UNICODE_MINUS.len(), true)
    } else {
        (0, false)
    };
    if !is_sign {
        return (false, i);
    }
    let s = i - sign_len;
    let glued = text[..s].chars().next_back().is_some_and(|p| p.is_alphanumeric() || p == ')' || p == '_');
    if glued {
        (false, i)
    } else {
        (true, s)
    }
}

/// Read `1,234,567.89e3` starting at `i` (no sign). Returns (value, end).
fn read_unsigned(b: &[u8], i: usize) -> (f64, usize) {
    let mut j = i;
    let mut int_part: u128 = 0;
    let mut int_digits = 0usize;
    let mut overflow = false;
    let mut push =
        |d: u8, int_part: &mut u128| match int_part.checked_mul(10).and_then(|v| v.checked_add(u128::from(d - b'0'))) {
            Some(v) => *int_part = v,
            None => overflow = true,
        };
    while j < b.len() && b[j].is_ascii_digit() {
        push(b[j], &mut int_part);
        j += 1;
        int_digits += 1;
    }
    // Thousands separators: `,ddd` groups, only after 1–3 leading digits and only when exactly 3 digits follow.
    if (1..=3).contains(&int_digits) {
        while j + 3 < b.len() + 1
            && b.get(j) == Some(&b',')
            && b.get(j + 1..j + 4).is_some_and(|g| g.iter().all(u8::is_ascii_digit))
            && !b.get(j + 4).is_some_and(u8::is_ascii_digit)
        {
            for k in 1..4 {
                push(b[j + k], &mut int_part);
            }
            j += 4;
        }
    }
    let mut end = j;
    let mut text_end = j;
    // Decimal part.
    let mut frac_str_start = None;
    if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
        frac_str_start = Some(j);
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        end = j;
        text_end = j;
    }
    // Exponent: `e` / `E`, optional sign, digits, and not the start of a word (`5 eggs`, `3em`).
    let mut exp: i32 = 0;
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let mut k = j + 1;
        let mut neg = false;
        if matches!(b.get(k), Some(b'+' | b'-')) {
            neg = b[k] == b'-';
            k += 1;
        }
        let ds = k;
        while k < b.len() && b[k].is_ascii_digit() && k - ds < 4 {
            k += 1;
        }
        let word_follows = b.get(k).is_some_and(|c| c.is_ascii_alphabetic());
        if k > ds && !word_follows {
            let digits = std::str::from_utf8(&b[ds..k]).unwrap_or("0");
            exp = digits.parse::<i32>().unwrap_or(0);
            if neg {
                exp = -exp;
            }
            end = k;
        }
    }
    let mut value = if overflow { f64::INFINITY } else { int_part as f64 };
    if let Some(fs) = frac_str_start {
        // Parse "0.ddd" with the standard library for correct rounding.
        let frac_text = std::str::from_utf8(&b[fs..text_end]).unwrap_or(".0");
        let mut s = String::with_capacity(frac_text.len() + 1);
        s.push('0');
        s.push_str(frac_text);
        value += s.parse::<f64>().unwrap_or(0.0);
    }
    if exp != 0 {
        value *= 10f64.powi(exp);
    }
    (value, end)
}

/// After an integer at `start..end`, read `/d+` (a fraction) or ` d+/d+` (a mixed number).
fn read_fraction_tail(b: &[u8], start: usize, end: usize, value: f64) -> Option<(f64, usize)> {
    let is_int = b[start..end].iter().all(u8::is_ascii_digit);
    if !is_int {
        return None;
    }
    let read_int = |mut k: usize| -> Option<(f64, usize)> {
        let s = k;
        while k < b.len() && b[k].is_ascii_digit() {
            k += 1;
        }
        if k == s || b.get(k).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/') {
            return None;
        }
        let v: f64 = std::str::from_utf8(&b[s..k]).ok()?.parse().ok()?;
        Some((v, k))
    };
    if b.get(end) == Some(&b'/') {
        let (den, k) = read_int(end + 1)?;
        return (den != 0.0).then(|| (value / den, k));
    }
    if b.get(end) == Some(&b' ') {
        let (num, k) = read_int_then_slash(b, end + 1)?;
        let (den, k) = read_int(k + 1)?;
        return (den != 0.0 && num < den).then(|| (value + num / den, k));
    }
    None
}

fn read_int_then_slash(b: &[u8], mut k: usize) -> Option<(f64, usize)> {
    let s = k;
    while k < b.len() && b[k].is_ascii_digit() {
        k += 1;
    }
    if k == s || b.get(k) != Some(&b'/') {
        return None;
    }
    let v: f64 = std::str::from_utf8(&b[s..k]).ok()?.parse().ok()?;
    Some((v, k))
}

/// Rewrite LaTeX in an extracted answer into plain text the scanner reads: `\frac{a}{b}` → `a/b`, `\dfrac`,
/// `\tfrac`, `{,}` thousands groups, `\text{…}`/`\mathrm{…}` → their content, `\!`, `\,`, `\$`, `\%`, `^\circ`,
/// `\left`/`\right` dropped. Borrowed input is returned unchanged when it holds no backslash or brace.
pub fn delatex(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\\', '{']) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut s = text.replace("{,}", "");
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\$", ""),
        ("\\%", "%"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
    ] {
        if s.contains(from) {
            s = s.replace(from, to);
        }
    }
    for cmd in ["\\text", "\\mathrm", "\\textbf", "\\mbox"] {
        while let Some(p) = s.find(cmd) {
            let after = p + cmd.len();
            match braced(&s, after) {
                Some((inner, end)) => {
                    let inner = inner.to_string();
                    s.replace_range(p..end, &inner);
                }
                None => {
                    s.replace_range(p..after, "");
                }
            }
        }
    }
    while let Some(p) = s.find("\\frac") {
        let after = p + "\\frac".len();
        let Some((num, e1)) = braced(&s, after) else {
            s.replace_range(p..after, "");
            continue;
        };
        let Some((den, e2)) = braced(&s, e1) else {
            s.replace_range(p..after, "");
            continue;
        };
        let rep = format!("{}/{}", num.trim(), den.trim());
        s.replace_range(p..e2, &rep);
    }
    std::borrow::Cow::Owned(s)
}

/// The content of the `{…}` group starting at byte `at` (after optional spaces), and the index after it.
pub(crate) fn braced(s: &str, at: usize) -> Option<(&str, usize)> {
    let rest = &s[at..];
    let skip = rest.len() - rest.trim_start().len();
    let open = at + skip;
    if s.as_bytes().get(open) != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    for (k, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[open + 1..open + k], open + k + 1));
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(text: &str) -> Vec<f64> {
        numbers(text).map(|f| f.value).collect()
    }

    #[test]
    fn reads_the_forms_math_answers_take() {
        assert_eq!(all("1,234,567"), vec![1_234_567.0]);
        assert_eq!(all("$18.50 each"), vec![18.5]);
        assert_eq!(all("-5 and \u{2212}7"), vec![-5.0, -7.0]);
        assert_eq!(all("3-5"), vec![3.0, 5.0]);
        assert_eq!(all("x-5"), vec![5.0]);
        assert_eq!(all("3/4 cup"), vec![0.75]);
        assert_eq!(all("1 1/2 hours"), vec![1.5]);
        assert_eq!(all("25%"), vec![25.0]);
        assert_eq!(all(".5"), vec![0.5]);
        assert_eq!(all("1e+16"), vec![1e16]);
        assert_eq!(all("5 eggs 3em"), vec![5.0, 3.0]);
        assert_eq!(all("H2O x2"), Vec::<f64>::new());
        assert_eq!(all("1,23"), vec![1.0, 23.0]);
        assert_eq!(all("12,3456"), vec![12.0, 3456.0]);
        assert_eq!(all("(-3)"), vec![-3.0]);
        assert_eq!(all("10 / 2"), vec![10.0, 2.0]);
        assert_eq!(all("2 3 4"), vec![2.0, 3.0, 4.0]);
    }

    #[test]
    fn delatex_rewrites_fractions_and_text() {
        assert_eq!(delatex("\\frac{3}{4}"), "3/4");
        assert_eq!(delatex("\\dfrac{ 1 }{2}"), "1/2");
        assert_eq!(delatex("1{,}000 \\text{ dollars}"), "1000  dollars");
        assert_eq!(delatex("90^\\circ"), "90");
        assert_eq!(first_number(&delatex("\\$\\frac{7}{2}")), Some(3.5));
    }

    proptest! {
        #[test]
        fn integers_round_trip_with_and_without_separators(n in -10_000_000_000i64..10_000_000_000i64) {
            prop_assert_eq!(first_number(&n.to_string()), Some(n as f64));
            let grouped = group_thousands(n);
            prop_assert_eq!(first_number(&grouped), Some(n as f64), "{}", grouped);
            prop_assert_eq!(first_number(&format!("The total is ${grouped}.")), Some(n as f64));
        }

        #[test]
        fn decimals_round_trip(x in -1e6f64..1e6f64) {
            let text = format!("{x:.3}");
            let parsed = first_number(&text).unwrap_or(f64::NAN);
            prop_assert!((parsed - x).abs() < 1e-3, "{} -> {}", text, parsed);
        }

        #[test]
        fn scanner_never_panics_and_spans_are_char_boundaries(s in "\\PC{0,64}") {
            for f in numbers(&s) {
                prop_assert!(s.is_char_boundary(f.start) && s.is_char_boundary(f.end));
                prop_assert!(f.start < f.end);
            }
            let _ = delatex(&s);
        }
    }

    fn group_thousands(n: i64) -> String {
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (k, c) in digits.chars().enumerate() {
            if k > 0 && (digits.len() - k).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            format!("-{out}")
        } else {
            out
        }
    }
}
