//! GSM8K (Cobbe et al. 2021): `question`, `answer` = worked solution whose last line is `#### N`.

use serde_json::{Map, Value};

use super::{fields, FieldError};
use crate::task::Task;

/// The marker before GSM8K's final answer.
pub const ANSWER_MARKER: &str = "####";

/// The final answer of a GSM8K solution: the text after the last `####`, commas removed (`1,000` → `1000`).
/// `None` when there is no marker or the answer is not a number.
pub fn final_answer(solution: &str) -> Option<String> {
    let (_, tail) = solution.rsplit_once(ANSWER_MARKER)?;
    let answer = tail.trim().replace(',', "");
    let answer = answer.strip_prefix('$').unwrap_or(&answer).to_string();
    answer.parse::<f64>().ok().filter(|v| v.is_finite())?;
    Some(answer)
}

pub(crate) fn to_task(prefix: &str, index: usize, row: Map<String, Value>) -> Result<Task, FieldError> {
    let question = fields::text(&row, "question")?;
    let solution = fields::text(&row, "answer")?;
    let reference = final_answer(&solution)
        .ok_or_else(|| ("answer".to_string(), format!("no numeric final answer after {ANSWER_MARKER:?}")))?;
    let mut task = Task::new(format!("{prefix}/{index}"), question).with_reference(reference);
    task.raw = row;
    Ok(task)
}
