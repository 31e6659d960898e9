//! Helpers shared by the fuzz targets: turning fuzzer bytes into a whole region, and
//! oracles for decoded text that do not call the code under test. The request area's input
//! format and oracles (`request_area`) are in [`area`].
//!
//! # Region input format (`region_read`, `worker_take`)
//!
//! A literal 49152-byte image would leave libFuzzer (which starts at a few bytes and grows
//! inputs slowly, 4096 at most by default) stuck in the system prompt. So the input is a
//! header and a payload that fills the object's bytes in order of interest; what the input
//! does not reach stays 0, or the field's fill byte:
//!
//! ```text
//! offset size  meaning
//! 0      1     ctrl: option bits, read by each target
//! 1      8     seq: u64 little-endian, a parameter for the target
//! 9      4     fill bytes for system prompt, user prompt, response, error message: the part
//!              of each text field that the payload does not cover is set to it (0: a plain
//!              C string; anything else: text running to the end of the field, no NUL). The
//!              response's fill is taken modulo 128: 32 KiB of invalid UTF-8 (one U+FFFD
//!              each) costs ~100× a clean field under coverage instrumentation, and would
//!              take most of the fuzzer's time; invalid bytes there come from the payload.
//! 13     2     sys_len  (u16 LE): payload bytes for the system prompt (at most 4096)
//! 15     2     user_len (u16 LE): payload bytes for the user prompt (at most 4096)
//! 17     2     err_len  (u16 LE): payload bytes for the error message (at most 256)
//! 19     ...   payload, laid out in this order:
//!              1 byte     shutdown_requested
//!              256 bytes  extension page bytes 0..256 (magic, version, every word and
//!                         checksum, the token, and the reserved bytes up to the error message)
//!              sys_len    the system prompt's first bytes
//!              user_len   the user prompt's first bytes
//!              err_len    the error message's first bytes
//!              ≤ 32768    the response's first bytes
//!              the rest   every other byte of the object, in address order
//! ```

use std::ops::Range;

pub mod area;

use llama_shm::internals::wire::layout::{Field, EXT_OFFSET, OBJECT_SIZE};
use llama_shm::internals::wire::text::DecodeFlags;

/// Length of the region input's header.
pub const HEADER_LEN: usize = 19;

/// How many bytes of the extension page come right after the shutdown byte: everything
/// before the error message.
pub const EXT_HEAD: usize = 256;

/// A region input, decoded.
#[derive(Debug, Clone)]
pub struct RegionInput {
    /// Option bits for the target.
    pub ctrl: u8,
    /// A parameter for the target.
    pub seq: u64,
    /// The whole object, [`OBJECT_SIZE`] bytes.
    pub bytes: Vec<u8>,
}

/// Copies up to `max` bytes of `payload` to `bytes[start..]`, advancing `payload`.
fn lay(bytes: &mut [u8], payload: &mut &[u8], start: usize, max: usize) -> usize {
    let n = max.min(payload.len());
    bytes[start..start + n].copy_from_slice(&payload[..n]);
    *payload = &payload[n..];
    n
}

fn span_range(field: Field) -> Range<usize> {
    let s = field.span();
    s.offset..s.offset + s.len
}

impl RegionInput {
    /// Decodes fuzzer bytes (any length) as described in the crate docs.
    pub fn parse(data: &[u8]) -> Self {
        let mut hdr = [0u8; HEADER_LEN];
        let n = data.len().min(HEADER_LEN);
        hdr[..n].copy_from_slice(&data[..n]);
        let mut payload = &data[n..];
        let u16_at = |i: usize| usize::from(u16::from_le_bytes([hdr[i], hdr[i + 1]]));
        let ctrl = hdr[0];
        let seq = u64::from_le_bytes(hdr[1..9].try_into().expect("8 bytes"));
        let fills = [hdr[9], hdr[10], hdr[11], hdr[12]];
        let (sys_len, user_len, err_len) = (u16_at(13), u16_at(15), u16_at(17));

        let mut bytes = vec![0u8; OBJECT_SIZE];
        let b = &mut bytes;
        let p = &mut payload;
        lay(b, p, Field::Shutdown.span().offset, 1);
        lay(b, p, EXT_OFFSET, EXT_HEAD);
        for (field, len, fill) in [
            (Field::SystemPrompt, sys_len, fills[0]),
            (Field::UserPrompt, user_len, fills[1]),
            (Field::ErrorMessage, err_len, fills[3]),
            (Field::Response, usize::MAX, fills[2] & 0x7F),
        ] {
            let r = span_range(field);
            let k = lay(b, p, r.start, len.min(r.len()));
            b[r.start + k..r.end].fill(fill);
        }
        let err = span_range(Field::ErrorMessage);
        debug_assert_eq!(err.start, EXT_OFFSET + EXT_HEAD);
        for rest in [
            Field::Shutdown.span().offset + 1..EXT_OFFSET,
            err.end..OBJECT_SIZE,
        ] {
            let len = rest.len();
            lay(b, p, rest.start, len);
        }
        Self { ctrl, seq, bytes }
    }

    /// The bytes of `field` in the object.
    pub fn field(&self, field: Field) -> &[u8] {
        &self.bytes[span_range(field)]
    }
}

/// The bytes of a text field before its first NUL (all of it without one): what the
/// checksums cover.
pub fn payload(field: &[u8]) -> &[u8] {
    std::ffi::CStr::from_bytes_until_nul(field).map_or(field, |c| c.to_bytes())
}

/// The longest prefix of whole chars of `text` before its first NUL that fits in `max`
/// bytes: what `Policy::Truncate` must keep. Worked out with std alone (`split`, and `get`,
/// which refuses a cut inside a char), not the crate's boundary search; O(1) past the NUL
/// search, as the region targets call it on 96 KiB texts.
pub fn kept_prefix(text: &str, max: usize) -> &str {
    let before_nul = text.split('\0').next().unwrap_or("");
    if before_nul.len() <= max {
        return before_nul;
    }
    // A char is at most 4 bytes: one of the 4 cuts at or below `max` is a boundary.
    (max.saturating_sub(3)..=max)
        .rev()
        .find_map(|end| before_nul.get(..end))
        .expect("a char boundary within 4 bytes")
}

/// The length of a trailing sequence of `pre` that is valid UTF-8 so far but cut short (what
/// a byte-counting writer leaves), or 0. Worked out with `str::from_utf8` on the last 1–3
/// bytes alone, not with the decoder under test.
pub fn partial_tail_len(pre: &[u8]) -> usize {
    for back in 1..=pre.len().min(3) {
        let tail = &pre[pre.len() - back..];
        if let Err(e) = std::str::from_utf8(tail) {
            if e.valid_up_to() == 0 && e.error_len().is_none() {
                return back;
            }
        }
    }
    0
}

/// Checks what the decoder made of an untrusted text field against an oracle: the text is
/// the field up to its first NUL, minus a cut-short last char, with other invalid UTF-8
/// replaced as `String::from_utf8_lossy` does; the flags say exactly that; no NUL survives.
///
/// Returns the number of raw bytes the text came from (before any U+FFFD expansion).
pub fn check_decoded(field: &[u8], text: &str, flags: DecodeFlags) -> usize {
    assert!(!text.contains('\0'), "decoded text holds a NUL");
    // `CStr` finds the NUL with core's memchr: a per-byte loop here would be instrumented
    // and cost as much as the decoder under test.
    let (pre, missing_nul) = match std::ffi::CStr::from_bytes_until_nul(field) {
        Ok(c) => (c.to_bytes(), false),
        Err(_) => (field, true),
    };
    let partial = partial_tail_len(pre);
    let kept = &pre[..pre.len() - partial];
    let want = String::from_utf8_lossy(kept);
    assert_eq!(text, want, "decoded text differs from the oracle");
    let want_flags = DecodeFlags {
        missing_nul,
        dropped_partial: partial > 0,
        replaced_invalid: std::str::from_utf8(kept).is_err(),
    };
    assert_eq!(flags, want_flags);
    // Bounds: only a missing NUL lets the text reach the field's full length, and only
    // replacement (one 3-byte U+FFFD for at most one invalid byte) makes it longer than the
    // bytes it came from.
    assert!(pre.len() <= field.len());
    if !missing_nul {
        assert!(pre.len() < field.len());
    }
    if !flags.replaced_invalid {
        assert!(text.len() <= kept.len());
    }
    assert!(text.len() <= 3 * kept.len());
    kept.len()
}
