//! pyarrow (from the project's Python env) reads a synthetic dataset and finds the 15 STVQA-7K
//! columns with their published types, plus `reference_response` (scripts/check_pyarrow.py).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn pyarrow_reads_the_synthetic_schema() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh --python to create the project's Python env \
         (pyarrow and Pillow are needed by this test)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = data::synth::SynthConfig {
        seed: 11,
        ..data::synth::SynthConfig::default()
    };
    data::synth::write_dataset(&cfg, dir.path(), 12, 4).unwrap();
    let out = Command::new(&python)
        .arg(root.join("scripts/check_pyarrow.py"))
        .arg(dir.path())
        .output()
        .expect("running the project's python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check_pyarrow.py failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("train-00000-of-00001.parquet: 12 rows"),
        "{stdout}"
    );
    assert!(
        stdout.contains("val-00000-of-00001.parquet: 4 rows"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  images: struct<bytes: binary, path: string>"),
        "{stdout}"
    );
    assert!(stdout.contains("  options: list<item: string>"), "{stdout}");
    assert!(stdout.contains("  rating: int32"), "{stdout}");
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
}
