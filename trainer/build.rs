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
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cli/doctor/libtorch_version.rs");
}
