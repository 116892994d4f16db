//! LoRA adapters (low-rank updates `W + (α / r) · B A` of chosen linear layers) in PEFT's
//! format: the layers chosen by PEFT's `target_modules` rule, A initialised Kaiming-uniform and
//! B zero as PEFT's `init_lora_weights = True`, `adapter_model.safetensors` keys and
//! `adapter_config.json` fields as PEFT 0.21 writes them for `Qwen2_5_VLForConditionalGeneration`
//! in transformers 5.23 (docs/architecture.md, "LoRA").
//!
//! Upstream: <https://github.com/huggingface/peft/blob/v0.21.2/src/peft/tuners/lora/layer.py>
//! (`LoraLayer.update_layer`, `reset_lora_parameters`, `Linear.forward`, `get_delta_weight`),
//! <https://github.com/huggingface/peft/blob/v0.21.2/src/peft/tuners/tuners_utils.py>
//! (`check_target_module_exists`), and
//! <https://github.com/huggingface/peft/blob/v0.21.2/src/peft/utils/save_and_load.py>
//! (`get_peft_model_state_dict`: the adapter name is dropped from the saved keys).
//!
//! Adapters are f32 whatever the base weights' kind; the base weights are never modified (except
//! by [`Qwen2_5VLForConditionalGeneration::merge_adapters`]). A model's adapters are attached to
//! its [`Linear`] layers; [`Qwen2_5VLForConditionalGeneration::without_adapters`] is a second
//! handle on the same base tensors without them (the frozen reference of a LoRA run: no copy).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::checkpoint::grad_mode_enabled;
use super::text::Linear;
use super::weights::{normalize_key, Weights};
use super::{ModelError, Qwen2_5VLForConditionalGeneration};

/// PEFT's adapter weights file.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's adapter configuration file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The PEFT version whose file layout is written (and that the parity test pins).
pub const PEFT_VERSION: &str = "0.21.2";
/// Prefix of every saved key: `PeftModel.base_model` (LoraModel) `.model` (the transformers model).
const PEFT_PREFIX: &str = "base_model.model.";

/// The decoder's linear layers, the default `target_modules`.
pub const DEFAULT_TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

fn default_r() -> i64 {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    DEFAULT_TARGET_MODULES.map(String::from).to_vec()
}

/// `[model.lora]`: which layers get adapters and their rank and scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of every adapter.
    #[serde(default = "default_r")]
    pub r: i64,
    /// `lora_alpha`: the update is scaled by `alpha / r`.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input in training forwards (PEFT's `lora_dropout`).
    #[serde(default)]
    pub dropout: f64,
    /// Module names as PEFT matches them: a layer is adapted when its module path equals an
    /// entry or ends with `.` + the entry (`q_proj`, `mlp.0`, ...).
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
    /// Also adapt the vision tower's and merger's layers that `target_modules` names (its MLP's
    /// `gate_proj`/`up_proj`/`down_proj`; `qkv`, `proj`, `mlp.0`, `mlp.2` when listed).
    #[serde(default)]
    pub vision: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: default_targets(),
            vision: false,
        }
    }
}

impl LoraConfig {
    /// Checks the values, naming the offending `model.lora` field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(format!("model.lora.{m}")));
        if self.r < 1 {
            return bad(format!("r = {} must be at least 1", self.r));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad(format!("alpha = {} must be a positive number", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout = {} must be in [0, 1)", self.dropout));
        }
        if self.target_modules.is_empty() || self.target_modules.iter().any(|t| t.is_empty()) {
            return bad("target_modules must name at least one module, none empty".into());
        }
        Ok(())
    }

    /// The update's scale `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

/// One layer's adapter: `A [r, in]`, `B [out, r]` (f32) and the scale of `B A`.
#[derive(Debug)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    /// Dropout probability on the adapter's input while grad mode is on (training forwards).
    pub dropout: f64,
}

impl LoraPair {
    /// `y + scale · (x Aᵀ) Bᵀ`, the adapter computed in its own kind (f32) and the sum cast back
    /// to `y`'s kind, as PEFT's `Linear.forward` does.
    pub fn add_to(&self, x: &Tensor, y: &Tensor) -> Result<Tensor, ModelError> {
        let mut xa = x.f_to_kind(self.a.kind())?;
        if self.dropout > 0.0 && grad_mode_enabled() {
            xa = xa.f_dropout(self.dropout, true)?;
        }
        let delta = xa
            .f_linear::<&Tensor>(&self.a, None)?
            .f_linear::<&Tensor>(&self.b, None)?
            .f_mul_scalar(self.scale)?;
        Ok(y.f_add(&delta)?.f_to_kind(y.kind())?)
    }

    /// `scale · B A [out, in]` (f32), what merging adds to the base weight.
    pub fn delta_weight(&self) -> Result<Tensor, ModelError> {
        Ok(self.b.f_matmul(&self.a)?.f_mul_scalar(self.scale)?)
    }

    /// A copy on `device` (a streamed layer visiting the device).
    pub fn to_device(&self, device: Device) -> Result<Self, ModelError> {
        Ok(LoraPair {
            a: self.a.f_to_device(device)?,
            b: self.b.f_to_device(device)?,
            scale: self.scale,
            dropout: self.dropout,
        })
    }
}

/// Our key of a module (`model.layers.0.self_attn.q_proj`, `visual.blocks.1.mlp.up_proj`) as
/// transformers 5.23 names it in `Qwen2_5_VLForConditionalGeneration`
/// (`model.language_model.layers.0.self_attn.q_proj`, `model.visual.blocks.1.mlp.up_proj`).
pub fn hf_module_path(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("model.") {
        format!("model.language_model.{rest}")
    } else if let Some(rest) = key.strip_prefix("visual.") {
        format!("model.visual.{rest}")
    } else {
        key.to_string()
    }
}

/// The saved key of a module's `lora_A`/`lora_B` weight (`which` = `"A"` or `"B"`).
pub fn peft_key(module: &str, which: &str) -> String {
    format!(
        "{PEFT_PREFIX}{}.lora_{which}.weight",
        hf_module_path(module)
    )
}

/// PEFT's `target_modules` rule over a module path: equal to an entry, or ending with `.entry`.
pub fn targeted(hf_path: &str, targets: &[String]) -> bool {
    targets
        .iter()
        .any(|t| hf_path == t || hf_path.ends_with(&format!(".{t}")))
}

/// A saved key back to (our module key, `"A"`/`"B"`), for every layout PEFT writes for this
/// model (transformers 4.52+ `model.language_model.*`/`model.visual.*`, earlier `model.*`/
/// `visual.*`), with or without an adapter name before `.weight`.
fn parse_peft_key(key: &str) -> Option<(String, &'static str)> {
    let rest = key.strip_prefix(PEFT_PREFIX)?;
    let rest = rest.strip_suffix(".weight")?;
    for (marker, which) in [(".lora_A", "A"), (".lora_B", "B")] {
        if let Some(pos) = rest.rfind(marker) {
            let tail = &rest[pos + marker.len()..];
            // `.lora_A` directly, or `.lora_A.<adapter name>` (never a further dot)
            if tail.is_empty() || (tail.starts_with('.') && !tail[1..].contains('.')) {
                return Some((normalize_key(&rest[..pos]), which));
            }
        }
    }
    None
}

/// What an `adapter_config.json` says that this code uses, checked for what it cannot run.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub r: i64,
    pub alpha: f64,
    pub dropout: f64,
    /// `use_rslora`: scale `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// `rank_pattern`: per-module ranks (the rank is read from each `lora_A`'s shape).
    pub has_rank_pattern: bool,
    pub base_model_name_or_path: Option<String>,
}

impl AdapterConfig {
    /// Reads `dir/adapter_config.json`; a field whose value this code cannot run (DoRA, biases,
    /// `fan_in_fan_out`, `alpha_pattern`, `modules_to_save`, another `peft_type`) is an error
    /// naming the file and the field.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("{}: invalid JSON: {e}", path.display())))?;
        let field = |name: &str| v.get(name).filter(|x| !x.is_null());
        let unsupported = |name: &str, why: &str| {
            Err(ModelError::Config(format!(
                "{}: `{name}` = {}: {why}",
                path.display(),
                field(name).map_or("null".into(), |x| x.to_string())
            )))
        };
        match field("peft_type").and_then(|t| t.as_str()) {
            Some("LORA") => {}
            _ => return unsupported("peft_type", "only LoRA adapters (\"LORA\") are supported"),
        }
        let truthy = |name: &str| field(name).and_then(|x| x.as_bool()).unwrap_or(false);
        for flag in ["use_dora", "lora_bias", "fan_in_fan_out", "use_qalora"] {
            if truthy(flag) {
                return unsupported(flag, "not supported (plain LoRA only)");
            }
        }
        if field("bias").and_then(|b| b.as_str()).unwrap_or("none") != "none" {
            return unsupported("bias", "only \"none\" is supported");
        }
        let non_empty = |name: &str| match field(name) {
            Some(serde_json::Value::Object(m)) => !m.is_empty(),
            Some(serde_json::Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
            None => false,
        };
        for name in ["alpha_pattern", "modules_to_save", "layer_replication"] {
            if non_empty(name) {
                return unsupported(name, "not supported");
            }
        }
        let num = |name: &str| -> Result<f64, ModelError> {
            field(name).and_then(|x| x.as_f64()).ok_or_else(|| {
                ModelError::Config(format!("{}: `{name}` must be a number", path.display()))
            })
        };
        let r = num("r")?;
        Ok(AdapterConfig {
            r: r as i64,
            alpha: num("lora_alpha")?,
            dropout: field("lora_dropout")
                .and_then(|x| x.as_f64())
                .unwrap_or(0.0),
            use_rslora: truthy("use_rslora"),
            has_rank_pattern: non_empty("rank_pattern"),
            base_model_name_or_path: field("base_model_name_or_path")
                .and_then(|x| x.as_str())
                .map(String::from),
        })
    }

    /// The scale of an adapter of rank `r`.
    pub fn scale(&self, r: i64) -> f64 {
        if self.use_rslora {
            self.alpha / (r as f64).sqrt()
        } else {
            self.alpha / r as f64
        }
    }
}

/// `adapter_config.json` as PEFT 0.21.2 writes it for a LoRA of `cfg` on a model read from
/// `base_model`: every field PEFT writes, with PEFT's defaults for those `[model.lora]` does not
/// set. With `vision = false` the vision tower is left out through `exclude_modules` (a regex
/// PEFT matches against whole module paths) when a target name also occurs there.
pub fn adapter_config_json(
    cfg: &LoraConfig,
    base_model: &str,
    excludes_vision: bool,
) -> serde_json::Value {
    serde_json::json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": {
            "base_model_class": "Qwen2_5_VLForConditionalGeneration",
            "parent_library": "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl"
        },
        "base_model_name_or_path": base_model,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": if excludes_vision { serde_json::json!("model\\.visual\\..*") } else { serde_json::Value::Null },
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": cfg.alpha,
        "lora_bias": false,
        "lora_dropout": cfg.dropout,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": PEFT_VERSION,
        "qalora_group_size": 16,
        "r": cfg.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": cfg.target_modules,
        "target_parameters": null,
        "task_type": null,
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null
    })
}

/// A uniform draw in `[-bound, bound)` for each of `n` values, from a seeded stream.
fn uniform(rng: &mut data::rng::SplitMix64, n: usize, bound: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

impl Qwen2_5VLForConditionalGeneration {
    /// Every linear layer that may carry an adapter, under its key (`model.layers.{i}.self_attn
    /// .q_proj`, ..., `visual.blocks.{i}.attn.qkv`, ..., `visual.merger.mlp.0`), in model order.
    pub fn linear_layers(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter().enumerate() {
            let (a, m) = (&l.self_attn, &l.mlp);
            for (name, lin) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{name}"), lin));
            }
        }
        for (i, b) in self.visual.blocks.iter().enumerate() {
            let (a, m) = (&b.attn, &b.mlp);
            for (name, lin) in [
                ("attn.qkv", &a.qkv),
                ("attn.proj", &a.proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ] {
                out.push((format!("visual.blocks.{i}.{name}"), lin));
            }
        }
        let merger = &self.visual.merger;
        out.push(("visual.merger.mlp.0".into(), &merger.mlp0));
        out.push(("visual.merger.mlp.2".into(), &merger.mlp2));
        out
    }

    /// [`Self::linear_layers`], mutable.
    fn linear_layers_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            let (a, m) = (&mut l.self_attn, &mut l.mlp);
            for (name, lin) in [
                ("self_attn.q_proj", &mut a.q_proj),
                ("self_attn.k_proj", &mut a.k_proj),
                ("self_attn.v_proj", &mut a.v_proj),
                ("self_attn.o_proj", &mut a.o_proj),
                ("mlp.gate_proj", &mut m.gate_proj),
                ("mlp.up_proj", &mut m.up_proj),
                ("mlp.down_proj", &mut m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{name}"), lin));
            }
        }
        for (i, b) in self.visual.blocks.iter_mut().enumerate() {
            let (a, m) = (&mut b.attn, &mut b.mlp);
            for (name, lin) in [
                ("attn.qkv", &mut a.qkv),
                ("attn.proj", &mut a.proj),
                ("mlp.gate_proj", &mut m.gate_proj),
                ("mlp.up_proj", &mut m.up_proj),
                ("mlp.down_proj", &mut m.down_proj),
            ] {
                out.push((format!("visual.blocks.{i}.{name}"), lin));
            }
        }
        let merger = &mut self.visual.merger;
        out.push(("visual.merger.mlp.0".into(), &mut merger.mlp0));
        out.push(("visual.merger.mlp.2".into(), &mut merger.mlp2));
        out
    }

    /// The keys of the layers `cfg` adapts (PEFT's matching over transformers' module paths;
    /// the vision tower only with `cfg.vision`).
    pub fn lora_targets(&self, cfg: &LoraConfig) -> Vec<String> {
        self.linear_layers()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| cfg.vision || !k.starts_with("visual."))
            .filter(|k| targeted(&hf_module_path(k), &cfg.target_modules))
            .collect()
    }

    /// Whether `cfg` leaves out vision layers that its `target_modules` names (then the written
    /// `adapter_config.json` excludes them explicitly).
    pub fn lora_excludes_vision(&self, cfg: &LoraConfig) -> bool {
        !cfg.vision
            && self.linear_layers().iter().any(|(k, _)| {
                k.starts_with("visual.") && targeted(&hf_module_path(k), &cfg.target_modules)
            })
    }

    /// Attaches fresh adapters to the layers `cfg` names, initialised as PEFT does: `A` uniform in
    /// `±1/sqrt(in)` (Kaiming-uniform with `a = sqrt(5)`), drawn from a stream seeded with
    /// `seed`, and `B` zero, so the model's outputs are unchanged. Adapters are f32, on the
    /// model's device, and require grad; returns them under their saved keys.
    pub fn attach_lora(
        &mut self,
        cfg: &LoraConfig,
        seed: u64,
    ) -> Result<Vec<(String, Tensor)>, ModelError> {
        cfg.validate()?;
        let targets = self.lora_targets(cfg);
        if targets.is_empty() {
            return Err(ModelError::Config(format!(
                "model.lora.target_modules = {:?} matches no linear layer of the model",
                cfg.target_modules
            )));
        }
        let device = self.device();
        let mut rng = data::rng::SplitMix64::new(seed ^ 0x4c6f_5241);
        let mut pairs = BTreeMap::new();
        for key in &targets {
            let (out, inp) = {
                let lin = self
                    .linear_layers()
                    .into_iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, l)| l.weight.size())
                    .unwrap_or_default();
                (lin[0], lin[1])
            };
            let bound = 1.0 / (inp as f64).sqrt();
            let a = Tensor::from_slice(&uniform(&mut rng, (cfg.r * inp) as usize, bound))
                .f_view([cfg.r, inp])?
                .f_to_device(device)?;
            let b = Tensor::f_zeros([out, cfg.r], (Kind::Float, device))?;
            pairs.insert(key.clone(), (a, b));
        }
        self.set_adapters(pairs, |_| cfg.scale(), cfg.dropout)
    }

    /// Puts `pairs` (module key → `(A, B)`) on their layers as trainable f32 tensors, removing
    /// any adapters attached before.
    fn set_adapters(
        &mut self,
        mut pairs: BTreeMap<String, (Tensor, Tensor)>,
        scale: impl Fn(i64) -> f64,
        dropout: f64,
    ) -> Result<Vec<(String, Tensor)>, ModelError> {
        let device = self.device();
        let mut named = Vec::new();
        for (key, lin) in self.linear_layers_mut() {
            lin.lora = None;
            let Some((a, b)) = pairs.remove(&key) else {
                continue;
            };
            let (out, inp) = (lin.weight.size()[0], lin.weight.size()[1]);
            let r = a.size()[0];
            if a.size() != [r, inp] || b.size() != [out, r] {
                return Err(ModelError::ShapeMismatch {
                    name: format!("{} / {}", peft_key(&key, "A"), peft_key(&key, "B")),
                    expected: vec![r, inp, out, r],
                    got: [a.size(), b.size()].concat(),
                });
            }
            let prep = |t: Tensor| -> Result<Tensor, ModelError> {
                Ok(t.f_detach()?
                    .f_to_device(device)?
                    .f_to_kind(Kind::Float)?
                    .f_contiguous()?
                    .f_set_requires_grad(true)?)
            };
            let (a, b) = (prep(a)?, prep(b)?);
            named.push((peft_key(&key, "A"), a.shallow_clone()));
            named.push((peft_key(&key, "B"), b.shallow_clone()));
            lin.lora = Some(LoraPair {
                a,
                b,
                scale: scale(r),
                dropout,
            });
        }
        if let Some(key) = pairs.keys().next() {
            return Err(ModelError::Config(format!(
                "adapter for `{key}`: the model has no such linear layer"
            )));
        }
        Ok(named)
    }

    /// The attached adapters' tensors under their saved keys (`base_model.model.model.
    /// language_model.layers.0.self_attn.q_proj.lora_A.weight`, ...), A before B, in model order.
    pub fn lora_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (key, lin) in self.linear_layers() {
            if let Some(l) = &lin.lora {
                out.push((peft_key(&key, "A"), l.a.shallow_clone()));
                out.push((peft_key(&key, "B"), l.b.shallow_clone()));
            }
        }
        out
    }

    /// Sets the dropout of every attached adapter (applied in grad-mode forwards only).
    pub fn set_adapter_dropout(&mut self, p: f64) {
        for (_, lin) in self.linear_layers_mut() {
            if let Some(l) = lin.lora.as_mut() {
                l.dropout = p;
            }
        }
    }

    /// Whether any adapter is attached.
    pub fn has_adapters(&self) -> bool {
        self.linear_layers().iter().any(|(_, l)| l.lora.is_some())
    }

    /// Loads a PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`,
    /// ours or PEFT's) onto this model, replacing any attached adapters. Every saved key must name
    /// a linear layer of the model and come with its partner; errors name the file and key.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<AdapterConfig, ModelError> {
        let cfg = AdapterConfig::read(dir)?;
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        if !path.exists() {
            return Err(ModelError::Config(format!(
                "{}: no {ADAPTER_WEIGHTS_FILE} (adapter_model.bin is not read; re-save with \
                 safe_serialization=True)",
                dir.display()
            )));
        }
        let tensors = Tensor::read_safetensors(&path).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut halves: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
        for (name, t) in tensors {
            let (module, which) = parse_peft_key(&name).ok_or_else(|| {
                ModelError::Config(format!(
                    "{}: `{name}` is not a LoRA weight of this model (expected \
                     base_model.model.<module>.lora_A.weight / lora_B.weight)",
                    path.display()
                ))
            })?;
            let slot = halves.entry(module).or_default();
            if which == "A" {
                slot.0 = Some(t);
            } else {
                slot.1 = Some(t);
            }
        }
        let mut pairs = BTreeMap::new();
        for (module, (a, b)) in halves {
            match (a, b) {
                (Some(a), Some(b)) => {
                    if !cfg.has_rank_pattern && a.size()[0] != cfg.r {
                        return Err(ModelError::Config(format!(
                            "{}: `{}` has rank {}, adapter_config.json says r = {}",
                            path.display(),
                            peft_key(&module, "A"),
                            a.size()[0],
                            cfg.r
                        )));
                    }
                    pairs.insert(module, (a, b));
                }
                _ => {
                    return Err(ModelError::Config(format!(
                        "{}: module `{module}` has only one of lora_A and lora_B",
                        path.display()
                    )))
                }
            }
        }
        let scale = |r: i64| cfg.scale(r);
        self.set_adapters(pairs, scale, 0.0)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Adds every adapter's `scale · B A` into its base weight (in f32, cast back to the weight's
    /// kind) and removes the adapters: the merged model PEFT's `merge_and_unload` gives.
    pub fn merge_adapters(&mut self) -> Result<(), ModelError> {
        let _guard = tch::no_grad_guard();
        for (_, lin) in self.linear_layers_mut() {
            let Some(lora) = lin.lora.take() else {
                continue;
            };
            let delta = lora.delta_weight()?.f_to_device(lin.weight.device())?;
            let merged = lin
                .weight
                .f_to_kind(Kind::Float)?
                .f_add(&delta)?
                .f_to_kind(lin.weight.kind())?;
            lin.weight.f_copy_(&merged)?;
        }
        Ok(())
    }

    /// A second model on the same base tensors (shared storage, nothing copied) with no
    /// adapters: the frozen reference of a LoRA run, "the policy with its adapters switched off".
    /// The output vocabulary restriction is carried over.
    pub fn without_adapters(&self) -> Result<Self, ModelError> {
        let weights = Weights::from_map(self.named_tensors().into_iter().collect());
        let mut base = Self::from_weights(self.config.clone(), &weights, self.device())?;
        if let Some(vocab) = self.output_vocab() {
            base.restrict_output_vocab(&vocab.ids)?;
        }
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_keys_round_trip_through_every_layout() {
        let k = "model.layers.0.self_attn.q_proj";
        assert_eq!(
            peft_key(k, "A"),
            "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(
            peft_key("visual.merger.mlp.0", "B"),
            "base_model.model.model.visual.merger.mlp.0.lora_B.weight"
        );
        for (saved, module, which) in [
            (
                "base_model.model.model.language_model.layers.3.mlp.up_proj.lora_B.weight",
                "model.layers.3.mlp.up_proj",
                "B",
            ),
            // transformers <= 4.51 module paths
            (
                "base_model.model.model.layers.3.mlp.up_proj.lora_A.weight",
                "model.layers.3.mlp.up_proj",
                "A",
            ),
            (
                "base_model.model.visual.blocks.1.attn.qkv.lora_A.default.weight",
                "visual.blocks.1.attn.qkv",
                "A",
            ),
            (
                "base_model.model.model.visual.merger.mlp.2.lora_B.weight",
                "visual.merger.mlp.2",
                "B",
            ),
        ] {
            assert_eq!(
                parse_peft_key(saved),
                Some((module.to_string(), which)),
                "{saved}"
            );
        }
        assert_eq!(parse_peft_key("base_model.model.lm_head.weight"), None);
        assert_eq!(
            parse_peft_key("model.layers.0.self_attn.q_proj.lora_A.weight"),
            None
        );
    }

    #[test]
    fn targets_follow_peft_suffix_rule() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let q = hf_module_path("model.layers.0.self_attn.q_proj");
        assert!(targeted(&q, &t(&["q_proj"])));
        assert!(targeted(&q, &t(&["self_attn.q_proj"])));
        assert!(!targeted(&q, &t(&["proj"])));
        let m = hf_module_path("visual.merger.mlp.0");
        assert!(targeted(&m, &t(&["mlp.0"])));
        assert!(!targeted(&m, &t(&["merger"])));
    }

    #[test]
    fn config_values_are_checked_by_field() {
        let mut c = LoraConfig {
            r: 0,
            ..LoraConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("model.lora.r"));
        c.r = 4;
        c.dropout = 1.0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("model.lora.dropout"));
        c.dropout = 0.0;
        assert!(c.validate().is_ok());
        assert_eq!(c.scale(), 4.0);
    }

    #[test]
    fn adapter_adds_scaled_low_rank_update() {
        // y = x Wᵀ + 2 · (x Aᵀ) Bᵀ by hand: x = [1, 2], W = I, A = [[1, 1]], B = [[3], [-1]]
        let pair = LoraPair {
            a: Tensor::from_slice(&[1f32, 1.]).view([1, 2]),
            b: Tensor::from_slice(&[3f32, -1.]).view([2, 1]),
            scale: 2.0,
            dropout: 0.0,
        };
        let x = Tensor::from_slice(&[1f32, 2.]).view([1, 2]);
        let y = x.shallow_clone();
        let out = pair.add_to(&x, &y).unwrap();
        // x Aᵀ = 3; · Bᵀ = [9, -3]; · 2 = [18, -6]; + y = [19, -4]
        assert_eq!(
            Vec::<f32>::try_from(out.view([-1])).unwrap(),
            vec![19., -4.]
        );
        let d = pair.delta_weight().unwrap();
        assert_eq!(
            Vec::<f32>::try_from(d.view([-1])).unwrap(),
            vec![6., 6., -2., -2.]
        );
    }
}
