//! The seed's three-semaphore cycle and the extension page's rules, written once.
//!
//! ```text
//!  worker                                   client
//!  ──────                                   ──────
//!  worker_ready: request_seq := 0, post ready ──► client_acquire: wait ready (deadline)
//!                                           client_write: token, seq, pid, prompts,
//!  worker_wait: wait prompts_written ◄────── shutdown := 0, post prompts_written
//!  worker_take: shutdown byte? token? seq? prompts (validated copies)
//!  … engine runs …
//!  worker_respond: response, status, lengths,
//!    usage, then response_seq := seq,
//!    post response_written ───────────────► client_await: wait response_written (deadline),
//!  (loop: worker_ready)                      response_seq == seq? else stale, wait again
//! ```
//! Everything is generic over [`Semaphore`] and [`Region`]: production runs it on POSIX
//! named semaphores and a mapped object ([`crate::objects`]); `verification/` runs the very
//! same functions on loom primitives. Nothing here touches the OS.
//!
//! In seed mode (an object without the extension page) the extension steps are skipped and
//! the cycle is exactly the seed's.

use std::io;
use std::time::{Duration, Instant};

use crate::wire::layout::{
    Field, ObjectKind, Word32, Word64, FEATURE_TOKEN_REQUIRED, RESPONSE_LEN, RESPONSE_TRUNCATED, TOKEN_LEN,
};
use crate::wire::status::{StatusCode, WireFinish};
use crate::wire::text::{self, DecodeFlags, Encoded, Policy};

/// A counting semaphore the protocol can post and wait on.
pub trait Semaphore {
    /// Increments the count, waking one waiter.
    ///
    /// # Errors
    /// The OS error (e.g. the count overflowed).
    fn post(&self) -> io::Result<()>;
    /// Decrements the count, waiting until `deadline` at the latest. `Ok(false)` on timeout.
    ///
    /// # Errors
    /// The OS error.
    fn wait_until(&self, deadline: Option<Instant>) -> io::Result<bool>;
    /// Decrements the count if it is positive, without blocking. Returns whether it did.
    ///
    /// # Errors
    /// The OS error.
    fn try_wait(&self) -> io::Result<bool>;
}

/// Access to the shared object's fields: copies in and out, never references (the peer may
/// change any byte at any time), and atomic access to the extension page's words.
///
/// In seed mode the extension page does not exist: implementations read zeros there and drop
/// writes, and the protocol does not touch it.
pub trait Region {
    /// Seed or extended.
    fn kind(&self) -> ObjectKind;
    /// Copies `dst.len()` bytes of `field`, starting `at` bytes into it.
    fn read(&self, field: Field, at: usize, dst: &mut [u8]);
    /// Copies `src` into `field`, starting `at` bytes into it.
    fn write(&self, field: Field, at: usize, src: &[u8]);
    /// Sets `len` bytes of `field`, starting `at`, to `byte`.
    fn fill(&self, field: Field, at: usize, len: usize, byte: u8);
    /// Loads a 32-bit word (acquire).
    fn load32(&self, word: Word32) -> u32;
    /// Stores a 32-bit word (release).
    fn store32(&self, word: Word32, value: u32);
    /// Loads a 64-bit word (acquire).
    fn load64(&self, word: Word64) -> u64;
    /// Stores a 64-bit word (release).
    fn store64(&self, word: Word64, value: u64);
}

/// The three semaphores and the region of one worker.
#[derive(Debug)]
pub struct Channel<S, R> {
    /// Posted by the worker when it can take a request.
    pub ready: S,
    /// Posted by the client when the prompts are written (or shutdown is requested).
    pub prompts_written: S,
    /// Posted by the worker when the response is written.
    pub response_written: S,
    /// The shared fields.
    pub region: R,
}

/// Why a wait on the peer ended without the expected post.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed.
    #[error("deadline passed")]
    TimedOut,
    /// The peer is gone (the liveness check said so).
    #[error("peer is gone")]
    PeerGone,
    /// The semaphore call failed.
    #[error("semaphore wait failed: {0}")]
    Os(#[from] io::Error),
}

/// Resource use of one request, as the worker reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the evaluated prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Time spent on the prompt.
    pub prompt_time: Duration,
    /// Time spent generating.
    pub generation_time: Duration,
}

/// A request, encoded for the fields and ready to write.
#[derive(Debug, Clone, Copy)]
pub struct PreparedRequest<'a> {
    /// What goes into `system_prompt`.
    pub system: Encoded<'a>,
    /// What goes into `user_prompt`.
    pub user: Encoded<'a>,
    /// Sequence number (non-zero) identifying this request's response.
    pub seq: u64,
    /// The worker's auth token, if it requires one.
    pub token: Option<&'a [u8; TOKEN_LEN]>,
    /// The client's pid, for diagnostics.
    pub client_pid: u32,
}

impl<'a> PreparedRequest<'a> {
    /// Encodes both prompts for their fields under `policy`.
    ///
    /// # Errors
    /// [`text::EncodeError`] under [`Policy::Strict`] when a prompt is too long or holds a NUL.
    pub fn encode(system: &'a str, user: &'a str, policy: Policy) -> Result<Self, text::EncodeError> {
        Ok(Self {
            system: text::encode(system, Field::SystemPrompt.span().len, policy)?,
            user: text::encode(user, Field::UserPrompt.span().len, policy)?,
            seq: 0,
            token: None,
            client_pid: 0,
        })
    }
}

/// A response as read by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// The worker's status (always `Ok` in seed mode).
    pub status: StatusCode,
    /// The answer text (empty on error).
    pub text: String,
    /// What decoding the response field noticed (a seed worker's missing NUL, say).
    pub decode: DecodeFlags,
    /// `RESPONSE_*` flags from the worker (0 in seed mode).
    pub flags: u32,
    /// The worker's error message (empty when none).
    pub error: String,
    /// The error's numeric details.
    pub error_args: (u64, u64),
    /// Usage (zero in seed mode).
    pub usage: Usage,
    /// Why the answer ended.
    pub finish: WireFinish,
    /// Whether the response's checksum matched (always true in seed mode, which has none).
    pub intact: bool,
}

impl RawResponse {
    /// Whether the worker cut the answer at the response limit.
    pub fn truncated(&self) -> bool {
        self.flags & RESPONSE_TRUNCATED != 0
    }
}

/// What the worker found after `prompts_written`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A request; the prompts are in the caller's buffers.
    Request {
        /// Its sequence number (0 for a seed-mode client).
        seq: u64,
        /// What decoding the system prompt noticed.
        system: DecodeFlags,
        /// What decoding the user prompt noticed.
        user: DecodeFlags,
    },
    /// The client asked the worker to exit.
    Shutdown,
    /// A request the worker must refuse; it answers with `status` and `message`.
    Refused {
        /// Its sequence number.
        seq: u64,
        /// The status to answer with.
        status: StatusCode,
        /// Why.
        message: String,
    },
}

/// What the worker answers.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// Ok, or the error.
    pub status: StatusCode,
    /// The answer (≤ 32767 bytes, NUL-free; longer text is cut on a char boundary).
    pub text: &'a str,
    /// `RESPONSE_*` flags.
    pub flags: u32,
    /// A short error message (cut to the field).
    pub error: &'a str,
    /// The error's numeric details.
    pub error_args: (u64, u64),
    /// Usage.
    pub usage: Usage,
    /// Why the answer ended.
    pub finish: WireFinish,
}

impl Outcome<'_> {
    /// An error outcome with no text.
    pub fn error(status: StatusCode, message: &str) -> Outcome<'_> {
        Outcome {
            status,
            text: "",
            flags: 0,
            error: message,
            error_args: (0, 0),
            usage: Usage::default(),
            finish: WireFinish::Unknown,
        }
    }
}

/// Waits on `sem` until `deadline`, waking every `slice` to ask `alive` whether the peer is
/// still there. Returns `Ok(())` when the semaphore was taken; the caller decides what a post
/// means if the peer died meanwhile (a watcher posts to wake waiters on death).
///
/// # Errors
/// [`WaitError::TimedOut`] at the deadline, [`WaitError::PeerGone`] when `alive` says so
/// while waiting, [`WaitError::Os`] when the wait fails.
pub fn wait_for<S: Semaphore>(
    sem: &S,
    deadline: Option<Instant>,
    slice: Duration,
    alive: &dyn Fn() -> bool,
) -> Result<(), WaitError> {
    loop {
        let now = Instant::now();
        let until = match deadline {
            Some(d) => d.min(now + slice),
            None => now + slice,
        };
        if sem.wait_until(Some(until))? {
            return Ok(());
        }
        if !alive() {
            return Err(WaitError::PeerGone);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(WaitError::TimedOut);
        }
    }
}

/// Checksum of a request as the client wrote it: sequence number, token, shutdown byte and,
/// for a request (shutdown byte 0), both prompts' payloads. The worker recomputes it over its
/// private copies; a mismatch means the bytes changed in shared memory.
pub fn request_checksum(seq: u64, token: &[u8; TOKEN_LEN], shutdown: u8, system: &[u8], user: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&seq.to_le_bytes());
    h.update(token);
    h.update(&[shutdown]);
    if shutdown == 0 {
        for field in [system, user] {
            h.update(&(field.len() as u64).to_le_bytes());
            h.update(field);
        }
    }
    h.digest()
}

/// Checksum of a response: sequence number, status, flags, the answer and the error text and
/// arguments. The client recomputes it over its private copies.
pub fn response_checksum(
    seq: u64,
    status: u32,
    flags: u32,
    text: &[u8],
    error: &[u8],
    args: (u64, u64),
) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&seq.to_le_bytes());
    h.update(&status.to_le_bytes());
    h.update(&flags.to_le_bytes());
    for part in [text, error] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(&args.0.to_le_bytes());
    h.update(&args.1.to_le_bytes());
    h.digest()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn token_eq(a: &[u8; TOKEN_LEN], b: &[u8; TOKEN_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S: Semaphore, R: Region> Channel<S, R> {
    fn extended(&self) -> bool {
        self.region.kind() == ObjectKind::Extended
    }

    /// Writes `encoded` into `field`, NUL-terminates it and zero-fills the rest.
    fn write_text(&self, field: Field, encoded: &[u8]) {
        let cap = field.span().len;
        let n = encoded.len().min(cap - 1);
        self.region.write(field, 0, &encoded[..n]);
        self.region.fill(field, n, cap - n, 0);
    }

    // ----- worker side --------------------------------------------------------------------

    /// Worker: clears the request slot and posts `ready` (one request may now be written).
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_ready(&self) -> io::Result<()> {
        if self.extended() {
            // A seed-mode client never writes request_seq: 0 tells the worker it was one.
            self.region.store64(Word64::RequestSeq, 0);
        }
        self.ready.post()
    }

    /// Worker: waits for `prompts_written`, in slices of `slice`, until it is posted or
    /// `stop` returns true. Returns `true` when woken by the client, `false` when stopped.
    ///
    /// # Errors
    /// The wait's OS error.
    pub fn worker_wait(&self, slice: Duration, stop: &dyn Fn() -> bool) -> io::Result<bool> {
        loop {
            if stop() {
                return Ok(false);
            }
            if self.prompts_written.wait_until(Some(Instant::now() + slice))? {
                // A watcher posts to wake us when it wants us to stop: check again.
                return Ok(!stop());
            }
        }
    }

    /// Worker: reads and validates what the client wrote: the shutdown byte, the auth token
    /// (`expected` is `Some` when the worker requires one), the sequence number, the request
    /// checksum (extended clients), and both prompts into `system` and `user` (repaired
    /// copies; flags say what was repaired).
    pub fn worker_take(
        &self,
        expected: Option<&[u8; TOKEN_LEN]>,
        system: &mut String,
        user: &mut String,
        scratch: &mut [u8; 4096],
    ) -> Incoming {
        let mut shutdown = [0u8];
        self.region.read(Field::Shutdown, 0, &mut shutdown);
        let shutdown = shutdown[0];
        let (seq, stored_check) = if self.extended() {
            (
                self.region.load64(Word64::RequestSeq),
                self.region.load64(Word64::RequestChecksum),
            )
        } else {
            (0, 0)
        };
        let mut token = [0u8; TOKEN_LEN];
        if seq != 0 {
            self.region.read(Field::AuthToken, 0, &mut token);
        }
        let refuse = |status, message: String| {
            // A refused shutdown flag must not linger into the next request.
            if shutdown != 0 {
                self.region.write(Field::Shutdown, 0, &[0]);
            }
            Incoming::Refused { seq, status, message }
        };
        if let Some(expected) = expected {
            if seq == 0 || !token_eq(&token, expected) {
                return refuse(
                    StatusCode::Unauthorized,
                    "request does not carry this worker's auth token".into(),
                );
            }
        }
        let corrupted = || {
            refuse(
                StatusCode::BadRequest,
                "request checksum mismatch: the request changed in shared memory while in transit".into(),
            )
        };
        match shutdown {
            0 => {}
            1 if seq != 0 && request_checksum(seq, &token, 1, &[], &[]) != stored_check => {
                return corrupted()
            }
            1 => return Incoming::Shutdown,
            other => {
                return refuse(
                    StatusCode::BadRequest,
                    format!("shutdown_requested is {other:#04x}; only 0 and 1 are valid"),
                )
            }
        }
        // Each prompt is copied once; the checksum and the decoding both use that copy.
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&seq.to_le_bytes());
        hasher.update(&token);
        hasher.update(&[0]);
        let mut take = |field: Field, out: &mut String| {
            let cap = field.span().len;
            debug_assert!(cap <= scratch.len());
            let buf = &mut scratch[..cap];
            self.region.read(field, 0, buf);
            let payload = &buf[..buf.iter().position(|&b| b == 0).unwrap_or(cap)];
            hasher.update(&(payload.len() as u64).to_le_bytes());
            hasher.update(payload);
            text::decode_into(buf, out)
        };
        let system_flags = take(Field::SystemPrompt, system);
        let user_flags = take(Field::UserPrompt, user);
        if seq != 0 && hasher.digest() != stored_check {
            return corrupted();
        }
        Incoming::Request {
            seq,
            system: system_flags,
            user: user_flags,
        }
    }

    /// Worker: writes the response for request `seq` and posts `response_written`. In the
    /// extension page the status, lengths, flags, error and usage are written first and
    /// `response_seq` last, so a client that sees its `seq` sees the rest.
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_respond(&self, seq: u64, outcome: &Outcome<'_>) -> io::Result<()> {
        self.worker_respond_tracked(seq, outcome, &mut { RESPONSE_LEN })
    }

    /// [`Channel::worker_respond`] for a worker that remembers, in `dirty`, how many bytes of
    /// the response field its previous answers may have left non-zero (start with
    /// `RESPONSE_LEN`: unknown). Only `[len, dirty)` is zeroed instead of the whole 32 KiB, and
    /// the field still reads as the seed's NUL-terminated, zero-filled string.
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_respond_tracked(
        &self,
        seq: u64,
        outcome: &Outcome<'_>,
        dirty: &mut usize,
    ) -> io::Result<()> {
        let kept = text::encode(outcome.text, RESPONSE_LEN, Policy::Truncate).expect("Truncate never fails");
        let n = kept.bytes.len();
        self.region.write(Field::Response, 0, kept.bytes);
        let end = (*dirty).clamp(n + 1, RESPONSE_LEN);
        self.region.fill(Field::Response, n, end - n, 0);
        *dirty = n + 1;
        if self.extended() {
            let r = &self.region;
            let flags = outcome.flags | if kept.truncated { RESPONSE_TRUNCATED } else { 0 };
            let err = text::encode(outcome.error, Field::ErrorMessage.span().len, Policy::Truncate)
                .expect("Truncate never fails");
            self.write_text(Field::ErrorMessage, err.bytes);
            r.store32(Word32::ErrorLen, err.bytes.len() as u32);
            r.store32(Word32::Status, outcome.status.to_u32());
            r.store32(Word32::ResponseLen, kept.bytes.len() as u32);
            r.store32(Word32::ResponseFlags, flags);
            r.store64(Word64::ErrorArg0, outcome.error_args.0);
            r.store64(Word64::ErrorArg1, outcome.error_args.1);
            r.store32(Word32::PromptTokens, outcome.usage.prompt_tokens);
            r.store32(Word32::GeneratedTokens, outcome.usage.generated_tokens);
            r.store64(Word64::PromptMicros, micros(outcome.usage.prompt_time));
            r.store64(Word64::GenerationMicros, micros(outcome.usage.generation_time));
            r.store32(Word32::FinishReason, outcome.finish.to_u32());
            let check = response_checksum(
                seq,
                outcome.status.to_u32(),
                flags,
                kept.bytes,
                err.bytes,
                outcome.error_args,
            );
            r.store64(Word64::ResponseChecksum, check);
            r.store64(Word64::ResponseSeq, seq);
        }
        self.response_written.post()
    }

    // ----- client side --------------------------------------------------------------------

    /// Client: waits for `ready` (the worker can take a request).
    ///
    /// # Errors
    /// As [`wait_for`]; also [`WaitError::PeerGone`] when the post came from a watcher that
    /// saw the worker die.
    pub fn client_acquire(
        &self,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<(), WaitError> {
        wait_for(&self.ready, deadline, slice, alive)?;
        if !alive() {
            return Err(WaitError::PeerGone);
        }
        // The worker posts `ready` only after the `response_written` of the previous request,
        // and posts nothing more until we write: any `response_written` still counted now was
        // left by a request whose client stopped waiting (timed out, or died). Drop them, so
        // the count is exact again and our own post is the one we wait for.
        while self.response_written.try_wait()? {}
        // A watcher that saw the worker die marks it dead *before* posting its wake-ups, so
        // if the drain just swallowed one of them, this check sees the death.
        if alive() {
            Ok(())
        } else {
            Err(WaitError::PeerGone)
        }
    }

    /// Client: writes the request and posts `prompts_written`. Call only while holding the
    /// turn (after [`Channel::client_acquire`]).
    ///
    /// # Errors
    /// The post's OS error.
    pub fn client_write(&self, req: &PreparedRequest<'_>) -> io::Result<()> {
        if self.extended() {
            let token = req.token.copied().unwrap_or([0; TOKEN_LEN]);
            self.region.write(Field::AuthToken, 0, &token);
            self.region.store32(Word32::ClientPid, req.client_pid);
            let check = request_checksum(req.seq, &token, 0, req.system.bytes, req.user.bytes);
            self.region.store64(Word64::RequestChecksum, check);
            self.region.store64(Word64::RequestSeq, req.seq);
        }
        self.write_text(Field::SystemPrompt, req.system.bytes);
        self.write_text(Field::UserPrompt, req.user.bytes);
        self.region.write(Field::Shutdown, 0, &[0]);
        self.prompts_written.post()
    }

    /// Client: waits for the response to request `seq` and reads it. In extended mode a
    /// `response_written` whose `response_seq` is not `seq` is stale (left by an earlier
    /// request that timed out or whose client died) and is skipped.
    ///
    /// # Errors
    /// As [`wait_for`]; [`WaitError::PeerGone`] when the worker died before answering.
    pub fn client_await(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<RawResponse, WaitError> {
        loop {
            wait_for(&self.response_written, deadline, slice, alive)?;
            if !self.extended() {
                if !alive() {
                    return Err(WaitError::PeerGone);
                }
                return Ok(self.read_seed_response());
            }
            if self.region.load64(Word64::ResponseSeq) == seq {
                return Ok(self.read_extended_response(seq));
            }
            if !alive() {
                return Err(WaitError::PeerGone);
            }
            // Stale post: keep waiting for ours.
        }
    }

    fn read_seed_response(&self) -> RawResponse {
        let mut buf = vec![0u8; RESPONSE_LEN];
        self.region.read(Field::Response, 0, &mut buf);
        let decoded = text::decode(&buf);
        RawResponse {
            status: StatusCode::Ok,
            text: decoded.text.into_owned(),
            decode: decoded.flags,
            flags: 0,
            error: String::new(),
            error_args: (0, 0),
            usage: Usage::default(),
            finish: WireFinish::Unknown,
            intact: true,
        }
    }

    fn read_extended_response(&self, seq: u64) -> RawResponse {
        let r = &self.region;
        // Everything is copied once, then checked and decoded from the private copies.
        let status = r.load32(Word32::Status);
        let flags = r.load32(Word32::ResponseFlags);
        let stored_check = r.load64(Word64::ResponseChecksum);
        let args = (r.load64(Word64::ErrorArg0), r.load64(Word64::ErrorArg1));
        let len = (r.load32(Word32::ResponseLen) as usize).min(RESPONSE_LEN - 1);
        let mut buf = vec![0u8; len];
        r.read(Field::Response, 0, &mut buf);
        let err_len = (r.load32(Word32::ErrorLen) as usize).min(Field::ErrorMessage.span().len - 1);
        let mut ebuf = vec![0u8; err_len];
        r.read(Field::ErrorMessage, 0, &mut ebuf);
        let intact = response_checksum(seq, status, flags, &buf, &ebuf, args) == stored_check;
        let decoded = text::decode(&buf);
        let mut decode = decoded.flags;
        // `response_len` bytes without a NUL is the normal case here, not a defect.
        decode.missing_nul = false;
        RawResponse {
            status: StatusCode::from_u32(status),
            text: decoded.text.into_owned(),
            decode,
            flags,
            error: text::decode(&ebuf).text.into_owned(),
            error_args: args,
            usage: Usage {
                prompt_tokens: r.load32(Word32::PromptTokens),
                generated_tokens: r.load32(Word32::GeneratedTokens),
                prompt_time: Duration::from_micros(r.load64(Word64::PromptMicros)),
                generation_time: Duration::from_micros(r.load64(Word64::GenerationMicros)),
            },
            finish: WireFinish::from_u32(r.load32(Word32::FinishReason)),
            intact,
        }
    }

    /// Client: asks the worker to exit (shutdown byte 1, then `prompts_written`), carrying
    /// the token and `seq` in extended mode so a token-guarded worker accepts it.
    ///
    /// # Errors
    /// The post's OS error.
    pub fn client_request_shutdown(&self, token: Option<&[u8; TOKEN_LEN]>, seq: u64) -> io::Result<()> {
        if self.extended() {
            let token = token.copied().unwrap_or([0; TOKEN_LEN]);
            self.region.write(Field::AuthToken, 0, &token);
            self.region.store64(
                Word64::RequestChecksum,
                request_checksum(seq, &token, 1, &[], &[]),
            );
            self.region.store64(Word64::RequestSeq, seq);
        }
        self.region.write(Field::Shutdown, 0, &[1]);
        self.prompts_written.post()
    }

    /// Whether the worker advertises that it requires an auth token.
    pub fn token_required(&self) -> bool {
        self.extended() && self.region.load32(Word32::Features) & FEATURE_TOKEN_REQUIRED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::mem::{MemRegion, NoopSemaphore};

    fn channel(kind: ObjectKind) -> Channel<NoopSemaphore, MemRegion> {
        Channel {
            ready: NoopSemaphore,
            prompts_written: NoopSemaphore,
            response_written: NoopSemaphore,
            region: MemRegion::initialised(kind, 0),
        }
    }

    fn ok(text: &str) -> Outcome<'_> {
        Outcome {
            text,
            ..Outcome::error(StatusCode::Ok, "")
        }
    }

    /// A short answer after a long one: the tracked write zeroes only what the long one left,
    /// and the whole field still reads as the short answer, NUL, zeros (what a seed client that
    /// reads all 32 KiB sees). Also when the field starts out dirty (unknown contents).
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
                ch.worker_respond_tracked(1, &ok(&text), &mut dirty).unwrap();
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
}
