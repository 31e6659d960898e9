//! The checksums that let each side see whether the bytes it reads are the bytes the other
//! side wrote (xxh3-64 over the fields, in wire order).

use xxhash_rust::xxh3::Xxh3;

use super::messages::RequestParams;
use crate::wire::layout::TOKEN_LEN;

/// Checksum of a request as the client wrote it: sequence number, token, shutdown byte and,
/// for a request (shutdown byte 0), its parameters and both prompts' payloads. The worker
/// recomputes it over its private copies; a mismatch means the bytes changed in shared memory.
pub fn request_checksum(
    seq: u64,
    token: &[u8; TOKEN_LEN],
    shutdown: u8,
    params: RequestParams,
    system: &[u8],
    user: &[u8],
) -> u64 {
    request_checksum_with_area(seq, token, shutdown, params, system, user, &[])
}

/// [`request_checksum`] of a request that also uses the request area: with
/// [`RequestParams::extended_words`] the kind, options, seed and the area's bytes are covered
/// after the prompts (without, the checksum is the one older clients compute).
pub fn request_checksum_with_area(
    seq: u64,
    token: &[u8; TOKEN_LEN],
    shutdown: u8,
    params: RequestParams,
    system: &[u8],
    user: &[u8],
    area: &[u8],
) -> u64 {
    let mut h = request_hasher(seq, token, shutdown, params);
    if shutdown == 0 {
        for field in [system, user] {
            h.update(&(field.len() as u64).to_le_bytes());
            h.update(field);
        }
        area_hash_into(&mut h, params, area);
    }
    h.digest()
}

/// What the request checksum covers of an area request, after the prompts.
pub(super) fn area_hash_into(h: &mut Xxh3, params: RequestParams, area: &[u8]) {
    if params.extended_words() {
        h.update(&params.kind.to_le_bytes());
        h.update(&params.options.to_le_bytes());
        h.update(&params.sample_seed.to_le_bytes());
        h.update(&(area.len() as u64).to_le_bytes());
        h.update(area);
    }
}

pub(super) fn request_hasher(seq: u64, token: &[u8; TOKEN_LEN], shutdown: u8, params: RequestParams) -> Xxh3 {
    let mut h = Xxh3::new();
    h.update(&seq.to_le_bytes());
    h.update(token);
    h.update(&[shutdown]);
    if shutdown == 0 {
        h.update(&params.flags.to_le_bytes());
        h.update(&params.max_tokens.to_le_bytes());
        h.update(&params.deadline_us.to_le_bytes());
    }
    h
}

/// The hash of an answer's bytes that [`response_checksum`] covers (xxh3-64; streamed answers
/// are hashed incrementally with the same result).
pub fn text_hash(text: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text)
}

/// What a response says beside its text, as the words of the extension page hold it: covered
/// by [`response_checksum`], so that a scribbler can neither turn a `Deadline`, `Length` or
/// `Cancelled` answer into a `Stop` one (a partial answer passing as complete) nor change the
/// usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseMeta {
    /// `finish_reason`.
    pub finish: u32,
    /// `prompt_tokens`.
    pub prompt_tokens: u32,
    /// `generated_tokens`.
    pub generated_tokens: u32,
    /// `prompt_us`.
    pub prompt_us: u64,
    /// `generation_us`.
    pub generation_us: u64,
    /// `cached_tokens`.
    pub cached_tokens: u32,
    /// `dropped_messages`.
    pub dropped_messages: u32,
    /// `result_len`.
    pub result_len: u32,
    /// xxh3-64 of the result's bytes in the request area (0 when there is none).
    pub result_hash: u64,
}

/// Checksum of a response: sequence number, status, flags, the answer's length and
/// [`text_hash`], the error text and its arguments, the finish reason and the usage. The
/// client recomputes it over what it received.
#[allow(clippy::too_many_arguments)] // The fields of the wire, in their order.
pub fn response_checksum(
    seq: u64,
    status: u32,
    flags: u32,
    text_len: u64,
    text_hash: u64,
    error: &[u8],
    args: (u64, u64),
    meta: &ResponseMeta,
) -> u64 {
    let mut h = Xxh3::new();
    h.update(&seq.to_le_bytes());
    h.update(&status.to_le_bytes());
    h.update(&flags.to_le_bytes());
    h.update(&text_len.to_le_bytes());
    h.update(&text_hash.to_le_bytes());
    h.update(&(error.len() as u64).to_le_bytes());
    h.update(error);
    h.update(&args.0.to_le_bytes());
    h.update(&args.1.to_le_bytes());
    h.update(&meta.finish.to_le_bytes());
    h.update(&meta.prompt_tokens.to_le_bytes());
    h.update(&meta.generated_tokens.to_le_bytes());
    h.update(&meta.prompt_us.to_le_bytes());
    h.update(&meta.generation_us.to_le_bytes());
    h.update(&meta.cached_tokens.to_le_bytes());
    // Only answers to area requests have these: older answers keep their checksum.
    if meta.dropped_messages != 0 || meta.result_len != 0 {
        h.update(&meta.dropped_messages.to_le_bytes());
        h.update(&meta.result_len.to_le_bytes());
        h.update(&meta.result_hash.to_le_bytes());
    }
    h.digest()
}
