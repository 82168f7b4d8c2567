//! [`Task`]: one prompt with its reference, as every loader produces it.

use serde::{Deserialize, Serialize};

pub use orchard_core::Message;

/// One unit of work for a job: a prompt and what its completions are scored against.
///
/// `id` is stable across runs, machines and versions (`gsm8k/train/123`): journals, shards, merges and pair
/// sources refer to tasks by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Stable id: `{dataset}/{split}/{row or native id}` for built-in datasets, `{file stem}/{id}` for user files.
    pub id: String,
    /// The prompt text (for chat models: the user turn).
    pub prompt: String,
    /// The prompt as chat messages when the source has them; empty otherwise (see [`Task::chat`]).
    pub messages: Vec<Message>,
    /// The reference answer (GSM8K: the number after `####`; SVAMP: the answer; HumanEval: the canonical solution).
    pub reference: Option<String>,
    /// Unit tests (HumanEval: Python source defining `check(candidate)`).
    pub tests: Option<String>,
    /// The function the tests call.
    pub entry_point: Option<String>,
    /// The source row as read, for rewards that need more fields.
    pub raw: serde_json::Map<String, serde_json::Value>,
}

impl Task {
    /// A task with this id and prompt and nothing else.
    pub fn new(id: impl Into<String>, prompt: impl Into<String>) -> Self {
        Task {
            id: id.into(),
            prompt: prompt.into(),
            messages: Vec::new(),
            reference: None,
            tests: None,
            entry_point: None,
            raw: serde_json::Map::new(),
        }
    }

    /// Set the reference answer.
    pub fn with_reference(mut self, reference: impl Into<String>) -> Self {
        self.reference = Some(reference.into());
        self
    }

    /// A worked gold solution in Orchard's answer format (ending "The answer is N."), from the source row:
    /// GSM8K's `answer` (calculator annotations `<<…>>` removed, `#### N` turned into the final line) or SVAMP's
    /// `Equation` (`( 4.0 - 3.0 )` → `4 - 3 = 1.`). `None` when the row has neither. This is what supervised
    /// warm-ups (ReFT §3, `orchard train --loss sft --gold`) train on.
    pub fn gold_solution(&self) -> Option<String> {
        if let Some(answer) = self.raw.get("answer").and_then(|v| v.as_str()) {
            let (steps, last) = answer.rsplit_once("####")?;
            let steps = strip_calculator(steps.trim());
            return Some(format!("{steps}\nThe answer is {}.", last.trim()));
        }
        let equation = self.raw.get("Equation").and_then(|v| v.as_str())?;
        let answer = self.reference.as_deref()?;
        let mut eq = equation.trim().to_string();
        while eq.starts_with('(') && eq.ends_with(')') && balanced(&eq[1..eq.len() - 1]) {
            eq = eq[1..eq.len() - 1].trim().to_string();
        }
        let eq: Vec<String> = eq.split_whitespace().map(|w| w.strip_suffix(".0").unwrap_or(w).to_string()).collect();
        Some(format!("{} = {answer}.\nThe answer is {answer}.", eq.join(" ")))
    }

    /// The prompt as chat messages: the source's messages if it had any, else an optional system turn and one user
    /// turn with [`Task::prompt`].
    pub fn chat(&self, system: Option<&str>) -> Vec<Message> {
        if !self.messages.is_empty() {
            return self.messages.clone();
        }
        let mut out = Vec::with_capacity(2);
        if let Some(system) = system {
            out.push(Message::new("system", system));
        }
        out.push(Message::user(self.prompt.clone()));
        out
    }
}

/// GSM8K's calculator annotations (`48/2 = <<48/2=24>>24`) removed.
fn strip_calculator(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<<") {
        out.push_str(&rest[..start]);
        match rest[start..].find(">>") {
            Some(end) => rest = &rest[start + end + 2..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether the parentheses of `s` balance without the depth going negative.
fn balanced(s: &str) -> bool {
    let mut depth = 0i64;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_raw(task: Task, raw: serde_json::Value) -> Task {
        Task { raw: raw.as_object().cloned().unwrap_or_default(), ..task }
    }

    #[test]
    fn gold_solutions_end_in_the_answer_line() {
        let g = with_raw(
            Task::new("gsm8k/train/0", "q").with_reference("72"),
            serde_json::json!({"answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"}),
        );
        assert_eq!(
            g.gold_solution().as_deref(),
            Some("Natalia sold 48/2 = 24 clips in May.\nIn all 48+24 = 72.\nThe answer is 72.")
        );
        let s = with_raw(
            Task::new("svamp/train/chal-2", "q").with_reference("1"),
            serde_json::json!({"Equation": "( 4.0 - 3.0 )", "Answer": 1.0}),
        );
        assert_eq!(s.gold_solution().as_deref(), Some("4 - 3 = 1.\nThe answer is 1."));
        let nested = with_raw(
            Task::new("svamp/train/chal-8", "q").with_reference("7.5"),
            serde_json::json!({"Equation": "( ( 2.0 + 13.0 ) / 2.0 )"}),
        );
        assert_eq!(nested.gold_solution().as_deref(), Some("( 2 + 13 ) / 2 = 7.5.\nThe answer is 7.5."));
        let keep = with_raw(
            Task::new("x", "q").with_reference("3"),
            serde_json::json!({"Equation": "( 1.0 + 1.0 ) + ( 0.5 + 0.5 )"}),
        );
        assert_eq!(keep.gold_solution().as_deref(), Some("( 1 + 1 ) + ( 0.5 + 0.5 ) = 3.\nThe answer is 3."));
        assert_eq!(Task::new("x", "q").gold_solution(), None);
    }
}
