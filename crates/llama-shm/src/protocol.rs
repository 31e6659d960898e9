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

use std::sync::atomic::{AtomicU32, Ordering};

use crate::sync::{mutant, Mutant};

use crate::wire::layout::{
    Field, ObjectKind, Word32, Word64, FEATURE_STREAMING, FEATURE_TOKEN_REQUIRED, REQUEST_STREAM,
    RESPONSE_LEN, RESPONSE_TRUNCATED, TOKEN_LEN,
};
use crate::wire::status::{StatusCode, WireFinish};
use crate::wire::text::{self, DecodeFlags, Encoded, Policy};
use xxhash_rust::xxh3::Xxh3;

/// A counting semaphore the protocol can post and wait on.
pub trait Semaphore {
    /// Increments the count, waking one waiter.
    ///
    /// # Errors
    /// The OS error (e.g. the count overflowed).
    fn post(&self) -> io::Result<()>;
    /// Decrements the count, waiting until `deadline` at the latest. `Ok(false)` on timeout.
    /// Like `sem_clockwait`, it may take a positive count even when `deadline` has passed:
    /// binding the deadline is the caller's job ([`wait_for`] does it).
    ///
    /// # Errors
    /// The OS error.
    fn wait_until(&self, deadline: Option<Instant>) -> io::Result<bool>;
    /// Decrements the count if it is positive, without blocking. Returns whether it did.
    ///
    /// # Errors
    /// The OS error.
    fn try_wait(&self) -> io::Result<bool>;
    /// The current count (stale as soon as it returns: a hint, e.g. whether `ready` has been
    /// taken).
    ///
    /// # Errors
    /// The OS error.
    fn value(&self) -> io::Result<u32>;
}

/// What a worker shared by several clients (a standalone worker) learns about them, so that a
/// client that dies holding the turn, or while its answer is generated, never wedges the
/// worker for the others. A worker spawned for one client has none: that client's death ends
/// the worker anyway.
pub trait Clients {
    /// Whether the client that took `ready` `held` ago and has not posted `prompts_written`
    /// is to be taken for gone. Every client of this protocol posts within microseconds of
    /// taking `ready` (it only writes the request in between), so production answers
    /// `held >= grace` with a grace far above that.
    fn turn_abandoned(&self, held: Duration) -> bool;
    /// Whether the client that sent request `seq` (0: a seed-mode client), being answered
    /// since `since`, may still be there to read the answer. Asked every so often while the
    /// answer is generated; `false` ends the request at once.
    fn requester_present(&self, seq: u64, since: Instant) -> bool;
}

/// How often a worker with [`Clients`] looks at its turn while waiting for a request.
const TURN_CHECK: Duration = Duration::from_millis(100);

/// Stale `ready` posts [`Channel::worker_ready`] takes back before it posts: a turn given back
/// by [`Channel::worker_wait`] to a holder that was slow, not gone, leaves one.
const READY_EXCESS_LIMIT: u32 = 64;

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
    /// Capacity of the response area when it is used as the streaming ring. Both peers of a
    /// real object use [`RESPONSE_LEN`]; a model checker may shrink it to explore wrap-around
    /// and a full ring with a few bytes.
    fn ring_capacity(&self) -> usize {
        RESPONSE_LEN
    }
    /// The CPU this thread runs on, plus one; 0 when unknown (the adaptive wait then never
    /// spins).
    fn current_cpu(&self) -> u32 {
        0
    }
}

/// The adaptive wait's state: how long a waiter spins (polling the semaphore without
/// blocking) before it blocks, and whether it spins at all, judged by how long its recent
/// waits lasted.
///
/// A waiter spins only while the peer's advertised CPU (`worker_cpu` / `client_cpu` in the
/// extension page, updated by each side after every wait) is *another* CPU than its own: on
/// one CPU a spin only delays the peer it waits for. A spin lasts at most the maximum budget
/// (about what blocking costs: a cross-CPU wake-up is tens of µs on a VM, so spinning that
/// long at most doubles the cost of a wait that blocks anyway). Whether to spin follows the
/// recent waits: while a running average of their lengths (each counted as at most twice the
/// maximum) stays under the maximum, the waiter spins; past it (a model generating for
/// seconds, a client idle between questions) it blocks at once, and one wait in 16 probes with
/// a spin, so a burst of short requests is noticed. The
/// semaphores are posted on every step whatever the waiter does, so a seed-mode peer (which
/// never spins) is served exactly as before.
#[derive(Debug)]
pub struct Spinner {
    /// The worker's snapshot of the client's advertised CPU, taken before it posts `ready`
    /// (after that post an idle worker leaves the region alone).
    peer_cpu: AtomicU32,
    max_ns: u32,
    /// Running average of recent wait lengths (ns, each clamped to twice `max_ns`).
    avg_ns: AtomicU32,
    calls: AtomicU32,
}

impl Spinner {
    /// The default maximum budget (50 µs).
    pub const DEFAULT_MAX_NS: u32 = 50_000;

    /// A spinner whose budget never exceeds `max`; `Duration::ZERO` never spins.
    pub fn new(max: Duration) -> Self {
        let max_ns = u32::try_from(max.as_nanos()).unwrap_or(u32::MAX / 4);
        Self {
            peer_cpu: AtomicU32::new(0),
            max_ns,
            avg_ns: AtomicU32::new(max_ns / 4),
            calls: AtomicU32::new(0),
        }
    }

    /// A spinner that never spins (every wait blocks at once).
    pub fn off() -> Self {
        Self::new(Duration::ZERO)
    }

    /// Counts a finished wait of `waited` (spun or blocked) into the average.
    fn record(&self, waited: Duration) {
        if self.max_ns == 0 {
            return;
        }
        let sample = u64::try_from(waited.as_nanos())
            .unwrap_or(u64::MAX)
            .min(u64::from(self.max_ns) * 2);
        let avg = u64::from(self.avg_ns.load(Ordering::Relaxed));
        let next = (avg * 7 + sample) / 8;
        self.avg_ns
            .store(u32::try_from(next).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Spins on `sem` (non-blocking takes) while the budget lasts and `peer_running` says the
    /// peer runs elsewhere. Returns whether the semaphore was taken.
    fn spin<S: Semaphore>(&self, sem: &S, peer_running: &dyn Fn() -> bool) -> io::Result<bool> {
        if self.max_ns == 0 || !peer_running() {
            return Ok(false);
        }
        // Recent waits were long: block at once, but let one wait in 16 probe.
        if self.avg_ns.load(Ordering::Relaxed) > self.max_ns
            && self.calls.fetch_add(1, Ordering::Relaxed) % 16 != 0
        {
            return Ok(false);
        }
        let budget = Duration::from_nanos(u64::from(self.max_ns));
        let start = Instant::now();
        let mut i = 0u32;
        loop {
            if sem.try_wait()? {
                return Ok(true);
            }
            i = i.wrapping_add(1);
            if i % 64 == 0 && (start.elapsed() >= budget || !peer_running()) {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }
}

impl Default for Spinner {
    /// Spins up to [`Spinner::DEFAULT_MAX_NS`].
    fn default() -> Self {
        Self::new(Duration::from_nanos(u64::from(Self::DEFAULT_MAX_NS)))
    }
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
    /// This side's adaptive wait (see [`Spinner`]); [`Spinner::off`] blocks at once.
    pub spin: Spinner,
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
    /// The peer's stream words make no sense (a cursor moved backwards or past the ring):
    /// the region was changed by someone else.
    #[error("stream garbled: {0}")]
    Garbled(&'static str),
    /// The answer grew past the receiver's bound (the request was cancelled).
    #[error("answer longer than {limit} bytes")]
    TooLong {
        /// The bound, in bytes.
        limit: u64,
    },
}

/// What a request asks of the worker beyond its prompts (extended mode only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestParams {
    /// `REQUEST_*` bits.
    pub flags: u32,
    /// Most tokens to generate, 0 = the worker's limit.
    pub max_tokens: u32,
    /// Generation budget in µs from when the worker takes the request, 0 = none.
    pub deadline_us: u64,
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
    /// Prompt tokens whose KV cache was reused (counted in `prompt_tokens`, not evaluated).
    pub cached_tokens: u32,
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
    /// Streaming, token budget and deadline.
    pub params: RequestParams,
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
            params: RequestParams::default(),
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
        /// Streaming, token budget and deadline (zeros from a seed-mode client).
        params: RequestParams,
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
    /// An error outcome with no text (finish [`WireFinish::Error`]).
    pub fn error(status: StatusCode, message: &str) -> Outcome<'_> {
        Outcome {
            status,
            text: "",
            flags: 0,
            error: message,
            error_args: (0, 0),
            usage: Usage::default(),
            finish: WireFinish::Error,
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
        // Checked before every take, not only after a wait that timed out: a semaphore the
        // peer keeps positive would otherwise be taken (sem_clockwait succeeds at once on a
        // positive count, whatever the deadline) and a caller's loop would never end.
        if expired(deadline, now) {
            return Err(WaitError::TimedOut);
        }
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

/// Whether `deadline` has passed at `now` (never, for no deadline).
fn expired(deadline: Option<Instant>, now: Instant) -> bool {
    !mutant(Mutant::DeadlineUnchecked) && deadline.is_some_and(|d| now >= d)
}

/// Most stale `response_written` posts [`Channel::client_acquire`] drains. A worker leaves at
/// most one per publication of the answers before; a peer posting in a loop is cut off here
/// (what is left over is skipped by sequence number like any stale post).
pub const DRAIN_LIMIT: u32 = 1 << 20;

/// Checksum of a request as the client wrote it: sequence number, token, shutdown byte and,
/// for a request (shutdown byte 0), its parameters and both prompts' payloads. The worker
/// recomputes it over its private copies; a mismatch means the bytes changed in shared memory.
pub fn request_checksum(
    seq: u64,
    token: &[u8; TOKEN_LEN],
    shutdown: u8,
    params: RequestParams,
    system: &[u8],
    user: &[u8],
) -> u64 {
    let mut h = request_hasher(seq, token, shutdown, params);
    if shutdown == 0 {
        for field in [system, user] {
            h.update(&(field.len() as u64).to_le_bytes());
            h.update(field);
        }
    }
    h.digest()
}

fn request_hasher(seq: u64, token: &[u8; TOKEN_LEN], shutdown: u8, params: RequestParams) -> Xxh3 {
    let mut h = Xxh3::new();
    h.update(&seq.to_le_bytes());
    h.update(token);
    h.update(&[shutdown]);
    if shutdown == 0 {
        h.update(&params.flags.to_le_bytes());
        h.update(&params.max_tokens.to_le_bytes());
        h.update(&params.deadline_us.to_le_bytes());
    }
    h
}

/// The hash of an answer's bytes that [`response_checksum`] covers (xxh3-64; streamed answers
/// are hashed incrementally with the same result).
pub fn text_hash(text: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text)
}

/// What a response says beside its text, as the words of the extension page hold it: covered
/// by [`response_checksum`], so that a scribbler can neither turn a `Deadline`, `Length` or
/// `Cancelled` answer into a `Stop` one (a partial answer passing as complete) nor change the
/// usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseMeta {
    /// `finish_reason`.
    pub finish: u32,
    /// `prompt_tokens`.
    pub prompt_tokens: u32,
    /// `generated_tokens`.
    pub generated_tokens: u32,
    /// `prompt_us`.
    pub prompt_us: u64,
    /// `generation_us`.
    pub generation_us: u64,
    /// `cached_tokens`.
    pub cached_tokens: u32,
}

/// Checksum of a response: sequence number, status, flags, the answer's length and
/// [`text_hash`], the error text and its arguments, the finish reason and the usage. The
/// client recomputes it over what it received.
#[allow(clippy::too_many_arguments)] // The fields of the wire, in their order.
pub fn response_checksum(
    seq: u64,
    status: u32,
    flags: u32,
    text_len: u64,
    text_hash: u64,
    error: &[u8],
    args: (u64, u64),
    meta: &ResponseMeta,
) -> u64 {
    let mut h = Xxh3::new();
    h.update(&seq.to_le_bytes());
    h.update(&status.to_le_bytes());
    h.update(&flags.to_le_bytes());
    h.update(&text_len.to_le_bytes());
    h.update(&text_hash.to_le_bytes());
    h.update(&(error.len() as u64).to_le_bytes());
    h.update(error);
    h.update(&args.0.to_le_bytes());
    h.update(&args.1.to_le_bytes());
    h.update(&meta.finish.to_le_bytes());
    h.update(&meta.prompt_tokens.to_le_bytes());
    h.update(&meta.generated_tokens.to_le_bytes());
    h.update(&meta.prompt_us.to_le_bytes());
    h.update(&meta.generation_us.to_le_bytes());
    h.update(&meta.cached_tokens.to_le_bytes());
    h.digest()
}

/// The worker's side of one answer in flight: how much it wrote, what it published, and the
/// running hash. Start one with [`Channel::worker_stream_begin`].
pub struct StreamState {
    seq: u64,
    /// Ring mode (an extended client): the response area is a ring of
    /// [`Region::ring_capacity`] bytes. Otherwise the seed's single C string.
    ring: bool,
    stream: bool,
    written: u64,
    published: u64,
    read_seen: u64,
    hasher: Xxh3,
}

impl StreamState {
    /// The request this answer belongs to.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Whether the answer goes through the ring (an extended client), so its length is not
    /// capped at the response area.
    pub fn is_ring(&self) -> bool {
        self.ring
    }
    /// Whether the client asked for each piece to be published as it comes.
    pub fn is_streaming(&self) -> bool {
        self.stream
    }
}

/// Why the worker cannot write more of an answer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// This many bytes fit now.
    Free(usize),
    /// The client's read cursor is impossible (behind its previous value or past what was
    /// written): the region was changed by someone else.
    Garbled,
}

/// The client's side of one answer in flight.
struct Receiver {
    read: u64,
    hasher: Xxh3,
}

impl std::fmt::Debug for StreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamState")
            .field("seq", &self.seq)
            .field("ring", &self.ring)
            .field("stream", &self.stream)
            .field("written", &self.written)
            .field("published", &self.published)
            .field("read_seen", &self.read_seen)
            .finish_non_exhaustive()
    }
}

/// Whether two advertised CPUs (plus one; 0 = unknown) are known and different.
fn on_other_cpus(me: u32, peer: u32) -> bool {
    me != 0 && peer != 0 && me != peer
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn token_eq(a: &[u8; TOKEN_LEN], b: &[u8; TOKEN_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S: Semaphore, R: Region> Channel<S, R> {
    /// A channel over three semaphores and a region, with the default adaptive wait.
    pub fn new(ready: S, prompts_written: S, response_written: S, region: R) -> Self {
        Self {
            ready,
            prompts_written,
            response_written,
            region,
            spin: Spinner::default(),
        }
    }

    fn extended(&self) -> bool {
        self.region.kind() == ObjectKind::Extended
    }

    /// Whether the peer, by the CPU it last advertised in `peer`, runs on a CPU other than ours
    /// (0: not known yet).
    fn peer_elsewhere(&self, peer: Word32) -> bool {
        on_other_cpus(self.region.current_cpu(), self.region.load32(peer))
    }

    /// The adaptive wait: spin while the peer's CPU is another than ours (see [`Spinner`]),
    /// then block in [`wait_for`]; either way, advertise the CPU we run on afterwards.
    fn wait_adaptive(
        &self,
        sem: &S,
        me: Word32,
        peer: Word32,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<(), WaitError> {
        if !self.extended() {
            return wait_for(sem, deadline, slice, alive);
        }
        let started = Instant::now();
        if expired(deadline, started) {
            return Err(WaitError::TimedOut);
        }
        if !self.spin.spin(sem, &|| self.peer_elsewhere(peer))? {
            wait_for(sem, deadline, slice, alive)?;
        }
        self.spin.record(started.elapsed());
        self.set32(me, self.region.current_cpu());
        Ok(())
    }

    /// The client's adaptive wait on `sem` (its peer is the worker).
    fn client_wait(
        &self,
        sem: &S,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<(), WaitError> {
        self.wait_adaptive(sem, Word32::ClientCpu, Word32::WorkerCpu, deadline, slice, alive)
    }

    /// Stores `value` unless the word already holds it (no cache-line transfer then).
    fn set32(&self, word: Word32, value: u32) {
        if self.region.load32(word) != value {
            self.region.store32(word, value);
        }
    }

    /// [`Channel::set32`] for a 64-bit word.
    fn set64(&self, word: Word64, value: u64) {
        if self.region.load64(word) != value {
            self.region.store64(word, value);
        }
    }

    /// Writes `src` (at most 64 bytes) into `field` at `at` unless it already holds it.
    fn set_bytes(&self, field: Field, at: usize, src: &[u8]) {
        let mut cur = [0u8; 64];
        let cur = &mut cur[..src.len().min(64)];
        self.region.read(field, at, cur);
        if cur != src {
            self.region.write(field, at, src);
        }
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
        // Nobody has taken a `ready` still counted: take it back, so one post gives one turn
        // (bounded: a peer may post in a loop).
        for _ in 0..READY_EXCESS_LIMIT {
            if !self.ready.try_wait()? {
                break;
            }
        }
        if self.extended() {
            // A seed-mode client never writes request_seq: 0 tells the worker it was one.
            self.region.store64(Word64::RequestSeq, 0);
            // What `worker_wait`'s spin needs, read now: once `ready` is posted an idle
            // worker touches nothing in the region until a client wakes it.
            self.spin
                .peer_cpu
                .store(self.region.load32(Word32::ClientCpu), Ordering::Relaxed);
        }
        self.ready.post()
    }

    /// Worker: waits for `prompts_written`, in slices of `slice`, until it is posted or
    /// `stop` returns true. Returns `true` when woken by the client, `false` when stopped.
    /// Spins first while the client ran on another CPU when `worker_ready` looked (see
    /// [`Spinner`]). Touches the region only once woken by a client.
    ///
    /// With `clients` (a standalone worker), a turn whose holder is gone is given back: when
    /// `ready` has been taken and [`Clients::turn_abandoned`] says its holder is gone (it died
    /// after taking `ready`, or after writing but before posting), the request slot is cleared
    /// and `ready` posted again, so the next client is served.
    ///
    /// # Errors
    /// The wait's OS error.
    pub fn worker_wait(
        &self,
        slice: Duration,
        stop: &dyn Fn() -> bool,
        clients: Option<&dyn Clients>,
    ) -> io::Result<bool> {
        if stop() {
            return Ok(false);
        }
        let started = Instant::now();
        // The client's CPU as `worker_ready` saw it (no access to the region while idle).
        let elsewhere = on_other_cpus(
            self.region.current_cpu(),
            self.spin.peer_cpu.load(Ordering::Relaxed),
        );
        let mut taken = self.extended() && self.spin.spin(&self.prompts_written, &|| elsewhere)?;
        // Since when `ready` has been seen taken without a request following.
        let mut held_since: Option<Instant> = None;
        while !taken {
            if stop() {
                return Ok(false);
            }
            // Watching a turn, look at it often enough to give it back well within a second.
            let slice = if clients.is_some() {
                slice.min(TURN_CHECK)
            } else {
                slice
            };
            taken = self.prompts_written.wait_until(Some(Instant::now() + slice))?;
            if taken || mutant(Mutant::TurnNotRecovered) {
                continue;
            }
            let Some(clients) = clients else { continue };
            if self.ready.value()? > 0 {
                held_since = None;
                continue;
            }
            let now = Instant::now();
            let since = *held_since.get_or_insert(now);
            if clients.turn_abandoned(now.saturating_duration_since(since)) {
                // A slow holder may have posted just now: then that is the request.
                taken = self.prompts_written.try_wait()?;
                if !taken {
                    tracing::warn!("the client holding the turn is gone; giving the turn to the next");
                    self.worker_ready()?;
                    held_since = None;
                }
            }
        }
        self.spin.record(started.elapsed());
        // A watcher posts to wake us when it wants us to stop: check again (and then touch
        // nothing: a stopping worker leaves the region alone).
        let go = !stop();
        if go && self.extended() {
            self.set32(Word32::WorkerCpu, self.region.current_cpu());
        }
        Ok(go)
    }

    /// Worker: reads and validates what the client wrote: the shutdown byte, the auth token
    /// (`expected` is `Some` when the worker requires one), the sequence number, the request
    /// checksum (extended clients), the parameters, and both prompts into `system` and `user`
    /// (repaired copies; flags say what was repaired).
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
        let mut params = RequestParams::default();
        if seq != 0 {
            self.region.read(Field::AuthToken, 0, &mut token);
            params = RequestParams {
                flags: self.region.load32(Word32::RequestFlags),
                max_tokens: self.region.load32(Word32::MaxTokens),
                deadline_us: self.region.load64(Word64::DeadlineMicros),
            };
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
            1 if seq != 0 && request_checksum(seq, &token, 1, params, &[], &[]) != stored_check => {
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
        let mut hasher = request_hasher(seq, &token, 0, params);
        // An extended client says how long each prompt is: copy that and its NUL, not the
        // whole field (a length past the field is refused below, through the checksum).
        let lens = if seq != 0 {
            let cap = |f: Field| f.span().len;
            let s = self.region.load32(Word32::SystemLen) as usize;
            let u = self.region.load32(Word32::UserLen) as usize;
            if s >= cap(Field::SystemPrompt) || u >= cap(Field::UserPrompt) {
                return refuse(
                    StatusCode::BadRequest,
                    format!("prompt length words ({s}, {u}) exceed the fields"),
                );
            }
            Some((s, u))
        } else {
            None
        };
        let mut take = |field: Field, len: Option<usize>, out: &mut String| {
            let cap = len.map_or(field.span().len, |n| n + 1);
            debug_assert!(cap <= scratch.len());
            let buf = &mut scratch[..cap];
            self.region.read(field, 0, buf);
            let payload = &buf[..buf.iter().position(|&b| b == 0).unwrap_or(cap)];
            hasher.update(&(payload.len() as u64).to_le_bytes());
            hasher.update(payload);
            text::decode_into(buf, out)
        };
        let system_flags = take(Field::SystemPrompt, lens.map(|l| l.0), system);
        let user_flags = take(Field::UserPrompt, lens.map(|l| l.1), user);
        if seq != 0 && hasher.digest() != stored_check {
            return corrupted();
        }
        Incoming::Request {
            seq,
            system: system_flags,
            user: user_flags,
            params,
        }
    }

    /// Whether the client asked to cancel request `seq` (extended mode).
    pub fn worker_cancel_requested(&self, seq: u64) -> bool {
        seq != 0 && self.extended() && self.region.load64(Word64::CancelSeq) == seq
    }

    /// Worker: starts the answer to request `seq`. For an extended client (`seq != 0`) the
    /// response area becomes a ring: the cursor is reset before `stream_seq` names the
    /// request, so a client that sees its `seq` there never sees an older cursor.
    pub fn worker_stream_begin(&self, seq: u64, params: RequestParams) -> StreamState {
        let ring = self.extended() && seq != 0;
        if ring {
            self.region.store64(Word64::StreamWritten, 0);
            self.region.store64(Word64::StreamSeq, seq);
        }
        StreamState {
            seq,
            ring,
            stream: ring && params.flags & REQUEST_STREAM != 0,
            written: 0,
            published: 0,
            read_seen: 0,
            hasher: Xxh3::new(),
        }
    }

    /// Worker: how many bytes of the answer fit now. In ring mode that is the ring's free
    /// space (the client's read cursor is validated); otherwise what is left of the seed's
    /// 32 767-byte C string.
    pub fn worker_stream_room(&self, st: &mut StreamState) -> Room {
        if !st.ring {
            return Room::Free((RESPONSE_LEN - 1).saturating_sub(st.written as usize));
        }
        let r = self.region.load64(Word64::StreamRead);
        if r < st.read_seen || r > st.published {
            return Room::Garbled;
        }
        st.read_seen = r;
        let cap = self.region.ring_capacity() as u64;
        Room::Free((cap - (st.written - r)) as usize)
    }

    /// Worker: appends `bytes` (at most what [`Channel::worker_stream_room`] said fits) to the
    /// answer. Nothing is visible to the client until [`Channel::worker_stream_publish`].
    pub fn worker_stream_write(&self, st: &mut StreamState, bytes: &[u8]) {
        if st.ring {
            let cap = self.region.ring_capacity();
            let pos = (st.written % cap as u64) as usize;
            let first = bytes.len().min(cap - pos);
            self.region.write(Field::Response, pos, &bytes[..first]);
            if first < bytes.len() {
                self.region.write(Field::Response, 0, &bytes[first..]);
            }
        } else {
            self.region.write(Field::Response, st.written as usize, bytes);
        }
        st.hasher.update(bytes);
        st.written += bytes.len() as u64;
    }

    /// Worker: publishes what was written since the last publication and wakes the client
    /// (ring mode only; a seed-mode answer is published whole by [`Channel::worker_finish`]).
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_stream_publish(&self, st: &mut StreamState) -> io::Result<()> {
        if st.ring && st.written > st.published {
            self.region.store64(Word64::StreamWritten, st.written);
            st.published = st.written;
            self.response_written.post()?;
        }
        Ok(())
    }

    /// Worker: ends the answer begun with [`Channel::worker_stream_begin`]: for a seed-mode
    /// client the NUL and the zero tail (only `[len, dirty)` is zeroed, `dirty` tracking what
    /// earlier answers left; start it at `RESPONSE_LEN`); in the extension page the status,
    /// lengths, flags, error, usage and checksum, the final cursor, and `response_seq` last,
    /// so a client that sees its `seq` sees the rest. Then posts `response_written`.
    /// `outcome.text` is ignored: the text is what was written to `st`.
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_finish(&self, outcome: &Outcome<'_>, st: StreamState, dirty: &mut usize) -> io::Result<()> {
        let n = st.written as usize;
        if st.ring {
            // The ring leaves bytes up to where it wrote (the whole area once it wrapped).
            *dirty = (*dirty).max(n.min(self.region.ring_capacity()).min(RESPONSE_LEN));
        } else {
            let end = (*dirty).clamp(n + 1, RESPONSE_LEN);
            self.region.fill(Field::Response, n, end - n, 0);
            *dirty = n + 1;
        }
        if self.extended() {
            let r = &self.region;
            let err = text::encode(outcome.error, Field::ErrorMessage.span().len, Policy::Truncate)
                .expect("Truncate never fails");
            // `error_len` says how much is valid: the text and a NUL, no zero tail.
            if err.bytes.is_empty() {
                self.set_bytes(Field::ErrorMessage, 0, &[0]);
            } else {
                r.write(Field::ErrorMessage, 0, err.bytes);
                r.write(Field::ErrorMessage, err.bytes.len(), &[0]);
            }
            r.store32(Word32::ErrorLen, err.bytes.len() as u32);
            r.store32(Word32::Status, outcome.status.to_u32());
            r.store32(Word32::ResponseLen, u32::try_from(n).unwrap_or(u32::MAX));
            r.store32(Word32::ResponseFlags, outcome.flags);
            r.store64(Word64::ErrorArg0, outcome.error_args.0);
            r.store64(Word64::ErrorArg1, outcome.error_args.1);
            let meta = ResponseMeta {
                finish: outcome.finish.to_u32(),
                prompt_tokens: outcome.usage.prompt_tokens,
                generated_tokens: outcome.usage.generated_tokens,
                prompt_us: micros(outcome.usage.prompt_time),
                generation_us: micros(outcome.usage.generation_time),
                cached_tokens: outcome.usage.cached_tokens,
            };
            r.store32(Word32::PromptTokens, meta.prompt_tokens);
            r.store32(Word32::GeneratedTokens, meta.generated_tokens);
            r.store64(Word64::PromptMicros, meta.prompt_us);
            r.store64(Word64::GenerationMicros, meta.generation_us);
            r.store32(Word32::CachedTokens, meta.cached_tokens);
            r.store32(Word32::FinishReason, meta.finish);
            let check = response_checksum(
                st.seq,
                outcome.status.to_u32(),
                outcome.flags,
                st.written,
                st.hasher.digest(),
                err.bytes,
                outcome.error_args,
                &meta,
            );
            r.store64(Word64::ResponseChecksum, check);
            if st.ring {
                r.store64(Word64::StreamWritten, st.written);
            }
            r.store64(Word64::ResponseSeq, st.seq);
        }
        self.response_written.post()
    }

    /// Writes the response for request `seq` in one piece and posts `response_written` (the
    /// path for refusals and errors, and for callers that hold the whole text).
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_respond(&self, seq: u64, outcome: &Outcome<'_>) -> io::Result<()> {
        self.worker_respond_tracked(seq, outcome, &mut { RESPONSE_LEN })
    }

    /// [`Channel::worker_respond`] with the response area's dirty length tracked (see
    /// [`Channel::worker_finish`]). A text longer than the area is cut on a char boundary and
    /// flagged [`RESPONSE_TRUNCATED`].
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_respond_tracked(
        &self,
        seq: u64,
        outcome: &Outcome<'_>,
        dirty: &mut usize,
    ) -> io::Result<()> {
        let mut st = self.worker_stream_begin(seq, RequestParams::default());
        let room = match self.worker_stream_room(&mut st) {
            Room::Free(n) => n,
            Room::Garbled => 0,
        };
        let cap = if st.ring { room } else { room.min(RESPONSE_LEN - 1) };
        let kept = text::encode(outcome.text, cap + 1, Policy::Truncate).expect("Truncate never fails");
        self.worker_stream_write(&mut st, kept.bytes);
        let mut o = *outcome;
        if kept.truncated {
            o.flags |= RESPONSE_TRUNCATED;
        }
        self.worker_finish(&o, st, dirty)
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
        self.client_wait(&self.ready, deadline, slice, alive)?;
        if !alive() {
            return Err(WaitError::PeerGone);
        }
        // The worker posts `ready` only after the final `response_written` of the previous
        // request, and posts nothing more until we write: any `response_written` still counted
        // now was left by a request whose client stopped waiting (timed out, or died), or by
        // stream publications the client consumed in bulk. Drop them, so the count is exact
        // again and our own posts are the ones we wait for.
        // Bounded: by count, and by the deadline (checked every 1024 takes).
        for n in 1..=DRAIN_LIMIT {
            if !self.response_written.try_wait()? || (n % 1024 == 0 && expired(deadline, Instant::now())) {
                break;
            }
        }
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
            let r = &self.region;
            let token = req.token.copied().unwrap_or([0; TOKEN_LEN]);
            // What rarely changes is written only when it does: a store to a cache line the
            // worker holds costs a transfer of that line.
            self.set_bytes(Field::AuthToken, 0, &token);
            self.set32(Word32::ClientPid, req.client_pid);
            self.set32(Word32::RequestFlags, req.params.flags);
            self.set32(Word32::MaxTokens, req.params.max_tokens);
            self.set64(Word64::DeadlineMicros, req.params.deadline_us);
            r.store64(Word64::StreamRead, 0);
            self.set32(Word32::ClientCpu, r.current_cpu());
            let check = request_checksum(req.seq, &token, 0, req.params, req.system.bytes, req.user.bytes);
            r.store64(Word64::RequestChecksum, check);
            r.store64(Word64::RequestSeq, req.seq);
            // The worker reads the lengths: payload and NUL are enough, no zero tail.
            for (field, word, bytes) in [
                (Field::SystemPrompt, Word32::SystemLen, req.system.bytes),
                (Field::UserPrompt, Word32::UserLen, req.user.bytes),
            ] {
                let n = bytes.len().min(field.span().len - 1);
                r.store32(word, n as u32);
                r.write(field, 0, &bytes[..n]);
                r.write(field, n, &[0]);
            }
        } else {
            self.write_text(Field::SystemPrompt, req.system.bytes);
            self.write_text(Field::UserPrompt, req.user.bytes);
        }
        self.set_bytes(Field::Shutdown, 0, &[0]);
        self.prompts_written.post()
    }

    /// Client: asks the worker to stop generating request `seq` (extended mode; a no-op in
    /// seed mode). Safe at any time and from any thread: the worker checks it between
    /// pieces, and a later request has another `seq`.
    pub fn client_cancel(&self, seq: u64) {
        if self.extended() && seq != 0 {
            self.region.store64(Word64::CancelSeq, seq);
        }
    }

    /// Client: waits for the response to request `seq` and reads it, text included. In
    /// extended mode a `response_written` whose `response_seq` is not `seq` is stale (left by
    /// an earlier request that timed out or whose client died) and is skipped.
    ///
    /// # Errors
    /// As [`Channel::client_receive`].
    pub fn client_await(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<RawResponse, WaitError> {
        let mut text_bytes = Vec::new();
        let mut scratch = Vec::new();
        let mut raw = self.client_receive(
            seq,
            deadline,
            slice,
            alive,
            u64::MAX,
            &mut scratch,
            &mut |b: &[u8]| text_bytes.extend_from_slice(b),
        )?;
        if self.extended() {
            let decoded = text::decode(&text_bytes);
            raw.decode = decoded.flags;
            raw.decode.missing_nul = false;
            raw.text = decoded.text.into_owned();
        } else {
            // The seed path decoded already and handed over valid UTF-8.
            raw.text = String::from_utf8(text_bytes).unwrap_or_default();
        }
        Ok(raw)
    }

    /// Client: waits for the answer to request `seq`, handing each published piece to
    /// `on_bytes` as it arrives (extended mode: whatever the worker published since the last
    /// wake-up, valid UTF-8 unless the region was scribbled on, which the final checksum then
    /// reports; seed mode: the whole decoded answer once). `scratch` is reused for the
    /// copies. The returned [`RawResponse`] has an empty `text`. At most `limit` bytes of
    /// answer are taken: a worker that goes on past them (an endless answer) is cancelled,
    /// so what the caller accumulates stays bounded.
    ///
    /// # Errors
    /// As [`wait_for`] (the request is then cancelled, so the worker stops generating an
    /// answer nobody reads); [`WaitError::PeerGone`] when the worker died before answering;
    /// [`WaitError::Garbled`] when the stream cursor makes no sense, [`WaitError::TooLong`]
    /// past `limit` (both also cancelled).
    #[allow(clippy::too_many_arguments)] // One call site per kind of caller; a struct would only rename them.
    pub fn client_receive(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
        limit: u64,
        scratch: &mut Vec<u8>,
        on_bytes: &mut dyn FnMut(&[u8]),
    ) -> Result<RawResponse, WaitError> {
        let mut rx = Receiver {
            read: 0,
            hasher: Xxh3::new(),
        };
        loop {
            if let Err(e) = self.client_wait(&self.response_written, deadline, slice, alive) {
                // Nobody will read the rest: let the worker stop at once (it would otherwise
                // wait for ring space until its stall limit).
                self.client_cancel(seq);
                return Err(e);
            }
            if !self.extended() {
                if !alive() {
                    return Err(WaitError::PeerGone);
                }
                return self.read_seed_response(limit, scratch, on_bytes);
            }
            // `response_seq` first: once it names us, the final cursor is visible too.
            let done = self.region.load64(Word64::ResponseSeq) == seq;
            let ours = self.region.load64(Word64::StreamSeq) == seq;
            if ours {
                if let Err(e) = self.consume(&mut rx, limit, scratch, on_bytes) {
                    self.client_cancel(seq);
                    return Err(e);
                }
            }
            if done {
                return Ok(self.read_extended_meta(seq, &rx));
            }
            if !alive() {
                return Err(WaitError::PeerGone);
            }
            // A stale post, or a piece of ours: keep waiting for the end. (The next wait
            // checks the deadline before it takes anything, so a peer that keeps posting
            // cannot hold us past it.)
        }
    }

    /// Copies what the worker published since the last call out of the ring, hands it over,
    /// and moves the read cursor so the worker may reuse the space.
    fn consume(
        &self,
        rx: &mut Receiver,
        limit: u64,
        scratch: &mut Vec<u8>,
        on_bytes: &mut dyn FnMut(&[u8]),
    ) -> Result<(), WaitError> {
        let r = &self.region;
        let cap = r.ring_capacity();
        let w = r.load64(Word64::StreamWritten);
        if w < rx.read || w - rx.read > cap as u64 {
            return Err(WaitError::Garbled(
                "the worker's write cursor moved backwards or past the ring",
            ));
        }
        if w > limit {
            return Err(WaitError::TooLong { limit });
        }
        let n = (w - rx.read) as usize;
        if n == 0 {
            return Ok(());
        }
        scratch.clear();
        scratch.resize(n, 0);
        let pos = (rx.read % cap as u64) as usize;
        let first = n.min(cap - pos);
        r.read(Field::Response, pos, &mut scratch[..first]);
        if first < n {
            r.read(Field::Response, 0, &mut scratch[first..]);
        }
        rx.read = w;
        r.store64(Word64::StreamRead, w);
        rx.hasher.update(scratch);
        on_bytes(scratch);
        Ok(())
    }

    fn read_seed_response(
        &self,
        limit: u64,
        scratch: &mut Vec<u8>,
        on_bytes: &mut dyn FnMut(&[u8]),
    ) -> Result<RawResponse, WaitError> {
        scratch.clear();
        scratch.resize(RESPONSE_LEN, 0);
        self.region.read(Field::Response, 0, scratch);
        let decoded = text::decode(scratch);
        if decoded.text.len() as u64 > limit {
            return Err(WaitError::TooLong { limit });
        }
        if !decoded.text.is_empty() {
            on_bytes(decoded.text.as_bytes());
        }
        Ok(RawResponse {
            status: StatusCode::Ok,
            text: String::new(),
            decode: decoded.flags,
            flags: 0,
            error: String::new(),
            error_args: (0, 0),
            usage: Usage::default(),
            finish: WireFinish::Unknown,
            intact: true,
        })
    }

    fn read_extended_meta(&self, seq: u64, rx: &Receiver) -> RawResponse {
        let r = &self.region;
        // Everything is copied once, then checked and decoded from the private copies.
        let status = r.load32(Word32::Status);
        let flags = r.load32(Word32::ResponseFlags);
        let stored_check = r.load64(Word64::ResponseChecksum);
        let args = (r.load64(Word64::ErrorArg0), r.load64(Word64::ErrorArg1));
        let len = u64::from(r.load32(Word32::ResponseLen));
        let err_len = (r.load32(Word32::ErrorLen) as usize).min(Field::ErrorMessage.span().len - 1);
        let mut ebuf = [0u8; crate::wire::layout::ERROR_MESSAGE_LEN];
        let ebuf = &mut ebuf[..err_len];
        r.read(Field::ErrorMessage, 0, ebuf);
        let meta = ResponseMeta {
            finish: r.load32(Word32::FinishReason),
            prompt_tokens: r.load32(Word32::PromptTokens),
            generated_tokens: r.load32(Word32::GeneratedTokens),
            prompt_us: r.load64(Word64::PromptMicros),
            generation_us: r.load64(Word64::GenerationMicros),
            cached_tokens: r.load32(Word32::CachedTokens),
        };
        let intact = len == rx.read.min(u64::from(u32::MAX))
            && response_checksum(seq, status, flags, rx.read, rx.hasher.digest(), ebuf, args, &meta)
                == stored_check;
        RawResponse {
            status: StatusCode::from_u32(status),
            text: String::new(),
            decode: DecodeFlags::default(),
            flags,
            error: text::decode(ebuf).text.into_owned(),
            error_args: args,
            usage: Usage {
                prompt_tokens: meta.prompt_tokens,
                generated_tokens: meta.generated_tokens,
                prompt_time: Duration::from_micros(meta.prompt_us),
                generation_time: Duration::from_micros(meta.generation_us),
                cached_tokens: meta.cached_tokens,
            },
            finish: WireFinish::from_u32(meta.finish),
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
                request_checksum(seq, &token, 1, RequestParams::default(), &[], &[]),
            );
            self.region.store64(Word64::RequestSeq, seq);
        }
        self.region.write(Field::Shutdown, 0, &[1]);
        self.prompts_written.post()
    }

    /// Client, after [`Channel::client_request_shutdown`] with `seq`: the worker's refusal of
    /// that shutdown, if it answered one (a worker that accepts exits without answering).
    /// Status and message; `None` while there is no answer to `seq` (extended mode only).
    pub fn client_shutdown_refusal(&self, seq: u64) -> Option<(StatusCode, String)> {
        if !self.extended() || self.region.load64(Word64::ResponseSeq) != seq {
            return None;
        }
        let r = &self.region;
        let status = StatusCode::from_u32(r.load32(Word32::Status));
        let err_len = (r.load32(Word32::ErrorLen) as usize).min(Field::ErrorMessage.span().len - 1);
        let mut ebuf = [0u8; crate::wire::layout::ERROR_MESSAGE_LEN];
        r.read(Field::ErrorMessage, 0, &mut ebuf[..err_len]);
        Some((status, text::decode(&ebuf[..err_len]).text.into_owned()))
    }

    /// Whether the worker advertises that it requires an auth token.
    pub fn token_required(&self) -> bool {
        self.extended() && self.region.load32(Word32::Features) & FEATURE_TOKEN_REQUIRED != 0
    }

    /// Whether the worker streams through the ring and honours cancel, deadline and token
    /// budget ([`FEATURE_STREAMING`]).
    pub fn streaming_supported(&self) -> bool {
        self.extended() && self.region.load32(Word32::Features) & FEATURE_STREAMING != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::mem::{MemRegion, NoopSemaphore};

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
            finish: WireFinish::Stop,
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
            assert_eq!(r.finish, WireFinish::Stop);
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
                r.store32(Word32::FinishReason, WireFinish::Stop.to_u32())
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
                finish: WireFinish::Deadline,
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
                clean.intact && clean.finish == WireFinish::Deadline,
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

    use crate::wire::mem::CountingSemaphore as Counting;

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
        ch.spin = Spinner::off();
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
            let mut req = PreparedRequest::encode("s", "u", Policy::Truncate).unwrap();
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
}
