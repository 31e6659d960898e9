//! `write_field` on text up to ~20 KiB against an oracle built on std alone.
//!
//! The text is `pad_char` repeated `pad % 5000` times, then `tail`: libFuzzer alone never
//! grows an input to the 4 KiB a prompt field holds, the padding gets there in two bytes.
//! With the `planted-bug` feature, a broken char-boundary cut is checked too (it panics on a
//! multi-byte char at the cut): ci/fuzz.sh requires the fuzzer to find it.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use llama_shm::internals::wire::text::{self, EncodeError, Policy};
use llama_shm_fuzz::kept_prefix;

/// Field capacities worth trying: the degenerate ones, a small one, the real ones.
const CAPACITIES: [usize; 7] = [1, 2, 3, 4, 64, 4096, 32768];
/// Padding chars: ASCII, 2-, 3- and 4-byte UTF-8, and NUL.
const PAD_CHARS: [char; 6] = ['a', 'é', '€', '日', '𝄞', '\0'];

// Field order is the byte format of the corpus: the fixed-size fields first, `tail` last so
// it takes the rest of the input.
#[derive(Debug, Arbitrary)]
struct Input {
    pad: u16,
    pad_char: u8,
    capacity_choice: u8,
    strict: bool,
    tail: String,
}

/// The planted defect: a "floor to a char boundary" that forgets to step back.
#[cfg(feature = "planted-bug")]
fn planted_floor_char_boundary(s: &str, max: usize) -> usize {
    max.min(s.len())
}

fuzz_target!(|input: Input| {
    let pad_char = PAD_CHARS[usize::from(input.pad_char) % PAD_CHARS.len()];
    let mut text: String = std::iter::repeat_n(pad_char, usize::from(input.pad) % 5000).collect();
    text.push_str(&input.tail);
    let cap = CAPACITIES[usize::from(input.capacity_choice) % CAPACITIES.len()];
    let policy = if input.strict {
        Policy::Strict
    } else {
        Policy::Truncate
    };
    let max = cap - 1;
    let first_nul = text.find('\0');
    let kept = kept_prefix(&text, max);

    #[cfg(feature = "planted-bug")]
    if !input.strict {
        let before_nul = &text[..first_nul.unwrap_or(text.len())];
        let end = planted_floor_char_boundary(before_nul, max);
        // Slicing off a char boundary panics: this is the crash the fuzzer must find.
        assert_eq!(&text[..end], kept);
    }

    let mut field = vec![0xAAu8; cap];
    match text::write_field(&mut field, &text, policy) {
        Err(e) => {
            assert_eq!(policy, Policy::Strict, "Truncate never fails");
            match first_nul {
                Some(at) => assert_eq!(e, EncodeError::InteriorNul { at }),
                None => {
                    assert!(text.len() > max, "{e}: but the text fits");
                    assert_eq!(e, EncodeError::TooLong { len: text.len(), max });
                }
            }
            assert!(
                field.iter().all(|&b| b == 0xAA),
                "a refused write touched the field"
            );
        }
        Ok(enc) => {
            if policy == Policy::Strict {
                assert!(
                    first_nul.is_none() && text.len() <= max,
                    "Strict accepted {} bytes",
                    text.len()
                );
                assert_eq!(enc.bytes, text.as_bytes());
            }
            assert_eq!(enc.bytes, kept.as_bytes());
            assert_eq!(enc.truncated, kept.len() < text.len());
            assert_eq!(
                enc.nul_at,
                if policy == Policy::Truncate {
                    first_nul
                } else {
                    None
                }
            );
            let k = enc.bytes.len();
            assert!(k < cap);
            assert!(std::str::from_utf8(&field[..k]).is_ok());
            assert!(!field[..k].contains(&0));
            assert_eq!(&field[..k], kept.as_bytes());
            assert!(
                field[k..].iter().all(|&b| b == 0),
                "NUL and zero fill after the text"
            );
            let dec = text::decode(&field);
            assert_eq!(dec.text, kept);
            assert!(
                !dec.flags.any(),
                "a field write_field wrote decodes with {:?}",
                dec.flags
            );
        }
    }
});
