//! Deliberately broken parquet files: each problem gives its documented error (policy `error`,
//! or file and schema problems, which no policy can skip) or skip count (policy `skip`); nothing
//! panics. A file-level error is one error naming the file (and the column, where one is at
//! fault), the same from the reader, the validator and the loader.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use data::loader::validate_files;
use data::reader::ParquetFile;
use data::schema::ColumnNames;
use data::synth::{generate_row, ImageEncoding, SynthConfig};
use data::writer::{SplitWriter, StvqaRow};
use data::{Cursor, DataError, Loader, LoaderConfig, Policy};

const ROWS: u64 = 10;

fn rows(encoding: ImageEncoding) -> Vec<StvqaRow> {
    let cfg = SynthConfig {
        seed: 5,
        encoding,
        ..SynthConfig::default()
    };
    (0..ROWS)
        .map(|i| generate_row(&cfg, "train", i).unwrap())
        .collect()
}

fn write(dir: &Path, name: &str, rows: Vec<StvqaRow>) -> PathBuf {
    let path = dir.join(name);
    let mut w = SplitWriter::create_file(&path, 4).unwrap();
    for r in rows {
        w.write(r).unwrap();
    }
    w.finish().unwrap();
    path
}

/// Validate with both policies; return the skip report and the `error`-policy error.
fn check(path: &Path) -> (data::ValidationReport, DataError) {
    let files = [path.to_path_buf()];
    let report = validate_files(&files, &ColumnNames::default(), Policy::Skip).unwrap();
    let err = validate_files(&files, &ColumnNames::default(), Policy::Error).unwrap_err();
    (report, err)
}

fn bad_row(err: &DataError) -> (usize, &str, &str) {
    match err {
        DataError::BadRow {
            row, field, reason, ..
        } => (*row, field.as_str(), reason.as_str()),
        other => panic!("expected BadRow, got {other}"),
    }
}

#[test]
fn truncated_image_bytes_are_skipped_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    for (encoding, expected) in [
        (ImageEncoding::Png, "image does not decode"),
        (ImageEncoding::Jpeg, "JPEG is truncated"),
    ] {
        let mut r = rows(encoding);
        for i in [3, 7] {
            let n = r[i].image.bytes.len() / 2;
            r[i].image.bytes.truncate(n);
        }
        let path = write(dir.path(), &format!("{encoding:?}.parquet"), r);
        let (report, err) = check(&path);
        assert_eq!(
            (report.rows, report.bad_rows),
            (ROWS as usize, 2),
            "{encoding:?}"
        );
        let (row, field, reason) = bad_row(&err);
        assert_eq!((row, field), (3, "images"));
        assert!(reason.starts_with(expected), "{encoding:?}: {reason}");
        assert!(
            err.to_string()
                .contains(&format!("{encoding:?}.parquet: row 3: field `images`")),
            "{err}"
        );

        // Training skips the two rows: in file order the 8 good rows make two batches of 4.
        let cfg = LoaderConfig {
            batch_size: 4,
            shuffle: false,
            threads: 2,
            ..LoaderConfig::default()
        };
        let mut loader = Loader::open(std::slice::from_ref(&path), cfg, Cursor::default()).unwrap();
        let rows_of = |b: &data::Batch| {
            b.samples
                .iter()
                .map(|s| s.record.source.row)
                .collect::<Vec<_>>()
        };
        let a = loader.next_batch().unwrap();
        let b = loader.next_batch().unwrap();
        assert_eq!((a.epoch, rows_of(&a)), (0, vec![0, 1, 2, 4]));
        assert_eq!((b.epoch, rows_of(&b)), (0, vec![5, 6, 8, 9]));
        assert_eq!(loader.report().bad_rows, 2);
        assert_eq!(loader.next_batch().unwrap().epoch, 1);
        let under_error = LoaderConfig {
            batch_size: 4,
            policy: Policy::Error,
            shuffle: false,
            ..LoaderConfig::default()
        };
        let mut strict = Loader::open(&[path], under_error, Cursor::default()).unwrap();
        // In file order the first batch reaches row 3, which stops the run.
        let e = strict.next_batch().unwrap_err();
        assert_eq!(bad_row(&e).0, 3);
    }
}

#[test]
fn a_prompt_without_image_size_line_is_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rows(ImageEncoding::Png);
    r[2].problem = r[2]
        .problem
        .replace("Image size: (112 x 112)", "The image is 112 pixels wide.");
    let (report, err) = check(&write(dir.path(), "size.parquet", r));
    assert_eq!(report.bad_rows, 1);
    assert_eq!(report.issues[0].row.row, 2);
    let (row, field, reason) = bad_row(&err);
    assert_eq!((row, field), (2, "problem"));
    assert_eq!(
        reason,
        "no `Image size: (W x H)` line with positive integers"
    );
}

#[test]
fn a_scene_that_is_not_json_is_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rows(ImageEncoding::Png);
    r[5].answer_option_text =
        "<scene>{\"objects\": [{\"id\": \"cup.1\", </scene>\n<answer>(A) yes</answer>".into();
    r[6].answer_option_text = "<scene>{}</scene>".into();
    let (report, err) = check(&write(dir.path(), "scene.parquet", r));
    assert_eq!(report.bad_rows, 2);
    let (row, field, reason) = bad_row(&err);
    assert_eq!((row, field), (5, "answer_option_text"));
    assert!(reason.starts_with("scene is not JSON"), "{reason}");
    let row6: Vec<&str> = report
        .issues
        .iter()
        .filter(|i| i.row.row == 6)
        .map(|i| i.message.as_str())
        .collect();
    assert_eq!(row6, ["no non-empty <answer>...</answer>"]);
}

/// A parquet file with the given columns, all single-row.
fn write_columns(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch =
        RecordBatch::try_new(schema.clone(), columns.into_iter().map(|c| c.1).collect()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn image_column() -> ArrayRef {
    let bytes: ArrayRef = Arc::new(arrow::array::BinaryArray::from_vec(vec![b"x".as_slice()]));
    let path: ArrayRef = Arc::new(StringArray::from(vec![Some("x.png")]));
    Arc::new(arrow::array::StructArray::from(vec![
        (Arc::new(Field::new("bytes", DataType::Binary, true)), bytes),
        (Arc::new(Field::new("path", DataType::Utf8, true)), path),
    ]))
}

#[test]
fn a_missing_column_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.parquet");
    write_columns(
        &path,
        vec![
            ("images", image_column()),
            (
                "answer_option_text",
                Arc::new(StringArray::from(vec!["<answer>x</answer>"])),
            ),
        ],
    );
    let err = ParquetFile::open(&path, &ColumnNames::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::MissingColumn { column, .. } if column == "problem"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: missing column `problem` (columns present: images, answer_option_text)",
            path.display()
        )
    );
    // Policies apply to rows; a file without a required column fails under both.
    assert!(validate_files(
        std::slice::from_ref(&path),
        &ColumnNames::default(),
        Policy::Skip
    )
    .is_err());
    assert!(Loader::open(&[path], LoaderConfig::default(), Cursor::default()).is_err());
}

#[test]
fn a_column_of_the_wrong_type_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrongtype.parquet");
    write_columns(
        &path,
        vec![
            ("images", image_column()),
            ("problem", Arc::new(Int64Array::from(vec![3]))),
            (
                "answer_option_text",
                Arc::new(StringArray::from(vec!["<answer>x</answer>"])),
            ),
        ],
    );
    let err = ParquetFile::open(&path, &ColumnNames::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: column `problem` has type Int64, expected string",
            path.display()
        )
    );
    assert_same_error_everywhere(&path, &err);
    // An image column that is a plain string is rejected too.
    write_columns(
        &path,
        vec![
            ("images", Arc::new(StringArray::from(vec!["x.png"]))),
            ("problem", Arc::new(StringArray::from(vec!["p"]))),
            ("answer_option_text", Arc::new(StringArray::from(vec!["a"]))),
        ],
    );
    let err = ParquetFile::open(&path, &ColumnNames::default()).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "column `images` has type Utf8, expected struct<bytes: binary, path: string>"
        ),
        "{err}"
    );
}

#[test]
fn an_epoch_of_only_bad_rows_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rows(ImageEncoding::Png);
    for row in &mut r {
        row.image.bytes.clear();
    }
    let path = write(dir.path(), "allbad.parquet", r);
    let mut loader = Loader::open(&[path], LoaderConfig::default(), Cursor::default()).unwrap();
    let err = loader.next_batch().unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TooFewRows {
                good: 0,
                batch_size: 1
            }
        ),
        "{err}"
    );
    assert_eq!(loader.report().bad_rows, ROWS as usize);
}

/// The validator (both policies) and the loader fail on `path` with the reader's error.
fn assert_same_error_everywhere(path: &Path, expected: &DataError) {
    let files = [path.to_path_buf()];
    let columns = ColumnNames::default();
    for policy in [Policy::Skip, Policy::Error] {
        let err = validate_files(&files, &columns, policy).unwrap_err();
        assert_eq!(err.to_string(), expected.to_string());
    }
    let err = Loader::open(&files, LoaderConfig::default(), Cursor::default())
        .err()
        .unwrap();
    assert_eq!(err.to_string(), expected.to_string());
}

#[test]
fn a_truncated_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let whole =
        std::fs::read(write(dir.path(), "whole.parquet", rows(ImageEncoding::Png))).unwrap();
    let path = dir.path().join("cut.parquet");
    for len in [whole.len() - 1, whole.len() / 2, 11, 4, 2] {
        std::fs::write(&path, &whole[..len]).unwrap();
        let err = ParquetFile::open(&path, &ColumnNames::default()).unwrap_err();
        assert!(
            matches!(err, DataError::TruncatedParquet { len: l, .. } if l == len as u64),
            "{len} bytes: {err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{}: truncated parquet file: its {len} bytes do not end with the footer magic \
                 `PAR1` (an interrupted download or copy?)",
                path.display()
            )
        );
        assert_same_error_everywhere(&path, &err);
    }
}

#[test]
fn a_file_that_is_not_parquet_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-00000-of-00001.parquet");
    for (bytes, found) in [
        (
            b"problem,answer\nWhere is the cup?,left\n".as_slice(),
            "it starts with \"prob\", not the parquet magic bytes `PAR1`",
        ),
        (
            b"PK\x03".as_slice(),
            "it starts with \"PK\\u{3}\", not the parquet magic bytes `PAR1`",
        ),
        (b"".as_slice(), "the file is empty"),
    ] {
        std::fs::write(&path, bytes).unwrap();
        let err = ParquetFile::open(&path, &ColumnNames::default()).unwrap_err();
        assert!(matches!(err, DataError::NotParquet { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("{}: not a parquet file ({found})", path.display())
        );
        assert_same_error_everywhere(&path, &err);
    }
    // located through its folder, as the trainer and `data validate` do
    let files = data::DatasetFiles::from_path(dir.path()).unwrap();
    let err = Loader::open(
        files.split("train").unwrap(),
        LoaderConfig::default(),
        Cursor::default(),
    )
    .err()
    .unwrap();
    assert!(err
        .to_string()
        .contains("train-00000-of-00001.parquet: not a parquet file"));
}

#[test]
fn a_missing_answer_column_fails_the_same_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.parquet");
    write_columns(
        &path,
        vec![
            ("images", image_column()),
            ("problem", Arc::new(StringArray::from(vec!["p"]))),
        ],
    );
    let err = ParquetFile::open(&path, &ColumnNames::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: missing column `answer_option_text` (columns present: images, problem)",
            path.display()
        )
    );
    assert_same_error_everywhere(&path, &err);
}

#[test]
fn damaged_bytes_inside_a_file_are_an_error_not_a_panic() {
    // footer intact, data pages overwritten: the reader opens the file, reading rows fails
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "damaged.parquet", rows(ImageEncoding::Png));
    let mut bytes = std::fs::read(&path).unwrap();
    let footer_len =
        u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
    let data_end = bytes.len() - 8 - footer_len as usize;
    for b in &mut bytes[4..data_end] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let file = ParquetFile::open(&path, &ColumnNames::default()).unwrap();
    let err = file.read_all().unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", path.display())),
        "{err}"
    );
}
