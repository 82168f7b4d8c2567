//! Reading text files (plain or gzip) into rows with their line numbers.

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

use super::RawRow;
use crate::error::{Error, IoContext, Result};

/// The whole file as UTF-8, gunzipped when its name ends in `.gz`.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).at(path)?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    decode(&bytes, gz).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })
}

/// Bytes (gzip when `gz`) as UTF-8 text.
pub(crate) fn decode(bytes: &[u8], gz: bool) -> std::io::Result<String> {
    if gz {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes).read_to_string(&mut text)?;
        Ok(text)
    } else {
        String::from_utf8(bytes.to_vec()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// One row per non-blank line.
pub(crate) fn jsonl_rows(text: &str) -> Vec<RawRow> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .enumerate()
        .map(|(index, (i, l))| RawRow { line: i + 1, index, value: parse_object(l) })
        .collect()
}

fn parse_object(text: &str) -> std::result::Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("expected a JSON object, found {}", kind(&other))),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// One row per element of a top-level JSON array; each row's line is where its element starts.
///
/// The array is parsed into borrowed raw values, so each element's byte offset in `text` (and so its line) is known.
/// A document that is not an array is a single bad row at line 1.
pub(crate) fn json_array_rows(text: &str) -> Vec<RawRow> {
    let elements: Vec<&serde_json::value::RawValue> = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return vec![RawRow { line: e.line().max(1), index: 0, value: Err(format!("invalid JSON array: {e}")) }]
        }
    };
    let base = text.as_ptr() as usize;
    let mut line = 1;
    let mut scanned = 0;
    let mut rows = Vec::with_capacity(elements.len());
    for (index, raw) in elements.into_iter().enumerate() {
        let offset = (raw.get().as_ptr() as usize).saturating_sub(base).min(text.len());
        line += text.as_bytes()[scanned..offset].iter().filter(|&&b| b == b'\n').count();
        scanned = offset;
        rows.push(RawRow { line, index, value: parse_object(raw.get()) });
    }
    rows
}

/// "a string", "a number" ...: for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
