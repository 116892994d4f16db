//! Hub resolution: a clear error when a repository is neither cached nor reachable, and use of a
//! pre-filled HF cache folder without the network.

use std::path::Path;

use data::hub::{resolve_repo_in, RepoType};

/// Build `<cache>/datasets--owner--name/{refs/main, snapshots/<commit>/data/train-….parquet}`.
fn fill_cache(cache: &Path, repo_folder: &str, commit: &str, file: &str, bytes: &[u8]) {
    let repo = cache.join(repo_folder);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let target = repo.join("snapshots").join(commit).join(file);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(target, bytes).unwrap();
}

#[test]
fn uncached_and_unreachable_gives_a_clear_message() {
    let cache = tempfile::tempdir().unwrap();
    // Offline mode makes the outcome independent of the network; the hub is unreachable here anyway.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let err = resolve_repo_in(
        cache.path(),
        "OX-PIXL/STVQA-7K",
        RepoType::Dataset,
        None,
        |f| f.ends_with(".parquet"),
    )
    .unwrap_err();
    let msg = err.to_string();
    let folder = cache.path().join("datasets--OX-PIXL--STVQA-7K");
    assert_eq!(
        msg,
        format!(
            "dataset `OX-PIXL/STVQA-7K` (revision `main`) is not in the Hugging Face cache ({}) and \
             could not be downloaded: HF_HUB_OFFLINE is set. Download it where the hub is reachable \
             (`huggingface-cli download --repo-type dataset OX-PIXL/STVQA-7K`) and copy the cache \
             folder here (set HF_HOME to its parent), or pass a local path instead of a hub id",
            folder.display()
        )
    );
}

#[test]
fn a_prefilled_cache_is_used_offline() {
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    fill_cache(
        cache.path(),
        "datasets--OX-PIXL--STVQA-7K",
        commit,
        "data/train-00000-of-00001.parquet",
        b"PAR1",
    );
    let snapshot = resolve_repo_in(
        cache.path(),
        "OX-PIXL/STVQA-7K",
        RepoType::Dataset,
        None,
        |f| f.ends_with(".parquet"),
    )
    .unwrap();
    assert_eq!(
        snapshot,
        cache
            .path()
            .join("datasets--OX-PIXL--STVQA-7K/snapshots")
            .join(commit)
    );
    // A commit hash as revision finds the same snapshot without a ref file.
    let by_commit = resolve_repo_in(
        cache.path(),
        "OX-PIXL/STVQA-7K",
        RepoType::Dataset,
        Some(commit),
        |f| f.ends_with(".parquet"),
    )
    .unwrap();
    assert_eq!(by_commit, snapshot);
    // Models use the same layout (`models--owner--name`).
    fill_cache(
        cache.path(),
        "models--Qwen--Tiny",
        commit,
        "model.safetensors",
        b"{}",
    );
    let model = resolve_repo_in(cache.path(), "Qwen/Tiny", RepoType::Model, None, |f| {
        f == "model.safetensors"
    })
    .unwrap();
    assert!(model.join("model.safetensors").is_file());
    // A cached snapshot without any wanted file counts as not cached.
    assert!(
        resolve_repo_in(cache.path(), "Qwen/Tiny", RepoType::Model, None, |f| f
            .ends_with(".parquet"))
        .is_err()
    );
}

#[test]
fn a_synthetic_dataset_in_the_cache_opens_by_hub_id() {
    let home = tempfile::tempdir().unwrap();
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let snapshot = home
        .path()
        .join("hub/datasets--me--tiny-spatial/snapshots")
        .join(commit);
    let cfg = data::synth::SynthConfig::default();
    data::synth::write_dataset(&cfg, &snapshot, 4, 2).unwrap();
    let refs = home.path().join("hub/datasets--me--tiny-spatial/refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("main"), commit).unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let files = data::DatasetFiles::locate("me/tiny-spatial").unwrap();
    assert_eq!(files.root, snapshot);
    assert_eq!(files.split("train").unwrap().len(), 1);
    assert_eq!(files.split("val").unwrap().len(), 1);
    assert!(files
        .split("test")
        .unwrap_err()
        .to_string()
        .contains("available: train, val"));
}
