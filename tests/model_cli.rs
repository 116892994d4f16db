//! `spatialthinker generate` / `logprobs` on the tiny tied checkpoint (real vocabulary, so the
//! embedded tokenizer and the processor apply).

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spatialthinker"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn paths() -> (String, String) {
    let model = root().join("tests/fixtures/qwen25vl/tiny3b");
    let image = root().join("tests/fixtures/processor/images/rgb_56x56.png");
    (model.display().to_string(), image.display().to_string())
}

#[test]
fn generate_json_is_seeded() {
    let (model, image) = paths();
    let args = [
        "generate",
        "--model",
        &model,
        "--image",
        &image,
        "--prompt",
        "Where is the cat?",
        "--max-new-tokens",
        "6",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--top-k",
        "40",
        "--seed",
        "5",
        "--samples",
        "2",
        "--json",
    ];
    let (ok, a, err) = run(&args);
    assert!(ok, "{err}");
    let (_, b, _) = run(&args);
    assert_eq!(a, b, "same seed, same samples");
    let v: serde_json::Value = serde_json::from_str(a.trim()).unwrap();
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2);
    for s in samples {
        let ids = s["ids"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.len() <= 6);
        assert!(ids.iter().all(|i| i.as_i64().unwrap() < 151665));
        assert!(s["text"].is_string());
    }
}

#[test]
fn logprobs_json_shapes() {
    let (model, image) = paths();
    let (ok, out, err) = run(&[
        "logprobs",
        "--model",
        &model,
        "--image",
        &image,
        "--prompt",
        "Where is the cat?",
        "--response",
        "On the left.",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // system turn + user turn with 4 image tokens (56x56 -> grid 1x4x4) + generation prompt
    let n = v["prompt_tokens"].as_u64().unwrap();
    assert!(n > 20, "{n}");
    let ids = v["response_ids"].as_array().unwrap();
    let lps = v["logprobs"].as_array().unwrap();
    assert_eq!(ids.len(), lps.len());
    assert!(!ids.is_empty());
    assert!(lps.iter().all(|l| l.as_f64().unwrap() <= 0.0));
}

#[test]
fn hub_id_without_cache_is_a_clear_error() {
    let (_, image) = paths();
    let (ok, _, err) = run(&[
        "generate",
        "--model",
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "--image",
        &image,
        "--prompt",
        "x",
        "--max-new-tokens",
        "1",
    ]);
    assert!(!ok);
    assert!(err.contains("hub"), "{err}");
}

/// `--output-vocab FILE` restricts sampling to the listed ids and says so; a saved
/// `output_vocab.json` without the flag is ignored, with a note naming the flag.
#[test]
fn output_vocab_is_an_explicit_flag() {
    let (model, image) = paths();
    let dir = tempfile::tempdir().unwrap();
    // a copy of the checkpoint folder with a saved restriction next to the weights
    let folder = dir.path().join("ckpt");
    std::fs::create_dir(&folder).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(PathBuf::from(&model).join(f), folder.join(f)).unwrap();
    }
    let allowed: Vec<i64> = (100..140).chain([151645]).collect();
    let vocab = folder.join("output_vocab.json");
    std::fs::write(&vocab, serde_json::to_string(&allowed).unwrap()).unwrap();
    let folder = folder.display().to_string();
    let vocab = vocab.display().to_string();
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            &folder,
            "--image",
            &image,
            "--prompt",
            "Where is the cat?",
            "--max-new-tokens",
            "8",
            "--temperature",
            "0.8",
            "--samples",
            "3",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = run(&args);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let ids: Vec<i64> = v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["ids"].as_array().unwrap().clone())
            .map(|i| i.as_i64().unwrap())
            .collect();
        (ids, err)
    };

    let (ids, err) = generate(&["--output-vocab", &vocab]);
    assert!(
        err.contains(&format!(
            "output vocabulary restricted to {} ids from {vocab}",
            allowed.len()
        )),
        "{err}"
    );
    assert!(ids.iter().all(|i| allowed.contains(i)), "{ids:?}");

    let (ids, err) = generate(&[]);
    assert!(
        err.contains("is ignored") && err.contains("--output-vocab"),
        "{err}"
    );
    assert!(
        ids.iter().any(|i| !allowed.contains(i)),
        "the full vocabulary: {ids:?}"
    );
}
