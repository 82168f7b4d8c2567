//! SVAMP (Patel et al. 2021): `ID`, `Body`, `Question`, `Answer` (number), plus `Equation`, `Type`.

use serde_json::{Map, Value};

use super::{fields, FieldError};
use crate::task::Task;

/// `Body` and `Question` as one prompt. SVAMP bodies often lack a final full stop ("… on each pack"), so one is
/// added before the question when the body does not end in sentence punctuation.
pub fn prompt(body: &str, question: &str) -> String {
    let body = body.trim();
    let sep = if body.ends_with(['.', '!', '?', ',']) { " " } else { ". " };
    format!("{body}{sep}{}", question.trim())
}

pub(crate) fn to_task(prefix: &str, row: Map<String, Value>) -> Result<Task, FieldError> {
    let id = fields::text(&row, "ID")?;
    let body = fields::text(&row, "Body")?;
    let question = fields::text(&row, "Question")?;
    let answer = fields::number(&row, "Answer")?;
    let mut task =
        Task::new(format!("{prefix}/{id}"), prompt(&body, &question)).with_reference(fields::number_text(answer));
    task.raw = row;
    Ok(task)
}
