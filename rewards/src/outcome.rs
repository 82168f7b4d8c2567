//! [`Outcome`]: what a reward says about one completion.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Stable component names shared by several rewards (metric keys are stable and namespaced, see STYLE.md).
pub mod component {
    /// 1 when the answer / result / call matches the reference, else 0.
    pub const CORRECT: &str = "correct";
    /// 1 when an answer could be extracted from the completion, else 0 (ReFT's partial-credit condition).
    pub const EXTRACTABLE: &str = "extractable";
    /// Format reward (tags / regex).
    pub const FORMAT: &str = "format";
}

/// The start of the `error` of an outcome the reward does not apply to.
pub const NOT_APPLICABLE: &str = "not applicable";

/// The result of scoring one completion against one task.
///
/// Serialised as one JSON object (`orchard reward` prints it per row, the datasets crate stores `score` and
/// `components`). Fields are always present in JSON (`null` when absent) so that downstream schemas are stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct Outcome {
    /// The scalar reward.
    pub score: f64,
    /// Named parts of the score (e.g. `format`, `correct`, `ex`, `cell_precision`); composites prefix them with the
    /// term name (`sql/ex`).
    #[serde(default)]
    pub components: BTreeMap<String, f64>,
    /// What was extracted from the completion (the final answer, the SQL, the tool calls ...), if anything.
    #[serde(default)]
    pub extracted: Option<String>,
    /// Why the completion did not get full marks (wrong answer, failing assertion, bad format ...).
    #[serde(default)]
    pub failure: Option<String>,
    /// Set when the *task* could not be scored at all (missing reference field, missing database, sandbox could not
    /// start). Such outcomes carry score 0 but should be dropped, not learned from.
    #[serde(default)]
    pub error: Option<String>,
}

impl Outcome {
    /// An outcome with this score and nothing else.
    pub fn new(score: f64) -> Self {
        Outcome { score, ..Default::default() }
    }

    /// A task that cannot be scored: score 0 and `error` set.
    pub fn task_error(why: impl Into<String>) -> Self {
        Outcome { error: Some(why.into()), ..Default::default() }
    }

    /// A row the reward does not apply to (a Python reward returned `None`): not scored, like a task error, but a
    /// weighted composite skips the term instead of failing the row (TRL's `nansum`).
    pub fn not_applicable(why: impl std::fmt::Display) -> Self {
        Outcome::task_error(format!("{NOT_APPLICABLE}: {why}"))
    }

    /// Whether this is a [`not_applicable`](Self::not_applicable) outcome.
    pub fn is_not_applicable(&self) -> bool {
        self.error.as_deref().is_some_and(|e| e.starts_with(NOT_APPLICABLE))
    }

    /// Add a named component.
    pub fn with_component(mut self, name: impl Into<String>, value: f64) -> Self {
        self.components.insert(name.into(), value);
        self
    }

    /// Record what was extracted.
    pub fn with_extracted(mut self, extracted: impl Into<String>) -> Self {
        self.extracted = Some(extracted.into());
        self
    }

    /// Record why the completion lost points.
    pub fn with_failure(mut self, failure: impl Into<String>) -> Self {
        self.failure = Some(failure.into());
        self
    }

    /// Whether the task could be scored (no `error`).
    pub fn is_scored(&self) -> bool {
        self.error.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_round_trips_through_json_with_all_keys_present() -> anyhow::Result<()> {
        let o = Outcome::new(0.5).with_component("format", 1.0).with_failure("wrong");
        let text = serde_json::to_string(&o)?;
        for key in ["score", "components", "extracted", "failure", "error"] {
            assert!(text.contains(&format!("\"{key}\"")), "{key} missing in {text}");
        }
        let back: Outcome = serde_json::from_str(&text)?;
        assert_eq!(back, o);
        Ok(())
    }
}
