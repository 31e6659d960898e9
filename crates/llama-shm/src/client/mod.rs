//! The client: the Rust `LlamaCppLinuxClient`. Spawns (or attaches to) a worker, sends
//! requests, and shuts the worker down — with a deadline on every wait, a watcher that notices
//! the worker's death at once, and nothing left in `/dev/shm` whatever happens.
//!
//! ```no_run
//! use llama_shm::Client;
//! let mut client = Client::builder().worker("target/release/llama-shm-worker").echo_engine().spawn()?;
//! let answer = client.send_request("Hello", "You are terse.")?;
//! println!("{}", answer.text);
//! client.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod builder;
mod cancel;
mod child;
mod connect;
mod conversation;
mod error;
mod exchange;
mod options;
pub mod pool;
mod shutdown;

pub use builder::{default_worker_path, ClientBuilder, DEFAULT_MAX_ANSWER_BYTES};
pub use cancel::Canceller;
pub use error::{AttachError, ClosedReason, Phase, PromptField, RequestError, ShutdownError, SpawnError};
pub use options::{EngineSettings, Protocol, RequestOptions, Response, RestartPolicy};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use self::cancel::CancelSlot;
use self::child::ChildProc;
use crate::objects::queue::ShmQueue;
use crate::objects::PosixChannel;
use crate::os::process::Watcher;
use crate::protocol::{Prompts, Queue};
use crate::wire::layout::{ObjectKind, TOKEN_LEN};

/// A connection to one worker: the Rust `LlamaCppLinuxClient`. Spawns (or attaches to) a
/// worker, sends requests, and shuts the worker down — with a deadline on every wait, a
/// watcher that notices the worker's death at once, and nothing left in `/dev/shm` whatever
/// happens.
///
/// ```no_run
/// use llama_shm::Client;
/// let mut client = Client::builder().worker("target/release/llama-shm-worker").echo_engine().spawn()?;
/// let answer = client.send_request("Hello", "You are terse.")?;
/// println!("{}", answer.text);
/// client.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Client {
    /// The channel of the slot the current (or last) request uses.
    channel: Arc<PosixChannel>,
    /// Every slot of a multi-slot worker (slot 0 first); empty for one slot.
    slots: Vec<Arc<PosixChannel>>,
    /// The shared worker's admission queue (first come first served when every slot is busy).
    queue: Option<Queue<ShmQueue>>,
    /// Index in `slots` of `channel`.
    slot: usize,
    kind: ObjectKind,
    child: Option<ChildProc>,
    watcher: Option<Watcher>,
    dead: Arc<AtomicBool>,
    worker_pid: Option<u32>,
    token: Option<[u8; TOKEN_LEN]>,
    next_seq: u64,
    holding_turn: bool,
    /// Attached clients share the worker: each request holds the turn lock (`flock`).
    turn_lock: bool,
    closed: Option<ClosedReason>,
    /// Set when the worker died and the restart policy may replace it.
    restartable: bool,
    /// Failed spawn attempts in the current outage.
    restart_attempts: u32,
    /// The request in flight and the current channel, for [`Canceller`].
    cancel_slot: Arc<CancelSlot>,
    /// Reused for copies out of the response area.
    scratch: Vec<u8>,
    /// What the last request's answer left in the request area (embeddings).
    result: Vec<u8>,
    /// This process's pid, read once (`getpid` is a system call on every request otherwise).
    pid: u32,
    cfg: ClientBuilder,
}

impl Client {
    /// A builder with the defaults.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Seed or extended, as detected when the client connected.
    pub fn kind(&self) -> ObjectKind {
        self.kind
    }

    /// Changes the deadline for the following requests.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.cfg.request_timeout = timeout;
    }

    /// Changes the bound on each following answer (see [`ClientBuilder::max_answer_bytes`]).
    pub fn set_max_answer_bytes(&mut self, limit: u64) {
        self.cfg.max_answer_bytes = limit;
    }

    /// The worker's pid, when known.
    pub fn worker_pid(&self) -> Option<u32> {
        self.worker_pid
    }

    /// Sends one request and waits for its answer.
    ///
    /// With a worker of this project the answer is not capped at the 32 KiB response area (it
    /// arrives through the area used as a ring); a seed-mode worker's answer is at most
    /// 32 767 bytes.
    ///
    /// # Errors
    /// [`RequestError`]: a prompt the [`Policy`](super::Policy) rejects (nothing is sent), a timeout, the
    /// worker's death (with its exit status), or an error the worker reports (auth, prompt
    /// too long, engine failure); [`RequestError::RestartFailed`] when a dead worker could not
    /// be replaced under the [`RestartPolicy`]. After a timeout the client stays usable: a late answer is
    /// recognised by its sequence number and skipped.
    pub fn send_request(&mut self, user: &str, system: &str) -> Result<Response, RequestError> {
        self.request(Prompts { system, user }, &RequestOptions::default())
    }

    /// One request with [`RequestOptions`] (deadline, token budget); otherwise as
    /// [`Client::send_request`].
    ///
    /// # Errors
    /// As [`Client::send_request`].
    pub fn request(&mut self, prompts: Prompts<'_>, opts: &RequestOptions) -> Result<Response, RequestError> {
        let mut text = String::new();
        let mut r = self.exchange(prompts, opts, false, &mut |chunk| text.push_str(chunk))?;
        r.text = text;
        Ok(r)
    }

    /// Sends one request and hands the answer to `on_chunk` piece by piece as the worker
    /// generates it (time to first chunk ≈ prompt time + one token). The returned
    /// [`Response`] carries the whole text too. A seed-mode worker cannot stream: its answer
    /// arrives as one chunk.
    ///
    /// ```no_run
    /// use std::io::Write;
    /// use llama_shm::{Client, Prompts, RequestOptions};
    /// let mut client = Client::builder().worker("target/release/llama-shm-worker").spawn()?;
    /// let r = client.stream(Prompts::user("Why is the sky blue?").with_system("Be brief."), &RequestOptions::default(), |chunk| {
    ///     print!("{chunk}");
    ///     let _ = std::io::stdout().flush();
    /// })?;
    /// println!("\n{} tokens, finish {:?}", r.usage.generated_tokens, r.finish);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Chunks are handed over as they arrive, before the final checksum is known: if the
    /// region was corrupted in transit the call still ends in [`RequestError::Corrupt`].
    ///
    /// # Errors
    /// As [`Client::send_request`].
    pub fn stream(
        &mut self,
        prompts: Prompts<'_>,
        opts: &RequestOptions,
        mut on_chunk: impl FnMut(&str),
    ) -> Result<Response, RequestError> {
        let mut text = String::new();
        let mut r = self.exchange(prompts, opts, true, &mut |chunk| {
            text.push_str(chunk);
            on_chunk(chunk);
        })?;
        r.text = text;
        Ok(r)
    }

    /// [`Client::request`] that appends the answer to `out` (cleared first) and returns a
    /// [`Response`] with an empty `text`: with a reused `out`, a request allocates nothing.
    ///
    /// # Errors
    /// As [`Client::send_request`].
    pub fn request_into(
        &mut self,
        prompts: Prompts<'_>,
        opts: &RequestOptions,
        out: &mut String,
    ) -> Result<Response, RequestError> {
        out.clear();
        self.exchange(prompts, opts, false, &mut |chunk| out.push_str(chunk))
    }

    /// A handle that cancels this client's request in flight from another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller(Arc::clone(&self.cancel_slot))
    }

    /// Whether the worker streams, honours cancel, deadlines and token budgets (this
    /// project's worker does; a seed-mode worker does not).
    pub fn supports_streaming(&self) -> bool {
        self.channel.streaming_supported()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.shutdown_inner() {
                tracing::warn!("shutting the worker down on drop: {e}");
            }
        }
    }
}
