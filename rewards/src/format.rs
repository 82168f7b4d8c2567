//! Format rewards: a regex that must match the whole completion (Visual-RFT, Think2SQL, ToolRL-style), or
//! Think2SQL's tag count (a share of credit per tag marker that appears exactly once).

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::outcome::component::FORMAT;
use crate::{Outcome, Reward, Task};

/// Visual-RFT's / Think2SQL's format: `<think>…</think>` then `<answer>…</answer>`, nothing else.
pub const DEFAULT_PATTERN: &str = r"<think>.*?</think>\s*<answer>.*?</answer>";

/// Settings of [`FormatReward`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FormatConfig {
    /// Regex that must match the whole completion (`.` matches newlines, like Python's `re.fullmatch(p, s,
    /// re.DOTALL)`). Default [`DEFAULT_PATTERN`].
    pub pattern: String,
    /// When non-empty, score by tag count instead: each of `<tag>` and `</tag>` for every tag listed earns an
    /// equal share when it appears exactly once (Think2SQL's tag-count reward: 0.25 each for `think`, `answer`).
    /// Default empty.
    pub tags: Vec<String>,
}

impl Default for FormatConfig {
    fn default() -> Self {
        FormatConfig { pattern: DEFAULT_PATTERN.to_string(), tags: Vec::new() }
    }
}

/// 1 if the completion has the required format, else 0 (or the tag-count share).
#[derive(Debug, Clone)]
pub struct FormatReward {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Regex(Regex),
    Tags(Vec<String>),
}

impl FormatReward {
    /// Build from settings; a bad regex is an error here, once.
    pub fn new(config: &FormatConfig) -> Result<Self> {
        if !config.tags.is_empty() {
            let markers = config.tags.iter().flat_map(|t| [format!("<{t}>"), format!("</{t}>")]).collect();
            return Ok(FormatReward { kind: Kind::Tags(markers) });
        }
        Ok(FormatReward { kind: Kind::Regex(full_match(&config.pattern)?) })
    }
}

/// Compile `pattern` so that it must match the whole text, with `.` matching newlines.
pub(crate) fn full_match(pattern: &str) -> Result<Regex> {
    Regex::new(&format!(r"\A(?s:{pattern})\z"))
        .map_err(|e| Error::InvalidConfig(format!("format pattern `{pattern}`: {e}")))
}

impl Reward for FormatReward {
    fn score(&self, _task: &Task, completion: &str) -> Outcome {
        match &self.kind {
            Kind::Regex(re) => {
                if re.is_match(completion) {
                    Outcome::new(1.0).with_component(FORMAT, 1.0)
                } else {
                    Outcome::new(0.0).with_component(FORMAT, 0.0).with_failure("completion does not match the format")
                }
            }
            Kind::Tags(markers) => {
                let once: Vec<&String> =
                    markers.iter().filter(|m| completion.matches(m.as_str()).count() == 1).collect();
                let score = once.len() as f64 / markers.len() as f64;
                let mut o = Outcome::new(score).with_component(FORMAT, score);
                if once.len() < markers.len() {
                    let missing: Vec<&str> = markers.iter().filter(|m| !once.contains(m)).map(String::as_str).collect();
                    o = o.with_failure(format!("not exactly once: {}", missing.join(" ")));
                }
                o
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pattern_is_a_full_match_across_lines() -> anyhow::Result<()> {
        let r = FormatReward::new(&FormatConfig::default())?;
        let t = Task::default();
        assert_eq!(r.score(&t, "<think>a\nb</think>\n<answer>42</answer>").score, 1.0);
        assert_eq!(r.score(&t, "<think>a</think><answer>42</answer> trailing").score, 0.0);
        assert_eq!(r.score(&t, "<answer>42</answer>").score, 0.0);
        Ok(())
    }

    #[test]
    fn tag_count_gives_a_quarter_per_marker() -> anyhow::Result<()> {
        let r = FormatReward::new(&FormatConfig { tags: vec!["think".into(), "answer".into()], ..Default::default() })?;
        let t = Task::default();
        assert_eq!(r.score(&t, "<think>x</think><answer>y</answer>").score, 1.0);
        assert_eq!(r.score(&t, "<think>x</think> y").score, 0.5);
        assert_eq!(r.score(&t, "<think><think>x</think><answer>").score, 0.5);
        Ok(())
    }

    #[test]
    fn bad_regex_is_rejected_at_construction() {
        assert!(FormatReward::new(&FormatConfig { pattern: "(".into(), ..Default::default() }).is_err());
    }
}
