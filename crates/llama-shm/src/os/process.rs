//! Processes: is a pid alive, how did a child end, and a watcher thread that reacts the
//! moment a peer dies (a `pidfd`, or the hang-up of a socket the peer holds).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It is gone, but its status is unknown (not our child, or already reaped).
    Unknown,
}

impl ExitInfo {
    /// Converts a std exit status.
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitInfo::Exited(code),
            (None, Some(sig)) => ExitInfo::Signaled(sig),
            _ => ExitInfo::Unknown,
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitInfo::Exited(code) => write!(f, "exited with code {code}"),
            ExitInfo::Signaled(sig) => match Signal::try_from(sig) {
                Ok(s) => write!(f, "killed by signal {sig} ({})", s.as_str()),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
            ExitInfo::Unknown => write!(f, "exited (status unknown)"),
        }
    }
}

/// The CPU the calling thread runs on, plus one (0 when the kernel cannot tell). Served by
/// the vDSO / rseq area: no system call on the hot path.
pub fn current_cpu() -> u32 {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).map_or(0, |c| c.saturating_add(1))
}

/// Whether process `pid` exists, zombies included: one `kill(pid, 0)`, cheap enough to ask
/// on every poll (see [`pid_alive`] to count a zombie as dead).
pub fn pid_exists(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None),
        Ok(()) | Err(Errno::EPERM)
    )
}

/// Whether process `pid` exists and is not a zombie (reads `/proc/<pid>/stat`; see
/// [`pid_exists`] for the cheap check).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    // kill(0) succeeds on zombies: look at the state letter in /proc/<pid>/stat.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// Opens a pidfd for `pid`: readable once the process has exited.
///
/// # Errors
/// `ESRCH` if the process is gone; `ENOSYS` on kernels before 5.3.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes (pid_t, unsigned int flags) and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pids of processes that map the file `path` (by scanning `/proc/*/maps` for its inode),
/// excluding this process. Used to tell whether an object without a live creator is still in
/// use. Matching the inode, not the name, sees mappings made before the file had its name
/// (objects are created unnamed and linked last) and ignores a removed object of the same
/// name that some process still maps. Processes whose maps are unreadable (other users,
/// unless root) are not seen; a path that does not exist is mapped by nobody.
pub fn processes_mapping(path: &std::path::Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(md) => processes_mapping_inode(md.ino()),
        Err(_) => Vec::new(),
    }
}

/// What a [`Watcher`] waits for.
#[derive(Debug)]
pub enum Watch {
    /// A pidfd: fires when the process exits.
    Pidfd(OwnedFd),
    /// A stream socket held by the peer: fires on hang-up (the peer closed it or died).
    HangUp(OwnedFd),
    /// A file descriptor that fires when readable (e.g. a signal self-pipe).
    Readable(OwnedFd),
}

impl Watch {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Watch::Pidfd(fd) | Watch::HangUp(fd) | Watch::Readable(fd) => fd.as_fd(),
        }
    }
    fn events(&self) -> libc::c_short {
        match self {
            Watch::Pidfd(_) | Watch::Readable(_) => libc::POLLIN,
            // Only the hang-up: data the peer may send is not a reason to fire.
            Watch::HangUp(_) => libc::POLLRDHUP,
        }
    }
}

/// `poll(2)` on `fds` without a timeout, retrying `EINTR`. (nix's `PollFlags` cannot carry
/// `POLLRDHUP`, so this calls libc directly.)
fn poll_forever(fds: &mut [libc::pollfd]) -> io::Result<()> {
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of the given length.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A thread blocked in `poll` on a set of [`Watch`]es; when one fires it calls `on_fire`
/// with the index of the watch that fired, once, and ends. Dropping the watcher stops and
/// joins the thread (it never blocks beyond that).
#[derive(Debug)]
pub struct Watcher {
    stop_tx: Option<OwnedFd>,
    /// A second handle on the stop pipe's read end, kept until the drop has written: the
    /// write then never meets a pipe without reader (SIGPIPE), even after the thread ended.
    _stop_rx: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts the watcher thread.
    ///
    /// # Errors
    /// When the stop pipe or the thread cannot be created.
    pub fn spawn<F>(name: &str, watches: Vec<Watch>, on_fire: F) -> io::Result<Self>
    where
        F: FnOnce(usize) + Send + 'static,
    {
        Self::spawn_inner(name, watches, false, on_fire)
    }

    /// A watcher that calls `on_fire` (with the index of the last) once *every* watch has
    /// fired: e.g. when each of several processes, one of which is the peer, has exited.
    ///
    /// # Errors
    /// When the stop pipe or the thread cannot be created.
    pub fn spawn_when_all<F>(name: &str, watches: Vec<Watch>, on_fire: F) -> io::Result<Self>
    where
        F: FnOnce(usize) + Send + 'static,
    {
        Self::spawn_inner(name, watches, true, on_fire)
    }

    fn spawn_inner<F>(name: &str, watches: Vec<Watch>, all: bool, on_fire: F) -> io::Result<Self>
    where
        F: FnOnce(usize) + Send + 'static,
    {
        let (stop_rx, stop_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let keep_rx = stop_rx.try_clone()?;
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let mut fds: Vec<libc::pollfd> = watches
                .iter()
                .map(|w| libc::pollfd {
                    fd: w.fd().as_raw_fd(),
                    events: w.events(),
                    revents: 0,
                })
                .chain(std::iter::once(libc::pollfd {
                    fd: stop_rx.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }))
                .collect();
            loop {
                if let Err(e) = poll_forever(&mut fds) {
                    tracing::error!("watcher poll failed: {e}");
                    return;
                }
                if fds.last().is_some_and(|f| f.revents != 0) {
                    return;
                }
                // POLLHUP/POLLERR are reported whatever was asked for: they count as firing.
                let Some(i) = fds[..watches.len()].iter().position(|f| f.revents != 0) else {
                    continue;
                };
                if all {
                    // That one is done: poll ignores negative descriptors.
                    fds[i].fd = -1;
                    fds[i].revents = 0;
                    if fds[..watches.len()].iter().any(|f| f.fd >= 0) {
                        continue;
                    }
                }
                on_fire(i);
                return;
            }
        })?;
        Ok(Self {
            stop_tx: Some(stop_tx),
            _stop_rx: keep_rx,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // A byte wakes the thread. (Closing the write end would not, if a forked child holds a
        // copy of it; and the write cannot raise SIGPIPE — fatal in a C program that keeps the
        // default action — because `_stop_rx` keeps a reader until this drop is done.)
        if let Some(tx) = self.stop_tx.take() {
            let _ = nix::unistd::write(&tx, &[1]);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pids of processes that map the shared-memory object with inode `ino` (a mapping of a file
/// under `/dev/shm`, by `/proc/*/maps`), excluding this process. Matching the inode, not the
/// name, ignores a removed object of the same name that some process still maps.
pub fn processes_mapping_inode(ino: u64) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let maps_it = |maps: &str| {
        maps.lines().any(|l| {
            let mut f = l.split_ascii_whitespace();
            // address perms offset dev inode path
            let inode = f.nth(4).and_then(|i| i.parse::<u64>().ok());
            inode == Some(ino) && f.next().is_some_and(|p| p.starts_with("/dev/shm/"))
        })
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| maps_it(&m)))
        .collect()
}

/// Whether the process behind `pidfd` has exited (a poll that does not wait).
pub fn pidfd_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Waits until `fd` is readable (data, end of file or hang-up) or `deadline` passes:
/// `Ok(true)` when readable, `Ok(false)` at the deadline — also when the deadline has passed
/// already, whatever is readable, so a caller's loop over a peer that keeps writing ends by
/// it. `EINTR` is retried.
///
/// # Errors
/// The OS error of `poll(2)`.
pub fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Rounded up, so a wait never ends a fraction of a millisecond early.
        let ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    /// A watcher whose thread has ended (it fired) is dropped in a process that keeps
    /// SIGPIPE's default action, as C programs do: the drop must not write to the stop pipe,
    /// whose read end died with the thread (that write would kill the process).
    #[test]
    fn dropping_a_watcher_that_fired_raises_no_sigpipe() {
        use nix::sys::signal::{signal, SigHandler, Signal};
        let (tx, rx) = UnixStream::pair().unwrap();
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = std::sync::Arc::clone(&fired);
        let w = Watcher::spawn("test-watch", vec![Watch::Readable(rx.into())], move |_| {
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap();
        std::io::Write::write_all(&mut &tx, b"x").unwrap();
        let t = Instant::now();
        while !(fired.load(std::sync::atomic::Ordering::SeqCst)
            && w.thread.as_ref().is_some_and(JoinHandle::is_finished))
        {
            assert!(t.elapsed() < Duration::from_secs(5), "the watcher did not fire");
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: installs the default action (no handler code runs); the test runs in a
        // process of its own under nextest, and restores the runtime's SIG_IGN below.
        let old = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.unwrap();
        drop(w);
        // SAFETY: as above, putting back what was there.
        unsafe { signal(Signal::SIGPIPE, old) }.unwrap();
    }

    /// Another copy of the stop pipe's write end (a child the host forked holds one) must not
    /// keep a dropped watcher's thread waiting: the drop wakes it, not the pipe's hang-up.
    #[test]
    fn a_copy_of_the_stop_pipe_does_not_hold_a_watchers_drop() {
        let (_tx, rx) = UnixStream::pair().unwrap();
        let w = Watcher::spawn("test-watch", vec![Watch::Readable(rx.into())], |_| {}).unwrap();
        let copy = w.stop_tx.as_ref().unwrap().try_clone().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(w);
            let _ = done_tx.send(());
        });
        assert!(
            done_rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "the drop waited for every copy of the write end to close"
        );
        drop(copy);
    }

    #[test]
    fn wait_readable_is_false_once_the_deadline_has_passed_even_with_data_waiting() {
        let (a, mut b) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut b, b"x").unwrap();
        assert!(wait_readable(a.as_fd(), Instant::now() + Duration::from_secs(5)).unwrap());
        assert!(!wait_readable(a.as_fd(), Instant::now()).unwrap());
        let (c, _d) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let limit = Duration::from_millis(30);
        assert!(!wait_readable(c.as_fd(), started + limit).unwrap());
        assert!(started.elapsed() >= limit, "returned before its deadline");
    }
}
