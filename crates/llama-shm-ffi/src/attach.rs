//! Attaching to a running worker that others share: [`lshm_client_attach`].
//!
//! A standalone `llama-shm-worker --prefix P [--parallel N] [--max-queue M]` serves whoever
//! attaches to `P`. The client made here is the same `lshm_client` as a spawned one (the same
//! requests, streams, cancels), with two differences: it has no worker of its own, so
//! [`lshm_client_free`](crate::lshm_client_free) only detaches (the worker keeps serving its
//! other clients) while [`lshm_client_shutdown`](crate::lshm_client_shutdown) asks the shared
//! worker to exit; and a request may find every slot busy, then waits in the worker's
//! first-come-first-served queue, or fails with [`LSHM_E_BUSY`] when that queue is full.

use std::ffi::c_char;

use llama_shm::Prefix;

use crate::boundary::*;
use crate::handles::*;
use crate::status::*;

/// Attaches to the worker serving `prefix` (a standalone `llama-shm-worker --prefix ...`; the
/// seed's names are `"llama_cpp"`), with `options` (NULL: the defaults, see
/// [`lshm_options_default`](crate::lshm_options_default)). It starts nothing and does not wait: the worker's objects must
/// exist, belong to this user and grant no more than mode 0600. A slot is taken per request:
/// when every slot is busy the request waits in the worker's queue (first come, first
/// served), bounded by the request timeout, and fails with [`LSHM_E_BUSY`] at once when the
/// queue is full.
///
/// Of `options`, `prompt_policy`, `request_timeout_ms` and `max_answer_bytes` apply; the
/// spawning ones (`startup_timeout_ms`, `restart_max_attempts`, `restart_backoff_ms`,
/// `restart_max_backoff_ms`) are checked like the others but unused: nothing is started, and
/// a shared worker that dies is not restarted (later requests fail, with
/// [`LSHM_E_WORKER_DIED`] or [`LSHM_E_CLOSED`]).
///
/// On success `*out_client` is a new handle owned by the caller:
/// [`lshm_client_free`](crate::lshm_client_free) detaches from the worker and leaves it
/// running, [`lshm_client_shutdown`](crate::lshm_client_shutdown) asks it to exit (for all its
/// clients). On failure it is NULL.
///
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`] (NULL `prefix` or `out_client`, a prefix that is empty, longer
/// than 200 bytes or holds a character outside `[A-Za-z0-9_.-]`, options as for
/// [`lshm_client_new_with`](crate::lshm_client_new_with)), [`LSHM_E_INVALID_UTF8`],
/// [`LSHM_E_ATTACH`] (no usable worker: objects missing, untrusted or malformed),
/// [`LSHM_E_PANIC`]; the message goes to `*out_error` (when not NULL; free it with
/// [`lshm_string_free`](crate::lshm_string_free)).
///
/// # Safety
/// `prefix` is NULL or a NUL-terminated string; `options` is NULL or points at a readable
/// `lshm_options`; `out_client` and `out_error` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lshm_client_attach(
    prefix: *const c_char,
    options: *const LshmOptions,
    out_client: *mut *mut LshmClient,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        if out_client.is_null() {
            return Err(Failure::null("out_client"));
        }
        // SAFETY: not NULL and writable per the contract.
        unsafe { put(out_client, std::ptr::null_mut()) };
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { input_str(prefix, "prefix") }?;
        // PrefixError's message names the prefix.
        let prefix = Prefix::new(name).map_err(|e| Failure::new(LSHM_E_INVALID_ARGUMENT, e.to_string()))?;
        // SAFETY: NULL or readable per the contract.
        let builder = unsafe { builder_from(options) }?;
        let client = builder.attach(&prefix).map_err(|e| {
            Failure::new(
                LSHM_E_ATTACH,
                format!("cannot attach to a worker under the prefix {name:?}: {e}"),
            )
        })?;
        // SAFETY: not NULL and writable (checked above).
        unsafe { put(out_client, LshmClient::into_raw(client)) };
        Ok(())
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}
