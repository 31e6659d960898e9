//! The signals that end a worker: held back during start-up, then turned into bytes on a
//! socket that the stop watcher reads (so a signal never runs code of ours in a handler).

use std::io;
use std::os::unix::net::UnixStream;

use nix::sys::signal::{signal, SigHandler, SigSet, Signal};

/// The signals that end a serving worker gracefully (names removed, exit 0).
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

fn stop_set() -> SigSet {
    let mut set = SigSet::empty();
    for sig in STOP_SIGNALS {
        set.add(sig);
    }
    set
}

/// Blocks the stop signals on this thread (and the threads it starts, and across `exec`):
/// from the first line of `main` until [`stop_signal_socket`] is in place, a stop signal
/// stays pending instead of killing the process with its names left behind.
///
/// # Errors
/// The OS error of `pthread_sigmask`.
pub fn hold_stop_signals() -> io::Result<()> {
    stop_set().thread_block().map_err(io::Error::from)
}

/// Routes every stop signal to a byte on the returned socket (the read end), then releases
/// the ones [`hold_stop_signals`] held: a signal pending since start-up arrives at once.
///
/// # Errors
/// The OS error of creating the socket pair or registering the handlers.
pub fn stop_signal_socket() -> io::Result<UnixStream> {
    let (rx, tx) = UnixStream::pair()?;
    for sig in STOP_SIGNALS {
        signal_hook::low_level::pipe::register(sig as i32, tx.try_clone()?)?;
    }
    stop_set().thread_unblock().map_err(io::Error::from)?;
    Ok(rx)
}

/// Ignores a terminal's Ctrl-C and hang-up in this process (a standalone worker's guardian:
/// those are for the worker, and the guardian ends when the worker does).
pub fn ignore_terminal_signals() {
    for sig in [Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; the only caller is the guardian's `main`,
        // which relies on neither signal.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}
