//! What a standalone worker learns about the clients that share it ([`Clients`]), so that one
//! client's death never wedges the worker for the others:
//!
//! - **A turn held too long.** Every client posts `prompts_written` within microseconds of
//!   taking `ready`; a turn held [`SharedClients::GRACE`] without a request is given back.
//! - **The requester of the answer in progress**, looked up once, when the worker first asks
//!   (a presence interval into the request, so short requests cost nothing): an extended
//!   client names itself in `client_pid`, and the worker watches that process's pidfd. A
//!   seed-mode client does not: the requester is one of the processes that map the object,
//!   so when none of those is left, nobody can read the answer. (While other clients map the
//!   object too, a dead seed-mode client's answer is generated to its end: bounded by the
//!   32 KiB field and the worker's token limit.)

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::objects::PosixChannel;
use crate::os::process::{pidfd_exited, pidfd_open, processes_mapping_inode};
use crate::protocol::{Clients, Region};
use crate::wire::layout::Word32;

/// The [`Clients`] of a standalone worker on POSIX objects.
#[derive(Debug)]
pub struct SharedClients {
    channel: std::sync::Arc<PosixChannel>,
    /// The object's inode, to find the processes that map it.
    ino: u64,
    /// The request in progress (by its start) and pidfds of the processes that may read its
    /// answer; `None` when they cannot be told (the request counts as read).
    requester: Mutex<Option<(Instant, Option<Vec<OwnedFd>>)>>,
}

impl SharedClients {
    /// How long a turn may be held without a request before its holder counts as gone: far
    /// above the microseconds a live client takes, and well inside the second within which
    /// the next client must be served.
    pub const GRACE: Duration = Duration::from_millis(250);

    /// Watches the clients of `channel` (the worker's own objects).
    pub fn new(channel: std::sync::Arc<PosixChannel>) -> Self {
        let ino = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&channel.region.shm().fd()))
            .map_or(0, |st| st.st_ino);
        Self {
            channel,
            ino,
            requester: Mutex::new(None),
        }
    }

    /// The processes that may read the answer to request `seq`: pidfds, or `None` when they
    /// cannot be told.
    fn readers(&self, seq: u64) -> Option<Vec<OwnedFd>> {
        if seq == 0 {
            return Some(
                processes_mapping_inode(self.ino)
                    .into_iter()
                    .filter_map(|pid| pidfd_open(pid).ok())
                    .collect(),
            );
        }
        match self.channel.region.load32(Word32::ClientPid) {
            0 => None,
            pid => match pidfd_open(pid) {
                Ok(fd) => Some(vec![fd]),
                // Gone already: nobody to read.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Some(Vec::new()),
                Err(_) => None,
            },
        }
    }
}

impl Clients for SharedClients {
    fn turn_abandoned(&self, held: Duration) -> bool {
        held >= Self::GRACE
    }

    fn requester_present(&self, seq: u64, since: Instant) -> bool {
        let mut cur = self.requester.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_none_or(|(s, _)| *s != since) {
            *cur = Some((since, self.readers(seq)));
        }
        match cur.as_ref().and_then(|(_, fds)| fds.as_ref()) {
            Some(fds) => fds.iter().any(|fd| !pidfd_exited(fd.as_fd())),
            None => true,
        }
    }
}
