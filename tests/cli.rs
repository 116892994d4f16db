//! End-to-end checks of the `spatialthinker` binary's top-level behaviour.

use std::process::Command;

fn spatialthinker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
}

#[test]
fn doctor_reports_the_linked_libtorch() {
    let out = spatialthinker()
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "doctor failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["spatialthinker"], env!("CARGO_PKG_VERSION"));
    let version = report["libtorch"].as_str().unwrap();
    assert!(version.starts_with("2.13."), "libtorch {version}");
    assert_eq!(report["libtorch"], report["libtorch_built_against"]);
    // The binary sees the same CUDA state as this (identically linked) test process.
    assert_eq!(report["cuda"], tch::Cuda::is_available());
    assert_eq!(report["cuda_devices"], tch::Cuda::device_count());
    assert_eq!(report["bf16_cpu"], true);
    assert!(report["threads"].as_i64().unwrap() >= 1);
    assert!(report["tokenizer"].as_str().unwrap().contains("151665 ids"));
}

#[test]
fn every_subcommand_has_help() {
    let out = spatialthinker().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.contains(&"doctor".to_string()), "{help}");
    for command in commands {
        let out = spatialthinker()
            .args([&command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command} --help failed");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: spatialthinker"), "{command}: {text}");
    }
}

#[test]
fn unknown_subcommand_fails_with_usage() {
    let out = spatialthinker().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

#[test]
fn data_show_prints_a_row_and_writes_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    let out = spatialthinker()
        .args(["data", "synth", "--train", "2", "--val", "5", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = dir.path().join("val3.png");
    let out = spatialthinker()
        .args(["data", "show", "--split", "val", "--row", "3", "--image"])
        .arg(&png)
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for field in [
        "image_id:  synth-val-000003",
        "question:  ",
        "options:   ",
        "answer:    (",
    ] {
        assert!(text.contains(field), "{field} missing:\n{text}");
    }
    let image = image::open(&png).unwrap();
    assert_eq!((image.width(), image.height()), (112, 112));
    assert!(text.contains("(112 x 112)"), "{text}");
    let past = spatialthinker()
        .args(["data", "show", "--split", "val", "--row", "5"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!past.status.success());
    assert!(
        String::from_utf8_lossy(&past.stderr).contains("has 5 rows; --row 5 is past its end"),
        "{}",
        String::from_utf8_lossy(&past.stderr)
    );
}
