//! Generic row ingest: newline-delimited JSON objects whose keys are a table's columns
//! (`POST /api/v1/ingest/rows/{table}`). Each bad line is rejected with its line number and
//! the column at fault; the good lines around it are stored.

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::json::ReaderBuilder;
use meshscope_schemas::Table;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rejected {
    /// 1-based line number in the request body.
    pub line: usize,
    pub error: String,
}

/// Decodes JSON lines into one batch of `table`, plus the rejected lines.
pub fn decode_json_rows(table: Table, body: &str) -> (Option<RecordBatch>, Vec<Rejected>) {
    let schema = table.schema();
    let mut good: Vec<&str> = Vec::new();
    let mut rejected = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match check_line(table, line) {
            Ok(()) => good.push(line),
            Err(error) => rejected.push(Rejected {
                line: line_no,
                error,
            }),
        }
    }
    // Fast path: decode everything at once; on failure, find the culprits line by line.
    if let Ok(b) = decode(table, &good.join("\n"))
        && b.num_rows() == good.len()
    {
        return (Some(b), rejected);
    }
    let mut batches = Vec::new();
    let numbered: Vec<(usize, &str)> = body.lines().enumerate().map(|(i, l)| (i + 1, l)).collect();
    for (n, line) in numbered {
        if !good.iter().any(|g| std::ptr::eq(*g, line)) {
            continue;
        }
        match decode(table, line) {
            Ok(b) => batches.push(b),
            Err(e) => rejected.push(Rejected { line: n, error: e }),
        }
    }
    rejected.sort_by_key(|r| r.line);
    let batch = if batches.is_empty() {
        None
    } else {
        arrow::compute::concat_batches(&schema, &batches).ok()
    };
    (batch, rejected)
}

fn decode(table: Table, text: &str) -> Result<RecordBatch, String> {
    let mut dec = ReaderBuilder::new(table.schema())
        .with_strict_mode(true)
        .with_batch_size(1 << 20)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    dec.decode(text.as_bytes()).map_err(|e| e.to_string())?;
    match dec.flush().map_err(|e| e.to_string())? {
        Some(b) => {
            meshscope_schemas::check_batch(table, &b).map_err(|e| e.to_string())?;
            Ok(b)
        }
        None => Err("no row".into()),
    }
}

/// Checks what the JSON decoder would otherwise panic on or misreport: the line is an object,
/// and fixed-size binary columns (ids) are hex strings of the right length.
fn check_line(table: Table, line: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let schema = table.schema();
    for f in schema.fields() {
        match obj.get(f.name()) {
            None | Some(serde_json::Value::Null) if !f.is_nullable() => {
                return Err(format!("column `{}` is required", f.name()));
            }
            Some(val) => check_value(f.name(), f.data_type(), val)?,
            None => {}
        }
    }
    Ok(())
}

fn check_value(name: &str, ty: &DataType, val: &serde_json::Value) -> Result<(), String> {
    match (ty, val) {
        (_, serde_json::Value::Null) => Ok(()),
        (DataType::FixedSizeBinary(n), serde_json::Value::String(s)) => {
            if s.len() != (*n as usize) * 2 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
                Err(format!(
                    "column `{name}` must be {} hex characters, got {:?}",
                    n * 2,
                    s
                ))
            } else {
                Ok(())
            }
        }
        (DataType::FixedSizeBinary(n), other) => Err(format!(
            "column `{name}` must be a string of {} hex characters, got {other}",
            n * 2
        )),
        (DataType::List(item), serde_json::Value::Array(items)) => items
            .iter()
            .try_for_each(|x| check_value(name, item.data_type(), x)),
        (DataType::Struct(fields), serde_json::Value::Object(o)) => {
            fields.iter().try_for_each(|f| match o.get(f.name()) {
                Some(x) => check_value(&format!("{name}.{}", f.name()), f.data_type(), x),
                None => Ok(()),
            })
        }
        _ => Ok(()),
    }
}
