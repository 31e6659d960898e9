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

use super::batch::BatchEngine;
use super::engine::{Cancel, Engine};
use super::serve::{serve, ServeEnd, ServeOptions};
use super::slots::{serve_slots, Slot};
use super::token::{read_token_file, TokenFileError};
use crate::objects::clients::SharedClients;
use crate::objects::guardian::Guardian;
use crate::objects::{self, ExtInit, ObjectsError, PosixChannel, Presence, Trust};
use crate::os::control::{self, ControlMsg};
use crate::os::process::{pidfd_open, Watch, Watcher};
use crate::os::signals;
use crate::protocol::{AdaptiveWait, Region};
use crate::wire::layout::{
    Word32, FEATURE_QUEUE, FEATURE_REQUEST_AREA, FEATURE_SEED_STREAMING, FEATURE_SLOTS, FEATURE_STREAMING,
    FEATURE_TOKEN_REQUIRED, QUEUE_CAPACITY, TOKEN_LEN,
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
    /// Requests of extended clients served at once (a standalone worker only): 1 is the
    /// seed's one at a time on the prefix's own names; N > 1 makes N slots `P.slot1..N` for
    /// them, and keeps the prefix's own names (slot 0) for seed-era clients, all batched in one
    /// engine of N + 1 sequences (see [`serve_slots`]).
    pub parallel: u32,
    /// A standalone worker's admission queue: how many clients may wait when every slot is
    /// busy (first come first served); one more is told the worker is busy. At most
    /// `QUEUE_CAPACITY`; 0: nobody waits.
    pub max_queue: u32,
}

/// What a worker process serves with: an engine of one request at a time, or a batch engine
/// for several slots.
pub enum Engines {
    /// One request at a time ([`serve`]).
    One(Box<dyn Engine>),
    /// Several at once ([`serve_slots`]): at least as many sequences as slots.
    Batch(Box<dyn BatchEngine>),
}

/// Why a worker process did not serve to its end.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The options are refused (permissions others can write, not accepted): a usage error.
    #[error(transparent)]
    Refused(ObjectsError),
    /// The options do not go together: a usage error.
    #[error("{0}")]
    Usage(String),
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
        matches!(self, HostError::Refused(_) | HostError::Usage(_))
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
    load: impl FnOnce() -> Result<Engines, Box<dyn Error + Send + Sync>>,
) -> Result<Served, HostError> {
    objects::check_mode(opts.permissions, opts.accept_permissions).map_err(HostError::Refused)?;
    if opts.max_queue as usize > QUEUE_CAPACITY {
        return Err(HostError::Usage(format!(
            "--max-queue {}: at most {QUEUE_CAPACITY} clients can wait",
            opts.max_queue
        )));
    }
    if opts.parallel == 0 || (opts.parallel > 1 && opts.spawned) {
        return Err(HostError::Usage(format!(
            "--parallel {} : a standalone worker serves 1 or more slots; a spawned one, 1",
            opts.parallel
        )));
    }
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
    let (_guardian, mut channel, extra, mut control_sock, token) = if opts.spawned {
        let (channel, sock, token) = attach_to_spawner(opts)?;
        (None, channel, Vec::new(), Some(sock), Some(token))
    } else {
        let token = opts.token_file.as_deref().map(read_token_file).transpose()?;
        let (guardian, channel, extra) = create_standalone(opts, me, token.is_some())?;
        (Some(guardian), channel, extra, None, token)
    };
    pause(opts, "objects created");
    for ch in std::iter::once(&channel).chain(&extra) {
        ch.region.store32(Word32::WorkerPid, me);
        let features = ch.region.load32(Word32::Features);
        // The request area is this worker's to offer (an older worker on an object a newer
        // client made never says it takes it), and only where its own mapping holds it all.
        let area = if ch.region.area_len() >= crate::wire::layout::AREA_LEN {
            FEATURE_REQUEST_AREA
        } else {
            0
        };
        ch.region
            .store32(Word32::Features, features | FEATURE_STREAMING | area);
    }
    if let Some(sock) = control_sock.as_mut() {
        // The client unlinks the names once it reads this.
        control::send(sock, &ControlMsg::Attached).map_err(HostError::Control)?;
    }
    channel.adaptive = AdaptiveWait::new(opts.spin);
    let channel = Arc::new(channel);
    let extra: Vec<Arc<PosixChannel>> = extra.into_iter().map(Arc::new).collect();
    let _names = NameGuard {
        channel: Arc::clone(&channel),
        spawned: opts.spawned,
    };
    // 2. Stop conditions: a stop signal, and the spawning client hanging up or exiting.
    let stop = Arc::new(AtomicBool::new(false));
    let cancel = Cancel::new();
    let all: Vec<Arc<PosixChannel>> = std::iter::once(Arc::clone(&channel))
        .chain(extra.iter().cloned())
        .collect();
    let _watcher = start_stop_watcher(sig_rx, control_sock.as_ref(), &all, &stop, &cancel)?;
    pause(opts, "stop watcher running");
    if stop.load(Ordering::SeqCst) {
        tracing::info!("stopped during start-up");
        return Ok(Served {
            end: None,
            requests: 0,
        });
    }
    // 3. The engine, then serve.
    let engines = load().map_err(|e| {
        if let Some(sock) = control_sock.as_mut() {
            let _ = control::send(sock, &ControlMsg::Error(e.to_string()));
        }
        HostError::Engine(e)
    })?;
    // Shared by whoever attaches: a client that dies holding the turn or mid-answer must not
    // wedge the worker for the others. (A spawned worker ends with its one client.)
    let clients_of = |ch: &Arc<PosixChannel>| {
        (!opts.spawned).then(|| {
            Arc::new(SharedClients::new(Arc::clone(ch))) as Arc<dyn crate::protocol::Clients + Send + Sync>
        })
    };
    let serve_opts = ServeOptions {
        token,
        clients: clients_of(&channel),
        ..ServeOptions::default()
    };
    let stopped = || stop.load(Ordering::SeqCst);
    let (end, requests) = match engines {
        Engines::One(mut engine) if extra.is_empty() => {
            serve(&*channel, &mut *engine, &serve_opts, &stopped, &cancel).map_err(HostError::Serve)?
        }
        Engines::Batch(mut engine) if engine.capacity() >= all.len() => {
            let slots: Vec<Slot<'_, _, _>> = all
                .iter()
                .map(|ch| Slot {
                    channel: &**ch,
                    clients: clients_of(ch),
                })
                .collect();
            serve_slots(&slots, &mut *engine, &serve_opts, &stopped).map_err(HostError::Serve)?
        }
        _ => {
            return Err(HostError::Usage(format!(
                "the engine does not serve {} slots at once",
                all.len()
            )))
        }
    };
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
) -> Result<(Guardian, PosixChannel, Vec<PosixChannel>), HostError> {
    let mut guardian =
        Guardian::spawn(Path::new("/proc/self/exe"), &["--guard"]).map_err(HostError::Guardian)?;
    let count = if opts.parallel > 1 { opts.parallel + 1 } else { 1 };
    let prefixes: Vec<Prefix> = (0..count)
        .map(|k| {
            opts.prefix.slot(k).ok_or_else(|| {
                HostError::Usage(format!(
                    "prefix {} is too long for {} slots",
                    opts.prefix, opts.parallel
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    for p in &prefixes {
        objects::reclaim(p).map_err(HostError::Objects)?;
    }
    let token = if token_required { FEATURE_TOKEN_REQUIRED } else { 0 };
    let slots = if opts.parallel > 1 { FEATURE_SLOTS } else { 0 };
    let mut channels = Vec::with_capacity(prefixes.len());
    for (k, p) in prefixes.iter().enumerate() {
        let init = ExtInit {
            creator_pid: me,
            // The seed's `LocalLLMService` starts a worker with no arguments and needs
            // chunk_ready: on the prefix's own objects (slot 0) only.
            features: token
                | slots
                | if k == 0 {
                    FEATURE_SEED_STREAMING | FEATURE_QUEUE
                } else {
                    0
                },
            guardian_pid: guardian.pid(),
            slot_count: count,
            slot_index: u32::try_from(k).unwrap_or(u32::MAX),
            queue_max: if k == 0 { opts.max_queue } else { 0 },
        };
        // Each set is removed by its handles if a later one fails (and by the guardian if we die).
        let channel = objects::create_guarded(p, opts.permissions, init, &mut |id| guardian.guard(id))
            .map_err(HostError::Objects)?;
        channels.push(channel);
    }
    let first = channels.remove(0);
    Ok((guardian, first, channels))
}

/// The watcher that stops serving: on a stop signal, and (spawned) when the client hangs up
/// or exits — a child it forked may inherit the socket and keep it open after its death.
fn start_stop_watcher(
    sig_rx: UnixStream,
    control_sock: Option<&UnixStream>,
    channels: &[Arc<PosixChannel>],
    stop: &Arc<AtomicBool>,
    cancel: &Cancel,
) -> Result<Watcher, HostError> {
    let channel = &channels[0];
    let mut watches = vec![Watch::Readable(sig_rx.into())];
    if let Some(sock) = control_sock {
        watches.push(Watch::HangUp(sock.try_clone().map_err(HostError::Setup)?.into()));
        let creator = channel.region.load32(Word32::CreatorPid);
        match pidfd_open(creator) {
            Ok(fd) => watches.push(Watch::Pidfd(fd)),
            Err(e) => tracing::debug!("no pidfd for the spawning client {creator}: {e}"),
        }
    }
    let (stop, cancel, channels) = (Arc::clone(stop), cancel.clone(), channels.to_vec());
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
        for channel in &channels {
            let _ = channel.prompts_written.post();
        }
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
