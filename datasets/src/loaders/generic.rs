//! Generic files (JSONL, JSON array, Parquet) read through a [`FieldMap`].

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Number, Value};

use super::{fields, FieldError, FieldMap, RawRow};
use crate::error::{IoContext, Result};
use crate::task::Task;

pub(crate) fn to_task(map: &FieldMap, prefix: &str, index: usize, row: Map<String, Value>) -> Result<Task, FieldError> {
    let id = match &map.id {
        Some(field) => fields::scalar(&row, field)?,
        None => index.to_string(),
    };
    let messages = match &map.messages {
        Some(field) => fields::messages(&row, field)?,
        None => Vec::new(),
    };
    // The prompt column is required unless messages are mapped, in which case the last user turn stands in for it.
    let prompt = match (fields::text(&row, &map.prompt), messages.last()) {
        (Ok(prompt), _) => prompt,
        (Err(_), Some(last)) if !row.contains_key(&map.prompt) => last.content.clone(),
        (Err(e), _) => return Err(e),
    };
    let optional = |field: &Option<String>, scalar: bool| -> Result<Option<String>, FieldError> {
        match field {
            Some(f) if scalar => fields::scalar(&row, f).map(Some),
            Some(f) => fields::text(&row, f).map(Some),
            None => Ok(None),
        }
    };
    let reference = optional(&map.reference, true)?;
    let tests = optional(&map.tests, false)?;
    let entry_point = optional(&map.entry_point, false)?;
    let mut task = Task::new(format!("{prefix}/{id}"), prompt);
    task.messages = messages;
    task.reference = reference;
    task.tests = tests;
    task.entry_point = entry_point;
    task.raw = row;
    Ok(task)
}

/// Every row of a Parquet file as a JSON object of its columns. Columns of types with no JSON counterpart
/// (binary, dates, maps ...) are left out of the object; a mapped field in one of them is then reported missing.
pub(crate) fn parquet_rows(path: &Path) -> Result<Vec<RawRow>> {
    let file = File::open(path).at(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(4096).build()?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch?;
        let schema = batch.schema();
        for r in 0..batch.num_rows() {
            let mut map = Map::new();
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                if let Some(v) = to_json(column.as_ref(), r) {
                    map.insert(field.name().clone(), v);
                }
            }
            let index = rows.len();
            rows.push(RawRow { line: index + 1, index, value: Ok(map) });
        }
    }
    Ok(rows)
}

/// One cell as JSON; `None` for types that have no JSON form here.
fn to_json(array: &dyn Array, row: usize) -> Option<Value> {
    if array.is_null(row) {
        return Some(Value::Null);
    }
    macro_rules! int {
        ($t:ty) => {
            Some(Value::from(array.as_primitive::<$t>().value(row)))
        };
    }
    match array.data_type() {
        DataType::Utf8 => Some(Value::from(array.as_string::<i32>().value(row))),
        DataType::LargeUtf8 => Some(Value::from(array.as_string::<i64>().value(row))),
        DataType::Utf8View => Some(Value::from(array.as_string_view().value(row))),
        DataType::Boolean => Some(Value::from(array.as_boolean().value(row))),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float32 => {
            Number::from_f64(f64::from(array.as_primitive::<Float32Type>().value(row))).map(Value::Number)
        }
        DataType::Float64 => Number::from_f64(array.as_primitive::<Float64Type>().value(row)).map(Value::Number),
        DataType::List(_) => list(array.as_list::<i32>().value(row).as_ref()),
        DataType::LargeList(_) => list(array.as_list::<i64>().value(row).as_ref()),
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut map = Map::new();
            for (field, column) in fields.iter().zip(s.columns()) {
                if let Some(v) = to_json(column.as_ref(), row) {
                    map.insert(field.name().clone(), v);
                }
            }
            Some(Value::Object(map))
        }
        _ => None,
    }
}

fn list(values: &dyn Array) -> Option<Value> {
    (0..values.len()).map(|i| to_json(values, i)).collect::<Option<Vec<_>>>().map(Value::Array)
}
