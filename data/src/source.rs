//! Locating a dataset: an HF dataset folder (`data/train-*.parquet`, `data/val-*.parquet`), a
//! folder of parquet files, a single parquet file, or a Hugging Face hub id (`owner/name`,
//! optionally `owner/name@revision`) resolved through the HF cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::hub::{self, RepoType};

/// Split name of STVQA-7K's training split.
pub const TRAIN: &str = "train";
/// Split name of STVQA-7K's validation split (not `validation`).
pub const VAL: &str = "val";
/// Split names recognised as a file-name prefix (`<split>-00000-of-00001.parquet`).
const KNOWN_SPLITS: [&str; 4] = [TRAIN, VAL, "validation", "test"];

/// A located dataset: its parquet files grouped by split.
#[derive(Debug, Clone)]
pub struct DatasetFiles {
    /// The folder or file the files were found in (the hub snapshot for hub ids).
    pub root: PathBuf,
    /// Split name → parquet files in name order.
    pub splits: BTreeMap<String, Vec<PathBuf>>,
}

impl DatasetFiles {
    /// Locate `arg`: an existing local path, else a hub id.
    pub fn locate(arg: &str) -> Result<Self> {
        let path = Path::new(arg);
        if path.exists() {
            return Self::from_path(path);
        }
        if looks_like_hub_id(arg) {
            let (repo_id, revision) = match arg.split_once('@') {
                Some((id, rev)) => (id, Some(rev)),
                None => (arg, None),
            };
            let snapshot = hub::resolve_repo(repo_id, RepoType::Dataset, revision, |f| {
                f.ends_with(".parquet")
            })?;
            return Self::from_path(&snapshot);
        }
        Err(DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ))
    }

    /// Locate parquet files under a local file or folder.
    pub fn from_path(path: &Path) -> Result<Self> {
        let files = if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            let data = path.join("data");
            let mut files = parquet_files_in(&data)?;
            if files.is_empty() {
                files = parquet_files_in(path)?;
            }
            files
        };
        if files.is_empty() {
            return Err(DataError::NoParquet {
                path: path.to_path_buf(),
            });
        }
        let mut splits: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for file in files {
            splits.entry(split_of(&file)).or_default().push(file);
        }
        Ok(Self {
            root: path.to_path_buf(),
            splits,
        })
    }

    /// The files of `split`, or an error listing the splits present.
    pub fn split(&self, split: &str) -> Result<&[PathBuf]> {
        self.splits
            .get(split)
            .map(Vec::as_slice)
            .ok_or_else(|| DataError::NoSplit {
                split: split.to_string(),
                available: self.splits.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }
}

/// `owner/name` (letters, digits, `-_.`), optionally `@revision`, and not an absolute path.
fn looks_like_hub_id(arg: &str) -> bool {
    let id = arg.split_once('@').map_or(arg, |(id, _)| id);
    let mut parts = id.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Parquet files directly inside `dir` (none if `dir` does not exist), sorted by name.
fn parquet_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "parquet") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `train-00000-of-00001.parquet` → `train`; files without a known split prefix are `train`.
fn split_of(file: &Path) -> String {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let prefix = stem.split(['-', '.']).next().unwrap_or_default();
    KNOWN_SPLITS
        .iter()
        .find(|s| **s == prefix)
        .map_or(TRAIN, |s| *s)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_come_from_file_prefixes() {
        assert_eq!(
            split_of(Path::new("data/train-00000-of-00002.parquet")),
            "train"
        );
        assert_eq!(
            split_of(Path::new("data/val-00000-of-00001.parquet")),
            "val"
        );
        assert_eq!(split_of(Path::new("x/mine.parquet")), "train");
    }

    #[test]
    fn hub_ids_are_told_from_paths() {
        assert!(looks_like_hub_id("OX-PIXL/STVQA-7K"));
        assert!(looks_like_hub_id("OX-PIXL/STVQA-7K@main"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("./rel/x"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("file.parquet"));
    }
}
