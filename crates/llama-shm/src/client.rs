//! The client: the Rust `LlamaCppLinuxClient`. Spawns (or attaches to) a worker, sends
//! requests, and shuts the worker down — with a deadline on every wait, a watcher that notices
//! the worker's death at once, and nothing left in `/dev/shm` whatever happens.
//!
//! ```no_run
//! use llama_shm::Client;
//! let mut client = Client::builder().worker("target/release/llama-shm-worker").arg("--engine").arg("echo").spawn()?;
//! let answer = client.send_request("Hello", "You are terse.")?;
//! println!("{}", answer.text);
//! client.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Spawning, step by step: create the four objects under an unguessable prefix (`O_EXCL`,
//! 0600) → start the worker with a control socket as its stdin → send it the auth token →
//! wait for "attached" → unlink every name (from here a crash of either side leaves nothing
//! behind) → watch the worker's pidfd → wait for `ready` with the start-up deadline.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, BufRead};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::{self, ControlMsg};
use crate::names::Prefix;
use crate::objects::{self, ExtInit, ObjectsError, PosixChannel, Trust};
use crate::os::process::{self, ExitInfo, Watch, Watcher};
use crate::protocol::{PreparedRequest, Region, RequestParams, Usage, WaitError};
use crate::wire::layout::{ObjectKind, Word32, FEATURE_TOKEN_REQUIRED, REQUEST_STREAM, TOKEN_LEN};
use crate::wire::status::{StatusCode, WireFinish};
use crate::wire::text::{EncodeError, Policy};

/// Which protocol the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Use the extension page when the worker has one, the seed's protocol otherwise.
    #[default]
    Auto,
    /// Speak only the seed's protocol, even to a worker with an extension page.
    Seed,
}

/// The step of a request (or of start-up) during which something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Starting the worker and waiting for its first `ready`.
    Startup,
    /// Waiting for the turn lock that serialises clients attached to one worker.
    WaitingTurn,
    /// Waiting for `ready` before writing a request.
    WaitingReady,
    /// Waiting for `response_written`.
    WaitingResponse,
    /// Shutting down.
    Shutdown,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Startup => "start-up",
            Phase::WaitingTurn => "waiting for the turn (another client is using the worker)",
            Phase::WaitingReady => "waiting for the worker to be ready",
            Phase::WaitingResponse => "waiting for the response",
            Phase::Shutdown => "shutdown",
        })
    }
}

/// When a spawned worker has died, whether and how the client starts a new one.
///
/// The request that met the death fails with [`RequestError::WorkerDied`]; the next request
/// respawns the worker (same binary, arguments and options) and is sent to it. Consecutive
/// failed spawns wait `backoff`, doubling up to `max_backoff`, and give up after
/// `max_attempts` with [`RequestError::RestartFailed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Spawn attempts per outage before giving up (0 disables restarts).
    pub max_attempts: u32,
    /// Wait before the second attempt of an outage (the first is immediate).
    pub backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl RestartPolicy {
    /// No restarts: a dead worker closes the client (the default).
    pub const NEVER: RestartPolicy = RestartPolicy {
        max_attempts: 0,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };
    /// Up to 5 attempts, 10 ms backoff doubling to 1 s.
    pub const DEFAULT: RestartPolicy = RestartPolicy {
        max_attempts: 5,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_secs(1),
    };
}

/// Which prompt an encoding error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptField {
    /// The system prompt.
    System,
    /// The user prompt.
    User,
}

/// Why the worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No worker path was given.
    #[error("no worker binary given (ClientBuilder::worker)")]
    NoWorker,
    /// The worker binary does not exist.
    #[error("worker binary {path} does not exist")]
    WorkerNotFound {
        /// The path.
        path: PathBuf,
    },
    /// The worker binary cannot be executed.
    #[error("worker binary {path} is not executable: {source}")]
    NotExecutable {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The worker exited during start-up.
    #[error("worker {exit} during start-up{}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default(), stderr_suffix(stderr))]
    WorkerExited {
        /// How it ended.
        exit: ExitInfo,
        /// The error it reported, if any.
        message: Option<String>,
        /// The last lines it wrote to stderr.
        stderr: Vec<String>,
    },
    /// The worker did not become ready in time.
    #[error("worker not ready after {waited:?} (start-up timeout); it was killed")]
    StartupTimeout {
        /// How long we waited.
        waited: Duration,
    },
    /// Creating or opening the objects failed.
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    /// Another OS failure (random source, socket, pidfd).
    #[error("start-up failed: {0}")]
    Io(#[from] io::Error),
}

fn stderr_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last stderr: {}", lines.join(" | "))
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A prompt cannot be encoded under [`Policy::Strict`] (too long, or an interior NUL).
    #[error("{field:?} prompt rejected: {source}")]
    Encode {
        /// Which prompt.
        field: PromptField,
        /// Why.
        #[source]
        source: EncodeError,
    },
    /// The deadline passed.
    #[error("timed out after {waited:?} {phase}")]
    Timeout {
        /// The step.
        phase: Phase,
        /// How long we waited.
        waited: Duration,
    },
    /// The worker died.
    #[error("worker {exit} while {phase}")]
    WorkerDied {
        /// The step.
        phase: Phase,
        /// How it ended.
        exit: ExitInfo,
    },
    /// The worker refused the request's auth token.
    #[error("worker refused the request: {message}")]
    Unauthorized {
        /// The worker's message.
        message: String,
    },
    /// The prompt does not fit in the model's context.
    #[error("prompt is {tokens} tokens; the context holds {ctx}")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: u64,
        /// Context size.
        ctx: u64,
    },
    /// The worker's engine failed.
    #[error("engine failed: {message}")]
    Engine {
        /// The worker's message.
        message: String,
    },
    /// The worker judged the request malformed.
    #[error("bad request: {message}")]
    BadRequest {
        /// The worker's message.
        message: String,
    },
    /// The worker is shutting down.
    #[error("worker is shutting down: {message}")]
    ShuttingDown {
        /// The worker's message.
        message: String,
    },
    /// A status this build does not know.
    #[error("worker answered with unknown status {status}: {message}")]
    UnknownStatus {
        /// The status.
        status: u32,
        /// The worker's message.
        message: String,
    },
    /// The worker had died and could not be started again within the restart policy.
    #[error("worker could not be restarted after {attempts} attempt(s): {source}")]
    RestartFailed {
        /// Spawn attempts made in this outage.
        attempts: u32,
        /// The last spawn error.
        #[source]
        source: Box<SpawnError>,
    },
    /// The response's checksum did not match: something changed it in shared memory after
    /// the worker wrote it. The request may be retried.
    #[error("response corrupted in shared memory (checksum mismatch)")]
    Corrupt,
    /// The answer grew past the client's bound ([`ClientBuilder::max_answer_bytes`]): the
    /// request was cancelled, and what arrived before the bound was handed to the stream
    /// callback but is not returned. The client stays usable.
    #[error("answer longer than {limit} bytes (the client's bound); request cancelled")]
    AnswerTooLong {
        /// The bound, in bytes.
        limit: u64,
    },
    /// The client was shut down, or an earlier failure left it unusable.
    #[error("client is closed: {reason}")]
    Closed {
        /// Why.
        reason: String,
    },
    /// A semaphore failed.
    #[error("semaphore failure {phase}: {source}")]
    Os {
        /// The step.
        phase: Phase,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Why a client could not attach to a running worker.
pub type AttachError = ObjectsError;

/// Why shutdown was not clean.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// The worker did not exit within the bound and was killed.
    #[error("worker did not exit within {waited:?} and was killed")]
    Killed {
        /// How long we waited.
        waited: Duration,
    },
    /// The worker exited with a failure status.
    #[error("worker {exit}")]
    Failed {
        /// How it ended.
        exit: ExitInfo,
    },
    /// Posting the shutdown failed.
    #[error("could not signal shutdown: {0}")]
    Io(#[from] io::Error),
    /// No turn came within half the bound (the worker is busy with another client's request):
    /// nothing was asked of the worker, which is still running.
    #[error("no turn within {waited:?}: the worker is busy and was not asked to shut down")]
    NoTurn {
        /// How long we waited for the turn.
        waited: Duration,
    },
    /// The worker refused the shutdown (a missing or wrong auth token) and is still running.
    #[error("the worker refused the shutdown ({status:?}): {message}")]
    Refused {
        /// The worker's status.
        status: StatusCode,
        /// The worker's message.
        message: String,
    },
    /// The shutdown was asked, but the worker was not seen to exit within the bound.
    #[error("asked the worker to shut down, but it did not exit within {waited:?}")]
    NotConfirmed {
        /// How long we waited.
        waited: Duration,
    },
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The answer text (valid UTF-8).
    pub text: String,
    /// The worker cut the answer at the 32 KiB response limit.
    pub truncated: bool,
    /// The client cut the system prompt to fit its field ([`Policy::Truncate`]).
    pub system_truncated: bool,
    /// The client cut the user prompt to fit its field.
    pub user_truncated: bool,
    /// The request's sequence number (0 in seed mode).
    pub seq: u64,
    /// Resource use reported by the worker (zeros in seed mode).
    pub usage: Usage,
    /// Why the answer ended (`Unknown` in seed mode).
    pub finish: WireFinish,
}

/// What a request asks beyond its prompts. Honoured by workers that advertise streaming
/// (this project's worker); a seed-mode worker answers in its own way and only the client's
/// request timeout applies.
///
/// ```
/// use std::time::Duration;
/// use llama_shm::RequestOptions;
/// let opts = RequestOptions::default().deadline(Duration::from_secs(5)).max_tokens(64);
/// assert_eq!(opts.max_tokens, Some(64));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// Generation budget, counted by the worker from when it takes the request: when it
    /// passes, generation stops within one token and the answer so far comes back with
    /// [`WireFinish::Deadline`]. The client's request timeout still bounds the whole wait.
    pub deadline: Option<Duration>,
    /// Most tokens to generate (the worker's own limit applies too).
    pub max_tokens: Option<u32>,
}

impl RequestOptions {
    /// Sets the deadline.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }
    /// Sets the token budget.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }
}

/// Cancels the request a [`Client`] is running, from any thread. Get one with
/// [`Client::canceller`]; it stays valid for the client's life, across restarts of its worker.
///
/// ```no_run
/// use std::time::Duration;
/// use llama_shm::{Client, RequestOptions};
/// let mut client = Client::builder().worker("target/release/llama-shm-worker").spawn()?;
/// let canceller = client.canceller();
/// std::thread::spawn(move || {
///     std::thread::sleep(Duration::from_secs(2));
///     canceller.cancel(); // the request below returns its partial answer, finish Cancelled
/// });
/// let r = client.stream("Tell me a long story.", "", &RequestOptions::default(), |c| print!("{c}"))?;
/// println!("\n{:?}", r.finish);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Canceller(Arc<CancelSlot>);

/// What a [`Canceller`] needs, under one lock: the client sets and clears `in_flight` under
/// it, and `cancel` holds it while it reads `in_flight` and stores the cancel, so a cancel can
/// never store the sequence number of a request that already ended over a newer request's
/// cancel (found by the spin model, verification/spin/stream.pml).
#[derive(Debug)]
struct CancelSlot(Mutex<InFlight>);

#[derive(Debug)]
struct InFlight {
    /// Sequence number of the request in flight, 0 when none.
    seq: u64,
    /// The channel of the current worker (replaced on restart).
    channel: Arc<PosixChannel>,
}

impl CancelSlot {
    fn new(channel: &Arc<PosixChannel>) -> Arc<Self> {
        Arc::new(Self(Mutex::new(InFlight {
            seq: 0,
            channel: Arc::clone(channel),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Canceller {
    /// Asks the worker to stop the request in flight: generation stops within one token and
    /// the request returns what was produced, with [`WireFinish::Cancelled`]. Returns whether
    /// a request was in flight. A seed-mode worker cannot be told, and this returns `false`.
    pub fn cancel(&self) -> bool {
        let slot = self.0.lock();
        if slot.seq == 0 || slot.channel.region.kind() != ObjectKind::Extended {
            return false;
        }
        slot.channel.client_cancel(slot.seq);
        true
    }
}

/// Builds a [`Client`]: `Client::builder().worker(path).arg(..).spawn()`.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    worker: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    prefix: Option<Prefix>,
    mode: Mode,
    object_mode: u32,
    trust: Trust,
    policy: Policy,
    startup_timeout: Duration,
    request_timeout: Duration,
    shutdown_timeout: Duration,
    poll_slice: Duration,
    token: Option<[u8; TOKEN_LEN]>,
    restart: RestartPolicy,
    spin: Duration,
    max_answer_bytes: u64,
    others_may_crash: bool,
}

/// The default bound on one answer (see [`ClientBuilder::max_answer_bytes`]): 8 MiB, far
/// beyond what a model's context produces (2 M tokens of 4 bytes), far below what would
/// hurt a desktop application.
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 8 << 20;

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            worker: None,
            args: Vec::new(),
            envs: Vec::new(),
            prefix: None,
            mode: Mode::Auto,
            object_mode: 0o600,
            trust: Trust::default(),
            policy: Policy::Truncate,
            startup_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(600),
            shutdown_timeout: Duration::from_secs(5),
            poll_slice: Duration::from_millis(50),
            token: None,
            restart: RestartPolicy::NEVER,
            spin: Duration::from_nanos(u64::from(crate::protocol::AdaptiveWait::DEFAULT_MAX_NS)),
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            others_may_crash: false,
        }
    }
}

impl ClientBuilder {
    /// The worker binary to spawn.
    pub fn worker(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker = Some(path.into());
        self
    }
    /// Appends one argument for the worker (e.g. `--engine`, `echo`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }
    /// Appends arguments for the worker.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    /// Sets an environment variable for the worker.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }
    /// The prefix for a spawned worker's objects (default: a fresh unguessable one).
    pub fn prefix(mut self, prefix: Prefix) -> Self {
        self.prefix = Some(prefix);
        self
    }
    /// Seed or auto mode (default auto).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
    /// Permission bits of created objects (default `0o600`). Bits that let other users write
    /// them (`0o022`) are refused unless [`ClientBuilder::others_may_crash_this_client`]:
    /// whoever can write an object can shrink it and crash every process that maps it.
    pub fn object_mode(mut self, mode: u32) -> Self {
        self.object_mode = mode;
        self
    }
    /// Widest permission bits accepted on objects we open (default `0o600`; a seed-era worker
    /// creates `0o666` objects, which must be allowed explicitly — and, since other users
    /// can write those, with [`ClientBuilder::others_may_crash_this_client`] too).
    pub fn trust_mode(mut self, max_mode: u32) -> Self {
        self.trust = Trust { max_mode };
        self
    }

    /// Accepts objects that other users may write ([`ClientBuilder::object_mode`] or
    /// [`ClientBuilder::trust_mode`] with group or other write bits). Any of those users can
    /// then `ftruncate` an object this client maps, and the client (and a spawned worker)
    /// dies of `SIGBUS` at its next access: say so only where that is acceptable (see
    /// SECURITY.md).
    pub fn others_may_crash_this_client(mut self, accept: bool) -> Self {
        self.others_may_crash = accept;
        self
    }
    /// What to do with prompts that do not fit (default [`Policy::Truncate`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// Deadline for the worker's first `ready` (default 120 s: large models load slowly).
    pub fn startup_timeout(mut self, t: Duration) -> Self {
        self.startup_timeout = t;
        self
    }
    /// Deadline for each request (default 600 s). A dead worker is noticed at once anyway.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }
    /// How long shutdown waits for the worker to exit before killing it (default 5 s).
    pub fn shutdown_timeout(mut self, t: Duration) -> Self {
        self.shutdown_timeout = t;
        self
    }

    /// The request timeout this builder gives its clients.
    pub(crate) fn request_timeout_value(&self) -> Duration {
        self.request_timeout
    }

    /// The adaptive wait's longest spin before blocking (default 50 µs; zero blocks at once).
    /// It spins only while the worker runs on another CPU; see [`crate::protocol::AdaptiveWait`].
    pub fn spin(mut self, max: Duration) -> Self {
        self.spin = max;
        self
    }

    /// The most bytes one answer may have (default [`DEFAULT_MAX_ANSWER_BYTES`]). A worker
    /// that goes on past it (an endless answer) is cancelled and the request fails with
    /// [`RequestError::AnswerTooLong`], so a client's memory stays near the bound whatever
    /// the worker sends.
    pub fn max_answer_bytes(mut self, limit: u64) -> Self {
        self.max_answer_bytes = limit;
        self
    }

    /// Respawn a dead worker on the next request (spawned clients only; default: never).
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// The auth token to present to an attached worker started with `--token-file`
    /// (spawned workers get a fresh random token automatically).
    pub fn token(mut self, token: [u8; TOKEN_LEN]) -> Self {
        self.token = Some(token);
        self
    }

    /// Spawns the worker and waits until it is ready.
    ///
    /// # Errors
    /// [`SpawnError`]: a missing or non-executable binary, objects that cannot be created,
    /// a worker that exits during start-up (with its exit status, its own error message and
    /// its last stderr lines) or that is not ready by the start-up deadline.
    pub fn spawn(self) -> Result<Client, SpawnError> {
        objects::check_mode(self.object_mode, self.others_may_crash)?;
        let started = Instant::now();
        let deadline = started + self.startup_timeout;
        let path = self.worker.clone().ok_or(SpawnError::NoWorker)?;
        let prefix = match &self.prefix {
            Some(p) => p.clone(),
            None => Prefix::random().map_err(|e| io::Error::other(e.to_string()))?,
        };
        let mut token = [0u8; TOKEN_LEN];
        getrandom::getrandom(&mut token).map_err(|e| io::Error::other(e.to_string()))?;
        // The worker starts before the objects exist (it waits for the token): from the
        // moment they do, a process that can remove them if we die runs — it reclaims the
        // names of a dead creator on its way out (so a SIGKILL of this process between
        // creating and unlinking them leaves nothing).
        let (mut control_sock, worker_end) = UnixStream::pair()?;
        let mut cmd = Command::new(&path);
        cmd.args(&self.args)
            .arg("--prefix")
            .arg(prefix.as_str())
            .arg("--mode")
            .arg(format!("{:o}", self.object_mode))
            .args(self.others_may_crash.then_some("--others-may-crash-this-worker"))
            .arg("--control-stdin")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(OwnedFd::from(worker_end)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C meant for the client does not hit the worker,
            // which the client shuts down in order instead.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SpawnError::WorkerNotFound { path: path.clone() },
            io::ErrorKind::PermissionDenied => SpawnError::NotExecutable {
                path: path.clone(),
                source: e,
            },
            _ => SpawnError::Io(e),
        })?;
        drop(cmd);
        let stderr = StderrTail::start(child.stderr.take());
        let mut proc = ChildProc {
            child,
            control: control_sock.try_clone()?,
            stderr,
            rx: control::Receiver::default(),
        };
        let channel = match objects::create(
            &prefix,
            self.object_mode,
            ExtInit {
                creator_pid: std::process::id(),
                features: FEATURE_TOKEN_REQUIRED,
                guardian_pid: 0,
            },
        ) {
            Ok(channel) => channel,
            Err(e) => {
                proc.kill();
                return Err(e.into());
            }
        };

        let fail = |proc: &mut ChildProc, fallback: Option<String>| -> SpawnError {
            let (exit, message) = proc.reap_with_message(deadline);
            match exit {
                Some(exit) => SpawnError::WorkerExited {
                    exit,
                    message: message.or(fallback),
                    stderr: proc.stderr.lines(),
                },
                None => SpawnError::StartupTimeout {
                    waited: started.elapsed(),
                },
            }
        };

        if let Err(e) = control::send_token(&mut control_sock, &token) {
            tracing::debug!("sending the token failed: {e}");
            return Err(fail(&mut proc, None));
        }
        match proc.rx.recv(&mut proc.control, deadline) {
            Ok(Some(ControlMsg::Attached)) => {}
            Ok(Some(ControlMsg::Error(m))) => return Err(fail(&mut proc, Some(m))),
            Ok(None) => return Err(fail(&mut proc, None)),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                proc.kill();
                return Err(SpawnError::StartupTimeout {
                    waited: started.elapsed(),
                });
            }
            Err(e) => {
                proc.kill();
                return Err(SpawnError::Io(e));
            }
        }
        // Both sides hold every object now: from here nothing can leak.
        objects::unlink(&channel)?;
        let mut channel = channel;
        channel.adaptive = crate::protocol::AdaptiveWait::new(self.spin);
        let channel = Arc::new(channel);
        let dead = Arc::new(AtomicBool::new(false));
        let worker_pid = proc.child.id();
        let watcher = start_watcher(&[worker_pid], &channel, &dead);
        let mut client = Client {
            cancel_slot: CancelSlot::new(&channel),
            channel,
            kind: ObjectKind::Extended,
            child: Some(proc),
            watcher,
            dead,
            worker_pid: Some(worker_pid),
            token: Some(token),
            next_seq: 1,
            holding_turn: false,
            turn_lock: false,
            closed: None,
            restartable: false,
            restart_attempts: 0,
            scratch: Vec::with_capacity(crate::wire::layout::RESPONSE_LEN),
            pid: std::process::id(),
            cfg: self,
        };
        let alive = client.alive_fn();
        let waited = client
            .channel
            .client_acquire(Some(deadline), client.cfg.poll_slice, &alive);
        drop(alive);
        match waited {
            Ok(()) => {
                client.holding_turn = true;
                Ok(client)
            }
            Err(WaitError::PeerGone) => {
                let mut proc = client.child.take().expect("spawned client has a child");
                client.closed = Some("worker died during start-up".into());
                Err(fail(&mut proc, None))
            }
            Err(WaitError::TimedOut | WaitError::Garbled(_) | WaitError::TooLong { .. }) => {
                client.closed = Some("start-up timed out".into());
                if let Some(mut p) = client.child.take() {
                    p.kill();
                }
                Err(SpawnError::StartupTimeout {
                    waited: started.elapsed(),
                })
            }
            Err(WaitError::Os(e)) => Err(SpawnError::Io(e)),
        }
    }

    /// Attaches to a worker already serving `prefix` (e.g. a standalone `llama-shm-worker`;
    /// `Prefix::seed()` for the seed's names). Its objects must belong to this user and grant
    /// no more than the trusted mode.
    ///
    /// # Errors
    /// [`ObjectsError`] when the objects are missing, untrusted or malformed.
    pub fn attach(self, prefix: &Prefix) -> Result<Client, AttachError> {
        objects::check_mode(self.trust.max_mode, self.others_may_crash)?;
        let mut channel = objects::open(prefix, self.trust)?;
        if self.mode == Mode::Seed {
            channel.region.force_seed();
        }
        let kind = channel.region.kind();
        // The worker's pid is known when it recorded it. Otherwise (a seed-era worker) it is
        // one of the processes that map the object, but which one cannot be told: the others
        // may be clients. Then the worker counts as gone once all of them are (one client's
        // exit must not read as the worker's death), and its pid stays unknown.
        let worker_pid = match kind {
            ObjectKind::Extended => Some(channel.region.load32(Word32::WorkerPid)).filter(|&p| p != 0),
            ObjectKind::Seed => None,
        };
        let mappers = match worker_pid {
            Some(_) => Vec::new(),
            None => process::processes_mapping_inode(channel.region.shm().inode()),
        };
        let mut channel = channel;
        channel.adaptive = crate::protocol::AdaptiveWait::new(self.spin);
        let channel = Arc::new(channel);
        let dead = Arc::new(AtomicBool::new(false));
        let watcher = match worker_pid {
            Some(pid) => start_watcher(&[pid], &channel, &dead),
            None if !mappers.is_empty() => start_watcher(&mappers, &channel, &dead),
            None => None,
        };
        Ok(Client {
            cancel_slot: CancelSlot::new(&channel),
            channel,
            kind,
            child: None,
            watcher,
            dead,
            worker_pid,
            token: self.token,
            next_seq: first_attach_seq(),
            holding_turn: false,
            turn_lock: true,
            closed: None,
            restartable: false,
            restart_attempts: 0,
            scratch: Vec::with_capacity(crate::wire::layout::RESPONSE_LEN),
            pid: std::process::id(),
            cfg: self,
        })
    }
}

/// Attached clients share a worker: start their sequence numbers far apart so that one
/// client's stale response is never taken for another's.
fn first_attach_seq() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    (u64::from_ne_bytes(b) >> 16).max(1)
}

/// Watches the worker: `pids` is its pid, or the processes one of which is the worker (it is
/// taken for dead once all of them have exited).
fn start_watcher(pids: &[u32], channel: &Arc<PosixChannel>, dead: &Arc<AtomicBool>) -> Option<Watcher> {
    let mut watches = Vec::with_capacity(pids.len());
    for &pid in pids {
        match process::pidfd_open(pid) {
            Ok(fd) => watches.push(Watch::Pidfd(fd)),
            // Exited already: nothing to wait for.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                tracing::debug!("no pidfd for worker {pid} ({e}); liveness is polled instead");
                return None;
            }
        }
    }
    if watches.is_empty() {
        return None;
    }
    let (channel, dead) = (Arc::clone(channel), Arc::clone(dead));
    Watcher::spawn_when_all("llama-shm-watch", watches, move |_| {
        dead.store(true, Ordering::SeqCst);
        // Wake whatever the client is blocked on; the worker is gone, so these counts no
        // longer mean anything to anyone.
        let _ = channel.ready.post();
        let _ = channel.response_written.post();
    })
    .map_err(|e| tracing::warn!("cannot start the worker watcher: {e}"))
    .ok()
}

/// A spawned worker process and its side channels.
#[derive(Debug)]
struct ChildProc {
    child: Child,
    control: UnixStream,
    stderr: StderrTail,
    rx: control::Receiver,
}

impl ChildProc {
    /// Waits (until `deadline`, then kills) for the worker to exit; returns how it ended and
    /// the error message it sent on the control socket, if any.
    fn reap_with_message(&mut self, deadline: Instant) -> (Option<ExitInfo>, Option<String>) {
        let mut message = None;
        // The worker sends its error and exits; read until EOF (bounded by the deadline).
        while let Ok(Some(msg)) = self.rx.recv(&mut self.control, deadline) {
            if let ControlMsg::Error(m) = msg {
                message = Some(m);
            }
        }
        let exit = self.wait_until(deadline);
        if exit.is_none() {
            self.kill();
        }
        self.stderr.finish(deadline);
        (exit, message)
    }

    /// Waits for exit until `deadline` using a pidfd; `None` if still running.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitInfo> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(ExitInfo::from_status(status));
        }
        if let Ok(pidfd) = process::pidfd_open(self.child.id()) {
            wait_fd_readable(pidfd.as_fd(), deadline);
        } else {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.child.try_wait().ok().flatten().map(ExitInfo::from_status)
    }

    fn kill(&mut self) -> Option<ExitInfo> {
        let _ = self.child.kill();
        self.child.wait().ok().map(ExitInfo::from_status)
    }
}

fn wait_fd_readable(fd: std::os::fd::BorrowedFd<'_>, deadline: Instant) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return true,
            Ok(_) if left.is_zero() => return false,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// Keeps the last lines a worker wrote to stderr (and logs them at debug level).
#[derive(Debug)]
struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StderrTail {
    const KEEP: usize = 20;
    /// Longest line kept (bytes); the rest of a longer one is dropped, so a worker that
    /// writes without newlines cannot grow the client.
    const MAX_LINE: usize = 4096;

    fn start(stderr: Option<std::process::ChildStderr>) -> Self {
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let thread = stderr.and_then(|s| {
            let lines = Arc::clone(&lines);
            std::thread::Builder::new()
                .name("llama-shm-stderr".into())
                .spawn(move || {
                    let keep = |line: &[u8], cut: bool| {
                        let mut line = String::from_utf8_lossy(line).into_owned();
                        if cut {
                            line.push_str(" […]");
                        }
                        tracing::debug!(target: "llama_shm::worker", "{line}");
                        let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
                        if l.len() == Self::KEEP {
                            l.pop_front();
                        }
                        l.push_back(line);
                    };
                    let mut reader = io::BufReader::new(s);
                    let (mut line, mut cut) = (Vec::with_capacity(256), false);
                    loop {
                        let buf = match reader.fill_buf() {
                            Ok([]) | Err(_) => break,
                            Ok(buf) => buf,
                        };
                        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
                            Some(i) => (&buf[..i], Some(i + 1)),
                            None => (buf, None),
                        };
                        let room = Self::MAX_LINE - line.len();
                        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        cut |= chunk.len() > room;
                        let used = newline.unwrap_or(buf.len());
                        reader.consume(used);
                        if newline.is_some() {
                            keep(&line, cut);
                            (line, cut) = (Vec::with_capacity(256), false);
                        }
                    }
                    if !line.is_empty() {
                        keep(&line, cut);
                    }
                })
                .ok()
        });
        Self { lines, thread }
    }

    /// Waits (bounded) for the reader to see EOF, so the tail is complete.
    fn finish(&mut self, deadline: Instant) {
        if let Some(t) = &self.thread {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = self.thread.take().map(|t| t.join());
            }
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Releases the turn lock when dropped.
struct TurnGuard(Option<Arc<PosixChannel>>);

impl Drop for TurnGuard {
    fn drop(&mut self) {
        if let Some(ch) = &self.0 {
            ch.region.shm().unlock();
        }
    }
}

/// A connection to one worker. See the [module docs](self).
#[derive(Debug)]
pub struct Client {
    channel: Arc<PosixChannel>,
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
    closed: Option<String>,
    /// Set when the worker died and the restart policy may replace it.
    restartable: bool,
    /// Failed spawn attempts in the current outage.
    restart_attempts: u32,
    /// The request in flight and the current channel, for [`Canceller`].
    cancel_slot: Arc<CancelSlot>,
    /// Reused for copies out of the response area.
    scratch: Vec<u8>,
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

    fn alive_fn(&self) -> impl Fn() -> bool + '_ {
        let polled = self.watcher.is_none();
        move || {
            if self.dead.load(Ordering::SeqCst) {
                return false;
            }
            match (polled, self.worker_pid) {
                (true, Some(pid)) => process::pid_alive(pid),
                _ => true,
            }
        }
    }

    fn died(&mut self, phase: Phase) -> RequestError {
        let exit = match &mut self.child {
            Some(p) => p
                .wait_until(Instant::now() + Duration::from_secs(1))
                .unwrap_or(ExitInfo::Unknown),
            None => ExitInfo::Unknown,
        };
        self.closed = Some(format!("worker {exit}"));
        self.restartable = self.child.is_some() && self.cfg.restart.max_attempts > 0;
        RequestError::WorkerDied { phase, exit }
    }

    /// Sends one request and waits for its answer.
    ///
    /// With a worker of this project the answer is not capped at the 32 KiB response area (it
    /// arrives through the area used as a ring); a seed-mode worker's answer is at most
    /// 32 767 bytes.
    ///
    /// # Errors
    /// [`RequestError`]: a prompt the [`Policy`] rejects (nothing is sent), a timeout, the
    /// worker's death (with its exit status), or an error the worker reports (auth, prompt
    /// too long, engine failure); [`RequestError::RestartFailed`] when a dead worker could not
    /// be replaced under the [`RestartPolicy`]. After a timeout the client stays usable: a late answer is
    /// recognised by its sequence number and skipped.
    pub fn send_request(&mut self, user: &str, system: &str) -> Result<Response, RequestError> {
        self.request(user, system, &RequestOptions::default())
    }

    /// [`Client::send_request`] with [`RequestOptions`] (deadline, token budget).
    ///
    /// # Errors
    /// As [`Client::send_request`].
    pub fn request(
        &mut self,
        user: &str,
        system: &str,
        opts: &RequestOptions,
    ) -> Result<Response, RequestError> {
        let mut text = String::new();
        let mut r = self.exchange(user, system, opts, false, &mut |chunk| text.push_str(chunk))?;
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
    /// use llama_shm::{Client, RequestOptions};
    /// let mut client = Client::builder().worker("target/release/llama-shm-worker").spawn()?;
    /// let r = client.stream("Why is the sky blue?", "Be brief.", &RequestOptions::default(), |chunk| {
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
        user: &str,
        system: &str,
        opts: &RequestOptions,
        mut on_chunk: impl FnMut(&str),
    ) -> Result<Response, RequestError> {
        let mut text = String::new();
        let mut r = self.exchange(user, system, opts, true, &mut |chunk| {
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
        user: &str,
        system: &str,
        opts: &RequestOptions,
        out: &mut String,
    ) -> Result<Response, RequestError> {
        out.clear();
        self.exchange(user, system, opts, false, &mut |chunk| out.push_str(chunk))
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

    fn exchange(
        &mut self,
        user: &str,
        system: &str,
        opts: &RequestOptions,
        stream: bool,
        on_chunk: &mut dyn FnMut(&str),
    ) -> Result<Response, RequestError> {
        if self.restartable {
            self.respawn()?;
        }
        if let Some(reason) = &self.closed {
            return Err(RequestError::Closed {
                reason: reason.clone(),
            });
        }
        let policy = self.cfg.policy;
        let sys = crate::wire::text::encode(system, crate::wire::layout::SYSTEM_PROMPT_LEN, policy).map_err(
            |source| RequestError::Encode {
                field: PromptField::System,
                source,
            },
        )?;
        let usr = crate::wire::text::encode(user, crate::wire::layout::USER_PROMPT_LEN, policy).map_err(
            |source| RequestError::Encode {
                field: PromptField::User,
                source,
            },
        )?;
        let started = Instant::now();
        let deadline = started + self.cfg.request_timeout;
        let slice = self.cfg.poll_slice;
        // Held until the response is read: another client's request cannot start meanwhile.
        let _turn = self.lock_turn(deadline)?;
        if !self.holding_turn {
            let alive = self.alive_fn();
            let r = self.channel.client_acquire(Some(deadline), slice, &alive);
            drop(alive);
            match r {
                Ok(()) => {}
                Err(WaitError::PeerGone) => return Err(self.died(Phase::WaitingReady)),
                Err(WaitError::TimedOut | WaitError::Garbled(_) | WaitError::TooLong { .. }) => {
                    return Err(RequestError::Timeout {
                        phase: Phase::WaitingReady,
                        waited: started.elapsed(),
                    })
                }
                Err(WaitError::Os(source)) => {
                    return Err(RequestError::Os {
                        phase: Phase::WaitingReady,
                        source,
                    })
                }
            }
        }
        self.holding_turn = false;
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        let extended = self.kind == ObjectKind::Extended;
        let req = PreparedRequest {
            system: sys,
            user: usr,
            seq: if extended { seq } else { 0 },
            token: self.token.as_ref(),
            client_pid: self.pid,
            params: RequestParams {
                flags: if stream { REQUEST_STREAM } else { 0 },
                max_tokens: opts.max_tokens.unwrap_or(0),
                deadline_us: opts
                    .deadline
                    .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)),
            },
        };
        // In flight for cancel() before it is written: a cancel() from here on is never lost
        // (the worker finds it when it takes the request). Modelled in stream.pml.
        self.cancel_slot.lock().seq = req.seq;
        if let Err(source) = self.channel.client_write(&req) {
            self.cancel_slot.lock().seq = 0;
            return Err(RequestError::Os {
                phase: Phase::WaitingResponse,
                source,
            });
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut bad_utf8 = false;
        let r = {
            let alive = self.alive_fn();
            self.channel.client_receive(
                req.seq,
                Some(deadline),
                slice,
                &alive,
                self.cfg.max_answer_bytes,
                &mut scratch,
                &mut |bytes: &[u8]| match std::str::from_utf8(bytes) {
                    Ok(s) => on_chunk(s),
                    Err(_) => {
                        // Only a scribbled region does this; the checksum will say so.
                        bad_utf8 = true;
                        on_chunk(&String::from_utf8_lossy(bytes));
                    }
                },
            )
        };
        self.scratch = scratch;
        self.cancel_slot.lock().seq = 0;
        let raw = match r {
            Ok(raw) => raw,
            Err(WaitError::PeerGone) => return Err(self.died(Phase::WaitingResponse)),
            Err(WaitError::TimedOut) => {
                // (client_receive cancelled the request, so the worker stops at once.)
                if !extended {
                    // Without sequence numbers a late answer would be taken for the next one.
                    self.closed =
                        Some("a seed-mode request timed out; the late answer would be misread".into());
                }
                return Err(RequestError::Timeout {
                    phase: Phase::WaitingResponse,
                    waited: started.elapsed(),
                });
            }
            Err(WaitError::Garbled(_)) => return Err(RequestError::Corrupt),
            Err(WaitError::TooLong { limit }) => {
                // (Cancelled: the worker stops; its last posts are drained by the next turn.)
                if !extended {
                    self.closed = Some("a seed-mode answer was refused as too long".into());
                }
                return Err(RequestError::AnswerTooLong { limit });
            }
            Err(WaitError::Os(source)) => {
                return Err(RequestError::Os {
                    phase: Phase::WaitingResponse,
                    source,
                })
            }
        };
        // (Seed-mode text arrives decoded: only the ring can hand over invalid UTF-8.)
        if !raw.intact || bad_utf8 {
            return Err(RequestError::Corrupt);
        }
        let truncated = raw.truncated();
        let message = raw.error;
        match raw.status {
            StatusCode::Ok => Ok(Response {
                truncated,
                text: String::new(),
                system_truncated: sys.truncated,
                user_truncated: usr.truncated,
                seq: req.seq,
                usage: raw.usage,
                finish: raw.finish,
            }),
            StatusCode::Unauthorized => Err(RequestError::Unauthorized { message }),
            StatusCode::PromptTooLong => Err(RequestError::PromptTooLong {
                tokens: raw.error_args.0,
                ctx: raw.error_args.1,
            }),
            StatusCode::EngineFailed => Err(RequestError::Engine { message }),
            StatusCode::BadRequest => Err(RequestError::BadRequest { message }),
            StatusCode::ShuttingDown => Err(RequestError::ShuttingDown { message }),
            StatusCode::Unknown(status) => Err(RequestError::UnknownStatus { status, message }),
        }
    }

    /// Takes the turn lock (attached clients only), retrying with a short backoff until
    /// `deadline`; a dead worker ends the wait at once.
    fn lock_turn(&mut self, deadline: Instant) -> Result<TurnGuard, RequestError> {
        if !self.turn_lock {
            return Ok(TurnGuard(None));
        }
        let started = Instant::now();
        let mut backoff = Duration::from_micros(20);
        loop {
            match self.channel.region.shm().try_lock() {
                Ok(true) => return Ok(TurnGuard(Some(Arc::clone(&self.channel)))),
                Ok(false) => {}
                Err(e) => {
                    return Err(RequestError::Os {
                        phase: Phase::WaitingTurn,
                        source: io::Error::other(e),
                    })
                }
            }
            if !(self.alive_fn())() {
                return Err(self.died(Phase::WaitingTurn));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RequestError::Timeout {
                    phase: Phase::WaitingTurn,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(backoff.min(deadline - now));
            backoff = (backoff * 2).min(Duration::from_millis(2));
        }
    }

    /// Replaces a dead worker by a new one, following the restart policy.
    fn respawn(&mut self) -> Result<(), RequestError> {
        let policy = self.cfg.restart;
        loop {
            if self.restart_attempts >= policy.max_attempts {
                self.restartable = false;
                return Err(RequestError::Closed {
                    reason: format!(
                        "worker died and {} restart attempt(s) failed",
                        self.restart_attempts
                    ),
                });
            }
            if self.restart_attempts > 0 {
                let factor = 1u32 << (self.restart_attempts - 1).min(16);
                std::thread::sleep(policy.backoff.saturating_mul(factor).min(policy.max_backoff));
            }
            self.restart_attempts += 1;
            match self.cfg.clone().spawn() {
                Ok(mut fresh) => {
                    tracing::info!(attempt = self.restart_attempts, "worker restarted");
                    // Cancellers handed out earlier follow the new worker.
                    self.cancel_slot.lock().channel = Arc::clone(&fresh.channel);
                    fresh.cancel_slot = Arc::clone(&self.cancel_slot);
                    // The old client (its dead child reaped, its handles closed) drops here.
                    drop(std::mem::replace(self, fresh));
                    return Ok(());
                }
                Err(e) if self.restart_attempts >= policy.max_attempts => {
                    self.restartable = false;
                    return Err(RequestError::RestartFailed {
                        attempts: self.restart_attempts,
                        source: Box::new(e),
                    });
                }
                Err(e) => tracing::warn!(attempt = self.restart_attempts, "worker restart failed: {e}"),
            }
        }
    }

    /// Shuts the worker down in the seed's order: set the shutdown flag and post, wait for
    /// the worker to exit (bounded by the shutdown timeout), unmap and close, kill it if it
    /// is still running. For an attached client, asks the worker to exit and waits for it as
    /// far as its pid is known.
    ///
    /// # Errors
    /// [`ShutdownError::Killed`] if the worker had to be killed, [`ShutdownError::Failed`]
    /// if it exited with a failure status. The client is closed either way.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        self.shutdown_inner()
    }

    /// Leaves an attached worker running and closes this client's handles. A spawned worker
    /// cannot outlive its client (it exits when the control socket hangs up), so on a spawned
    /// client this is [`Client::shutdown`] with the error logged.
    pub fn detach(mut self) {
        if self.child.is_some() {
            if let Err(e) = self.shutdown_inner() {
                tracing::warn!("detach of a spawned worker shut it down: {e}");
            }
            return;
        }
        self.closed = Some("detached".into());
    }

    fn shutdown_inner(&mut self) -> Result<(), ShutdownError> {
        if self.closed.is_some() && self.child.is_none() {
            return Ok(());
        }
        let was_dead = self.dead.load(Ordering::SeqCst);
        self.closed = Some("shut down".into());
        let started = Instant::now();
        let deadline = started + self.cfg.shutdown_timeout;
        let mut posted = Ok(());
        let mut asked = None;
        if !was_dead {
            // Request fields are only written while holding the turn, so the shutdown waits
            // for `ready` too (a worker busy with a timed-out request answers it first).
            let half = Instant::now() + self.cfg.shutdown_timeout / 2;
            let _turn = self.lock_turn(half).ok();
            let alive = self.alive_fn();
            let turn = self.holding_turn
                || self
                    .channel
                    .client_acquire(Some(half), self.cfg.poll_slice, &alive)
                    .is_ok();
            drop(alive);
            self.holding_turn = false;
            if turn {
                let seq = self.next_seq;
                self.next_seq = self.next_seq.wrapping_add(1).max(1);
                posted = self.channel.client_request_shutdown(self.token.as_ref(), seq);
                asked = Some(seq);
            } else if let Some(proc) = &self.child {
                // No turn within half the bound (the worker is still busy with a request we
                // stopped waiting for): ask our own worker to stop by signal instead. It cancels
                // the request, exits 0 and removes its names.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(proc.child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let Some(mut proc) = self.child.take() else {
            posted?;
            if was_dead {
                return Ok(());
            }
            let Some(seq) = asked else {
                return Err(ShutdownError::NoTurn {
                    waited: self.cfg.shutdown_timeout / 2,
                });
            };
            let r = self.confirm_attached_shutdown(seq, deadline);
            self.watcher = None;
            return r.map_err(|e| match e {
                ShutdownError::NotConfirmed { .. } => ShutdownError::NotConfirmed {
                    waited: started.elapsed(),
                },
                e => e,
            });
        };
        self.watcher = None;
        match proc.wait_until(deadline) {
            Some(ExitInfo::Exited(0)) => {
                proc.stderr.finish(deadline);
                posted.map_err(ShutdownError::Io)
            }
            Some(exit) if was_dead => {
                tracing::debug!("worker had already ended: {exit}");
                Ok(())
            }
            Some(exit) => Err(ShutdownError::Failed { exit }),
            None => {
                proc.kill();
                Err(ShutdownError::Killed {
                    waited: self.cfg.shutdown_timeout,
                })
            }
        }
    }
}

impl Client {
    /// Attached: after asking the worker to shut down (request `seq`), waits until it is seen
    /// to exit (its watcher: the recorded pid, or for a seed-era worker all the processes
    /// that mapped the object when we attached), or until it answers with a refusal.
    fn confirm_attached_shutdown(&self, seq: u64, deadline: Instant) -> Result<(), ShutdownError> {
        if self.watcher.is_none() && self.worker_pid.is_none() && !self.channel.token_required() {
            // Nothing to observe (a seed-era worker no other process maps: it runs in this
            // one, or is gone) and no refusal can come: say so at once, not after the bound.
            return Err(ShutdownError::NotConfirmed {
                waited: Duration::ZERO,
            });
        }
        let alive = self.alive_fn();
        loop {
            match crate::protocol::wait_for(
                &self.channel.response_written,
                Some(deadline),
                self.cfg.poll_slice,
                &alive,
            ) {
                Ok(()) => {
                    if !alive() {
                        return Ok(());
                    }
                    if let Some((status, message)) = self.channel.client_shutdown_refusal(seq) {
                        return Err(ShutdownError::Refused { status, message });
                    }
                    // A stale post: go on waiting.
                }
                Err(WaitError::PeerGone) => return Ok(()),
                Err(WaitError::Os(e)) => return Err(ShutdownError::Io(e)),
                Err(_) => {
                    return Err(ShutdownError::NotConfirmed {
                        waited: Duration::ZERO,
                    })
                }
            }
        }
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

/// Where the worker binary of this build lives, for tools and tests: `$LLAMA_SHM_WORKER`,
/// else `llama-shm-worker` next to the current executable (or one directory up, for test
/// binaries in `target/*/deps`).
pub fn default_worker_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LLAMA_SHM_WORKER") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("llama-shm-worker"),
        dir.parent()?.join("llama-shm-worker"),
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}
