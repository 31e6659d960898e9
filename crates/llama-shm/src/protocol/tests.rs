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
            ch.worker_respond_tracked(0, RequestParams::default(), &ok(&text), &mut dirty)
                .unwrap();
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

// ----- Tests that kill the mutants cargo-mutants found unchecked ---------------------------
//
// Each states the fault it catches and the outcome the wire requires; expected values come
// from docs/WIRE.md (field sizes, flag bits, the ring's room formula), not from the code.

use crate::wire::text::Encoded;
use std::cell::Cell;

/// A semaphore that records how it is used: the posts it holds (`u64::MAX`: a flood that never
/// empties), the takes tried (`try_wait` and `wait_until`), the posts made, and the timed waits
/// given a deadline already past. The take numbered `slow_at` first sleeps until `slow_until`
/// (a peer that keeps the client busy past its deadline). Waits never block.
#[derive(Default)]
struct Probe {
    held: Cell<u64>,
    takes: Cell<u64>,
    posts: Cell<u64>,
    past_deadlines: Cell<u32>,
    slow_at: u64,
    slow_until: Option<Instant>,
}

impl Probe {
    fn holding(n: u64) -> Self {
        Self {
            held: Cell::new(n),
            ..Self::default()
        }
    }
}

impl Semaphore for Probe {
    fn post(&self) -> io::Result<()> {
        self.posts.set(self.posts.get() + 1);
        self.held.set(self.held.get().saturating_add(1));
        Ok(())
    }
    fn wait_until(&self, deadline: Option<Instant>) -> io::Result<bool> {
        if deadline.is_some_and(|d| d < Instant::now()) {
            self.past_deadlines.set(self.past_deadlines.get() + 1);
        }
        self.try_wait()
    }
    fn try_wait(&self) -> io::Result<bool> {
        self.takes.set(self.takes.get() + 1);
        if self.takes.get() == self.slow_at {
            if let Some(until) = self.slow_until {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
            }
        }
        match self.held.get() {
            0 => Ok(false),
            u64::MAX => Ok(true),
            n => {
                self.held.set(n - 1);
                Ok(true)
            }
        }
    }
    fn value(&self) -> io::Result<u32> {
        Ok(u32::try_from(self.held.get()).unwrap_or(u32::MAX))
    }
}

fn probed(ready: Probe, prompts_written: Probe, response_written: Probe) -> Channel<Probe, MemRegion> {
    let mut ch = Channel::new(
        ready,
        prompts_written,
        response_written,
        MemRegion::initialised(ObjectKind::Extended, 0),
    );
    ch.adaptive = AdaptiveWait::off();
    ch
}

fn take(ch: &Channel<impl Semaphore, MemRegion>, expected: Option<&[u8; TOKEN_LEN]>) -> Incoming {
    let (mut system, mut user) = (String::new(), String::new());
    ch.worker_take(expected, &mut system, &mut user, &mut [0u8; 4096])
}

fn prepared<'a>(system: &'a str, user: &'a str, seq: u64) -> PreparedRequest<'a> {
    let mut req = PreparedRequest::encode(Prompts { system, user }, Policy::Truncate).unwrap();
    req.seq = seq;
    req
}

/// Byte `i` of a long test answer: ASCII that does not repeat with the ring's period, so a
/// byte copied from (or written to) the wrong place of the ring shows.
fn answer_byte(i: usize) -> u8 {
    b'A' + ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59) as u8
}

/// The worker's half of [`stream_through`]: the pieces still to write, and the answer.
struct Feeder<'p> {
    st: Option<StreamState>,
    pieces: std::slice::Iter<'p, Vec<u8>>,
}

impl Feeder<'_> {
    /// Writes and publishes the next piece — after checking that the whole ring is free, as
    /// it is once the client copied everything out (room = 32768 − (written − stream_read),
    /// WIRE.md) — or, with none left, finishes the answer.
    fn step(&mut self, ch: &Channel<Counting, MemRegion>) {
        let Some(st) = self.st.as_mut() else { return };
        match self.pieces.next() {
            Some(piece) => {
                assert_eq!(
                    ch.worker_stream_room(st),
                    Room::Free(32768),
                    "the client has read everything: the whole ring is free"
                );
                ch.worker_stream_write(st, piece);
                ch.worker_stream_publish(st).unwrap();
            }
            None => {
                let st = self.st.take().expect("checked above");
                let mut dirty = RESPONSE_LEN;
                ch.worker_finish(&ok(""), st, &mut dirty).unwrap();
            }
        }
    }
}

/// Streams `pieces` as the answer to `seq` the way the two sides interleave: the worker
/// publishes a piece, the client copies it out of the ring, and only then (from the client's
/// `on_bytes`) does the worker write the next piece, or finish. Returns the client's result
/// and what it was handed, publication by publication.
fn stream_through(
    ch: &Channel<Counting, MemRegion>,
    seq: u64,
    pieces: &[Vec<u8>],
    limit: u64,
) -> (Result<RawResponse, WaitError>, Vec<Vec<u8>>) {
    ch.region.store64(Word64::StreamRead, 0); // what client_write does for each request
    let stream = RequestParams {
        flags: REQUEST_STREAM,
        ..RequestParams::default()
    };
    let mut feeder = Feeder {
        st: Some(ch.worker_stream_begin(seq, stream)),
        pieces: pieces.iter(),
    };
    feeder.step(ch);
    let mut got = Vec::new();
    let r = ch.client_receive(
        seq,
        Some(Instant::now() + Duration::from_secs(5)),
        Duration::from_millis(1),
        &|| true,
        limit,
        &mut Vec::new(),
        &mut |b: &[u8]| {
            got.push(b.to_vec());
            feeder.step(ch);
        },
    );
    (r, got)
}

/// An answer longer than the 32 KiB ring, copied out one publication at a time: the second
/// piece wraps round the ring's end (answer byte i lives at response[i % 32768]). Faults: the
/// client taking a publication from the wrong place, with the wrong length, not across the
/// wrap, or calling a read cursor past the ring's size garbled; the worker not writing the
/// wrapped part at the ring's start, or not seeing the ring free again once the client caught
/// up. Required: the client is handed exactly the pieces written, intact.
#[test]
fn an_answer_longer_than_the_ring_wraps_and_reads_back_piece_by_piece() {
    let mut at = 0;
    let pieces: Vec<Vec<u8>> = [20_000usize, 20_000, 20_000, 5]
        .iter()
        .map(|&n| {
            at += n;
            (at - n..at).map(answer_byte).collect()
        })
        .collect();
    let ch = counting();
    let (r, got) = stream_through(&ch, 12, &pieces, u64::MAX);
    let r = r.unwrap();
    let lens: Vec<usize> = got.iter().map(Vec::len).collect();
    assert!(got == pieces, "handed pieces of {lens:?}, not the pieces written");
    assert!(r.intact && r.finish == Finish::Stop, "{r:?}");
    assert_eq!(ch.region.load64(Word64::StreamRead), 60_005);
}

/// The client bounds what it accumulates (`limit`): an answer of exactly `limit` bytes is
/// taken; one byte more fails `TooLong` and cancels the request, so the worker stops.
#[test]
fn an_answer_past_the_clients_bound_fails_and_is_cancelled() {
    let ch = counting();
    let (r, got) = stream_through(&ch, 3, &[b"abcdef".to_vec(), b"ghij".to_vec()], 10);
    assert!(r.as_ref().is_ok_and(|r| r.intact), "{r:?}");
    assert_eq!(got.concat(), b"abcdefghij");
    assert_eq!(ch.region.load64(Word64::CancelSeq), 0);

    let ch = counting();
    let (r, got) = stream_through(&ch, 4, &[b"abcdef".to_vec(), b"ghijk".to_vec()], 10);
    assert!(matches!(r, Err(WaitError::TooLong { limit: 10 })), "{r:?}");
    assert_eq!(got, [b"abcdef".to_vec()]);
    assert_eq!(ch.region.load64(Word64::CancelSeq), 4);
}

/// The same bound on a seed-mode answer (one C string): `limit` bytes pass, `limit + 1` fail.
#[test]
fn a_seed_answer_past_the_clients_bound_fails() {
    let ch = channel(ObjectKind::Seed);
    ch.worker_respond(0, &ok("abcdefghij")).unwrap();
    let receive = |limit, got: &mut Vec<u8>| {
        ch.client_receive(
            0,
            None,
            Duration::from_millis(1),
            &|| true,
            limit,
            &mut Vec::new(),
            &mut |b: &[u8]| got.extend_from_slice(b),
        )
    };
    let mut got = Vec::new();
    let r = receive(10, &mut got);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(got, b"abcdefghij");
    let r = receive(9, &mut Vec::new());
    assert!(matches!(r, Err(WaitError::TooLong { limit: 9 })), "{r:?}");
}

/// The worker validates the client's read cursor: forward progress frees the ring by exactly
/// what was read (room = 32768 − (written − stream_read)); a cursor that moves backwards is
/// garbled.
#[test]
fn a_read_cursor_moving_forward_frees_the_ring_and_one_moving_back_is_garbled() {
    let ch = channel(ObjectKind::Extended);
    ch.region.store64(Word64::StreamRead, 0);
    let mut st = ch.worker_stream_begin(3, RequestParams::default());
    ch.worker_stream_write(&mut st, &[b'a'; 10]);
    ch.worker_stream_publish(&mut st).unwrap();
    for (read, room) in [
        (0, Room::Free(32768 - 10)),
        (6, Room::Free(32768 - 4)),
        (10, Room::Free(32768)),
    ] {
        ch.region.store64(Word64::StreamRead, read);
        assert_eq!(ch.worker_stream_room(&mut st), room, "stream_read {read}");
    }
    ch.region.store64(Word64::StreamRead, 4);
    assert_eq!(ch.worker_stream_room(&mut st), Room::Garbled);
}

/// A publication posts `response_written` only when it carries bytes the client has not seen
/// (a worker polling a full ring publishes again and again), and only in ring mode: a
/// seed-mode client (request_seq 0) takes the first post for the whole answer, so its answer
/// is posted once, whole, by `worker_finish`.
#[test]
fn only_publications_with_news_are_posted_and_a_seed_answer_once_finished() {
    let ch = counting();
    ch.region.store64(Word64::StreamRead, 0);
    let stream = RequestParams {
        flags: REQUEST_STREAM,
        ..RequestParams::default()
    };
    let mut st = ch.worker_stream_begin(5, stream);
    ch.worker_stream_write(&mut st, b"ab");
    ch.worker_stream_publish(&mut st).unwrap();
    assert_eq!(ch.response_written.value().unwrap(), 1);
    assert_eq!(ch.region.load64(Word64::StreamWritten), 2);
    ch.worker_stream_publish(&mut st).unwrap();
    assert_eq!(ch.response_written.value().unwrap(), 1, "a post with nothing new");

    let ch = counting();
    let mut st = ch.worker_stream_begin(0, stream);
    ch.worker_stream_write(&mut st, b"ab");
    ch.worker_stream_publish(&mut st).unwrap();
    assert_eq!(
        ch.response_written.value().unwrap(),
        0,
        "a seed-mode client would take a partial answer"
    );
    let mut dirty = RESPONSE_LEN;
    ch.worker_finish(&ok(""), st, &mut dirty).unwrap();
    assert_eq!(ch.response_written.value().unwrap(), 1);
}

/// A text longer than the response area is cut to what fits and flagged truncated (bit 0 of
/// `response_flags`), the worker's other flags kept (here bit 1, system prompt repaired): the
/// whole 32768-byte ring for an extended client, the seed's 32767 bytes and a NUL for a
/// seed-mode client.
#[test]
fn a_text_cut_to_the_area_is_flagged_truncated_and_keeps_the_other_flags() {
    let long = "a".repeat(40_000);
    let o = Outcome {
        flags: 1 << 1,
        ..ok(&long)
    };
    let ch = channel(ObjectKind::Extended);
    ch.region.store64(Word64::StreamRead, 0);
    ch.worker_respond(6, &o).unwrap();
    let r = ch
        .client_await(6, None, Duration::from_millis(1), &|| true)
        .unwrap();
    assert_eq!((r.text.len(), r.flags, r.intact), (32768, 0b11, true));

    // A seed-mode request (seq 0) on an extended object: its client reads only the field,
    // so the extension page's response words are left alone.
    let ch = channel(ObjectKind::Extended);
    ch.worker_respond(0, &o).unwrap();
    assert_eq!(ch.region.load32(Word32::ResponseFlags), 0);
    let mut field = vec![0u8; 32768];
    ch.region.read(Field::Response, 0, &mut field);
    assert!(field[..32767].iter().all(|&b| b == b'a') && field[32767] == 0);
}

/// An `error_len` word past the 256-byte error field (a scribbler, who also overwrote the
/// NUL) is read as at most the field less its NUL: 255 bytes, no more, and no panic — by the
/// response reader and by the shutdown-refusal reader alike.
#[test]
fn an_error_length_past_its_field_reads_at_most_the_field_less_its_nul() {
    let ch = channel(ObjectKind::Extended);
    ch.region.store64(Word64::StreamRead, 0);
    ch.worker_respond(4, &Outcome::error(StatusCode::EngineFailed, "boom"))
        .unwrap();
    ch.region.fill(Field::ErrorMessage, 0, 256, b'e');
    ch.region.store32(Word32::ErrorLen, 1000);
    let r = ch
        .client_await(4, None, Duration::from_millis(1), &|| true)
        .unwrap();
    assert_eq!(r.error, "e".repeat(255));
    assert!(!r.intact);
    assert_eq!(
        ch.client_shutdown_refusal(4),
        Some((StatusCode::EngineFailed, "e".repeat(255)))
    );
}

/// After asking a worker to exit, the client learns of a refusal only from an answer to that
/// shutdown's seq: none before the worker answered, none for another seq, none on a seed
/// object (no answer words); then the status and message the worker wrote.
#[test]
fn a_shutdown_refusal_is_read_only_from_the_answer_to_that_shutdown() {
    let ch = channel(ObjectKind::Extended);
    ch.client_request_shutdown(None, 11).unwrap();
    assert_eq!(ch.client_shutdown_refusal(11), None, "nothing answered yet");
    let Incoming::Refused {
        seq: 11,
        status,
        message,
        seed_stream: false,
    } = take(&ch, Some(&[7; TOKEN_LEN]))
    else {
        panic!("a shutdown without the token was not refused")
    };
    assert_eq!(status, StatusCode::Unauthorized);
    ch.worker_respond(11, &Outcome::error(status, &message)).unwrap();
    assert_eq!(
        ch.client_shutdown_refusal(11),
        Some((StatusCode::Unauthorized, message))
    );
    assert_eq!(ch.client_shutdown_refusal(12), None);

    let seed = channel(ObjectKind::Seed);
    seed.client_request_shutdown(None, 0).unwrap();
    assert_eq!(seed.client_shutdown_refusal(0), None);
}

/// A shutdown is checked like a request: its seq and token are covered by the request
/// checksum, so one changed in shared memory after the client wrote it is refused
/// `BadRequest`, not obeyed.
#[test]
fn a_shutdown_changed_in_transit_is_refused_not_obeyed() {
    type Scribble = fn(&MemRegion);
    let scribbles: [(&str, Scribble); 3] = [
        ("nothing", |_| {}),
        ("request_seq", |r| r.store64(Word64::RequestSeq, 4)),
        ("auth_token", |r| r.write(Field::AuthToken, 0, &[9])),
    ];
    for (what, scribble) in scribbles {
        let ch = channel(ObjectKind::Extended);
        ch.client_request_shutdown(Some(&[1; TOKEN_LEN]), 3).unwrap();
        scribble(&ch.region);
        let got = take(&ch, None);
        if what == "nothing" {
            assert_eq!(got, Incoming::Shutdown);
        } else {
            assert!(
                matches!(
                    got,
                    Incoming::Refused {
                        status: StatusCode::BadRequest,
                        ..
                    }
                ),
                "{what} changed in transit: {got:?}"
            );
        }
    }
}

/// The prompt length words of an extended request say how much to copy; one that leaves no
/// room for the NUL in its 4096-byte field (4096 or more) is refused `BadRequest` before
/// anything is copied, whichever prompt it belongs to.
#[test]
fn a_prompt_length_word_past_its_field_is_refused() {
    for (system_len, user_len) in [(4096, 1), (1, 4096), (u32::MAX, 1)] {
        let ch = channel(ObjectKind::Extended);
        ch.client_write(&prepared("s", "u", 5)).unwrap();
        ch.region.store32(Word32::SystemLen, system_len);
        ch.region.store32(Word32::UserLen, user_len);
        let got = take(&ch, None);
        assert!(
            matches!(
                got,
                Incoming::Refused {
                    seq: 5,
                    status: StatusCode::BadRequest,
                    ..
                }
            ),
            "lengths ({system_len}, {user_len}): {got:?}"
        );
    }
}

/// Seed mode: the client writes each prompt as the seed does — text, NUL, zeros to the end
/// of the 4096-byte field — over whatever an earlier request left there.
#[test]
fn seed_prompts_are_written_as_text_then_zeros_to_the_fields_end() {
    let ch = channel(ObjectKind::Seed);
    for (system, user) in [("sys", "héllo"), ("", "u")] {
        ch.region.fill(Field::SystemPrompt, 0, 4096, b'x');
        ch.region.fill(Field::UserPrompt, 0, 4096, b'x');
        ch.client_write(&prepared(system, user, 0)).unwrap();
        for (field, text) in [(Field::SystemPrompt, system), (Field::UserPrompt, user)] {
            let mut buf = vec![0u8; 4096];
            ch.region.read(field, 0, &mut buf);
            assert_eq!(&buf[..text.len()], text.as_bytes());
            assert!(
                buf[text.len()..].iter().all(|&b| b == 0),
                "{field:?}: stale bytes after {text:?}"
            );
        }
    }
}

/// A prompt handed to `client_write` longer than its field (an `Encoded` built by hand, not
/// by `text::encode`) is cut so the field keeps its NUL: 4095 bytes and a NUL, in seed mode
/// and in extended mode, where the length word says 4095 too.
#[test]
fn a_prompt_longer_than_its_field_is_cut_to_leave_the_nul() {
    let long = [b'a'; 5000];
    for (kind, seq) in [(ObjectKind::Seed, 0), (ObjectKind::Extended, 5)] {
        let ch = channel(kind);
        let mut req = prepared("", "u", seq);
        req.system = Encoded {
            bytes: &long,
            truncated: false,
            nul_at: None,
        };
        ch.client_write(&req).unwrap();
        let mut field = vec![0u8; 4096];
        ch.region.read(Field::SystemPrompt, 0, &mut field);
        assert!(
            field[..4095].iter().all(|&b| b == b'a') && field[4095] == 0,
            "{kind:?}"
        );
        if kind == ObjectKind::Extended {
            assert_eq!(ch.region.load32(Word32::SystemLen), 4095);
        }
    }
}

/// `cancel_seq` names a request to stop; 0 names none (a seed-mode client's), so cancelling 0
/// is a no-op and must not overwrite a pending cancel of a real request.
#[test]
fn cancelling_request_zero_leaves_a_pending_cancel_alone() {
    let ch = channel(ObjectKind::Extended);
    ch.client_cancel(5);
    ch.client_cancel(0);
    assert_eq!(ch.region.load64(Word64::CancelSeq), 5);
    assert!(ch.worker_cancel_requested(5));
}

/// `features` bit 0 says the worker requires the token, bit 1 that it streams (WIRE.md), each
/// read alone; a seed object has no features word, so neither.
#[test]
fn feature_bits_are_read_one_by_one() {
    for (features, token, streaming) in [
        (0b00, false, false),
        (0b01, true, false),
        (0b10, false, true),
        (0b11, true, true),
    ] {
        let ch = Channel::new(
            NoopSemaphore,
            NoopSemaphore,
            NoopSemaphore,
            MemRegion::initialised(ObjectKind::Extended, features),
        );
        assert_eq!(
            (ch.token_required(), ch.streaming_supported()),
            (token, streaming),
            "features {features:#04b}"
        );
    }
    let seed = channel(ObjectKind::Seed);
    assert!(!seed.token_required() && !seed.streaming_supported());
}

/// One `ready` post is one turn: acquiring takes the post (a second acquire finds none and
/// times out), and in extended mode the wait advertises the client's CPU, plus one, in
/// `client_cpu` (for the worker's adaptive wait).
#[test]
fn acquiring_a_turn_takes_the_ready_post_and_advertises_the_clients_cpu() {
    let ch = counting();
    ch.region.set_cpu(3);
    ch.ready.post().unwrap();
    ch.client_acquire(
        Some(Instant::now() + Duration::from_secs(1)),
        Duration::from_millis(1),
        &|| true,
    )
    .unwrap();
    assert_eq!(ch.ready.value().unwrap(), 0, "the turn was not taken");
    assert_eq!(ch.region.load32(Word32::ClientCpu), 3);
    let r = ch.client_acquire(
        Some(Instant::now() + Duration::from_millis(20)),
        Duration::from_millis(1),
        &|| true,
    );
    assert!(matches!(r, Err(WaitError::TimedOut)), "{r:?}");
}

/// The drain before a request takes every stale `response_written` (here more than 1024, far
/// below its bound) and stops at the first take that finds none.
#[test]
fn the_drain_takes_every_stale_post_and_stops_at_the_first_empty_take() {
    let ch = probed(Probe::holding(1), Probe::default(), Probe::holding(3000));
    ch.client_acquire(None, Duration::from_millis(1), &|| true)
        .unwrap();
    assert_eq!(ch.response_written.value().unwrap(), 0);
    assert_eq!(ch.response_written.takes.get(), 3001);
}

/// A drain of a flooded `response_written` whose deadline passes during it (here while the
/// 1100th take sleeps) ends by the deadline — within the 1024 takes between its looks at the
/// clock — not at its count bound of 2^20.
#[test]
fn a_drain_that_outlives_its_deadline_ends_by_it() {
    let deadline = Instant::now() + Duration::from_millis(200);
    let flood = Probe {
        slow_at: 1100,
        slow_until: Some(deadline + Duration::from_millis(1)),
        ..Probe::holding(u64::MAX)
    };
    let ch = probed(Probe::holding(1), Probe::default(), flood);
    let r = ch.client_acquire(Some(deadline), Duration::from_millis(1), &|| true);
    assert!(r.is_ok(), "{r:?}");
    let takes = ch.response_written.takes.get();
    assert!(
        takes <= 1100 + 1024 && takes < u64::from(DRAIN_LIMIT),
        "{takes} takes"
    );
}

/// A worker idle between requests sleeps in its slices: every timed wait for
/// `prompts_written` gets a deadline ahead of the moment it starts (one already past returns
/// at once, and the idle loop would spin a CPU).
#[test]
fn an_idle_worker_waits_with_deadlines_ahead() {
    let ch = probed(Probe::holding(1), Probe::default(), Probe::default());
    let rounds = Cell::new(0);
    let stop = || {
        rounds.set(rounds.get() + 1);
        rounds.get() > 3
    };
    assert!(!ch.worker_wait(Duration::from_millis(50), &stop, None).unwrap());
    assert!(ch.prompts_written.takes.get() >= 2);
    assert_eq!(ch.prompts_written.past_deadlines.get(), 0);
}

/// Clients that call every turn abandoned, counting how often they are asked.
#[derive(Default)]
struct AlwaysGone(Cell<u32>);

impl Clients for AlwaysGone {
    fn turn_abandoned(&self, _held: Duration) -> bool {
        self.0.set(self.0.get() + 1);
        true
    }
    fn requester_present(&self, _seq: u64, _since: Instant) -> bool {
        true
    }
}

/// While `ready` is still counted nobody holds the turn, so there is no holder to give up on:
/// an idle worker never asks whether the turn was abandoned and posts no extra `ready`.
#[test]
fn a_turn_nobody_took_is_not_given_back() {
    let ch = probed(Probe::holding(1), Probe::default(), Probe::default());
    let watch = AlwaysGone::default();
    let rounds = Cell::new(0);
    let stop = || {
        rounds.set(rounds.get() + 1);
        rounds.get() > 5
    };
    assert!(!ch
        .worker_wait(Duration::from_millis(1), &stop, Some(&watch))
        .unwrap());
    assert_eq!(watch.0.get(), 0, "asked about a turn nobody took");
    assert_eq!(ch.ready.posts.get(), 0);
    assert_eq!(ch.ready.value().unwrap(), 1);
}

/// A request that arrives is taken: a worker whose turn watcher would call the turn abandoned
/// (grace 0) neither gives the turn away once `prompts_written` is posted nor clears the
/// request the client wrote.
#[test]
fn a_request_posted_is_taken_even_when_the_turn_looks_abandoned() {
    let ch = counting();
    ch.worker_ready().unwrap();
    assert!(ch.ready.try_wait().unwrap(), "a client takes the turn");
    ch.region.store64(Word64::RequestSeq, 7);
    ch.prompts_written.post().unwrap();
    let rounds = Cell::new(0);
    let stop = || {
        rounds.set(rounds.get() + 1);
        rounds.get() > 50
    };
    let woke = ch
        .worker_wait(Duration::from_millis(1), &stop, Some(&GoneAfter(Duration::ZERO)))
        .unwrap();
    assert!(woke, "the request was not taken");
    assert_eq!(ch.region.load64(Word64::RequestSeq), 7);
    assert_eq!(ch.ready.value().unwrap(), 0, "the turn was given away");
}

/// A worker woken by a request advertises its CPU (plus one) in `worker_cpu`; one told to stop
/// as it wakes (a watcher posts to wake it) returns `false` and touches nothing in the region.
#[test]
fn a_worker_woken_to_stop_leaves_the_region_alone() {
    for stop_on_wake in [false, true] {
        let ch = counting();
        ch.region.set_cpu(3);
        ch.prompts_written.post().unwrap();
        // Stop once the wake-up post has been taken.
        let stop = || stop_on_wake && ch.prompts_written.value().unwrap() == 0;
        let go = ch.worker_wait(Duration::from_millis(1), &stop, None).unwrap();
        assert_eq!(go, !stop_on_wake);
        let cpu = if stop_on_wake { 0 } else { 3 };
        assert_eq!(
            ch.region.load32(Word32::WorkerCpu),
            cpu,
            "stop on wake: {stop_on_wake}"
        );
    }
}

/// A `StreamState` shows what it tracks in debug output (the worker's logs).
#[test]
fn a_stream_state_debugs_its_request_and_cursors() {
    let ch = channel(ObjectKind::Extended);
    let mut st = ch.worker_stream_begin(3, RequestParams::default());
    ch.worker_stream_write(&mut st, b"abcd");
    let s = format!("{st:?}");
    assert!(
        s.starts_with("StreamState") && s.contains("seq: 3") && s.contains("written: 4"),
        "{s}"
    );
}

/// A prompt carries at most its 4096-byte field less the NUL (WIRE.md), and the `Prompts`
/// constructors put each text where they name it.
#[test]
fn prompt_limits_are_the_fields_less_the_nul_and_constructors_name_the_fields() {
    assert_eq!((Prompts::MAX_SYSTEM_BYTES, Prompts::MAX_USER_BYTES), (4095, 4095));
    let p = Prompts::user("hi").with_system("terse");
    assert_eq!((p.system, p.user), ("terse", "hi"));
    assert_eq!(Prompts::user("hi").system, "");
}
