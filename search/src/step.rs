//! [`StepRule`]: where a step ends.
//!
//! MCTS grows a solution one step at a time. A step ends at a delimiter: after a line (`newline`), before the next
//! `Step k:`-style marker (`marker:Step `), after a stop string (`stop:STR`), or after a token budget
//! (`tokens:N`). The rule gives the sampler the stop strings to halt at ([`StepRule::stop_strings`]) and finds the
//! boundary in the generated text ([`StepRule::boundary`]); [`cut`] turns that into a number of tokens to keep, so
//! that a node's text is always the decoding of its tokens and a path's steps concatenate to the solution.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Default step rule: one line per step.
pub const DEFAULT_STEP_RULE: StepRule = StepRule::Newline;

/// Where a step ends. Text form (flags, TOML): `newline`, `marker:Step `, `stop:STR`, `tokens:N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StepRule {
    /// After a line with content (the newline run that ends it is kept in the step).
    Newline,
    /// Before the next line that starts with the marker (`Step ` for "Step 1: … Step 2: …" solutions).
    Marker(String),
    /// After the first occurrence of this string following some content.
    Stop(String),
    /// After this many tokens.
    Tokens(usize),
}

impl StepRule {
    /// Strings a sampler may stop at: generating past them is wasted, the boundary is at or before them.
    pub fn stop_strings(&self) -> Vec<String> {
        match self {
            StepRule::Newline => vec!["\n".into()],
            StepRule::Marker(m) => vec![format!("\n{m}")],
            StepRule::Stop(s) => vec![s.clone()],
            StepRule::Tokens(_) => Vec::new(),
        }
    }

    /// The token budget of one step, if the rule is one.
    pub fn token_budget(&self) -> Option<usize> {
        match self {
            StepRule::Tokens(n) => Some(*n),
            _ => None,
        }
    }

    /// The byte offset where the step in `text` ends, if its delimiter is in `text`. A delimiter before any
    /// non-whitespace content does not count (a step is never empty).
    pub fn boundary(&self, text: &str) -> Option<usize> {
        let content = text.find(|c: char| !c.is_whitespace())?;
        match self {
            StepRule::Newline => {
                let nl = content + text[content..].find('\n')?;
                let run = text[nl..].find(|c: char| c != '\n').unwrap_or(text.len() - nl);
                Some(nl + run)
            }
            StepRule::Marker(m) => {
                let needle = format!("\n{m}");
                text[content..].find(&needle).map(|at| content + at + 1)
            }
            StepRule::Stop(s) if !s.is_empty() => text[content..].find(s.as_str()).map(|at| content + at + s.len()),
            StepRule::Stop(_) | StepRule::Tokens(_) => None,
        }
    }
}

impl fmt::Display for StepRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepRule::Newline => f.write_str("newline"),
            StepRule::Marker(m) => write!(f, "marker:{m}"),
            StepRule::Stop(s) => write!(f, "stop:{s}"),
            StepRule::Tokens(n) => write!(f, "tokens:{n}"),
        }
    }
}

impl FromStr for StepRule {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Config(format!("step rule {s:?}: expected newline, marker:TEXT, stop:TEXT or tokens:N"));
        match s.split_once(':') {
            None if s == "newline" => Ok(StepRule::Newline),
            Some(("marker", m)) if !m.is_empty() => Ok(StepRule::Marker(m.to_string())),
            Some(("stop", t)) if !t.is_empty() => Ok(StepRule::Stop(t.replace("\\n", "\n"))),
            Some(("tokens", n)) => n.parse().ok().filter(|&n| n > 0).map(StepRule::Tokens).ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for StepRule {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<StepRule> for String {
    fn from(r: StepRule) -> String {
        r.to_string()
    }
}

/// How many of `n` generated tokens to keep so the step ends at `rule`'s boundary: the fewest whose text reaches
/// the boundary. `text_of(k)` is the decoding of the first `k` tokens. Returns `n` when the boundary is not in the
/// text (the step ended for another reason) and never less than 1 when `n > 0`.
pub fn cut(rule: &StepRule, n: usize, text_of: impl Fn(usize) -> String) -> usize {
    if let Some(budget) = rule.token_budget() {
        return n.min(budget);
    }
    let Some(boundary) = rule.boundary(&text_of(n)) else {
        return n;
    };
    // Binary search for the fewest tokens whose text reaches the boundary (text length grows with k).
    let (mut lo, mut hi) = (1, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if text_of(mid).len() >= boundary {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo.min(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_steps_keep_their_newline_run_and_skip_leading_blank_lines() {
        let r = StepRule::Newline;
        assert_eq!(r.boundary("a = 1\n\nb"), Some(7));
        assert_eq!(r.boundary("\n\nx = 2\ny"), Some(8));
        assert_eq!(r.boundary("no newline"), None);
        assert_eq!(r.boundary("\n\n"), None);
    }

    #[test]
    fn marker_steps_end_before_the_next_marker_line() {
        let r: StepRule = "marker:Step ".parse().expect("rule");
        let text = "Step 1: 3*4 = 12.\nStep 2: 2+12";
        assert_eq!(r.boundary(text), Some(18));
        assert_eq!(&text[..18], "Step 1: 3*4 = 12.\n");
        assert_eq!(r.stop_strings(), vec!["\nStep ".to_string()]);
    }

    #[test]
    fn cut_keeps_the_fewest_tokens_reaching_the_boundary() {
        // Tokens: "a", " =", " 1", "\n", "b", ...
        let pieces = ["a", " =", " 1", "\n", "b", " =", " 2"];
        let text_of = |k: usize| pieces[..k].concat();
        assert_eq!(cut(&StepRule::Newline, pieces.len(), text_of), 4);
        assert_eq!(cut(&StepRule::Tokens(2), pieces.len(), text_of), 2);
        assert_eq!(cut(&StepRule::Stop("=".into()), pieces.len(), text_of), 2);
        assert_eq!(cut(&StepRule::Newline, 3, text_of), 3);
    }

    #[test]
    fn rules_round_trip_through_text() {
        for s in ["newline", "marker:Step ", "stop:;", "tokens:32"] {
            let r: StepRule = s.parse().expect("parses");
            assert_eq!(r.to_string(), s);
        }
        assert!("tokens:0".parse::<StepRule>().is_err());
        assert!("lines".parse::<StepRule>().is_err());
    }
}
