//! Makes the `spatialthinker` binary and the test binaries find libtorch at run time without
//! `LD_LIBRARY_PATH`, and (feature `cuda`) forces libtorch_cuda to be linked.

fn main() {
    // torch-sys exports the folder it linked against as DEP_TCH_LIBTORCH_LIB; its own rpath does
    // not reach our artifacts, so add it here.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // Record the libtorch version built against, for `spatialthinker doctor`.
        let version_file = std::path::Path::new(&lib).join("../build-version");
        let version = std::fs::read_to_string(&version_file).unwrap_or_default();
        println!("cargo:rustc-env=SPATIALTHINKER_LIBTORCH_BUILD_VERSION={}", version.trim());
        println!("cargo:rustc-env=SPATIALTHINKER_LIBTORCH_LIB={lib}");
    }
    // Without --no-as-needed the linker drops libtorch_cuda.so (nothing references it directly)
    // and tch::Cuda::is_available() is false even on a GPU machine (tch-rs issue #980).
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
}
