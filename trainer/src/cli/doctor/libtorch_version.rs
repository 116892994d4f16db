//! Which libtorch a folder holds: its version and the CUDA version it was built for, read from
//! whatever its layout records.
//!
//! A libtorch folder (the one holding `lib/` and `include/`) comes in two layouts: the libtorch
//! zip, with a `build-version` file (`2.13.0+cu128`), and a pip wheel's `torch` package, with
//! `version.py` (`__version__ = '2.13.0+cu130'`, `cuda = '13.0'`) and no `build-version`
//! (`scripts/setup.sh` unpacks the wheel and writes a `build-version` of `2.13.0`). Both carry
//! the headers, whose `version.h` gives at least major.minor.patch.
//!
//! Standard library only: `build.rs` includes this file to record the libtorch the binary is
//! built against, and `spatialthinker doctor` reads the libtorch it runs on with the same code,
//! so both sides of its comparison are read alike.

use std::fs;
use std::path::{Path, PathBuf};

/// Where a version can be recorded, relative to the libtorch folder, in the order they are read:
/// the wheel's `version.py` (which also names the CUDA build), the zip's `build-version`, then
/// the headers (2.13 keeps the numbers in `headeronly/version.h`, earlier releases in
/// `csrc/api/include/torch/version.h`).
pub const VERSION_FILES: [&str; 4] = [
    "version.py",
    "build-version",
    "include/torch/headeronly/version.h",
    "include/torch/csrc/api/include/torch/version.h",
];

/// The CUDA version a libtorch was built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaBuild {
    /// Built for this CUDA version (`13.0`).
    Cuda(String),
    /// A CPU-only build (`+cpu`, or `cuda = None` in `version.py`).
    CpuOnly,
    /// Not recorded where the version was read.
    Unknown,
}

impl CudaBuild {
    /// `13.0`, `cpu`, or `unknown`.
    pub fn as_str(&self) -> &str {
        match self {
            CudaBuild::Cuda(v) => v,
            CudaBuild::CpuOnly => "cpu",
            CudaBuild::Unknown => "unknown",
        }
    }
}

/// A libtorch's version as its folder records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibtorchVersion {
    /// `2.13.0+cu130`, `2.13.0+cpu` or `2.13.0` (the local suffix only where the layout has it).
    pub version: String,
    /// The CUDA build, where the same file (or the version's suffix) records it.
    pub cuda: CudaBuild,
    /// The file the version was read from.
    pub source: PathBuf,
}

/// Reads the version of the libtorch in `root` (the folder holding `lib/` and `include/`) from
/// the first of [`VERSION_FILES`] that exists and parses; `None` when none does.
pub fn read_libtorch_version(root: &Path) -> Option<LibtorchVersion> {
    VERSION_FILES.iter().find_map(|name| {
        let source = root.join(name);
        let text = fs::read_to_string(&source).ok()?;
        let (version, cuda) = match *name {
            "version.py" => {
                let (version, cuda) = parse_version_py(&text)?;
                let cuda = match cuda {
                    Some(Some(v)) => CudaBuild::Cuda(v),
                    Some(None) => CudaBuild::CpuOnly,
                    None => cuda_from_suffix(&version),
                };
                (version, cuda)
            }
            "build-version" => {
                let version = parse_build_version(&text)?;
                let cuda = cuda_from_suffix(&version);
                (version, cuda)
            }
            _ => (parse_version_header(&text)?, CudaBuild::Unknown),
        };
        Some(LibtorchVersion {
            version,
            cuda,
            source,
        })
    })
}

/// Strips the quotes around a Python string literal; `None` for `None` or anything else.
fn python_string(value: &str) -> Option<String> {
    let value = value.trim();
    ['\'', '"'].iter().find_map(|&q| {
        value
            .strip_prefix(q)
            .and_then(|v| v.strip_suffix(q))
            .map(str::to_string)
    })
}

/// Reads a wheel's `torch/version.py`: the `__version__` string, and the `cuda` field if the file
/// has one (`Some(None)` for `cuda = None`, a CPU-only build). Both `cuda = '12.8'` and the
/// annotated `cuda: Optional[str] = '13.0'` are read.
pub fn parse_version_py(text: &str) -> Option<(String, Option<Option<String>>)> {
    let mut version = None;
    let mut cuda = None;
    for line in text.lines() {
        let Some((lhs, rhs)) = line.split_once('=') else {
            continue;
        };
        // `cuda: Optional[str]` names `cuda`; `__version__` stays `__version__`
        let name = lhs.split(':').next().unwrap_or_default().trim();
        match name {
            "__version__" => version = python_string(rhs),
            "cuda" => cuda = Some(python_string(rhs)),
            _ => {}
        }
    }
    Some((version.filter(|v| !v.is_empty())?, cuda))
}

/// Reads a libtorch zip's `build-version` (`2.13.0+cu128`): its first non-empty line.
pub fn parse_build_version(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Reads `major.minor.patch` from a `version.h` (`#define TORCH_VERSION_MAJOR 2`, …).
pub fn parse_version_header(text: &str) -> Option<String> {
    let field = |name: &str| -> Option<u32> {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("#define") && words.next() == Some(name))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
    };
    Some(format!(
        "{}.{}.{}",
        field("TORCH_VERSION_MAJOR")?,
        field("TORCH_VERSION_MINOR")?,
        field("TORCH_VERSION_PATCH")?
    ))
}

/// The CUDA build a version's local suffix names: `+cu130` is CUDA 13.0, `+cu128` 12.8, `+cpu`
/// CPU only; no suffix (or another one) says nothing.
pub fn cuda_from_suffix(version: &str) -> CudaBuild {
    match version.split_once('+').map(|(_, local)| local) {
        Some("cpu") => CudaBuild::CpuOnly,
        Some(local) => match local.strip_prefix("cu") {
            Some(digits) if digits.len() >= 2 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                let (major, minor) = digits.split_at(digits.len() - 1);
                CudaBuild::Cuda(format!("{major}.{minor}"))
            }
            _ => CudaBuild::Unknown,
        },
        None => CudaBuild::Unknown,
    }
}

/// The release without its local suffix: `2.13.0+cu130` → `2.13.0`.
pub fn release(version: &str) -> &str {
    version.split_once('+').map_or(version, |(r, _)| r).trim()
}

/// How the libtorch the binary runs on compares with the one it was built against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compatibility {
    /// Same release (and same suffix, or only one side has one).
    Same,
    /// Same release, different local suffixes (`+cu128` against `+cu130`): the C++ API the
    /// binary calls is the same; only the CUDA libraries differ.
    OtherBuild,
    /// Different releases: the generated wrappers may call functions the loaded one lacks or
    /// declares differently.
    Mismatch,
    /// One side's version is not known.
    Unknown,
}

/// Compares the loaded version with the built-against one, ignoring a local suffix that only one
/// side records (`2.13.0` from a `build-version` against `2.13.0+cu130` from a `version.py`).
pub fn compare(loaded: &str, built: &str) -> Compatibility {
    let known = |v: &str| !v.trim().is_empty() && v.trim() != "unknown";
    if !known(loaded) || !known(built) {
        return Compatibility::Unknown;
    }
    if release(loaded) != release(built) {
        return Compatibility::Mismatch;
    }
    match (loaded.split_once('+'), built.split_once('+')) {
        (Some((_, a)), Some((_, b))) if a.trim() != b.trim() => Compatibility::OtherBuild,
        _ => Compatibility::Same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        dir
    }

    const HEADER_2_13: &str = "#pragma once\n/// major\n#define TORCH_VERSION_MAJOR 2\n\
        #define TORCH_VERSION_MINOR 13\n#define TORCH_VERSION_PATCH 0\n\
        #define TORCH_VERSION_ABI_TAG 0\n#define TORCH_VERSION \\\n  \"2.13.0\"\n";
    const VERSION_PY_2_13: &str = "from typing import Optional\n\n\
        __all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip']\n\
        __version__ = '2.13.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\n\
        git_version = 'cf30153c4c131c8164ee7798e5022d810682e2cb'\nhip: Optional[str] = None\n";

    #[test]
    fn a_wheel_folder_gives_the_version_and_cuda_build_of_version_py() {
        let dir = folder(&[
            ("version.py", VERSION_PY_2_13),
            ("include/torch/headeronly/version.h", HEADER_2_13),
        ]);
        let v = read_libtorch_version(dir.path()).unwrap();
        assert_eq!(v.version, "2.13.0+cu130");
        assert_eq!(v.cuda, CudaBuild::Cuda("13.0".into()));
        assert_eq!(v.source, dir.path().join("version.py"));
    }

    #[test]
    fn older_version_py_forms_are_read() {
        let py = "__version__ = '2.11.0+cu128'\ndebug = False\ncuda = '12.8'\nhip = None\n";
        assert_eq!(
            parse_version_py(py),
            Some(("2.11.0+cu128".into(), Some(Some("12.8".into()))))
        );
        let cpu = "__version__ = \"2.11.0+cpu\"\ncuda: Optional[str] = None\n";
        assert_eq!(
            parse_version_py(cpu),
            Some(("2.11.0+cpu".into(), Some(None)))
        );
        let no_cuda_line = "__version__ = '2.11.0'\n";
        assert_eq!(
            parse_version_py(no_cuda_line),
            Some(("2.11.0".into(), None))
        );
        assert_eq!(parse_version_py("debug = False\n"), None);
        // a CPU-only wheel's version.py
        let dir = folder(&[("version.py", cpu)]);
        assert_eq!(
            read_libtorch_version(dir.path()).unwrap().cuda,
            CudaBuild::CpuOnly
        );
    }

    #[test]
    fn a_zip_folder_gives_build_version_and_its_suffix() {
        let dir = folder(&[
            ("build-version", "2.13.0+cu128\n"),
            ("include/torch/headeronly/version.h", HEADER_2_13),
        ]);
        let v = read_libtorch_version(dir.path()).unwrap();
        assert_eq!(v.version, "2.13.0+cu128");
        assert_eq!(v.cuda, CudaBuild::Cuda("12.8".into()));
        assert_eq!(v.source, dir.path().join("build-version"));
        // scripts/setup.sh's layout: the wheel's lib/ and include/ and a bare build-version
        let dir = folder(&[("build-version", "2.13.0\n")]);
        let v = read_libtorch_version(dir.path()).unwrap();
        assert_eq!((v.version.as_str(), v.cuda), ("2.13.0", CudaBuild::Unknown));
    }

    #[test]
    fn headers_alone_give_major_minor_patch() {
        let dir = folder(&[("include/torch/headeronly/version.h", HEADER_2_13)]);
        let v = read_libtorch_version(dir.path()).unwrap();
        assert_eq!((v.version.as_str(), v.cuda), ("2.13.0", CudaBuild::Unknown));
        // the pre-2.13 place of the defines
        let old = HEADER_2_13.replace("13", "11");
        let dir = folder(&[("include/torch/csrc/api/include/torch/version.h", &old)]);
        assert_eq!(read_libtorch_version(dir.path()).unwrap().version, "2.11.0");
        // 2.13's csrc/api version.h only includes the headeronly one: no numbers in it
        let dir = folder(&[(
            "include/torch/csrc/api/include/torch/version.h",
            "#include <torch/headeronly/version.h>\n",
        )]);
        assert_eq!(read_libtorch_version(dir.path()), None);
        assert_eq!(read_libtorch_version(&dir.path().join("missing")), None);
    }

    #[test]
    fn an_unreadable_file_falls_through_to_the_next() {
        let dir = folder(&[
            ("version.py", "# no version here\n"),
            ("build-version", "\n\n"),
            ("include/torch/headeronly/version.h", HEADER_2_13),
        ]);
        assert_eq!(read_libtorch_version(dir.path()).unwrap().version, "2.13.0");
    }

    #[test]
    fn suffixes_name_the_cuda_build() {
        assert_eq!(
            cuda_from_suffix("2.13.0+cu130"),
            CudaBuild::Cuda("13.0".into())
        );
        assert_eq!(
            cuda_from_suffix("2.6.0+cu126"),
            CudaBuild::Cuda("12.6".into())
        );
        assert_eq!(
            cuda_from_suffix("1.4.0+cu92"),
            CudaBuild::Cuda("9.2".into())
        );
        assert_eq!(cuda_from_suffix("2.13.0+cpu"), CudaBuild::CpuOnly);
        assert_eq!(cuda_from_suffix("2.13.0"), CudaBuild::Unknown);
        assert_eq!(cuda_from_suffix("2.13.0+rocm6.4"), CudaBuild::Unknown);
        assert_eq!(cuda_from_suffix("2.13.0+cuxyz"), CudaBuild::Unknown);
    }

    #[test]
    fn a_suffix_on_one_side_only_is_no_mismatch() {
        assert_eq!(compare("2.13.0+cu130", "2.13.0"), Compatibility::Same);
        assert_eq!(compare("2.13.0", "2.13.0+cu130"), Compatibility::Same);
        assert_eq!(compare("2.13.0+cu130", "2.13.0+cu130"), Compatibility::Same);
        assert_eq!(
            compare("2.13.0+cu128", "2.13.0+cu130"),
            Compatibility::OtherBuild
        );
        assert_eq!(compare("2.11.0+cu130", "2.13.0"), Compatibility::Mismatch);
        assert_eq!(compare("2.11.0", "2.11.1"), Compatibility::Mismatch);
        assert_eq!(compare("unknown", "2.13.0"), Compatibility::Unknown);
        assert_eq!(compare("2.13.0", ""), Compatibility::Unknown);
        assert_eq!(release("2.13.0+cu130"), "2.13.0");
    }
}
