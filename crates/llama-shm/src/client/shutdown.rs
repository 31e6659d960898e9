//! Ending a client: shut its worker down (confirmed), or detach from a shared one.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ClosedReason;
use super::{Client, ShutdownError};
use crate::os::process::ExitInfo;
use crate::protocol::WaitError;

impl Client {
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
        self.closed = Some(ClosedReason::Ended);
    }

    pub(super) fn shutdown_inner(&mut self) -> Result<(), ShutdownError> {
        if self.closed.is_some() && self.child.is_none() {
            return Ok(());
        }
        let was_dead = self.dead.load(Ordering::SeqCst);
        self.closed = Some(ClosedReason::Ended);
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
    pub(super) fn confirm_attached_shutdown(&self, seq: u64, deadline: Instant) -> Result<(), ShutdownError> {
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
