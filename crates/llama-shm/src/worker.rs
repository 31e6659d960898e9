//! The worker's request loop: take a request, run the engine, answer — until shutdown or a
//! stop (signal, client gone). Generic over the protocol's primitives like [`protocol`].
//!
//! [`protocol`]: crate::protocol

use std::io;
use std::time::Duration;

use crate::engine::{Cancel, Engine, EngineError, EngineRequest, FinishReason, ResponseSink};
use crate::protocol::{Channel, Incoming, Outcome, Region, Semaphore, Usage};
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
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The auth token requests must carry; `None` serves anyone (seed mode).
    pub token: Option<[u8; TOKEN_LEN]>,
    /// How often an idle worker re-checks its stop condition even without a wake-up post.
    pub idle_slice: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            token: None,
            idle_slice: Duration::from_millis(250),
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
    let mut answer = String::with_capacity(RESPONSE_LEN);
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
        if !channel.worker_wait(opts.idle_slice, stop)? {
            return Ok((ServeEnd::Stopped, served));
        }
        let (seq, sys_flags, user_flags) =
            match channel.worker_take(opts.token.as_ref(), &mut system, &mut user, &mut scratch) {
                Incoming::Shutdown => return Ok((ServeEnd::ShutdownRequested, served)),
                Incoming::Refused { seq, status, message } => {
                    tracing::warn!(seq, ?status, "refusing request: {message}");
                    channel.worker_respond_tracked(seq, &Outcome::error(status, &message), &mut dirty)?;
                    continue;
                }
                Incoming::Request { seq, system, user } => (seq, system, user),
            };
        let mut repaired = 0;
        if sys_flags.any() {
            repaired |= RESPONSE_SYSTEM_REPAIRED;
        }
        if user_flags.any() {
            repaired |= RESPONSE_USER_REPAIRED;
        }
        let mut sink = LimitedSink::new(&mut answer, RESPONSE_LEN - 1);
        let result = engine.generate(
            &EngineRequest {
                system: &system,
                user: &user,
            },
            &mut sink,
            cancel,
        );
        let full = sink.is_full();
        let outcome = match &result {
            Ok(g) if g.finish == FinishReason::Cancelled && stop() => Outcome::error(
                StatusCode::ShuttingDown,
                "the worker is shutting down; request not finished",
            ),
            Ok(g) => Outcome {
                status: StatusCode::Ok,
                text: &answer,
                flags: repaired | if full { RESPONSE_TRUNCATED } else { 0 },
                error: "",
                error_args: (0, 0),
                usage: Usage {
                    prompt_tokens: g.prompt_tokens,
                    generated_tokens: g.generated_tokens,
                    prompt_time: g.prompt_time,
                    generation_time: g.generation_time,
                },
                finish: match g.finish {
                    FinishReason::Stop => WireFinish::Stop,
                    FinishReason::Length => WireFinish::Length,
                    FinishReason::Cancelled => WireFinish::Cancelled,
                },
            },
            Err(e @ EngineError::PromptTooLong { tokens, ctx }) => {
                let msg = e.to_string();
                let mut o = Outcome::error(StatusCode::PromptTooLong, "");
                o.error_args = (u64::from(*tokens), u64::from(*ctx));
                // The message must outlive `o`: answer right here.
                o.error = &msg;
                channel.worker_respond_tracked(seq, &o, &mut dirty)?;
                served += 1;
                continue;
            }
            Err(e @ EngineError::Inference(_)) => {
                let msg = e.to_string();
                channel.worker_respond_tracked(
                    seq,
                    &Outcome::error(StatusCode::EngineFailed, &msg),
                    &mut dirty,
                )?;
                served += 1;
                continue;
            }
        };
        channel.worker_respond_tracked(seq, &outcome, &mut dirty)?;
        served += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
