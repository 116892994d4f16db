//! Writing rows in the STVQA-7K schema as a Hugging Face dataset folder:
//! `<out>/data/<split>-00000-of-00001.parquet` (+ a README with the split configuration).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    StructArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{DataError, Result};
use crate::record::ImageData;
use crate::schema::stvqa_schema;

/// Default rows per parquet row group: the unit of streaming.
pub const DEFAULT_ROWS_PER_GROUP: usize = 256;

/// One complete row of the STVQA-7K schema (plus `reference_response`).
#[derive(Debug, Clone, PartialEq)]
pub struct StvqaRow {
    /// `image_id`.
    pub image_id: String,
    /// `images` (`{bytes, path}`).
    pub image: ImageData,
    /// `problem`.
    pub problem: String,
    /// `question_only`.
    pub question_only: String,
    /// `question_with_options`.
    pub question_with_options: String,
    /// `options`.
    pub options: Vec<String>,
    /// `answer`.
    pub answer: String,
    /// `answer_only`.
    pub answer_only: String,
    /// `answer_text`.
    pub answer_text: String,
    /// `answer_text_only`.
    pub answer_text_only: String,
    /// `answer_option_text`.
    pub answer_option_text: String,
    /// `answer_option_text_only`.
    pub answer_option_text_only: String,
    /// `category`.
    pub category: String,
    /// `level`.
    pub level: String,
    /// `rating`.
    pub rating: i32,
    /// `reference_response` (null when `None`).
    pub reference_response: Option<String>,
}

/// Writes one split's parquet file, one row group per `rows_per_group` rows.
pub struct SplitWriter {
    path: PathBuf,
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    buffer: Vec<StvqaRow>,
    rows_per_group: usize,
    rows: usize,
}

/// Path of a split's single shard inside an HF dataset folder.
pub fn split_path(out: &Path, split: &str) -> PathBuf {
    out.join("data")
        .join(format!("{split}-00000-of-00001.parquet"))
}

impl SplitWriter {
    /// Create `<out>/data/<split>-00000-of-00001.parquet`.
    pub fn create(out: &Path, split: &str, rows_per_group: usize) -> Result<Self> {
        let path = split_path(out, split);
        let dir = path.parent().expect("split path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        Self::create_file(&path, rows_per_group)
    }

    /// Create a parquet file at `path` directly.
    pub fn create_file(path: &Path, rows_per_group: usize) -> Result<Self> {
        let rows_per_group = rows_per_group.max(1);
        let schema = Arc::new(stvqa_schema());
        let file = File::create(path).map_err(|e| DataError::io(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(rows_per_group))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| DataError::parquet(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            schema,
            buffer: Vec::with_capacity(rows_per_group),
            rows_per_group,
            rows: 0,
        })
    }

    /// Append a row (written when a row group fills).
    pub fn write(&mut self, row: StvqaRow) -> Result<()> {
        self.buffer.push(row);
        if self.buffer.len() >= self.rows_per_group {
            self.flush_group()?;
        }
        Ok(())
    }

    fn flush_group(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let batch = to_record_batch(&self.schema, &self.buffer)
            .map_err(|e| DataError::arrow(&self.path, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| DataError::parquet(&self.path, e))?;
        self.writer
            .flush()
            .map_err(|e| DataError::parquet(&self.path, e))?;
        self.rows += self.buffer.len();
        self.buffer.clear();
        Ok(())
    }

    /// Write the remaining rows and the footer; returns the file and its row count.
    pub fn finish(mut self) -> Result<(PathBuf, usize)> {
        self.flush_group()?;
        self.writer
            .close()
            .map_err(|e| DataError::parquet(&self.path, e))?;
        Ok((self.path, self.rows))
    }
}

/// Build an Arrow batch of `rows` with [`stvqa_schema`]'s column order and types.
fn to_record_batch(
    schema: &Arc<Schema>,
    rows: &[StvqaRow],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let text = |f: fn(&StvqaRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let bytes: ArrayRef = Arc::new(BinaryArray::from_iter_values(
        rows.iter().map(|r| r.image.bytes.as_slice()),
    ));
    let paths: ArrayRef = Arc::new(StringArray::from(
        rows.iter()
            .map(|r| r.image.path.as_deref())
            .collect::<Vec<_>>(),
    ));
    let images: ArrayRef = Arc::new(StructArray::from(vec![
        (Arc::new(Field::new("bytes", DataType::Binary, true)), bytes),
        (Arc::new(Field::new("path", DataType::Utf8, true)), paths),
    ]));
    let mut options = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Utf8,
        true,
    )));
    for r in rows {
        for o in &r.options {
            options.values().append_value(o);
        }
        options.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        text(|r| &r.image_id),
        images,
        text(|r| &r.problem),
        text(|r| &r.question_only),
        text(|r| &r.question_with_options),
        Arc::new(options.finish()),
        text(|r| &r.answer),
        text(|r| &r.answer_only),
        text(|r| &r.answer_text),
        text(|r| &r.answer_text_only),
        text(|r| &r.answer_option_text),
        text(|r| &r.answer_option_text_only),
        text(|r| &r.category),
        text(|r| &r.level),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.rating))),
        Arc::new(StringArray::from(
            rows.iter()
                .map(|r| r.reference_response.as_deref())
                .collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}

/// Write the dataset card's front matter so the `datasets` library finds the splits.
pub fn write_readme(out: &Path, splits: &[&str], description: &str) -> Result<()> {
    let mut text = String::from("---\nconfigs:\n- config_name: default\n  data_files:\n");
    for split in splits {
        text.push_str(&format!(
            "  - split: {split}\n    path: data/{split}-*.parquet\n"
        ));
    }
    text.push_str("---\n\n");
    text.push_str(description);
    text.push('\n');
    let path = out.join("README.md");
    std::fs::write(&path, text).map_err(|e| DataError::io(&path, e))
}
