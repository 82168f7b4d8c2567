//! [`Task`]: what a completion is scored against.
//!
//! One flat struct serves every reward, so that composites (e.g. SQL execution + format) score one task with
//! several rewards and one JSONL row format serves `orchard reward --kind …`. Each reward reads the fields it needs
//! and reports a missing one as a task error (`Outcome::error`), naming the field.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// The reference side of a scoring call. Build with [`Task::new`] and the `with_*` setters, or deserialise from a
/// JSON/TOML object (unknown fields are ignored, so dataset rows can be fed directly).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Task {
    /// The prompt the completion answers (alias `question`). Used by unit-test rewards (HumanEval prompts hold the
    /// function signature) and kept for context elsewhere.
    #[serde(default, alias = "question")]
    pub prompt: String,
    /// Reference answers: a number or string (math, multiple choice), the gold output text (ToolRL), or several
    /// acceptable answers (Tool-Star F1 takes the best). JSON accepts a string, a number or a list of them.
    #[serde(default, deserialize_with = "de_answers", skip_serializing_if = "Vec::is_empty")]
    pub answer: Vec<String>,
    /// Multiple-choice options (alias `options`): MathQA's `"a ) 38 , b ) 27.675 , …"` or a list of strings.
    #[serde(default, alias = "options", deserialize_with = "de_choices", skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// Unit tests (alias `test`): Python source defining `check(candidate)` (HumanEval) or plain asserts.
    #[serde(default, alias = "test", skip_serializing_if = "Option::is_none")]
    pub tests: Option<String>,
    /// The function the tests call through `check(entry_point)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<String>,
    /// Gold SQL (alias `gold_sql`).
    #[serde(default, alias = "gold_sql", skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// SQLite database the SQL runs against (alias `db_path`). Relative paths are resolved by the caller.
    #[serde(default, alias = "db_path", skip_serializing_if = "Option::is_none")]
    pub db: Option<PathBuf>,
    /// Ground-truth boxes `[x1, y1, x2, y2]` (Visual-RFT detection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boxes: Option<Vec<[f64; 4]>>,
    /// Every other column of the source row (passed to Python rewards as keyword columns, as TRL passes dataset
    /// columns to its reward functions).
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Task {
    /// A task with this prompt and nothing else.
    pub fn new(prompt: impl Into<String>) -> Self {
        Task { prompt: prompt.into(), ..Default::default() }
    }

    /// Set the single reference answer.
    pub fn with_answer(mut self, answer: impl Into<String>) -> Self {
        self.answer = vec![answer.into()];
        self
    }

    /// Set several acceptable reference answers.
    pub fn with_answers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, answers: I) -> Self {
        self.answer = answers.into_iter().map(Into::into).collect();
        self
    }

    /// Set multiple-choice options (`"a ) 38"` …).
    pub fn with_choices<I: IntoIterator<Item = S>, S: Into<String>>(mut self, choices: I) -> Self {
        self.choices = choices.into_iter().map(Into::into).collect();
        self
    }

    /// Set unit tests and the entry point they check.
    pub fn with_tests(mut self, tests: impl Into<String>, entry_point: Option<String>) -> Self {
        self.tests = Some(tests.into());
        self.entry_point = entry_point;
        self
    }

    /// Set gold SQL and its database.
    pub fn with_sql(mut self, sql: impl Into<String>, db: impl Into<PathBuf>) -> Self {
        self.sql = Some(sql.into());
        self.db = Some(db.into());
        self
    }

    /// Add an extra column (see [`Task::extra`]).
    pub fn with_column(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.extra.insert(name.into(), value);
        self
    }

    /// Set ground-truth boxes.
    pub fn with_boxes(mut self, boxes: Vec<[f64; 4]>) -> Self {
        self.boxes = Some(boxes);
        self
    }

    /// The first reference answer, if any.
    pub fn answer(&self) -> Option<&str> {
        self.answer.first().map(String::as_str)
    }

    /// The first reference answer or a task-error message naming the missing field.
    pub(crate) fn require_answer(&self) -> Result<&str, String> {
        self.answer().ok_or_else(|| "task has no reference `answer`".to_string())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Scalar),
    Many(Vec<Scalar>),
    Null(()),
}

fn de_answers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s.into_string()],
        OneOrMany::Many(v) => v.into_iter().map(Scalar::into_string).collect(),
        OneOrMany::Null(()) => Vec::new(),
    })
}

fn de_choices<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => split_mathqa_options(&s.into_string()),
        OneOrMany::Many(v) => v.into_iter().map(Scalar::into_string).collect(),
        OneOrMany::Null(()) => Vec::new(),
    })
}

/// Split MathQA's option string `"a ) 38 , b ) 27.675 , c ) 30"` into `["a ) 38", "b ) 27.675", "c ) 30"]`.
/// Splits only at `, x )` boundaries so that values with commas (`1,200`) survive.
pub fn split_mathqa_options(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    for i in 0..bytes.len() {
        let at_boundary = i == 0 || matches!(bytes[i - 1], b',' | b' ' | b'[' | b'\'');
        if at_boundary && bytes[i].is_ascii_alphabetic() {
            let rest = text[i + 1..].trim_start();
            let before = text[..i].trim_end_matches([' ', '\'', '"']);
            if rest.starts_with(')') && (before.is_empty() || before.ends_with(',') || before.ends_with('[')) {
                starts.push(i);
            }
        }
    }
    if starts.is_empty() {
        return vec![text.trim().to_string()];
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(text.len());
        let piece = text[s..end].trim().trim_end_matches([',', ']', ' ', '\'', '"']).trim();
        out.push(piece.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_accepts_numbers_strings_and_lists() -> anyhow::Result<()> {
        let t: Task = serde_json::from_str(r#"{"question": "q", "answer": 18.5}"#)?;
        assert_eq!(t.answer(), Some("18.5"));
        assert_eq!(t.prompt, "q");
        let t: Task = serde_json::from_str(r#"{"answer": ["Paris", "paris, france"]}"#)?;
        assert_eq!(t.answer.len(), 2);
        let t: Task = serde_json::from_str(r#"{"answer": null, "unknown_field": 1}"#)?;
        assert!(t.answer.is_empty());
        assert_eq!(t.extra.get("unknown_field"), Some(&serde_json::json!(1)));
        let t: Task = serde_json::from_str(r#"{"question": "q", "test": "assert 1", "level": "easy"}"#)?;
        assert_eq!((t.prompt.as_str(), t.tests.as_deref()), ("q", Some("assert 1")));
        assert_eq!(t.extra.keys().collect::<Vec<_>>(), ["level"], "aliases are fields, not extra columns");
        Ok(())
    }

    #[test]
    fn mathqa_options_split_at_letter_boundaries_only() {
        let o = split_mathqa_options("a ) 38 , b ) 27.675 , c ) 1,200 , d ) 36 , e ) 40");
        assert_eq!(o, vec!["a ) 38", "b ) 27.675", "c ) 1,200", "d ) 36", "e ) 40"]);
        let o = split_mathqa_options("['a ) rs . 400', 'b ) rs . 300']");
        assert_eq!(o.len(), 2);
        assert!(o[0].starts_with("a )"));
    }
}
