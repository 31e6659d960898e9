//! What a worker runs for each request: the [`Engine`] trait, and the `echo` engine.
//!
//! The worker loop owns the shared memory; an engine only sees owned,
//! validated strings and pushes its answer, piece by piece, into a [`ResponseSink`]. The sink
//! enforces the response limit on a char boundary, so an engine never has to know the wire.

use std::time::{Duration, Instant};

use crate::protocol::{Constraint, Embeddings, Message, Usage};
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};
use crate::wire::status::Finish;

/// One request, as the engine sees it: every text is valid UTF-8 without NUL bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineRequest<'a> {
    /// The system prompt; empty means "no system message" (unused when `messages` is not
    /// empty).
    pub system: &'a str,
    /// The user prompt (unused when `messages` is not empty).
    pub user: &'a str,
    /// A conversation to answer instead of the two prompts (rendered with the model's chat
    /// template); empty for a two-prompt request.
    pub messages: &'a [Message],
    /// What the answer must match. An engine that cannot apply it fails with
    /// [`EngineError::InvalidConstraint`] or [`EngineError::Unsupported`] before it generates
    /// anything: never an unconstrained answer.
    pub constraint: Option<&'a Constraint>,
    /// A conversation over the context loses its oldest turns (reported in
    /// [`Generation::dropped_messages`]) instead of failing with
    /// [`EngineError::PromptTooLong`].
    pub drop_oldest: bool,
    /// Most tokens to generate for this request (the engine's own limit applies too).
    pub max_tokens: Option<u32>,
    /// Sampling seed for this request (`None`: the engine's own sampler goes on).
    pub seed: Option<u32>,
}

impl EngineRequest<'_> {
    /// The conversation this request is: its messages, or the two prompts as a system
    /// message (when not empty) and a user message.
    pub fn conversation(&self) -> Vec<Message> {
        if self.messages.is_empty() {
            Message::from_prompts(self.system, self.user)
        } else {
            self.messages.to_vec()
        }
    }
}

/// Where an engine writes its answer.
pub trait ResponseSink {
    /// Appends `piece` to the answer. Returns `false` once the answer is full: the sink kept
    /// what fits (cut on a char boundary) and the engine should stop generating.
    fn push(&mut self, piece: &str) -> bool;
}

/// What an engine reports after a successful generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// Why generation ended: [`Finish::Stop`] (end of turn / end of generation),
    /// [`Finish::Length`] (a token budget or the response area) or [`Finish::Cancelled`]
    /// (client gone, worker stopping, or an explicit cancel). The worker reports a deadline
    /// or a cut answer itself; any other value is passed to the client as it is.
    pub finish: Finish,
    /// What it took (zeros for engines without tokens).
    pub usage: Usage,
    /// Messages dropped from the front of the conversation to fit the context (with
    /// [`EngineRequest::drop_oldest`]).
    pub dropped_messages: u32,
}

impl Generation {
    /// A generation that ended with `finish` having done nothing yet (usage zero); engines
    /// fill in what they did.
    pub fn new(finish: Finish) -> Self {
        Self {
            finish,
            usage: Usage::default(),
            dropped_messages: 0,
        }
    }
}

/// A failed request. The worker reports it to the client and stays up for the next one.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The prompt does not fit in the context with room left to answer.
    #[error("prompt is {tokens} tokens, {} over the {limit} the context takes with room to answer", tokens.saturating_sub(*limit))]
    PromptTooLong {
        /// Tokens in the templated prompt.
        tokens: u32,
        /// The most prompt tokens the engine takes (its context less room to answer).
        limit: u32,
    },
    /// The model failed while evaluating or sampling (a llama.cpp decode error, say).
    #[error("inference failed: {0}")]
    Inference(String),
    /// The request's JSON schema or grammar cannot be compiled (nothing was generated).
    #[error("{0}")]
    InvalidConstraint(String),
    /// The engine cannot do what the request asks (the message says what).
    #[error("{0}")]
    Unsupported(String),
}

/// A cancellation flag shared between the worker's watcher and the running engine, with the
/// running request's deadline.
///
/// Engines check [`Cancel::is_cancelled`] between tokens (or sleep with
/// [`Cancel::sleep`]), so a dead client, a shutdown signal, a client's cancel or the request's
/// deadline stops work within one step.
#[derive(Debug, Clone)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Debug)]
struct CancelInner {
    flag: AtomicBool,
    /// When the running request's deadline is: nanoseconds after `base`, 0 for none. One
    /// atomic, so the check before every piece takes no lock (and a request without a
    /// deadline reads no clock).
    deadline_ns: AtomicU64,
    base: Instant,
}

impl Default for Cancel {
    fn default() -> Self {
        Self(Arc::new(CancelInner {
            flag: AtomicBool::new(false),
            deadline_ns: AtomicU64::new(0),
            base: Instant::now(),
        }))
    }
}

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the flag; every clone sees it.
    pub fn cancel(&self) {
        self.0.flag.store(true, Ordering::SeqCst);
    }
    /// Clears the flag and the deadline (the worker does this before each request).
    pub fn reset(&self) {
        self.set_deadline(None);
        self.0.flag.store(false, Ordering::SeqCst);
    }
    /// Sets the running request's deadline (`None`: none).
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        // At least 1 (0 is "none"): a deadline at or before `base` has passed already.
        let ns = deadline.map_or(0, |d| {
            u64::try_from(d.saturating_duration_since(self.0.base).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        self.0.deadline_ns.store(ns, Ordering::SeqCst);
    }
    /// Whether the running request's deadline has passed.
    pub fn deadline_passed(&self) -> bool {
        match self.0.deadline_ns.load(Ordering::SeqCst) {
            0 => false,
            ns => self.0.base.elapsed() >= Duration::from_nanos(ns),
        }
    }
    /// Whether the flag is set or the deadline passed.
    pub fn is_cancelled(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst) || self.deadline_passed()
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

    /// One vector per text, pooled as the model defines (mean over the tokens for a model
    /// that defines none), L2-normalised, for as many of `texts` (from the first) as fit in
    /// `max_values` numbers; at least one unless it fails.
    ///
    /// # Errors
    /// [`EngineError::Unsupported`] by default: the engine has no embeddings.
    fn embed(
        &mut self,
        texts: &[String],
        max_values: usize,
        cancel: &Cancel,
    ) -> Result<Embeddings, EngineError> {
        let _ = (texts, max_values, cancel);
        Err(no_embeddings())
    }

    /// How many tokens `request` takes as a prompt (a conversation through the chat template,
    /// or `text` alone when given).
    ///
    /// # Errors
    /// [`EngineError::Unsupported`] by default.
    fn count_tokens(&mut self, request: &EngineRequest<'_>, text: Option<&str>) -> Result<u32, EngineError> {
        let _ = (request, text);
        Err(no_token_counts())
    }
}

/// The echo engine's stand-in for a model's tokens: one per whitespace-separated word of
/// `text`, or of every message's content of `request`'s conversation, so counts are
/// predictable in tests.
pub fn echo_token_count(request: &EngineRequest<'_>, text: Option<&str>) -> u32 {
    let words = |t: &str| t.split_whitespace().count() as u32;
    match text {
        Some(t) => words(t),
        None => request.conversation().iter().map(|m| words(&m.content)).sum(),
    }
}

/// What an engine without embeddings answers ([`Engine::embed`]'s default).
pub(super) fn no_embeddings() -> EngineError {
    EngineError::Unsupported("this worker's engine has no embeddings".into())
}

/// What an engine that cannot count tokens answers ([`Engine::count_tokens`]'s default).
pub(super) fn no_token_counts() -> EngineError {
    EngineError::Unsupported("this worker's engine cannot count tokens".into())
}

/// The echo engine's stand-in for embeddings: [`ECHO_EMBED_DIM`] numbers per text, a histogram
/// of its bytes folded into that many bins, L2-normalised (zeros for an empty text). Identical
/// texts give identical vectors, texts with other bytes other vectors.
pub fn echo_embedding(text: &str) -> [f32; ECHO_EMBED_DIM] {
    let mut v = [0f32; ECHO_EMBED_DIM];
    for (i, b) in text.bytes().enumerate() {
        v[(usize::from(b) + i) % ECHO_EMBED_DIM] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Numbers per vector of [`echo_embedding`].
pub const ECHO_EMBED_DIM: usize = 16;

/// The echo engine's answer to `request`: `{system}\n{user}`, or for a conversation every
/// message's content, one per line.
pub fn echo_text(request: &EngineRequest<'_>) -> String {
    if request.messages.is_empty() {
        format!("{}\n{}", request.system, request.user)
    } else {
        request
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Embeddings by [`echo_embedding`] for as many of `texts` as fit `max_values`.
///
/// # Errors
/// [`EngineError::Unsupported`] when not even one fits.
pub fn echo_embed(texts: &[String], max_values: usize) -> Result<Embeddings, EngineError> {
    let fit = (max_values / ECHO_EMBED_DIM).min(texts.len());
    if fit == 0 {
        return Err(EngineError::Unsupported("no vector fits the request area".into()));
    }
    let mut values = Vec::with_capacity(fit * ECHO_EMBED_DIM);
    for t in &texts[..fit] {
        values.extend_from_slice(&echo_embedding(t));
    }
    Ok(Embeddings {
        dim: ECHO_EMBED_DIM,
        values,
    })
}

/// The `echo` engine: answers exactly `{system}\n{user}`, optionally repeated, delayed and
/// paced.
///
/// It exists so the whole request cycle, its failures and its tests run without a model.
/// With `piece_delay` it behaves like a model generating tokens: the answer goes out in pieces
/// of at most 4 bytes (cut on char boundaries, each piece counted as one token against
/// `max_tokens`) with a cancellable pause before each.
#[derive(Debug, Clone, Default)]
pub struct EchoEngine {
    /// How many times the answer is repeated (0 and 1 both mean once).
    pub repeat: u32,
    /// How long to wait before answering (cancellable), for failure tests.
    pub delay: Duration,
    /// Pause before each piece; zero answers in whole parts at once.
    pub piece_delay: Duration,
    /// Answer exactly this many bytes (the echo text repeated and cut on a char boundary)
    /// instead of `repeat` copies, for benchmarks that need a given response size.
    pub answer_bytes: Option<usize>,
}

impl Engine for EchoEngine {
    fn generate(
        &mut self,
        request: &EngineRequest<'_>,
        out: &mut dyn ResponseSink,
        cancel: &Cancel,
    ) -> Result<Generation, EngineError> {
        let started = Instant::now();
        let ended = |finish, generated_tokens| Generation {
            finish,
            usage: Usage {
                generated_tokens,
                generation_time: started.elapsed(),
                ..Usage::default()
            },
            dropped_messages: 0,
        };
        if request.constraint.is_some() {
            return Err(EngineError::Unsupported(
                "the echo engine cannot constrain its answer to a schema or grammar".into(),
            ));
        }
        if !self.delay.is_zero() && !cancel.sleep(self.delay) {
            return Ok(ended(Finish::Cancelled, 0));
        }
        // The parts of the answer: the two prompts around a newline, or every message's
        // content, one per line.
        let mut parts: Vec<&str> = Vec::new();
        if request.messages.is_empty() {
            parts.extend([request.system, "\n", request.user]);
        } else {
            for (i, m) in request.messages.iter().enumerate() {
                if i > 0 {
                    parts.push("\n");
                }
                parts.push(&m.content);
            }
        }
        if let Some(n) = self.answer_bytes {
            // The echo repeated (its "\n" makes every round at least one byte) until `n` bytes,
            // or until a character no longer fits.
            let mut left = if parts.iter().all(|p| p.is_empty()) { 0 } else { n };
            'fill: while left > 0 {
                for &part in &parts {
                    let cut = crate::wire::text::floor_char_boundary(part, left);
                    if (cut == 0 && !part.is_empty()) || !out.push(&part[..cut]) {
                        break 'fill;
                    }
                    left -= cut;
                }
            }
            return Ok(ended(Finish::Stop, 0));
        }
        let mut finish = Finish::Stop;
        let mut pieces = 0u32;
        let budget = request.max_tokens.unwrap_or(u32::MAX);
        'outer: for _ in 0..self.repeat.max(1) {
            for &part in &parts {
                if self.piece_delay.is_zero() {
                    if !out.push(part) {
                        finish = Finish::Length;
                        break 'outer;
                    }
                    continue;
                }
                let mut rest = part;
                while !rest.is_empty() {
                    if pieces >= budget {
                        finish = Finish::Length;
                        break 'outer;
                    }
                    if !cancel.sleep(self.piece_delay) {
                        return Ok(ended(Finish::Cancelled, pieces));
                    }
                    let mut cut = rest.len().min(4);
                    while !rest.is_char_boundary(cut) {
                        cut += 1;
                    }
                    let (piece, tail) = rest.split_at(cut);
                    rest = tail;
                    pieces += 1;
                    if !out.push(piece) {
                        finish = Finish::Length;
                        break 'outer;
                    }
                }
            }
        }
        Ok(ended(finish, pieces))
    }

    fn embed(
        &mut self,
        texts: &[String],
        max_values: usize,
        _cancel: &Cancel,
    ) -> Result<Embeddings, EngineError> {
        echo_embed(texts, max_values)
    }

    fn count_tokens(&mut self, request: &EngineRequest<'_>, text: Option<&str>) -> Result<u32, EngineError> {
        Ok(echo_token_count(request, text))
    }
}
