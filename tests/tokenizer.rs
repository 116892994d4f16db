//! The embedded Qwen2.5-VL tokenizer: file identity and the special-token ids the model relies on.

use sha2::{Digest, Sha256};
use trainer::tokenizer::{self, embedded_tokenizer, embedded_tokenizer_json};

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn embedded_file_is_the_derived_qwen25vl_tokenizer() {
    let json = embedded_tokenizer_json().unwrap();
    assert_eq!(
        sha256_hex(json.as_bytes()),
        tokenizer::EMBEDDED_TOKENIZER_SHA256
    );
}

#[test]
fn chat_template_special_tokens_are_single_ids() {
    let tok = embedded_tokenizer().unwrap();
    let text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
                <|vision_start|><|image_pad|><|vision_end|>Where is the cup?<|im_end|>\n\
                <|im_start|>assistant\n";
    let enc = tok.encode(text, false).unwrap();
    let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
    let tokens = enc.get_tokens();
    for (token, id) in [
        ("<|im_start|>", 151644),
        ("<|im_end|>", 151645),
        ("<|vision_start|>", 151652),
        ("<|image_pad|>", 151655),
        ("<|vision_end|>", 151653),
    ] {
        let pos: Vec<usize> = tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| t.as_str() == token)
            .map(|(i, _)| i)
            .collect();
        assert!(!pos.is_empty(), "{token} not found as one token in {tokens:?}");
        for p in pos {
            assert_eq!(ids[p], id, "{token}");
        }
    }
    // The vision block is exactly three consecutive ids.
    let vs = ids.iter().position(|&i| i == 151652).unwrap();
    assert_eq!(&ids[vs..vs + 3], &[151652, 151655, 151653]);
    assert_eq!(ids[0], tokenizer::IM_START_ID);
    assert_eq!(*ids.last().unwrap(), 198, "trailing newline is byte-level id 198");
    // "system" is one ordinary token right after <|im_start|>.
    assert_eq!(tokens[1], "system");
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(151643));
    assert_eq!(tok.token_to_id("<|video_pad|>"), Some(151656));
    assert_eq!(tok.token_to_id("<|file_sep|>"), Some(151664));
}

#[test]
fn qwen3_only_tokens_are_absent() {
    let tok = embedded_tokenizer().unwrap();
    assert_eq!(tok.get_vocab_size(true), tokenizer::TOKENIZER_VOCAB as usize);
    // In Qwen2.5-VL `<think>` is ordinary text, several byte-level tokens.
    let enc = tok.encode("<think>", false).unwrap();
    assert!(enc.get_ids().len() > 1, "{:?}", enc.get_tokens());
    assert!(enc.get_ids().iter().all(|&i| (i as i64) < 151643));
    assert_eq!(tok.token_to_id("<tool_response>"), None);
}

#[test]
fn decode_round_trips_text_and_skips_specials() {
    let tok = embedded_tokenizer().unwrap();
    let text = "<observe>A cup.</observe>\n<scene>{\"objects\": []}</scene> Größe ✓";
    let enc = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    let with_eos = [enc.get_ids(), &[151645u32][..]].concat();
    assert_eq!(tok.decode(&with_eos, true).unwrap(), text);
}
