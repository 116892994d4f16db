//! `spatialthinker export --merge CKPT --out DIR`: a LoRA checkpoint (or any PEFT LoRA adapter
//! folder) merged into its base model, written as a complete Hugging Face model folder
//! (`config.json`, safetensors shards and index, tokenizer and processor files) that
//! `transformers`, `infer`, `eval` and `serve` load without the adapter.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::Kind;
use trainer::device::{DeviceArg, DtypeArg};
use trainer::model::lora::AdapterConfig;
use trainer::model::{locate_checkpoint, Qwen2_5VLForConditionalGeneration};
use trainer::train::checkpoint::{
    CheckpointManager, ModelFiles, TrainerState, DEFAULT_MAX_SHARD_BYTES, TRAINER_STATE_FILE,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The adapter folder to merge: a LoRA run's `checkpoint-<step>` or a PEFT adapter folder.
    #[arg(long, value_name = "CKPT")]
    merge: PathBuf,
    /// Where to write the merged model folder (must not exist yet).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The base model (folder or hub id); default: the adapter's `base_model_name_or_path`.
    #[arg(long)]
    model: Option<String>,
    /// Precision of the written weights (the merge itself is computed in f32); default: the
    /// base's `torch_dtype`/`dtype` in its `config.json`, else f32.
    #[arg(long)]
    dtype: Option<DtypeArg>,
    /// Device the merge runs on.
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,
}

/// Files that are not copied from the base or the adapter folder into the merged folder.
fn skipped(name: &str) -> bool {
    name == "config.json"
        || name == TRAINER_STATE_FILE
        || name == trainer::model::ADAPTER_CONFIG_FILE
        || name.ends_with(".safetensors")
        || name.ends_with(".safetensors.index.json")
        || name.starts_with("optimizer")
}

/// The tokenizer, processor, template and generation files of `dir`.
fn side_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let text = name.ends_with(".json") || name.ends_with(".txt") || name.ends_with(".jinja");
        if path.is_file() && text && !skipped(name) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The kind a `config.json` says the weights are stored in.
fn stored_kind(config: &serde_json::Value) -> Kind {
    let dtype = config
        .get("torch_dtype")
        .or_else(|| config.get("dtype"))
        .and_then(|d| d.as_str());
    match dtype {
        Some("bfloat16") => Kind::BFloat16,
        _ => Kind::Float,
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.out.exists() {
        bail!(
            "--out {} already exists; choose a new folder",
            args.out.display()
        );
    }
    let adapter = AdapterConfig::read(&args.merge)?;
    let base_name = match (&args.model, &adapter.base_model_name_or_path) {
        (Some(m), _) => m.clone(),
        (None, Some(b)) => b.clone(),
        (None, None) => bail!(
            "{}: adapter_config.json names no base_model_name_or_path; pass --model",
            args.merge.display()
        ),
    };
    let base_dir = locate_checkpoint(&base_name).with_context(|| format!("base {base_name}"))?;
    let config_path = base_dir.join("config.json");
    let config: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    let kind = args
        .dtype
        .map_or_else(|| stored_kind(&config), DtypeArg::kind);

    let mut model =
        Qwen2_5VLForConditionalGeneration::load(&base_dir, args.device.resolve()?, Kind::Float)
            .with_context(|| format!("loading {}", base_dir.display()))?;
    model
        .load_adapter(&args.merge)
        .with_context(|| format!("--merge {}", args.merge.display()))?;
    let layers = model.lora_tensors().len() / 2;
    model.merge_adapters()?;

    // the adapter folder's own side files (prompt template, output vocabulary) win
    let mut copy_files = side_files(&base_dir)?;
    for f in side_files(&args.merge)? {
        copy_files.retain(|p| p.file_name() != f.file_name());
        copy_files.push(f);
    }
    let tensors = model.named_tensors();
    // written through the checkpoint writer (atomic, sharded, indexed) into a staging root
    let parent = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".export-{}-{}",
        args.out
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model"),
        std::process::id()
    ));
    let manager = CheckpointManager::new(&staging, 1, DEFAULT_MAX_SHARD_BYTES);
    let state = TrainerState {
        rl_step: 0,
        optimizer_step: 0,
        data_cursor: serde_json::Value::Null,
        rng: serde_json::Value::Null,
        optimizer_param_steps: Vec::new(),
        extra: serde_json::Value::Null,
    };
    let written = manager.save(
        0,
        &ModelFiles {
            tensors: &tensors,
            save_kind: Some(kind),
            config_json: &config,
            copy_files: &copy_files,
            adapter_config: None,
        },
        None,
        &state,
    )?;
    fs::remove_file(written.join(TRAINER_STATE_FILE))?;
    fs::rename(&written, &args.out)
        .with_context(|| format!("moving the merged model to {}", args.out.display()))?;
    fs::remove_dir_all(&staging).ok();
    eprintln!(
        "merged {layers} adapted layers of {} into {} ({:?} weights, base {})",
        args.merge.display(),
        args.out.display(),
        kind,
        base_dir.display()
    );
    Ok(())
}
