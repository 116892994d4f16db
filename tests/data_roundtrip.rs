//! Round trip of a synthetic dataset: synth → validate (0 bad rows) → stats → read back →
//! every `reference_response` earns the full spatial reward; and training iteration (shuffle,
//! batches, drop_last, resumable cursor).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use data::loader::validate_files;
use data::reader::ParquetFile;
use data::schema::ColumnNames;
use data::synth::{generate_row, write_dataset, SynthConfig};
use data::{Cursor, DatasetFiles, Loader, LoaderConfig, Policy};

fn synth(dir: &Path, train: u64, val: u64) -> DatasetFiles {
    let cfg = SynthConfig {
        seed: 42,
        rows_per_group: 16,
        ..SynthConfig::default()
    };
    write_dataset(&cfg, dir, train, val).unwrap();
    DatasetFiles::locate(dir.to_str().unwrap()).unwrap()
}

fn train_files(files: &DatasetFiles) -> Vec<PathBuf> {
    files.split("train").unwrap().to_vec()
}

#[test]
fn synthetic_dataset_validates_and_reference_responses_score_full_reward() {
    let dir = tempfile::tempdir().unwrap();
    let files = synth(dir.path(), 120, 30);
    assert_eq!(files.splits.keys().collect::<Vec<_>>(), ["train", "val"]);
    let mut categories = BTreeMap::new();
    for (split, paths) in &files.splits {
        let report = validate_files(paths, &ColumnNames::default(), Policy::Error).unwrap();
        assert_eq!(report.bad_rows, 0, "{split}: {:?}", report.issues);
        assert_eq!(report.warnings, 0, "{split}: {:?}", report.issues);
        let stats = data::stats::split_stats(paths, &ColumnNames::default()).unwrap();
        assert_eq!(stats.rows, if split == "train" { 120 } else { 30 });
        assert_eq!(stats.image_sizes.get(&Some((112, 112))), Some(&stats.rows));
        assert!(stats.objects_per_scene.keys().all(|k| k.is_some()));
        for record in ParquetFile::open(&paths[0], &ColumnNames::default())
            .unwrap()
            .read_all()
            .unwrap()
        {
            *categories
                .entry(record.category.clone().unwrap())
                .or_insert(0) += 1;
            let response = record.reference_response.as_deref().unwrap();
            assert_full_reward(response, &record.ground_truth, &record.prompt);
            // The option text of the answer column is one of the options, at the stated letter.
            let options = record.options.as_ref().unwrap();
            assert!(
                (2..=4).contains(&options.len()),
                "{} options",
                options.len()
            );
            let letter = record.answer_only.as_deref().unwrap();
            let index = (letter.as_bytes()[0] - b'A') as usize;
            assert_eq!(options[index], record.answer_text_only.clone().unwrap());
            assert!(record.prompt.contains("Image size: (112 x 112)"));
            assert!(record
                .prompt
                .ends_with(record.question_with_options.as_deref().unwrap()));
        }
    }
    // Seven categories are generated; 150 rows draw each of them.
    assert_eq!(categories.len(), 7, "{categories:?}");
}

/// The spatial reward of the rewards crate gives the reference response its maximum:
/// 1.0, or 0.999999… where the CIoU epsilon shows (docs/recipe.md, "Spatial grounding").
fn assert_full_reward(response: &str, ground_truth: &str, problem: &str) {
    let score = rewards::score(
        rewards::RewardKind::Spatial,
        response,
        ground_truth,
        problem,
        &rewards::ExactLabelSimilarity,
    )
    .unwrap();
    assert_eq!(score.format, 1.0, "{response}");
    assert_eq!(score.accuracy, 1.0, "{response}");
    assert_eq!(score.count, 1.0, "{response}");
    assert!(
        score.spatial > 0.99999,
        "spatial {} for {response}",
        score.spatial
    );
    assert!(
        score.overall > 0.999999 && score.overall <= 1.0,
        "overall {} for {response}",
        score.overall
    );
}

#[test]
fn synthesis_is_deterministic_for_a_seed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    synth(a.path(), 20, 5);
    synth(b.path(), 20, 5);
    for split in ["train", "val"] {
        let rel = format!("data/{split}-00000-of-00001.parquet");
        let x = std::fs::read(a.path().join(&rel)).unwrap();
        let y = std::fs::read(b.path().join(&rel)).unwrap();
        assert!(
            x == y,
            "{split} differs between two runs with the same seed"
        );
    }
    let other = SynthConfig {
        seed: 43,
        ..SynthConfig::default()
    };
    let same = SynthConfig {
        seed: 42,
        ..SynthConfig::default()
    };
    assert_ne!(
        generate_row(&other, "train", 0).unwrap(),
        generate_row(&same, "train", 0).unwrap()
    );
}

fn ids(batch: &data::Batch) -> Vec<String> {
    batch
        .samples
        .iter()
        .map(|s| s.record.image_id.clone().unwrap())
        .collect()
}

fn config(batch_size: usize, drop_last: bool) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        seed: 7,
        drop_last,
        shuffle_window_rows: 40,
        threads: 2,
        ..LoaderConfig::default()
    }
}

#[test]
fn epochs_visit_every_row_once_in_a_seeded_order() {
    let dir = tempfile::tempdir().unwrap();
    let files = synth(dir.path(), 100, 0);
    let paths = train_files(&files);
    // 100 rows, batch 8, drop_last: 12 batches (96 rows) per epoch, then epoch 1 starts.
    let mut loader = Loader::open(&paths, config(8, true), Cursor::default()).unwrap();
    let mut epoch0 = Vec::new();
    for _ in 0..12 {
        let b = loader.next_batch().unwrap();
        assert_eq!(b.epoch, 0);
        assert_eq!(b.samples.len(), 8);
        epoch0.extend(ids(&b));
    }
    let first_of_epoch1 = loader.next_batch().unwrap();
    assert_eq!(first_of_epoch1.epoch, 1);
    assert_eq!(
        first_of_epoch1.cursor,
        Cursor {
            epoch: 1,
            position: 8
        }
    );
    let unique: HashSet<_> = epoch0.iter().collect();
    assert_eq!(unique.len(), 96);
    let file_order: Vec<String> = (0..96).map(|i| format!("synth-train-{i:06}")).collect();
    assert_ne!(epoch0, file_order, "rows were not shuffled");
    // The same seed gives the same order; the next epoch a different one.
    let mut again = Loader::open(&paths, config(8, true), Cursor::default()).unwrap();
    assert_eq!(ids(&again.next_batch().unwrap()), epoch0[..8]);
    assert_ne!(ids(&first_of_epoch1), epoch0[..8]);
    // Decoded images have the stated size.
    assert!(first_of_epoch1
        .samples
        .iter()
        .all(|s| s.image.dimensions() == (112, 112) && s.stated_size == (112, 112)));
}

#[test]
fn without_drop_last_the_short_batch_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let files = synth(dir.path(), 20, 0);
    let mut loader =
        Loader::open(&train_files(&files), config(8, false), Cursor::default()).unwrap();
    let sizes: Vec<(u64, usize)> = (0..4)
        .map(|_| {
            let b = loader.next_batch().unwrap();
            (b.epoch, b.samples.len())
        })
        .collect();
    assert_eq!(sizes, [(0, 8), (0, 8), (0, 4), (1, 8)]);
}

#[test]
fn a_saved_cursor_resumes_with_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let files = synth(dir.path(), 50, 0);
    let paths = train_files(&files);
    let mut straight = Loader::open(&paths, config(6, true), Cursor::default()).unwrap();
    let mut reference = Vec::new();
    let mut saved = None;
    for step in 0..14 {
        let b = straight.next_batch().unwrap();
        if step == 4 {
            // A checkpoint stores the cursor as JSON.
            saved = Some(serde_json::to_string(&b.cursor).unwrap());
        }
        if step > 4 {
            reference.push(ids(&b));
        }
    }
    let cursor: Cursor = serde_json::from_str(saved.as_deref().unwrap()).unwrap();
    assert_eq!(
        cursor,
        Cursor {
            epoch: 0,
            position: 30
        }
    );
    let mut resumed = Loader::open(&paths, config(6, true), cursor).unwrap();
    for expected in reference {
        assert_eq!(ids(&resumed.next_batch().unwrap()), expected);
    }
}

#[test]
fn one_pass_stops_at_the_end_of_the_epoch_without_reading_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let files = synth(dir.path(), 24, 0);
    let paths = train_files(&files);
    // 24 rows in batches of 8 end exactly on the boundary; batches of 10 leave a short one
    for (batch_size, batches) in [(8usize, 3usize), (10, 3)] {
        let mut loader =
            Loader::open(&paths, config(batch_size, false), Cursor::default()).unwrap();
        let mut seen = Vec::new();
        let mut count = 0;
        while let Some(b) = loader.next_batch_of(0).unwrap() {
            assert_eq!(b.epoch, 0);
            seen.extend(ids(&b));
            count += 1;
        }
        assert_eq!(count, batches, "batch size {batch_size}");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 24, "every row once, batch size {batch_size}");
        assert!(loader.next_batch_of(0).unwrap().is_none());
        // the next epoch is still whole
        let next = loader.next_batch().unwrap();
        assert_eq!((next.epoch, next.samples.len()), (1, batch_size));
    }
}

#[test]
fn read_row_finds_each_row_across_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let files = synth(dir.path(), 40, 2);
    let file = ParquetFile::open(&train_files(&files)[0], &ColumnNames::default()).unwrap();
    // 40 rows in groups of 16: 0-15, 16-31, 32-39
    assert_eq!(file.row_group_offsets(), vec![0, 16, 32]);
    let all: Vec<_> = (0..3)
        .flat_map(|g| file.read_row_group(g).unwrap())
        .collect();
    for row in [0, 15, 16, 31, 32, 39] {
        let record = file.read_row(row).unwrap().unwrap();
        assert_eq!(record.image_id, all[row].image_id, "row {row}");
    }
    assert!(file.read_row(40).unwrap().is_none());
}
