//! Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`) on tch: config, weights, vision tower,
//! M-RoPE text decoder and the output head ([`LmHead`]).
//!
//! The model holds weights only; per-sequence state (KV cache, rotary positions) is passed in by
//! the caller, so one model serves rollouts, log-prob passes and the server at once. Weights are
//! plain tensors named after the published checkpoint keys, taken through a [`WeightPath`] so the
//! loader and [`Qwen2_5VLForConditionalGeneration::named_tensors`] share one key tree;
//! [`Qwen2_5VLForConditionalGeneration::attach_to_var_store`] registers them (shared, not copied)
//! in an `nn::VarStore` for training.

pub mod checkpoint;
pub mod config;
pub mod cpu_head;
pub mod kv_cache;
pub mod lm_head;
pub mod lora;
pub mod prefix;
pub mod rope;
pub mod text;
pub mod vision;
pub mod weight_path;
pub mod weights;

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};
use thiserror::Error;

pub use checkpoint::RecomputeTape;
pub use config::{Qwen2_5VLConfig, TextConfig, VisionConfig};
pub use kv_cache::{KvCache, KvLayout};
pub use lm_head::{read_output_vocab, LmHead, OutputVocab, OUTPUT_VOCAB_FILE};
pub use lora::{LoraConfig, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
pub use prefix::{SharedPromptHidden, SharedPrompts};
pub use rope::{get_rope_index, RopeIndex};
pub use weight_path::{TensorSource, WeightBuilder, WeightPath};
pub use weights::{Checkpoint, Weights};

use rope::MRope;
use text::{AttentionMask, Qwen2_5VLTextModel};
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

/// Which positions of a forward pass are returned.
#[derive(Debug)]
pub enum LogitsAt<'a> {
    /// Every position: `[B, L, ·]`.
    All,
    /// The last position of each row: `[B, 1, ·]`.
    Last,
    /// `index [B, K]` (int64) positions per row: `[B, K, ·]`.
    Positions(&'a Tensor),
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
    /// The output head (full vocabulary unless restricted explicitly).
    pub lm_head: LmHead,
    rope: MRope,
    device: Device,
    kind: Kind,
    /// Every distinct weight under its checkpoint key, as construction took them.
    named: Vec<(String, Tensor)>,
}

impl Qwen2_5VLForConditionalGeneration {
    /// Reads `dir/config.json` and the safetensors weights onto `device` as `kind`. The head
    /// covers the full vocabulary: an [`OUTPUT_VOCAB_FILE`] saved in `dir` is not applied (see
    /// [`Qwen2_5VLForConditionalGeneration::restrict_output_vocab`]).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let config = Qwen2_5VLConfig::from_dir(dir)?;
        let weights = Checkpoint::open(dir)?.load(&config, device, kind)?;
        Self::from_weights(config, &weights, device)
    }

    /// Restricts the output distribution to `ids` ([`LmHead::restrict_output_vocab`]).
    pub fn restrict_output_vocab(&mut self, ids: &[i64]) -> Result<(), ModelError> {
        self.lm_head.restrict_output_vocab(ids)
    }

    /// Lifts an output restriction (the full vocabulary again).
    pub fn clear_output_vocab(&mut self) {
        self.lm_head.clear_output_vocab();
    }

    /// The output restriction, if any.
    pub fn output_vocab(&self) -> Option<&OutputVocab> {
        self.lm_head.output_vocab()
    }

    /// Builds the model from named tensors (published layout).
    pub fn from_weights(
        config: Qwen2_5VLConfig,
        w: &Weights,
        device: Device,
    ) -> Result<Self, ModelError> {
        Self::from_source(config, TensorSource::Weights(w), device)
    }

    /// Builds the model with every tensor taken from `source`: the one description of the
    /// checkpoint's key tree (`model.*`, `lm_head`, `visual.*`, in this order).
    pub fn from_source(
        config: Qwen2_5VLConfig,
        source: TensorSource<'_>,
        device: Device,
    ) -> Result<Self, ModelError> {
        let builder = WeightBuilder::new(source);
        let root = builder.root();
        let model = Qwen2_5VLTextModel::new(&config.text, &root.pp("model"))?;
        let lm_head = if config.tie_word_embeddings {
            model.embed_tokens.shallow_clone()
        } else {
            root.pp("lm_head")
                .get("weight", &[config.text.vocab_size, config.text.hidden_size])?
        };
        let visual = Qwen2_5VisionTransformer::new(&config.vision, &root.pp("visual"), device)?;
        drop(root);
        let kind = model.embed_tokens.kind();
        let rope = MRope::new(&config, device)?;
        Ok(Qwen2_5VLForConditionalGeneration {
            config,
            visual,
            model,
            lm_head: LmHead::new(lm_head),
            rope,
            device,
            kind,
            named: builder.into_named(),
        })
    }

    /// The model computing on `device` while its decoder layers, vision blocks and embedding
    /// stay where they are (host memory): each layer visits the device for its turn in a
    /// forward ([`text::DecoderLayer::forward`]), embedding rows are gathered where they live,
    /// and only the output head, the final norm, the vision tower's patch embedding and merger
    /// and the rotary tables move. The device then holds one layer's weights at a time instead
    /// of the model: how an offloaded reference model runs its no-grad pass.
    pub fn stream_to(mut self, device: Device) -> Result<Self, ModelError> {
        if device == self.device {
            return Ok(self);
        }
        let vocab = self.output_vocab().map(|v| v.ids.clone());
        self.lm_head = LmHead::new(self.lm_head.weight.f_to_device(device)?);
        if let Some(ids) = vocab {
            self.lm_head.restrict_output_vocab(&ids)?;
        }
        self.model.norm = self.model.norm.to_device(device)?;
        self.visual = self.visual.stream_to(device)?;
        self.rope = MRope::new(&self.config, device)?;
        self.device = device;
        Ok(self)
    }

    /// Device of the weights.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Floating kind of the weights and activations.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Every distinct weight with its published checkpoint name (a tied `lm_head` is not listed),
    /// in checkpoint order: exactly the keys the loader reads.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.named
            .iter()
            .map(|(name, t)| (name.clone(), t.shallow_clone()))
            .collect()
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
        self.embed_with(input_ids, images, None)
    }

    /// [`Self::embed`], with the vision blocks checkpointed on `tape` when given.
    fn embed_with<'m>(
        &'m self,
        input_ids: &Tensor,
        images: Option<&VisionInputs>,
        tape: Option<&mut RecomputeTape<'m>>,
    ) -> Result<Tensor, ModelError> {
        let ids = input_ids.f_to_device(self.device)?;
        // rows are gathered where the table lives (host memory for a streamed model)
        let table = &self.model.embed_tokens;
        let embeds = table
            .f_index_select(0, &ids.f_flatten(0, -1)?.f_to_device(table.device())?)?
            .f_to_device(self.device)?
            .f_view([ids.size()[0], ids.size()[1], self.config.text.hidden_size])?;
        // Without images (decode steps, text-only prompts) image ids keep their own embedding,
        // as in transformers; a sampled `<|image_pad|>` must not abort a rollout.
        let Some(images) = images else {
            return Ok(embeds);
        };
        let is_image = ids.f_eq(self.config.image_token_id)?;
        let n_tokens = i64::try_from(is_image.f_sum(Kind::Int64)?)?;
        let features = self.image_features_with(images, tape)?;
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
        self.image_features_with(images, None)
    }

    /// [`Self::image_features`], with the vision blocks checkpointed on `tape` when given.
    fn image_features_with<'m>(
        &'m self,
        images: &VisionInputs,
        tape: Option<&mut RecomputeTape<'m>>,
    ) -> Result<Tensor, ModelError> {
        let grids = images.distinct_grids()?;
        let features = self.visual.forward(&images.pixel_values, &grids, tape)?;
        if images.sources.is_empty() {
            return Ok(features);
        }
        let merge = self.config.vision.spatial_merge_size.pow(2);
        let sizes: Vec<i64> = grids.iter().map(|g| g[0] * g[1] * g[2] / merge).collect();
        let per_image = features.f_split_with_sizes(&sizes, 0)?;
        let occurrences: Vec<&Tensor> = images.sources.iter().map(|&s| &per_image[s]).collect();
        Ok(Tensor::f_cat(&occurrences, 0)?)
    }

    /// One forward pass: f32 logits at `logits_at` from the full-vocabulary view of the head
    /// ([`LmHead::logits`]: ids >= 151665, the untrained rows, and ids outside an output
    /// restriction are -inf). Arguments as [`Qwen2_5VLForConditionalGeneration::hidden_states`].
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        images: Option<&VisionInputs>,
        cache: Option<&mut KvCache>,
        logits_at: LogitsAt<'_>,
    ) -> Result<Tensor, ModelError> {
        let hidden = self.hidden_states(
            input_ids,
            position_ids,
            attention_mask,
            images,
            cache,
            logits_at,
        )?;
        self.lm_head.logits(&hidden)
    }

    /// The decoder's final (normed) hidden states `[B, ·, D]` at `at`, for the caller to apply
    /// [`Self::lm_head`] to.
    ///
    /// * `input_ids [B, L]` new tokens (prompt at prefill, one token per row when decoding);
    /// * `position_ids [3, B, L]` their M-RoPE positions (from [`get_rope_index`] at prefill,
    ///   `next_position + step` when decoding);
    /// * `attention_mask [B, S]` 0/1 over every slot, cached ones first (`S = cache.len() + L`),
    ///   or the boolean `[B, 1, L, S]` of keys each query may see, used as given (the engine's
    ///   ragged decode builds it directly);
    /// * `images` for the image tokens among `input_ids` (prefill only);
    /// * `cache`: written at its end and advanced by `L` when given.
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        images: Option<&VisionInputs>,
        cache: Option<&mut KvCache>,
        at: LogitsAt<'_>,
    ) -> Result<Tensor, ModelError> {
        self.hidden_states_with(
            input_ids,
            position_ids,
            attention_mask,
            images,
            cache,
            at,
            None,
        )
    }

    /// [`Self::hidden_states`] of a training forward with gradient checkpointing: every decoder
    /// layer and vision block is recorded on `tape` and recomputed in its backward
    /// ([`RecomputeTape::backward`], which must then replace `loss.backward()`).
    pub fn hidden_states_checkpointed<'m>(
        &'m self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        images: Option<&VisionInputs>,
        at: LogitsAt<'_>,
        tape: &mut RecomputeTape<'m>,
    ) -> Result<Tensor, ModelError> {
        self.hidden_states_with(
            input_ids,
            position_ids,
            attention_mask,
            images,
            None,
            at,
            Some(tape),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn hidden_states_with<'m>(
        &'m self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        images: Option<&VisionInputs>,
        cache: Option<&mut KvCache>,
        at: LogitsAt<'_>,
        mut tape: Option<&mut RecomputeTape<'m>>,
    ) -> Result<Tensor, ModelError> {
        let embeds = self.embed_with(input_ids, images, tape.as_deref_mut())?;
        let (b, l) = (embeds.size()[0], embeds.size()[1]);
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mask = attention_mask.f_to_device(self.device)?;
        let mask = if mask.kind() == Kind::Bool && mask.size() == [b, 1, l, past + l] {
            AttentionMask::Allowed(mask)
        } else if mask.size() == [b, past + l] {
            AttentionMask::for_forward(&mask, past, l)?
        } else {
            return Err(ModelError::Input(format!(
                "attention_mask {:?} must be [B={b}, cached {past} + new {l}] (0/1) or \
                 [B, 1, {l}, {}] (bool)",
                mask.size(),
                past + l
            )));
        };
        let (cos, sin) = self
            .rope
            .cos_sin(&position_ids.f_to_device(self.device)?, self.kind)?;
        let hidden = match tape {
            Some(tape) => self
                .model
                .forward_checkpointed(&embeds, &cos, &sin, &mask, tape)?,
            None => self.model.forward(&embeds, &cos, &sin, &mask, cache)?,
        };
        match at {
            LogitsAt::All => Ok(hidden),
            LogitsAt::Last => Ok(hidden.f_narrow(1, l - 1, 1)?),
            LogitsAt::Positions(index) => gather_positions(&hidden, index),
        }
    }
}
