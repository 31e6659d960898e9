//! The client's builder: every setting, with its default.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::{EngineSettings, Protocol, RestartPolicy};
use crate::objects::Trust;
use crate::wire::layout::TOKEN_LEN;
use crate::wire::names::Prefix;
use crate::wire::text::Policy;

/// Builds a [`Client`](super::Client): `Client::builder().worker(path).arg(..).spawn()`.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(super) worker: Option<PathBuf>,
    pub(super) args: Vec<OsString>,
    pub(super) engine: EngineSettings,
    pub(super) envs: Vec<(OsString, OsString)>,
    pub(super) prefix: Option<Prefix>,
    pub(super) protocol: Protocol,
    pub(super) permissions: u32,
    pub(super) trust: Trust,
    pub(super) policy: Policy,
    pub(super) startup_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) shutdown_timeout: Duration,
    pub(super) poll_slice: Duration,
    pub(super) token: Option<[u8; TOKEN_LEN]>,
    pub(super) restart: RestartPolicy,
    pub(super) spin: Duration,
    pub(super) max_answer_bytes: u64,
    pub(super) others_may_crash: bool,
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
            engine: EngineSettings::default(),
            envs: Vec::new(),
            prefix: None,
            protocol: Protocol::Auto,
            permissions: 0o600,
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

    /// The spawned worker answers with the echo engine (`{system}\n{user}`, no model).
    pub fn echo_engine(mut self) -> Self {
        self.engine.echo = true;
        self
    }

    /// The GGUF model the spawned worker loads.
    pub fn model(mut self, path: impl Into<PathBuf>) -> Self {
        self.engine.model = Some(path.into());
        self
    }

    /// All of the spawned worker's engine settings at once (see [`EngineSettings`]).
    pub fn engine(mut self, settings: EngineSettings) -> Self {
        self.engine = settings;
        self
    }

    /// Appends one raw argument for the worker (a flag the typed settings do not cover).
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

    /// The protocol to speak: [`Protocol::Auto`] (default: the extension page when the
    /// worker has one) or [`Protocol::Seed`] (the seed's cycle only).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Permission bits of created objects (default `0o600`). Bits that let other users write
    /// them (`0o022`) are refused unless [`ClientBuilder::others_may_crash_this_client`]:
    /// whoever can write an object can shrink it and crash every process that maps it.
    pub fn permissions(mut self, mode: u32) -> Self {
        self.permissions = mode;
        self
    }

    /// Widest permission bits accepted on objects we open (default `0o600`; a seed-era worker
    /// creates `0o666` objects, which must be allowed explicitly — and, since other users
    /// can write those, with [`ClientBuilder::others_may_crash_this_client`] too).
    pub fn accept_permissions(mut self, max_mode: u32) -> Self {
        self.trust = Trust { max_mode };
        self
    }

    /// Accepts objects that other users may write ([`ClientBuilder::permissions`] or
    /// [`ClientBuilder::accept_permissions`] with group or other write bits). Any of those users can
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
    /// [`RequestError::AnswerTooLong`](super::RequestError::AnswerTooLong), so a client's memory stays near the bound whatever
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
}

/// Where the worker binary of this build lives, for tools and tests: `$LLAMA_SHM_WORKER`,
/// else `llama-shm-worker` next to the current executable (or one directory up, for test
/// binaries in `target/*/deps`). See [`crate::os::locate::worker_binary`].
pub fn default_worker_path() -> Option<PathBuf> {
    crate::os::locate::worker_binary(&[])
}
