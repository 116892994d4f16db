//! Hugging Face hub repositories (datasets and models) in the standard HF cache layout:
//! `$HF_HOME/hub/<type>s--<owner>--<name>/{refs/<revision>, snapshots/<commit>/<file>, blobs/}`.
//!
//! Honours `HF_HOME` (cache root, default `~/.cache/huggingface`), `HF_HUB_OFFLINE=1` (never touch
//! the network), `HF_TOKEN` (else the `token` file of the cache root) and `HF_ENDPOINT`. A repository
//! already in the cache is used without the network; otherwise its files are downloaded with
//! `hf-hub`; when neither works the error says both what was looked for and what failed.

use std::path::{Path, PathBuf};

pub use hf_hub::RepoType;
use hf_hub::{Cache, Repo};

/// Environment variable naming the HF home folder (the cache is its `hub/` subfolder).
pub const HF_HOME: &str = "HF_HOME";
/// Environment variable that, when `1`/`true`/`yes`, forbids network access.
pub const HF_HUB_OFFLINE: &str = "HF_HUB_OFFLINE";
/// Environment variable holding an access token.
pub const HF_TOKEN: &str = "HF_TOKEN";
/// Environment variable overriding the hub URL.
pub const HF_ENDPOINT: &str = "HF_ENDPOINT";
/// The branch used when no revision is given.
pub const DEFAULT_REVISION: &str = "main";

/// Why a hub repository could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Not in the cache, and the hub could not be used.
    #[error(
        "{kind} `{repo_id}` (revision `{revision}`) is not in the Hugging Face cache ({cache}) \
         and could not be downloaded: {reason}. Download it where the hub is reachable \
         (`huggingface-cli download{type_flag} {repo_id}`) and copy the cache folder here \
         (set HF_HOME to its parent), or pass a local path instead of a hub id"
    )]
    Unavailable {
        kind: &'static str,
        repo_id: String,
        revision: String,
        cache: PathBuf,
        type_flag: &'static str,
        reason: String,
    },
    /// The repository was found but contains no file the caller wants.
    #[error("{kind} `{repo_id}`: none of its files matched ({where_})")]
    NoMatchingFiles {
        kind: &'static str,
        repo_id: String,
        where_: String,
    },
    /// The cache folder could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The HF cache root's `hub/` folder: `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os(HF_HOME) {
        Some(home) if !home.is_empty() => PathBuf::from(home).join("hub"),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache/huggingface/hub"),
    }
}

/// Whether `HF_HUB_OFFLINE` asks for no network access.
pub fn offline() -> bool {
    std::env::var(HF_HUB_OFFLINE)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

fn kind_name(repo_type: RepoType) -> (&'static str, &'static str) {
    match repo_type {
        RepoType::Model => ("model", ""),
        RepoType::Dataset => ("dataset", " --repo-type dataset"),
        RepoType::Space => ("space", " --repo-type space"),
    }
}

/// The cache folder of a repository: `<cache>/<datasets|models|spaces>--owner--name`.
pub fn repo_cache_dir(cache: &Path, repo_id: &str, repo_type: RepoType) -> PathBuf {
    cache.join(Repo::new(repo_id.to_string(), repo_type).folder_name())
}

/// Resolve `repo_id` at `revision` (default `main`) to its snapshot folder, holding every file
/// for which `wanted(path_in_repo)` is true. The cache is tried first (offline use); then, unless
/// `HF_HUB_OFFLINE` is set, the hub's file list is fetched and missing wanted files downloaded.
pub fn resolve_repo(
    repo_id: &str,
    repo_type: RepoType,
    revision: Option<&str>,
    wanted: impl Fn(&str) -> bool,
) -> Result<PathBuf, HubError> {
    resolve_repo_in(&cache_dir(), repo_id, repo_type, revision, wanted)
}

/// [`resolve_repo`] with an explicit cache folder (the `hub/` folder itself).
pub fn resolve_repo_in(
    cache: &Path,
    repo_id: &str,
    repo_type: RepoType,
    revision: Option<&str>,
    wanted: impl Fn(&str) -> bool,
) -> Result<PathBuf, HubError> {
    let revision = revision.unwrap_or(DEFAULT_REVISION);
    let (kind, type_flag) = kind_name(repo_type);
    if let Some(snapshot) = cached_snapshot(cache, repo_id, repo_type, revision)? {
        if has_wanted_file(&snapshot, &wanted)? {
            return Ok(snapshot);
        }
    }
    let unavailable = |reason: String| HubError::Unavailable {
        kind,
        repo_id: repo_id.to_string(),
        revision: revision.to_string(),
        cache: repo_cache_dir(cache, repo_id, repo_type),
        type_flag,
        reason,
    };
    if offline() {
        return Err(unavailable(format!("{HF_HUB_OFFLINE} is set")));
    }
    let token = std::env::var(HF_TOKEN)
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| Cache::new(cache.to_path_buf()).token());
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(cache.to_path_buf()));
    if let Ok(endpoint) = std::env::var(HF_ENDPOINT) {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder
        .with_token(token)
        .with_progress(false)
        .with_retries(0)
        .build()
        .map_err(|e| unavailable(format!("hub client: {e}")))?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        repo_type,
        revision.to_string(),
    ));
    let info = repo
        .info()
        .map_err(|e| unavailable(format!("hub not reachable: {e}")))?;
    let files: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|f| wanted(f))
        .collect();
    let first = files.first().ok_or_else(|| HubError::NoMatchingFiles {
        kind,
        repo_id: repo_id.to_string(),
        where_: format!("hub revision {}", info.sha),
    })?;
    let mut snapshot = None;
    for file in &files {
        let local = repo
            .get(file)
            .map_err(|e| unavailable(format!("downloading {file}: {e}")))?;
        if file == first {
            snapshot = snapshot_of(&local, file);
        }
    }
    snapshot
        .ok_or_else(|| unavailable("the downloaded file is not inside a snapshot folder".into()))
}

/// The snapshot folder of a cached file `local` whose path in the repo is `file`.
fn snapshot_of(local: &Path, file: &str) -> Option<PathBuf> {
    let mut dir = local.to_path_buf();
    for _ in Path::new(file).components() {
        dir = dir.parent()?.to_path_buf();
    }
    Some(dir)
}

/// The cached snapshot for `revision` (a branch/tag name under `refs/`, or a commit hash), if any.
fn cached_snapshot(
    cache: &Path,
    repo_id: &str,
    repo_type: RepoType,
    revision: &str,
) -> Result<Option<PathBuf>, HubError> {
    let repo_dir = repo_cache_dir(cache, repo_id, repo_type);
    let snapshots = repo_dir.join("snapshots");
    let ref_file = repo_dir.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(c) => c.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => revision.to_string(),
        Err(source) => {
            return Err(HubError::Io {
                path: ref_file,
                source,
            })
        }
    };
    let dir = snapshots.join(commit);
    Ok(dir.is_dir().then_some(dir))
}

/// Whether any file below `dir` (relative path with `/`) is wanted.
fn has_wanted_file(dir: &Path, wanted: &impl Fn(&str) -> bool) -> Result<bool, HubError> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| HubError::Io {
            path: d.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                let rel = rel.to_string_lossy().replace('\\', "/");
                if wanted(&rel) {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_of_strips_the_repo_path() {
        let local = Path::new("/c/datasets--a--b/snapshots/abc/data/train-0.parquet");
        assert_eq!(
            snapshot_of(local, "data/train-0.parquet").unwrap(),
            PathBuf::from("/c/datasets--a--b/snapshots/abc")
        );
    }

    #[test]
    fn repo_folder_names_follow_the_hf_layout() {
        let c = Path::new("/c");
        assert_eq!(
            repo_cache_dir(c, "OX-PIXL/STVQA-7K", RepoType::Dataset),
            PathBuf::from("/c/datasets--OX-PIXL--STVQA-7K")
        );
        assert_eq!(
            repo_cache_dir(c, "Qwen/Qwen2.5-VL-3B-Instruct", RepoType::Model),
            PathBuf::from("/c/models--Qwen--Qwen2.5-VL-3B-Instruct")
        );
    }
}
