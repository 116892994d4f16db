//! Checkpoints in the Hugging Face layout plus the trainer state, written atomically.
//!
//! A checkpoint is a folder `checkpoint-<step>` holding what `transformers` loads
//! (`config.json`, `model-0000i-of-0000n.safetensors` shards, `model.safetensors.index.json`,
//! tokenizer/processor/generation-config files copied from the base model) and what `--resume`
//! needs (`trainer_state.json`, `optimizer.safetensors`). It is written into a hidden temporary
//! folder which is renamed into place only when every file is on disk, so a crash at any point
//! leaves the previous checkpoints intact; folders that are not named `checkpoint-<step>` are
//! ignored by the loader and removed by the next save.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{Result, TrainError};
use crate::grpo::optim::AnyPrecisionAdamW;

/// Name prefix of complete checkpoint folders.
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";
/// Name prefix of folders being written.
pub const TEMP_PREFIX: &str = ".tmp-checkpoint-";
/// Index of the sharded weights (Hugging Face name).
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Trainer state file (step, data cursor, RNG, optimiser step counts).
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// Optimiser buffers.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Name prefix of the folder where ranks stage their optimiser shards for rank 0.
pub const SHARD_STAGING_PREFIX: &str = ".optimizer-shards-";
/// Default largest shard, as Hugging Face's `max_shard_size="5GB"`.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Everything besides tensors that `--resume` needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// RL steps completed.
    pub rl_step: u64,
    /// Optimiser steps completed.
    pub optimizer_step: u64,
    /// Position of the data loader (opaque to the checkpoint code).
    pub data_cursor: serde_json::Value,
    /// State of the trainer's random number generators (opaque).
    pub rng: serde_json::Value,
    /// Per-parameter AdamW step counts (parameters without state are absent).
    #[serde(default)]
    pub optimizer_param_steps: Vec<(String, u64)>,
    /// Anything else the loop wants back (metrics history, config hash…).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// The model part of a checkpoint.
#[derive(Debug)]
pub struct ModelFiles<'a> {
    /// Weights with their Hugging Face key names.
    pub tensors: &'a [(String, Tensor)],
    /// Convert the weights to this kind when writing (`None`: keep each tensor's kind).
    pub save_kind: Option<Kind>,
    /// The model's `config.json` content.
    pub config_json: &'a serde_json::Value,
    /// Files copied verbatim (tokenizer, processor, chat template, generation config…).
    pub copy_files: &'a [PathBuf],
    /// A LoRA run's `adapter_config.json`: then `tensors` are the adapters, written as PEFT's
    /// `adapter_model.safetensors` instead of model shards (the base stays where it was read).
    pub adapter_config: Option<&'a serde_json::Value>,
}

/// Writes and prunes checkpoints under one folder.
#[derive(Debug, Clone)]
pub struct CheckpointManager {
    root: PathBuf,
    keep_last: usize,
    max_shard_bytes: u64,
}

struct OwnedView {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &OwnedView {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn st_dtype(kind: Kind, name: &str) -> Result<safetensors::Dtype> {
    use safetensors::Dtype;
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => {
            return Err(TrainError::Invalid(format!(
                "tensor {name}: kind {other:?} cannot be saved"
            )))
        }
    })
}

fn to_view(name: &str, t: &Tensor, kind: Option<Kind>) -> Result<OwnedView> {
    let t = t.f_detach()?;
    let t = match kind {
        Some(k) if t.is_floating_point() => t.f_to_kind(k)?,
        _ => t,
    };
    let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(OwnedView {
        dtype: st_dtype(t.kind(), name)?,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

fn write_safetensors(path: &Path, views: &[(String, OwnedView)]) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let items: Vec<(&str, &OwnedView)> = views.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let bytes =
        safetensors::serialize(items, Some(metadata)).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    write_synced(path, &bytes)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes).map_err(|e| TrainError::io(path, e))?;
    f.sync_all().map_err(|e| TrainError::io(path, e))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| TrainError::io(path, e))
}

fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

impl CheckpointManager {
    /// Checkpoints go to `root/checkpoint-<step>`; only the newest `keep_last` are kept.
    pub fn new(root: impl Into<PathBuf>, keep_last: usize, max_shard_bytes: u64) -> Self {
        CheckpointManager {
            root: root.into(),
            keep_last: keep_last.max(1),
            max_shard_bytes: max_shard_bytes.max(1),
        }
    }

    /// The folder checkpoints are written to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Complete checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        list_checkpoints(&self.root)
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        Ok(self.list()?.pop().map(|(_, p)| p))
    }

    /// Writes `checkpoint-<step>` atomically, then removes older checkpoints beyond `keep_last`
    /// and leftovers of interrupted writes. Returns the checkpoint folder.
    pub fn save(
        &self,
        step: u64,
        model: &ModelFiles<'_>,
        optimizer: Option<&AnyPrecisionAdamW>,
        state: &TrainerState,
    ) -> Result<PathBuf> {
        self.save_with_progress(step, model, optimizer, state, &mut |_| {})
    }

    /// [`Self::save`], calling `on_file` after each file is written into the temporary folder.
    pub fn save_with_progress(
        &self,
        step: u64,
        model: &ModelFiles<'_>,
        optimizer: Option<&AnyPrecisionAdamW>,
        state: &TrainerState,
        on_file: &mut dyn FnMut(&Path),
    ) -> Result<PathBuf> {
        let optimizer = match optimizer {
            Some(opt) => OptimizerFiles::Whole(opt),
            None => OptimizerFiles::None,
        };
        self.save_inner(step, model, optimizer, state, on_file)
    }

    /// The folder of the checkpoint of `step`.
    pub fn checkpoint_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!("{CHECKPOINT_PREFIX}{step}"))
    }

    /// The folder where ranks other than 0 put their optimiser shards for the checkpoint of
    /// `step` before rank 0 publishes it ([`Self::save_sharded`]).
    pub fn shard_staging_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!("{SHARD_STAGING_PREFIX}{step}"))
    }

    /// [`Self::save`] for rank 0 of a data-parallel run whose optimiser state is sharded over
    /// `world` ranks: rank 0's shard is written with the checkpoint, and the other ranks'
    /// shards, already in [`Self::shard_staging_dir`], are moved in before the checkpoint is
    /// renamed into place (so it is published with every shard or not at all).
    pub fn save_sharded(
        &self,
        step: u64,
        model: &ModelFiles<'_>,
        own: &AnyPrecisionAdamW,
        world: usize,
        state: &TrainerState,
    ) -> Result<PathBuf> {
        let staged = self.shard_staging_dir(step);
        let optimizer = OptimizerFiles::Sharded {
            own,
            world,
            staged: &staged,
        };
        let dir = self.save_inner(step, model, optimizer, state, &mut |_| {})?;
        if staged.exists() {
            fs::remove_dir_all(&staged).map_err(|e| TrainError::io(&staged, e))?;
        }
        Ok(dir)
    }

    fn save_inner(
        &self,
        step: u64,
        model: &ModelFiles<'_>,
        optimizer: OptimizerFiles<'_>,
        state: &TrainerState,
        on_file: &mut dyn FnMut(&Path),
    ) -> Result<PathBuf> {
        fs::create_dir_all(&self.root).map_err(|e| TrainError::io(&self.root, e))?;
        self.remove_temp_dirs()?;
        let tmp = self
            .root
            .join(format!("{TEMP_PREFIX}{step}-{}", std::process::id()));
        fs::create_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;

        // config.json and the copied tokenizer/processor/generation files.
        let cfg_path = tmp.join("config.json");
        let cfg_text = serde_json::to_string_pretty(model.config_json).map_err(|e| {
            TrainError::Checkpoint {
                path: cfg_path.clone(),
                msg: e.to_string(),
            }
        })?;
        write_synced(&cfg_path, cfg_text.as_bytes())?;
        on_file(&cfg_path);
        for src in model.copy_files {
            let name = src.file_name().ok_or_else(|| TrainError::Checkpoint {
                path: src.clone(),
                msg: "not a file".into(),
            })?;
            let bytes = fs::read(src).map_err(|e| TrainError::io(src, e))?;
            let dst = tmp.join(name);
            write_synced(&dst, &bytes)?;
            on_file(&dst);
        }

        // Weights: shards of at most max_shard_bytes in key order, and the index; or the adapters.
        match model.adapter_config {
            None => self.write_weights(&tmp, model, on_file)?,
            Some(adapter_config) => {
                use crate::model::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
                let views = model
                    .tensors
                    .iter()
                    .map(|(n, t)| Ok((n.clone(), to_view(n, t, None)?)))
                    .collect::<Result<Vec<_>>>()?;
                let path = tmp.join(ADAPTER_WEIGHTS_FILE);
                write_safetensors(&path, &views)?;
                on_file(&path);
                let path = tmp.join(ADAPTER_CONFIG_FILE);
                let text = serde_json::to_string_pretty(adapter_config)?;
                write_synced(&path, text.as_bytes())?;
                on_file(&path);
            }
        }

        // Trainer state and optimiser buffers.
        let mut state = state.clone();
        match optimizer {
            OptimizerFiles::None => {}
            OptimizerFiles::Whole(opt) => {
                let (tensors, steps) = opt.state_tensors();
                let views = tensors
                    .iter()
                    .map(|(n, t)| Ok((n.clone(), to_view(n, t, None)?)))
                    .collect::<Result<Vec<_>>>()?;
                let path = tmp.join(OPTIMIZER_FILE);
                write_safetensors(&path, &views)?;
                on_file(&path);
                state.optimizer_param_steps = steps;
            }
            OptimizerFiles::Sharded { own, world, staged } => {
                for path in write_optimizer_shard(&tmp, own, 0, world)? {
                    on_file(&path);
                }
                for rank in 1..world {
                    for name in shard_file_names(rank, world) {
                        let (src, dst) = (staged.join(&name), tmp.join(&name));
                        fs::rename(&src, &dst).map_err(|e| TrainError::Checkpoint {
                            path: src.clone(),
                            msg: format!("rank {rank}'s optimizer shard is missing: {e}"),
                        })?;
                        on_file(&dst);
                    }
                }
            }
        }
        let state_path = tmp.join(TRAINER_STATE_FILE);
        let text = serde_json::to_string_pretty(&state).map_err(|e| TrainError::Checkpoint {
            path: state_path.clone(),
            msg: e.to_string(),
        })?;
        write_synced(&state_path, text.as_bytes())?;
        on_file(&state_path);
        sync_dir(&tmp)?;

        // Publish: rename into place (replacing a checkpoint of the same step).
        let final_dir = self.root.join(format!("{CHECKPOINT_PREFIX}{step}"));
        if final_dir.exists() {
            let old = self
                .root
                .join(format!("{TEMP_PREFIX}old-{step}-{}", std::process::id()));
            fs::rename(&final_dir, &old).map_err(|e| TrainError::io(&final_dir, e))?;
            fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
            fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        } else {
            fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
        }
        sync_dir(&self.root)?;

        let all = self.list()?;
        if all.len() > self.keep_last {
            for (_, dir) in &all[..all.len() - self.keep_last] {
                fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
            }
        }
        Ok(final_dir)
    }

    fn write_weights(
        &self,
        dir: &Path,
        model: &ModelFiles<'_>,
        on_file: &mut dyn FnMut(&Path),
    ) -> Result<()> {
        let mut names: Vec<usize> = (0..model.tensors.len()).collect();
        names.sort_by(|&a, &b| model.tensors[a].0.cmp(&model.tensors[b].0));
        for w in names.windows(2) {
            if model.tensors[w[0]].0 == model.tensors[w[1]].0 {
                return Err(TrainError::Invalid(format!(
                    "duplicate weight name {}",
                    model.tensors[w[0]].0
                )));
            }
        }
        // Plan shards by byte size.
        let elt = |t: &Tensor| match model.save_kind {
            Some(k) if t.is_floating_point() => k.elt_size_in_bytes(),
            _ => t.kind().elt_size_in_bytes(),
        } as u64;
        let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
        let mut current = 0u64;
        let mut total = 0u64;
        for &i in &names {
            let t = &model.tensors[i].1;
            let bytes = t.numel() as u64 * elt(t);
            if current > 0 && current + bytes > self.max_shard_bytes {
                shards.push(Vec::new());
                current = 0;
            }
            shards.last_mut().expect("one shard").push(i);
            current += bytes;
            total += bytes;
        }
        let n = shards.len();
        let mut weight_map = BTreeMap::new();
        for (s, members) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, n);
            let views = members
                .iter()
                .map(|&i| {
                    let (name, t) = &model.tensors[i];
                    weight_map.insert(name.clone(), file.clone());
                    Ok((name.clone(), to_view(name, t, model.save_kind)?))
                })
                .collect::<Result<Vec<_>>>()?;
            let path = dir.join(&file);
            write_safetensors(&path, &views)?;
            on_file(&path);
        }
        let index =
            serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let path = dir.join(INDEX_FILE);
        write_synced(
            &path,
            serde_json::to_string_pretty(&index)
                .expect("json")
                .as_bytes(),
        )?;
        on_file(&path);
        Ok(())
    }

    fn remove_temp_dirs(&self) -> Result<()> {
        let entries = fs::read_dir(&self.root).map_err(|e| TrainError::io(&self.root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TrainError::io(&self.root, e))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let p = entry.path();
                fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
            }
        }
        Ok(())
    }
}

/// Complete checkpoints under `root` (folders named `checkpoint-<step>`), oldest first.
pub fn list_checkpoints(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(root).map_err(|e| TrainError::io(root, e))? {
        let entry = entry.map_err(|e| TrainError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name
            .strip_prefix(CHECKPOINT_PREFIX)
            .and_then(|s| s.parse::<u64>().ok())
        {
            if entry.path().is_dir() {
                out.push((step, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every weight of a checkpoint folder through its `model.safetensors.index.json` (or a
/// single `model.safetensors`), checking that the index and the shards agree.
pub fn load_model_tensors(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let index_path = dir.join(INDEX_FILE);
    if !index_path.exists() {
        let single = dir.join("model.safetensors");
        if single.exists() {
            return read_tensors(&single);
        }
        return Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            msg: format!("no {INDEX_FILE} or model.safetensors"),
        });
    }
    let text = fs::read_to_string(&index_path).map_err(|e| TrainError::io(&index_path, e))?;
    let index: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: index_path.clone(),
            msg: e.to_string(),
        })?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| TrainError::Checkpoint {
            path: index_path.clone(),
            msg: "no weight_map object".into(),
        })?;
    let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    files.sort();
    files.dedup();
    let mut out = Vec::with_capacity(map.len());
    for file in files {
        for (name, t) in read_tensors(&dir.join(file))? {
            if map.get(&name).and_then(|v| v.as_str()) != Some(file) {
                return Err(TrainError::Checkpoint {
                    path: dir.join(file),
                    msg: format!("holds {name}, which the index places elsewhere"),
                });
            }
            out.push((name, t));
        }
    }
    if out.len() != map.len() {
        return Err(TrainError::Checkpoint {
            path: index_path,
            msg: format!(
                "index names {} tensors, shards hold {}",
                map.len(),
                out.len()
            ),
        });
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Reads `trainer_state.json`.
pub fn load_trainer_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(TRAINER_STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path,
        msg: e.to_string(),
    })
}

/// Copies the checkpoint's weights into `params` (matched by name, shapes checked, kinds kept)
/// and restores the optimiser buffers and step counts. Returns the trainer state.
pub fn restore(
    dir: &Path,
    params: &[(String, Tensor)],
    optimizer: Option<&mut AnyPrecisionAdamW>,
) -> Result<TrainerState> {
    let state = load_trainer_state(dir)?;
    let saved: HashMap<String, Tensor> = load_model_tensors(dir)?.into_iter().collect();
    tch::no_grad(|| -> Result<()> {
        for (name, p) in params {
            let src = saved.get(name).ok_or_else(|| TrainError::Checkpoint {
                path: dir.to_path_buf(),
                msg: format!("lacks weight {name}"),
            })?;
            if src.size() != p.size() {
                return Err(TrainError::Checkpoint {
                    path: dir.to_path_buf(),
                    msg: format!(
                        "weight {name} has shape {:?}, model has {:?}",
                        src.size(),
                        p.size()
                    ),
                });
            }
            let mut p = p.shallow_clone();
            p.f_copy_(&src.f_to_device(p.device())?.f_to_kind(p.kind())?)?;
        }
        Ok(())
    })?;
    if let Some(opt) = optimizer {
        restore_optimizer(dir, &state, opt)?;
    }
    Ok(state)
}

/// What [`restore`] does besides the weights, for a model already loaded from the checkpoint
/// folder itself (a checkpoint is a complete model folder): the trainer state and, given one,
/// the optimiser.
pub fn restore_state(
    dir: &Path,
    optimizer: Option<&mut AnyPrecisionAdamW>,
) -> Result<TrainerState> {
    let state = load_trainer_state(dir)?;
    if let Some(opt) = optimizer {
        restore_optimizer(dir, &state, opt)?;
    }
    Ok(state)
}

/// [`restore_state`] for rank `shard.0` of `shard.1` data-parallel ranks (`None`: one process).
/// Optimiser state saved by the same number of ranks is read from this rank's own shard; saved
/// by one process or by another number of ranks, it is reassembled from every file and this
/// rank's part taken, which gives exactly the same state (docs/distributed.md, "Resume").
pub fn restore_state_sharded(
    dir: &Path,
    optimizer: Option<&mut AnyPrecisionAdamW>,
    shard: Option<(usize, usize)>,
) -> Result<TrainerState> {
    let state = load_trainer_state(dir)?;
    if let Some(opt) = optimizer {
        let (rank, world) = shard.unwrap_or((0, 1));
        restore_optimizer_for(dir, &state, opt, rank, world)?;
    }
    Ok(state)
}

/// The optimiser buffers and per-parameter step counts saved in `dir`.
fn restore_optimizer(dir: &Path, state: &TrainerState, opt: &mut AnyPrecisionAdamW) -> Result<()> {
    restore_optimizer_for(dir, state, opt, 0, 1)
}

/// Restores `opt` (rank `rank` of `world`) from `dir`, whichever way the state was saved.
fn restore_optimizer_for(
    dir: &Path,
    state: &TrainerState,
    opt: &mut AnyPrecisionAdamW,
    rank: usize,
    world: usize,
) -> Result<()> {
    let failed = |path: PathBuf| {
        move |e: crate::grpo::GrpoError| TrainError::Checkpoint {
            path,
            msg: e.to_string(),
        }
    };
    let whole = dir.join(OPTIMIZER_FILE);
    let saved_world = saved_shard_world(dir)?;
    let (tensors, steps) = match saved_world {
        None if !whole.exists() => (Vec::new(), state.optimizer_param_steps.clone()),
        None => (read_tensors(&whole)?, state.optimizer_param_steps.clone()),
        Some(w) if w == world => {
            let manifest = read_shard_manifest(dir, rank, world)?;
            let path = dir.join(&shard_file_names(rank, world)[0]);
            for (i, (name, _)) in opt.params().iter().enumerate() {
                let want = opt.owned(i);
                let got = manifest.ranges.iter().find(|(n, _, _)| n == name);
                let matches = match got {
                    Some((_, a, b)) => *a == want.start && *b == want.end,
                    None => want.is_empty(),
                };
                if !matches {
                    return Err(TrainError::Checkpoint {
                        path,
                        msg: format!(
                            "shard of rank {rank} holds {name} elements {:?}, this rank owns {want:?}: the model or its trainable parameters differ from the saved run",
                            got.map(|(_, a, b)| *a..*b)
                        ),
                    });
                }
            }
            let tensors = read_tensors(&path)?;
            opt.load_state(tensors, &manifest.steps)
                .map_err(failed(path))?;
            return Ok(());
        }
        Some(w) => {
            eprintln!(
                "note: {} holds optimizer state sharded over {w} ranks; this run has {world}: rank {rank} reassembles it from all {w} shards (exact, but reads every shard)",
                dir.display()
            );
            assemble_shards(dir, w)?
        }
    };
    // whole tensors: a sharded optimiser takes its part of each
    let mut parts = Vec::with_capacity(tensors.len());
    let owned: HashMap<&str, std::ops::Range<i64>> = opt
        .params()
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), opt.owned(i)))
        .collect();
    let shapes: HashMap<&str, Vec<i64>> = opt
        .params()
        .iter()
        .map(|(n, p)| (n.as_str(), p.size()))
        .collect();
    for (key, t) in tensors {
        let param = crate::grpo::optim::STATE_PREFIXES
            .iter()
            .find_map(|p| key.strip_prefix(p))
            .unwrap_or(&key);
        match (owned.get(param), shapes.get(param)) {
            (Some(r), Some(shape)) if r.start == 0 && r.end == shape.iter().product::<i64>() => {
                // a whole parameter (reassembled shards are flat)
                let whole = if t.numel() as i64 == r.end {
                    t.f_reshape(shape.as_slice())?
                } else {
                    t
                };
                parts.push((key, whole))
            }
            (Some(r), Some(_)) if r.is_empty() => {}
            (Some(r), Some(_)) => {
                let part = t.f_reshape([-1])?.f_narrow(0, r.start, r.end - r.start)?;
                parts.push((key, part));
            }
            // unknown names are reported by load_state
            _ => parts.push((key, t)),
        }
    }
    let steps: Vec<(String, u64)> = steps
        .into_iter()
        .filter(|(n, _)| owned.get(n.as_str()).is_some_and(|r| !r.is_empty()))
        .collect();
    opt.load_state(parts, &steps)
        .map_err(failed(dir.to_path_buf()))
}

/// What one rank's optimiser shard holds besides its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    /// The rank that wrote it.
    pub rank: usize,
    /// Ranks the state was sharded over.
    pub world: usize,
    /// For each parameter with elements in this shard: its name and the flattened element
    /// range `[start, end)` the shard's tensors hold.
    pub ranges: Vec<(String, i64, i64)>,
    /// Per-parameter AdamW step counts of those parameters.
    pub steps: Vec<(String, u64)>,
}

/// `optimizer-rank<r>-of-<w>.safetensors` and its `.json` manifest.
pub fn shard_file_names(rank: usize, world: usize) -> [String; 2] {
    [
        format!("optimizer-rank{rank}-of-{world}.safetensors"),
        format!("optimizer-rank{rank}-of-{world}.json"),
    ]
}

/// Writes rank `rank`'s optimiser shard into `dir` (tensors and manifest, synced); returns the
/// two paths.
pub fn write_optimizer_shard(
    dir: &Path,
    opt: &AnyPrecisionAdamW,
    rank: usize,
    world: usize,
) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let (tensors, steps) = opt.state_tensors();
    let views = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), to_view(n, t, None)?)))
        .collect::<Result<Vec<_>>>()?;
    let names = shard_file_names(rank, world);
    let tensor_path = dir.join(&names[0]);
    write_safetensors(&tensor_path, &views)?;
    let manifest = ShardManifest {
        rank,
        world,
        ranges: opt
            .params()
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), opt.owned(i)))
            .filter(|(_, r)| !r.is_empty())
            .map(|(n, r)| (n, r.start, r.end))
            .collect(),
        steps,
    };
    let manifest_path = dir.join(&names[1]);
    write_synced(
        &manifest_path,
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    sync_dir(dir)?;
    Ok(vec![tensor_path, manifest_path])
}

/// The number of ranks a checkpoint's optimiser state is sharded over, `None` when it is not.
pub fn saved_shard_world(dir: &Path) -> Result<Option<usize>> {
    if !dir.exists() {
        return Ok(None);
    }
    for entry in fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let name = entry
            .map_err(|e| TrainError::io(dir, e))?
            .file_name()
            .to_string_lossy()
            .to_string();
        if let Some(rest) = name
            .strip_prefix("optimizer-rank0-of-")
            .and_then(|r| r.strip_suffix(".json"))
        {
            if let Ok(w) = rest.parse() {
                return Ok(Some(w));
            }
        }
    }
    Ok(None)
}

fn read_shard_manifest(dir: &Path, rank: usize, world: usize) -> Result<ShardManifest> {
    let path = dir.join(&shard_file_names(rank, world)[1]);
    let text = fs::read_to_string(&path).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        msg: format!("optimizer shard manifest of rank {rank} of {world}: {e}"),
    })?;
    let m: ShardManifest = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    if m.rank != rank || m.world != world {
        return Err(TrainError::Checkpoint {
            path,
            msg: format!(
                "says rank {} of {}, expected {rank} of {world}",
                m.rank, m.world
            ),
        });
    }
    Ok(m)
}

/// The whole optimiser state of a checkpoint sharded over `world` ranks: each parameter's
/// buffers put back together from the shards' element ranges (f32 on the CPU, then each
/// buffer's saved kind), and the step counts.
fn assemble_shards(dir: &Path, world: usize) -> Result<(NamedTensorList, Vec<(String, u64)>)> {
    // name → (flat f32 buffer, kind, filled elements)
    let mut full: BTreeMap<String, (Vec<f32>, Kind, i64)> = BTreeMap::new();
    let mut sizes: HashMap<String, i64> = HashMap::new();
    let mut steps: BTreeMap<String, u64> = BTreeMap::new();
    let mut manifests = Vec::with_capacity(world);
    for rank in 0..world {
        let m = read_shard_manifest(dir, rank, world)?;
        for (name, _, end) in &m.ranges {
            let e = sizes.entry(name.clone()).or_insert(0);
            *e = (*e).max(*end);
        }
        steps.extend(m.steps.iter().cloned());
        manifests.push(m);
    }
    for (rank, m) in manifests.iter().enumerate() {
        let path = dir.join(&shard_file_names(rank, world)[0]);
        let tensors: HashMap<String, Tensor> = read_tensors(&path)?.into_iter().collect();
        for (name, start, end) in &m.ranges {
            for prefix in crate::grpo::optim::STATE_PREFIXES {
                let key = format!("{prefix}{name}");
                let Some(t) = tensors.get(&key) else { continue };
                let values: Vec<f32> =
                    Vec::<f32>::try_from(&t.f_to_kind(Kind::Float)?.f_reshape([-1])?)?;
                if values.len() as i64 != end - start {
                    return Err(TrainError::Checkpoint {
                        path: path.clone(),
                        msg: format!(
                            "{key} has {} elements, its manifest says {}",
                            values.len(),
                            end - start
                        ),
                    });
                }
                let size = sizes[name];
                let entry = full
                    .entry(key)
                    .or_insert_with(|| (vec![0f32; size as usize], t.kind(), 0));
                entry.0[*start as usize..*end as usize].copy_from_slice(&values);
                entry.2 += end - start;
            }
        }
    }
    let mut out = Vec::with_capacity(full.len());
    for (key, (values, kind, filled)) in full {
        if filled != values.len() as i64 {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                msg: format!(
                    "the shards cover {filled} of {key}'s {} elements",
                    values.len()
                ),
            });
        }
        out.push((key, Tensor::f_from_slice(&values)?.f_to_kind(kind)?));
    }
    Ok((out, steps.into_iter().collect()))
}

type NamedTensorList = Vec<(String, Tensor)>;

/// How a checkpoint stores the optimiser.
enum OptimizerFiles<'a> {
    /// No optimiser state.
    None,
    /// `optimizer.safetensors`, the whole state.
    Whole(&'a AnyPrecisionAdamW),
    /// One shard per rank: rank 0's `own`, the others' staged in `staged`.
    Sharded {
        own: &'a AnyPrecisionAdamW,
        world: usize,
        staged: &'a Path,
    },
}
