//! Finding the final answer in a worked solution, in ReFT's order of trust: `#### N` (GSM8K), "the answer is N"
//! (ReFT's N-CoT: `"Therefore, the answer is: "`), `\boxed{N}` (MATH), and finally the last number in the text.

use std::borrow::Cow;

use super::number::{self, braced, delatex};

/// Where an answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// After the last `####`.
    Hashes,
    /// After the last "the answer is" (case-insensitive, optional colon).
    AnswerIs,
    /// Inside the last `\boxed{…}` / `\fbox{…}`.
    Boxed,
    /// The last number anywhere in the text.
    LastNumber,
}

/// An answer segment: the text after a marker (one line), or a boxed group.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment<'a> {
    /// The raw segment.
    pub text: &'a str,
    /// Where it was found.
    pub source: Source,
}

/// A numeric answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumericAnswer {
    /// The value.
    pub value: f64,
    /// Where it was found.
    pub source: Source,
}

const ANSWER_IS: &str = "the answer is";

/// The answer segments in order of trust (`####`, "the answer is", `\boxed{}`), each at most once.
pub fn segments(text: &str) -> impl Iterator<Item = Segment<'_>> {
    let hashes = text.rfind("####").map(|p| Segment { text: line_after(text, p + 4), source: Source::Hashes });
    let answer_is = rfind_ascii_ci(text, ANSWER_IS).map(|p| {
        let rest = line_after(text, p + ANSWER_IS.len());
        Segment { text: rest.trim_start_matches([':', ' ']), source: Source::AnswerIs }
    });
    let boxed = last_boxed(text).map(|b| Segment { text: b, source: Source::Boxed });
    [hashes, answer_is, boxed].into_iter().flatten()
}

/// The final numeric answer: the first number of the first segment that has one, else the last number in the text.
pub fn numeric_answer(text: &str) -> Option<NumericAnswer> {
    for seg in segments(text) {
        if let Some(value) = number::first_number(&delatex(seg.text)) {
            return Some(NumericAnswer { value, source: seg.source });
        }
    }
    let value = number::last_number(&delatex_if_cheap(text))?;
    Some(NumericAnswer { value, source: Source::LastNumber })
}

/// Whole texts are only de-LaTeXed when they contain `\frac` (the common case in MATH-style answers); other
/// backslashes do not change which numbers the scanner sees.
fn delatex_if_cheap(text: &str) -> Cow<'_, str> {
    if text.contains("frac") || text.contains("{,}") {
        delatex(text)
    } else {
        Cow::Borrowed(text)
    }
}

/// The content of the last `\boxed{…}` (or `\fbox{…}`, or `\boxed N`).
pub fn last_boxed(text: &str) -> Option<&str> {
    let (p, len) = match (text.rfind("\\boxed"), text.rfind("\\fbox")) {
        (Some(a), Some(b)) if b > a => (b, 5),
        (Some(a), _) => (a, 6),
        (None, Some(b)) => (b, 5),
        (None, None) => return None,
    };
    let after = p + len;
    if let Some((inner, _)) = braced(text, after) {
        return Some(inner);
    }
    // `\boxed 5` (no braces): up to the next whitespace or `$`.
    let rest = text[after..].strip_prefix(' ')?;
    let end = rest.find(|c: char| c.is_whitespace() || c == '$').unwrap_or(rest.len());
    Some(&rest[..end])
}

fn line_after(text: &str, from: usize) -> &str {
    let rest = &text[from..];
    rest.split('\n').next().unwrap_or("").trim()
}

/// Last position of an ASCII needle (lower-case) in `hay`, ignoring ASCII case, without allocating.
pub(crate) fn rfind_ascii_ci(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len()).rev().find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Normalise a non-numeric answer for string comparison: de-LaTeX, drop `$`, spaces, trailing `.`, lower-case.
pub fn normalize_text_answer(text: &str) -> String {
    let t = delatex(text);
    let mut out: String = t.chars().filter(|c| !c.is_whitespace() && *c != '$').collect();
    while out.ends_with('.') {
        out.pop();
    }
    out.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Option<(f64, Source)> {
        numeric_answer(text).map(|a| (a.value, a.source))
    }

    #[test]
    fn markers_are_trusted_in_refts_order() {
        assert_eq!(value("3 + 4 = 7 apples\n#### 7"), Some((7.0, Source::Hashes)));
        assert_eq!(value("so 12 left. Therefore, the answer is: 1,200"), Some((1200.0, Source::AnswerIs)));
        assert_eq!(value("The answer is $18."), Some((18.0, Source::AnswerIs)));
        assert_eq!(value("we get \\boxed{\\frac{3}{4}} in total 9"), Some((0.75, Source::Boxed)));
        assert_eq!(value("she has 5 apples and eats 2, so 3 remain"), Some((3.0, Source::LastNumber)));
        assert_eq!(value("no numbers here"), None);
        assert_eq!(value("#### -42"), Some((-42.0, Source::Hashes)));
        assert_eq!(value("THE ANSWER IS 50%"), Some((50.0, Source::AnswerIs)));
        assert_eq!(value("the answer is below\n12"), Some((12.0, Source::LastNumber)));
    }

    #[test]
    fn boxed_handles_nesting_and_bare_form() {
        assert_eq!(last_boxed("\\boxed{\\frac{1}{2}}"), Some("\\frac{1}{2}"));
        assert_eq!(last_boxed("\\boxed 5$"), Some("5"));
        assert_eq!(last_boxed("\\boxed{1} then \\boxed{2}"), Some("2"));
        assert_eq!(last_boxed("\\boxed{unclosed"), None);
    }

    #[test]
    fn text_answers_normalise() {
        assert_eq!(normalize_text_answer(" $x^2 + 1$. "), "x^2+1");
        assert_eq!(normalize_text_answer("\\text{Monday}"), "monday");
    }
}
