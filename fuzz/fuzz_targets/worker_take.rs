//! `Channel::worker_take` on an untrusted region, with and without an expected token: an
//! `Incoming` or a refusal, never a panic, and the one the rules call for. Then a round trip
//! on the same junk-filled region: what `client_write` (or `client_request_shutdown`) sends,
//! `worker_take` must take as sent.
//!
//! Input: see the crate docs. `ctrl` bits 0–1 pick the worker's expected token for the
//! untrusted read: none, the region's own token (authorised), the region's token with one bit
//! flipped, or 32 copies of `seq`'s low byte. Bit 4: store the request checksum that matches
//! the junk before the untrusted read (else a request with a sequence number almost always
//! fails the check). Bit 2: the round trip's worker requires the token (extended only); bit 3:
//! the round trip asks for shutdown instead of a request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llama_shm::internals::protocol::mem::{MemRegion, NoopSemaphore};
use llama_shm::internals::protocol::{
    request_checksum_with_area, Channel, Incoming, PreparedRequest, Region, RequestParams,
};
use llama_shm::internals::wire::layout::{
    Field, ObjectKind, Word32, Word64, AREA_LEN, SYSTEM_PROMPT_LEN, TOKEN_LEN, USER_PROMPT_LEN,
};
use llama_shm::internals::wire::status::StatusCode;
use llama_shm::internals::wire::text::{self, DecodeFlags, Policy};
use llama_shm::Prompts;
use llama_shm_fuzz::{check_decoded, kept_prefix, payload, RegionInput};

type MemChannel = Channel<NoopSemaphore, MemRegion>;

fn channel(region: MemRegion) -> MemChannel {
    Channel::new(NoopSemaphore, NoopSemaphore, NoopSemaphore, region)
}

fn take(ch: &MemChannel, expected: Option<&[u8; TOKEN_LEN]>) -> (Incoming, String, String) {
    let mut system = String::from("stale system prompt");
    let mut user = String::from("stale user prompt");
    let mut scratch = Box::new([0xEEu8; 4096]);
    let incoming = ch.worker_take(expected, &mut system, &mut user, &mut scratch);
    (incoming, system, user)
}

/// `worker_take` on the bytes as they are.
fn untrusted(input: &RegionInput, kind: ObjectKind) {
    let region = MemRegion::from_bytes(&input.bytes, kind);
    let extended = kind == ObjectKind::Extended;
    let mut region_token = [0u8; TOKEN_LEN];
    region.read(Field::AuthToken, 0, &mut region_token);
    let expected: Option<[u8; TOKEN_LEN]> = match input.ctrl & 3 {
        0 => None,
        1 => Some(region_token),
        2 => {
            let mut t = region_token;
            t[(input.seq % 32) as usize] ^= 1 << ((input.seq >> 8) % 8);
            Some(t)
        }
        _ => Some([input.seq as u8; TOKEN_LEN]),
    };
    let shutdown = input.field(Field::Shutdown)[0];
    let seq_word = if extended {
        region.load64(Word64::RequestSeq)
    } else {
        0
    };
    let authorised = expected.is_none_or(|t| seq_word != 0 && t == region_token);
    // An extended request says how long its prompts are: the worker reads that many bytes
    // and the NUL after them (lengths past a field are refused); a seed request, whole fields.
    let lens = (seq_word != 0).then(|| {
        (
            region.load32(Word32::SystemLen) as usize,
            region.load32(Word32::UserLen) as usize,
        )
    });
    let bad_lens = lens.is_some_and(|(s, u)| s >= SYSTEM_PROMPT_LEN || u >= USER_PROMPT_LEN);
    let span = |field: Field, len: Option<usize>| -> &[u8] {
        let raw = input.field(field);
        match len {
            Some(n) if n < raw.len() => &raw[..n + 1],
            _ => raw,
        }
    };
    let system_span = span(Field::SystemPrompt, lens.map(|l| l.0));
    let user_span = span(Field::UserPrompt, lens.map(|l| l.1));
    // The checksum the worker must find for the request to be intact (seed mode: none).
    let (system_raw, user_raw) = match shutdown {
        0 => (payload(system_span), payload(user_span)),
        _ => (&[][..], &[][..]),
    };
    let params = if seq_word != 0 {
        RequestParams {
            flags: region.load32(Word32::RequestFlags),
            max_tokens: region.load32(Word32::MaxTokens),
            deadline_us: region.load64(Word64::DeadlineMicros),
            seed_stream: false,
            kind: region.load32(Word32::RequestKind),
            options: region.load32(Word32::RequestOptions),
            sample_seed: region.load32(Word32::SampleSeed),
        }
    } else {
        RequestParams::default()
    };
    // A request of another kind than two prompts has its records in the request area, which
    // these regions (`OBJECT_SIZE` bytes) do not hold: refused, whatever `area_size` claims —
    // for lack of an area, a length past it, a checksum mismatch, or records that do not
    // decode from the zeros read in its place. (Area requests proper: the `request_area`
    // target.)
    let area_kind = shutdown == 0 && params.kind != 0;
    let area_cap = (region.load32(Word32::AreaSize) as usize).min(AREA_LEN);
    let area_used = region.load32(Word32::AreaUsed) as usize;
    let area_read = if area_kind && area_cap != 0 && area_used <= area_cap {
        vec![0u8; area_used]
    } else {
        Vec::new()
    };
    let want_check = request_checksum_with_area(
        seq_word,
        &region_token,
        shutdown,
        params,
        system_raw,
        user_raw,
        &area_read,
    );
    if input.ctrl & 16 != 0 {
        region.store64(Word64::RequestChecksum, want_check);
    }
    let intact = seq_word == 0 || region.load64(Word64::RequestChecksum) == want_check;
    let before = region.to_bytes();

    let ch = channel(region);
    let (incoming, system, user) = take(&ch, expected.as_ref());
    let mut after = ch.region.into_bytes();
    let shutdown_off = Field::Shutdown.span().offset;

    if shutdown > 1 {
        assert!(
            matches!(
                incoming,
                Incoming::Refused {
                    status: StatusCode::BadRequest | StatusCode::Unauthorized,
                    ..
                }
            ),
            "shutdown byte {shutdown:#04x} gave {incoming:?}"
        );
    }
    match incoming {
        Incoming::Request {
            seq,
            system: system_flags,
            user: user_flags,
            params: got_params,
            area,
        } => {
            assert!(authorised && shutdown == 0 && intact && !bad_lens && !area_kind);
            assert!(area.is_none());
            assert_eq!(got_params, params);
            assert_eq!(seq, seq_word);
            for (field, raw, text, flags) in [
                (Field::SystemPrompt, system_span, &system, system_flags),
                (Field::UserPrompt, user_span, &user, user_flags),
            ] {
                check_decoded(raw, text, flags);
                // A clean field (NUL-terminated, valid UTF-8) yields at most 4095 bytes. A
                // field without NUL yields 4096, and replacement up to 3 bytes per byte.
                if !flags.missing_nul && !flags.replaced_invalid {
                    assert!(text.len() < USER_PROMPT_LEN, "{field:?}: {} bytes", text.len());
                }
                assert!(text.len() <= 3 * USER_PROMPT_LEN);
            }
        }
        Incoming::Shutdown => assert!(authorised && shutdown == 1 && intact),
        Incoming::Refused {
            seq,
            status,
            message,
            seed_stream,
        } => {
            // This channel does not serve the seed's streaming service.
            assert!(!seed_stream);
            assert_eq!(seq, seq_word);
            assert!(!message.is_empty());
            if !authorised {
                assert_eq!(status, StatusCode::Unauthorized);
            } else {
                assert_eq!(status, StatusCode::BadRequest);
                // A bad shutdown byte, prompt lengths past the fields, or a checksum that does
                // not match.
                assert!(
                    shutdown > 1 || !intact || (shutdown == 0 && (bad_lens || area_kind)),
                    "{message}"
                );
            }
            // A refusal clears the shutdown byte, so the next request is not refused too.
            assert_eq!(after[shutdown_off], 0);
            after[shutdown_off] = before[shutdown_off];
        }
    }
    // worker_take writes nothing but the shutdown byte.
    assert!(after == before, "worker_take changed the region");
}

/// A request (or shutdown) written by the client over the junk must be taken as written.
fn round_trip(input: &RegionInput, kind: ObjectKind) {
    let extended = kind == ObjectKind::Extended;
    let ch = channel(MemRegion::from_bytes(&input.bytes, kind));
    // Prompts: the decoded junk, up to 12 KiB after replacement, so encode has to cut.
    let system_text = text::decode(input.field(Field::SystemPrompt)).text;
    let user_text = text::decode(input.field(Field::UserPrompt)).text;
    let token = [input.seq.rotate_left(8) as u8; TOKEN_LEN];
    let require = extended && input.ctrl & 4 != 0;
    let seq = if extended { input.seq.max(1) } else { 0 };
    let expected = require.then_some(&token);

    ch.worker_ready().unwrap();
    if input.ctrl & 8 != 0 {
        ch.client_request_shutdown(extended.then_some(&token), seq)
            .unwrap();
        let (incoming, _, _) = take(&ch, expected);
        assert_eq!(incoming, Incoming::Shutdown, "seq {seq}");
        return;
    }
    let mut req = PreparedRequest::encode(
        Prompts {
            system: &system_text,
            user: &user_text,
        },
        Policy::Truncate,
    )
    .unwrap();
    req.seq = seq;
    req.token = extended.then_some(&token);
    req.client_pid = input.seq as u32;
    ch.client_write(&req).unwrap();
    let (incoming, system, user) = take(&ch, expected);
    assert_eq!(
        incoming,
        Incoming::Request {
            seq,
            system: DecodeFlags::default(),
            user: DecodeFlags::default(),
            params: RequestParams::default(),
            area: None,
        }
    );
    assert_eq!(system, kept_prefix(&system_text, USER_PROMPT_LEN - 1));
    assert_eq!(user, kept_prefix(&user_text, USER_PROMPT_LEN - 1));
}

fuzz_target!(|data: &[u8]| {
    let input = RegionInput::parse(data);
    for kind in [ObjectKind::Extended, ObjectKind::Seed] {
        untrusted(&input, kind);
        round_trip(&input, kind);
    }
});
