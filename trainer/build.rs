//! Makes the `spatialthinker` binary and the test binaries find libtorch at run time without
//! `LD_LIBRARY_PATH`, records which libtorch they are built against (for
//! `spatialthinker doctor`), and (feature `cuda`) forces libtorch_cuda to be linked.

use std::path::Path;

// Only the reader is needed here; `spatialthinker doctor` uses the rest of the module.
#[allow(dead_code)]
#[path = "src/cli/doctor/libtorch_version.rs"]
mod libtorch_version;

fn main() {
    // torch-sys exports the folder it linked against as DEP_TCH_LIBTORCH_LIB; its own rpath does
    // not reach our artifacts, so add it here.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // Record the libtorch version built against, read as `doctor` reads the loaded one: a
        // wheel's version.py, a zip's build-version, or the headers.
        let lib_dir = Path::new(&lib);
        let root = lib_dir
            .parent()
            .map_or_else(|| lib_dir.join(".."), Path::to_path_buf);
        let found = libtorch_version::read_libtorch_version(&root);
        let version = match &found {
            Some(v) => {
                println!("cargo:rerun-if-changed={}", v.source.display());
                v.version.clone()
            }
            None => {
                println!(
                    "cargo:warning=no libtorch version found in {} (none of {}): `spatialthinker doctor` cannot compare versions",
                    root.display(),
                    libtorch_version::VERSION_FILES.join(", ")
                );
                String::new()
            }
        };
        println!("cargo:rustc-env=SPATIALTHINKER_LIBTORCH_BUILD_VERSION={version}");
        println!("cargo:rustc-env=SPATIALTHINKER_LIBTORCH_LIB={lib}");
    } else {
        println!("cargo:rustc-env=SPATIALTHINKER_LIBTORCH_BUILD_VERSION=");
        println!("cargo:rustc-env=SPATIALTHINKER_LIBTORCH_LIB=");
    }
    // Without --no-as-needed the linker drops libtorch_cuda.so (nothing references it directly)
    // and tch::Cuda::is_available() is false even on a GPU machine (tch-rs issue #980).
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
            if !Path::new(&lib).join("libtorch_cuda.so").exists() {
                panic!(
                    "feature `cuda` needs a CUDA libtorch, but {lib} has no libtorch_cuda.so: point LIBTORCH at a CUDA build (README, \"CUDA\")"
                );
            }
        }
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    compile_c10d();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cli/doctor/libtorch_version.rs");
}

/// Compiles `csrc/c10d.cpp`, the C interface to libtorch's torch.distributed that
/// `src/distributed/` binds, against the libtorch torch-sys links (its headers sit next to its
/// `lib/`), with the flags torch-sys uses for its own wrappers. The Gloo declarations it needs
/// come from `csrc/gloo_decls` (the wheel ships no Gloo headers; see the README there). With the
/// `cuda` feature and `nccl.h` in `NCCL_INCLUDE_DIR` (default `$CUDA_HOME/include`), NCCL is
/// compiled in too, with the CUDA headers from `CUDA_INCLUDE_DIRS` (colon-separated; default
/// `$CUDA_HOME/include`) — docs/distributed.md, "The binding".
fn compile_c10d() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=NCCL_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_INCLUDE_DIRS");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not export DEP_TCH_LIBTORCH_LIB: cannot find libtorch's headers");
    };
    let root = Path::new(&lib)
        .parent()
        .map_or_else(|| Path::new(&lib).join(".."), Path::to_path_buf);
    let include = root.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/c10d.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include("csrc/gloo_decls")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .define("USE_C10D_GLOO", None)
        // libtorch's headers are not warning-clean under -Wall
        .warnings(false);
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // a CUDA toolkit's include/, or (PyPI's split nvidia-* wheels) a colon-separated list
        let cuda = std::env::var("CUDA_HOME").unwrap_or_else(|_| "/usr/local/cuda".into());
        let cuda_includes =
            std::env::var("CUDA_INCLUDE_DIRS").unwrap_or_else(|_| format!("{cuda}/include"));
        let nccl = std::env::var("NCCL_INCLUDE_DIR").unwrap_or_else(|_| format!("{cuda}/include"));
        if Path::new(&nccl).join("nccl.h").exists() {
            for dir in cuda_includes.split(':').filter(|d| !d.is_empty()) {
                build.include(dir);
            }
            build
                .include(&nccl)
                .define("USE_C10D_NCCL", None)
                .define("USE_CUDA", None)
                .define("SPATIALTHINKER_NCCL", None);
        } else {
            println!(
                "cargo:warning=no nccl.h under {nccl}: this build has no NCCL process group (set NCCL_INCLUDE_DIR)"
            );
        }
    }
    build.compile("spatialthinker_c10d");
}
