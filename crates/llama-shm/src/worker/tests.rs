//! Unit tests of the serve loop on private memory.

use super::*;
use crate::protocol::mem::{CountingSemaphore, MemRegion};
use crate::protocol::Channel;
use crate::protocol::{PreparedRequest, Prompts, Region, RequestParams, Semaphore};
use crate::wire::layout::RESPONSE_LEN;
use crate::wire::layout::{Field, ObjectKind, Word64, REQUEST_STREAM};
use crate::wire::status::{Finish, StatusCode};
use crate::wire::text::Policy;
use crate::worker::engine::EchoEngine;
use std::time::Duration;

/// One request through the real `serve` on one thread (the semaphores count and never
/// block): returns the answer and how many times `response_written` was posted.
fn serve_one(flags: u32, cancelled: bool) -> (crate::protocol::RawResponse, u32) {
    serve_one_with(ObjectKind::Extended, flags, cancelled, None)
}

fn serve_one_with(
    kind: ObjectKind,
    flags: u32,
    cancelled: bool,
    answer_bytes: Option<usize>,
) -> (crate::protocol::RawResponse, u32) {
    let mut ch = Channel::new(
        CountingSemaphore::default(),
        CountingSemaphore::default(),
        CountingSemaphore::default(),
        MemRegion::initialised(kind, 0),
    );
    ch.adaptive = crate::protocol::AdaptiveWait::off();
    let mut req = PreparedRequest::encode(
        Prompts {
            system: "s",
            user: "abcdefghij",
        },
        Policy::Truncate,
    )
    .unwrap();
    req.seq = 7;
    req.params = RequestParams {
        flags,
        ..RequestParams::default()
    };
    let mut engine = EchoEngine {
        piece_delay: Duration::from_micros(1),
        answer_bytes,
        ..EchoEngine::default()
    };
    let seq = if kind == ObjectKind::Extended { 7 } else { 0 };
    // `serve` asks `stop` between its steps: the client's part runs there, in the
    // protocol's order (it takes the turn the worker posted, then writes), and it stops
    // the worker once the answer is written.
    let client = || {
        if ch.ready.value().unwrap() == 1 && ch.ready.try_wait().unwrap() {
            ch.client_write(&req).unwrap();
            if cancelled {
                ch.client_cancel(7);
            }
        }
        match kind {
            ObjectKind::Extended => ch.region.load64(Word64::ResponseSeq) == 7,
            ObjectKind::Seed => ch.response_written.value().unwrap() > 0,
        }
    };
    let opts = ServeOptions {
        // A seed-mode answer never waits for ring space (a wait would show as this 5 s).
        stall_limit: Duration::from_millis(if kind == ObjectKind::Seed { 5000 } else { 20 }),
        ..ServeOptions::default()
    };
    let (end, served) = serve(&ch, &mut engine, &opts, &client, &Cancel::new()).unwrap();
    assert_eq!((end, served), (ServeEnd::Stopped, 1));
    let posts = ch.response_written.value().unwrap();
    let r = ch
        .client_await(seq, None, Duration::from_millis(1), &|| true)
        .unwrap();
    (r, posts)
}

/// A streamed request is published piece by piece (one post per 4-byte piece of
/// "s\nabcdefghij", then the final one); an unstreamed one once; a cancelled one ends
/// `Cancelled` before the engine runs. The answers are whole and intact.
#[test]
fn serve_publishes_per_piece_only_when_streaming_and_honours_cancel() {
    let (r, posts) = serve_one(REQUEST_STREAM, false);
    assert_eq!(
        (r.text.as_str(), r.finish, r.intact),
        ("s\nabcdefghij", Finish::Stop, true)
    );
    assert_eq!(posts, 6, "5 pieces (s, \\n, abcd, efgh, ij) and the end");
    let (r, posts) = serve_one(0, false);
    assert_eq!((r.text.as_str(), r.intact), ("s\nabcdefghij", true));
    assert_eq!(posts, 1);
    let (r, _) = serve_one(REQUEST_STREAM, true);
    assert_eq!(
        (r.text.as_str(), r.finish, r.intact),
        ("", Finish::Cancelled, true)
    );
}

/// An answer longer than the response area: a seed-mode client gets the seed's C string,
/// cut at 32 767 bytes; an extended client gets it through the ring, and when nobody
/// reads the full ring the request is given up after the stall limit (`EngineFailed`),
/// never cut short as if it were a seed answer.
#[test]
fn a_long_answer_is_cut_for_seed_clients_and_ringed_for_extended_ones() {
    let start = std::time::Instant::now();
    let (r, _) = serve_one_with(ObjectKind::Seed, 0, false, Some(40_000));
    assert_eq!(r.text.len(), RESPONSE_LEN - 1);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "a full seed answer waited for room"
    );
    let (r, _) = serve_one_with(ObjectKind::Extended, 0, false, Some(40_000));
    assert_eq!(
        (r.status, r.finish),
        (StatusCode::EngineFailed, Finish::Error),
        "{r:?}"
    );
}

#[test]
fn sink_cuts_on_char_boundary_and_drops_nul() {
    let mut s = String::new();
    let mut sink = LimitedSink::new(&mut s, 5);
    assert!(sink.push("a\0b"));
    assert!(!sink.push("c€d"));
    assert!(sink.is_full());
    assert!(!sink.push("x"));
    assert_eq!(s, "abc");
}

#[test]
fn sink_exact_fit_is_not_full() {
    let mut s = String::new();
    let mut sink = LimitedSink::new(&mut s, 3);
    assert!(sink.push("日"));
    assert!(!sink.is_full());
    assert!(!sink.push("a"));
    assert_eq!(s, "日");
}

/// What a client of the seed's streaming service sees in the region: the response C string,
/// `update_counter`, `tokens_generated`, `generation_complete` (read at the offsets of
/// seed-streaming.md's table, not through the worker's helpers).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeedView {
    text: String,
    counter: i32,
    tokens: i32,
    complete: u8,
}

fn seed_view(region: &MemRegion) -> SeedView {
    let bytes = region.to_bytes();
    let response = &bytes[8192..8192 + RESPONSE_LEN];
    let end = response
        .iter()
        .position(|&b| b == 0)
        .expect("the response is NUL-terminated");
    let i32_at = |at: usize| i32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    SeedView {
        text: String::from_utf8(response[..end].to_vec()).expect("whole UTF-8 characters"),
        counter: i32_at(40962),
        tokens: i32_at(40967),
        complete: bytes[40966],
    }
}

/// One seed-mode request ("s" / "abcdefghij", or `user`) through the real `serve` on a channel
/// with `chunk_ready`, written by hand as the seed's `LocalLLMService` writes it
/// (`stream_mode` at 40961; counter, complete and tokens zeroed; the shutdown byte `shutdown`).
/// `stale` posts wait in `chunk_ready` beforehand. Returns the distinct views the client sees
/// at the worker's checks between pieces (not between its writes within one piece: the
/// NUL-first order of those is not observable here), then the last; the `chunk_ready` posts
/// left at the end, the `response_written` posts, and the `stream_mode` byte after the request.
fn serve_seed_stream(
    stream_mode: u8,
    stale: u32,
    user: &str,
    answer_bytes: Option<usize>,
) -> (Vec<SeedView>, u32, u32, u8) {
    serve_seed_stream_with(stream_mode, 0, stale, user, answer_bytes)
}

/// A standalone worker's channel on private memory: an extended region, counting semaphores
/// and `chunk_ready`, the adaptive wait off.
fn seed_stream_channel() -> Channel<CountingSemaphore, MemRegion> {
    let mut ch = Channel::new(
        CountingSemaphore::default(),
        CountingSemaphore::default(),
        CountingSemaphore::default(),
        MemRegion::initialised(ObjectKind::Extended, 0),
    )
    .with_chunk_ready(CountingSemaphore::default());
    ch.adaptive = crate::protocol::AdaptiveWait::off();
    ch
}

fn serve_seed_stream_with(
    stream_mode: u8,
    shutdown: u8,
    stale: u32,
    user: &str,
    answer_bytes: Option<usize>,
) -> (Vec<SeedView>, u32, u32, u8) {
    let ch = seed_stream_channel();
    for _ in 0..stale {
        ch.chunk_ready.as_ref().unwrap().post().unwrap();
    }
    let mut engine = EchoEngine {
        piece_delay: Duration::from_micros(1),
        answer_bytes,
        ..EchoEngine::default()
    };
    let views = std::cell::RefCell::new(Vec::<SeedView>::new());
    let client = || {
        let r = &ch.region;
        if ch.ready.value().unwrap() == 1 && ch.ready.try_wait().unwrap() {
            let mut field = [0u8; 4096];
            field[..1].copy_from_slice(b"s");
            r.write(Field::SystemPrompt, 0, &field);
            let mut field = [0u8; 4096];
            field[..user.len()].copy_from_slice(user.as_bytes());
            r.write(Field::UserPrompt, 0, &field);
            r.fill(Field::Response, 0, RESPONSE_LEN, 0);
            r.write(Field::Shutdown, 0, &[shutdown]);
            r.write(Field::SeedStream, 0, &[stream_mode, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            ch.prompts_written.post().unwrap();
        } else {
            let v = seed_view(r);
            let mut views = views.borrow_mut();
            if views.last() != Some(&v) {
                views.push(v);
            }
        }
        ch.response_written.value().unwrap() > 0
    };
    let (end, served) = serve(
        &ch,
        &mut engine,
        &ServeOptions::default(),
        &client,
        &Cancel::new(),
    )
    .unwrap();
    // A refusal is answered but not counted as served.
    assert_eq!((end, served), (ServeEnd::Stopped, u64::from(shutdown == 0)));
    let mut views = views.into_inner();
    let last = seed_view(&ch.region);
    if views.last() != Some(&last) {
        views.push(last);
    }
    let mode = ch.region.to_bytes()[40961];
    (
        views,
        ch.chunk_ready.as_ref().unwrap().value().unwrap(),
        ch.response_written.value().unwrap(),
        mode,
    )
}

/// The seed's streaming service (seed-streaming.md): each piece shows the whole answer so
/// far with `update_counter` one higher and a `chunk_ready` post; the end sets
/// `generation_complete` and posts `chunk_ready` once more before `response_written`; the
/// posts a previous client left are taken back first; `stream_mode` is cleared.
#[test]
fn a_seed_streaming_request_shows_every_piece_then_completes() {
    let (views, chunk_posts, response_posts, mode) = serve_seed_stream(1, 100, "abcdefghij", None);
    let seen: Vec<(&str, i32, u8)> = views
        .iter()
        .map(|v| (v.text.as_str(), v.counter, v.complete))
        .collect();
    assert_eq!(
        seen,
        [
            ("", 0, 0),
            ("s", 1, 0),
            ("s\n", 2, 0),
            ("s\nabcd", 3, 0),
            ("s\nabcdefgh", 4, 0),
            // (the fifth update, "ij", is overtaken by the end before `stop` is asked again)
            ("s\nabcdefghij", 6, 1),
        ]
    );
    assert_eq!(views[1].tokens, 1);
    assert_eq!(views[4].tokens, 4);
    assert!(views.last().unwrap().tokens >= 5, "{views:?}");
    // 5 updates and the end, none of the 100 stale posts; one response_written.
    assert_eq!((chunk_posts, response_posts, mode), (6, 1, 0));
}

/// `stream_mode` 0 (the LocalLLMService's non-streaming call, or a seed-era client that never
/// writes it): no `chunk_ready` post and no streaming field touched, the answer as the seed's.
#[test]
fn a_seed_request_without_stream_mode_posts_no_chunk() {
    let (views, chunk_posts, response_posts, _) = serve_seed_stream(0, 0, "abcdefghij", None);
    let last = views.last().unwrap();
    assert_eq!(
        (last.text.as_str(), last.counter, last.tokens, last.complete),
        ("s\nabcdefghij", 0, 0, 0)
    );
    assert_eq!((chunk_posts, response_posts), (0, 1));
}

/// An answer past 32 767 bytes streamed to the seed service: every view is whole UTF-8 (a cut
/// never splits a character), the last is cut at the field's limit on a char boundary and
/// marked complete.
#[test]
fn a_long_seed_stream_is_cut_on_a_character_boundary() {
    let (views, _, response_posts, _) = serve_seed_stream(1, 0, "ééé", Some(40_000));
    let last = views.last().unwrap();
    assert_eq!(last.complete, 1);
    assert!(last.text.len() < RESPONSE_LEN && last.text.len() > RESPONSE_LEN - 5);
    assert!(
        last.text.ends_with('é'),
        "cut mid-character: {:?}",
        &last.text[last.text.len() - 4..]
    );
    assert_eq!(response_posts, 1);
    // seed_view already refused any view that was not whole UTF-8 or had no NUL.
    assert!(views.windows(2).all(|w| w[1].text.starts_with(&w[0].text)));
}

/// A refused request of the streaming service (a shutdown byte of 7) still ends its stream:
/// an empty answer (a seed client has no error field), `generation_complete`, a
/// `chunk_ready` post, then `response_written` (the class waits on `chunk_ready` without a
/// deadline).
#[test]
fn a_refused_seed_streaming_request_still_completes_its_stream() {
    let (views, chunk_posts, response_posts, mode) = serve_seed_stream_with(1, 7, 0, "abc", None);
    let last = views.last().unwrap();
    assert_eq!((last.complete, last.counter), (1, 1), "{views:?}");
    assert_eq!(last.text, "");
    assert_eq!((chunk_posts, response_posts, mode), (1, 1, 0));
}

/// A `stream_mode` other than 0 and 1 is a non-streamed request, and the byte is cleared.
#[test]
fn an_unknown_stream_mode_is_a_plain_request_and_is_cleared() {
    let (views, chunk_posts, response_posts, mode) = serve_seed_stream(2, 0, "abcdefghij", None);
    let last = views.last().unwrap();
    assert_eq!(
        (last.text.as_str(), last.counter, last.complete),
        ("s\nabcdefghij", 0, 0)
    );
    assert_eq!((chunk_posts, response_posts, mode), (0, 1, 0));
}

/// An extended client (request seq 7) on a channel with `chunk_ready` gets its ring answer,
/// whatever byte 40961 holds: no `chunk_ready` post, the streaming fields untouched.
#[test]
fn an_extended_client_ignores_the_seed_streaming_fields() {
    let ch = seed_stream_channel();
    let mut req =
        PreparedRequest::encode(Prompts::user("abcdefghij").with_system("s"), Policy::Truncate).unwrap();
    req.seq = 7;
    req.params.flags = REQUEST_STREAM;
    let mut engine = EchoEngine {
        piece_delay: Duration::from_micros(1),
        ..EchoEngine::default()
    };
    let client = || {
        if ch.ready.value().unwrap() == 1 && ch.ready.try_wait().unwrap() {
            ch.region
                .write(Field::SeedStream, 0, &[1, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
            ch.client_write(&req).unwrap();
        }
        ch.region.load64(Word64::ResponseSeq) == 7
    };
    let (end, served) = serve(
        &ch,
        &mut engine,
        &ServeOptions::default(),
        &client,
        &Cancel::new(),
    )
    .unwrap();
    assert_eq!((end, served), (ServeEnd::Stopped, 1));
    let r = ch
        .client_await(7, None, Duration::from_millis(1), &|| true)
        .unwrap();
    assert_eq!((r.text.as_str(), r.intact), ("s\nabcdefghij", true));
    assert_eq!(ch.chunk_ready.as_ref().unwrap().value().unwrap(), 0);
    assert_eq!(
        &ch.region.to_bytes()[40961..40971],
        &[1, 9, 9, 9, 9, 9, 9, 9, 9, 9]
    );
}

/// The request's deadline: none is never passed, a past one (even one before the cancel was
/// made) is, a future one is not until it comes, and `reset` clears it with the flag.
#[test]
fn the_cancels_deadline_holds_for_past_future_and_none() {
    use std::time::Instant;
    let before = Instant::now();
    std::thread::sleep(Duration::from_millis(2));
    let c = Cancel::new();
    assert!(!c.deadline_passed() && !c.is_cancelled());
    c.set_deadline(Some(before));
    assert!(c.deadline_passed() && c.is_cancelled());
    c.set_deadline(Some(Instant::now() + Duration::from_millis(30)));
    assert!(!c.deadline_passed());
    std::thread::sleep(Duration::from_millis(40));
    assert!(c.deadline_passed());
    c.cancel();
    c.reset();
    assert!(!c.deadline_passed() && !c.is_cancelled());
    c.set_deadline(None);
    assert!(!c.deadline_passed());
}
