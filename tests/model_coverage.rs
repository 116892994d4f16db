//! Name/shape coverage with the real 7B and 3B shapes (stride-0 zero tensors, no 16 GB
//! allocation), and the loader's key checks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tch::{Device, Kind};
use trainer::model::weights::expected_tensors;
use trainer::model::{
    Checkpoint, ModelError, Qwen2_5VLConfig, Qwen2_5VLForConditionalGeneration, Weights,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen25vl")
}

/// `keys_*.json` were listed by `scripts/make_fixtures.py` from transformers models built on the
/// meta device with the published configs.
fn published_keys(file: &str) -> BTreeMap<String, Vec<i64>> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(file)).unwrap()).unwrap()
}

fn check(config: &str, keys: &str, count: usize) {
    let text = std::fs::read_to_string(fixtures().join(config)).unwrap();
    let cfg = Qwen2_5VLConfig::from_json_str(&text).unwrap();
    let want = published_keys(keys);
    assert_eq!(want.len(), count);
    let expected: BTreeMap<String, Vec<i64>> =
        expected_tensors(&cfg).unwrap().into_iter().collect();
    assert_eq!(expected, want, "{config}: expected tensor list");
    let weights = Weights::zeros_like_config(&cfg, Kind::BFloat16).unwrap();
    let model =
        Qwen2_5VLForConditionalGeneration::from_weights(cfg, &weights, Device::Cpu).unwrap();
    let emitted: BTreeMap<String, Vec<i64>> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    assert_eq!(emitted, want, "{config}: model tensors");
    assert_eq!(
        model.named_tensors().len(),
        count,
        "{config}: no duplicates"
    );
}

#[test]
fn covers_published_7b_keys() {
    check("config_7b_published.json", "keys_7b.json", 729);
}

#[test]
fn covers_published_3b_keys() {
    check("config_3b_published.json", "keys_3b.json", 824);
}

#[test]
fn key_errors_list_every_missing_and_unexpected_tensor() {
    let dir = fixtures().join("tiny7b");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    // one more layer than stored: 12 tensors missing
    let cfg = Qwen2_5VLConfig::from_json_str(
        &text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    match Checkpoint::open(&dir)
        .unwrap()
        .load(&cfg, Device::Cpu, Kind::Float)
    {
        Err(ModelError::KeyMismatch {
            missing,
            unexpected,
        }) => {
            assert_eq!(missing.len(), 12, "{missing:?}");
            assert!(missing.iter().all(|n| n.starts_with("model.layers.2.")));
            assert!(unexpected.is_empty());
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    // one layer fewer: 12 unexpected
    let cfg = Qwen2_5VLConfig::from_json_str(
        &text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
    )
    .unwrap();
    match Checkpoint::open(&dir)
        .unwrap()
        .load(&cfg, Device::Cpu, Kind::Float)
    {
        Err(ModelError::KeyMismatch {
            missing,
            unexpected,
        }) => {
            assert!(missing.is_empty());
            assert_eq!(unexpected.len(), 12, "{unexpected:?}");
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    // wrong shape
    let cfg = Qwen2_5VLConfig::from_json_str(
        &text.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96"),
    )
    .unwrap();
    let err = Checkpoint::open(&dir)
        .unwrap()
        .load(&cfg, Device::Cpu, Kind::Float)
        .unwrap_err();
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{err}");
    // sharded v4.52 layout: same normalised names as the single published file
    let a: Vec<String> = Checkpoint::open(&dir)
        .unwrap()
        .names()
        .map(str::to_string)
        .collect();
    let b: Vec<String> = Checkpoint::open(&fixtures().join("tiny7b_v452_sharded"))
        .unwrap()
        .names()
        .map(str::to_string)
        .collect();
    assert_eq!(a, b);
}

/// Weights registered in a VarStore keep their checkpoint names, are trainable and share storage.
#[test]
fn var_store_registration_uses_checkpoint_names() {
    let model = Qwen2_5VLForConditionalGeneration::load(
        &fixtures().join("tiny3b"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    model.attach_to_var_store(&vs, true);
    let vars = vs.variables();
    let names: std::collections::BTreeSet<String> = vars.keys().cloned().collect();
    let want: std::collections::BTreeSet<String> =
        model.named_tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, want);
    assert!(!names.contains("lm_head.weight"));
    assert_eq!(vs.trainable_variables().len(), want.len());
    assert!(model.lm_head.weight.requires_grad());
    let e = &vars["model.embed_tokens.weight"];
    assert_eq!(e.data_ptr(), model.model.embed_tokens.data_ptr());
}

/// The loader's keys, the listing checkpoints are saved from and the expected tensor list are
/// one set; a model saved from its listing loads back with the same keys and values.
#[test]
fn saved_keys_are_the_loaded_keys() {
    for fixture in ["tiny7b", "tiny3b"] {
        let dir = fixtures().join(fixture);
        let model =
            Qwen2_5VLForConditionalGeneration::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let listed: Vec<(String, tch::Tensor)> = model.named_tensors();
        let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        let expected: Vec<String> = expected_tensors(&model.config)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, expected, "{fixture}: listing order and keys");

        let out = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("config.json"), out.path().join("config.json")).unwrap();
        tch::Tensor::write_safetensors(&listed, out.path().join("model.safetensors")).unwrap();
        let stored: std::collections::BTreeSet<String> = Checkpoint::open(out.path())
            .unwrap()
            .names()
            .map(str::to_string)
            .collect();
        let want: std::collections::BTreeSet<String> =
            names.iter().map(|n| n.to_string()).collect();
        assert_eq!(stored, want, "{fixture}: saved keys");
        let reloaded =
            Qwen2_5VLForConditionalGeneration::load(out.path(), Device::Cpu, Kind::Float).unwrap();
        for ((a, x), (b, y)) in listed.iter().zip(reloaded.named_tensors()) {
            assert_eq!(a, &b);
            assert!(x.equal(&y), "{fixture}: {a} differs after a round trip");
        }
    }
}
