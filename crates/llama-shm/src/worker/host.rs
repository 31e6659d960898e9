//! A worker process's life around the serve loop: stop signals, the objects (attached to a
//! spawning client's, or created under a prefix with a guardian), the spawn handshake, the
//! stop watcher, the engine's load, serving, and removing every name on the way out.
//!
//! ```text
//!  stop signals held (main) ─► signal socket ─► objects ─► "attached" (spawned) ─► watcher
//!  ─► engine loads ─► serve ─► names removed (drop guards, on every path)
//! ```
//! A stop signal at any of these points ends the worker gracefully: before the socket exists
//! it stays pending, after that it is a byte the watcher reads.

use std::error::Error;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{Cancel, Engine};
use super::serve::{serve, ServeEnd, ServeOptions};
use super::token::{read_token_file, TokenFileError};
use crate::objects::clients::SharedClients;
use crate::objects::guardian::Guardian;
use crate::objects::{self, ExtInit, ObjectsError, PosixChannel, Presence, Trust};
use crate::os::control::{self, ControlMsg};
use crate::os::process::{pidfd_open, Watch, Watcher};
use crate::os::signals;
use crate::protocol::{AdaptiveWait, Region};
use crate::wire::layout::{
    Word32, FEATURE_SEED_STREAMING, FEATURE_STREAMING, FEATURE_TOKEN_REQUIRED, TOKEN_LEN,
};
use crate::wire::names::Prefix;

/// How a worker process serves (what its command line says).
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The objects' prefix.
    pub prefix: Prefix,
    /// Permission bits for created objects (the most a spawned worker accepts on its client's).
    pub permissions: u32,
    /// Accept permissions that let other users write the objects (and so crash this worker).
    pub accept_permissions: bool,
    /// Spawned by a client: attach to its objects, read the token from stdin (a socket), stop
    /// when it hangs up. Otherwise standalone: create the objects and serve everyone.
    pub spawned: bool,
    /// A standalone worker's auth token file (64 hex digits): the token is then required on
    /// every request. Read only by a standalone worker (a spawned one gets its token from its
    /// client).
    pub token_file: Option<PathBuf>,
    /// The adaptive wait's budget (zero blocks at once).
    pub spin: Duration,
    /// Tests: a pause at each step of start-up, so a signal can land in each window.
    pub startup_pause: Duration,
}

/// Why a worker process did not serve to its end.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The options are refused (permissions others can write, not accepted): a usage error.
    #[error(transparent)]
    Refused(ObjectsError),
    /// The spawning client sent no token.
    #[error("no auth token from the spawning client: {0}")]
    NoToken(io::Error),
    /// The guardian could not be started.
    #[error("cannot start the guardian: {0}")]
    Guardian(io::Error),
    /// The objects could not be created, reclaimed or opened.
    #[error(transparent)]
    Objects(ObjectsError),
    /// The token file could not be used.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    /// The control socket to the spawning client failed.
    #[error("control socket: {0}")]
    Control(io::Error),
    /// Signals, sockets or the watcher thread could not be set up.
    #[error("start-up: {0}")]
    Setup(io::Error),
    /// The engine did not load (its own error, e.g. a missing model).
    #[error("{0}")]
    Engine(Box<dyn Error + Send + Sync>),
    /// A semaphore call failed while serving.
    #[error("semaphore failure: {0}")]
    Serve(io::Error),
}

impl HostError {
    /// Whether it is a usage error (the options were refused before anything started).
    pub fn is_usage(&self) -> bool {
        matches!(self, HostError::Refused(_))
    }

    /// Whether serving had started (otherwise start-up failed).
    pub fn while_serving(&self) -> bool {
        matches!(self, HostError::Serve(_))
    }
}

/// How serving ended, and how many requests were answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Shutdown or stop; `None` when stopped during start-up, before the engine loaded.
    pub end: Option<ServeEnd>,
    /// Requests answered.
    pub requests: u64,
}

/// Runs a worker process: everything from the signal socket to the last name removed. The
/// engine is loaded by `load` once the objects exist (a seed client that opens them early
/// just waits on `ready`) and only if no stop arrived first. Call
/// [`signals::hold_stop_signals`] first thing in `main`.
///
/// # Errors
/// [`HostError`]: refused options, a failed start-up, the engine's load error (also sent to a
/// spawning client), or a semaphore failure while serving.
pub fn run(
    opts: &HostOptions,
    load: impl FnOnce() -> Result<Box<dyn Engine>, Box<dyn Error + Send + Sync>>,
) -> Result<Served, HostError> {
    objects::check_mode(opts.permissions, opts.accept_permissions).map_err(HostError::Refused)?;
    let me = std::process::id();
    pause(opts, "start (stop signals held back)");
    // 0. Stop signals first, before anything exists that would need removing.
    let sig_rx = signals::stop_signal_socket().map_err(HostError::Setup)?;
    pause(opts, "signals ready");
    // 1. The objects. A spawned worker's client creates the names while we wait for its
    //    token; if it dies before it unlinks them, they are ours to remove on the way out
    //    (only when their creator is dead and nobody else maps them).
    let _spawn_window = opts.spawned.then(|| ReclaimOnExit(opts.prefix.clone()));
    // `_guardian` before the channel: dropped last, after our own removal of the names.
    let (_guardian, mut channel, mut control_sock, token) = if opts.spawned {
        let (channel, sock, token) = attach_to_spawner(opts)?;
        (None, channel, Some(sock), Some(token))
    } else {
        let token = opts.token_file.as_deref().map(read_token_file).transpose()?;
        let (guardian, channel) = create_standalone(opts, me, token.is_some())?;
        (Some(guardian), channel, None, token)
    };
    pause(opts, "objects created");
    channel.region.store32(Word32::WorkerPid, me);
    let features = channel.region.load32(Word32::Features);
    channel
        .region
        .store32(Word32::Features, features | FEATURE_STREAMING);
    if let Some(sock) = control_sock.as_mut() {
        // The client unlinks the names once it reads this.
        control::send(sock, &ControlMsg::Attached).map_err(HostError::Control)?;
    }
    channel.adaptive = AdaptiveWait::new(opts.spin);
    let channel = Arc::new(channel);
    let _names = NameGuard {
        channel: Arc::clone(&channel),
        spawned: opts.spawned,
    };
    // 2. Stop conditions: a stop signal, and the spawning client hanging up or exiting.
    let stop = Arc::new(AtomicBool::new(false));
    let cancel = Cancel::new();
    let _watcher = start_stop_watcher(sig_rx, control_sock.as_ref(), &channel, &stop, &cancel)?;
    pause(opts, "stop watcher running");
    if stop.load(Ordering::SeqCst) {
        tracing::info!("stopped during start-up");
        return Ok(Served {
            end: None,
            requests: 0,
        });
    }
    // 3. The engine, then serve.
    let mut engine = load().map_err(|e| {
        if let Some(sock) = control_sock.as_mut() {
            let _ = control::send(sock, &ControlMsg::Error(e.to_string()));
        }
        HostError::Engine(e)
    })?;
    let serve_opts = ServeOptions {
        token,
        // Shared by whoever attaches: a client that dies holding the turn or mid-answer must
        // not wedge the worker for the others. (A spawned worker ends with its one client.)
        clients: (!opts.spawned).then(|| {
            Arc::new(SharedClients::new(Arc::clone(&channel)))
                as Arc<dyn crate::protocol::Clients + Send + Sync>
        }),
        ..ServeOptions::default()
    };
    let stopped = || stop.load(Ordering::SeqCst);
    let (end, requests) =
        serve(&*channel, &mut *engine, &serve_opts, &stopped, &cancel).map_err(HostError::Serve)?;
    tracing::info!(?end, requests, "worker exiting");
    Ok(Served {
        end: Some(end),
        requests,
    })
}

/// A spawned worker's start: the token from the control socket (stdin), then the client's
/// objects, vetted.
fn attach_to_spawner(opts: &HostOptions) -> Result<(PosixChannel, UnixStream, [u8; TOKEN_LEN]), HostError> {
    let stdin = std::io::stdin().lock();
    let owned = std::os::fd::AsFd::as_fd(&stdin)
        .try_clone_to_owned()
        .map_err(HostError::Setup)?;
    let mut sock = UnixStream::from(owned);
    let token = control::recv_token(&mut sock, Instant::now() + Duration::from_secs(10))
        .map_err(HostError::NoToken)?;
    let trust = Trust {
        max_mode: opts.permissions,
    };
    let channel = objects::open(&opts.prefix, trust).map_err(|e| {
        let _ = control::send(&mut sock, &ControlMsg::Error(e.to_string()));
        HostError::Objects(e)
    })?;
    Ok((channel, sock, token))
}

/// A standalone worker's start: the guardian, then stale names reclaimed, then the objects,
/// each told to the guardian before its name appears (no SIGKILL can leave a name the
/// guardian does not know).
fn create_standalone(
    opts: &HostOptions,
    me: u32,
    token_required: bool,
) -> Result<(Guardian, PosixChannel), HostError> {
    let mut guardian =
        Guardian::spawn(Path::new("/proc/self/exe"), &["--guard"]).map_err(HostError::Guardian)?;
    objects::reclaim(&opts.prefix).map_err(HostError::Objects)?;
    // The seed's `LocalLLMService` starts a worker with no arguments and needs chunk_ready.
    let init = ExtInit {
        creator_pid: me,
        features: FEATURE_SEED_STREAMING | if token_required { FEATURE_TOKEN_REQUIRED } else { 0 },
        guardian_pid: guardian.pid(),
    };
    let channel = objects::create_guarded(&opts.prefix, opts.permissions, init, &mut |id| guardian.guard(id))
        .map_err(HostError::Objects)?;
    Ok((guardian, channel))
}

/// The watcher that stops serving: on a stop signal, and (spawned) when the client hangs up
/// or exits — a child it forked may inherit the socket and keep it open after its death.
fn start_stop_watcher(
    sig_rx: UnixStream,
    control_sock: Option<&UnixStream>,
    channel: &Arc<PosixChannel>,
    stop: &Arc<AtomicBool>,
    cancel: &Cancel,
) -> Result<Watcher, HostError> {
    let mut watches = vec![Watch::Readable(sig_rx.into())];
    if let Some(sock) = control_sock {
        watches.push(Watch::HangUp(sock.try_clone().map_err(HostError::Setup)?.into()));
        let creator = channel.region.load32(Word32::CreatorPid);
        match pidfd_open(creator) {
            Ok(fd) => watches.push(Watch::Pidfd(fd)),
            Err(e) => tracing::debug!("no pidfd for the spawning client {creator}: {e}"),
        }
    }
    let (stop, cancel, channel) = (Arc::clone(stop), cancel.clone(), Arc::clone(channel));
    Watcher::spawn("llama-shm-stop", watches, move |which| {
        tracing::info!(
            "{}: stopping",
            if which == 0 {
                "signal received"
            } else {
                "spawning client is gone"
            }
        );
        stop.store(true, Ordering::SeqCst);
        cancel.cancel();
        let _ = channel.prompts_written.post();
    })
    .map_err(HostError::Setup)
}

/// The guardian process (`--guard`, started by a standalone worker): waits for the worker to
/// end, removes the names it left, and returns them.
pub fn run_guardian() -> Vec<PathBuf> {
    signals::ignore_terminal_signals();
    objects::guardian::watch(std::io::stdin().lock())
}

/// With a start-up pause (tests): sleeps at the named step, so a signal can land in each window.
fn pause(opts: &HostOptions, step: &str) {
    if !opts.startup_pause.is_zero() {
        tracing::debug!("start-up step: {step}");
        std::thread::sleep(opts.startup_pause);
    }
}

/// Removes the stale names of a prefix (creator dead, unmapped) when dropped.
struct ReclaimOnExit(Prefix);

impl Drop for ReclaimOnExit {
    fn drop(&mut self) {
        if let Ok(Presence::Stale { .. }) = objects::reclaim(&self.0) {
            tracing::info!("removed the names of a client that died while spawning us");
        }
    }
}

/// Removes the prefix's names when the worker exits, however it exits (short of SIGKILL,
/// which the guardian covers). Created (standalone) handles unlink themselves when the last
/// `Arc` drops; a spawned worker removes its client's names too, in case the client died
/// before it could.
struct NameGuard {
    channel: Arc<PosixChannel>,
    spawned: bool,
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        if self.spawned {
            if let Err(e) = objects::unlink(&self.channel) {
                tracing::warn!("removing names: {e}");
            }
        }
    }
}
