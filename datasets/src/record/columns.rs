//! Column helpers shared by the records: chat-message lists, named-float lists, typed column lookup.

use std::sync::Arc;

use arrow_array::builder::{ArrayBuilder, Float64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, ListArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Fields};

use crate::error::{Error, Result};
use crate::task::Message;

/// `role` field of a chat message struct.
pub const ROLE: &str = "role";
/// `content` field of a chat message struct.
pub const CONTENT: &str = "content";
/// `name` field of a named value (reward components).
pub const NAME: &str = "name";
/// `value` field of a named value.
pub const VALUE: &str = "value";

/// `struct<role: string, content: string>`: the fields of one chat message, as TRL and HF `datasets` expect.
pub fn message_fields() -> Fields {
    Fields::from(vec![Field::new(ROLE, DataType::Utf8, false), Field::new(CONTENT, DataType::Utf8, false)])
}

/// `list<struct<role: string, content: string>>`: a conversation.
pub fn message_list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Struct(message_fields()), false)))
}

pub(crate) fn named_value_fields() -> Fields {
    Fields::from(vec![Field::new(NAME, DataType::Utf8, false), Field::new(VALUE, DataType::Float64, false)])
}

/// `list<struct<name: string, value: double>>`: named numbers (reward components). A list of structs rather than an
/// Arrow map so that HF `datasets` and pandas read it without special handling.
pub(crate) fn named_value_list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Struct(named_value_fields()), false)))
}

/// Builds a `list<struct<role, content>>` column (arrow-array's "custom builder" pattern).
#[derive(Debug)]
pub struct MessagesBuilder {
    offsets: Vec<i32>,
    roles: StringBuilder,
    contents: StringBuilder,
}

impl Default for MessagesBuilder {
    fn default() -> Self {
        MessagesBuilder { offsets: vec![0], roles: StringBuilder::new(), contents: StringBuilder::new() }
    }
}

impl MessagesBuilder {
    /// Append one conversation.
    pub fn append<'a>(&mut self, messages: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (role, content) in messages {
            self.roles.append_value(role);
            self.contents.append_value(content);
        }
        self.offsets.push(i32::try_from(self.roles.len()).expect("fewer than 2^31 messages per column chunk"));
    }

    /// The column.
    pub fn finish(&mut self) -> Result<ListArray> {
        let values = StructArray::try_new(
            message_fields(),
            vec![Arc::new(self.roles.finish()) as ArrayRef, Arc::new(self.contents.finish())],
            None,
        )?;
        let offsets = OffsetBuffer::new(std::mem::replace(&mut self.offsets, vec![0]).into());
        let field = Arc::new(Field::new_list_field(DataType::Struct(message_fields()), false));
        Ok(ListArray::try_new(field, offsets, Arc::new(values), None)?)
    }
}

/// Builds a `list<struct<name, value>>` column.
#[derive(Debug)]
pub(crate) struct NamedValuesBuilder {
    offsets: Vec<i32>,
    names: StringBuilder,
    values: Float64Builder,
}

impl Default for NamedValuesBuilder {
    fn default() -> Self {
        NamedValuesBuilder { offsets: vec![0], names: StringBuilder::new(), values: Float64Builder::new() }
    }
}

impl NamedValuesBuilder {
    pub(crate) fn append<'a>(&mut self, items: impl IntoIterator<Item = (&'a String, &'a f64)>) {
        for (name, value) in items {
            self.names.append_value(name);
            self.values.append_value(*value);
        }
        self.offsets.push(i32::try_from(self.names.len()).expect("fewer than 2^31 values per column chunk"));
    }

    pub(crate) fn finish(&mut self) -> Result<ListArray> {
        let values = StructArray::try_new(
            named_value_fields(),
            vec![Arc::new(self.names.finish()) as ArrayRef, Arc::new(self.values.finish())],
            None,
        )?;
        let offsets = OffsetBuffer::new(std::mem::replace(&mut self.offsets, vec![0]).into());
        let field = Arc::new(Field::new_list_field(DataType::Struct(named_value_fields()), false));
        Ok(ListArray::try_new(field, offsets, Arc::new(values), None::<NullBuffer>)?)
    }
}

/// Typed access to the columns of a batch being read back; errors name the record and column.
pub(crate) struct Columns<'a> {
    pub(crate) record: &'static str,
    pub(crate) batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    pub(crate) fn new(record: &'static str, batch: &'a RecordBatch) -> Self {
        Columns { record, batch }
    }

    fn err(&self, reason: String) -> Error {
        Error::Schema { record: self.record, reason }
    }

    pub(crate) fn column(&self, name: &str) -> Result<&'a ArrayRef> {
        self.batch.column_by_name(name).ok_or_else(|| self.err(format!("missing column `{name}`")))
    }

    fn typed<T: 'static>(&self, name: &str, want: &str, f: impl Fn(&'a ArrayRef) -> Option<&'a T>) -> Result<&'a T> {
        let col = self.column(name)?;
        f(col).ok_or_else(|| self.err(format!("column `{name}` is {}, expected {want}", col.data_type())))
    }

    pub(crate) fn string(&self, name: &str) -> Result<&'a StringArray> {
        self.typed(name, "Utf8", |c| c.as_string_opt::<i32>())
    }

    pub(crate) fn f64(&self, name: &str) -> Result<&'a arrow_array::Float64Array> {
        self.typed(name, "Float64", |c| c.as_primitive_opt::<Float64Type>())
    }

    pub(crate) fn u32(&self, name: &str) -> Result<&'a arrow_array::UInt32Array> {
        self.typed(name, "UInt32", |c| c.as_primitive_opt::<UInt32Type>())
    }

    pub(crate) fn u64(&self, name: &str) -> Result<&'a arrow_array::UInt64Array> {
        self.typed(name, "UInt64", |c| c.as_primitive_opt::<UInt64Type>())
    }

    /// A Float64 column that files written by older versions may lack.
    pub(crate) fn opt_f64(&self, name: &str) -> Result<Option<&'a arrow_array::Float64Array>> {
        if self.batch.column_by_name(name).is_none() {
            return Ok(None);
        }
        self.f64(name).map(Some)
    }

    /// Column `name` through `get` (e.g. `Columns::string`), or `None` when a file written by an older version lacks
    /// it (columns added after the first release are optional on read).
    pub(crate) fn optional<T>(&self, name: &str, get: impl Fn(&Self, &str) -> Result<T>) -> Result<Option<T>> {
        if self.batch.column_by_name(name).is_none() {
            return Ok(None);
        }
        get(self, name).map(Some)
    }

    pub(crate) fn f32(&self, name: &str) -> Result<&'a arrow_array::Float32Array> {
        self.typed(name, "Float32", |c| c.as_primitive_opt::<Float32Type>())
    }

    pub(crate) fn bool(&self, name: &str) -> Result<&'a BooleanArray> {
        self.typed(name, "Boolean", |c| c.as_boolean_opt())
    }

    pub(crate) fn list(&self, name: &str) -> Result<&'a ListArray> {
        self.typed(name, "List", |c| c.as_list_opt::<i32>())
    }

    pub(crate) fn structs(&self, name: &str) -> Result<&'a StructArray> {
        self.typed(name, "Struct", |c| c.as_struct_opt())
    }

    /// Row `i` of a `list<struct<role, content>>` column.
    pub(crate) fn messages(&self, list: &ListArray, i: usize) -> Result<Vec<Message>> {
        let values = list.value(i);
        let s = values.as_struct_opt().ok_or_else(|| self.err("message list of non-structs".into()))?;
        let role = s.column_by_name(ROLE).and_then(|c| c.as_string_opt::<i32>());
        let content = s.column_by_name(CONTENT).and_then(|c| c.as_string_opt::<i32>());
        let (Some(role), Some(content)) = (role, content) else {
            return Err(self.err("message struct without string role/content".into()));
        };
        Ok((0..s.len()).map(|j| Message::new(role.value(j), content.value(j))).collect())
    }

    /// Row `i` of a `list<struct<name, value>>` column.
    pub(crate) fn named_values(&self, list: &ListArray, i: usize) -> Result<Vec<(String, f64)>> {
        let values = list.value(i);
        let s = values.as_struct_opt().ok_or_else(|| self.err("named-value list of non-structs".into()))?;
        let name = s.column_by_name(NAME).and_then(|c| c.as_string_opt::<i32>());
        let value = s.column_by_name(VALUE).and_then(|c| c.as_primitive_opt::<Float64Type>());
        let (Some(name), Some(value)) = (name, value) else {
            return Err(self.err("named-value struct without name/value".into()));
        };
        Ok((0..s.len()).map(|j| (name.value(j).to_string(), value.value(j))).collect())
    }
}

/// `Some(value)` unless null.
pub(crate) fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

/// `Some(value)` unless null.
pub(crate) fn opt_bool(a: &BooleanArray, i: usize) -> Option<bool> {
    a.is_valid(i).then(|| a.value(i))
}

/// `Some(value)` unless null.
pub(crate) fn opt_f64(a: &arrow_array::Float64Array, i: usize) -> Option<f64> {
    a.is_valid(i).then(|| a.value(i))
}

/// Row `i` of a `list<T>` of primitives.
pub(crate) fn list_values<T: arrow_array::ArrowPrimitiveType>(
    record: &'static str,
    list: &ListArray,
    i: usize,
) -> Result<Vec<T::Native>> {
    let values = list.value(i);
    let p = values.as_primitive_opt::<T>().ok_or_else(|| Error::Schema {
        record,
        reason: format!("list of {}, expected {}", values.data_type(), T::DATA_TYPE),
    })?;
    Ok(p.values().to_vec())
}
