//! HumanEval (Chen et al. 2021): `task_id`, `prompt` (signature + docstring), `test` (defines `check`),
//! `entry_point`, `canonical_solution`.

use serde_json::{Map, Value};

use super::{fields, FieldError};
use crate::task::Task;

pub(crate) fn to_task(prefix: &str, row: Map<String, Value>) -> Result<Task, FieldError> {
    let id = fields::text(&row, "task_id")?;
    let prompt = fields::text(&row, "prompt")?;
    let tests = fields::text(&row, "test")?;
    let entry_point = fields::text(&row, "entry_point")?;
    if !tests.contains("def check") {
        return Err(("test".to_string(), "does not define check(candidate)".to_string()));
    }
    let reference = row.get("canonical_solution").and_then(Value::as_str).map(str::to_string);
    let mut task = Task::new(format!("{prefix}/{id}"), prompt);
    task.reference = reference;
    task.tests = Some(tests);
    task.entry_point = Some(entry_point);
    task.raw = row;
    Ok(task)
}
