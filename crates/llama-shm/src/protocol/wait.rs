//! Waiting on the peer: a wait that binds its deadline whatever the peer posts
//! ([`wait_for`]) and the adaptive wait that spins before it blocks ([`AdaptiveWait`]).

use std::io;
use std::time::{Duration, Instant};

use super::peer::Semaphore;
use crate::sync::{mutant, AtomicU32, Mutant, Ordering};

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
pub struct AdaptiveWait {
    /// The worker's snapshot of the client's advertised CPU, taken before it posts `ready`
    /// (after that post an idle worker leaves the region alone).
    pub(super) peer_cpu: AtomicU32,
    max_ns: u32,
    /// Running average of recent wait lengths (ns, each clamped to twice `max_ns`).
    avg_ns: AtomicU32,
    calls: AtomicU32,
}

impl AdaptiveWait {
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
    pub(super) fn record(&self, waited: Duration) {
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
    pub(super) fn spin<S: Semaphore>(&self, sem: &S, peer_running: &dyn Fn() -> bool) -> io::Result<bool> {
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

impl Default for AdaptiveWait {
    /// Spins up to [`AdaptiveWait::DEFAULT_MAX_NS`].
    fn default() -> Self {
        Self::new(Duration::from_nanos(u64::from(Self::DEFAULT_MAX_NS)))
    }
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
pub(super) fn expired(deadline: Option<Instant>, now: Instant) -> bool {
    !mutant(Mutant::DeadlineUnchecked) && deadline.is_some_and(|d| now >= d)
}
