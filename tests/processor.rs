//! The Qwen2.5-VL processor against transformers 5.23 + Pillow 13.0.0: fixtures written by
//! `scripts/make_processor_fixtures.py` (tests/fixtures/processor/).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::DynamicImage;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};
use trainer::processor::{
    batch_left_pad, easyr1_pre_resize, render_chat, resize_rgb, ChatMessage, ContentPart,
    ImageProcessor, PreprocessorConfig, Processor, ProcessorError, PAD_ID,
};
use trainer::tokenizer::{embedded_tokenizer, IMAGE_PAD_ID};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/processor")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn open(name: &str) -> DynamicImage {
    image::open(fixtures().join("images").join(name)).unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn pixel_fixtures() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("pixel_values.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// Compares Rust `pixel_values [N, 1176]` with a fixture holding temporal slice 0 `[N, 588]`
/// (the script checked that slice 1 equals slice 0); returns the max abs difference.
fn max_pixel_diff(rust: &Tensor, fixture: &Tensor) -> f64 {
    let n = fixture.size()[0];
    assert_eq!(rust.size(), vec![n, 1176], "row count");
    let r = rust.view([n, 3, 2, 196]);
    let t0 = r.select(2, 0);
    let t1 = r.select(2, 1);
    assert!(t0.equal(&t1), "temporal copies differ");
    let f = fixture.view([n, 3, 196]).to_kind(Kind::Float);
    (t0 - f).abs().max().double_value(&[])
}

fn grid(v: &Value) -> Vec<[i64; 3]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let g: Vec<i64> = g
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            [g[0], g[1], g[2]]
        })
        .collect()
}

#[test]
fn bicubic_resize_is_bit_exact_with_pillow() {
    let spec = json("resize.json");
    let mut sources: HashMap<String, image::RgbImage> = HashMap::new();
    let mut failures = Vec::new();
    let cases = spec["cases"].as_array().unwrap();
    for case in cases {
        let src = case["source"].as_str().unwrap();
        let img = sources
            .entry(src.to_string())
            .or_insert_with(|| open(src).to_rgb8());
        let (w, h) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        let out = resize_rgb(img, w, h);
        if sha256_hex(out.as_raw()) != case["sha256"].as_str().unwrap() {
            failures.push(format!("{src} {}x{} -> {w}x{h}", img.width(), img.height()));
        }
    }
    println!(
        "{} of {} resize cases bit-exact with Pillow {}",
        cases.len() - failures.len(),
        cases.len(),
        spec["pillow"]
    );
    assert!(failures.is_empty(), "differ from Pillow: {failures:#?}");
}

#[test]
fn easyr1_pre_resize_matches_reference() {
    for case in json("easyr1.json")["cases"].as_array().unwrap() {
        let img = open(case["image"].as_str().unwrap());
        let out = easyr1_pre_resize(
            &img,
            case["min_pixels"].as_u64().unwrap(),
            case["max_pixels"].as_u64().unwrap(),
        );
        assert_eq!(
            (u64::from(out.width()), u64::from(out.height())),
            (
                case["width"].as_u64().unwrap(),
                case["height"].as_u64().unwrap()
            ),
            "{case}"
        );
        assert_eq!(
            sha256_hex(out.as_raw()),
            case["sha256"].as_str().unwrap(),
            "{case}"
        );
    }
}

fn processor_for(label: &str) -> ImageProcessor {
    match label {
        "default" => ImageProcessor::default_qwen25vl(),
        "max4704" => ImageProcessor::default_qwen25vl()
            .with_pixel_limits(3136, 28 * 28 * 6)
            .unwrap(),
        other => panic!("unknown processor {other}"),
    }
}

#[test]
fn pixel_values_match_transformers_for_every_image() {
    let tensors = pixel_fixtures();
    let spec = json("prompts.json");
    let cases = spec["per_image"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let name = case["image"].as_str().unwrap();
        let proc = processor_for(case["processor"].as_str().unwrap());
        let batch = proc.preprocess(&[open(name)]).unwrap();
        assert_eq!(
            batch.image_grid_thw,
            grid(&case["image_grid_thw"]),
            "{name}"
        );
        let diff = max_pixel_diff(
            &batch.pixel_values,
            &tensors[case["tensor"].as_str().unwrap()],
        );
        println!("{name} ({}): max |diff| {diff:e}", case["mode"]);
        assert!(diff <= 1e-6, "{name}: max |diff| {diff}");
    }
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let content = m["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| match p["type"].as_str().unwrap() {
                    "image" => ContentPart::Image,
                    "text" => ContentPart::Text(p["text"].as_str().unwrap().to_string()),
                    other => panic!("unexpected part {other}"),
                })
                .collect();
            ChatMessage::new(m["role"].as_str().unwrap(), content)
        })
        .collect()
}

fn processor() -> Processor {
    Processor::new(
        embedded_tokenizer().unwrap(),
        ImageProcessor::default_qwen25vl(),
    )
}

#[test]
fn prompts_match_transformers_processor() {
    let tensors = pixel_fixtures();
    let proc = processor();
    for case in json("prompts.json")["prompts"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let msgs = messages(&case["messages"]);
        assert_eq!(
            render_chat(&msgs, true),
            case["text"].as_str().unwrap(),
            "{name}"
        );
        let image_names: Vec<&str> = case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let images: Vec<DynamicImage> = image_names.iter().map(|n| open(n)).collect();
        let enc = proc.encode_prompt(&msgs, &images).unwrap();
        let expected: Vec<i64> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(enc.input_ids, expected, "{name}");
        if images.is_empty() {
            assert_eq!(enc.pixel_values.size(), vec![0, 1176]);
            assert!(enc.image_grid_thw.is_empty());
            continue;
        }
        assert_eq!(enc.image_grid_thw, grid(&case["image_grid_thw"]), "{name}");
        let parts: Vec<&Tensor> = image_names
            .iter()
            .map(|n| &tensors[&format!("default/{n}")])
            .collect();
        let diff = max_pixel_diff(&enc.pixel_values, &Tensor::cat(&parts, 0));
        assert!(diff <= 1e-6, "{name}: max |diff| {diff}");
        let pads = enc.input_ids.iter().filter(|&&i| i == IMAGE_PAD_ID).count() as i64;
        let tokens: i64 = enc
            .image_grid_thw
            .iter()
            .map(|g| g[0] * g[1] * g[2] / 4)
            .sum();
        assert_eq!(pads, tokens, "{name}");
    }
}

#[test]
fn left_padded_batch_of_prompts() {
    let proc = processor();
    let short = proc
        .encode_prompt(&[ChatMessage::text("user", "Count to 3.")], &[])
        .unwrap();
    let one = proc
        .encode_prompt(
            &[ChatMessage::user_image_text("Where?")],
            &[open("rgb_odd.png")],
        )
        .unwrap();
    let two = proc
        .encode_prompt(
            &[ChatMessage::new(
                "user",
                vec![
                    ContentPart::Image,
                    ContentPart::Image,
                    ContentPart::Text("Same?".into()),
                ],
            )],
            &[open("tiny_20x90.png"), open("rgba.png")],
        )
        .unwrap();
    let lens = [
        short.input_ids.len(),
        one.input_ids.len(),
        two.input_ids.len(),
    ];
    let rows = [
        short.pixel_values.size()[0],
        one.pixel_values.size()[0],
        two.pixel_values.size()[0],
    ];
    let expected_ids = [
        short.input_ids.clone(),
        one.input_ids.clone(),
        two.input_ids.clone(),
    ];
    let expected_pixels = Tensor::cat(&[&one.pixel_values, &two.pixel_values], 0);
    let batch = batch_left_pad(&[short, one, two]).unwrap();
    let len = *lens.iter().max().unwrap();
    assert_eq!(batch.input_ids.size(), vec![3, len as i64]);
    assert_eq!(batch.attention_mask.size(), vec![3, len as i64]);
    assert_eq!(batch.input_ids.kind(), Kind::Int64);
    for (b, ids) in expected_ids.iter().enumerate() {
        let row: Vec<i64> = Vec::try_from(batch.input_ids.get(b as i64)).unwrap();
        let mask: Vec<i64> = Vec::try_from(batch.attention_mask.get(b as i64)).unwrap();
        let pad = len - ids.len();
        assert!(row[..pad].iter().all(|&i| i == PAD_ID));
        assert_eq!(&row[pad..], ids.as_slice());
        assert!(mask[..pad].iter().all(|&m| m == 0) && mask[pad..].iter().all(|&m| m == 1));
    }
    assert_eq!(
        batch.pixel_values.size(),
        vec![rows.iter().sum::<i64>(), 1176]
    );
    assert!(batch.pixel_values.equal(&expected_pixels));
    assert_eq!(batch.image_grid_thw.len(), 3);
    assert_eq!(batch.image_grid_thw[1], [1, 2, 10], "20x90 -> 28x140");
}

#[test]
fn image_count_mismatch_is_an_error() {
    let err = processor()
        .encode_prompt(&[ChatMessage::user_image_text("x")], &[])
        .unwrap_err();
    assert!(matches!(
        err,
        ProcessorError::ImageCount {
            placeholders: 1,
            images: 0
        }
    ));
}

#[test]
fn preprocessor_config_forms_and_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocessor_config.json");
    let write = |text: &str| std::fs::write(&path, text).unwrap();

    write(
        r#"{"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
            "temporal_patch_size": 2, "merge_size": 2,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor"}"#,
    );
    let p = ImageProcessor::from_preprocessor_config(dir.path()).unwrap();
    assert_eq!(p, ImageProcessor::default_qwen25vl());

    write(r#"{"size": {"shortest_edge": 1000, "longest_edge": 200000}}"#);
    let p = ImageProcessor::from_preprocessor_config(&path).unwrap();
    assert_eq!((p.min_pixels, p.max_pixels), (1000, 200_000));

    // Legacy keys win over `size`, as in transformers' constructor.
    write(r#"{"max_pixels": 50000, "size": {"shortest_edge": 1000, "longest_edge": 200000}}"#);
    let p = ImageProcessor::from_preprocessor_config(&path).unwrap();
    assert_eq!((p.min_pixels, p.max_pixels), (1000, 50_000));

    // No limits at all: the class defaults.
    write("{}");
    let p = ImageProcessor::from_preprocessor_config(&path).unwrap();
    assert_eq!((p.min_pixels, p.max_pixels), (3136, 1_003_520));

    write(r#"{"size": {"longest_edge": 200000}}"#);
    assert!(ImageProcessor::from_preprocessor_config(&path).is_err());
    write(r#"{"resample": 2}"#);
    let err = ImageProcessor::from_preprocessor_config(&path).unwrap_err();
    assert!(err.to_string().contains("resample 2"), "{err}");
    write("{not json");
    let err = ImageProcessor::from_preprocessor_config(&path).unwrap_err();
    assert!(
        err.to_string().contains("preprocessor_config.json"),
        "{err}"
    );
    assert!(PreprocessorConfig::from_file(&dir.path().join("missing.json")).is_err());
}
