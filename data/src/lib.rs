//! Datasets in the STVQA-7K schema (docs/recipe.md, "Dataset schema"): locating them (local folders or the
//! Hugging Face hub), streaming and validating rows for training, statistics, synthetic spatial
//! VQA that is exact by construction, and import of user JSONL datasets.
// Errors carry the file, row and field they name, so they are large; that is intended.
#![allow(clippy::result_large_err)]

pub mod error;
pub mod hub;
pub mod import;
pub mod loader;
pub mod prompt;
pub mod reader;
pub mod record;
pub mod rng;
pub mod scene;
pub mod schema;
pub mod source;
pub mod stats;
pub mod synth;
pub mod testing;
pub mod validate;
pub mod writer;

pub use error::{DataError, Result};
pub use loader::{Batch, Cursor, Loader, LoaderConfig};
pub use record::{ImageData, Record, RowRef, Sample};
pub use schema::ColumnNames;
pub use source::DatasetFiles;
pub use validate::{Checks, Policy, ValidationReport};
