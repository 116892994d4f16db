//! Safetensors checkpoints: single file or sharded through `model.safetensors.index.json`,
//! memory-mapped, key names normalised to the published layout, checked against the tensor list
//! the config implies, and copied straight into the target device and kind.
//!
//! Published layout (Qwen/Qwen2.5-VL-*-Instruct, transformers <= 4.51 and 5.x saves):
//! `model.*` (text), `visual.*` (vision), `lm_head.weight`. Also accepted:
//! transformers 4.52-4.57 (`model.language_model.*`, `model.visual.*`) and MLX-style conversions
//! (`language_model.model.*`, `language_model.lm_head.*`, `vision_tower.*`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::config::Qwen2_5VLConfig;
use super::weight_path::{placeholder, TensorSource};
use super::{ModelError, Qwen2_5VLForConditionalGeneration};

/// Name of the shard index written by `save_pretrained` for sharded checkpoints.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Maps a stored key to the published layout.
pub fn normalize_key(key: &str) -> String {
    const RULES: [(&str, &str); 5] = [
        ("model.language_model.", "model."),
        ("model.visual.", "visual."),
        ("language_model.model.", "model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_tower.", "visual."),
    ];
    for (from, to) in RULES {
        if let Some(rest) = key.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    key.to_string()
}

/// Every tensor a checkpoint of this config holds, in the published layout, with its shape, in
/// the order the model lists them (729 tensors for the 7B config, 824 for the 3B one whose
/// `lm_head` is tied). Read off the model's own construction over shape-only placeholders
/// ([`TensorSource::Placeholders`]), so it names exactly the keys the loader asks for.
pub fn expected_tensors(cfg: &Qwen2_5VLConfig) -> Result<Vec<(String, Vec<i64>)>, ModelError> {
    let model = Qwen2_5VLForConditionalGeneration::from_source(
        cfg.clone(),
        TensorSource::Placeholders(Kind::Float),
        Device::Cpu,
    )?;
    Ok(model
        .named_tensors()
        .into_iter()
        .map(|(name, t)| (name, t.size()))
        .collect())
}

/// Named tensors of a model in the published layout, already on their device and kind.
#[derive(Debug)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Wraps already-built tensors (tests, conversions).
    pub fn from_map(tensors: HashMap<String, Tensor>) -> Self {
        Weights { tensors }
    }

    /// Zero tensors with the config's shapes that allocate one element each (stride-0 views), for
    /// name/shape coverage tests with the full 7B/3B shapes.
    pub fn zeros_like_config(cfg: &Qwen2_5VLConfig, kind: Kind) -> Result<Self, ModelError> {
        let tensors = expected_tensors(cfg)?
            .into_iter()
            .map(|(name, shape)| {
                let t = placeholder(kind, &shape);
                (name, t)
            })
            .collect();
        Ok(Weights { tensors })
    }

    /// The tensor `name`, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensors(vec![name.to_string()]))?;
        if t.size() != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.size(),
            });
        }
        Ok(t.shallow_clone())
    }

    /// Number of tensors held.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when no tensor is held.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// One checkpoint folder: its safetensors files, memory-mapped, and where each normalised key lives.
pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    /// normalised name -> (file index, stored name)
    locations: BTreeMap<String, (usize, String)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn st_err(path: &Path, e: safetensors::SafeTensorError) -> ModelError {
    ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json` (sharded) or `dir/model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index = dir.join(INDEX_FILE);
        let names: Vec<String> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                ModelError::Config(format!("{}: invalid JSON: {e}", index.display()))
            })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    ModelError::Config(format!("{}: no `weight_map` object", index.display()))
                })?;
            let set: BTreeSet<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            set.into_iter().collect()
        } else if dir.join(SINGLE_FILE).exists() {
            vec![SINGLE_FILE.to_string()]
        } else {
            return Err(ModelError::NoCheckpoint(dir.to_path_buf()));
        };
        let mut files = Vec::new();
        let mut locations = BTreeMap::new();
        for (idx, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let file = File::open(&path).map_err(io_err(&path))?;
            // SAFETY: the file is opened read-only and not modified while mapped; tensors are
            // copied out of the mapping before it is dropped.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(&path))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| st_err(&path, e))?;
            for stored in st.names() {
                let canonical = normalize_key(stored);
                if let Some((other, _)) = locations.get(&canonical) {
                    let other: &usize = other;
                    return Err(ModelError::Config(format!(
                        "tensor `{canonical}` stored twice (in {} and {})",
                        names[*other], name
                    )));
                }
                locations.insert(canonical, (idx, stored.to_string()));
            }
            files.push((path, mmap));
        }
        Ok(Checkpoint { files, locations })
    }

    /// Normalised names of every stored tensor.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locations.keys().map(String::as_str)
    }

    /// Loads exactly the tensors `cfg` needs onto `device` as `kind`; one error lists every missing
    /// and unexpected name, shapes and dtypes are checked per tensor.
    pub fn load(
        &self,
        cfg: &Qwen2_5VLConfig,
        device: Device,
        kind: Kind,
    ) -> Result<Weights, ModelError> {
        let expected = expected_tensors(cfg)?;
        let wanted: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let missing: Vec<String> = expected
            .iter()
            .filter(|(n, _)| !self.locations.contains_key(n))
            .map(|(n, _)| n.clone())
            .collect();
        let unexpected: Vec<String> = self
            .locations
            .keys()
            // a tied checkpoint may still carry a copy of the embedding as lm_head
            .filter(|n| !wanted.contains(n.as_str()))
            .filter(|n| !(cfg.tie_word_embeddings && n.as_str() == "lm_head.weight"))
            .cloned()
            .collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(ModelError::KeyMismatch {
                missing,
                unexpected,
            });
        }
        let headers: Vec<SafeTensors<'_>> = self
            .files
            .iter()
            .map(|(p, m)| SafeTensors::deserialize(m).map_err(|e| st_err(p, e)))
            .collect::<Result<_, _>>()?;
        let _guard = tch::no_grad_guard();
        let mut tensors = HashMap::with_capacity(expected.len());
        for (name, shape) in expected {
            let (file, stored) = &self.locations[&name];
            let path = &self.files[*file].0;
            let view = headers[*file].tensor(stored).map_err(|e| st_err(path, e))?;
            let got: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
            if got != shape {
                return Err(ModelError::ShapeMismatch {
                    name,
                    expected: shape,
                    got,
                });
            }
            let src_kind = match view.dtype() {
                Dtype::F32 => Kind::Float,
                Dtype::BF16 => Kind::BFloat16,
                Dtype::F16 => Kind::Half,
                Dtype::F64 => Kind::Double,
                other => {
                    return Err(ModelError::Dtype {
                        name,
                        dtype: format!("{other:?}"),
                    })
                }
            };
            let cpu = Tensor::f_from_data_size(view.data(), &shape, src_kind)?;
            let t = cpu.f_to_device(device)?.f_to_kind(kind)?;
            tensors.insert(name, t);
        }
        Ok(Weights { tensors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_every_known_layout() {
        for (stored, want) in [
            (
                "model.language_model.layers.0.mlp.up_proj.weight",
                "model.layers.0.mlp.up_proj.weight",
            ),
            (
                "model.visual.blocks.3.attn.qkv.bias",
                "visual.blocks.3.attn.qkv.bias",
            ),
            ("language_model.model.norm.weight", "model.norm.weight"),
            ("language_model.lm_head.weight", "lm_head.weight"),
            (
                "vision_tower.merger.ln_q.weight",
                "visual.merger.ln_q.weight",
            ),
            ("model.embed_tokens.weight", "model.embed_tokens.weight"),
            (
                "visual.patch_embed.proj.weight",
                "visual.patch_embed.proj.weight",
            ),
            ("lm_head.weight", "lm_head.weight"),
        ] {
            assert_eq!(normalize_key(stored), want);
        }
    }
}
