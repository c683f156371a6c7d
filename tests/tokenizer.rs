//! Tokenizers of both fixtures: encoding matches the reference ids, chat templates render,
//! and streaming detokenization never emits broken UTF-8.

use ember::{ChatMessage, IncrementalDecoder, Tokenizer};

use crate::common::{fixture, Reference};

#[test]
fn prompts_encode_to_reference_ids() {
    for name in ["llama-tiny-f16", "mixtral-tiny-bf16"] {
        let reference = Reference::read(name);
        let tokenizer = Tokenizer::from_dir(&fixture(name)).unwrap();
        assert_eq!(tokenizer.encode(&reference.prompt, true).unwrap(), reference.input_ids, "{name}");
    }
}

#[test]
fn special_tokens_come_from_tokenizer_config() {
    let tokenizer = Tokenizer::from_dir(&fixture("llama-tiny-f16")).unwrap();
    assert_eq!(tokenizer.bos_token(), Some("<|begin_of_text|>"));
    assert_eq!(tokenizer.eos_token(), Some("<|end_of_text|>"));
    assert_eq!(tokenizer.eos_token_id(), Some(1));
    assert_eq!(tokenizer.pad_token(), Some("<|pad|>"));
}

#[test]
fn chat_template_renders_like_transformers() {
    let tokenizer = Tokenizer::from_dir(&fixture("llama-tiny-f16")).unwrap();
    let messages = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hello!")];
    let text = tokenizer.apply_chat_template(&messages, true).unwrap();
    assert_eq!(
        text,
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tokenizer.encode_chat(&messages).unwrap();
    assert_eq!(ids[0], 0, "bos comes from the template, once");
    assert_ne!(ids[1], 0);
}

#[test]
fn missing_chat_template_is_an_error() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::copy(fixture("mixtral-tiny-bf16").join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    assert!(!tokenizer.has_chat_template());
    let err = tokenizer.apply_chat_template(&[ChatMessage::new("user", "hi")], true).unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
}

#[test]
fn mixtral_chat_template_uses_inst_tags() {
    let tokenizer = Tokenizer::from_dir(&fixture("mixtral-tiny-bf16")).unwrap();
    let text = tokenizer.apply_chat_template(&[ChatMessage::new("user", "Hi")], true).unwrap();
    assert_eq!(text, "<s>[INST] Hi [/INST]");
}

/// Byte-fallback tokens split multi-byte characters; the stream must hold them back until
/// the character is complete, and the pieces must add up to the full decode.
#[test]
fn streaming_decode_never_emits_broken_utf8() {
    for name in ["mixtral-tiny-bf16", "llama-tiny-f16"] {
        let tokenizer = Tokenizer::from_dir(&fixture(name)).unwrap();
        let text = "Café au lait — naïve 日本語 ✓ 🔥 done";
        let ids = tokenizer.encode(text, false).unwrap();
        let mut stream = IncrementalDecoder::new(true);
        let mut pieces = String::new();
        for &id in &ids {
            if let Some(piece) = stream.step(&tokenizer, id).unwrap() {
                assert!(!piece.contains('\u{FFFD}'), "{name}: broken UTF-8 piece {piece:?}");
                pieces.push_str(&piece);
            }
        }
        assert_eq!(pieces, tokenizer.decode(&ids, true).unwrap(), "{name}");
        assert!(pieces.contains("日本語 ✓ 🔥"), "{name}: {pieces:?}");
    }
}
