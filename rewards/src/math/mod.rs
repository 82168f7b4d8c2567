//! Math answer rewards (ReFT §5.1): exact match within an absolute tolerance of 1e-2, partial credit 0.1 when an
//! answer can be extracted but is wrong, 0 when nothing can be extracted; MathQA-style multiple choice.

pub mod extract;
pub mod number;

use serde::{Deserialize, Serialize};

use crate::outcome::component::{CORRECT, EXTRACTABLE};
use crate::{Outcome, Reward, Task};

/// ReFT's tolerance: `|pred - gold| <= 1e-2`.
pub const DEFAULT_TOLERANCE: f64 = 1e-2;
/// ReFT's partial reward for an extractable but wrong answer.
pub const DEFAULT_PARTIAL_CREDIT: f64 = 0.1;

/// Settings of [`MathReward`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MathConfig {
    /// Absolute tolerance for numeric answers. Default [`DEFAULT_TOLERANCE`] (1e-2).
    pub tolerance: f64,
    /// Score of an extractable but wrong answer. Default [`DEFAULT_PARTIAL_CREDIT`] (0.1); set 0 to disable.
    pub partial_credit: f64,
    /// Compare non-numeric answers (`x^2+1`, `Monday`) as normalised strings. Default false (GSM8K/SVAMP are
    /// numeric); the `math` preset turns it on.
    pub text_answers: bool,
}

impl Default for MathConfig {
    fn default() -> Self {
        MathConfig { tolerance: DEFAULT_TOLERANCE, partial_credit: DEFAULT_PARTIAL_CREDIT, text_answers: false }
    }
}

/// Numeric (and optionally textual) final-answer reward. The reference answer may itself be a worked solution
/// (GSM8K's `… #### 72`): it goes through the same extraction as the completion.
#[derive(Debug, Clone, Default)]
pub struct MathReward {
    config: MathConfig,
}

impl MathReward {
    /// A math reward with these settings.
    pub fn new(config: MathConfig) -> Self {
        MathReward { config }
    }

    /// The settings.
    pub fn config(&self) -> &MathConfig {
        &self.config
    }

    /// Score an already-extracted numeric answer (program-of-thought results) against the task.
    pub(crate) fn score_value(&self, task: &Task, value: Option<f64>, shown: Option<&str>) -> Outcome {
        let gold = match gold_number(task) {
            Ok(g) => g,
            Err(e) => return Outcome::task_error(e),
        };
        let shown = shown.map(str::to_string).or_else(|| value.map(format_number));
        grade(&self.config, value.map(|v| (v - gold).abs() <= self.config.tolerance), shown, || {
            format!("expected {}", format_number(gold))
        })
    }
}

fn gold_number(task: &Task) -> Result<f64, String> {
    let gold = task.require_answer()?;
    extract::numeric_answer(gold)
        .map(|a| a.value)
        .ok_or_else(|| format!("reference answer `{}` holds no number", truncate(gold, 80)))
}

/// Shared grading: `correct` = None means nothing was extractable.
fn grade(config: &MathConfig, correct: Option<bool>, shown: Option<String>, expected: impl Fn() -> String) -> Outcome {
    match (correct, shown) {
        (Some(true), Some(shown)) => {
            Outcome::new(1.0).with_component(CORRECT, 1.0).with_component(EXTRACTABLE, 1.0).with_extracted(shown)
        }
        (Some(_), Some(shown)) => {
            let failure = format!("wrong answer: got {shown}, {}", expected());
            Outcome::new(config.partial_credit)
                .with_component(CORRECT, 0.0)
                .with_component(EXTRACTABLE, 1.0)
                .with_extracted(shown)
                .with_failure(failure)
        }
        _ => Outcome::new(0.0)
            .with_component(CORRECT, 0.0)
            .with_component(EXTRACTABLE, 0.0)
            .with_failure("no answer could be extracted from the completion"),
    }
}

impl Reward for MathReward {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        let gold_text = match task.require_answer() {
            Ok(g) => g,
            Err(e) => return Outcome::task_error(e),
        };
        let gold =
            extract::numeric_answer(gold_text).filter(|_| !self.config.text_answers || is_plain_number(gold_text));
        let pred = extract::numeric_answer(completion);
        match (gold, pred) {
            (Some(g), pred) if !self.config.text_answers || pred.is_some() => {
                let shown = pred.map(|p| format_number(p.value));
                grade(&self.config, pred.map(|p| (p.value - g.value).abs() <= self.config.tolerance), shown, || {
                    format!("expected {}", format_number(g.value))
                })
            }
            (None, _) if !self.config.text_answers => {
                Outcome::task_error(format!("reference answer `{}` holds no number", truncate(gold_text, 80)))
            }
            _ => {
                // Textual comparison on the first answer segment of each side (or the whole reference).
                let gold_seg = extract::segments(gold_text).next().map_or(gold_text, |s| s.text);
                let gold_norm = extract::normalize_text_answer(gold_seg);
                let pred_seg = extract::segments(completion).next().map(|s| s.text);
                let shown = pred_seg.map(|s| s.trim().to_string());
                let correct = pred_seg.map(|p| extract::normalize_text_answer(p) == gold_norm);
                grade(&self.config, correct, shown, || format!("expected {}", gold_seg.trim()))
            }
        }
    }
}

/// Whether the reference's answer segment (or the whole reference) is one number and nothing else but currency,
/// `%` and punctuation, so that a textual answer like `x^2+1` is not mistaken for the number 2.
fn is_plain_number(gold: &str) -> bool {
    let seg = extract::segments(gold).next().map_or(gold, |s| s.text);
    let plain = number::delatex(seg);
    let trimmed = plain.trim().trim_start_matches(['$', '€', '£']).trim_end_matches(['%', '.', ' ']);
    let mut found = number::numbers(trimmed);
    match (found.next(), found.next()) {
        (Some(f), None) => f.start == 0 && f.end == trimmed.len(),
        _ => false,
    }
}

/// Multiple-choice reward (MathQA): the reference `answer` is an option letter (`a`–`e`); the completion's answer is
/// a letter (`(b)`, `b )`, `B.`) or a value that matches exactly one option's value. 1 if right, partial credit if a
/// choice was extracted but is wrong, 0 if none.
#[derive(Debug, Clone, Default)]
pub struct MultipleChoiceReward {
    config: MathConfig,
}

impl MultipleChoiceReward {
    /// A multiple-choice reward (uses `tolerance` to match values to options, and `partial_credit`).
    pub fn new(config: MathConfig) -> Self {
        MultipleChoiceReward { config }
    }
}

impl Reward for MultipleChoiceReward {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        let gold = match task.require_answer() {
            Ok(g) => g,
            Err(e) => return Outcome::task_error(e),
        };
        let Some(gold_letter) = option_letter(gold).or_else(|| letter_for_value(task, gold, self.config.tolerance))
        else {
            return Outcome::task_error(format!("reference answer `{}` is not an option letter", truncate(gold, 40)));
        };
        let pred = extract::segments(completion)
            .find_map(|s| option_letter(s.text).or_else(|| letter_for_value(task, s.text, self.config.tolerance)))
            .or_else(|| last_parenthesised_letter(completion));
        let shown = pred.map(|c| c.to_string());
        grade(&self.config, pred.map(|p| p == gold_letter), shown, || format!("expected {gold_letter}"))
    }
}

/// A leading option letter: `b`, `(b)`, `b )`, `B.`, `b:` — one letter a–e standing alone.
fn option_letter(text: &str) -> Option<char> {
    let t = text.trim().trim_start_matches(['(', '[', '\'', '"', ' ']);
    let mut chars = t.chars();
    let c = chars.next()?.to_ascii_lowercase();
    if !('a'..='e').contains(&c) {
        return None;
    }
    match chars.next() {
        None => Some(c),
        Some(')' | ']' | '.' | ':' | ',' | ' ' | '\'' | '"') => Some(c),
        _ => None,
    }
}

fn letter_for_value(task: &Task, text: &str, tol: f64) -> Option<char> {
    let v = number::first_number(&number::delatex(text))?;
    let mut hits = task.choices.iter().filter_map(|opt| {
        let letter = option_letter(opt)?;
        let value_text = opt.split_once(')').map_or(opt.as_str(), |(_, v)| v);
        let ov = number::first_number(value_text)?;
        ((ov - v).abs() <= tol).then_some(letter)
    });
    let first = hits.next()?;
    hits.next().is_none().then_some(first)
}

fn last_parenthesised_letter(text: &str) -> Option<char> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(2)).rev().find_map(|i| {
        let c = b[i + 1].to_ascii_lowercase();
        (b[i] == b'(' && b[i + 2] == b')' && (b'a'..=b'e').contains(&c)).then_some(c as char)
    })
}

/// `18` for integral values, else the shortest round-trip decimal.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(gold: &str, completion: &str) -> f64 {
        MathReward::default().score(&Task::default().with_answer(gold), completion).score
    }

    #[test]
    fn reft_scores_one_partial_and_zero() {
        assert_eq!(score("#### 72", "48 + 24 = 72\n#### 72"), 1.0);
        assert_eq!(score("72", "The answer is 72.004"), 1.0);
        assert_eq!(score("72", "The answer is 72.02"), DEFAULT_PARTIAL_CREDIT);
        assert_eq!(score("72", "I don't know"), 0.0);
        assert_eq!(score("1200", "Therefore, the answer is: $1,200.00"), 1.0);
        assert_eq!(score("0.75", "\\boxed{\\frac{3}{4}}"), 1.0);
        assert_eq!(score("-3", "it drops by −3"), 1.0);
    }

    #[test]
    fn missing_or_unreadable_reference_is_a_task_error() {
        let o = MathReward::default().score(&Task::default(), "#### 5");
        assert!(o.error.as_deref().is_some_and(|e| e.contains("answer")));
        let o = MathReward::default().score(&Task::default().with_answer("banana"), "#### 5");
        assert!(o.error.is_some());
    }

    #[test]
    fn outcome_names_what_was_extracted_and_why_it_failed() {
        let o = MathReward::default().score(&Task::default().with_answer("10"), "#### 12");
        assert_eq!(o.extracted.as_deref(), Some("12"));
        assert_eq!(o.failure.as_deref(), Some("wrong answer: got 12, expected 10"));
        assert_eq!(o.components.get(CORRECT), Some(&0.0));
        assert_eq!(o.components.get(EXTRACTABLE), Some(&1.0));
    }

    #[test]
    fn text_answers_compare_normalised_strings() {
        let r = MathReward::new(MathConfig { text_answers: true, ..Default::default() });
        let t = Task::default().with_answer("\\boxed{x^2+1}");
        assert_eq!(r.score(&t, "so \\boxed{x^2 + 1}").score, 1.0);
        assert_eq!(r.score(&t, "so \\boxed{x^3}").score, DEFAULT_PARTIAL_CREDIT);
        assert_eq!(r.score(&Task::default().with_answer("5"), "\\boxed{5.0}").score, 1.0);
    }

    #[test]
    fn multiple_choice_reads_letters_and_values() {
        let r = MultipleChoiceReward::default();
        let t = Task::default().with_answer("b").with_choices(["a ) 38", "b ) 27.675", "c ) 30"]);
        assert_eq!(r.score(&t, "The answer is (b)").score, 1.0);
        assert_eq!(r.score(&t, "The answer is B.").score, 1.0);
        assert_eq!(r.score(&t, "The answer is 27.675").score, 1.0);
        assert_eq!(r.score(&t, "so we pick (c) at the end").score, DEFAULT_PARTIAL_CREDIT);
        assert_eq!(r.score(&t, "no idea").score, 0.0);
        assert_eq!(r.score(&t, "The answer is b ) 27.675").score, 1.0);
    }
}
