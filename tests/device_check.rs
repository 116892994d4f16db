//! `scripts/device-check.sh`: its CPU half runs the GPU machine's sequence on the CPU with tiny
//! sizes against this build's binary, and prints the summary table with every step ok or skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The steps `run` reports, in order.
const STEPS: [&str; 8] = [
    "torch",
    "doctor",
    "model",
    "parity",
    "plan",
    "bench-train",
    "gpu-memory",
    "bench-generate",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script() -> PathBuf {
    root().join("scripts/device-check.sh")
}

#[test]
fn the_script_parses_and_explains_both_halves() {
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(script())
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let help = Command::new("bash")
        .arg(script())
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for word in [
        "prepare",
        "run",
        "--torch",
        "--libtorch",
        "--quick",
        "skipped on cpu",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    // an unknown command fails with a pointer to --help
    let bad = Command::new("bash")
        .arg(script())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--help"));
    match Command::new("shellcheck").arg(script()).output() {
        Ok(out) => assert!(
            out.status.success(),
            "shellcheck: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => eprintln!("shellcheck is not installed: only bash -n was checked"),
    }
}

#[test]
fn the_cpu_half_runs_every_step_and_prints_the_summary() {
    let out = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let work_dir = work.path().join("work");
    // run on the libtorch this binary was linked against, through LD_LIBRARY_PATH as on the GPU
    // machine (the folder above lib/)
    let libtorch = Path::new(env!("SPATIALTHINKER_LIBTORCH_LIB"))
        .parent()
        .unwrap()
        .to_path_buf();
    let run = Command::new("bash")
        .arg(script())
        .args(["run", "--device", "cpu", "--quick", "--bin"])
        .arg(env!("CARGO_BIN_EXE_spatialthinker"))
        .arg("--libtorch")
        .arg(&libtorch)
        .arg("--out")
        .arg(out.path())
        .arg("--work")
        .arg(&work_dir)
        .env_remove("OUT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "run failed:\n{stdout}\n{stderr}\nlogs in {}",
        out.keep().display()
    );
    assert!(
        stdout.contains("== device-check summary: device cpu, quick"),
        "{stdout}"
    );
    assert!(stdout.contains("== all steps ok or skipped"), "{stdout}");
    let summary = std::fs::read_to_string(out.path().join("summary.txt")).unwrap();
    assert_eq!(summary, stdout, "the summary file is the printed table");
    let table: Vec<&str> = stdout.lines().collect();
    for step in STEPS {
        let line = table
            .iter()
            .find(|l| l.split_whitespace().next() == Some(step))
            .unwrap_or_else(|| panic!("no {step} line in\n{stdout}"));
        let status = line.split_whitespace().nth(2).unwrap();
        assert!(
            status == "ok" || status == "skipped",
            "{step}: {line}\n{stdout}"
        );
    }
    let line = |step: &str| {
        *table
            .iter()
            .find(|l| l.split_whitespace().next() == Some(step))
            .unwrap()
    };
    assert!(line("gpu-memory").contains("skipped (no CUDA)"), "{stdout}");
    // the steps that run on any device ran
    for step in [
        "torch",
        "doctor",
        "model",
        "parity",
        "bench-train",
        "bench-generate",
    ] {
        assert!(line(step).contains(" ok "), "{step} did not run: {stdout}");
    }
    assert!(
        line("torch").contains(&libtorch.display().to_string()),
        "{stdout}"
    );
    assert!(line("parity").contains("max |bf16 - f32|"), "{stdout}");
    assert!(line("bench-train").contains("tokens/s"), "{stdout}");
    // every output comes back from a device run: at most 8 files, the work folder is removed
    let files = std::fs::read_dir(out.path()).unwrap().count();
    assert!(files <= 8, "{files} files in the output folder");
    assert!(!work_dir.exists(), "the work folder is left behind");
}
