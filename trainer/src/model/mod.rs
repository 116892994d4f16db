//! Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`) on tch: config, weights, vision tower,
//! M-RoPE text decoder and the logits head.
//!
//! The model holds weights only; per-sequence state (KV cache, rotary positions) is passed in by
//! the caller, so one model serves rollouts, log-prob passes and the server at once. Weights are
//! plain tensors named after the published checkpoint keys; [`Qwen2_5VLForConditionalGeneration::
//! attach_to_var_store`] registers them (shared, not copied) in an `nn::VarStore` for training.

pub mod config;
pub mod cpu_head;
pub mod rope;
pub mod text;
pub mod vision;
pub mod weights;

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};
use thiserror::Error;

pub use config::{Qwen2_5VLConfig, TextConfig, VisionConfig};
pub use rope::{get_rope_index, RopeIndex};
pub use text::KvCache;
pub use weights::{Checkpoint, Weights};

use crate::tokenizer::TOKENIZER_VOCAB;
use rope::MRope;
use text::{causal_padding_mask, Qwen2_5VLTextModel};
use vision::Qwen2_5VisionTransformer;

/// Errors of the model code.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("no model.safetensors or model.safetensors.index.json in {0}")]
    NoCheckpoint(PathBuf),
    #[error("{path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error(
        "checkpoint keys do not match the config: missing {missing:?}, unexpected {unexpected:?}"
    )]
    KeyMismatch {
        missing: Vec<String>,
        unexpected: Vec<String>,
    },
    #[error("missing tensors {0:?}")]
    MissingTensors(Vec<String>),
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    #[error("tensor `{name}` has unsupported dtype {dtype}")]
    Dtype { name: String, dtype: String },
    #[error("image features and image tokens do not match: {tokens} tokens, {features} features")]
    ImageTokenMismatch { tokens: i64, features: i64 },
    #[error("KV cache full: capacity {capacity}, needed {needed}")]
    CacheFull { capacity: i64, needed: i64 },
    #[error("bad input: {0}")]
    Input(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Images of a batch: `pixel_values [sum N_i, 1176]` (f32 from the processor) and one
/// `[t, h, w]` patch grid per image, in the order their `<|image_pad|>` blocks appear.
///
/// When the same image occurs several times (the n responses of a GRPO group in one log-prob
/// pass), `sources` says, for each occurrence, which image of `pixel_values` it is; the vision
/// tower then runs once per distinct image and its features are reused. Empty: every
/// occurrence is its own image in `pixel_values`.
#[derive(Debug)]
pub struct VisionInputs {
    pub pixel_values: Tensor,
    /// One grid per occurrence (what M-RoPE positions are computed from).
    pub image_grid_thw: Vec<[i64; 3]>,
    /// Per occurrence, the index of its image in `pixel_values` (see above).
    pub sources: Vec<usize>,
}

impl VisionInputs {
    /// One image per occurrence (no reuse).
    pub fn new(pixel_values: Tensor, image_grid_thw: Vec<[i64; 3]>) -> Self {
        VisionInputs {
            pixel_values,
            image_grid_thw,
            sources: Vec::new(),
        }
    }

    /// The grids of the images in `pixel_values`, checking `sources` against the occurrences.
    pub fn distinct_grids(&self) -> Result<Vec<[i64; 3]>, ModelError> {
        if self.sources.is_empty() {
            return Ok(self.image_grid_thw.clone());
        }
        if self.sources.len() != self.image_grid_thw.len() {
            return Err(ModelError::Input(format!(
                "{} image sources for {} images",
                self.sources.len(),
                self.image_grid_thw.len()
            )));
        }
        let n = self.sources.iter().max().map_or(0, |m| m + 1);
        let mut grids: Vec<Option<[i64; 3]>> = vec![None; n];
        for (&source, &grid) in self.sources.iter().zip(&self.image_grid_thw) {
            match grids[source] {
                Some(g) if g != grid => {
                    return Err(ModelError::Input(format!(
                        "image {source} occurs with grids {g:?} and {grid:?}"
                    )))
                }
                _ => grids[source] = Some(grid),
            }
        }
        grids
            .into_iter()
            .enumerate()
            .map(|(i, g)| g.ok_or_else(|| ModelError::Input(format!("image {i} never occurs"))))
            .collect()
    }
}

/// Which positions of a forward get logits.
#[derive(Debug)]
pub enum LogitsAt<'a> {
    /// Every position: `[B, L, V]`.
    All,
    /// The last position of each row: `[B, 1, V]`.
    Last,
    /// `index [B, K]` (int64) positions per row: `[B, K, V]`.
    Positions(&'a Tensor),
    /// No logits: the final hidden states `[B, L, D]` are returned instead.
    Hidden,
    /// No logits: the final hidden states at `index [B, K]` positions, `[B, K, D]`.
    HiddenAt(&'a Tensor),
}

/// Finds a checkpoint: a local folder, else a hub id (`owner/name`, optionally `@revision`)
/// resolved through the Hugging Face cache (downloading config, weights and tokenizer files when
/// the hub is reachable).
pub fn locate_checkpoint(path: &str) -> Result<PathBuf, ModelError> {
    let local = Path::new(path);
    if local.is_dir() {
        return Ok(local.to_path_buf());
    }
    let (repo, revision) = match path.split_once('@') {
        Some((r, v)) => (r, Some(v)),
        None => (path, None),
    };
    let hub_like = repo.split('/').count() == 2
        && !repo.starts_with('/')
        && !repo.starts_with('.')
        && !local.exists();
    if !hub_like {
        return Err(ModelError::Input(format!(
            "{path}: not a checkpoint folder (config.json + safetensors) nor a hub id owner/name"
        )));
    }
    data::hub::resolve_repo(repo, data::hub::RepoType::Model, revision, |f| {
        f.ends_with(".json")
            || f.ends_with(".safetensors")
            || f.ends_with(".txt")
            || f.ends_with(".jinja")
    })
    .map_err(|e| ModelError::Input(format!("{path}: {e}")))
}

/// `hidden [B, L, D]` at `index [B, K]` (int64) -> `[B, K, D]`.
fn gather_positions(hidden: &Tensor, index: &Tensor) -> Result<Tensor, ModelError> {
    let (b, d) = (hidden.size()[0], hidden.size()[2]);
    let idx = index
        .f_to_device(hidden.device())?
        .f_unsqueeze(-1)?
        .f_expand([b, index.size()[1], d], false)?;
    Ok(hidden.f_gather(1, &idx, false)?)
}

/// Qwen2.5-VL: vision tower, text decoder, `lm_head`.
#[derive(Debug)]
pub struct Qwen2_5VLForConditionalGeneration {
    pub config: Qwen2_5VLConfig,
    pub visual: Qwen2_5VisionTransformer,
    pub model: Qwen2_5VLTextModel,
    /// `[vocab, D]`; the same tensor as `model.embed_tokens` when embeddings are tied.
    pub lm_head: Tensor,
    rope: MRope,
    device: Device,
    kind: Kind,
    /// Optional restriction of the output distribution to a set of token ids.
    output_vocab: Option<OutputVocab>,
}

/// File of a checkpoint folder listing the token ids the output distribution is restricted to.
pub const OUTPUT_VOCAB_FILE: &str = "output_vocab.json";

/// A restriction of the softmax to a subset of token ids (every other id gets probability 0):
/// generation and log-probs then multiply `lm_head` by only those rows. The tiny CPU preset uses
/// it so the 151,936-row head costs ~1% on a small dataset; the weights stay a full checkpoint.
#[derive(Debug)]
pub struct OutputVocab {
    /// Allowed ids, sorted, as a list.
    pub ids: Vec<i64>,
    /// The same ids as a tensor `[K]` on the model's device.
    pub ids_tensor: Tensor,
    /// `[vocab]` position of each id in `ids`, or 0 for ids outside it.
    pub position: Tensor,
}

impl Qwen2_5VLForConditionalGeneration {
    /// Reads `dir/config.json` and the safetensors weights onto `device` as `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let config = Qwen2_5VLConfig::from_dir(dir)?;
        let weights = Checkpoint::open(dir)?.load(&config, device, kind)?;
        let mut model = Self::from_weights(config, &weights, device)?;
        let vocab_file = dir.join(OUTPUT_VOCAB_FILE);
        if vocab_file.exists() {
            let text = std::fs::read_to_string(&vocab_file)
                .map_err(|e| ModelError::Input(format!("{}: {e}", vocab_file.display())))?;
            let ids: Vec<i64> = serde_json::from_str(&text)
                .map_err(|e| ModelError::Input(format!("{}: {e}", vocab_file.display())))?;
            model.restrict_output_vocab(&ids)?;
        }
        Ok(model)
    }

    /// Restricts the output distribution to `ids` (see [`OutputVocab`]).
    pub fn restrict_output_vocab(&mut self, ids: &[i64]) -> Result<(), ModelError> {
        let vocab = self.config.text.vocab_size;
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() || ids[0] < 0 || ids[ids.len() - 1] >= vocab {
            return Err(ModelError::Input(format!(
                "output vocabulary must be non-empty ids below {vocab}"
            )));
        }
        let mut position = vec![0i64; vocab as usize];
        for (i, &id) in ids.iter().enumerate() {
            position[id as usize] = i as i64;
        }
        self.output_vocab = Some(OutputVocab {
            ids_tensor: Tensor::f_from_slice(&ids)?.f_to_device(self.device)?,
            position: Tensor::f_from_slice(&position)?.f_to_device(self.device)?,
            ids,
        });
        Ok(())
    }

    /// Lifts an output restriction (the full vocabulary again).
    pub fn clear_output_vocab(&mut self) {
        self.output_vocab = None;
    }

    /// The output restriction, if any.
    pub fn output_vocab(&self) -> Option<&OutputVocab> {
        self.output_vocab.as_ref()
    }

    /// Builds the model from named tensors (published layout).
    pub fn from_weights(
        config: Qwen2_5VLConfig,
        w: &Weights,
        device: Device,
    ) -> Result<Self, ModelError> {
        let model = Qwen2_5VLTextModel::new(&config.text, w)?;
        let visual = Qwen2_5VisionTransformer::new(&config.vision, w, device)?;
        let lm_head = if config.tie_word_embeddings {
            model.embed_tokens.shallow_clone()
        } else {
            w.get(
                "lm_head.weight",
                &[config.text.vocab_size, config.text.hidden_size],
            )?
        };
        let kind = model.embed_tokens.kind();
        let rope = MRope::new(&config, device)?;
        Ok(Qwen2_5VLForConditionalGeneration {
            config,
            visual,
            model,
            lm_head,
            rope,
            device,
            kind,
            output_vocab: None,
        })
    }

    /// A copy of the model on `device` (weights copied, config shared); used to bring an
    /// offloaded reference model onto the GPU for one pass.
    pub fn to_device(&self, device: Device) -> Result<Self, ModelError> {
        let mut map = std::collections::HashMap::new();
        for (name, t) in self.named_tensors() {
            map.insert(name, t.f_to_device(device)?.f_detach()?);
        }
        let mut model = Self::from_weights(self.config.clone(), &Weights::from_map(map), device)?;
        if let Some(v) = &self.output_vocab {
            model.restrict_output_vocab(&v.ids)?;
        }
        Ok(model)
    }

    /// Device of the weights.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Floating kind of the weights and activations.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Every distinct weight with its published checkpoint name (a tied `lm_head` is not listed).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.model.named_tensors(&mut out);
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".into(), self.lm_head.shallow_clone()));
        }
        self.visual.named_tensors(&mut out);
        out
    }

    /// Registers every weight in `vs` under its checkpoint name (`model.layers.0.mlp.up_proj.
    /// weight`, ...), sharing storage with the model. With `trainable`, the tensors require grad
    /// and appear in `vs.trainable_variables()`; saving `vs.variables()` as safetensors gives a
    /// checkpoint in the published layout.
    pub fn attach_to_var_store(&self, vs: &nn::VarStore, trainable: bool) {
        let root = vs.root();
        for (name, t) in self.named_tensors() {
            let mut parts: Vec<&str> = name.split('.').collect();
            let leaf = parts.pop().unwrap_or_default();
            let path = parts.iter().fold(root.clone(), |p, c| p.sub(*c));
            let _registered = path.add(leaf, t, trainable);
        }
    }

    /// Token embeddings of `input_ids [B, L]` with the vision tower's features written over the
    /// image tokens (in order).
    pub fn embed(
        &self,
        input_ids: &Tensor,
        images: Option<&VisionInputs>,
    ) -> Result<Tensor, ModelError> {
        let ids = input_ids.f_to_device(self.device)?;
        let embeds = self
            .model
            .embed_tokens
            .f_index_select(0, &ids.f_flatten(0, -1)?)?
            .f_view([ids.size()[0], ids.size()[1], self.config.text.hidden_size])?;
        // Without images (decode steps, text-only prompts) image ids keep their own embedding,
        // as in transformers; a sampled `<|image_pad|>` must not abort a rollout.
        let Some(images) = images else {
            return Ok(embeds);
        };
        let is_image = ids.f_eq(self.config.image_token_id)?;
        let n_tokens = i64::try_from(is_image.f_sum(Kind::Int64)?)?;
        let features = self.image_features(images)?;
        let n_features = features.size()[0];
        if n_tokens != n_features {
            return Err(ModelError::ImageTokenMismatch {
                tokens: n_tokens,
                features: n_features,
            });
        }
        let mask = is_image.f_unsqueeze(-1)?.f_expand_as(&embeds)?;
        Ok(embeds.f_masked_scatter(&mask, &features.f_to_kind(embeds.kind())?)?)
    }

    /// Vision-tower features of every image occurrence, in order: the tower runs once per
    /// distinct image and reused images get copies of its features (gradients add up).
    pub fn image_features(&self, images: &VisionInputs) -> Result<Tensor, ModelError> {
        let grids = images.distinct_grids()?;
        let features = self.visual.forward(&images.pixel_values, &grids)?;
        if images.sources.is_empty() {
            return Ok(features);
        }
        let merge = self.config.vision.spatial_merge_size.pow(2);
        let sizes: Vec<i64> = grids.iter().map(|g| g[0] * g[1] * g[2] / merge).collect();
        let per_image = features.f_split_with_sizes(&sizes, 0)?;
        let occurrences: Vec<&Tensor> = images.sources.iter().map(|&s| &per_image[s]).collect();
        Ok(Tensor::f_cat(&occurrences, 0)?)
    }

    /// One forward pass.
    ///
    /// * `input_ids [B, L]` new tokens (prompt at prefill, one token per row when decoding);
    /// * `position_ids [3, B, L]` their M-RoPE positions (from [`get_rope_index`] at prefill,
    ///   `next_position + step` when decoding);
    /// * `attention_mask [B, S]` 0/1 over every slot, cached ones first (`S = cache.len() + L`);
    /// * `images` for the image tokens among `input_ids` (prefill only);
    /// * `cache`: written at its end and advanced by `L` when given.
    ///
    /// Returns f32 logits with ids >= 151665 (untrained rows) set to -inf, at `logits_at`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        images: Option<&VisionInputs>,
        cache: Option<&mut KvCache>,
        logits_at: LogitsAt<'_>,
    ) -> Result<Tensor, ModelError> {
        let embeds = self.embed(input_ids, images)?;
        let (b, l) = (embeds.size()[0], embeds.size()[1]);
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mask = attention_mask.f_to_device(self.device)?;
        if mask.size() != [b, past + l] {
            return Err(ModelError::Input(format!(
                "attention_mask {:?} must be [B={b}, cached {past} + new {l}]",
                mask.size()
            )));
        }
        let mask = causal_padding_mask(&mask, past, l)?;
        let (cos, sin) = self
            .rope
            .cos_sin(&position_ids.f_to_device(self.device)?, self.kind)?;
        let hidden = self.model.forward(&embeds, &cos, &sin, &mask, cache)?;
        match logits_at {
            LogitsAt::All => self.logits(&hidden),
            LogitsAt::Last => self.logits(&hidden.f_narrow(1, l - 1, 1)?),
            LogitsAt::Positions(index) => self.logits(&gather_positions(&hidden, index)?),
            LogitsAt::HiddenAt(index) => gather_positions(&hidden, index),
            LogitsAt::Hidden => Ok(hidden),
        }
    }

    /// Logits over the output vocabulary only: `[..., K]` f32 in [`OutputVocab::ids`] order
    /// under a restriction, else over the tokenizer's ids (`[..., 151665]`, column = token id).
    /// Sampling picks a column; under a restriction map it back through `OutputVocab::ids`.
    pub fn compact_logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        let weight = match &self.output_vocab {
            Some(v) => self.lm_head.f_index_select(0, &v.ids_tensor)?,
            // the tokenizer's ids are the first rows: column i is token i, and the untrained
            // padding rows are left out instead of being masked
            None => {
                self.lm_head
                    .f_narrow(0, 0, self.config.text.vocab_size.min(TOKENIZER_VOCAB))?
            }
        };
        if let Some(logits) = skinny_head(hidden, &weight)? {
            return Ok(logits);
        }
        Ok(hidden.f_matmul(&weight.f_tr()?)?.f_to_kind(Kind::Float)?)
    }

    /// `lm_head` on final hidden states `[..., D]` -> f32 logits with untrained ids masked (and,
    /// under an [`OutputVocab`], every id outside it).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        if let Some(v) = &self.output_vocab {
            let picked = hidden
                .f_matmul(&self.lm_head.f_index_select(0, &v.ids_tensor)?.f_tr()?)?
                .f_to_kind(Kind::Float)?;
            let mut shape = picked.size();
            let last = shape.len() - 1;
            shape[last] = self.config.text.vocab_size;
            let index = v.ids_tensor.f_expand(picked.size(), false)?;
            return Ok(
                Tensor::f_full(&shape, f64::NEG_INFINITY, (Kind::Float, self.device))?
                    .f_scatter(-1, &index, &picked)?,
            );
        }
        let logits = hidden
            .f_matmul(&self.lm_head.f_tr()?)?
            .f_to_kind(Kind::Float)?;
        let vocab = self.config.text.vocab_size;
        if vocab <= TOKENIZER_VOCAB {
            return Ok(logits);
        }
        let ids = Tensor::f_arange(vocab, (Kind::Int64, self.device))?;
        Ok(logits.f_masked_fill(&ids.f_ge(TOKENIZER_VOCAB)?, f64::NEG_INFINITY)?)
    }
}

/// `hidden [..., D] x weight [V, D]^T` through [`cpu_head::matmul_transposed`] when it applies
/// (f32 on the CPU, at most [`cpu_head::MAX_ROWS`] rows, no autograd graph to record); `None`
/// leaves the product to libtorch.
fn skinny_head(hidden: &Tensor, weight: &Tensor) -> Result<Option<Tensor>, ModelError> {
    let mut shape = hidden.size();
    let (Some(&dim), Some(&vocab)) = (shape.last(), weight.size().first()) else {
        return Ok(None);
    };
    let rows = if dim > 0 {
        hidden.numel() as i64 / dim
    } else {
        0
    };
    let cpu_f32 = |t: &Tensor| t.device() == Device::Cpu && t.kind() == Kind::Float;
    if !cpu_f32(hidden)
        || !cpu_f32(weight)
        || rows == 0
        || rows as usize > cpu_head::MAX_ROWS
        || weight.size() != [vocab, dim]
        || (grad_enabled() && (hidden.requires_grad() || weight.requires_grad()))
    {
        return Ok(None);
    }
    let hidden = hidden.f_contiguous()?;
    let weight = weight.f_contiguous()?;
    let last = shape.len() - 1;
    shape[last] = vocab;
    let out = Tensor::f_empty(&shape, (Kind::Float, Device::Cpu))?;
    let (rows, dim, vocab) = (rows as usize, dim as usize, vocab as usize);
    // SAFETY: all three are contiguous f32 CPU tensors of exactly these element counts, alive
    // for the whole call; `out` is freshly allocated and aliases neither input.
    unsafe {
        cpu_head::matmul_transposed(
            std::slice::from_raw_parts(hidden.data_ptr() as *const f32, rows * dim),
            rows,
            std::slice::from_raw_parts(weight.data_ptr() as *const f32, vocab * dim),
            dim,
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, rows * vocab),
            tch::get_num_threads().max(1) as usize,
        );
    }
    Ok(Some(out))
}

/// Whether autograd records operations on this thread right now.
fn grad_enabled() -> bool {
    // SAFETY: reads the thread-local grad mode by setting it and putting the old value back.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}
