//! Field accessors shared by the loaders: each returns the field name and a reason on failure.

use serde_json::{Map, Value};

use super::read::kind;
use super::FieldError;
use crate::task::Message;

fn err(field: &str, reason: impl Into<String>) -> FieldError {
    (field.to_string(), reason.into())
}

/// A non-empty string field.
pub(crate) fn text(row: &Map<String, Value>, field: &str) -> Result<String, FieldError> {
    match row.get(field) {
        None => Err(err(field, "missing")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(err(field, "empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(err(field, format!("expected a string, found {}", kind(other)))),
    }
}

/// A non-empty string, number or boolean field, as text (numbers by [`number_text`]).
pub(crate) fn scalar(row: &Map<String, Value>, field: &str) -> Result<String, FieldError> {
    match row.get(field) {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(i.to_string()),
            None => n.as_f64().map(number_text).ok_or_else(|| err(field, "number out of range")),
        },
        Some(Value::Bool(b)) => Ok(b.to_string()),
        _ => text(row, field),
    }
}

/// A finite number field (JSON number, or a string that parses as one).
pub(crate) fn number(row: &Map<String, Value>, field: &str) -> Result<f64, FieldError> {
    let value = match row.get(field) {
        None => return Err(err(field, "missing")),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().replace(',', "").parse::<f64>().ok(),
        Some(other) => return Err(err(field, format!("expected a number, found {}", kind(other)))),
    };
    match value {
        Some(v) if v.is_finite() => Ok(v),
        _ => Err(err(
            field,
            format!("not a finite number: {}", row.get(field).map(Value::to_string).unwrap_or_default()),
        )),
    }
}

/// Chat messages: a non-empty array of `{role, content}` objects (both strings) ending in a `user` or `tool` turn,
/// the shape TRL's conversational prompt requires.
pub(crate) fn messages(row: &Map<String, Value>, field: &str) -> Result<Vec<Message>, FieldError> {
    let items = match row.get(field) {
        None => return Err(err(field, "missing")),
        Some(Value::Array(items)) if items.is_empty() => return Err(err(field, "empty message list")),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(err(field, format!("expected a list of messages, found {}", kind(other)))),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(err(field, format!("message {i}: expected an object, found {}", kind(item))));
        };
        let role = text(m, "role").map_err(|(f, r)| err(field, format!("message {i}: {f}: {r}")))?;
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(err(field, format!("message {i}: content: expected a string, found {}", kind(other))))
            }
            None => return Err(err(field, format!("message {i}: content: missing"))),
        };
        out.push(Message { role, content });
    }
    match out.last().map(|m| m.role.as_str()) {
        Some("user" | "tool") => Ok(out),
        Some(role) => Err(err(field, format!("must end with a user or tool turn, ends with {role:?}"))),
        None => Err(err(field, "empty message list")),
    }
}

/// A number as the shortest text that reads back to it, without a trailing `.0` for integers (`51.0` → `51`).
pub(crate) fn number_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
