//! Dataset statistics for `spatialthinker data stats`: rows per split, categories, levels,
//! image sizes, objects per scene and answers per option letter.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::error::Result;
use crate::reader::ParquetFile;
use crate::record::Record;
use crate::schema::ColumnNames;
use crate::validate::{answer_text, ground_truth_scene};

/// Counts for one split. Rows whose field is missing are counted under `"-"` / `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitStats {
    /// Rows in the split.
    pub rows: usize,
    /// `category` → rows.
    pub categories: BTreeMap<String, usize>,
    /// `level` → rows.
    pub levels: BTreeMap<String, usize>,
    /// Image `(W, H)` read from the encoded header (`None`: unreadable) → rows.
    pub image_sizes: BTreeMap<Option<(u32, u32)>, usize>,
    /// Objects in the ground-truth scene (`None`: unparseable) → rows.
    pub objects_per_scene: BTreeMap<Option<usize>, usize>,
    /// Correct option letter → rows.
    pub answer_letters: BTreeMap<String, usize>,
}

impl SplitStats {
    /// Add one row.
    pub fn add(&mut self, r: &Record) {
        self.rows += 1;
        let key = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        *self.categories.entry(key(&r.category)).or_default() += 1;
        *self.levels.entry(key(&r.level)).or_default() += 1;
        let size = image::ImageReader::new(std::io::Cursor::new(&r.image.bytes))
            .with_guessed_format()
            .ok()
            .and_then(|reader| reader.into_dimensions().ok());
        *self.image_sizes.entry(size).or_default() += 1;
        let objects = ground_truth_scene(&r.ground_truth).ok().map(|scene| {
            scene
                .get("objects")
                .and_then(|o| o.as_array())
                .map_or(0, Vec::len)
        });
        *self.objects_per_scene.entry(objects).or_default() += 1;
        *self.answer_letters.entry(answer_letter(r)).or_default() += 1;
    }
}

/// The correct option letter: `answer_only`, else the `(X)` prefix of the ground-truth answer.
fn answer_letter(r: &Record) -> String {
    if let Some(letter) = r.answer_only.as_deref().filter(|s| !s.is_empty()) {
        return letter.trim().to_string();
    }
    answer_text(&r.ground_truth)
        .and_then(|a| a.strip_prefix('('))
        .and_then(|a| a.split_once(')'))
        .map_or_else(|| "-".into(), |(letter, _)| letter.to_string())
}

/// Statistics of one split's files (no image decoding; headers only).
pub fn split_stats(files: &[PathBuf], columns: &ColumnNames) -> Result<SplitStats> {
    let mut stats = SplitStats::default();
    for path in files {
        let file = ParquetFile::open(path, columns)?;
        for rg in 0..file.row_group_rows.len() {
            for record in file.read_row_group(rg)? {
                stats.add(&record);
            }
        }
    }
    Ok(stats)
}

/// Render per-split statistics as aligned text tables.
pub fn render_tables(splits: &BTreeMap<String, SplitStats>) -> String {
    let mut out = String::new();
    let names: Vec<&String> = splits.keys().collect();
    let mut table = |title: &str, rows: Vec<(String, Vec<usize>)>| {
        let width = rows
            .iter()
            .map(|r| r.0.len())
            .chain([title.len()])
            .max()
            .unwrap_or(0);
        let _ = write!(out, "{title:<width$}");
        for n in &names {
            let _ = write!(out, " {n:>8}");
        }
        out.push('\n');
        for (label, counts) in rows {
            let _ = write!(out, "{label:<width$}");
            for c in counts {
                let _ = write!(out, " {c:>8}");
            }
            out.push('\n');
        }
        out.push('\n');
    };
    let collect = |get: &dyn Fn(&SplitStats) -> Vec<(String, usize)>| -> Vec<(String, Vec<usize>)> {
        let mut keys: Vec<String> = Vec::new();
        for s in splits.values() {
            for (k, _) in get(s) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        keys.sort();
        keys.into_iter()
            .map(|k| {
                let counts = splits
                    .values()
                    .map(|s| {
                        get(s)
                            .into_iter()
                            .find(|(kk, _)| *kk == k)
                            .map_or(0, |(_, c)| c)
                    })
                    .collect();
                (k, counts)
            })
            .collect()
    };
    table(
        "rows",
        vec![("rows".into(), splits.values().map(|s| s.rows).collect())],
    );
    table(
        "category",
        collect(&|s| s.categories.iter().map(|(k, v)| (k.clone(), *v)).collect()),
    );
    table(
        "level",
        collect(&|s| s.levels.iter().map(|(k, v)| (k.clone(), *v)).collect()),
    );
    table(
        "image size",
        collect(&|s| {
            s.image_sizes
                .iter()
                .map(|(k, v)| {
                    (
                        k.map_or("unreadable".into(), |(w, h)| format!("{w:>5} x {h:<5}")),
                        *v,
                    )
                })
                .collect()
        }),
    );
    table(
        "objects per scene",
        collect(&|s| {
            s.objects_per_scene
                .iter()
                .map(|(k, v)| (k.map_or("unparseable".into(), |n| format!("{n:>3}")), *v))
                .collect()
        }),
    );
    table(
        "answer letter",
        collect(&|s| {
            s.answer_letters
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        }),
    );
    out
}
