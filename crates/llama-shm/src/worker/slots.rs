//! A worker of several slots, batched: each slot is a channel of its own, waited on by a
//! thread of its own (the seed's protocol, unchanged, on every slot); one engine thread
//! admits the requests they take into a [`BatchEngine`] and steps it, each slot's answer
//! going to its own region through its own sink.
//!
//! ```text
//!  waiter k (one per slot):  ready → wait prompts_written → take ──► engine thread
//!                            ◄── "answered" ─────────────────────────  admit, step…, finish
//! ```
//! A request joins the batch at the next step; a finished, cancelled, timed-out or failed one
//! leaves it at once (its slot is ready again), so no request waits for another to end.

use std::io;
use std::sync::Arc;
use std::time::Duration;

// Threads, channels and flags from the loom façade: under `--cfg loom` the models run this
// loop on loom's (verification/tests/loom_slots.rs); otherwise they are std's.
use crate::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use crate::sync::{mutant, thread, AtomicBool, Mutant, Ordering};

use super::batch::{BatchEngine, BatchSink};
use super::direct::{is_direct, serve_direct, DirectEngine};
use super::engine::{Cancel, EngineError, EngineRequest, Generation, ResponseSink};
use super::serve::{begin_answer, engine_request, finish_answer, repaired_flags, ServeEnd, ServeOptions};
use super::sink::WireSink;
use crate::protocol::{Channel, Clients, Incoming, Outcome, Region, RequestParams, Semaphore};
use crate::wire::layout::RESPONSE_LEN;
use crate::wire::status::{Finish, StatusCode};

/// One slot of a multi-slot worker.
pub struct Slot<'a, S, R> {
    /// Its channel.
    pub channel: &'a Channel<S, R>,
    /// What the worker learns about the slot's clients (see [`Clients`]).
    pub clients: Option<Arc<dyn Clients + Send + Sync>>,
}

/// What a slot's waiter hands the engine thread.
enum Arrival {
    /// Slot `slot` took `incoming` (prompts in `system` and `user`).
    Request {
        slot: usize,
        incoming: Incoming,
        system: String,
        user: String,
    },
    /// A semaphore failed in a waiter.
    Failed(io::Error),
}

/// Serves `slots` with `engine` (of at least as many sequences) until a client asks for
/// shutdown or `stop` returns true. Returns the number of requests answered.
///
/// # Errors
/// Only semaphore failures; engine errors are answered to their slot's client.
///
/// # Panics
/// When the engine holds fewer sequences than there are slots.
pub fn serve_slots<S, R, E>(
    slots: &[Slot<'_, S, R>],
    engine: &mut E,
    opts: &ServeOptions,
    stop: &(dyn Fn() -> bool + Sync),
) -> io::Result<(ServeEnd, u64)>
where
    S: Semaphore + Sync,
    R: Region + Sync,
    E: BatchEngine + ?Sized,
{
    assert!(engine.capacity() >= slots.len(), "fewer sequences than slots");
    // Set on a shutdown request: every waiter and every running answer stops too.
    let quit = AtomicBool::new(false);
    let stopping = || stop() || quit.load(Ordering::SeqCst);
    let per_slot: Vec<ServeOptions> = slots
        .iter()
        .map(|s| ServeOptions {
            clients: s.clients.clone(),
            ..opts.clone()
        })
        .collect();
    let cancels: Vec<Cancel> = slots.iter().map(|_| Cancel::new()).collect();
    thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        let mut go = Vec::with_capacity(slots.len());
        for (k, slot) in slots.iter().enumerate() {
            let (go_tx, go_rx) = mpsc::channel::<Buffers>();
            go.push(go_tx);
            let (tx, o, stopping) = (tx.clone(), &per_slot[k], &stopping);
            thread::spawn_named(scope, format!("llama-shm-slot{k}"), move || {
                waiter(k, slot.channel, o, stopping, &go_rx, &tx);
            })?;
        }
        drop(tx);
        for g in &go {
            let _ = g.send(Buffers::default());
        }
        let mut run = EngineLoop {
            slots,
            per_slot: &per_slot,
            cancels: &cancels,
            stopping: &stopping,
            go: &go,
            spare: slots.iter().map(|_| None).collect(),
            running: slots.iter().map(|_| None).collect(),
            dirty: vec![RESPONSE_LEN; slots.len()],
            served: 0,
        };
        let result = run.serve(engine, &rx, &quit);
        // Waiters end: those waiting for a request at their next slice, those waiting to be
        // told to go on at once.
        quit.store(true, Ordering::SeqCst);
        drop(run);
        drop(go);
        result
    })
}

/// The prompt buffers of a slot: handed to the engine with a request and back with the go
/// for the next one, so a slot allocates its prompts once.
type Buffers = (String, String);

/// A slot's waiter: posts `ready`, waits for a request, takes it, hands it over; again once
/// the engine thread says the slot was answered (and hands its buffers back).
fn waiter<S: Semaphore, R: Region>(
    k: usize,
    ch: &Channel<S, R>,
    opts: &ServeOptions,
    stop: &(dyn Fn() -> bool + Sync),
    go: &Receiver<Buffers>,
    tx: &Sender<Arrival>,
) {
    let mut scratch = Box::new([0u8; 4096]);
    while let Ok((mut system, mut user)) = go.recv() {
        if stop() {
            return;
        }
        let clients = opts.clients.as_deref().map(|c| c as &dyn Clients);
        let woken = ch
            .worker_ready()
            .and_then(|()| ch.worker_wait(opts.idle_slice, stop, clients));
        match woken {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.send(Arrival::Failed(e));
                return;
            }
        }
        let incoming = ch.worker_take(opts.token.as_ref(), &mut system, &mut user, &mut scratch);
        let arrival = Arrival::Request {
            slot: k,
            incoming,
            system,
            user,
        };
        if tx.send(arrival).is_err() {
            return;
        }
    }
}

/// A request in the batch: the sink of its answer and what its prompts' decoding repaired.
struct Running<'a, S, R> {
    sink: WireSink<'a, S, R>,
    repaired: u32,
    /// The engine holds the sequence: its client has not read what is pending yet.
    held: bool,
    /// The engine ended it, but text is still pending: finished once the client has read it.
    ended: Option<Result<Generation, EngineError>>,
}

/// The engine thread's state.
struct EngineLoop<'s, 'a, S, R> {
    slots: &'s [Slot<'a, S, R>],
    per_slot: &'s [ServeOptions],
    cancels: &'s [Cancel],
    stopping: &'s (dyn Fn() -> bool + Sync),
    go: &'s [Sender<Buffers>],
    /// Per slot, the buffers of its request in progress, to hand back with the go.
    spare: Vec<Option<Buffers>>,
    running: Vec<Option<Running<'s, S, R>>>,
    dirty: Vec<usize>,
    served: u64,
}

/// The engine's output, to the running requests' sinks.
struct Dispatch<'r, 's, S, R> {
    running: &'r mut [Option<Running<'s, S, R>>],
    ended: Vec<(usize, Result<Generation, EngineError>)>,
}

impl<S: Semaphore, R: Region> BatchSink for Dispatch<'_, '_, S, R> {
    fn piece(&mut self, seq: usize, piece: &str) -> bool {
        match self.running.get_mut(seq) {
            Some(Some(run)) => run.sink.push(piece),
            _ => false,
        }
    }
    fn done(&mut self, seq: usize, result: Result<Generation, EngineError>) {
        self.ended.push((seq, result));
    }
}

impl<'s, S: Semaphore, R: Region> EngineLoop<'s, '_, S, R> {
    fn serve<E: BatchEngine + ?Sized>(
        &mut self,
        engine: &mut E,
        rx: &Receiver<Arrival>,
        quit: &AtomicBool,
    ) -> io::Result<(ServeEnd, u64)> {
        let idle = self
            .per_slot
            .first()
            .map_or(ServeOptions::default().idle_slice, |o| o.idle_slice);
        // While only held sequences or pending text remain: how often the ring is looked at.
        let short = Duration::from_micros(500);
        loop {
            let active = self.running.iter().any(Option::is_some);
            let flowing = engine.is_busy()
                && self
                    .running
                    .iter()
                    .flatten()
                    .any(|r| !r.held && r.ended.is_none());
            let first = if flowing {
                rx.try_recv().ok()
            } else if active {
                rx.recv_timeout(short).ok()
            } else if (self.stopping)() {
                self.refuse_waiting(rx)?;
                let end = if quit.load(Ordering::SeqCst) {
                    ServeEnd::ShutdownRequested
                } else {
                    ServeEnd::Stopped
                };
                return Ok((end, self.served));
            } else {
                match rx.recv_timeout(idle) {
                    Ok(a) => Some(a),
                    Err(RecvTimeoutError::Timeout) => None,
                    // Every waiter ended (each saw the stop): nothing more can arrive.
                    Err(RecvTimeoutError::Disconnected) => return Ok((ServeEnd::Stopped, self.served)),
                }
            };
            for arrival in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                self.arrive(arrival, engine, quit)?;
            }
            // A request whose sink refuses more (cancelled, past its deadline, its client gone,
            // the worker stopping) leaves the batch now, whether or not the engine would push
            // again (it may be reading a long prompt, or make no progress at all).
            // Text a slow client had no room for goes out as its ring frees (no wait: every
            // other slot runs on this thread); its sequence goes on, or its answer ends, once
            // nothing is pending.
            for slot in 0..self.running.len() {
                let Some(run) = self.running[slot].as_mut() else {
                    continue;
                };
                let flushed = run.sink.flush();
                let refused = run.sink.check().is_some();
                if refused && !mutant(Mutant::RefusalNotAborted) {
                    engine.abort(slot);
                    self.end(slot, &Ok(Generation::new(Finish::Cancelled)))?;
                } else if flushed && !refused {
                    if let Some(result) = run.ended.take() {
                        self.end(slot, &result)?;
                    } else if run.held {
                        run.held = false;
                        engine.hold(slot, false);
                    }
                }
            }
            if engine.is_busy() {
                let mut out = Dispatch {
                    running: &mut self.running,
                    ended: Vec::new(),
                };
                engine.step(&mut out);
                for (slot, result) in out.ended {
                    match self.running.get_mut(slot).and_then(Option::as_mut) {
                        Some(run) if !run.sink.pending.is_empty() => run.ended = Some(result),
                        _ => self.end(slot, &result)?,
                    }
                }
                // A client that reads slower than its sequence generates: hold the sequence.
                for (slot, run) in self.running.iter_mut().enumerate() {
                    if let Some(run) = run.as_mut() {
                        if !run.held && run.ended.is_none() && !run.sink.pending.is_empty() {
                            run.held = true;
                            engine.hold(slot, true);
                        }
                    }
                }
            }
        }
    }

    /// Admits, refuses or acts on what a slot took.
    fn arrive<E: BatchEngine + ?Sized>(
        &mut self,
        arrival: Arrival,
        engine: &mut E,
        quit: &AtomicBool,
    ) -> io::Result<()> {
        let (slot, incoming, system, user) = match arrival {
            Arrival::Failed(e) => return Err(e),
            Arrival::Request {
                slot,
                incoming,
                system,
                user,
            } => (slot, incoming, system, user),
        };
        let channel = self.slots[slot].channel;
        // The engine copies what it needs at `admit`: the buffers go back with the slot's go.
        let (system, user) = &*self.spare[slot].insert((system, user));
        match incoming {
            Incoming::Shutdown => {
                // Every running answer ends as the worker's stop ends it (`ShuttingDown`).
                quit.store(true, Ordering::SeqCst);
            }
            Incoming::Refused {
                seq,
                status,
                message,
                seed_stream,
            } => {
                tracing::warn!(slot, seq, ?status, "refusing request: {message}");
                let params = RequestParams {
                    seed_stream,
                    ..RequestParams::default()
                };
                let refusal = Outcome::error(status, &message);
                channel.worker_respond_tracked(seq, params, &refusal, &mut self.dirty[slot])?;
                self.release(slot);
            }
            Incoming::Request {
                seq,
                system: system_flags,
                user: user_flags,
                params,
                area,
            } => {
                let request = engine_request(system, user, params, area.as_ref());
                if let Some(area) = area.as_ref().filter(|_| is_direct(params)) {
                    // Between steps: the running sequences wait for it.
                    let cancel = &self.cancels[slot];
                    let stopping = (self.stopping)();
                    serve_direct(
                        channel,
                        seq,
                        params,
                        area,
                        &request,
                        cancel,
                        stopping,
                        &mut Batched(&mut *engine),
                        &mut self.dirty[slot],
                    )?;
                    self.served += 1;
                    self.release(slot);
                    return Ok(());
                }
                let repaired = repaired_flags(system_flags, user_flags);
                let mut sink = begin_answer(
                    channel,
                    seq,
                    params,
                    &self.cancels[slot],
                    self.stopping,
                    &self.per_slot[slot],
                );
                let admitted = match sink.check() {
                    // Cancelled before it started: no work.
                    Some(_) => Err(Ok(Generation::new(Finish::Cancelled))),
                    None => engine.admit(slot, &request).map_err(Err),
                };
                match admitted {
                    Ok(()) => {
                        sink.defer = true;
                        self.running[slot] = Some(Running {
                            sink,
                            repaired,
                            held: false,
                            ended: None,
                        });
                    }
                    Err(result) => {
                        finish_answer(sink, &result, repaired, &mut self.dirty[slot])?;
                        self.served += 1;
                        self.release(slot);
                    }
                }
            }
        }
        Ok(())
    }

    /// Finishes the answer of `slot` whose sequence ended, and lets its waiter go on.
    fn end(&mut self, slot: usize, result: &Result<Generation, EngineError>) -> io::Result<()> {
        let Some(run) = self.running.get_mut(slot).and_then(Option::take) else {
            return Ok(());
        };
        finish_answer(run.sink, result, run.repaired, &mut self.dirty[slot])?;
        self.served += 1;
        self.release(slot);
        Ok(())
    }

    /// Lets the waiter of `slot` go on, with its buffers.
    fn release(&mut self, slot: usize) {
        let _ = self.go[slot].send(self.spare[slot].take().unwrap_or_default());
    }

    /// Answers requests taken but not started when the worker stops (`ShuttingDown`).
    fn refuse_waiting(&mut self, rx: &Receiver<Arrival>) -> io::Result<()> {
        while let Ok(arrival) = rx.try_recv() {
            if let Arrival::Request {
                slot,
                incoming: Incoming::Request { seq, params, .. },
                ..
            } = arrival
            {
                let o = Outcome::error(
                    StatusCode::ShuttingDown,
                    "the worker is shutting down; request not started",
                );
                self.slots[slot]
                    .channel
                    .worker_respond_tracked(seq, params, &o, &mut self.dirty[slot])?;
            }
        }
        Ok(())
    }
}

/// A [`BatchEngine`] answering direct requests (between steps).
struct Batched<'e, E: ?Sized>(&'e mut E);

impl<E: BatchEngine + ?Sized> DirectEngine for Batched<'_, E> {
    fn embed(
        &mut self,
        texts: &[String],
        max: usize,
        cancel: &Cancel,
    ) -> Result<crate::protocol::Embeddings, EngineError> {
        self.0.embed(texts, max, cancel)
    }
    fn count(&mut self, request: &EngineRequest<'_>, text: Option<&str>) -> Result<u32, EngineError> {
        self.0.count_tokens(request, text)
    }
}
