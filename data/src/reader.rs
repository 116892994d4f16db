//! Reading STVQA-7K-schema parquet files one row group at a time, so a dataset larger than RAM
//! streams: only the row groups being used are resident, with images still encoded.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int16Type, Int32Type, Int64Type, Int8Type, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{DataError, Result};
use crate::record::{ImageData, Record, RowRef};
use crate::schema::{self, ColumnNames};

/// What the reader knows about one parquet file after checking its schema.
#[derive(Debug, Clone)]
pub struct ParquetFile {
    /// The file.
    pub path: Arc<PathBuf>,
    /// Rows of each row group, in file order.
    pub row_group_rows: Vec<usize>,
    /// Column names to read and their roles.
    columns: ColumnNames,
    /// Root-column indices to project.
    projection: Vec<usize>,
}

/// The kind of Arrow value a column must hold.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Text,
    Image,
    TextList,
    Int,
}

impl Expect {
    fn describe(self) -> &'static str {
        match self {
            Expect::Text => "string",
            Expect::Image => "struct<bytes: binary, path: string>",
            Expect::TextList => "list<string>",
            Expect::Int => "integer",
        }
    }

    fn accepts(self, t: &DataType) -> bool {
        match self {
            Expect::Text => is_text(t),
            Expect::Int => matches!(
                t,
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64
            ),
            Expect::TextList => match t {
                DataType::List(f) | DataType::LargeList(f) => is_text(f.data_type()),
                _ => false,
            },
            Expect::Image => match t {
                DataType::Struct(fields) => fields.iter().any(|f| {
                    f.name() == "bytes"
                        && matches!(
                            f.data_type(),
                            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                        )
                }),
                _ => false,
            },
        }
    }
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The optional STVQA-7K columns (docs/recipe.md, "Dataset schema") (beyond the three configured ones) and their kinds.
const OPTIONAL: [(&str, Expect); 14] = [
    (schema::IMAGE_ID, Expect::Text),
    (schema::QUESTION_ONLY, Expect::Text),
    (schema::QUESTION_WITH_OPTIONS, Expect::Text),
    (schema::OPTIONS, Expect::TextList),
    (schema::ANSWER, Expect::Text),
    (schema::ANSWER_ONLY, Expect::Text),
    (schema::ANSWER_TEXT, Expect::Text),
    (schema::ANSWER_TEXT_ONLY, Expect::Text),
    (schema::ANSWER_OPTION_TEXT, Expect::Text),
    (schema::ANSWER_OPTION_TEXT_ONLY, Expect::Text),
    (schema::CATEGORY, Expect::Text),
    (schema::LEVEL, Expect::Text),
    (schema::RATING, Expect::Int),
    (schema::REFERENCE_RESPONSE, Expect::Text),
];

/// The 4 bytes a parquet file starts with, and ends with when its footer is not encrypted.
const PARQUET_MAGIC: &[u8; 4] = b"PAR1";
/// The end magic of a parquet file with an encrypted footer.
const PARQUET_MAGIC_ENCRYPTED: &[u8; 4] = b"PARE";

fn open_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    check_magic(path, &mut file)?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| DataError::parquet(path, e))
}

/// Tell a file of another format and a file cut short apart before the parquet reader sees them
/// (it would report both as a "corrupt footer"). Leaves `file` at its start.
fn check_magic(path: &Path, file: &mut File) -> Result<()> {
    let io = |e| DataError::io(path, e);
    let len = file.metadata().map_err(io)?.len();
    let mut head = [0u8; 4];
    let read = read_up_to(file, &mut head).map_err(io)?;
    // a file cut within the first 4 bytes is a truncated parquet file too
    let cut_in_magic = read > 0 && read < head.len() && PARQUET_MAGIC.starts_with(&head[..read]);
    if &head[..read] != PARQUET_MAGIC.as_slice() && !cut_in_magic {
        let found = if len == 0 {
            "the file is empty".to_string()
        } else {
            format!(
                "it starts with {:?}, not the parquet magic bytes `PAR1`",
                String::from_utf8_lossy(&head[..read])
            )
        };
        return Err(DataError::NotParquet {
            path: path.to_path_buf(),
            found,
        });
    }
    let mut tail = [0u8; 4];
    // magic, footer length, footer, magic: anything shorter than 12 bytes lacks a footer
    let complete = len >= 12 && {
        file.seek(SeekFrom::End(-4)).map_err(io)?;
        file.read_exact(&mut tail).map_err(io)?;
        &tail == PARQUET_MAGIC || &tail == PARQUET_MAGIC_ENCRYPTED
    };
    if !complete {
        return Err(DataError::TruncatedParquet {
            path: path.to_path_buf(),
            len,
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok(())
}

/// Fill `buf` from `file` as far as it goes; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl ParquetFile {
    /// Open `path`, read its footer and check that the configured prompt, image and answer
    /// columns exist with the right types (and that any other STVQA-7K column present has its type).
    pub fn open(path: &Path, columns: &ColumnNames) -> Result<Self> {
        let builder = open_builder(path)?;
        let arrow_schema = builder.schema().clone();
        let mut projection = Vec::new();
        let required = [
            (columns.prompt.as_str(), Expect::Text),
            (columns.image.as_str(), Expect::Image),
            (columns.answer.as_str(), Expect::Text),
        ];
        for (name, expect) in required {
            let index = arrow_schema
                .index_of(name)
                .map_err(|_| DataError::MissingColumn {
                    path: path.to_path_buf(),
                    column: name.to_string(),
                    available: column_list(&arrow_schema),
                })?;
            check_type(path, &arrow_schema, index, expect)?;
            projection.push(index);
        }
        for (name, expect) in OPTIONAL {
            if let Ok(index) = arrow_schema.index_of(name) {
                check_type(path, &arrow_schema, index, expect)?;
                projection.push(index);
            }
        }
        projection.sort_unstable();
        projection.dedup();
        let row_group_rows = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|rg| rg.num_rows() as usize)
            .collect();
        Ok(Self {
            path: Arc::new(path.to_path_buf()),
            row_group_rows,
            columns: columns.clone(),
            projection,
        })
    }

    /// Total number of rows.
    pub fn num_rows(&self) -> usize {
        self.row_group_rows.iter().sum()
    }

    /// Index of the first row of each row group.
    pub fn row_group_offsets(&self) -> Vec<usize> {
        self.row_group_rows
            .iter()
            .scan(0, |acc, &n| {
                let start = *acc;
                *acc += n;
                Some(start)
            })
            .collect()
    }

    /// Row `row` of the file (0-based), read with the rest of its row group; `None` past the
    /// end.
    pub fn read_row(&self, row: usize) -> Result<Option<Record>> {
        if row >= self.num_rows() {
            return Ok(None);
        }
        let offsets = self.row_group_offsets();
        let Some(group) = offsets.iter().rposition(|&start| start <= row) else {
            return Ok(None);
        };
        Ok(self
            .read_row_group(group)?
            .into_iter()
            .nth(row - offsets[group]))
    }

    /// All rows of row group `index`.
    pub fn read_row_group(&self, index: usize) -> Result<Vec<Record>> {
        let path = self.path.as_path();
        let first_row = self.row_group_offsets()[index];
        let builder = open_builder(path)?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), self.projection.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_row_groups(vec![index])
            .with_batch_size(self.row_group_rows[index].max(1))
            .build()
            .map_err(|e| DataError::parquet(path, e))?;
        let mut out = Vec::with_capacity(self.row_group_rows[index]);
        for batch in reader {
            let batch = batch.map_err(|e| DataError::arrow(path, e))?;
            self.push_records(&batch, first_row + out.len(), &mut out);
        }
        Ok(out)
    }

    /// Every row of the file, in order (small files and tools; training streams row groups).
    pub fn read_all(&self) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for index in 0..self.row_group_rows.len() {
            out.extend(self.read_row_group(index)?);
        }
        Ok(out)
    }

    fn push_records(&self, batch: &RecordBatch, first_row: usize, out: &mut Vec<Record>) {
        let col = |name: &str| batch.column_by_name(name);
        let prompt = col(&self.columns.prompt);
        let image = col(&self.columns.image);
        let truth = col(&self.columns.answer);
        let text = |name: &str, i: usize| col(name).and_then(|a| text_at(a, i)).map(str::to_string);
        for i in 0..batch.num_rows() {
            out.push(Record {
                source: RowRef {
                    file: self.path.clone(),
                    row: first_row + i,
                },
                prompt: prompt
                    .and_then(|a| text_at(a, i))
                    .unwrap_or_default()
                    .to_string(),
                image: image.map(|a| image_at(a, i)).unwrap_or_default(),
                ground_truth: truth
                    .and_then(|a| text_at(a, i))
                    .unwrap_or_default()
                    .to_string(),
                image_id: text(schema::IMAGE_ID, i),
                question_only: text(schema::QUESTION_ONLY, i),
                question_with_options: text(schema::QUESTION_WITH_OPTIONS, i),
                options: col(schema::OPTIONS).and_then(|a| text_list_at(a, i)),
                answer: text(schema::ANSWER, i),
                answer_only: text(schema::ANSWER_ONLY, i),
                answer_text: text(schema::ANSWER_TEXT, i),
                answer_text_only: text(schema::ANSWER_TEXT_ONLY, i),
                answer_option_text: text(schema::ANSWER_OPTION_TEXT, i),
                answer_option_text_only: text(schema::ANSWER_OPTION_TEXT_ONLY, i),
                category: text(schema::CATEGORY, i),
                level: text(schema::LEVEL, i),
                rating: col(schema::RATING).and_then(|a| int_at(a, i)),
                reference_response: text(schema::REFERENCE_RESPONSE, i),
            });
        }
    }
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_type(path: &Path, schema: &Schema, index: usize, expect: Expect) -> Result<()> {
    let field = schema.field(index);
    if expect.accepts(field.data_type()) {
        Ok(())
    } else {
        Err(DataError::WrongType {
            path: path.to_path_buf(),
            column: field.name().clone(),
            found: field.data_type().to_string(),
            expected: expect.describe(),
        })
    }
}

/// Row `i` of a string column (any of the three Arrow string layouts); `None` when null.
fn text_at(a: &ArrayRef, i: usize) -> Option<&str> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i)),
        DataType::Utf8View => Some(a.as_string_view().value(i)),
        _ => None,
    }
}

fn binary_at(a: &ArrayRef, i: usize) -> Option<&[u8]> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Binary => Some(a.as_binary::<i32>().value(i)),
        DataType::LargeBinary => Some(a.as_binary::<i64>().value(i)),
        DataType::BinaryView => Some(a.as_binary_view().value(i)),
        _ => None,
    }
}

fn image_at(a: &ArrayRef, i: usize) -> ImageData {
    if a.is_null(i) {
        return ImageData::default();
    }
    let s = a.as_struct();
    ImageData {
        bytes: s
            .column_by_name("bytes")
            .and_then(|b| binary_at(b, i))
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
        path: s
            .column_by_name("path")
            .and_then(|p| text_at(p, i))
            .map(str::to_string),
    }
}

fn text_list_at(a: &ArrayRef, i: usize) -> Option<Vec<String>> {
    if a.is_null(i) {
        return None;
    }
    let values = match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().value(i),
        DataType::LargeList(_) => a.as_list::<i64>().value(i),
        _ => return None,
    };
    Some(
        (0..values.len())
            .map(|j| text_at(&values, j).unwrap_or_default().to_string())
            .collect(),
    )
}

fn int_at(a: &ArrayRef, i: usize) -> Option<i32> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Int8 => Some(i32::from(a.as_primitive::<Int8Type>().value(i))),
        DataType::Int16 => Some(i32::from(a.as_primitive::<Int16Type>().value(i))),
        DataType::Int32 => Some(a.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => i32::try_from(a.as_primitive::<Int64Type>().value(i)).ok(),
        _ => None,
    }
}
