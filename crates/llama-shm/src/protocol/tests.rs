//! Unit tests of both sides of the cycle on private memory.

use super::*;
use crate::protocol::mem::{MemRegion, NoopSemaphore};
use crate::wire::layout::*;
use crate::wire::status::{Finish, StatusCode};
use crate::wire::text::Policy;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn channel(kind: ObjectKind) -> Channel<NoopSemaphore, MemRegion> {
    Channel::new(
        NoopSemaphore,
        NoopSemaphore,
        NoopSemaphore,
        MemRegion::initialised(kind, 0),
    )
}

fn ok(text: &str) -> Outcome<'_> {
    Outcome {
        text,
        finish: Finish::Stop,
        ..Outcome::error(StatusCode::Ok, "")
    }
}

/// A short answer after a long one: the tracked write zeroes only what the long one left,
/// and the whole field still reads as the short answer, NUL, zeros (what a seed client that
/// reads all 32 KiB sees). Also when the field starts out dirty (unknown contents), and on
/// an extended object serving a seed-mode client (request seq 0).
#[test]
fn tracked_response_writes_leave_the_field_zero_filled() {
    for kind in [ObjectKind::Seed, ObjectKind::Extended] {
        let ch = channel(kind);
        ch.region.fill(Field::Response, 0, RESPONSE_LEN, 0xAA);
        let mut dirty = RESPONSE_LEN;
        for text in [
            "x".repeat(30_000),
            "short".to_string(),
            "é".repeat(100),
            String::new(),
        ] {
            ch.worker_respond_tracked(0, &ok(&text), &mut dirty).unwrap();
            let mut field = vec![0u8; RESPONSE_LEN];
            ch.region.read(Field::Response, 0, &mut field);
            assert_eq!(&field[..text.len()], text.as_bytes());
            assert!(
                field[text.len()..].iter().all(|&b| b == 0),
                "{kind:?}: stale bytes after {}",
                text.len()
            );
            assert_eq!(dirty, text.len() + 1);
        }
    }
}

/// An extended answer written piece by piece and published in parts reads back whole,
/// with its checksum intact; a second request's answer is not confused with the first.
#[test]
fn ring_answers_read_back_whole_and_intact() {
    let ch = channel(ObjectKind::Extended);
    let mut dirty = RESPONSE_LEN;
    for (seq, pieces) in [(5u64, vec!["héllo", " ", "wörld"]), (6, vec!["日本", "語"])] {
        // What client_write does for each request.
        ch.region.store64(Word64::StreamRead, 0);
        let mut st = ch.worker_stream_begin(
            seq,
            RequestParams {
                flags: REQUEST_STREAM,
                ..RequestParams::default()
            },
        );
        for p in &pieces {
            assert!(matches!(ch.worker_stream_room(&mut st), Room::Free(n) if n >= p.len()));
            ch.worker_stream_write(&mut st, p.as_bytes());
            ch.worker_stream_publish(&mut st).unwrap();
        }
        ch.worker_finish(&ok(""), st, &mut dirty).unwrap();
        let r = ch
            .client_await(seq, None, Duration::from_millis(1), &|| true)
            .unwrap();
        assert!(r.intact);
        assert_eq!(r.text, pieces.concat());
        assert_eq!(r.finish, Finish::Stop);
    }
    // A scribbled byte in the answer is caught by the checksum.
    ch.region.store64(Word64::StreamRead, 0);
    let mut st = ch.worker_stream_begin(7, RequestParams::default());
    ch.worker_stream_write(&mut st, b"abc");
    ch.worker_finish(&ok(""), st, &mut dirty).unwrap();
    ch.region.write(Field::Response, 1, b"X");
    let r = ch
        .client_await(7, None, Duration::from_millis(1), &|| true)
        .unwrap();
    assert!(!r.intact);
}

/// A semaphore a hostile peer keeps positive (it posts in a loop, or raised the value):
/// every take succeeds at once.
struct Flood;

impl Semaphore for Flood {
    fn post(&self) -> io::Result<()> {
        Ok(())
    }
    fn wait_until(&self, _deadline: Option<Instant>) -> io::Result<bool> {
        Ok(true)
    }
    fn try_wait(&self) -> io::Result<bool> {
        Ok(true)
    }
    fn value(&self) -> io::Result<u32> {
        Ok(1)
    }
}

/// Runs `f` on its own thread and gives its result, or `None` if it has not returned
/// within `limit` (the thread is left behind: the test fails anyway).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// Issue 12, item 1: a deadline binds whatever the peer posts. A wait whose deadline has
/// passed takes nothing; the receive loop, woken again and again by posts that carry no
/// answer, ends `TimedOut` by its deadline (+ 50 ms); the drain before a request ends
/// although the semaphore never empties.
#[test]
fn a_semaphore_kept_positive_cannot_hold_a_wait_past_its_deadline() {
    let past = Instant::now() - Duration::from_millis(1);
    assert!(matches!(
        wait_for(&Flood, Some(past), Duration::from_millis(1), &|| true),
        Err(WaitError::TimedOut)
    ));
    for kind in [ObjectKind::Extended, ObjectKind::Seed] {
        let r = within(Duration::from_secs(5), move || {
            let ch = Channel::new(Flood, Flood, Flood, MemRegion::initialised(kind, 0));
            ch.region.store64(Word64::ResponseSeq, 7);
            let limit = Duration::from_millis(100);
            let start = Instant::now();
            let r = ch.client_await(8, Some(start + limit), Duration::from_millis(10), &|| true);
            (r.map(|_| ()), start.elapsed().saturating_sub(limit))
        });
        match (kind, r) {
            (ObjectKind::Extended, Some((Err(WaitError::TimedOut), late))) => {
                assert!(late < Duration::from_millis(50), "{late:?} past the deadline")
            }
            // A seed-mode answer has no sequence number: the first post is the answer.
            (ObjectKind::Seed, Some((Ok(()), _))) => {}
            (kind, r) => panic!("{kind:?}: {r:?} (None: still looping after 5 s)"),
        }
    }
    let r = within(Duration::from_secs(5), || {
        let ch = Channel::new(
            Flood,
            Flood,
            Flood,
            MemRegion::initialised(ObjectKind::Extended, 0),
        );
        ch.client_acquire(
            Some(Instant::now() + Duration::from_secs(1)),
            Duration::from_millis(10),
            &|| true,
        )
        .map_err(|e| e.to_string())
    });
    assert_eq!(
        r,
        Some(Ok(())),
        "the drain of a flooded response_written must end"
    );
}

/// Issue 12, item 9: the checksum covers the finish reason and the usage, so a scribbler
/// cannot turn a partial answer (`Deadline`, `Length`, `Cancelled`) into a complete one
/// (`Stop`), nor change the token counts, without the client seeing `Corrupt`.
#[test]
fn finish_and_usage_are_covered_by_the_response_checksum() {
    type Scribble = fn(&MemRegion);
    let scribbles: [(&str, Scribble); 5] = [
        ("finish", |r| {
            r.store32(Word32::FinishReason, Finish::Stop.to_u32())
        }),
        ("generated_tokens", |r| r.store32(Word32::GeneratedTokens, 1)),
        ("prompt_tokens", |r| r.store32(Word32::PromptTokens, 1)),
        ("generation_us", |r| r.store64(Word64::GenerationMicros, 1)),
        ("cached_tokens", |r| r.store32(Word32::CachedTokens, 1)),
    ];
    for (what, scribble) in scribbles {
        let ch = channel(ObjectKind::Extended);
        let mut dirty = RESPONSE_LEN;
        ch.region.store64(Word64::StreamRead, 0);
        let st = ch.worker_stream_begin(9, RequestParams::default());
        let o = Outcome {
            finish: Finish::Deadline,
            usage: Usage {
                prompt_tokens: 5,
                generated_tokens: 7,
                cached_tokens: 2,
                generation_time: Duration::from_micros(70),
                ..Usage::default()
            },
            ..ok("")
        };
        ch.worker_finish(&o, st, &mut dirty).unwrap();
        let clean = ch
            .client_await(9, None, Duration::from_millis(1), &|| true)
            .unwrap();
        assert!(
            clean.intact && clean.finish == Finish::Deadline,
            "{what}: {clean:?}"
        );
        scribble(&ch.region);
        let r = ch
            .client_await(9, None, Duration::from_millis(1), &|| true)
            .unwrap();
        assert!(
            !r.intact,
            "{what} changed in shared memory passed the checksum: {r:?}"
        );
    }
}

use crate::protocol::mem::CountingSemaphore as Counting;

/// Clients whose held turn counts as abandoned once held `after`.
struct GoneAfter(Duration);

impl Clients for GoneAfter {
    fn turn_abandoned(&self, held: Duration) -> bool {
        held >= self.0
    }
    fn requester_present(&self, _seq: u64, _since: Instant) -> bool {
        true
    }
}

fn counting() -> Channel<Counting, MemRegion> {
    let mut ch = Channel::new(
        Counting::default(),
        Counting::default(),
        Counting::default(),
        MemRegion::initialised(ObjectKind::Extended, 0),
    );
    ch.adaptive = AdaptiveWait::off();
    ch
}

/// Issue 12, item 2, at the protocol level: a worker watching its clients gives back a
/// turn taken and never followed by a request — once, with the request slot cleared (a
/// dead extended client's half-written `request_seq` must not be read as the next
/// client's) — but not while the turn is held for less than the grace, and never without
/// `Clients` (a spawned worker's client may hold its turn between requests).
#[test]
fn a_turn_held_past_the_grace_is_given_back_once() {
    for (clients, given_back) in [
        (Some(Duration::ZERO), true),
        (Some(Duration::from_secs(3600)), false),
        (None, false),
    ] {
        let ch = counting();
        ch.worker_ready().unwrap();
        assert!(ch.ready.try_wait().unwrap(), "a client takes the turn");
        ch.region.store64(Word64::RequestSeq, 99); // and writes part of a request, and dies
        let rounds = std::cell::Cell::new(0);
        let stop = || {
            rounds.set(rounds.get() + 1);
            rounds.get() > 5
        };
        let watch = clients.map(GoneAfter);
        let woke = ch
            .worker_wait(
                Duration::from_millis(1),
                &stop,
                watch.as_ref().map(|c| c as &dyn Clients),
            )
            .unwrap();
        assert!(!woke);
        let ready = ch.ready.value().unwrap();
        assert_eq!(ready, u32::from(given_back), "{clients:?}");
        let seq = ch.region.load64(Word64::RequestSeq);
        assert_eq!(seq == 0, given_back, "{clients:?}: request_seq {seq}");
    }
}

/// `worker_ready` leaves exactly one turn, whatever was left counted before it (a turn
/// given back to a holder that was only slow), within its bound.
#[test]
fn worker_ready_leaves_exactly_one_turn() {
    let ch = counting();
    for _ in 0..3 {
        ch.ready.post().unwrap();
    }
    ch.worker_ready().unwrap();
    assert_eq!(ch.ready.value().unwrap(), 1);
    ch.worker_ready().unwrap();
    assert_eq!(ch.ready.value().unwrap(), 1);
}

/// A semaphore nobody posts whose timed waits sleep until their deadline, counting them.
#[derive(Default)]
struct Silent(std::sync::atomic::AtomicU32);

impl Semaphore for Silent {
    fn post(&self) -> io::Result<()> {
        Ok(())
    }
    fn wait_until(&self, deadline: Option<Instant>) -> io::Result<bool> {
        self.0.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = deadline {
            std::thread::sleep(d.saturating_duration_since(Instant::now()));
        }
        Ok(false)
    }
    fn try_wait(&self) -> io::Result<bool> {
        Ok(false)
    }
    fn value(&self) -> io::Result<u32> {
        Ok(0)
    }
}

/// Mutation tests found these unchecked: a wait on a silent peer lasts until its deadline
/// (not less), in slices (not a spin of immediate retries), and asks about the peer's
/// liveness between slices: `TimedOut` while it lives, `PeerGone` once it does not.
#[test]
fn a_wait_on_a_silent_peer_lasts_its_deadline_in_slices() {
    let sem = Silent::default();
    let start = Instant::now();
    let r = wait_for(
        &sem,
        Some(start + Duration::from_millis(60)),
        Duration::from_millis(10),
        &|| true,
    );
    let took = start.elapsed();
    assert!(matches!(r, Err(WaitError::TimedOut)), "{r:?}");
    assert!(took >= Duration::from_millis(60), "returned after {took:?}");
    let slices = sem.0.load(Ordering::Relaxed);
    assert!(
        (5..=8).contains(&slices),
        "{slices} waits for 60 ms in slices of 10"
    );
    let r = wait_for(
        &sem,
        Some(Instant::now() + Duration::from_secs(5)),
        Duration::from_millis(5),
        &|| false,
    );
    assert!(matches!(r, Err(WaitError::PeerGone)), "{r:?}");
    // Without a deadline too, each slice is a wait of its length (here: 3 of 10 ms, until
    // the peer is gone), not an immediate retry.
    let asked = std::cell::Cell::new(0);
    let start = Instant::now();
    let r = wait_for(&sem, None, Duration::from_millis(10), &|| {
        asked.set(asked.get() + 1);
        asked.get() < 3
    });
    assert!(matches!(r, Err(WaitError::PeerGone)), "{r:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(30),
        "{:?}",
        start.elapsed()
    );
}

/// The drain before a request takes every stale `response_written` (up to its bound).
#[test]
fn client_acquire_drains_stale_response_posts() {
    let ch = counting();
    ch.ready.post().unwrap();
    for _ in 0..3 {
        ch.response_written.post().unwrap();
    }
    ch.client_acquire(
        Some(Instant::now() + Duration::from_secs(1)),
        Duration::from_millis(1),
        &|| true,
    )
    .unwrap();
    assert_eq!(ch.response_written.value().unwrap(), 0);
}

/// The request checksum covers the sequence number, token, shutdown byte and every
/// parameter (flags, token budget, deadline) as well as the prompts: any of them changed in
/// shared memory after the client wrote it is refused `BadRequest`.
#[test]
fn request_words_changed_in_transit_are_refused() {
    type Scribble = fn(&MemRegion);
    let scribbles: [(&str, Scribble); 6] = [
        ("max_tokens", |r| r.store32(Word32::MaxTokens, 7)),
        ("deadline_us", |r| r.store64(Word64::DeadlineMicros, 7)),
        ("request_flags", |r| {
            r.store32(Word32::RequestFlags, REQUEST_STREAM)
        }),
        ("request_seq", |r| r.store64(Word64::RequestSeq, 6)),
        ("auth_token", |r| r.write(Field::AuthToken, 0, &[9])),
        ("user prompt", |r| r.write(Field::UserPrompt, 0, b"U")),
    ];
    let token = [1u8; TOKEN_LEN];
    for (what, scribble) in scribbles {
        let ch = counting();
        let mut req = PreparedRequest::encode(
            Prompts {
                system: "s",
                user: "u",
            },
            Policy::Truncate,
        )
        .unwrap();
        req.seq = 5;
        req.token = Some(&token);
        req.params.max_tokens = 3;
        req.params.deadline_us = 1000;
        ch.client_write(&req).unwrap();
        let (mut system, mut user, mut scratch) = (String::new(), String::new(), [0u8; 4096]);
        let clean = ch.worker_take(None, &mut system, &mut user, &mut scratch);
        assert!(
            matches!(clean, Incoming::Request { seq: 5, .. }),
            "{what}: {clean:?}"
        );
        scribble(&ch.region);
        let r = ch.worker_take(None, &mut system, &mut user, &mut scratch);
        assert!(
            matches!(
                r,
                Incoming::Refused {
                    status: StatusCode::BadRequest,
                    ..
                }
            ),
            "{what} changed in transit was taken: {r:?}"
        );
    }
}

/// `text_hash` is what the incremental hash of a streamed answer comes to (the fuzz oracle
/// and any outside checker rely on it), and tells answers apart.
#[test]
fn text_hash_is_the_streamed_answers_hash() {
    let ch = channel(ObjectKind::Extended);
    let mut st = ch.worker_stream_begin(3, RequestParams::default());
    for piece in ["héllo", " ", "wörld"] {
        ch.worker_stream_write(&mut st, piece.as_bytes());
    }
    assert_eq!(st.hasher.digest(), text_hash("héllo wörld".as_bytes()));
    assert_ne!(text_hash(b"abc"), text_hash(b"abd"));
    assert_eq!(st.seq(), 3);
}

/// `truncated()` reports the worker's flag.
#[test]
fn truncated_reports_the_flag() {
    let ch = channel(ObjectKind::Extended);
    ch.region.store64(Word64::StreamRead, 0);
    let o = Outcome {
        flags: RESPONSE_TRUNCATED,
        ..ok("cut")
    };
    ch.worker_respond(4, &o).unwrap();
    let r = ch
        .client_await(4, None, Duration::from_millis(1), &|| true)
        .unwrap();
    assert!(r.truncated() && r.intact);
    ch.region.store64(Word64::StreamRead, 0); // what client_write does per request
    ch.worker_respond(5, &ok("whole")).unwrap();
    assert!(!ch
        .client_await(5, None, Duration::from_millis(1), &|| true)
        .unwrap()
        .truncated());
}

/// A read cursor the client could not have written (past what was published) is refused
/// as garbled, and so is a write cursor past the ring on the client's side.
#[test]
fn impossible_cursors_are_garbled() {
    let ch = channel(ObjectKind::Extended);
    let mut st = ch.worker_stream_begin(3, RequestParams::default());
    ch.worker_stream_write(&mut st, b"abcd");
    ch.region.store64(Word64::StreamRead, 2);
    assert_eq!(ch.worker_stream_room(&mut st), Room::Garbled);
    ch.region.store64(Word64::StreamRead, 0);
    assert_eq!(ch.worker_stream_room(&mut st), Room::Free(RESPONSE_LEN - 4));
    ch.region.store64(Word64::StreamWritten, RESPONSE_LEN as u64 + 1);
    ch.region.store64(Word64::ResponseSeq, 3);
    let r = ch.client_await(3, None, Duration::from_millis(1), &|| true);
    assert!(matches!(r, Err(WaitError::Garbled(_))), "{r:?}");
    // The client cancels a request whose stream it cannot read.
    assert_eq!(ch.region.load64(Word64::CancelSeq), 3);
}
