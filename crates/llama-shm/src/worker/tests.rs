//! Unit tests of the serve loop on private memory.

use super::*;
use crate::protocol::mem::{CountingSemaphore, MemRegion};
use crate::protocol::Channel;
use crate::protocol::{PreparedRequest, Prompts, Region, RequestParams, Semaphore};
use crate::wire::layout::RESPONSE_LEN;
use crate::wire::layout::{ObjectKind, Word64, REQUEST_STREAM};
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
