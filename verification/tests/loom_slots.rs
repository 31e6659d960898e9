//! loom models of the multi-slot worker that ships: `worker::slots::serve_slots` itself (its
//! waiter thread per slot and its engine loop, on the crate's loom façade: loom threads in a
//! scope, a loom channel between them) with the shipped batched echo engine, two slots, and the
//! shipped client calls on each slot's channel. Run with ci/loom.sh (see verification/README.md).
//!
//! Threads: the model's own runs `serve_slots` (the engine loop), which spawns the two waiters;
//! one more thread plays both clients, each on its own slot, in a fixed order of their steps.
//! The two clients share nothing but the worker, and every answer here fits its ring (so how
//! fast a client reads never holds the worker): what one client does reaches the worker only
//! through its own slot's posts and words, which the worker sees only when its thread for that
//! slot gets to them — and loom schedules the worker's three threads freely around the client's
//! steps. (Two client threads were tried: a fifth thread makes the smallest model 14 times
//! larger; see verification/README.md.) At the end the client thread stops the worker as its
//! stop watcher does (`stop`, then a `prompts_written` post on every slot).
#![cfg(loom)]

use std::time::{Duration, Instant};

use llama_shm::internals::protocol::{Clients, PreparedRequest, Region, Semaphore};
use llama_shm::internals::wire::layout::{Field, ObjectKind, Word64, REQUEST_STREAM};
use llama_shm::internals::wire::status::{Finish, StatusCode};
use llama_shm::internals::wire::text::Policy;
use llama_shm::internals::worker::batch::{BatchEngine, BatchSink, EchoBatch};
use llama_shm::internals::worker::slots::{serve_slots, Slot};
use llama_shm::internals::worker::{ServeEnd, ServeOptions};
use llama_shm::{EngineError, EngineRequest, Prompts};
use llama_shm_verification::{channel_with_ring, LoomChannel, SLICE};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Each slot's ring: every answer here fits (wrap-around and the full-ring wait are the
/// single-slot models' part).
const RING: usize = 8;

fn always() -> bool {
    true
}

/// Takes the turn of slot `ch` and sends streamed request `seq` asking `user`. The echo
/// answers `s\n{user}`, in pieces of at most 4 bytes, one per step.
fn send(ch: &LoomChannel, seq: u64, user: &str) {
    ch.client_acquire(None, SLICE, &always).unwrap();
    let mut req = PreparedRequest::encode(Prompts { system: "s", user }, Policy::Truncate).unwrap();
    req.seq = seq;
    req.params.flags = REQUEST_STREAM;
    ch.client_write(&req).unwrap();
}

/// Receives the answer to `seq` on slot `ch` (`on_piece` after each publication the client
/// copies out); `Ok` and intact, or the assertion fails. Returns the text and the finish.
fn receive(ch: &LoomChannel, seq: u64, on_piece: &mut dyn FnMut()) -> (String, Finish) {
    let mut text = Vec::new();
    let mut scratch = Vec::new();
    let r = ch
        .client_receive(seq, None, SLICE, &always, u64::MAX, &mut scratch, &mut |b| {
            text.extend_from_slice(b);
            on_piece();
        })
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(r.status, StatusCode::Ok, "request {seq}: {r:?}");
    assert!(
        r.intact,
        "request {seq}: the checksum does not match what arrived"
    );
    (text, r.finish)
}

/// The worker's stop flag. The models set it once, at their end, after both clients are done
/// (a stop during a request is the single-slot stop model's part), so it is a plain flag that
/// loom does not explore: every read of it is one more point where loom would otherwise try
/// the store early, for nothing but a model several times larger.
type StopFlag = std::sync::atomic::AtomicBool;

/// The worker's stop watcher (llama-shm-worker): `stop`, then wake every slot's waiter.
fn stop_worker(channels: &[Arc<LoomChannel>; 2], stop: &StopFlag) {
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for ch in channels {
        ch.prompts_written.post().unwrap();
    }
}

/// What the worker learns about one slot's clients (production: the turn's `flock` and the
/// requester's pid): the client that took the turn died holding it (`holds` and `dead`:
/// once — the turn is then given back), and whether the requester of `dead_seq` is gone.
struct Oracle {
    holds: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    dead_seq: u64,
}

impl Clients for Oracle {
    fn turn_abandoned(&self, _held: Duration) -> bool {
        self.dead.load(Ordering::SeqCst) && self.holds.swap(false, Ordering::SeqCst)
    }
    fn requester_present(&self, seq: u64, _since: Instant) -> bool {
        !(seq == self.dead_seq && self.dead.load(Ordering::SeqCst))
    }
}

/// The options of a standalone worker (its clients watched), asking about a requester at
/// every check.
fn options() -> ServeOptions {
    ServeOptions {
        presence_every: Duration::ZERO,
        ..ServeOptions::default()
    }
}

/// Runs the real `serve_slots` on the two channels with `engine`; returns how it ended.
fn serve_two<E: BatchEngine>(
    channels: &[Arc<LoomChannel>; 2],
    clients: [Option<Oracle>; 2],
    engine: &mut E,
    stop: &StopFlag,
) -> (ServeEnd, u64) {
    let [c0, c1] = clients;
    let slots = [
        Slot {
            channel: &*channels[0],
            clients: c0.map(|o| std::sync::Arc::new(o) as std::sync::Arc<dyn Clients + Send + Sync>),
        },
        Slot {
            channel: &*channels[1],
            clients: c1.map(|o| std::sync::Arc::new(o) as std::sync::Arc<dyn Clients + Send + Sync>),
        },
    ];
    serve_slots(&slots, engine, &options(), &|| {
        stop.load(std::sync::atomic::Ordering::SeqCst)
    })
    .unwrap()
}

fn two_channels() -> [Arc<LoomChannel>; 2] {
    [
        Arc::new(channel_with_ring(ObjectKind::Extended, RING)),
        Arc::new(channel_with_ring(ObjectKind::Extended, RING)),
    ]
}

/// Where client 0 cancels its request.
#[derive(Debug, Clone, Copy)]
enum CancelAt {
    /// Right after posting it: the cancel lands wherever the worker is by then (not taken
    /// yet, taken but not admitted, between pieces, after the last piece, finished).
    Posted,
    /// When the first piece arrives.
    FirstPiece,
}

/// The turn of slot `ch` is offered again (its waiter posted `ready`): the slot is free.
/// (The client keeps the turn; the worker's stop ends the model.)
fn slot_is_free(ch: &LoomChannel) {
    ch.client_acquire(None, SLICE, &always).unwrap();
}

/// The cancel model, with the engine `engine` makes.
fn cancel_model<E: BatchEngine + 'static>(engine: fn() -> E) {
    for at in [CancelAt::Posted, CancelAt::FirstPiece] {
        loom::model(move || {
            let channels = two_channels();
            let stop = std::sync::Arc::new(StopFlag::new(false));
            let clients = {
                let (channels, stop) = (channels.clone(), std::sync::Arc::clone(&stop));
                thread::spawn(move || {
                    let [ch0, ch1] = &channels;
                    // Client 1 streams; client 0 sends, and cancels.
                    send(ch1, 1, "wxyz");
                    send(ch0, 1, "abcd");
                    if let CancelAt::Posted = at {
                        ch0.client_cancel(1);
                    }
                    let (text, finish) = receive(ch1, 1, &mut || {});
                    assert_eq!(
                        (text.as_str(), finish),
                        ("s\nwxyz", Finish::Stop),
                        "slot 1 got another client's answer, or not all of its own"
                    );
                    let mut first = true;
                    let (text, finish) = receive(ch0, 1, &mut || {
                        if std::mem::take(&mut first) && matches!(at, CancelAt::FirstPiece) {
                            ch0.client_cancel(1);
                        }
                    });
                    match finish {
                        Finish::Stop => assert_eq!(text, "s\nabcd", "slot 0 got another client's answer"),
                        // A cancel that lands after the last piece, before the engine's step
                        // that ends the sequence, cancels a complete answer.
                        Finish::Cancelled => assert!(
                            "s\nabcd".starts_with(&text),
                            "slot 0's cancelled answer {text:?} is not a prefix of its own"
                        ),
                        other => panic!("slot 0: finish {other:?}"),
                    }
                    // Both slots are free again (the cancelled request left the batch).
                    slot_is_free(ch0);
                    slot_is_free(ch1);
                    stop_worker(&channels, &stop);
                })
            };
            let end = serve_two(&channels, [None, None], &mut engine(), &stop);
            assert_eq!(end, (ServeEnd::Stopped, 2));
            clients.join().unwrap();
        });
    }
}

fn echo() -> EchoBatch {
    EchoBatch::new(2, Duration::ZERO)
}

/// Client 0 cancels its streamed request (right after posting it, or at its first piece) while
/// client 1 streams its own on the other slot. Client 1 gets exactly its own answer, whole;
/// client 0 gets its own answer whole (`Stop`) or a prefix of it (`Cancelled`), never a byte of
/// the other's; no field is accessed unordered; both slots are free again afterwards; the
/// worker stops when told, having answered both.
#[test]
fn two_slots_cancel_in_one_while_the_other_streams() {
    cancel_model(echo);
}

/// Planted: an engine that hands each piece to the other sequence's sink (a worker that
/// dispatches to the wrong slot). The cancel model must catch the cross-talk.
#[cfg(feature = "planted-bugs")]
#[test]
#[ignore = "planted bug: this model must FAIL; ci/loom.sh runs it and requires the failure"]
fn planted_piece_to_the_wrong_slot_is_caught() {
    cancel_model(|| llama_shm_verification::planted::CrossedPieces(echo()));
}

/// The shipped echo engine, except that a request asking `long` is still reading its prompt
/// at every step: the engine pushes nothing for it for as long as it likes (here: until the
/// worker aborts it). Every step of it takes time: the model yields.
struct LongPrompts {
    echo: EchoBatch,
    reading: [bool; 2],
}

impl BatchEngine for LongPrompts {
    fn capacity(&self) -> usize {
        self.echo.capacity()
    }
    fn admit(&mut self, seq: usize, request: &EngineRequest<'_>) -> Result<(), EngineError> {
        if request.user == "long" {
            self.reading[seq] = true;
            return Ok(());
        }
        self.echo.admit(seq, request)
    }
    fn abort(&mut self, seq: usize) {
        self.reading[seq] = false;
        self.echo.abort(seq);
    }
    fn hold(&mut self, seq: usize, held: bool) {
        self.echo.hold(seq, held);
    }
    fn is_busy(&self) -> bool {
        self.reading.contains(&true) || self.echo.is_busy()
    }
    fn step(&mut self, out: &mut dyn BatchSink) {
        if self.reading.contains(&true) {
            thread::yield_now();
        }
        self.echo.step(out);
    }
}

/// Where the dying client dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// Right after taking the turn (`ready`).
    HoldingTurn,
    /// After writing its request, before posting it.
    Written,
    /// After posting a request whose prompt the engine is still reading.
    Posted,
    /// After the first publication of its streamed answer.
    Reading,
}

/// A client dies in slot `dying` — right after taking the turn, after writing but before
/// posting, after posting (its prompt still being read), or after the first piece of its
/// answer — while the client of the other slot streams. The other client gets exactly its own
/// answer, whole; the worker frees the dead client's slot (gives the turn back, or aborts the
/// request: its client is gone), so its turn is offered again; no field is accessed unordered;
/// the worker stops when told. `LLAMA_SHM_MUTANT=refusal-not-aborted` (before 5bae406: a
/// refused request stays in the batch until the engine pushes again) must fail: the dead
/// client's slot is never free again.
#[test]
fn a_client_dying_in_either_slot_leaves_the_other_whole() {
    for dying in [0usize, 1] {
        for death in [Death::HoldingTurn, Death::Written, Death::Posted, Death::Reading] {
            loom::model(move || dying_model(dying, death));
        }
    }
}

fn dying_model(dying: usize, death: Death) {
    let survivor = 1 - dying;
    let channels = two_channels();
    // Its waiter's wait for a request ends in slices, so it looks at the turn.
    if matches!(death, Death::HoldingTurn | Death::Written) {
        channels[dying].prompts_written.set_timeouts(true);
    }
    let stop = std::sync::Arc::new(StopFlag::new(false));
    let (holds, dead) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let mut oracles = [None, None];
    oracles[dying] = Some(Oracle {
        holds: Arc::clone(&holds),
        dead: Arc::clone(&dead),
        dead_seq: 1,
    });
    oracles[survivor] = Some(Oracle {
        holds: Arc::new(AtomicBool::new(false)),
        dead: Arc::new(AtomicBool::new(false)),
        dead_seq: 0,
    });
    let clients = {
        let (channels, stop) = (channels.clone(), std::sync::Arc::clone(&stop));
        thread::spawn(move || {
            let (ch, other) = (&channels[dying], &channels[survivor]);
            // The survivor's request is in flight while the other client dies.
            send(other, 1, "wxyz");
            match death {
                Death::HoldingTurn | Death::Written => {
                    ch.client_acquire(None, SLICE, &always).unwrap();
                    holds.store(true, Ordering::SeqCst);
                    if death == Death::Written {
                        ch.region.store64(Word64::RequestSeq, 1);
                        ch.region.write(Field::UserPrompt, 0, b"dead\0");
                    }
                }
                Death::Posted => send(ch, 1, "long"),
                Death::Reading => {
                    send(ch, 1, "abcd");
                    ch.response_written.wait_until(None).unwrap();
                }
            }
            // Dies: the kernel drops its lock on the turn; the worker's presence check finds
            // its pid gone.
            dead.store(true, Ordering::SeqCst);
            let (text, finish) = receive(other, 1, &mut || {});
            assert_eq!(
                (text.as_str(), finish),
                ("s\nwxyz", Finish::Stop),
                "slot {survivor} got another client's answer, or not all of its own"
            );
            // The dead client's slot is free again: a new client gets its turn.
            slot_is_free(ch);
            stop_worker(&channels, &stop);
        })
    };
    let mut engine = LongPrompts {
        echo: echo(),
        reading: [false; 2],
    };
    let (end, served) = serve_two(&channels, oracles, &mut engine, &stop);
    assert_eq!(end, ServeEnd::Stopped);
    let victims = u64::from(matches!(death, Death::Posted | Death::Reading));
    assert_eq!(served, 1 + victims, "dying in slot {dying} at {death:?}");
    clients.join().unwrap();
}
