//! Reading an untrusted region: every field through `text::decode`, every word,
//! `ObjectKind::classify`, and the response as the client reads it (`client_await`), on the
//! same bytes as an extended and as a seed region. Must never panic.
//!
//! Then a round trip on the same junk-filled region: what `worker_respond` writes,
//! `client_await` must read back as written.
//!
//! Input: see the crate docs. `ctrl` bit 0 makes the client wait for the `response_seq`
//! found in the region (so the extended response is read); otherwise it waits for `seq`.
//! Bit 5 stores the response checksum that matches the junk (so it reads as intact).
#![no_main]

use std::cell::Cell;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use llama_shm::internals::protocol::mem::{MemRegion, NoopSemaphore};
use llama_shm::internals::protocol::{
    response_checksum, text_hash, Channel, Outcome, Region, ResponseMeta, Usage, WaitError,
};
use llama_shm::internals::wire::layout::{
    ClassifyError, Field, ObjectKind, Word32, Word64, AREA_LEN, ERROR_MESSAGE_LEN, EXT_MAGIC, EXT_VERSION,
    OBJECT_SIZE, RESPONSE_LEN, RESPONSE_TRUNCATED, SEED_SIZE,
};
use llama_shm::internals::wire::status::{Finish, StatusCode};
use llama_shm::internals::wire::text;
use llama_shm_fuzz::{check_decoded, kept_prefix, RegionInput};

fn ne32(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

fn ne64(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}

/// Whether `bytes` are all zero, compared a page at a time (`memcmp`): the request area,
/// absent from these regions, is 1 MiB, and a per-byte loop over it would be instrumented
/// and cost most of the fuzzer's time.
fn all_zero(bytes: &[u8]) -> bool {
    static ZERO_PAGE: [u8; 4096] = [0; 4096];
    bytes.chunks(ZERO_PAGE.len()).all(|c| c == &ZERO_PAGE[..c.len()])
}

fn check_kind(input: &RegionInput, kind: ObjectKind) {
    let region = MemRegion::from_bytes(&input.bytes, kind);
    let extended = kind == ObjectKind::Extended;
    let raw = region.to_bytes();

    for field in Field::ALL {
        let span = field.span();
        let mut buf = vec![0xEEu8; span.len];
        region.read(field, 0, &mut buf);
        let present = span.offset + span.len <= raw.len();
        if present {
            assert_eq!(buf, input.field(field));
        } else {
            assert!(all_zero(&buf), "{field:?} is absent from this region");
        }
        let dec = text::decode(&buf);
        check_decoded(&buf, &dec.text, dec.flags);
        // decode_into runs the same per-byte code whatever the size: on the 32 KiB response
        // it would only halve the exec rate.
        if span.len <= 4096 {
            let mut out = String::from("stale");
            assert_eq!(text::decode_into(&buf, &mut out), dec.flags);
            assert_eq!(out, dec.text);
        }
        // A read at an offset chosen by the input: in the field, or clamped to zeros.
        let at = (input.seq as usize) % (span.len + 8);
        let n = ((input.seq >> 32) as usize) % 80;
        let mut part = vec![0xEEu8; n];
        region.read(field, at, &mut part);
        if present && at + n <= span.len {
            assert_eq!(part, &buf[at..at + n]);
        } else {
            assert!(part.iter().all(|&b| b == 0));
        }
    }
    for &w in Word32::ALL {
        let want = if extended {
            ne32(&input.bytes, w.offset())
        } else {
            0
        };
        assert_eq!(region.load32(w), want, "{w:?}");
    }
    for &w in Word64::ALL {
        let want = if extended {
            ne64(&input.bytes, w.offset())
        } else {
            0
        };
        assert_eq!(region.load64(w), want, "{w:?}");
    }

    let mut magic = [0u8; 8];
    region.read(Field::Magic, 0, &mut magic);
    let version = region.load32(Word32::Version);
    let odd_size = input.seq >> 48;
    for size in [raw.len() as u64, odd_size, SEED_SIZE as u64 - 1, u64::MAX] {
        match ObjectKind::classify(size, Some(magic), version) {
            Ok(ObjectKind::Extended) => {
                assert!(size >= OBJECT_SIZE as u64 && magic == EXT_MAGIC && version == EXT_VERSION)
            }
            Ok(ObjectKind::Seed) => {
                assert!(size >= SEED_SIZE as u64 && (size < OBJECT_SIZE as u64 || magic != EXT_MAGIC))
            }
            Err(ClassifyError::TooSmall { size: s }) => assert!(s == size && size < SEED_SIZE as u64),
            Err(ClassifyError::UnsupportedVersion { found }) => {
                assert!(
                    size >= OBJECT_SIZE as u64
                        && magic == EXT_MAGIC
                        && found == version
                        && found != EXT_VERSION
                )
            }
        }
        assert!(matches!(
            ObjectKind::classify(size, None, version),
            Ok(ObjectKind::Seed) | Err(ClassifyError::TooSmall { .. })
        ));
    }

    // The client's read, on NoopSemaphores: the first liveness check says alive, later ones
    // say dead, so a stale response ends the wait instead of spinning.
    let response_seq = region.load64(Word64::ResponseSeq);
    let seq = if input.ctrl & 1 != 0 {
        response_seq
    } else {
        input.seq
    };
    // What the client reads in extended mode: the ring's bytes [0, stream_written) when
    // `stream_seq` names the request (more than the ring holds is garbled), else nothing.
    let ours = ne64(&input.bytes, Word64::StreamSeq.offset()) == seq;
    let written = ne64(&input.bytes, Word64::StreamWritten.offset());
    let garbled = ours && written > RESPONSE_LEN as u64;
    let field: &[u8] = if ours && !garbled {
        &input.field(Field::Response)[..written as usize]
    } else {
        &[]
    };
    let elen = (ne32(&input.bytes, Word32::ErrorLen.offset()) as usize).min(ERROR_MESSAGE_LEN - 1);
    let efield = &input.field(Field::ErrorMessage)[..elen];
    let args = (
        ne64(&input.bytes, Word64::ErrorArg0.offset()),
        ne64(&input.bytes, Word64::ErrorArg1.offset()),
    );
    // The result the client copies out of the request area: as far as `result_len` says,
    // bounded by the area. These regions have none (they are `OBJECT_SIZE` bytes): it reads
    // as zeros. (Results in a real area: the `request_area` target.)
    let result_len = ne32(&input.bytes, Word32::ResultLen.offset());
    let result = if extended {
        vec![0u8; (result_len as usize).min(AREA_LEN)]
    } else {
        Vec::new()
    };
    // What the response's checksum covers: seq, status, flags, the answer's length and hash,
    // the error's bytes as far as its length says, the error's numbers, the finish reason,
    // the usage words and, for answers to area requests, the dropped messages and the result.
    let meta = ResponseMeta {
        finish: ne32(&input.bytes, Word32::FinishReason.offset()),
        prompt_tokens: ne32(&input.bytes, Word32::PromptTokens.offset()),
        generated_tokens: ne32(&input.bytes, Word32::GeneratedTokens.offset()),
        prompt_us: ne64(&input.bytes, Word64::PromptMicros.offset()),
        generation_us: ne64(&input.bytes, Word64::GenerationMicros.offset()),
        cached_tokens: ne32(&input.bytes, Word32::CachedTokens.offset()),
        dropped_messages: ne32(&input.bytes, Word32::DroppedMessages.offset()),
        result_len,
        result_hash: if result_len != 0 { text_hash(&result) } else { 0 },
    };
    let check = response_checksum(
        seq,
        ne32(&input.bytes, Word32::Status.offset()),
        ne32(&input.bytes, Word32::ResponseFlags.offset()),
        field.len() as u64,
        text_hash(field),
        efield,
        args,
        &meta,
    );
    if input.ctrl & 32 != 0 {
        region.store64(Word64::ResponseChecksum, check);
    }
    let intact = region.load64(Word64::ResponseChecksum) == check
        && u64::from(ne32(&input.bytes, Word32::ResponseLen.offset())) == field.len() as u64;
    let ch = Channel::new(NoopSemaphore, NoopSemaphore, NoopSemaphore, region);
    let calls = Cell::new(0u32);
    let alive = || {
        calls.set(calls.get() + 1);
        calls.get() == 1
    };
    match ch.client_await(seq, None, Duration::from_millis(1), &alive) {
        Err(WaitError::Garbled(_)) => assert!(extended && garbled),
        Ok(resp) => {
            assert!(!resp.text.contains('\0') && !resp.error.contains('\0'));
            if extended {
                assert_eq!(seq, response_seq);
                assert!(!garbled);
                assert_eq!(resp.intact, intact);
                let kept = check_decoded(field, &resp.text, resp.decode.with_missing_nul(field));
                assert!(kept < RESPONSE_LEN);
                if !resp.decode.replaced_invalid {
                    assert!(
                        resp.text.len() < RESPONSE_LEN,
                        "response text is {} bytes",
                        resp.text.len()
                    );
                }
                let edec = text::decode(efield);
                assert_eq!(resp.error, edec.text);
                check_decoded(efield, &resp.error, edec.flags);
                assert_eq!(
                    resp.status,
                    StatusCode::from_u32(ne32(&input.bytes, Word32::Status.offset()))
                );
                assert_eq!(resp.flags, ne32(&input.bytes, Word32::ResponseFlags.offset()));
                assert_eq!(
                    resp.error_args,
                    (
                        ne64(&input.bytes, Word64::ErrorArg0.offset()),
                        ne64(&input.bytes, Word64::ErrorArg1.offset())
                    )
                );
                assert_eq!(
                    resp.usage.prompt_tokens,
                    ne32(&input.bytes, Word32::PromptTokens.offset())
                );
                assert_eq!(
                    resp.usage.prompt_time.as_micros(),
                    u128::from(ne64(&input.bytes, Word64::PromptMicros.offset()))
                );
                assert_eq!(
                    resp.finish,
                    Finish::from_u32(ne32(&input.bytes, Word32::FinishReason.offset()))
                );
                assert_eq!(
                    resp.dropped_messages,
                    ne32(&input.bytes, Word32::DroppedMessages.offset())
                );
                assert_eq!(resp.result, result);
            } else {
                assert!(resp.intact, "seed mode has no checksum");
                assert_eq!(calls.get(), 1);
                assert_eq!(resp.status, StatusCode::Ok);
                assert_eq!(
                    (resp.flags, resp.error.as_str(), resp.error_args),
                    (0, "", (0, 0))
                );
                assert_eq!((resp.dropped_messages, resp.result.len()), (0, 0));
                let kept = check_decoded(input.field(Field::Response), &resp.text, resp.decode);
                if !resp.decode.replaced_invalid && !resp.decode.missing_nul {
                    assert!(kept < RESPONSE_LEN && resp.text.len() < RESPONSE_LEN);
                }
            }
        }
        Err(WaitError::PeerGone) => assert!(extended && seq != response_seq && !garbled && calls.get() == 2),
        Err(e) => panic!("client_await on NoopSemaphores failed: {e}"),
    }
}

/// `read_extended_response` clears `missing_nul` (a response of exactly `response_len`
/// bytes has none): put back what the oracle expects.
trait WithMissingNul {
    fn with_missing_nul(self, field: &[u8]) -> Self;
}

impl WithMissingNul for text::DecodeFlags {
    fn with_missing_nul(mut self, field: &[u8]) -> Self {
        assert!(!self.missing_nul, "read_extended_response reports missing_nul");
        self.missing_nul = !field.contains(&0);
        self
    }
}

/// A response written by the worker over the junk must be read back as written.
fn round_trip(input: &RegionInput, kind: ObjectKind) {
    let extended = kind == ObjectKind::Extended;
    let b = &input.bytes;
    let ch = Channel::new(
        NoopSemaphore,
        NoopSemaphore,
        NoopSemaphore,
        MemRegion::from_bytes(b, kind),
    );
    // What client_write does before the worker answers: the ring starts empty.
    ch.region.store64(Word64::StreamRead, 0);
    // The answer: the decoded response field (up to 96 KiB after replacement), so the
    // worker has to cut it; the error: the decoded system prompt. Numbers: the input's words.
    let answer = text::decode(input.field(Field::Response)).text;
    let error = text::decode(input.field(Field::SystemPrompt)).text;
    let outcome = Outcome {
        status: StatusCode::from_u32(ne32(b, Word32::Status.offset())),
        text: &answer,
        flags: ne32(b, Word32::ResponseFlags.offset()),
        error: &error,
        error_args: (
            ne64(b, Word64::ErrorArg0.offset()),
            ne64(b, Word64::ErrorArg1.offset()),
        ),
        usage: Usage {
            prompt_tokens: ne32(b, Word32::PromptTokens.offset()),
            generated_tokens: ne32(b, Word32::GeneratedTokens.offset()),
            prompt_time: Duration::from_micros(ne64(b, Word64::PromptMicros.offset())),
            generation_time: Duration::from_micros(ne64(b, Word64::GenerationMicros.offset())),
            cached_tokens: ne32(b, Word32::CachedTokens.offset()),
        },
        finish: Finish::from_u32(ne32(b, Word32::FinishReason.offset())),
        dropped_messages: ne32(b, Word32::DroppedMessages.offset()),
        result: &[],
    };
    // An extended client always sends a non-zero seq (0 marks a seed-mode client, which
    // reads the region as a seed one).
    let seq = if extended { input.seq.max(1) } else { 0 };
    ch.worker_respond(seq, &outcome).unwrap();
    let resp = ch
        .client_await(seq, None, Duration::from_millis(1), &|| true)
        .unwrap();
    // Through the ring (an extended request) the whole area is usable; the seed's C string
    // keeps one byte for its NUL.
    let room = if seq != 0 { RESPONSE_LEN } else { RESPONSE_LEN - 1 };
    let kept = kept_prefix(&answer, room);
    assert_eq!(resp.text, kept);
    assert!(!resp.decode.any(), "{:?}", resp.decode);
    assert!(resp.intact, "a response read as written failed its checksum");
    if seq != 0 {
        let cut = if kept.len() < answer.len() {
            RESPONSE_TRUNCATED
        } else {
            0
        };
        assert_eq!(resp.status, outcome.status);
        assert_eq!(resp.flags, outcome.flags | cut);
        assert_eq!(
            resp.truncated(),
            cut != 0 || outcome.flags & RESPONSE_TRUNCATED != 0
        );
        assert_eq!(resp.error, kept_prefix(&error, ERROR_MESSAGE_LEN - 1));
        assert_eq!(resp.error_args, outcome.error_args);
        assert_eq!(resp.usage, outcome.usage);
        assert_eq!(resp.finish, outcome.finish);
        assert_eq!(resp.dropped_messages, outcome.dropped_messages);
        assert!(resp.result.is_empty());
    } else {
        assert_eq!(
            (resp.status, resp.flags, resp.error.as_str()),
            (StatusCode::Ok, 0, "")
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let input = RegionInput::parse(data);
    for kind in [ObjectKind::Extended, ObjectKind::Seed] {
        check_kind(&input, kind);
        round_trip(&input, kind);
    }
});
