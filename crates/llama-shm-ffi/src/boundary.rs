//! The C boundary: strings in and out, out-parameters, and the `catch_unwind` wrapper that
//! every entry point runs in.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::status::*;

/// Copies `bytes` into a new `malloc`ed, NUL-terminated buffer (interior NULs are kept; the
/// length is returned separately where it matters). `None` when `malloc` fails.
pub(crate) fn malloc_string(bytes: &[u8]) -> Option<*mut c_char> {
    let size = bytes.len().checked_add(1)?;
    // SAFETY: malloc has no preconditions; the result is checked for NULL before use.
    let p = unsafe { libc::malloc(size) }.cast::<u8>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` points at `size` = len + 1 writable bytes just allocated, which cannot
    // overlap `bytes`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        p.add(bytes.len()).write(0);
    }
    Some(p.cast())
}

/// Reads a caller's string argument.
///
/// # Safety
/// `p` is NULL or points at a NUL-terminated string that stays valid and unchanged for `'a`.
pub(crate) unsafe fn input_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: not NULL, and NUL-terminated and live for 'a per this function's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|e| Failure::new(LSHM_E_INVALID_UTF8, format!("{what} is not valid UTF-8: {e}")))
}

/// Stores `value` in `*out` when `out` is not NULL.
///
/// # Safety
/// `out` is NULL or valid for writing one `T`.
pub(crate) unsafe fn put<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: not NULL, and writable per this function's contract; `write` does not read
        // or drop the old (possibly uninitialised) value.
        unsafe { out.write(value) };
    }
}

/// Runs `body` with unwinding caught, and reports its outcome: the status is returned, the
/// message (on failure) goes to `*out_error` when `out_error` is not NULL.
///
/// # Safety
/// `out_error` is NULL or valid for writing one pointer.
pub(crate) unsafe fn run(out_error: *mut *mut c_char, body: impl FnOnce() -> Result<(), Failure>) -> Status {
    // SAFETY: per this function's contract.
    unsafe { put(out_error, std::ptr::null_mut()) };
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return LSHM_OK,
        Ok(Err(f)) => f,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Failure::new(LSHM_E_PANIC, format!("internal error (panic): {what}"))
        }
    };
    if !out_error.is_null() {
        let msg = malloc_string(failure.message.as_bytes()).unwrap_or(std::ptr::null_mut());
        // SAFETY: not NULL, writable per this function's contract.
        unsafe { put(out_error, msg) };
    }
    failure.status
}

/// Restores the thread's signal mask (and drops a SIGPIPE raised meanwhile) when dropped: see
/// [`no_sigpipe`].
struct SigpipeGuard {
    old: libc::sigset_t,
    /// SIGPIPE was neither blocked nor pending when the guard was made.
    absorb: bool,
}

/// Whether SIGPIPE is pending for this thread (or the process).
pub(crate) fn sigpipe_pending() -> bool {
    // SAFETY: `sigpending` fills the local, zero-initialised set; `sigismember` reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set) == 0 && libc::sigismember(&set, libc::SIGPIPE) == 1
    }
}

impl Drop for SigpipeGuard {
    fn drop(&mut self) {
        // SAFETY: libc calls on local sets initialised by sigemptyset/sigaddset, and on the
        // mask saved by `no_sigpipe`; a zero timeout makes sigtimedwait poll, not wait.
        unsafe {
            if self.absorb && sigpipe_pending() {
                let mut pipe: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut pipe);
                libc::sigaddset(&mut pipe, libc::SIGPIPE);
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                libc::sigtimedwait(&pipe, std::ptr::null_mut(), &zero);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// Runs `f` with SIGPIPE blocked on this thread and discards a SIGPIPE that it raised.
///
/// The library writes to pipes and sockets of its own (a worker's control socket, the stop
/// pipe of a watcher thread that may have ended already): such a write must fail with
/// `EPIPE`, not kill the process. Rust programs ignore SIGPIPE, but a C host usually keeps the
/// default action, which is to terminate. So the entry points that may write there (spawning,
/// requests, shutdown, free) block it for their duration; a SIGPIPE that was already pending,
/// or that the caller blocks itself, is left alone. (A stream callback runs inside too: a
/// write of its own to a broken pipe then fails with `EPIPE` rather than raising the signal.)
pub(crate) fn no_sigpipe<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: libc calls on local sets: sigemptyset/sigaddset initialise `pipe`,
    // pthread_sigmask fills `old` (zero-initialised first, so it is valid either way).
    let _guard = unsafe {
        let mut pipe: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        let pending = sigpipe_pending();
        let mut old: libc::sigset_t = std::mem::zeroed();
        let blocked = libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old) == 0;
        let was_blocked = libc::sigismember(&old, libc::SIGPIPE) == 1;
        blocked.then_some(SigpipeGuard {
            old,
            absorb: !pending && !was_blocked,
        })
    };
    f()
}
