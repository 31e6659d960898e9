//! The request area through the real worker and client paths, on a region that holds the
//! area (`MemRegion::with_area`): requests whose kind, options, seed, length words, checksum
//! and records the fuzzer chooses go through `Channel::worker_take`; results it chooses go
//! through `Channel::client_await` and `Embeddings::decode`. Never a panic, and:
//!
//! - a request is taken (`Incoming::Request`, its records decoded) only when its checksum is
//!   the one a client computes over exactly those words and bytes, and the records are what
//!   an std-only oracle (`llama_shm_fuzz::area`) accepts for the kind; the decoded request is
//!   the oracle's, and encoding it gives the bytes back (in canonical order: see
//!   `AreaVerdict`); anything else is a typed `BadRequest` refusal;
//! - `area_used` past the area — past what the object really maps of it, whatever the
//!   peer-writable `area_size` word says — is refused before a byte of the area is read, and
//!   otherwise exactly `area_used` bytes are read; `worker_take` writes nothing;
//! - a request written by `client_write` is taken as written, and one byte scribbled over its
//!   area after the checksum makes it a checksum refusal;
//! - a result reads back as intact only when the response checksum covers exactly its bytes;
//!   `Embeddings::decode` accepts exactly the results the oracle calls well-formed, and
//!   encoding them gives the bytes back; a result written by `worker_respond` reads back as
//!   written, and a scribbled one as not intact.
//!
//! Input: see `llama_shm_fuzz::area`. With the `planted-bug` feature, a record decoder that
//! forgets the NUL check is checked too: ci/fuzz.sh requires the fuzzer to find it.
#![no_main]

use std::cell::Cell;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use llama_shm::internals::protocol::mem::{MemRegion, NoopSemaphore};
use llama_shm::internals::protocol::{
    request_checksum_with_area, response_checksum, text_hash, AreaError, AreaRequest, Channel, Embeddings,
    Incoming, Outcome, PreparedRequest, Prompts, Region, RequestParams, ResponseMeta,
};
use llama_shm::internals::wire::layout::{
    Field, ObjectKind, Word32, Word64, AREA_LEN, AREA_OFFSET, TOKEN_LEN,
};
use llama_shm::internals::wire::status::{Finish, StatusCode};
use llama_shm::internals::wire::text::Policy;
use llama_shm_fuzz::area::{
    area_verdict, embeddings_shape, generated_request, AreaInput, AreaVerdict, CTRL_RAW_CHECKSUM,
};

/// A [`MemRegion`] that records how far into the request area anything was read.
struct Tracked {
    inner: MemRegion,
    /// Reads of the request area so far.
    area_reads: Cell<usize>,
    /// The furthest byte of the area any read reached (its end offset).
    area_end: Cell<usize>,
}

impl Tracked {
    fn new(inner: MemRegion) -> Self {
        Self {
            inner,
            area_reads: Cell::new(0),
            area_end: Cell::new(0),
        }
    }
}

impl Region for Tracked {
    fn kind(&self) -> ObjectKind {
        self.inner.kind()
    }
    fn read(&self, field: Field, at: usize, dst: &mut [u8]) {
        if field == Field::RequestArea {
            self.area_reads.set(self.area_reads.get() + 1);
            let end = at.saturating_add(dst.len());
            self.area_end.set(self.area_end.get().max(end));
        }
        self.inner.read(field, at, dst)
    }
    fn write(&self, field: Field, at: usize, src: &[u8]) {
        self.inner.write(field, at, src)
    }
    fn fill(&self, field: Field, at: usize, len: usize, byte: u8) {
        self.inner.fill(field, at, len, byte)
    }
    fn load32(&self, word: Word32) -> u32 {
        self.inner.load32(word)
    }
    fn store32(&self, word: Word32, value: u32) {
        self.inner.store32(word, value)
    }
    fn load64(&self, word: Word64) -> u64 {
        self.inner.load64(word)
    }
    fn store64(&self, word: Word64, value: u64) {
        self.inner.store64(word, value)
    }
    fn area_len(&self) -> usize {
        self.inner.area_len()
    }
}

type AreaChannel = Channel<NoopSemaphore, Tracked>;

/// A channel over an object with the request area as a creator makes it, of which only the
/// first `mapped` bytes are there (all [`AREA_LEN`] of them, but for an object cut short).
fn channel(mapped: usize) -> AreaChannel {
    let mut region = MemRegion::with_area(0);
    if mapped < AREA_LEN {
        let mut bytes = region.into_bytes();
        bytes.truncate(AREA_OFFSET + mapped);
        region = MemRegion::from_exact_bytes(&bytes, ObjectKind::Extended);
    }
    assert_eq!(region.area_len(), mapped);
    Channel::new(NoopSemaphore, NoopSemaphore, NoopSemaphore, Tracked::new(region))
}

fn take(ch: &AreaChannel) -> Incoming {
    let mut system = String::from("stale system prompt");
    let mut user = String::from("stale user prompt");
    let mut scratch = Box::new([0xEEu8; 4096]);
    let incoming = ch.worker_take(None, &mut system, &mut user, &mut scratch);
    if let Incoming::Request { .. } = incoming {
        // Both prompts are empty in these requests, whatever their kind.
        assert_eq!((system.as_str(), user.as_str()), ("", ""));
    }
    incoming
}

fn params_of(input: &AreaInput<'_>) -> RequestParams {
    RequestParams {
        flags: input.flags,
        max_tokens: input.max_tokens,
        deadline_us: input.deadline_us,
        seed_stream: false,
        kind: input.kind,
        options: input.options,
        sample_seed: input.sample_seed,
    }
}

/// Checks a decoded area request against the oracle's verdict on the bytes it came from.
fn check_taken(kind: u32, bytes: &[u8], got: &AreaRequest) {
    for text in got
        .messages
        .iter()
        .map(|m| &m.content)
        .chain(&got.texts)
        .chain(got.constraint.iter().map(|c| match c {
            llama_shm::internals::protocol::Constraint::JsonSchema(s)
            | llama_shm::internals::protocol::Constraint::Grammar(s) => s,
        }))
    {
        assert!(!text.contains('\0'), "decoded area text holds a NUL");
    }
    match area_verdict(kind, bytes) {
        AreaVerdict::Refused => panic!("kind {kind}: decoded records the oracle refuses: {got:?}"),
        AreaVerdict::Taken { request } => {
            assert_eq!(*got, request, "kind {kind}: decoded otherwise than the oracle");
            let encoded = got.encode(AREA_LEN).expect("a decoded request fits the area");
            assert_eq!(got.encoded_len(), bytes.len());
            assert!(encoded == bytes, "decode is not the inverse of encode");
        }
    }
}

/// What a refusal of an area request's records may say (the decoder's own error, checked
/// against where it points).
fn check_refused_records(kind: u32, bytes: &[u8]) {
    let verdict = area_verdict(kind, bytes);
    match AreaRequest::decode(kind, bytes) {
        Ok(got) => panic!("kind {kind}: the worker refused records that decode: {got:?}"),
        Err(e) => {
            if let AreaVerdict::Taken { .. } = verdict {
                panic!("kind {kind}: refused ({e}) what the oracle takes");
            }
            match e {
                AreaError::Truncated { at } | AreaError::UnknownTag { at, .. } => assert!(at < bytes.len()),
                AreaError::BadText { record } => assert!(record < bytes.len() / 8),
                AreaError::UnknownKind(k) => assert_eq!(k, kind),
                AreaError::Shape(_) => {}
                AreaError::TooLarge { .. } => panic!("decode said {e}"),
            }
        }
    }
}

/// The planted defect: a record decoder that checks UTF-8 but forgets the NUL check. It
/// takes what the oracle takes of conversations (a chat, or a count of one), NULs aside.
#[cfg(feature = "planted-bug")]
fn planted_decode(kind: u32, bytes: &[u8]) -> Option<AreaRequest> {
    use llama_shm::internals::protocol::Message;
    let mut req = AreaRequest::default();
    for (tag, body) in llama_shm_fuzz::area::split_records(bytes)? {
        let text = std::str::from_utf8(body).ok()?.to_owned();
        match tag {
            1 => req.messages.push(Message::system(text)),
            2 => req.messages.push(Message::user(text)),
            3 => req.messages.push(Message::assistant(text)),
            _ => return None,
        }
    }
    ((kind == 1 || kind == 3) && !req.messages.is_empty()).then_some(req)
}

/// A request laid out by a (possibly hostile) client: the input's words and bytes as they
/// are, through `worker_take`.
fn untrusted_request(input: &AreaInput<'_>) {
    let ch = channel(input.mapped_area());
    let r = &ch.region;
    let params = params_of(input);
    let bytes = input.area_bytes();
    let (used, size) = (input.used(&bytes) as usize, input.size() as usize);
    // (As much of it as the object maps.)
    r.inner
        .write(Field::RequestArea, 0, &bytes[..bytes.len().min(r.area_len())]);
    r.store32(Word32::RequestFlags, params.flags);
    r.store32(Word32::MaxTokens, params.max_tokens);
    r.store64(Word64::DeadlineMicros, params.deadline_us);
    r.store32(Word32::RequestKind, params.kind);
    r.store32(Word32::RequestOptions, params.options);
    r.store32(Word32::SampleSeed, params.sample_seed);
    r.store32(Word32::AreaUsed, used as u32);
    r.store32(Word32::AreaSize, size as u32);
    r.store64(Word64::RequestSeq, input.seq);

    // What the worker may read of the area: nothing for two prompts; up to `area_used`,
    // which must lie within what the object maps of the area (`area_size` is the peer's
    // word: it bounds nothing).
    let cap = input.mapped_area().min(AREA_LEN);
    let area_request = input.seq != 0 && params.kind != 0;
    let out_of_bounds = area_request && (cap == 0 || used > cap);
    let mut area = vec![0u8; if area_request && !out_of_bounds { used } else { 0 }];
    r.inner.read(Field::RequestArea, 0, &mut area);
    // What a client computes: the area is covered for a request that uses it (a client sends
    // `area_used` 0 with two prompts).
    let client_check = request_checksum_with_area(input.seq, &[0; TOKEN_LEN], 0, params, b"", b"", &area);
    let stored = if input.has(CTRL_RAW_CHECKSUM) {
        input.checksum_word
    } else {
        client_check
    };
    r.store64(Word64::RequestChecksum, stored);
    if let Some((at, xor)) = input.scribble(area.len()) {
        area[at] ^= xor;
        r.inner.write(Field::RequestArea, at, &area[at..=at]);
    }
    let intact = input.seq == 0
        || stored == request_checksum_with_area(input.seq, &[0; TOKEN_LEN], 0, params, b"", b"", &area);
    let before = r.inner.to_bytes();
    r.area_reads.set(0);

    let incoming = take(&ch);
    let (reads, end) = (ch.region.area_reads.get(), ch.region.area_end.get());
    // Only the bytes the request uses are read (and nothing for two prompts or a refused
    // length); nothing is written.
    if area.is_empty() {
        assert!(reads == 0 || end == 0, "area read for {incoming:?}");
    } else {
        assert_eq!((reads, end), (1, used), "area reads");
    }
    assert!(
        ch.region.inner.into_bytes() == before,
        "worker_take changed the region"
    );

    match incoming {
        Incoming::Request {
            seq,
            system,
            user,
            params: got,
            area: decoded,
        } => {
            assert_eq!(seq, input.seq);
            assert!(!system.any() && !user.any());
            assert!(intact && !out_of_bounds, "took a request that is not intact");
            if input.seq == 0 {
                // A seed-mode client: none of the extension page's words count.
                assert_eq!((got, &decoded), (RequestParams::default(), &None));
                return;
            }
            assert_eq!(got, params);
            match decoded {
                None => assert_eq!(params.kind, 0),
                Some(a) => {
                    assert_ne!(params.kind, 0);
                    check_taken(params.kind, &area, &a);
                }
            }
        }
        Incoming::Refused {
            seq,
            status,
            message,
            seed_stream,
        } => {
            assert_eq!(
                (seq, status, seed_stream),
                (input.seq, StatusCode::BadRequest, false)
            );
            assert!(!message.is_empty());
            assert_ne!(input.seq, 0, "a seed-mode request refused: {message}");
            if out_of_bounds {
                return;
            }
            if !intact {
                assert!(message.contains("checksum"), "{message}");
                return;
            }
            // Intact, in bounds: the records themselves are refused.
            assert_ne!(
                params.kind, 0,
                "an intact request of two prompts refused: {message}"
            );
            assert!(!message.contains("checksum"), "{message}");
            check_refused_records(params.kind, &area);
        }
        Incoming::Shutdown => panic!("a request with shutdown byte 0 taken as a shutdown"),
    }

    #[cfg(feature = "planted-bug")]
    if intact && !out_of_bounds && params.kind != 0 {
        if let Some(a) = planted_decode(params.kind, &area) {
            check_taken(params.kind, &area, &a);
        }
    }
}

/// A valid request written by `client_write` must be taken as written; a byte scribbled over
/// its area after the checksum, refused as corrupt.
fn request_round_trip(input: &AreaInput<'_>) {
    let ch = channel(AREA_LEN);
    let request = generated_request(input.payload);
    let params = params_of(input);
    // Two prompts carry no area.
    let bytes = match params.kind {
        0 => Vec::new(),
        // (Only inputs far longer than CI's can make more than the area holds.)
        _ => match request.encode(AREA_LEN) {
            Ok(bytes) => bytes,
            Err(_) => return,
        },
    };
    let seq = input.seq.max(1);
    let mut req = PreparedRequest::encode(Prompts::default(), Policy::Strict).unwrap();
    req.seq = seq;
    req.params = params;
    req.area = &bytes;
    ch.worker_ready().unwrap();
    ch.client_write(&req).unwrap();
    assert_eq!(ch.region.load32(Word32::AreaUsed) as usize, bytes.len());
    let scribble = input.scribble(bytes.len());
    if let Some((at, xor)) = scribble {
        ch.region.inner.write(Field::RequestArea, at, &[bytes[at] ^ xor]);
    }
    match take(&ch) {
        Incoming::Request {
            seq: got_seq,
            params: got,
            area,
            ..
        } => {
            assert!(scribble.is_none(), "a scribbled area was taken");
            assert_eq!((got_seq, got), (seq, params));
            match area {
                None => assert_eq!(params.kind, 0),
                Some(a) => {
                    assert_eq!(a, request);
                    assert!(a.encode(AREA_LEN).unwrap() == bytes);
                }
            }
        }
        Incoming::Refused { status, message, .. } => {
            assert_eq!(status, StatusCode::BadRequest);
            if scribble.is_some() {
                assert!(message.contains("checksum"), "{message}");
            } else {
                assert_eq!(
                    area_verdict(params.kind, &bytes),
                    AreaVerdict::Refused,
                    "refused a valid request: {message}"
                );
            }
        }
        Incoming::Shutdown => panic!("taken as a shutdown"),
    }
}

/// The response's checksum over a result of `result` (and no text, no error).
fn result_checksum(seq: u64, status: u32, dropped: u32, result_len: u32, result: &[u8]) -> u64 {
    let meta = ResponseMeta {
        dropped_messages: dropped,
        result_len,
        result_hash: if result_len != 0 { text_hash(result) } else { 0 },
        ..ResponseMeta::default()
    };
    response_checksum(seq, status, 0, 0, text_hash(&[]), &[], (0, 0), &meta)
}

/// Checks what a client does with a result: `Embeddings::decode` against the oracle.
fn check_embeddings(bytes: &[u8]) {
    match (Embeddings::decode(bytes), embeddings_shape(bytes)) {
        (Ok(e), Some((count, dim))) => {
            assert_eq!((e.count(), e.dim), (count, dim));
            assert!(e.encode() == bytes, "decode is not the inverse of encode");
            assert!(e.vector(count - 1).is_some() && e.vector(count).is_none());
        }
        (Err(_), None) => {}
        (got, want) => panic!("Embeddings::decode gave {got:?}, the oracle {want:?}"),
    }
}

/// A response laid out by a (possibly hostile) worker: its result words and bytes as the
/// input says, through `client_await`.
fn untrusted_result(input: &AreaInput<'_>) {
    let ch = channel(AREA_LEN);
    let r = &ch.region;
    let seq = input.seq;
    let bytes = input.result_bytes();
    let result_len = input.used(&bytes);
    r.inner.write(Field::RequestArea, 0, &bytes);
    let mut result = vec![0u8; (result_len as usize).min(AREA_LEN)];
    r.inner.read(Field::RequestArea, 0, &mut result);
    let check = result_checksum(seq, input.flags, input.options, result_len, &result);
    let stored = if input.has(CTRL_RAW_CHECKSUM) {
        input.checksum_word
    } else {
        check
    };
    if let Some((at, xor)) = input.scribble(result.len()) {
        result[at] ^= xor;
        r.inner.write(Field::RequestArea, at, &result[at..=at]);
    }
    let intact = stored == result_checksum(seq, input.flags, input.options, result_len, &result);
    r.store32(Word32::Status, input.flags);
    r.store32(Word32::DroppedMessages, input.options);
    r.store32(Word32::ResultLen, result_len);
    r.store64(Word64::ResponseChecksum, stored);
    // No text: the ring is another request's.
    r.store64(Word64::StreamSeq, !seq);
    r.store64(Word64::ResponseSeq, seq);
    r.area_reads.set(0);
    let resp = ch
        .client_await(seq, None, Duration::from_millis(1), &|| true)
        .expect("the response names the request");
    // The result is copied once, bounded by the area.
    let (reads, end) = (ch.region.area_reads.get(), ch.region.area_end.get());
    if result_len == 0 {
        assert_eq!(reads, 0);
    } else {
        assert_eq!((reads, end), (1, result.len()));
    }
    assert_eq!(resp.intact, intact, "result_len {result_len}");
    assert!(resp.result == result, "the result is not the area's bytes");
    assert_eq!(resp.dropped_messages, input.options);
    assert_eq!(resp.status, StatusCode::from_u32(input.flags));
    check_embeddings(&resp.result);
}

/// Embeddings written by `worker_respond` read back as written, bit for bit; one byte
/// scribbled over them, as not intact.
fn result_round_trip(input: &AreaInput<'_>) {
    let dim = input.dim();
    let numbers = input.payload.len() / 4 / dim * dim;
    if numbers == 0 {
        return;
    }
    let values: Vec<f32> = input.payload[..4 * numbers]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let sent = Embeddings { dim, values }.encode();
    if sent.len() > AREA_LEN {
        return;
    }
    let ch = channel(AREA_LEN);
    let seq = input.seq.max(1);
    let mut outcome = Outcome::error(StatusCode::Ok, "");
    outcome.finish = Finish::Stop;
    outcome.dropped_messages = input.options;
    outcome.result = &sent;
    ch.worker_respond(seq, &outcome).unwrap();
    let scribble = input.scribble(sent.len());
    if let Some((at, xor)) = scribble {
        ch.region.inner.write(Field::RequestArea, at, &[sent[at] ^ xor]);
    }
    let resp = ch
        .client_await(seq, None, Duration::from_millis(1), &|| true)
        .unwrap();
    assert_eq!(resp.intact, scribble.is_none(), "scribble {scribble:?}");
    assert_eq!(resp.result.len(), sent.len());
    if scribble.is_none() {
        assert!(resp.result == sent);
        let got = Embeddings::decode(&resp.result).expect("the worker's result decodes");
        assert_eq!((got.dim, got.count()), (dim, numbers / dim));
        assert!(got.encode() == sent, "not bit for bit");
    }
    check_embeddings(&resp.result);
}

fuzz_target!(|data: &[u8]| {
    let input = AreaInput::parse(data);
    untrusted_request(&input);
    request_round_trip(&input);
    untrusted_result(&input);
    result_round_trip(&input);
});
