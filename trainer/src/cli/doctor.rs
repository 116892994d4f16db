//! `spatialthinker doctor`: what this build links against and what the machine offers.

mod libtorch_version;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libtorch_version::{compare, read_libtorch_version, Compatibility, CudaBuild, LibtorchVersion};
use tch::{Device, Kind, Tensor};
use trainer::tokenizer;

/// Print crate and libtorch versions, CUDA availability, bf16 support, threads and the tokenizer.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "libtorch is the library loaded into this process (found through \
/proc/self/maps), its version read from the first of version.py (a pip wheel's torch folder), \
build-version (the libtorch zip) or the headers' version.h beside its lib/ folder; \
libtorch_built_against is the same reading of the folder the binary was linked against. Exits \
non-zero when the two are different releases (a local suffix such as +cu130 on one side only is \
no difference)."
)]
pub struct Args {
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The libtorch loaded into this process.
struct LoadedLibtorch {
    /// Folder of `libtorch_cpu.so`.
    lib: PathBuf,
    /// Its version, read from the folder above `lib`.
    version: Option<LibtorchVersion>,
    /// Whether `libtorch_cuda.so` is mapped: the CUDA backend is linked in.
    cuda_loaded: bool,
    /// Whether `libtorch_cuda.so` lies beside `libtorch_cpu.so`: a CUDA build.
    cuda_present: bool,
    /// The CUDA runtime library mapped into the process (every CUDA build of `libtorch_cpu.so`
    /// links one), if any.
    cudart: Option<PathBuf>,
}

/// The files mapped into this process, from `/proc/self/maps`, each once.
fn mapped_files() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut files: Vec<PathBuf> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    files.dedup();
    files
}

/// Whether `path`'s file name is `name` or a versioned `name.N…`.
fn is_library(path: &Path, name: &str) -> bool {
    path.file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f == name || f.strip_prefix(name).is_some_and(|v| v.starts_with('.')))
}

/// libtorch as loaded into this process, read from its memory map; `None` when
/// `libtorch_cpu.so` is not mapped.
fn loaded_libtorch() -> Option<LoadedLibtorch> {
    let files = mapped_files();
    let cpu = files.iter().find(|p| is_library(p, "libtorch_cpu.so"))?;
    let lib = cpu.parent()?.to_path_buf();
    let root = lib
        .parent()
        .map_or_else(|| lib.join(".."), Path::to_path_buf);
    Some(LoadedLibtorch {
        version: read_libtorch_version(&root),
        cuda_loaded: files.iter().any(|p| is_library(p, "libtorch_cuda.so")),
        cuda_present: lib.join("libtorch_cuda.so").exists(),
        cudart: files
            .iter()
            .find(|p| is_library(p, "libcudart.so"))
            .cloned(),
        lib,
    })
}

/// The version of an already loaded CUDA runtime library (`cudaRuntimeGetVersion`, which needs
/// no driver or GPU), as `13.0`.
fn cuda_runtime_version(path: &Path) -> Option<String> {
    use std::ffi::{c_int, CString};
    use std::os::unix::ffi::OsStrExt;
    let file = CString::new(path.as_os_str().as_bytes()).ok()?;
    let symbol = CString::new("cudaRuntimeGetVersion").ok()?;
    // SAFETY: RTLD_NOLOAD only returns a handle to a library this process has already loaded
    // (it loads nothing); the symbol is CUDA's documented `cudaError_t
    // cudaRuntimeGetVersion(int*)`, called with a valid pointer; the handle is closed after use.
    unsafe {
        let handle = libc::dlopen(file.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let f = libc::dlsym(handle, symbol.as_ptr());
        let mut version: c_int = 0;
        let status = if f.is_null() {
            -1
        } else {
            let get: unsafe extern "C" fn(*mut c_int) -> c_int = std::mem::transmute(f);
            get(&mut version)
        };
        libc::dlclose(handle);
        (status == 0 && version > 0).then(|| format!("{}.{}", version / 1000, version % 1000 / 10))
    }
}

/// The CUDA build of the loaded libtorch: as its version file records it, else the CUDA runtime
/// a libtorch with `libtorch_cuda.so` loads, else `cpu` without `libtorch_cuda.so`.
fn cuda_build(loaded: &LoadedLibtorch, runtime: Option<&str>) -> String {
    match loaded.version.as_ref().map(|v| &v.cuda) {
        Some(CudaBuild::Unknown) | None => match (loaded.cuda_present, runtime) {
            (true, Some(v)) => v.to_string(),
            (true, None) => CudaBuild::Unknown.as_str().to_string(),
            (false, _) => CudaBuild::CpuOnly.as_str().to_string(),
        },
        Some(known) => known.as_str().to_string(),
    }
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
    let loaded = loaded_libtorch()
        .context("libtorch_cpu.so is not mapped into this process: libtorch could not be loaded")?;
    // A first real op proves the library works, not only that it was mapped.
    let probe = Tensor::f_ones([2], (Kind::Float, Device::Cpu))
        .and_then(|t| t.f_sum(Kind::Float))
        .and_then(|t| f64::try_from(t).map_err(|e| tch::TchError::Convert(e.to_string())))
        .context("libtorch is loaded but a first tensor operation failed")?;
    if probe != 2.0 {
        bail!("libtorch computed 1 + 1 = {probe}");
    }
    let version = loaded
        .version
        .as_ref()
        .map_or_else(|| "unknown".to_string(), |v| v.version.clone());
    let runtime = loaded.cudart.as_deref().and_then(cuda_runtime_version);
    let cuda = tch::Cuda::is_available();
    let gpus = tch::Cuda::device_count();
    let cudnn = tch::Cuda::cudnn_is_available();
    let bf16_cpu = bf16_works(Device::Cpu);
    let bf16_cuda = cuda && bf16_works(Device::Cuda(0));
    let tok = tokenizer::embedded_tokenizer().context("the embedded tokenizer does not load")?;
    let report = serde_json::json!({
        "spatialthinker": env!("CARGO_PKG_VERSION"),
        "libtorch": version,
        "libtorch_built_against": built,
        "libtorch_cuda_build": cuda_build(&loaded, runtime.as_deref()),
        "libtorch_version_file": loaded
            .version
            .as_ref()
            .map_or_else(|| "none found".to_string(), |v| v.source.display().to_string()),
        "libtorch_lib": loaded.lib.display().to_string(),
        "libtorch_cuda_loaded": loaded.cuda_loaded,
        "cuda_feature": cfg!(feature = "cuda"),
        "cuda_runtime": runtime.as_deref().unwrap_or("not loaded"),
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
    let lib_dir = loaded.lib.display();
    if cfg!(feature = "cuda") && !loaded.cuda_loaded {
        eprintln!("warning: built with --features cuda, but libtorch_cuda.so is not loaded from {lib_dir}: CUDA is unavailable");
    }
    match compare(&version, built) {
        Compatibility::Same => {}
        Compatibility::OtherBuild => eprintln!(
            "note: libtorch {version} (loaded from {lib_dir}) is another build of the release this binary was built against ({built}): same C++ API, other CUDA libraries"
        ),
        Compatibility::Unknown => eprintln!(
            "note: cannot compare the loaded libtorch ({version}, from {lib_dir}) with the one this binary was built against ({}): a version is not recorded",
            if built.is_empty() { "unknown" } else { built }
        ),
        Compatibility::Mismatch => bail!(
            "libtorch {version} is loaded from {lib_dir}, but this binary was built against {built}: rebuild against it (cargo clean -p torch-sys) or fix LD_LIBRARY_PATH"
        ),
    }
    Ok(())
}
