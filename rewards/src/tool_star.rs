//! Tool-Star's hierarchical reward (arXiv 2505.16410; `docs/ALGORITHMS.md`, Rewards):
//!
//! * format invalid (unpaired `<think>`, no `<answer>…</answer>`, a `<search>`/`<python>` call that is unclosed,
//!   nested, or not followed by its `<result>…</result>`, or no `\boxed{}` in the answer) → **−1**;
//! * else `F1` = token F1 (SQuAD normalisation: lower-case, no punctuation, no articles) between the boxed answer
//!   and the best reference answer; if `F1 > 0` and both `</search>` and `</python>` were used → **F1 + 0.1**
//!   (multi-tool bonus); if `F1 > 0` → **F1**; else **0**.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::math::extract::last_boxed;
use crate::outcome::component::FORMAT;
use crate::{Outcome, Reward, Task};

/// Tool-Star's multi-tool bonus `r_M`.
pub const DEFAULT_MULTI_TOOL_BONUS: f64 = 0.1;

/// Component names.
pub mod component {
    /// Token F1 of the answer.
    pub const F1: &str = "f1";
    /// 1 when both search and python were used.
    pub const MULTI_TOOL: &str = "multi_tool";
}

/// Settings of [`ToolStarReward`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolStarConfig {
    /// Bonus for a right answer that used both tools. Default [`DEFAULT_MULTI_TOOL_BONUS`] (0.1).
    pub multi_tool_bonus: f64,
}

impl Default for ToolStarConfig {
    fn default() -> Self {
        ToolStarConfig { multi_tool_bonus: DEFAULT_MULTI_TOOL_BONUS }
    }
}

/// The Tool-Star reward; the reference `answer` holds one or more acceptable answers.
#[derive(Debug, Clone, Default)]
pub struct ToolStarReward {
    config: ToolStarConfig,
}

impl ToolStarReward {
    /// A Tool-Star reward with these settings.
    pub fn new(config: ToolStarConfig) -> Self {
        ToolStarReward { config }
    }
}

/// Check the tag structure; returns the answer block's content.
fn check_format(text: &str) -> Result<&str, String> {
    let opens = text.matches("<think>").count();
    if opens == 0 || opens != text.matches("</think>").count() {
        return Err("unpaired or missing <think>".into());
    }
    // Tool calls: each <search>/<python> closes before the next tag opens and is followed by <result>…</result>.
    let mut rest = text;
    while let Some((pos, tag)) = ["<search>", "<python>"].iter().filter_map(|t| rest.find(t).map(|p| (p, *t))).min() {
        let name = &tag[1..tag.len() - 1];
        let body_start = pos + tag.len();
        let close = format!("</{name}>");
        let end = rest[body_start..].find(&close).ok_or_else(|| format!("unclosed <{name}>"))? + body_start;
        let body = &rest[body_start..end];
        if body.contains("<search>") || body.contains("<python>") || body.contains("<result>") {
            return Err(format!("nested tags inside <{name}>"));
        }
        let after = rest[end + close.len()..].trim_start();
        let after = after.strip_prefix("<result>").ok_or_else(|| format!("<{name}> call without <result>"))?;
        let r_end = after.find("</result>").ok_or("unclosed <result>")?;
        rest = &after[r_end + "</result>".len()..];
    }
    if text.matches("</search>").count() != text.matches("<search>").count()
        || text.matches("</python>").count() != text.matches("<python>").count()
    {
        return Err("misnested <search>/<python> tags".into());
    }
    let start = text.rfind("<answer>").ok_or("no <answer>")? + "<answer>".len();
    let end = text[start..].find("</answer>").ok_or("unclosed <answer>")? + start;
    let answer = &text[start..end];
    if !answer.contains("\\boxed") {
        return Err("no \\boxed{} in the answer".into());
    }
    Ok(answer)
}

/// SQuAD answer normalisation: lower-case, punctuation removed, articles removed, whitespace collapsed.
pub fn normalize_answer(s: &str) -> Vec<String> {
    let lowered: String = s.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect();
    lowered.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).map(str::to_string).collect()
}

/// Token F1 between a prediction and a reference (after [`normalize_answer`]).
pub fn token_f1(pred: &str, gold: &str) -> f64 {
    let (p, g) = (normalize_answer(pred), normalize_answer(gold));
    if p.is_empty() || g.is_empty() {
        return f64::from(u8::from(p == g));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &p {
        if let Some(n) = counts.get_mut(t.as_str()).filter(|n| **n > 0) {
            *n -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let (precision, recall) = (same as f64 / p.len() as f64, same as f64 / g.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

impl Reward for ToolStarReward {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        if task.answer.is_empty() {
            return Outcome::task_error("task has no reference `answer`");
        }
        let answer = match check_format(completion) {
            Ok(a) => a,
            Err(why) => return Outcome::new(-1.0).with_component(FORMAT, 0.0).with_failure(format!("format: {why}")),
        };
        let boxed = last_boxed(answer).unwrap_or("").trim();
        let f1 = task.answer.iter().map(|g| token_f1(boxed, g)).fold(0.0, f64::max);
        let multi = completion.contains("</search>") && completion.contains("</python>");
        let score = match (f1 > 0.0, multi) {
            (true, true) => f1 + self.config.multi_tool_bonus,
            (true, false) => f1,
            (false, _) => 0.0,
        };
        let mut o = Outcome::new(score)
            .with_component(FORMAT, 1.0)
            .with_component(component::F1, f1)
            .with_component(component::MULTI_TOOL, f64::from(u8::from(multi)))
            .with_extracted(boxed);
        if f1 < 1.0 {
            o = o.with_failure(format!("answer F1 {f1:.3} against the reference"));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task::default().with_answers(["Barack Obama", "Obama"])
    }

    #[test]
    fn hierarchy_minus_one_zero_f1_and_bonus() {
        let r = ToolStarReward::default();
        let single = "<think>look up</think><search>44th president</search><result>Barack Obama</result>\
                      <think>ok</think><answer>\\boxed{Barack Obama}</answer>";
        assert_eq!(r.score(&task(), single).score, 1.0);
        let both = "<think>a</think><search>q</search><result>r</result><python>print(1)</python>\
                    <result>1</result><answer>\\boxed{the Obama}</answer>";
        assert_eq!(r.score(&task(), both).score, 1.0 + DEFAULT_MULTI_TOOL_BONUS);
        let wrong = "<think>a</think><answer>\\boxed{Lincoln}</answer>";
        assert_eq!(r.score(&task(), wrong).score, 0.0);
        let partial = "<think>a</think><answer>\\boxed{Michelle Obama}</answer>";
        assert!((r.score(&task(), partial).score - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn malformed_formats_score_minus_one() {
        let r = ToolStarReward::default();
        for bad in [
            "<answer>\\boxed{Obama}</answer>",
            "<think>a</think><answer>Obama</answer>",
            "<think>a</think><search>q</search><answer>\\boxed{Obama}</answer>",
            "<think>a</think><search>q<python>x</python></search><result>r</result><answer>\\boxed{Obama}</answer>",
            "<think>a<think></think><answer>\\boxed{Obama}</answer>",
        ] {
            assert_eq!(r.score(&task(), bad).score, -1.0, "{bad}");
        }
    }

    #[test]
    fn squad_f1() {
        assert_eq!(token_f1("The Eiffel Tower!", "eiffel tower"), 1.0);
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("paris", "london"), 0.0);
    }
}
