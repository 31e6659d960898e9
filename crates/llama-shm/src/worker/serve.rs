//! The worker's request loop: take a request, run the engine, answer — until shutdown or a
//! stop (signal, client gone). Generic over the protocol's primitives like [`protocol`].
//!
//! [`protocol`]: crate::protocol

use std::io;
use std::time::{Duration, Instant};

use crate::protocol::{AreaRequest, Channel, Clients, Incoming, Outcome, Region, RequestParams, Semaphore};
use crate::wire::layout::{
    Word32, OPTION_DROP_OLDEST, OPTION_SEED, RESPONSE_LEN, RESPONSE_SYSTEM_REPAIRED, RESPONSE_TRUNCATED,
    RESPONSE_USER_REPAIRED, TOKEN_LEN,
};
use crate::wire::status::{Finish, StatusCode};
use crate::wire::text::DecodeFlags;
use crate::worker::engine::{Cancel, Engine, EngineError, EngineRequest, Generation};

use super::direct::{is_direct, serve_direct, OneEngine};
use super::sink::{Refusal, WireSink};

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
        let (seq, sys_flags, user_flags, params, area) =
            match channel.worker_take(opts.token.as_ref(), &mut system, &mut user, &mut scratch) {
                Incoming::Shutdown => return Ok((ServeEnd::ShutdownRequested, served)),
                Incoming::Refused {
                    seq,
                    status,
                    message,
                    seed_stream,
                } => {
                    tracing::warn!(seq, ?status, "refusing request: {message}");
                    let params = RequestParams {
                        seed_stream,
                        ..RequestParams::default()
                    };
                    let refusal = Outcome::error(status, &message);
                    channel.worker_respond_tracked(seq, params, &refusal, &mut dirty)?;
                    continue;
                }
                Incoming::Request {
                    seq,
                    system,
                    user,
                    params,
                    area,
                } => (seq, system, user, params, area),
            };
        let request = engine_request(&system, &user, params, area.as_ref());
        if let Some(area) = area.as_ref().filter(|_| is_direct(params)) {
            serve_direct(
                channel,
                seq,
                params,
                area,
                &request,
                cancel,
                stop(),
                &mut OneEngine(&mut *engine),
                &mut dirty,
            )?;
            served += 1;
            continue;
        }
        let repaired = repaired_flags(sys_flags, user_flags);
        let mut sink = begin_answer(channel, seq, params, cancel, stop, opts);
        // Cancelled before it started (the client gave up while we were busy): no work.
        let result = match sink.check() {
            Some(_) => Ok(Generation::new(Finish::Cancelled)),
            None => engine.generate(&request, &mut sink, cancel),
        };
        finish_answer(sink, &result, repaired, &mut dirty)?;
        served += 1;
    }
}

/// The engine's view of a request: its prompts, or its conversation and constraint from the
/// request area, with its budget, seed and overflow rule.
pub(super) fn engine_request<'a>(
    system: &'a str,
    user: &'a str,
    params: RequestParams,
    area: Option<&'a AreaRequest>,
) -> EngineRequest<'a> {
    EngineRequest {
        system,
        user,
        messages: area.map_or(&[][..], |a| &a.messages[..]),
        constraint: area.and_then(|a| a.constraint.as_ref()),
        drop_oldest: params.options & OPTION_DROP_OLDEST != 0,
        max_tokens: (params.max_tokens != 0).then_some(params.max_tokens),
        seed: (params.options & OPTION_SEED != 0).then_some(params.sample_seed),
    }
}

/// The outcome that reports engine error `e` (whose text is `message`).
pub(super) fn error_outcome<'a>(e: &EngineError, message: &'a str) -> Outcome<'a> {
    match e {
        EngineError::PromptTooLong { tokens, limit } => {
            let mut o = Outcome::error(StatusCode::PromptTooLong, message);
            o.error_args = (u64::from(*tokens), u64::from(*limit));
            o
        }
        EngineError::Inference(_) => Outcome::error(StatusCode::EngineFailed, message),
        EngineError::InvalidConstraint(_) => Outcome::error(StatusCode::InvalidConstraint, message),
        EngineError::Unsupported(_) => Outcome::error(StatusCode::Unsupported, message),
    }
}

/// The `RESPONSE_*_REPAIRED` flags for what decoding the prompts noticed.
pub(super) fn repaired_flags(system: DecodeFlags, user: DecodeFlags) -> u32 {
    let mut repaired = 0;
    if system.any() {
        repaired |= RESPONSE_SYSTEM_REPAIRED;
    }
    if user.any() {
        repaired |= RESPONSE_USER_REPAIRED;
    }
    repaired
}

/// Starts the answer to request `seq`: `cancel` reset for it (set again at once if a stop
/// arrived meanwhile) with the request's deadline, and the sink that writes the answer.
pub(super) fn begin_answer<'a, S: Semaphore, R: Region>(
    channel: &'a Channel<S, R>,
    seq: u64,
    params: RequestParams,
    cancel: &'a Cancel,
    stop: &'a dyn Fn() -> bool,
    opts: &'a ServeOptions,
) -> WireSink<'a, S, R> {
    cancel.reset();
    if stop() {
        cancel.cancel();
    }
    let taken_at = Instant::now();
    channel.region.store32(Word32::SlotBusy, 1);
    if params.deadline_us != 0 {
        cancel.set_deadline(taken_at.checked_add(Duration::from_micros(params.deadline_us)));
    }
    WireSink {
        channel,
        st: channel.worker_stream_begin(seq, params),
        cancel,
        stop,
        opts,
        refused: None,
        error: None,
        since: taken_at,
        asked: taken_at,
        defer: false,
        pending: String::new(),
        stalled_since: None,
    }
}

/// Ends the answer `sink` was writing: the outcome from the engine's `result` and why the sink
/// refused more (if it did), then [`Channel::worker_finish`].
///
/// # Errors
/// A semaphore failure, the sink's or the final post's.
pub(super) fn finish_answer<S: Semaphore, R: Region>(
    mut sink: WireSink<'_, S, R>,
    result: &Result<Generation, EngineError>,
    repaired: u32,
    dirty: &mut usize,
) -> io::Result<()> {
    sink.drain_pending();
    // The engine may have stopped on the flag without pushing again: say why (a flag set
    // by nobody the sink knows of is the worker's own stop path).
    if sink.refused.is_none() && sink.cancel.is_cancelled() {
        sink.refused = sink.check().or(Some(Refusal::Stopping));
    }
    let WireSink {
        channel,
        st,
        refused,
        error,
        ..
    } = sink;
    if let Some(e) = error {
        return Err(e);
    }
    let seq = st.seq();
    let message;
    let outcome = match (result, refused) {
        (_, Some(Refusal::Stopping)) => {
            let mut o = Outcome::error(
                StatusCode::ShuttingDown,
                "the worker is shutting down; request not finished",
            );
            o.finish = Finish::Cancelled;
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
            o.finish = Finish::Cancelled;
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
            usage: g.usage,
            finish: match (refused, g.finish) {
                (Some(Refusal::Cancelled), _) => Finish::Cancelled,
                (Some(Refusal::Deadline), _) => Finish::Deadline,
                (Some(Refusal::Full), _) | (_, Finish::Length) => Finish::Length,
                (_, finish) => finish,
            },
            dropped_messages: g.dropped_messages,
            result: &[],
        },
        (Err(e), _) => {
            message = e.to_string();
            error_outcome(e, &message)
        }
    };
    // The status view's counters (read by `llama-shm status`; nobody acts on them).
    let r = &channel.region;
    r.store32(Word32::SlotServed, r.load32(Word32::SlotServed).wrapping_add(1));
    r.store32(
        Word32::SlotGenerated,
        r.load32(Word32::SlotGenerated)
            .wrapping_add(outcome.usage.generated_tokens),
    );
    r.store32(Word32::SlotBusy, 0);
    channel.worker_finish(&outcome, st, dirty)
}
