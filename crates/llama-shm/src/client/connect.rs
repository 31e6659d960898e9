//! Getting a client: spawn a worker of its own, or attach to a running one.
//!
//! Spawning, step by step: create the four objects under an unguessable prefix (`O_EXCL`,
//! 0600) → start the worker with a control socket as its stdin → send it the auth token →
//! wait for "attached" → unlink every name (from here a crash of either side leaves nothing
//! behind) → watch the worker's pidfd → wait for `ready` with the start-up deadline.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::cancel::CancelSlot;
use super::child::{ChildProc, StderrTail};
use super::ClosedReason;
use super::{AttachError, Client, ClientBuilder, Protocol, SpawnError};
use crate::objects::queue::ShmQueue;
use crate::objects::{self, ExtInit, PosixChannel};
use crate::os::control::{self, ControlMsg};
use crate::os::process::{self, Watch, Watcher};
use crate::protocol::{Queue, Region, WaitError};
use crate::wire::layout::{ObjectKind, Word32, FEATURE_TOKEN_REQUIRED, TOKEN_LEN};
use crate::wire::names::Prefix;

impl ClientBuilder {
    /// Spawns the worker and waits until it is ready.
    ///
    /// # Errors
    /// [`SpawnError`]: a missing or non-executable binary, objects that cannot be created,
    /// a worker that exits during start-up (with its exit status, its own error message and
    /// its last stderr lines) or that is not ready by the start-up deadline.
    pub fn spawn(self) -> Result<Client, SpawnError> {
        objects::check_mode(self.permissions, self.others_may_crash)?;
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
        cmd.args(self.engine.worker_args())
            .args(&self.args)
            .arg("--prefix")
            .arg(prefix.as_str())
            .arg("--mode")
            .arg(format!("{:o}", self.permissions))
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
            self.permissions,
            ExtInit {
                creator_pid: std::process::id(),
                features: FEATURE_TOKEN_REQUIRED,
                ..ExtInit::default()
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
        let watcher = start_watcher(&[worker_pid], std::slice::from_ref(&channel), &dead);
        let mut client = Client::new(
            Connection {
                channel,
                queue: None,
                slots: Vec::new(),
                kind: ObjectKind::Extended,
                child: Some(proc),
                watcher,
                dead,
                worker_pid: Some(worker_pid),
                token: Some(token),
                first_seq: 1,
                shared: false,
            },
            self,
        );
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
                client.closed = Some(ClosedReason::StartupFailed);
                Err(fail(&mut proc, None))
            }
            Err(WaitError::TimedOut | WaitError::Garbled(_) | WaitError::TooLong { .. }) => {
                client.closed = Some(ClosedReason::StartupFailed);
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
    /// [`AttachError`](crate::AttachError) when the objects are missing, untrusted or malformed.
    pub fn attach(self, prefix: &Prefix) -> Result<Client, AttachError> {
        objects::check_mode(self.trust.max_mode, self.others_may_crash)?;
        let mut channel = objects::open(prefix, self.trust)?;
        let mut others = objects::open_slots(prefix, &channel, self.trust)?;
        if self.protocol == Protocol::Seed {
            channel.region.force_seed();
            for ch in &mut others {
                ch.region.force_seed();
            }
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
        let slots: Vec<Arc<PosixChannel>> = std::iter::once(channel)
            .chain(others)
            .map(|mut ch| {
                ch.adaptive = crate::protocol::AdaptiveWait::new(self.spin);
                Arc::new(ch)
            })
            .collect();
        let channel = Arc::clone(&slots[0]);
        let dead = Arc::new(AtomicBool::new(false));
        let watcher = match worker_pid {
            Some(pid) => start_watcher(&[pid], &slots, &dead),
            None if !mappers.is_empty() => start_watcher(&mappers, &slots, &dead),
            None => None,
        };
        let token = self.token;
        // A seed-mode object (or one forced to seed mode) has no queue words.
        let queue = ShmQueue::of(&slots[0]);
        Ok(Client::new(
            Connection {
                channel,
                queue,
                slots: if slots.len() > 1 { slots } else { Vec::new() },
                kind,
                child: None,
                watcher,
                dead,
                worker_pid,
                token,
                first_seq: first_attach_seq(),
                shared: true,
            },
            self,
        ))
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
fn start_watcher(pids: &[u32], channels: &[Arc<PosixChannel>], dead: &Arc<AtomicBool>) -> Option<Watcher> {
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
    let (channels, dead) = (channels.to_vec(), Arc::clone(dead));
    Watcher::spawn_when_all("llama-shm-watch", watches, move |_| {
        dead.store(true, Ordering::SeqCst);
        // Wake whatever the client is blocked on, in whichever slot; the worker is gone, so
        // these counts no longer mean anything to anyone.
        for channel in &channels {
            let _ = channel.ready.post();
            let _ = channel.response_written.post();
        }
    })
    .map_err(|e| tracing::warn!("cannot start the worker watcher: {e}"))
    .ok()
}

/// What a spawn or an attach found: everything of a [`Client`] that differs between the two.
struct Connection {
    channel: Arc<PosixChannel>,
    /// The shared worker's admission queue.
    queue: Option<Queue<ShmQueue>>,
    /// Every slot of a multi-slot worker (slot 0 first); empty for one slot.
    slots: Vec<Arc<PosixChannel>>,
    kind: ObjectKind,
    child: Option<ChildProc>,
    watcher: Option<Watcher>,
    dead: Arc<AtomicBool>,
    worker_pid: Option<u32>,
    token: Option<[u8; TOKEN_LEN]>,
    first_seq: u64,
    /// Attached to a worker others share: each request holds the turn lock.
    shared: bool,
}

impl Client {
    fn new(c: Connection, cfg: ClientBuilder) -> Self {
        Client {
            cancel_slot: CancelSlot::new(&c.channel),
            channel: c.channel,
            queue: c.queue,
            slots: c.slots,
            slot: 0,
            kind: c.kind,
            child: c.child,
            watcher: c.watcher,
            dead: c.dead,
            worker_pid: c.worker_pid,
            token: c.token,
            next_seq: c.first_seq,
            holding_turn: false,
            turn_lock: c.shared,
            closed: None,
            restartable: false,
            restart_attempts: 0,
            scratch: Vec::with_capacity(crate::wire::layout::RESPONSE_LEN),
            result: Vec::new(),
            pid: std::process::id(),
            cfg,
        }
    }
}
