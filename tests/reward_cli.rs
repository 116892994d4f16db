//! `spatialthinker reward`: rows in input order, per-row errors for rows the reference raises on,
//! malformed lines reported by number with a non-zero exit after the other rows are scored.

use std::process::Command;

const GT: &str = r#"<scene>{"objects": [{"id": "bike.1", "bbox": [0, 272, 310, 551]}, {"id": "man.1", "bbox": [0, 165, 38, 278]}], "relationships": [{"subject": "man.1", "predicate": "behind", "object": "bike.1"}]}</scene>\n<answer>(B) behind</answer>"#;
const SCENE: &str = r#"{\"objects\": [{\"id\": \"bike.1\", \"bbox\": [0, 272, 310, 551]}, {\"id\": \"man.1\", \"bbox\": [0, 165, 38, 278]}], \"relationships\": [{\"subject\": \"man.1\", \"predicate\": \"behind\", \"object\": \"bike.1\"}]}"#;

fn row(id: &str, response: &str, problem: &str) -> String {
    let gt = GT.replace('"', "\\\"").replace("\\\\n", "\\n");
    format!(
        r#"{{"id": {id}, "response": "{response}", "ground_truth": "{gt}", "problem": "{problem}"}}"#
    )
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
        .arg("reward")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run spatialthinker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn scores_in_order_with_errors_and_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cases.jsonl");
    let output = dir.path().join("out.jsonl");
    let good = format!(
        "<observe>o</observe><scene>{SCENE}</scene><think>t</think><answer>(B) behind</answer>"
    );
    let wrong =
        format!("<observe>o</observe><scene>{SCENE}</scene><think>t</think><answer>B</answer>");
    let lines = [
        row("\"a\"", &good, "Image size: (800 x 600)"),
        row("7", &wrong, "Image size: (800 x 600)"),
        "{\"id\": 3, \"response\": ".to_string(),
        row("\"nosize\"", &good, "no size line"),
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let (code, _, stderr) = run(&[
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("line 3"), "{stderr}");

    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["id"], "a");
    // Golden-table values (exact GT scene, correct answer): 0.999999 / S 0.999997.
    assert!((rows[0]["overall"].as_f64().unwrap() - 0.999999).abs() < 1e-6);
    assert!((rows[0]["spatial"].as_f64().unwrap() - 0.999997).abs() < 1e-6);
    assert_eq!(rows[1]["id"], 7);
    assert!((rows[1]["overall"].as_f64().unwrap() - 0.3).abs() < 1e-12);
    assert_eq!(rows[1]["accuracy"], 0.0);
    assert_eq!(rows[2]["id"], "nosize");
    assert!(rows[2]["error"].as_str().unwrap().contains("Image size"));
}

#[test]
fn r1v_reward_and_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cases.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"id": 1, "response": "<think>t</think>\n<answer>(b) BEHIND</answer>", "ground_truth": "(B) behind", "problem": ""}"#,
            "\n",
            r#"{"id": 2, "response": "<answer>(B) behind</answer>", "ground_truth": "<answer>(A) left</answer>", "problem": ""}"#,
            "\n"
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["--input", input.to_str().unwrap(), "--reward", "r1v"]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["overall"], 1.0);
    assert_eq!(rows[1]["overall"], 0.0);
    let (code, _, stderr) = run(&["--input", input.to_str().unwrap(), "--reward", "nope"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown reward"), "{stderr}");
}
