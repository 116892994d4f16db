//! `spatialthinker doctor`: what this build links against and what the machine offers.

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};
use trainer::tokenizer;

/// Print crate and libtorch versions, CUDA availability, bf16 support, threads and the tokenizer.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// libtorch as loaded into this process: the folder of `libtorch_cpu.so` read from the process'
/// memory map, and the version recorded beside it (`../build-version`).
fn loaded_libtorch() -> Option<(String, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let path = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))?;
    let lib = std::path::Path::new(path).parent()?;
    let version = std::fs::read_to_string(lib.join("../build-version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Some((lib.display().to_string(), version))
}

/// Whether bf16 arithmetic runs on `device` (a small matmul, checked against f32).
fn bf16_works(device: Device) -> bool {
    let check = || -> Result<bool, tch::TchError> {
        let a = Tensor::f_arange(16, (Kind::Float, device))?.f_reshape([4, 4])?;
        let exact = a.f_matmul(&a)?;
        let low = a
            .f_to_kind(Kind::BFloat16)?
            .f_matmul(&a.f_to_kind(Kind::BFloat16)?)?
            .f_to_kind(Kind::Float)?;
        low.f_allclose(&exact, 1e-2, 1e-2, false)
    };
    check().unwrap_or(false)
}

pub fn run(args: Args) -> Result<()> {
    let built = env!("SPATIALTHINKER_LIBTORCH_BUILD_VERSION");
    let (lib_dir, loaded) = loaded_libtorch()
        .context("libtorch_cpu.so is not mapped into this process: libtorch could not be loaded")?;
    // A first real op proves the library works, not only that it was mapped.
    let probe = Tensor::f_ones([2], (Kind::Float, Device::Cpu))
        .and_then(|t| t.f_sum(Kind::Float))
        .and_then(|t| f64::try_from(t).map_err(|e| tch::TchError::Convert(e.to_string())))
        .context("libtorch is loaded but a first tensor operation failed")?;
    if probe != 2.0 {
        bail!("libtorch computed 1 + 1 = {probe}");
    }
    let cuda = tch::Cuda::is_available();
    let gpus = tch::Cuda::device_count();
    let cudnn = tch::Cuda::cudnn_is_available();
    let bf16_cpu = bf16_works(Device::Cpu);
    let bf16_cuda = cuda && bf16_works(Device::Cuda(0));
    let tok = tokenizer::embedded_tokenizer().context("the embedded tokenizer does not load")?;
    let report = serde_json::json!({
        "spatialthinker": env!("CARGO_PKG_VERSION"),
        "libtorch": loaded,
        "libtorch_built_against": built,
        "libtorch_lib": lib_dir,
        "cuda": cuda,
        "cuda_devices": gpus,
        "cudnn": cudnn,
        "bf16_cpu": bf16_cpu,
        "bf16_cuda": bf16_cuda,
        "threads": tch::get_num_threads(),
        "tokenizer": format!(
            "embedded Qwen2.5-VL tokenizer.json, {} ids, sha256 {}",
            tok.get_vocab_size(true),
            tokenizer::EMBEDDED_TOKENIZER_SHA256
        ),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (key, value) in report.as_object().expect("report is an object") {
            let shown = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{key:<24} {shown}");
        }
    }
    if loaded != "unknown" && loaded != built {
        bail!("libtorch {loaded} is loaded from {lib_dir}, but this binary was built against {built}: rebuild (cargo clean -p torch-sys) or fix LD_LIBRARY_PATH");
    }
    Ok(())
}
