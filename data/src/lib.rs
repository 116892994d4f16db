//! Datasets in the STVQA-7K schema: parquet reading, validation, synthetic data and import.
