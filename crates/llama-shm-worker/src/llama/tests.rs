//! Unit tests of the llama.cpp engine's pieces that need no model.

use super::*;
use std::path::Path;

#[test]
fn utf8_carry_joins_split_characters() {
    let text = "日本語 🎉!";
    let bytes = text.as_bytes();
    for split in 0..=bytes.len() {
        let mut carry = Utf8Carry::default();
        let mut out = carry.push(&bytes[..split]);
        out.push_str(&carry.push(&bytes[split..]));
        assert!(!carry.finish(), "split at {split}: bytes left over");
        assert_eq!(out, text, "split at {split}");
    }
    // One byte at a time.
    let mut carry = Utf8Carry::default();
    let out: String = bytes.iter().map(|b| carry.push(&[*b])).collect();
    assert_eq!(out, text);
    assert!(!carry.finish());
}

#[test]
fn utf8_carry_replaces_invalid_bytes_and_drops_nul() {
    let mut carry = Utf8Carry::default();
    assert_eq!(carry.push(b"a\0b\xffc"), "ab\u{fffd}c");
    // An unfinished sequence at the end is held back, then dropped (never U+FFFD).
    assert_eq!(carry.push(b"x\xe6\x97"), "x");
    assert!(carry.finish());
    assert!(!carry.finish());
}

#[test]
fn missing_and_non_gguf_files_are_named() {
    let missing = Path::new("/nonexistent/model.gguf");
    let err = LlamaEngine::load(&LlamaOptions::new(missing)).unwrap_err();
    assert!(matches!(err, LoadError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/model.gguf") && msg.contains(MODEL_HINT),
        "{msg}"
    );

    let dir = std::env::temp_dir().join(format!("llama-rs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bogus = dir.join("bogus.gguf");
    std::fs::write(&bogus, b"not a model at all").unwrap();
    let err = LlamaEngine::load(&LlamaOptions::new(&bogus)).unwrap_err();
    assert!(matches!(err, LoadError::NotGguf { .. }), "{err:?}");
    assert!(err.to_string().contains("bogus.gguf"));
    std::fs::write(&bogus, b"GG").unwrap();
    assert!(matches!(
        LlamaEngine::load(&LlamaOptions::new(&bogus)),
        Err(LoadError::NotGguf { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
