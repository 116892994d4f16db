//! Reading the columns of a benchmark's parquet file as plain values, whatever arrow type the
//! publisher chose (`string` or `large_string`, `int32` or `int64`, a list of strings or the
//! Python-literal text of one), with Hugging Face `Image` features (a struct of `bytes` and
//! `path`) kept encoded until a prompt needs the pixels.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use super::super::dataset::ImageSource;
use super::super::EvalError;

/// One value of a cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Null.
    Null,
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Raw bytes (a `binary` column).
    Bytes(Arc<[u8]>),
    /// A list.
    List(Vec<Cell>),
    /// A Hugging Face `Image` feature: encoded bytes and/or a file path.
    Image {
        /// The encoded file (PNG, JPEG, …).
        bytes: Option<Arc<[u8]>>,
        /// The file path recorded beside (or instead of) the bytes.
        path: Option<String>,
    },
    /// A type this reader does not interpret (named in errors).
    Other(String),
}

/// The wanted columns of one parquet file, row by row.
#[derive(Debug, Clone)]
pub struct Table {
    /// The file.
    pub path: PathBuf,
    names: Vec<String>,
    columns: Vec<Vec<Cell>>,
    rows: usize,
}

impl Table {
    /// Read the columns of `path` named in `wanted` (those absent from the file are simply not
    /// there; accessors report them when a row needs one).
    pub fn read(path: &Path, wanted: &[&str]) -> Result<Self, EvalError> {
        let unsupported =
            |e: &dyn std::fmt::Display| EvalError::Unsupported(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(|source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| unsupported(&e))?;
        let schema = builder.schema().clone();
        let mut roots = Vec::new();
        let mut names = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            if wanted.contains(&field.name().as_str()) {
                roots.push(i);
                names.push(field.name().clone());
            }
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(256)
            .build()
            .map_err(|e| unsupported(&e))?;
        let mut columns: Vec<Vec<Cell>> = vec![Vec::new(); names.len()];
        let mut rows = 0;
        for batch in reader {
            let batch = batch.map_err(|e| unsupported(&e))?;
            for (c, name) in names.iter().enumerate() {
                let array = batch.column_by_name(name).ok_or_else(|| {
                    EvalError::Unsupported(format!(
                        "{}: column `{name}` vanished from a record batch",
                        path.display()
                    ))
                })?;
                for r in 0..array.len() {
                    columns[c].push(cell(array, r));
                }
            }
            rows += batch.num_rows();
        }
        Ok(Self {
            path: path.to_path_buf(),
            names,
            columns,
            rows,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the file has column `name`.
    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    fn err(&self, row: usize, field: &'static str, message: impl Into<String>) -> EvalError {
        EvalError::Field {
            path: self.path.clone(),
            row,
            field,
            message: message.into(),
        }
    }

    /// The cell at (`row`, `name`); an error naming the file when the column is absent.
    pub fn cell(&self, row: usize, name: &'static str) -> Result<&Cell, EvalError> {
        let c = self
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| self.err(row, name, "no such column in the file"))?;
        Ok(&self.columns[c][row])
    }

    /// A text cell (numbers are written out as text); `None` for null.
    pub fn opt_text(&self, row: usize, name: &'static str) -> Result<Option<String>, EvalError> {
        match self.cell(row, name)? {
            Cell::Null => Ok(None),
            Cell::Text(s) => Ok(Some(s.clone())),
            Cell::Int(i) => Ok(Some(i.to_string())),
            Cell::Float(f) => Ok(Some(f.to_string())),
            Cell::Bool(b) => Ok(Some(b.to_string())),
            other => Err(self.err(row, name, format!("expected text, found {}", kind(other)))),
        }
    }

    /// A text cell that must be present.
    pub fn text(&self, row: usize, name: &'static str) -> Result<String, EvalError> {
        self.opt_text(row, name)?
            .ok_or_else(|| self.err(row, name, "null"))
    }

    /// A list of texts: a list column, or the Python-literal text of a list (`['a', 'b']`, the
    /// form some re-uploads store and `evals.py` reads with `ast.literal_eval`).
    pub fn text_list(&self, row: usize, name: &'static str) -> Result<Vec<String>, EvalError> {
        match self.cell(row, name)? {
            Cell::List(items) => items
                .iter()
                .map(|c| match c {
                    Cell::Text(s) => Ok(s.clone()),
                    Cell::Int(i) => Ok(i.to_string()),
                    Cell::Float(f) => Ok(f.to_string()),
                    other => Err(self.err(
                        row,
                        name,
                        format!("expected a list of text, found an item of {}", kind(other)),
                    )),
                })
                .collect(),
            Cell::Text(s) => parse_python_list(s).map_err(|m| self.err(row, name, m)),
            Cell::Null => Err(self.err(row, name, "null")),
            other => Err(self.err(
                row,
                name,
                format!("expected a list of text, found {}", kind(other)),
            )),
        }
    }

    /// An image cell: a Hugging Face `Image` struct (bytes, else a path resolved against the
    /// file's folder) or a binary column; `None` for null.
    pub fn image(&self, row: usize, name: &'static str) -> Result<Option<ImageSource>, EvalError> {
        let origin = format!("{} row {row} column {name}", self.path.display());
        match self.cell(row, name)? {
            Cell::Null => Ok(None),
            Cell::Bytes(b) => Ok(Some(ImageSource::Encoded {
                bytes: b.clone(),
                origin,
            })),
            Cell::Image {
                bytes: Some(b),
                path: _,
            } => Ok(Some(ImageSource::Encoded {
                bytes: b.clone(),
                origin,
            })),
            Cell::Image {
                bytes: None,
                path: Some(p),
            } => {
                let base = self.path.parent().unwrap_or(Path::new("."));
                Ok(Some(ImageSource::Path(base.join(p))))
            }
            Cell::Image {
                bytes: None,
                path: None,
            } => Ok(None),
            other => Err(self.err(
                row,
                name,
                format!(
                    "expected an image (struct of bytes and path), found {}",
                    kind(other)
                ),
            )),
        }
    }
}

/// A short name of a cell's kind, for errors.
fn kind(c: &Cell) -> String {
    match c {
        Cell::Null => "null".into(),
        Cell::Text(_) => "text".into(),
        Cell::Int(_) => "an integer".into(),
        Cell::Float(_) => "a float".into(),
        Cell::Bool(_) => "a boolean".into(),
        Cell::Bytes(_) => "binary".into(),
        Cell::List(_) => "a list".into(),
        Cell::Image { .. } => "an image struct".into(),
        Cell::Other(t) => format!("type {t}"),
    }
}

/// The value at `row` of `array`.
fn cell(array: &ArrayRef, row: usize) -> Cell {
    if array.is_null(row) {
        return Cell::Null;
    }
    match array.data_type() {
        DataType::Utf8 => Cell::Text(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Cell::Text(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Cell::Text(array.as_string_view().value(row).to_string()),
        DataType::Int8 => Cell::Int(array.as_primitive::<Int8Type>().value(row).into()),
        DataType::Int16 => Cell::Int(array.as_primitive::<Int16Type>().value(row).into()),
        DataType::Int32 => Cell::Int(array.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => Cell::Int(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Cell::Int(array.as_primitive::<UInt8Type>().value(row).into()),
        DataType::UInt16 => Cell::Int(array.as_primitive::<UInt16Type>().value(row).into()),
        DataType::UInt32 => Cell::Int(array.as_primitive::<UInt32Type>().value(row).into()),
        DataType::UInt64 => Cell::Int(array.as_primitive::<UInt64Type>().value(row) as i64),
        DataType::Float32 => Cell::Float(array.as_primitive::<Float32Type>().value(row).into()),
        DataType::Float64 => Cell::Float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Boolean => Cell::Bool(array.as_boolean().value(row)),
        DataType::Binary => Cell::Bytes(array.as_binary::<i32>().value(row).into()),
        DataType::LargeBinary => Cell::Bytes(array.as_binary::<i64>().value(row).into()),
        DataType::BinaryView => Cell::Bytes(array.as_binary_view().value(row).into()),
        DataType::List(_) => list(&array.as_list::<i32>().value(row)),
        DataType::LargeList(_) => list(&array.as_list::<i64>().value(row)),
        DataType::Struct(_) => {
            let s = array.as_struct();
            let field = |name: &str| s.column_by_name(name).map(|c| cell(c, row));
            let bytes = match field("bytes") {
                Some(Cell::Bytes(b)) => Some(b),
                _ => None,
            };
            let path = match field("path") {
                Some(Cell::Text(p)) => Some(p),
                _ => None,
            };
            if s.column_by_name("bytes").is_some() || s.column_by_name("path").is_some() {
                Cell::Image { bytes, path }
            } else {
                Cell::Other(array.data_type().to_string())
            }
        }
        other => Cell::Other(other.to_string()),
    }
}

fn list(values: &ArrayRef) -> Cell {
    Cell::List((0..values.len()).map(|i| cell(values, i)).collect())
}

/// Parse the Python-literal text of a list of strings (`['a', "b's"]`), with the escapes
/// `\\`, `\'`, `\"`, `\n` and `\t`.
pub fn parse_python_list(text: &str) -> Result<Vec<String>, String> {
    let bad = |why: &str| format!("not a Python list of strings ({why}): {text:?}");
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| bad("no brackets"))?;
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(quote) = chars.next() else { break };
        if quote != '\'' && quote != '"' {
            return Err(bad("an item is not quoted"));
        }
        let mut item = String::new();
        loop {
            match chars.next() {
                None => return Err(bad("unterminated string")),
                Some('\\') => match chars.next() {
                    Some('n') => item.push('\n'),
                    Some('t') => item.push('\t'),
                    Some(c) => item.push(c),
                    None => return Err(bad("dangling escape")),
                },
                Some(c) if c == quote => break,
                Some(c) => item.push(c),
            }
        }
        items.push(item);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(_) => return Err(bad("items not separated by commas")),
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_list_literals() {
        assert_eq!(
            parse_python_list("['left', \"the man's hat\", 'a\\'b']").unwrap(),
            vec!["left", "the man's hat", "a'b"]
        );
        assert_eq!(parse_python_list("[]").unwrap(), Vec::<String>::new());
        assert_eq!(parse_python_list(" ['x',] ").unwrap(), vec!["x"]);
        assert!(parse_python_list("left, right").is_err());
        assert!(parse_python_list("[left]").is_err());
        assert!(parse_python_list("['a' 'b']").is_err());
    }
}
