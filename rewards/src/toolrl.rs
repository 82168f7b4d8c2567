//! ToolRL's reward (arXiv 2504.13958; `docs/ALGORITHMS.md`, Rewards): `R = R_format + R_correct ∈ [−3, 4]`.
//!
//! * `R_format ∈ {0, 1}`: the completion fully matches the layout the reference has — `<think>…</think>` followed
//!   by `<tool_call>\n…\n</tool_call>` and/or `<response>…</response>` (or think only) — with exactly one of each
//!   tag.
//! * `R_correct ∈ [−3, 3]`, only when the reference has a tool call (else 0): tool calls are JSON objects, one per
//!   line, `{"name": …, "parameters": {…}}` (`arguments` is accepted for `parameters`). Identical call lists → 3.
//!   Otherwise `r_name` = Jaccard of the name multisets; for each reference call, the unused predicted call with
//!   the same name maximising `r_param + r_value` (Jaccard of parameter keys + number of reference parameters with
//!   equal values) is taken; `S = r_name + Σ best`, `S_max = 1 + Σ (1 + |params|)`, `R_correct = 6·S/S_max − 3`.
//!   A missing or unparsable `<tool_call>` block → −3.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::outcome::component::{CORRECT, FORMAT};
use crate::{Outcome, Reward, Task};

/// The ToolRL reward. The reference `answer` is the gold output text (with its tags).
#[derive(Debug, Clone, Copy, Default)]
pub struct ToolRlReward;

#[derive(Debug, Clone, PartialEq)]
struct Call {
    name: String,
    params: Map<String, Value>,
}

/// The text between the first `<tag>` and the following `</tag>`.
fn block<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(&text[start..end])
}

/// Parse the calls of a `<tool_call>` block: one JSON object per non-empty line.
fn parse_calls(text: &str) -> Result<Vec<Call>, String> {
    let body = block(text, "tool_call").ok_or("no <tool_call> block")?;
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).map_err(|e| format!("tool call is not JSON ({e}): {line}"))?;
            let obj = v.as_object().ok_or_else(|| format!("tool call is not an object: {line}"))?;
            let name =
                obj.get("name").and_then(Value::as_str).ok_or_else(|| format!("tool call has no name: {line}"))?;
            let params = obj
                .get("parameters")
                .or_else(|| obj.get("arguments"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            Ok(Call { name: name.to_string(), params })
        })
        .collect()
}

fn format_ok(completion: &str, gold: &str) -> bool {
    let (has_call, has_resp) = (gold.contains("<tool_call>"), gold.contains("<response>"));
    let think = r"<think>.*?</think>";
    let pattern = match (has_call, has_resp) {
        (true, true) => {
            format!(r"{think}\n<tool_call>\n.*?\n</tool_call>\n<response>.*?</response>")
        }
        (true, false) => format!(r"{think}\n<tool_call>\n.*?\n</tool_call>"),
        (false, true) => format!(r"{think}\n<response>.*?</response>"),
        (false, false) => think.to_string(),
    };
    let once = |tag: &str| {
        completion.matches(&format!("<{tag}>")).count() == 1 && completion.matches(&format!("</{tag}>")).count() == 1
    };
    let counts = once("think") && (!has_call || once("tool_call")) && (!has_resp || once("response"));
    counts && crate::format::full_match(&pattern).is_ok_and(|re| re.is_match(completion.trim()))
}

fn jaccard<T: Eq + std::hash::Hash>(a: &[T], b: &[T]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (ca, cb) = (multiset(a), multiset(b));
    let inter: usize = ca.iter().map(|(k, n)| (*n).min(cb.get(k).copied().unwrap_or(0))).sum();
    inter as f64 / (a.len() + b.len() - inter) as f64
}

fn multiset<T: Eq + std::hash::Hash>(xs: &[T]) -> HashMap<&T, usize> {
    let mut m: HashMap<&T, usize> = HashMap::new();
    for x in xs {
        *m.entry(x).or_default() += 1;
    }
    m
}

/// ToolRL's `R_correct` for parsed call lists.
fn correctness(gold: &[Call], pred: &[Call]) -> f64 {
    if gold == pred {
        return 3.0;
    }
    let names = |cs: &[Call]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    let r_name = jaccard(&names(gold), &names(pred));
    let mut used = vec![false; pred.len()];
    let mut s = r_name;
    let mut s_max = 1.0;
    for g in gold {
        s_max += 1.0 + g.params.len() as f64;
        let g_keys: Vec<&String> = g.params.keys().collect();
        let best = pred
            .iter()
            .enumerate()
            .filter(|(i, p)| !used[*i] && p.name == g.name)
            .map(|(i, p)| {
                let p_keys: Vec<&String> = p.params.keys().collect();
                let r_param = jaccard(&g_keys, &p_keys);
                let r_value = g.params.iter().filter(|(k, v)| p.params.get(*k) == Some(*v)).count() as f64;
                (i, r_param + r_value)
            })
            .fold(None, |best: Option<(usize, f64)>, (i, v)| match best {
                Some((_, bv)) if bv >= v => best,
                _ => Some((i, v)),
            });
        if let Some((i, v)) = best {
            used[i] = true;
            s += v;
        }
    }
    6.0 * s / s_max - 3.0
}

impl Reward for ToolRlReward {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        let gold = match task.require_answer() {
            Ok(g) => g,
            Err(e) => return Outcome::task_error(e),
        };
        let format = f64::from(u8::from(format_ok(completion, gold)));
        let mut failure = (format == 0.0).then(|| "format does not match the reference's layout".to_string());
        let (correct, extracted) = if gold.contains("<tool_call>") {
            let gold_calls = match parse_calls(gold) {
                Ok(c) => c,
                Err(e) => return Outcome::task_error(format!("reference tool calls: {e}")),
            };
            match parse_calls(completion) {
                Ok(pred) => {
                    let c = correctness(&gold_calls, &pred);
                    if c < 3.0 {
                        failure
                            .get_or_insert_with(|| format!("tool calls differ from the reference (R_correct {c:.3})"));
                    }
                    let shown: Vec<BTreeMap<&str, Value>> = pred
                        .iter()
                        .map(|c| {
                            BTreeMap::from([
                                ("name", Value::from(c.name.clone())),
                                ("parameters", Value::Object(c.params.clone())),
                            ])
                        })
                        .collect();
                    (c, serde_json::to_string(&shown).ok())
                }
                Err(e) => {
                    failure = Some(e);
                    (-3.0, None)
                }
            }
        } else {
            (0.0, None)
        };
        let mut o = Outcome::new(format + correct).with_component(FORMAT, format).with_component(CORRECT, correct);
        o.extracted = extracted;
        o.failure = failure;
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLD: &str = "<think>need weather</think>\n<tool_call>\n{\"name\": \"weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"C\"}}\n</tool_call>";

    fn score(completion: &str) -> Outcome {
        ToolRlReward.score(&Task::default().with_answer(GOLD), completion)
    }

    #[test]
    fn exact_match_scores_four() {
        let o = score(GOLD);
        assert_eq!((o.score, o.components[FORMAT], o.components[CORRECT]), (4.0, 1.0, 3.0));
    }

    #[test]
    fn partial_parameter_match_follows_the_formula() {
        // Same name, both keys, one value right: S = 1 (name) + 1 (keys) + 1 (value) = 3; S_max = 1 + (1 + 2) = 4.
        let c = "<think>t</think>\n<tool_call>\n{\"name\": \"weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"F\"}}\n</tool_call>";
        let o = score(c);
        assert_eq!(o.components[CORRECT], 6.0 * 3.0 / 4.0 - 3.0);
        assert_eq!(o.score, 1.0 + 1.5);
    }

    #[test]
    fn wrong_tool_and_missing_block() {
        let c =
            "<think>t</think>\n<tool_call>\n{\"name\": \"search\", \"parameters\": {\"q\": \"Paris\"}}\n</tool_call>";
        // r_name = 0, no same-name match: S = 0 → −3.
        assert_eq!(score(c).components[CORRECT], -3.0);
        let o = score("<think>t</think>\n<response>It is sunny</response>");
        assert_eq!((o.components[FORMAT], o.components[CORRECT]), (0.0, -3.0));
        let o = score("<think>t</think>\n<tool_call>\nnot json\n</tool_call>");
        assert_eq!(o.score, 1.0 - 3.0);
    }

    #[test]
    fn response_only_reference_scores_format_only() {
        let t = Task::default().with_answer("<think>x</think>\n<response>hello</response>");
        assert_eq!(ToolRlReward.score(&t, "<think>y</think>\n<response>hi</response>").score, 1.0);
        assert_eq!(ToolRlReward.score(&t, "<response>hi</response>").score, 0.0);
    }

    #[test]
    fn name_jaccard_counts_multiplicity() {
        assert_eq!(jaccard(&["a", "a", "b"], &["a", "b", "b"]), 2.0 / 4.0);
        assert_eq!(jaccard::<&str>(&[], &[]), 1.0);
    }
}
