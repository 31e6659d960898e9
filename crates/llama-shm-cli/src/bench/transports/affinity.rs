//! CPU affinity through `nix::sched`: pinning the calling thread (for a while, or for good in a
//! server process) and checking that a placement's CPUs are available.

use std::io;
use std::marker::PhantomData;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use super::Placement;

/// The calling thread, for the `sched_*affinity` calls (pid 0).
fn this_thread() -> Pid {
    Pid::from_raw(0)
}

/// Pins the calling thread to `cpu` until the returned guard is dropped.
///
/// The guard restores the thread's previous CPU mask on drop. It is neither `Send` nor `Sync`:
/// the mask belongs to the thread that was pinned, so the guard must be dropped there.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] if `cpu` is not below `CPU_SETSIZE`; the OS error of
/// `sched_getaffinity` or `sched_setaffinity` otherwise (`EINVAL` when `cpu` does not exist or is
/// outside this process's cpuset).
pub fn pin_current_thread(cpu: usize) -> io::Result<AffinityGuard> {
    let previous = sched_getaffinity(this_thread())?;
    pin_for_good(cpu)?;
    Ok(AffinityGuard {
        previous,
        _not_send: PhantomData,
    })
}

/// Pins the calling thread to `cpu` with no way back (a server process's only thread of work).
///
/// # Errors
///
/// As [`pin_current_thread`].
pub fn pin_for_good(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond CPU_SETSIZE ({})", CpuSet::count()),
        )
    })?;
    sched_setaffinity(this_thread(), &set)?;
    Ok(())
}

/// Restores the CPU mask a thread had before [`pin_current_thread`], when dropped.
#[must_use = "dropping the guard unpins the thread immediately"]
pub struct AffinityGuard {
    previous: CpuSet,
    /// The mask is the pinned thread's: keep the guard on that thread.
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for AffinityGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AffinityGuard").finish_non_exhaustive()
    }
}

impl Drop for AffinityGuard {
    fn drop(&mut self) {
        // Nothing useful to do on failure: the old mask was valid when we read it.
        let _ = sched_setaffinity(this_thread(), &self.previous);
    }
}

/// Whether the calling thread may run on `cpu`.
#[cfg(test)]
pub(super) fn allows(cpu: usize) -> io::Result<bool> {
    Ok(sched_getaffinity(this_thread())?.is_set(cpu)?)
}

/// How many CPUs `set` holds.
fn count(set: &CpuSet) -> usize {
    (0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .count()
}

/// Fails with `Unsupported` if this thread may not run on every CPU `placement` uses.
pub(super) fn check_placement(placement: Placement) -> io::Result<()> {
    let allowed = sched_getaffinity(this_thread())?;
    let (client, server) = placement.cpus();
    for cpu in [client, server] {
        if !allowed.is_set(cpu)? {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "placement \"{}\" needs CPU {cpu}, but this thread may run on {} CPU(s) without it",
                    placement.name(),
                    count(&allowed)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_count() -> usize {
        count(&sched_getaffinity(this_thread()).unwrap())
    }

    #[test]
    fn pinning_restores_the_previous_mask() {
        let count_before = current_count();
        {
            let _guard = pin_current_thread(0).expect("CPU 0 exists");
            assert_eq!(current_count(), 1);
        }
        assert_eq!(current_count(), count_before);
        assert!(pin_current_thread(CpuSet::count()).is_err());
    }
}
