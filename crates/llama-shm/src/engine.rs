//! What a worker runs for each request: the [`Engine`] trait, and the `echo` engine.
//!
//! The worker loop ([`crate::worker`]) owns the shared memory; an engine only sees owned,
//! validated strings and pushes its answer, piece by piece, into a [`ResponseSink`]. The sink
//! enforces the response limit on a char boundary, so an engine never has to know the wire.

use std::time::{Duration, Instant};

use crate::sync::{Arc, AtomicBool, Ordering};

/// One request, as the engine sees it: both prompts are valid UTF-8 without NUL bytes.
#[derive(Debug, Clone, Copy)]
pub struct EngineRequest<'a> {
    /// The system prompt; empty means "no system message".
    pub system: &'a str,
    /// The user prompt.
    pub user: &'a str,
}

/// Where an engine writes its answer.
pub trait ResponseSink {
    /// Appends `piece` to the answer. Returns `false` once the answer is full: the sink kept
    /// what fits (cut on a char boundary) and the engine should stop generating.
    fn push(&mut self, piece: &str) -> bool;
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The engine finished its answer (end of turn / end of generation token).
    Stop,
    /// The answer hit a length limit (token budget or the response area).
    Length,
    /// The request was cancelled (client gone, worker shutting down, or an explicit cancel).
    Cancelled,
}

/// What an engine reports after a successful generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// Why generation ended.
    pub finish: FinishReason,
    /// Tokens in the evaluated prompt (0 for engines without tokens).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Time spent evaluating the prompt.
    pub prompt_time: Duration,
    /// Time spent generating.
    pub generation_time: Duration,
}

/// A failed request. The worker reports it to the client and stays up for the next one.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The prompt does not fit in the context with room left to answer.
    #[error("prompt is {tokens} tokens, the context holds {ctx} (with room to answer)")]
    PromptTooLong {
        /// Tokens in the templated prompt.
        tokens: u32,
        /// Context size in tokens.
        ctx: u32,
    },
    /// The model failed while evaluating or sampling (a llama.cpp decode error, say).
    #[error("inference failed: {0}")]
    Inference(String),
}

/// A cancellation flag shared between the worker's watcher and the running engine.
///
/// Engines check [`Cancel::is_cancelled`] between tokens (or sleep with
/// [`Cancel::sleep`]), so a dead client or a shutdown signal stops work within one step.
#[derive(Debug, Clone)]
pub struct Cancel(Arc<AtomicBool>);

impl Default for Cancel {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }
}

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the flag; every clone sees it.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Clears the flag (the worker does this before each request).
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Sleeps for `total`, waking early (within 1 ms) if the flag is set. Returns `false`
    /// when it was cancelled.
    pub fn sleep(&self, total: Duration) -> bool {
        let end = Instant::now() + total;
        loop {
            if self.is_cancelled() {
                return false;
            }
            let now = Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(1)));
        }
    }
}

/// An inference backend. One engine serves one request at a time, on one thread.
pub trait Engine {
    /// Answers one request, pushing text into `out` as it is produced.
    ///
    /// # Errors
    /// [`EngineError`] when the request cannot be answered; the worker reports it to the
    /// client and serves the next request.
    fn generate(
        &mut self,
        request: &EngineRequest<'_>,
        out: &mut dyn ResponseSink,
        cancel: &Cancel,
    ) -> Result<Generation, EngineError>;
}

/// The `echo` engine: answers exactly `{system}\n{user}`, optionally repeated and delayed.
///
/// It exists so the whole request cycle, its failures and its tests run without a model.
#[derive(Debug, Clone, Default)]
pub struct EchoEngine {
    /// How many times the answer is repeated (0 and 1 both mean once).
    pub repeat: u32,
    /// How long to wait before answering (cancellable), for failure tests.
    pub delay: Duration,
}

impl Engine for EchoEngine {
    fn generate(
        &mut self,
        request: &EngineRequest<'_>,
        out: &mut dyn ResponseSink,
        cancel: &Cancel,
    ) -> Result<Generation, EngineError> {
        let started = Instant::now();
        if !self.delay.is_zero() && !cancel.sleep(self.delay) {
            return Ok(Generation {
                finish: FinishReason::Cancelled,
                prompt_tokens: 0,
                generated_tokens: 0,
                prompt_time: Duration::ZERO,
                generation_time: started.elapsed(),
            });
        }
        let mut finish = FinishReason::Stop;
        'outer: for _ in 0..self.repeat.max(1) {
            for piece in [request.system, "\n", request.user] {
                if !out.push(piece) {
                    finish = FinishReason::Length;
                    break 'outer;
                }
            }
        }
        Ok(Generation {
            finish,
            prompt_tokens: 0,
            generated_tokens: 0,
            prompt_time: Duration::ZERO,
            generation_time: started.elapsed(),
        })
    }
}
