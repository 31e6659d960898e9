//! The worker's request loop: take a request, run the engine, answer — until shutdown or a
//! stop (signal, client gone). Generic over the protocol's primitives like [`protocol`].
//!
//! [`protocol`]: crate::protocol

use std::io;
use std::time::{Duration, Instant};

use crate::engine::{Cancel, Engine, EngineError, EngineRequest, FinishReason, Generation, ResponseSink};
use crate::protocol::{Channel, Clients, Incoming, Outcome, Region, Room, Semaphore, StreamState, Usage};
use crate::wire::layout::{
    RESPONSE_LEN, RESPONSE_SYSTEM_REPAIRED, RESPONSE_TRUNCATED, RESPONSE_USER_REPAIRED, TOKEN_LEN,
};
use crate::wire::status::{StatusCode, WireFinish};
use crate::wire::text::floor_char_boundary;

/// A [`ResponseSink`] that keeps at most `limit` bytes, cut on a char boundary, NUL-free.
#[derive(Debug)]
pub struct LimitedSink<'a> {
    buf: &'a mut String,
    limit: usize,
    full: bool,
}

impl<'a> LimitedSink<'a> {
    /// A sink writing into `buf` (cleared first) up to `limit` bytes.
    pub fn new(buf: &'a mut String, limit: usize) -> Self {
        buf.clear();
        Self {
            buf,
            limit,
            full: false,
        }
    }
    /// Whether a push did not fit.
    pub fn is_full(&self) -> bool {
        self.full
    }
}

impl ResponseSink for LimitedSink<'_> {
    fn push(&mut self, piece: &str) -> bool {
        if self.full {
            return false;
        }
        // The wire is a C string: a NUL would end the answer early for seed clients.
        let mut rest = piece;
        while let Some(nul) = rest.find('\0') {
            if !self.append(&rest[..nul]) {
                return false;
            }
            rest = &rest[nul + 1..];
        }
        self.append(rest)
    }
}

impl LimitedSink<'_> {
    fn append(&mut self, s: &str) -> bool {
        let room = self.limit - self.buf.len();
        if s.len() <= room {
            self.buf.push_str(s);
            return true;
        }
        self.buf.push_str(&s[..floor_char_boundary(s, room)]);
        self.full = true;
        false
    }
}

/// How [`serve`] runs.
#[derive(Clone)]
pub struct ServeOptions {
    /// The auth token requests must carry; `None` serves anyone (seed mode).
    pub token: Option<[u8; TOKEN_LEN]>,
    /// How often an idle worker re-checks its stop condition even without a wake-up post.
    pub idle_slice: Duration,
    /// How long the worker waits for a client that stopped reading a full ring before it
    /// gives the request up (finish `Error`).
    pub stall_limit: Duration,
    /// How the worker pauses while the ring is full (`attempt` counts from 0). The default
    /// spins briefly, then sleeps up to 1 ms (under loom it yields to the model checker).
    pub pause: fn(attempt: u32),
    /// What a worker shared by several clients learns about them (see [`Clients`]); `None`
    /// for a worker spawned for one client, whose death ends the worker anyway.
    /// (A std `Arc`: this is configuration handed to `serve`, not state the models explore.)
    pub clients: Option<std::sync::Arc<dyn Clients + Send + Sync>>,
    /// How often, while an answer is generated, the worker asks [`Clients::requester_present`].
    pub presence_every: Duration,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("token", &self.token.map(|_| "<set>"))
            .field("idle_slice", &self.idle_slice)
            .field("stall_limit", &self.stall_limit)
            .field("clients", &self.clients.as_ref().map(|_| "<watched>"))
            .field("presence_every", &self.presence_every)
            .finish_non_exhaustive()
    }
}

#[cfg(loom)]
fn default_pause(_attempt: u32) {
    // Under the model checker a pause is a yield it knows about, so it runs the reader.
    loom::thread::yield_now();
}

#[cfg(not(loom))]
fn default_pause(attempt: u32) {
    if attempt < 64 {
        std::hint::spin_loop();
    } else if attempt < 128 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(u64::from(attempt - 127).min(1000)));
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            token: None,
            idle_slice: Duration::from_millis(250),
            stall_limit: Duration::from_secs(30),
            pause: default_pause,
            clients: None,
            presence_every: Duration::from_millis(100),
        }
    }
}

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// A client set the shutdown flag.
    ShutdownRequested,
    /// `stop` returned true (a signal, or the spawning client is gone).
    Stopped,
}

/// Why the sink refused more text before the engine finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The seed's 32 767 bytes are full.
    Full,
    /// The client cancelled the request.
    Cancelled,
    /// The request's deadline passed.
    Deadline,
    /// The worker is stopping.
    Stopping,
    /// The client did not read a full ring within the stall limit.
    Stalled,
    /// The client's read cursor is impossible.
    Garbled,
    /// The client that sent the request is gone: nobody will read the answer.
    ClientGone,
}

/// The [`ResponseSink`] of a request: writes pieces straight into the response area (the ring
/// of an extended client, or the seed's C string), publishes them (each piece when the client
/// streams; otherwise only when the ring is full), and refuses more once the request is
/// cancelled, past its deadline, or the worker is stopping — setting `cancel`, so an engine
/// that checks it between tokens stops within one token.
struct WireSink<'a, S, R> {
    channel: &'a Channel<S, R>,
    st: StreamState,
    cancel: &'a Cancel,
    stop: &'a dyn Fn() -> bool,
    opts: &'a ServeOptions,
    refused: Option<Refusal>,
    error: Option<io::Error>,
    /// When the request was taken, and when the requester's presence was last asked.
    since: Instant,
    asked: Instant,
}

impl<S: Semaphore, R: Region> WireSink<'_, S, R> {
    fn check(&mut self) -> Option<Refusal> {
        if self.refused.is_some() {
            return self.refused;
        }
        let why = if (self.stop)() {
            Refusal::Stopping
        } else if self.channel.worker_cancel_requested(self.st.seq()) {
            Refusal::Cancelled
        } else if self.cancel.deadline_passed() {
            Refusal::Deadline
        } else if self.requester_gone() {
            Refusal::ClientGone
        } else {
            return None;
        };
        self.refuse(why);
        Some(why)
    }

    /// Asks [`Clients::requester_present`], at most every `presence_every`.
    fn requester_gone(&mut self) -> bool {
        let Some(clients) = &self.opts.clients else {
            return false;
        };
        let now = Instant::now();
        if now.saturating_duration_since(self.asked) < self.opts.presence_every {
            return false;
        }
        self.asked = now;
        !clients.requester_present(self.st.seq(), self.since)
    }

    fn refuse(&mut self, why: Refusal) {
        self.refused = Some(why);
        self.cancel.cancel();
    }

    /// Publishes what was written; a failed post ends the request (the worker is stopping).
    fn publish(&mut self) -> bool {
        match self.channel.worker_stream_publish(&mut self.st) {
            Ok(()) => true,
            Err(e) => {
                self.error = Some(e);
                self.refuse(Refusal::Stopping);
                false
            }
        }
    }

    /// Appends `s` (NUL-free), waiting for ring space as needed.
    fn append(&mut self, mut s: &str) -> bool {
        let mut attempt = 0u32;
        let mut stalled_since: Option<Instant> = None;
        while !s.is_empty() {
            let room = match self.channel.worker_stream_room(&mut self.st) {
                Room::Free(n) => n,
                Room::Garbled => {
                    self.refuse(Refusal::Garbled);
                    return false;
                }
            };
            let cut = floor_char_boundary(s, room.min(s.len()));
            if cut > 0 {
                self.channel
                    .worker_stream_write(&mut self.st, &s.as_bytes()[..cut]);
                s = &s[cut..];
                attempt = 0;
                stalled_since = None;
                continue;
            }
            if !self.st.is_ring() {
                self.refuse(Refusal::Full);
                return false;
            }
            // The ring is full: let the client see what is there, then wait for it to read.
            if !self.publish() || self.check().is_some() {
                return false;
            }
            let since = *stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.opts.stall_limit {
                self.refuse(Refusal::Stalled);
                return false;
            }
            (self.opts.pause)(attempt);
            attempt = attempt.saturating_add(1);
        }
        true
    }
}

impl<S: Semaphore, R: Region> ResponseSink for WireSink<'_, S, R> {
    fn push(&mut self, piece: &str) -> bool {
        if self.check().is_some() {
            return false;
        }
        // The wire is a C string for seed clients: a NUL would end the answer early.
        piece.split('\0').all(|part| self.append(part)) && (!self.st.is_streaming() || self.publish())
    }
}

/// Serves requests on `channel` with `engine` until a client asks for shutdown or `stop`
/// returns true. `cancel` is handed to the engine; whoever makes `stop` true should also set
/// it, so a running generation ends within one step. Returns the number of requests answered.
///
/// Each answer is written straight into the response area as the engine produces it: for an
/// extended client through the ring (no length cap; published piece by piece when it
/// streams), for a seed client as one C string of at most 32 767 bytes. A client's cancel, the
/// request's deadline and `stop` end generation within one piece, with the finish reason said.
///
/// # Errors
/// Only semaphore failures; engine errors are answered to the client and serving goes on.
pub fn serve<S, R, E>(
    channel: &Channel<S, R>,
    engine: &mut E,
    opts: &ServeOptions,
    stop: &dyn Fn() -> bool,
    cancel: &Cancel,
) -> io::Result<(ServeEnd, u64)>
where
    S: Semaphore,
    R: Region,
    E: Engine + ?Sized,
{
    let mut system = String::with_capacity(4096);
    let mut user = String::with_capacity(4096);
    let mut scratch = Box::new([0u8; 4096]);
    let mut served = 0u64;
    // Bytes of the response field earlier answers may have left non-zero (unknown at first).
    let mut dirty = RESPONSE_LEN;
    loop {
        // Not ready for another request once told to stop (a client would take the turn and
        // then find the worker gone).
        if stop() {
            return Ok((ServeEnd::Stopped, served));
        }
        channel.worker_ready()?;
        let clients = opts.clients.as_deref().map(|c| c as &dyn Clients);
        if !channel.worker_wait(opts.idle_slice, stop, clients)? {
            return Ok((ServeEnd::Stopped, served));
        }
        let (seq, sys_flags, user_flags, params) =
            match channel.worker_take(opts.token.as_ref(), &mut system, &mut user, &mut scratch) {
                Incoming::Shutdown => return Ok((ServeEnd::ShutdownRequested, served)),
                Incoming::Refused { seq, status, message } => {
                    tracing::warn!(seq, ?status, "refusing request: {message}");
                    channel.worker_respond_tracked(seq, &Outcome::error(status, &message), &mut dirty)?;
                    continue;
                }
                Incoming::Request {
                    seq,
                    system,
                    user,
                    params,
                } => (seq, system, user, params),
            };
        let mut repaired = 0;
        if sys_flags.any() {
            repaired |= RESPONSE_SYSTEM_REPAIRED;
        }
        if user_flags.any() {
            repaired |= RESPONSE_USER_REPAIRED;
        }
        // A fresh flag for this request, unless a stop arrived meanwhile.
        cancel.reset();
        if stop() {
            cancel.cancel();
        }
        let taken_at = Instant::now();
        if params.deadline_us != 0 {
            cancel.set_deadline(taken_at.checked_add(Duration::from_micros(params.deadline_us)));
        }
        let mut sink = WireSink {
            channel,
            st: channel.worker_stream_begin(seq, params),
            cancel,
            stop,
            opts,
            refused: None,
            error: None,
            since: taken_at,
            asked: taken_at,
        };
        // Cancelled before it started (the client gave up while we were busy): no work.
        let result = match sink.check() {
            Some(_) => Ok(Generation::new(FinishReason::Cancelled)),
            None => engine.generate(
                &EngineRequest {
                    system: &system,
                    user: &user,
                    max_tokens: (params.max_tokens != 0).then_some(params.max_tokens),
                },
                &mut sink,
                cancel,
            ),
        };
        // The engine may have stopped on the flag without pushing again: say why (a flag set
        // by nobody the sink knows of is the worker's own stop path).
        if sink.refused.is_none() && cancel.is_cancelled() {
            sink.refused = sink.check().or(Some(Refusal::Stopping));
        }
        let WireSink {
            st, refused, error, ..
        } = sink;
        if let Some(e) = error {
            return Err(e);
        }
        let usage = |g: &Generation| Usage {
            prompt_tokens: g.prompt_tokens,
            generated_tokens: g.generated_tokens,
            prompt_time: g.prompt_time,
            generation_time: g.generation_time,
            cached_tokens: g.cached_tokens,
        };
        let message;
        let outcome = match (&result, refused) {
            (_, Some(Refusal::Stopping)) => {
                let mut o = Outcome::error(
                    StatusCode::ShuttingDown,
                    "the worker is shutting down; request not finished",
                );
                o.finish = WireFinish::Cancelled;
                o
            }
            (_, Some(Refusal::Stalled)) => Outcome::error(
                StatusCode::EngineFailed,
                "the client stopped reading the answer; request given up",
            ),
            (_, Some(Refusal::ClientGone)) => {
                tracing::warn!(
                    seq,
                    "the client of the request in progress is gone; request given up"
                );
                let mut o = Outcome::error(StatusCode::EngineFailed, "the client is gone; request given up");
                o.finish = WireFinish::Cancelled;
                o
            }
            (_, Some(Refusal::Garbled)) => Outcome::error(
                StatusCode::BadRequest,
                "the stream's read cursor is impossible: the region was changed in transit",
            ),
            (Ok(g), refused) => Outcome {
                status: StatusCode::Ok,
                text: "",
                flags: repaired
                    | if refused == Some(Refusal::Full) {
                        RESPONSE_TRUNCATED
                    } else {
                        0
                    },
                error: "",
                error_args: (0, 0),
                usage: usage(g),
                finish: match (refused, g.finish) {
                    (Some(Refusal::Cancelled), _) => WireFinish::Cancelled,
                    (Some(Refusal::Deadline), _) => WireFinish::Deadline,
                    (Some(Refusal::Full), _) | (_, FinishReason::Length) => WireFinish::Length,
                    (_, FinishReason::Stop) => WireFinish::Stop,
                    (_, FinishReason::Cancelled) => WireFinish::Cancelled,
                },
            },
            (Err(e @ EngineError::PromptTooLong { tokens, ctx }), _) => {
                message = e.to_string();
                let mut o = Outcome::error(StatusCode::PromptTooLong, &message);
                o.error_args = (u64::from(*tokens), u64::from(*ctx));
                o
            }
            (Err(e @ EngineError::Inference(_)), _) => {
                message = e.to_string();
                Outcome::error(StatusCode::EngineFailed, &message)
            }
        };
        channel.worker_finish(&outcome, st, &mut dirty)?;
        served += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EchoEngine;
    use crate::protocol::mem::{CountingSemaphore, MemRegion};
    use crate::protocol::{PreparedRequest, RequestParams};
    use crate::wire::layout::{ObjectKind, Word64, REQUEST_STREAM};
    use crate::wire::text::Policy;

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
        let mut req = PreparedRequest::encode("s", "abcdefghij", Policy::Truncate).unwrap();
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
            ("s\nabcdefghij", WireFinish::Stop, true)
        );
        assert_eq!(posts, 6, "5 pieces (s, \\n, abcd, efgh, ij) and the end");
        let (r, posts) = serve_one(0, false);
        assert_eq!((r.text.as_str(), r.intact), ("s\nabcdefghij", true));
        assert_eq!(posts, 1);
        let (r, _) = serve_one(REQUEST_STREAM, true);
        assert_eq!(
            (r.text.as_str(), r.finish, r.intact),
            ("", WireFinish::Cancelled, true)
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
            (StatusCode::EngineFailed, WireFinish::Error),
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
}
