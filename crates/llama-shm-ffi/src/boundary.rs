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
