//! The `request_area` target's input format, and oracles for the request area's records and
//! the embeddings that come back, written from the wire's definition with std alone (they
//! never call the decoders under test).
//!
//! # Input format
//!
//! A fixed header, then the payload, from which the request area's first bytes are made (the
//! rest of its 1 MiB stays zero). Missing header bytes read as 0, and an all-zero header is
//! an honest client's chat: its checksum, records of the right shape, the whole area.
//!
//! ```text
//! offset size  meaning
//! 0      1     ctrl: option bits, see `CTRL_*`
//! 1      8     seq (u64 LE): request_seq (and response_seq); 0 is a seed-mode client
//! 9      1     kind selector: bit 7 clear, request_kind is chat, embed, count or two
//!              prompts by the selector mod 4; set, it is the word at 10
//! 10     4     request_kind word (u32 LE)
//! 14     4     request_options (request); dropped_messages (response)
//! 18     4     sample_seed (request); the embeddings' dimension - 1, mod 64 (results)
//! 22     4     request_flags (request); status (response)
//! 26     4     max_tokens
//! 30     8     deadline_us
//! 38     4     area_used (request) / result_len (response), with CTRL_RAW_USED
//! 42     4     area_size, with CTRL_RAW_SIZE; with CTRL_SHORT_AREA, how many bytes of
//!              the area the object maps (mod 1 MiB + 1)
//! 46     8     the checksum stored, with CTRL_RAW_CHECKSUM
//! 54     4     the scribble's position in the bytes (mod their length), with CTRL_SCRIBBLE
//! 58     1     the scribble: XORed into that byte (0: changes nothing)
//! 59     ...   payload (at most the area's 1 MiB)
//! ```
//!
//! The payload is a script for bytes of the right shape, which raw bytes reach too rarely to
//! explore what lies behind it (with [`CTRL_RAW_BYTES`]: the area's bytes as they are):
//! records `sel: u8 | n: u8 | n bytes` (the tag is one of the six known or two unknown ones,
//! by `sel % 8`; `sel` bit 6 makes the length word one more than the bytes, so the record
//! runs past the end; the bytes are the fuzzer's, NULs and invalid UTF-8 included) for a
//! request, `count | dim | numbers` for a result (see [`AreaInput::result_bytes`]).

use llama_shm::internals::protocol::{AreaRequest, Constraint, Message, Role};
use llama_shm::internals::wire::layout::AREA_LEN;

/// Length of the header.
pub const AREA_HEADER_LEN: usize = 59;

/// ctrl bit: store the input's checksum word (almost always a mismatch), not the checksum
/// the sending side computes over exactly the words and bytes laid out.
pub const CTRL_RAW_CHECKSUM: u8 = 1 << 0;
/// ctrl bit: `area_used` / `result_len` is the input's word (else the payload's length).
pub const CTRL_RAW_USED: u8 = 1 << 1;
/// ctrl bit: `area_size` is the input's word (else [`AREA_LEN`], as a creator sets it).
pub const CTRL_RAW_SIZE: u8 = 1 << 2;
/// ctrl bit: after the checksum is stored, a peer XORs one byte of what it covers (a
/// scribble while the request or the result is in flight).
pub const CTRL_SCRIBBLE: u8 = 1 << 3;
/// ctrl bit: the payload is the bytes as they are, not a script for bytes of the right shape
/// (see the module docs).
pub const CTRL_RAW_BYTES: u8 = 1 << 4;
/// ctrl bit: the object maps only part of the area (an object cut short, a mapping of an
/// older size), however much `area_size` claims.
pub const CTRL_SHORT_AREA: u8 = 1 << 5;

/// A `request_area` input, decoded.
#[derive(Debug, Clone, Default)]
pub struct AreaInput<'a> {
    /// Option bits (`CTRL_*`).
    pub ctrl: u8,
    /// The sequence number.
    pub seq: u64,
    /// `request_kind`.
    pub kind: u32,
    /// `request_options` / `dropped_messages`.
    pub options: u32,
    /// `sample_seed` / the embeddings' dimension.
    pub sample_seed: u32,
    /// `request_flags` / `status`.
    pub flags: u32,
    /// `max_tokens`.
    pub max_tokens: u32,
    /// `deadline_us`.
    pub deadline_us: u64,
    /// The raw `area_used` / `result_len` word.
    pub used_word: u32,
    /// The raw `area_size` word.
    pub size_word: u32,
    /// The raw checksum word.
    pub checksum_word: u64,
    /// Where the scribble lands (mod the length of what it hits).
    pub scribble_at: u32,
    /// What the scribble XORs in.
    pub scribble_xor: u8,
    /// The area's first bytes.
    pub payload: &'a [u8],
}

impl<'a> AreaInput<'a> {
    /// Decodes fuzzer bytes (any length) as described in the module docs.
    pub fn parse(data: &'a [u8]) -> Self {
        let mut hdr = [0u8; AREA_HEADER_LEN];
        let n = data.len().min(AREA_HEADER_LEN);
        hdr[..n].copy_from_slice(&data[..n]);
        let u32_at = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(hdr[i..i + 8].try_into().expect("8 bytes"));
        let payload = &data[n..];
        Self {
            ctrl: hdr[0],
            seq: u64_at(1),
            kind: if hdr[9] & 0x80 == 0 {
                [KIND_CHAT, KIND_EMBED, KIND_COUNT, 0][usize::from(hdr[9] % 4)]
            } else {
                u32_at(10)
            },
            options: u32_at(14),
            sample_seed: u32_at(18),
            flags: u32_at(22),
            max_tokens: u32_at(26),
            deadline_us: u64_at(30),
            used_word: u32_at(38),
            size_word: u32_at(42),
            checksum_word: u64_at(46),
            scribble_at: u32_at(54),
            scribble_xor: hdr[58],
            payload: &payload[..payload.len().min(AREA_LEN)],
        }
    }

    /// Whether `bit` is set in `ctrl`.
    pub fn has(&self, bit: u8) -> bool {
        self.ctrl & bit != 0
    }

    /// The request area's bytes: the payload, or the records its script makes.
    pub fn area_bytes(&self) -> Vec<u8> {
        if self.has(CTRL_RAW_BYTES) {
            return self.payload.to_vec();
        }
        const TAGS: [u32; 8] = [1, 2, 3, 16, 17, 32, 0, 33];
        let mut out = Vec::new();
        let mut rest = self.payload;
        while let [sel, n, tail @ ..] = rest {
            let n = usize::from(*n).min(tail.len());
            let len = n + usize::from(sel & 0x40 != 0);
            out.extend_from_slice(&TAGS[usize::from(sel % 8)].to_le_bytes());
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(&tail[..n]);
            rest = &tail[n..];
        }
        out.truncate(AREA_LEN);
        out
    }

    /// The dimension of the embeddings in a result: 1 to 64.
    pub fn dim(&self) -> usize {
        1 + (self.sample_seed % 64) as usize
    }

    /// A result's bytes: embeddings of [`AreaInput::dim`] numbers each, as many whole vectors
    /// as the payload holds, whose `count` word is right, one more, or one less, by
    /// `options % 3` (with [`CTRL_RAW_BYTES`]: the payload).
    pub fn result_bytes(&self) -> Vec<u8> {
        if self.has(CTRL_RAW_BYTES) {
            return self.payload.to_vec();
        }
        let dim = self.dim();
        let count = (self.payload.len() - self.payload.len().min(8)) / 4 / dim;
        let count_word = match self.options % 3 {
            0 => count as u32,
            1 => (count as u32).wrapping_add(1),
            _ => (count as u32).wrapping_sub(1),
        };
        let mut out = Vec::with_capacity(8 + 4 * count * dim);
        out.extend_from_slice(&count_word.to_le_bytes());
        out.extend_from_slice(&(dim as u32).to_le_bytes());
        out.extend_from_slice(&self.payload[..4 * count * dim]);
        out
    }

    /// `area_used` (or `result_len`) as the input says it is sent: the word, or the length
    /// of `bytes`.
    pub fn used(&self, bytes: &[u8]) -> u32 {
        if self.has(CTRL_RAW_USED) {
            self.used_word
        } else {
            bytes.len() as u32
        }
    }

    /// `area_size` as the input says the object carries it.
    pub fn size(&self) -> u32 {
        if self.has(CTRL_RAW_SIZE) {
            self.size_word
        } else {
            AREA_LEN as u32
        }
    }

    /// How many bytes of the area the object maps.
    pub fn mapped_area(&self) -> usize {
        if self.has(CTRL_SHORT_AREA) {
            self.size_word as usize % (AREA_LEN + 1)
        } else {
            AREA_LEN
        }
    }

    /// The scribble for bytes of length `len`: where, and what it XORs in; `None` when it is
    /// off, would hit nothing, or changes nothing.
    pub fn scribble(&self, len: usize) -> Option<(usize, u8)> {
        (self.has(CTRL_SCRIBBLE) && len > 0 && self.scribble_xor != 0)
            .then(|| (self.scribble_at as usize % len, self.scribble_xor))
    }
}

// The wire's numbers, as the request area's definition gives them (`protocol/area.rs`,
// `wire/layout.rs`), written out so that a change of the wire shows here.
const KIND_CHAT: u32 = 1;
const KIND_EMBED: u32 = 2;
const KIND_COUNT: u32 = 3;

/// What a record is, by its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Message(Role),
    Schema,
    Grammar,
    Text,
}

fn class_of(tag: u32) -> Option<Class> {
    Some(match tag {
        1 => Class::Message(Role::System),
        2 => Class::Message(Role::User),
        3 => Class::Message(Role::Assistant),
        16 => Class::Schema,
        17 => Class::Grammar,
        32 => Class::Text,
        _ => return None,
    })
}

/// Where a record's class goes in the canonical order: messages, the constraint, texts.
fn rank(class: Class) -> u8 {
    match class {
        Class::Message(_) => 0,
        Class::Schema | Class::Grammar => 1,
        Class::Text => 2,
    }
}

/// Splits `bytes` into records `(tag, payload)`, exactly: `None` when a header or a payload
/// runs past the end.
pub fn split_records(bytes: &[u8]) -> Option<Vec<(u32, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 8 {
            return None;
        }
        let tag = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
        let body = &rest[8..];
        if len > body.len() {
            return None;
        }
        out.push((tag, &body[..len]));
        rest = &body[len..];
    }
    Some(out)
}

/// The record bytes of `records`, in the order given.
pub fn join_records(records: &[(u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, body) in records {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// What the oracle makes of a request area's bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum AreaVerdict {
    /// The worker must refuse them.
    Refused,
    /// The worker must take them as `request`, whose encoding is exactly these bytes.
    Taken {
        /// The request they carry.
        request: AreaRequest,
    },
}

/// The oracle's verdict on a request of `kind` whose area holds `bytes`: the records split
/// exactly, each tag known, each payload UTF-8 without NUL, at most one schema or grammar,
/// the records in the order `encode` writes them (messages, the constraint, texts), and what
/// the kind takes: a chat at least one message and no text; an embedding at least
/// one text and nothing else; a count no constraint and either one text or at least one
/// message, not both. Any other kind is refused.
pub fn area_verdict(kind: u32, bytes: &[u8]) -> AreaVerdict {
    let Some(records) = split_records(bytes) else {
        return AreaVerdict::Refused;
    };
    let mut classified = Vec::with_capacity(records.len());
    for &(tag, body) in &records {
        let (Some(class), Ok(text)) = (class_of(tag), std::str::from_utf8(body)) else {
            return AreaVerdict::Refused;
        };
        if text.contains('\0') {
            return AreaVerdict::Refused;
        }
        classified.push((class, tag, body, text));
    }
    let count = |f: fn(Class) -> bool| classified.iter().filter(|r| f(r.0)).count();
    let messages = count(|c| matches!(c, Class::Message(_)));
    let constraints = count(|c| matches!(c, Class::Schema | Class::Grammar));
    let texts = count(|c| c == Class::Text);
    let shape_ok = constraints <= 1
        && match kind {
            KIND_CHAT => messages >= 1 && texts == 0,
            KIND_EMBED => messages == 0 && constraints == 0 && texts >= 1,
            KIND_COUNT => {
                constraints == 0 && ((messages >= 1 && texts == 0) || (messages == 0 && texts == 1))
            }
            _ => false,
        };
    if !shape_ok {
        return AreaVerdict::Refused;
    }
    let mut request = AreaRequest::default();
    for &(class, _, _, text) in &classified {
        match class {
            Class::Message(role) => request.messages.push(Message::new(role, text)),
            Class::Schema => request.constraint = Some(Constraint::JsonSchema(text.to_owned())),
            Class::Grammar => request.constraint = Some(Constraint::Grammar(text.to_owned())),
            Class::Text => request.texts.push(text.to_owned()),
        }
    }
    let mut sorted = classified.clone();
    sorted.sort_by_key(|r| rank(r.0)); // stable: the order within a class stays
    let reordered = sorted
        .iter()
        .zip(&classified)
        .any(|(a, b)| a.1 != b.1 || a.2 != b.2);
    if reordered {
        // The decoder takes records in one order only, the one `encode` writes.
        return AreaVerdict::Refused;
    }
    AreaVerdict::Taken { request }
}

/// An embeddings result as the oracle reads it: `count: u32 | dim: u32 | count × dim f32`
/// (LE), both non-zero and the length exactly theirs. Returns `(count, dim)`.
pub fn embeddings_shape(bytes: &[u8]) -> Option<(usize, usize)> {
    if bytes.len() < 8 {
        return None;
    }
    let count = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    let dim = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    // u128: count × dim × 4 of two u32s cannot overflow it.
    let body = u128::from(count) * u128::from(dim) * 4;
    (count != 0 && dim != 0 && body == (bytes.len() - 8) as u128).then_some((count as usize, dim as usize))
}

/// A valid request built from fuzzer bytes, for the round trips: records read as `class: u8 |
/// len: u8 | len bytes` (the text lossily decoded, NULs turned into spaces); a class past
/// the five is a text; a second constraint is dropped.
pub fn generated_request(bytes: &[u8]) -> AreaRequest {
    let mut request = AreaRequest::default();
    let mut rest = bytes;
    while let [class, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let text = String::from_utf8_lossy(&tail[..n]).replace('\0', " ");
        rest = &tail[n..];
        match class % 6 {
            0 => request.messages.push(Message::system(text)),
            1 => request.messages.push(Message::user(text)),
            2 => request.messages.push(Message::assistant(text)),
            3 if request.constraint.is_none() => request.constraint = Some(Constraint::JsonSchema(text)),
            4 if request.constraint.is_none() => request.constraint = Some(Constraint::Grammar(text)),
            3 | 4 => {}
            _ => request.texts.push(text),
        }
    }
    request
}
