//! Text fields of the wire: C strings in fixed-capacity byte fields.
//!
//! Going out, this module decides which prefix of a `&str` fits a field
//! (whole chars only, never a NUL inside) and lays it out as payload, NUL,
//! zeros. Coming in, it treats a field as untrusted: it never reads past the
//! field, tolerates a missing NUL, forgives the split last char that clients
//! truncating by byte count leave behind, and replaces other invalid UTF-8
//! instead of failing. Whatever it had to fix is reported in [`DecodeFlags`],
//! so callers can log it or reject the request.

use std::borrow::Cow;

/// How to handle text that does not fit a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Keep the longest prefix of whole chars that fits, stopping at the
    /// first NUL; report the cut in [`Encoded`].
    #[default]
    Truncate,
    /// Refuse text that holds a NUL or does not fit whole.
    Strict,
}

/// Why encode refused the text (Strict policy only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// `len` bytes of UTF-8 do not fit in `max` bytes (the field's capacity
    /// minus the NUL).
    #[error("text is {len} bytes of UTF-8 but the field holds at most {max}")]
    TooLong {
        /// Byte length of the refused text.
        len: usize,
        /// Bytes the field can hold before its terminating NUL.
        max: usize,
    },
    /// The text holds a NUL byte at byte offset `at`; the C-string wire
    /// cannot carry it.
    #[error("text holds a NUL byte at offset {at}, which a C-string field cannot carry")]
    InteriorNul {
        /// Byte offset of the first NUL in the text.
        at: usize,
    },
}

/// What encode kept of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded<'a> {
    /// The bytes to store before the terminating NUL: always a prefix of the
    /// input, valid UTF-8, NUL-free, len <= capacity-1.
    pub bytes: &'a [u8],
    /// True when something was cut off (too long, or cut at an interior NUL).
    pub truncated: bool,
    /// Some(offset) when the cut was made at an interior NUL (Truncate
    /// policy): the offset of the first NUL in the text. The kept bytes may
    /// end earlier still when the part before the NUL did not fit either.
    pub nul_at: Option<usize>,
}

/// Decides what of `text` goes into a field of `capacity` bytes (capacity
/// includes the NUL; capacity >= 1).
///
/// Truncate: cut at the first NUL if any (report `nul_at`), then at the last
/// whole char that fits in capacity-1 bytes.
/// Strict: [`EncodeError::InteriorNul`] for any NUL (checked first),
/// [`EncodeError::TooLong`] if the text is longer than capacity-1 bytes.
///
/// A capacity of 0 leaves no room even for the NUL; it is treated like 1, so
/// nothing of the text fits.
///
/// # Errors
///
/// Only under [`Policy::Strict`]: [`EncodeError::InteriorNul`] when the text
/// holds a NUL, else [`EncodeError::TooLong`] when it does not fit whole.
pub fn encode(text: &str, capacity: usize, policy: Policy) -> Result<Encoded<'_>, EncodeError> {
    // One byte of every field belongs to the terminating NUL.
    let max = capacity.saturating_sub(1);
    let nul = first_nul(text.as_bytes());
    match policy {
        Policy::Strict => {
            // NUL first: a NUL means the caller built the text wrong, which
            // matters more than its length.
            if let Some(at) = nul {
                return Err(EncodeError::InteriorNul { at });
            }
            if text.len() > max {
                return Err(EncodeError::TooLong { len: text.len(), max });
            }
            Ok(Encoded {
                bytes: text.as_bytes(),
                truncated: false,
                nul_at: None,
            })
        }
        Policy::Truncate => {
            // In UTF-8 a 0 byte is always the whole char U+0000, so the NUL's
            // offset is a char boundary and slicing there cannot panic.
            let before_nul = &text[..nul.unwrap_or(text.len())];
            let end = floor_char_boundary(before_nul, max);
            Ok(Encoded {
                bytes: &text.as_bytes()[..end],
                truncated: end < text.len(),
                nul_at: nul,
            })
        }
    }
}

/// Writes `text` into `field` (a private buffer, e.g. a region snapshot):
/// payload, NUL, zero-fill of the rest. Returns what encode returned.
///
/// The zero-fill matters: it keeps whatever the field held before (a longer
/// earlier prompt, say) from leaking to the peer behind the NUL.
///
/// On error the field is left untouched. An empty field has no room for the
/// NUL, so nothing is written to it.
///
/// # Errors
///
/// As [`encode`] with `capacity = field.len()`: only under
/// [`Policy::Strict`], [`EncodeError::InteriorNul`] or
/// [`EncodeError::TooLong`].
pub fn write_field<'a>(field: &mut [u8], text: &'a str, policy: Policy) -> Result<Encoded<'a>, EncodeError> {
    let encoded = encode(text, field.len(), policy)?;
    let (payload, rest) = field.split_at_mut(encoded.bytes.len());
    payload.copy_from_slice(encoded.bytes);
    // The NUL is simply the first byte of the zero-fill.
    rest.fill(0);
    Ok(encoded)
}

/// What decode noticed about an untrusted field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeFlags {
    /// No NUL in the whole field: the whole field was taken as the text.
    pub missing_nul: bool,
    /// A trailing incomplete UTF-8 sequence (what a byte-truncating client
    /// leaves) was dropped.
    pub dropped_partial: bool,
    /// Other invalid UTF-8 was replaced with U+FFFD.
    pub replaced_invalid: bool,
}

impl DecodeFlags {
    /// True when any flag is set, i.e. the field was not a clean C string of
    /// valid UTF-8.
    #[must_use]
    pub fn any(&self) -> bool {
        self.missing_nul || self.dropped_partial || self.replaced_invalid
    }
}

/// An untrusted field, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The text: borrowed from the field unless invalid UTF-8 had to be
    /// replaced.
    pub text: Cow<'a, str>,
    /// What had to be fixed to get `text`.
    pub flags: DecodeFlags,
}

/// Reads a C string out of `field`.
///
/// The text is everything before the first NUL (none: the whole field,
/// flagged `missing_nul`). A trailing *incomplete but so far valid* UTF-8
/// sequence at the end of the text is dropped (`dropped_partial`); any other
/// invalid UTF-8 is replaced with U+FFFD, one per maximal invalid subpart as
/// [`String::from_utf8_lossy`] does (`replaced_invalid`). Never panics, never
/// reads past `field`.
///
/// The text is [`Cow::Borrowed`] whenever nothing had to be replaced.
#[must_use]
pub fn decode(field: &[u8]) -> Decoded<'_> {
    let (bytes, missing_nul) = text_part(field);
    let mut flags = DecodeFlags {
        missing_nul,
        ..DecodeFlags::default()
    };
    let mut chunks = bytes.utf8_chunks();
    // A single chunk is the common case (valid text, maybe with a split last
    // char); it can be borrowed as is. Only replacement needs a new String.
    let text = match (chunks.next(), chunks.next()) {
        (None, _) => Cow::Borrowed(""),
        (Some(only), None) if only.invalid().is_empty() => Cow::Borrowed(only.valid()),
        (Some(only), None) if is_incomplete(only.invalid()) => {
            flags.dropped_partial = true;
            Cow::Borrowed(only.valid())
        }
        _ => {
            let mut owned = String::with_capacity(bytes.len());
            push_lossy(bytes, &mut owned, &mut flags);
            Cow::Owned(owned)
        }
    };
    Decoded { text, flags }
}

/// Like [`decode`], but writes the text into `out` (cleared first) and
/// returns the flags — for hot paths that reuse a String.
pub fn decode_into(field: &[u8], out: &mut String) -> DecodeFlags {
    let (bytes, missing_nul) = text_part(field);
    decode_text_into(bytes, missing_nul, out)
}

/// [`decode_into`] of a field already split by [`text_part`]: `bytes` (before the NUL) and
/// whether the NUL was missing.
pub fn decode_text_into(bytes: &[u8], missing_nul: bool, out: &mut String) -> DecodeFlags {
    out.clear();
    let mut flags = DecodeFlags {
        missing_nul,
        ..DecodeFlags::default()
    };
    out.reserve(bytes.len());
    push_lossy(bytes, out, &mut flags);
    flags
}

/// Largest index <= `max` that is a char boundary of `s` (`s.len()` if
/// `s.len() <= max`). Used by sinks that cut on a char boundary.
///
/// `str::floor_char_boundary` would do, but it is newer than the crate's
/// minimum Rust version.
#[must_use]
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    // A char is at most 4 bytes, so this steps back at most 3 times; 0 is
    // always a boundary, so it ends.
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// The offset of the first NUL in `bytes` (a SIMD search: fields and answers are tens of
/// kilobytes, and a byte loop over them cost more than the rest of a round trip's work).
#[must_use]
pub fn first_nul(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(0, bytes)
}

/// The parts of `text` between its NULs (all of it when it holds none), in order: what a C
/// string on the wire can carry of it.
pub fn nul_free_parts(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        match first_nul(r.as_bytes()) {
            // A NUL byte is always the whole char U+0000: both sides are char boundaries.
            Some(at) => {
                rest = Some(&r[at + 1..]);
                Some(&r[..at])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// The bytes before the first NUL, and whether the NUL was missing.
pub fn text_part(field: &[u8]) -> (&[u8], bool) {
    match first_nul(field) {
        Some(end) => (&field[..end], false),
        None => (field, true),
    }
}

/// Whether `bad`, a maximal invalid subpart at the very end of the text, is
/// the start of a sequence cut short rather than a byte that could never be
/// valid.
fn is_incomplete(bad: &[u8]) -> bool {
    matches!(std::str::from_utf8(bad), Err(e) if e.error_len().is_none())
}

/// Appends `bytes` to `out` as `decode` reads them, setting the UTF-8 flags.
fn push_lossy(bytes: &[u8], out: &mut String, flags: &mut DecodeFlags) {
    // The common case, valid UTF-8, in one validating pass.
    if let Ok(valid) = std::str::from_utf8(bytes) {
        out.push_str(valid);
        return;
    }
    let mut chunks = bytes.utf8_chunks().peekable();
    while let Some(chunk) = chunks.next() {
        out.push_str(chunk.valid());
        let bad = chunk.invalid();
        if bad.is_empty() {
            continue;
        }
        // Only the last chunk's invalid part ends at the end of the text; a
        // cut-short sequence anywhere else is corruption, not truncation.
        if chunks.peek().is_none() && is_incomplete(bad) {
            flags.dropped_partial = true;
        } else {
            out.push(char::REPLACEMENT_CHARACTER);
            flags.replaced_invalid = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The real prompt field capacity.
    const PROMPT_CAP: usize = 4096;

    // ---- oracles: char by char, never calling the code under test ----

    /// What Truncate should keep of `text` with `max` payload bytes, and
    /// whether anything was dropped.
    fn oracle_truncate(text: &str, max: usize) -> (String, bool) {
        let mut kept = String::new();
        for c in text.chars() {
            if c == '\0' || kept.len() + c.len_utf8() > max {
                return (kept, true);
            }
            kept.push(c);
        }
        (kept, false)
    }

    fn oracle_first_nul(text: &str) -> Option<usize> {
        text.char_indices().find(|&(_, c)| c == '\0').map(|(i, _)| i)
    }

    /// The longest prefix of whole chars of `s` within its first `k` bytes.
    fn oracle_whole_chars(s: &str, k: usize) -> String {
        let mut kept = String::new();
        for (i, c) in s.char_indices() {
            if i + c.len_utf8() > k {
                break;
            }
            kept.push(c);
        }
        kept
    }

    /// `b` minus a trailing sequence that is valid so far but cut short,
    /// found by looking back at most 3 bytes for its leading byte.
    fn oracle_strip_partial(b: &[u8]) -> &[u8] {
        for back in 1..=b.len().min(3) {
            let i = b.len() - back;
            let lead = b[i];
            if lead & 0xC0 == 0x80 {
                continue;
            }
            let need = match lead {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => return b,
            };
            if need <= back {
                return b;
            }
            // Everything after `lead` is a continuation byte (the loop only
            // stepped over those), but the second byte has tighter ranges
            // for some leads (overlongs, surrogates, > U+10FFFF).
            let second_ok = match b.get(i + 1) {
                None => true,
                Some(&x) => match lead {
                    0xE0 => (0xA0..=0xBF).contains(&x),
                    0xED => (0x80..=0x9F).contains(&x),
                    0xF0 => (0x90..=0xBF).contains(&x),
                    0xF4 => (0x80..=0x8F).contains(&x),
                    _ => true,
                },
            };
            return if second_ok { &b[..i] } else { b };
        }
        b
    }

    fn oracle_pre_nul(field: &[u8]) -> (&[u8], bool) {
        let mut end = 0;
        while end < field.len() {
            if field[end] == 0 {
                return (&field[..end], false);
            }
            end += 1;
        }
        (field, true)
    }

    // ---- strategies ----

    /// Chars for short strings: anything, with NUL and multi-byte chars
    /// made common enough to matter.
    fn any_text_char() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => any::<char>(),
            1 => Just('\0'),
            3 => prop::sample::select(vec!['a', 'é', '€', '𝄞', '日']),
        ]
    }

    fn short_text() -> impl Strategy<Value = String> {
        prop::collection::vec(any_text_char(), 0..40).prop_map(|v| v.into_iter().collect())
    }

    fn short_text_no_nul() -> impl Strategy<Value = String> {
        prop::collection::vec(any_text_char(), 0..40)
            .prop_map(|v| v.into_iter().filter(|&c| c != '\0').collect())
    }

    const LONG_CHARS: [char; 8] = ['a', 'a', 'a', 'é', '€', '𝄞', '日', 'é'];

    /// Strings of 4000..=5003 bytes of mixed ASCII and multi-byte chars,
    /// sometimes with one NUL. One variant pads with ASCII to just below the
    /// 4095-byte cut and then goes multi-byte, so that every straddle offset
    /// of every char width is hit often.
    fn long_text() -> impl Strategy<Value = String> {
        let mixed = (4000usize..=5000, prop::collection::vec(0..LONG_CHARS.len(), 5000)).prop_map(
            |(target, picks)| {
                let mut s = String::with_capacity(target + 4);
                for p in picks {
                    if s.len() >= target {
                        break;
                    }
                    s.push(LONG_CHARS[p]);
                }
                s
            },
        );
        let near_cut = (
            4088usize..=4096,
            prop::collection::vec(prop::sample::select(vec!['é', '€', '𝄞', '日']), 4..300),
        )
            .prop_map(|(pad, tail)| {
                let mut s = "a".repeat(pad);
                s.extend(tail);
                s
            });
        (
            prop_oneof![mixed, near_cut],
            prop::option::weighted(0.1, any::<prop::sample::Index>()),
        )
            .prop_map(|(s, nul)| match nul {
                None => s,
                Some(idx) => {
                    let at = idx.index(s.chars().count() + 1);
                    let mut out: String = s.chars().take(at).collect();
                    out.push('\0');
                    out.extend(s.chars().skip(at));
                    out
                }
            })
    }

    /// (text, capacity): short texts with small capacities, and long texts
    /// with the real prompt capacity.
    fn text_and_capacity() -> impl Strategy<Value = (String, usize)> {
        prop_oneof![(short_text(), 1usize..=64), (long_text(), Just(PROMPT_CAP))]
    }

    /// Byte vectors likely to hold valid, cut-short and invalid UTF-8.
    fn untrusted_bytes() -> impl Strategy<Value = Vec<u8>> {
        let utf8ish = prop_oneof![
            3 => 0x20u8..0x80,
            1 => Just(0u8),
            3 => 0x80u8..0xC0,
            3 => 0xC0u8..=0xFF,
            2 => prop::sample::select(vec![0xE0u8, 0xED, 0xF0, 0xF4, 0xC3, 0xE2]),
        ];
        let cut_valid = (short_text(), any::<prop::sample::Index>()).prop_map(|(s, k)| {
            let b = s.into_bytes();
            let k = k.index(b.len() + 1);
            b[..k].to_vec()
        });
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(utf8ish, 0..32),
            cut_valid,
        ]
    }

    fn cfg(cases: u32) -> ProptestConfig {
        ProptestConfig::with_cases(cases)
    }

    // ---- properties ----

    proptest! {
        #![proptest_config(cfg(4000))]

        #[test]
        fn prop_truncate_matches_oracle((text, cap) in text_and_capacity()) {
            let enc = encode(&text, cap, Policy::Truncate).unwrap();
            let (kept, cut) = oracle_truncate(&text, cap - 1);
            prop_assert_eq!(enc.bytes, kept.as_bytes());
            prop_assert_eq!(enc.truncated, cut);
            prop_assert_eq!(enc.nul_at, oracle_first_nul(&text));
            prop_assert!(enc.bytes.len() < cap);
        }

        #[test]
        fn prop_strict_matches_oracle((text, cap) in text_and_capacity()) {
            let got = encode(&text, cap, Policy::Strict);
            let (kept, cut) = oracle_truncate(&text, cap - 1);
            match oracle_first_nul(&text) {
                Some(at) => prop_assert_eq!(got, Err(EncodeError::InteriorNul { at })),
                None if cut => prop_assert_eq!(
                    got,
                    Err(EncodeError::TooLong { len: text.len(), max: cap - 1 })
                ),
                None => {
                    prop_assert_eq!(kept.as_str(), text.as_str());
                    prop_assert_eq!(
                        got,
                        Ok(Encoded { bytes: text.as_bytes(), truncated: false, nul_at: None })
                    );
                }
            }
        }

        #[test]
        fn prop_write_then_decode_round_trips((text, cap) in text_and_capacity()) {
            for policy in [Policy::Truncate, Policy::Strict] {
                let mut field = vec![0xAA; cap];
                let Ok(enc) = write_field(&mut field, &text, policy) else {
                    prop_assert!(field.iter().all(|&b| b == 0xAA));
                    continue;
                };
                prop_assert!(field[enc.bytes.len()..].iter().all(|&b| b == 0));
                let dec = decode(&field);
                prop_assert_eq!(dec.text.as_bytes(), enc.bytes);
                prop_assert_eq!(dec.flags, DecodeFlags::default());
                prop_assert!(matches!(dec.text, Cow::Borrowed(_)));
            }
        }

        #[test]
        fn prop_decode_byte_truncated_prefix(
            (text, k) in prop_oneof![short_text_no_nul(), long_text()]
                .prop_map(|s| s.replace('\0', ""))
                .prop_flat_map(|s| { let n = s.len(); (Just(s), 0..=n) })
        ) {
            let field = &text.as_bytes()[..k];
            let want = oracle_whole_chars(&text, k);
            let dec = decode(field);
            prop_assert_eq!(dec.text.as_ref(), want.as_str());
            prop_assert_eq!(dec.flags, DecodeFlags {
                missing_nul: true,
                dropped_partial: want.len() != k,
                replaced_invalid: false,
            });
            prop_assert!(matches!(dec.text, Cow::Borrowed(_)));
        }

        #[test]
        fn prop_decode_untrusted_bytes(field in untrusted_bytes()) {
            let (pre, missing_nul) = oracle_pre_nul(&field);
            let stripped = oracle_strip_partial(pre);
            let want = String::from_utf8_lossy(stripped);
            let want_flags = DecodeFlags {
                missing_nul,
                dropped_partial: stripped.len() != pre.len(),
                replaced_invalid: std::str::from_utf8(stripped).is_err(),
            };

            let dec = decode(&field);
            prop_assert!(!dec.text.contains('\0'));
            prop_assert_eq!(dec.text.as_ref(), want.as_ref());
            prop_assert_eq!(dec.flags, want_flags);

            let mut out = String::from("stale");
            let flags = decode_into(&field, &mut out);
            prop_assert_eq!(out.as_str(), want.as_ref());
            prop_assert_eq!(flags, want_flags);
        }
    }

    // ---- encode edges ----

    fn truncate(text: &str, cap: usize) -> Encoded<'_> {
        encode(text, cap, Policy::Truncate).unwrap()
    }

    #[test]
    fn empty_text_fits_any_capacity() {
        for cap in [1, 2, PROMPT_CAP] {
            for policy in [Policy::Truncate, Policy::Strict] {
                let enc = encode("", cap, policy).unwrap();
                assert_eq!(
                    enc,
                    Encoded {
                        bytes: b"",
                        truncated: false,
                        nul_at: None
                    }
                );
            }
        }
    }

    #[test]
    fn exactly_capacity_minus_one_fits_whole() {
        let text = "a".repeat(PROMPT_CAP - 1);
        for policy in [Policy::Truncate, Policy::Strict] {
            let enc = encode(&text, PROMPT_CAP, policy).unwrap();
            assert_eq!(enc.bytes, text.as_bytes());
            assert!(!enc.truncated);
        }
    }

    #[test]
    fn one_byte_over_is_cut_or_refused() {
        let text = "a".repeat(PROMPT_CAP);
        let enc = truncate(&text, PROMPT_CAP);
        assert_eq!(enc.bytes.len(), PROMPT_CAP - 1);
        assert!(enc.truncated);
        assert_eq!(enc.nul_at, None);
        assert_eq!(
            encode(&text, PROMPT_CAP, Policy::Strict),
            Err(EncodeError::TooLong {
                len: PROMPT_CAP,
                max: PROMPT_CAP - 1
            })
        );
    }

    #[test]
    fn multibyte_char_straddling_the_cut_at_every_offset() {
        for c in ['é', '€', '日', '𝄞'] {
            let n = c.len_utf8();
            for pad in [0, 1, 5, PROMPT_CAP - 1 - n] {
                let text = format!("{}{c}b", "a".repeat(pad));
                // `into` bytes of the char fit before the cut.
                for into in 0..=n {
                    let cap = pad + into + 1;
                    let enc = truncate(&text, cap);
                    let want = if into == n { pad + n } else { pad };
                    assert_eq!(enc.bytes.len(), want, "char {c:?} pad {pad} into {into}");
                    assert_eq!(enc.bytes, &text.as_bytes()[..want]);
                    assert!(enc.truncated);
                    assert!(matches!(
                        encode(&text, cap, Policy::Strict),
                        Err(EncodeError::TooLong { .. })
                    ));
                }
            }
        }
    }

    #[test]
    fn interior_nul_truncate_cuts_there() {
        let enc = truncate("ab\0cd", 64);
        assert_eq!(
            enc,
            Encoded {
                bytes: b"ab",
                truncated: true,
                nul_at: Some(2)
            }
        );
        // A NUL at offset 0 leaves nothing.
        let enc = truncate("\0abc", 64);
        assert_eq!((enc.bytes, enc.nul_at), (&b""[..], Some(0)));
        // A trailing NUL still counts as a cut.
        let enc = truncate("abc\0", 64);
        assert_eq!((enc.bytes, enc.truncated), (&b"abc"[..], true));
    }

    #[test]
    fn interior_nul_past_the_length_cut_is_still_reported() {
        let enc = truncate("abcdef\0g", 4);
        assert_eq!(
            enc,
            Encoded {
                bytes: b"abc",
                truncated: true,
                nul_at: Some(6)
            }
        );
    }

    #[test]
    fn interior_nul_strict_is_refused_before_length() {
        assert_eq!(
            encode("ab\0cd", 64, Policy::Strict),
            Err(EncodeError::InteriorNul { at: 2 })
        );
        // Too long as well, but the NUL is the error reported.
        assert_eq!(
            encode("abcdef\0", 2, Policy::Strict),
            Err(EncodeError::InteriorNul { at: 6 })
        );
    }

    #[test]
    fn capacity_one_holds_only_the_nul() {
        assert_eq!(
            truncate("a", 1),
            Encoded {
                bytes: b"",
                truncated: true,
                nul_at: None
            }
        );
        assert_eq!(
            encode("a", 1, Policy::Strict),
            Err(EncodeError::TooLong { len: 1, max: 0 })
        );
        assert!(encode("", 1, Policy::Strict).is_ok());
    }

    #[test]
    fn capacity_zero_behaves_like_one() {
        assert_eq!(truncate("a", 0), truncate("a", 1));
        assert_eq!(
            encode("a", 0, Policy::Strict),
            Err(EncodeError::TooLong { len: 1, max: 0 })
        );
    }

    #[test]
    fn error_messages_name_the_numbers() {
        let e = EncodeError::TooLong { len: 5000, max: 4095 };
        assert_eq!(
            e.to_string(),
            "text is 5000 bytes of UTF-8 but the field holds at most 4095"
        );
        let e = EncodeError::InteriorNul { at: 7 };
        assert!(e.to_string().contains("offset 7"));
    }

    // ---- write_field ----

    #[test]
    fn write_field_zero_fills_after_the_payload() {
        let mut field = [0xAAu8; 16];
        let enc = write_field(&mut field, "héllo", Policy::Truncate).unwrap();
        assert_eq!(enc.bytes, "héllo".as_bytes());
        assert_eq!(&field[..6], "héllo".as_bytes());
        assert!(field[6..].iter().all(|&b| b == 0));
    }

    #[test]
    fn write_field_truncates_to_leave_room_for_the_nul() {
        let mut field = [0xAAu8; 4];
        let enc = write_field(&mut field, "a€", Policy::Truncate).unwrap();
        // "a€" is 4 bytes: the € does not fit next to the NUL.
        assert_eq!(enc.bytes, b"a");
        assert_eq!(field, [b'a', 0, 0, 0]);
    }

    #[test]
    fn write_field_error_leaves_field_untouched() {
        let mut field = [0xAAu8; 4];
        assert!(write_field(&mut field, "abcd", Policy::Strict).is_err());
        assert!(write_field(&mut field, "a\0", Policy::Strict).is_err());
        assert_eq!(field, [0xAA; 4]);
    }

    #[test]
    fn write_field_on_empty_field_writes_nothing() {
        let mut field: [u8; 0] = [];
        let enc = write_field(&mut field, "abc", Policy::Truncate).unwrap();
        assert_eq!((enc.bytes, enc.truncated), (&b""[..], true));
    }

    // ---- decode edges ----

    #[test]
    fn decode_empty_and_nul_only_fields() {
        let dec = decode(b"");
        assert_eq!(dec.text, "");
        assert!(dec.flags.missing_nul);
        let dec = decode(&[0; 8]);
        assert_eq!(dec.text, "");
        assert!(!dec.flags.any());
    }

    proptest! {
        /// The parts between NULs are std's split at U+0000, and the first NUL is where
        /// the byte loop finds it, at every position and length.
        #[test]
        fn nul_free_parts_and_first_nul_agree_with_the_byte_loop(
            s in proptest::collection::vec(prop_oneof![Just('\0'), Just('a'), Just('é'), Just('😀')], 0..80)
                .prop_map(|v| v.into_iter().collect::<String>())
        ) {
            let parts: Vec<&str> = nul_free_parts(&s).collect();
            prop_assert_eq!(parts, s.split('\0').collect::<Vec<_>>());
            prop_assert_eq!(first_nul(s.as_bytes()), s.bytes().position(|b| b == 0));
        }
    }

    #[test]
    fn decode_stops_at_the_first_nul() {
        // Garbage behind the NUL, even invalid UTF-8, is never looked at.
        let dec = decode(b"hi\0\xFFthere");
        assert_eq!(dec.text, "hi");
        assert!(!dec.flags.any());
        assert!(matches!(dec.text, Cow::Borrowed(_)));
    }

    #[test]
    fn decode_field_without_nul_takes_it_all() {
        let dec = decode(b"abcd");
        assert_eq!(dec.text, "abcd");
        assert_eq!(
            dec.flags,
            DecodeFlags {
                missing_nul: true,
                ..DecodeFlags::default()
            }
        );
    }

    #[test]
    fn decode_drops_char_split_by_byte_truncating_writer() {
        let bytes = "a€".as_bytes();
        let mut field = bytes[..bytes.len() - 1].to_vec();
        field.push(0);
        let dec = decode(&field);
        assert_eq!(dec.text, "a");
        assert_eq!(
            dec.flags,
            DecodeFlags {
                dropped_partial: true,
                ..DecodeFlags::default()
            }
        );
        assert!(matches!(dec.text, Cow::Borrowed(_)));
    }

    #[test]
    fn decode_csharp_style_4095_byte_copy() {
        // A client copying the first 4095 bytes of the UTF-8 encoding: the
        // 𝄞 starting at byte 4093 is split after 2 of its 4 bytes.
        let text = format!("{}𝄞tail", "a".repeat(4093));
        let mut field = [0u8; PROMPT_CAP];
        field[..4095].copy_from_slice(&text.as_bytes()[..4095]);
        let dec = decode(&field);
        assert_eq!(dec.text, "a".repeat(4093));
        assert!(dec.flags.dropped_partial);
        assert!(!dec.flags.replaced_invalid && !dec.flags.missing_nul);
    }

    #[test]
    fn decode_replaces_invalid_byte_in_the_middle() {
        let dec = decode(b"ab\xFFcd\0");
        assert_eq!(dec.text, "ab\u{FFFD}cd");
        assert_eq!(
            dec.flags,
            DecodeFlags {
                replaced_invalid: true,
                ..DecodeFlags::default()
            }
        );
    }

    #[test]
    fn decode_cut_short_sequence_in_the_middle_is_replaced_not_dropped() {
        // E2 82 is a valid start of €, but it is followed by 'x', not its end.
        let dec = decode(b"a\xE2\x82x\0");
        assert_eq!(dec.text, "a\u{FFFD}x");
        assert!(dec.flags.replaced_invalid && !dec.flags.dropped_partial);
    }

    #[test]
    fn decode_invalid_middle_and_partial_tail() {
        let dec = decode(b"a\xFFb\xE2\x82");
        assert_eq!(dec.text, "a\u{FFFD}b");
        assert_eq!(
            dec.flags,
            DecodeFlags {
                missing_nul: true,
                dropped_partial: true,
                replaced_invalid: true,
            }
        );
    }

    #[test]
    fn decode_invalid_tail_that_no_valid_char_starts_is_replaced() {
        for (field, want) in [
            (&b"a\xFF"[..], "a\u{FFFD}"),
            (b"a\x80", "a\u{FFFD}"),
            // E0 80 would be an overlong encoding: two invalid subparts.
            (b"a\xE0\x80", "a\u{FFFD}\u{FFFD}"),
            // ED A0 would be a surrogate.
            (b"a\xED\xA0", "a\u{FFFD}\u{FFFD}"),
        ] {
            let dec = decode(field);
            assert_eq!(dec.text, want, "{field:?}");
            assert!(dec.flags.replaced_invalid && !dec.flags.dropped_partial);
        }
    }

    #[test]
    fn decode_into_clears_and_agrees_with_decode() {
        let mut out = String::from("previous request");
        for field in [&b"a\xFFb\xE2\x82"[..], b"ok\0", b"", b"\xF0\x9D\x84"] {
            let flags = decode_into(field, &mut out);
            let dec = decode(field);
            assert_eq!(out, dec.text);
            assert_eq!(flags, dec.flags);
        }
    }

    #[test]
    fn flags_any() {
        assert!(!DecodeFlags::default().any());
        for flags in [
            DecodeFlags {
                missing_nul: true,
                ..DecodeFlags::default()
            },
            DecodeFlags {
                dropped_partial: true,
                ..DecodeFlags::default()
            },
            DecodeFlags {
                replaced_invalid: true,
                ..DecodeFlags::default()
            },
        ] {
            assert!(flags.any());
        }
    }

    // ---- floor_char_boundary ----

    #[test]
    fn floor_char_boundary_edges() {
        let s = "a€b"; // a at 0, € at 1..4, b at 4
        assert_eq!(floor_char_boundary(s, 0), 0);
        assert_eq!(floor_char_boundary(s, 1), 1);
        assert_eq!(floor_char_boundary(s, 2), 1);
        assert_eq!(floor_char_boundary(s, 3), 1);
        assert_eq!(floor_char_boundary(s, 4), 4);
        assert_eq!(floor_char_boundary(s, 5), 5);
        assert_eq!(floor_char_boundary(s, usize::MAX), 5);
        assert_eq!(floor_char_boundary("", 3), 0);
    }
}
