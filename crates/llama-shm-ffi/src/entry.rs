//! The entry points, in the order of a client's life (see the crate docs' diagram).

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use llama_shm::ShutdownError;

use crate::boundary::*;
use crate::conversation::exchange;
use crate::handles::*;
use crate::locate::*;
use crate::request_args::read_prompts;
use crate::status::*;

/// The library's version, e.g. `"0.1.0"`: a static string, never to be freed.
#[no_mangle]
pub extern "C" fn lshm_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A short English description of `code`: a static string, never to be freed (unknown codes
/// get `"unknown status code"`).
#[no_mangle]
pub extern "C" fn lshm_status_message(code: Status) -> *const c_char {
    message_of(code).as_ptr()
}

/// The ABI version of this library ([`LSHM_ABI_VERSION`] when it was built): a frontend
/// compares it with the `LSHM_ABI_VERSION` of the header it was built against and refuses a
/// library that differs.
#[no_mangle]
pub extern "C" fn lshm_abi_version() -> u32 {
    LSHM_ABI_VERSION
}

/// The default options: `struct_size` set, every other field 0 (the library's defaults:
/// 120 s start-up, 600 s per request, 8 MiB answers, truncating prompts, no restarts).
#[no_mangle]
pub extern "C" fn lshm_options_default() -> LshmOptions {
    LshmOptions {
        struct_size: std::mem::size_of::<LshmOptions>() as u32,
        prompt_policy: LSHM_POLICY_TRUNCATE,
        startup_timeout_ms: 0,
        request_timeout_ms: 0,
        max_answer_bytes: 0,
        restart_max_attempts: 0,
        reserved: 0,
        restart_backoff_ms: 0,
        restart_max_backoff_ms: 0,
    }
}

/// Spawns a worker and connects to it; waits until it is ready (start-up timeout 120 s).
/// [`lshm_client_new_with`] with default options but for `request_timeout_ms`.
///
/// `worker`: path of `llama-shm-worker`, or NULL for the default (`$LLAMA_SHM_WORKER`, else
/// next to this library, else next to the executable). `argv`/`argc`: extra worker arguments
/// (`argv` may be NULL when `argc` is 0). `request_timeout_ms`: bound on each request, 0 for
/// the default (600 s). On success `*out_client` is a new handle owned by the caller (release
/// it with [`lshm_client_shutdown`] or [`lshm_client_free`]); on failure it is NULL.
///
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`] (NULL `out_client`, NULL `argv` with `argc > 0`, a NULL
/// argument), [`LSHM_E_INVALID_UTF8`], [`LSHM_E_WORKER_NOT_FOUND`], [`LSHM_E_STARTUP`],
/// [`LSHM_E_PANIC`]; the message goes to `*out_error` (when not NULL; free it with
/// [`lshm_string_free`]).
///
/// # Safety
/// `worker` is NULL or a NUL-terminated string; `argv` is NULL or points at `argc` pointers,
/// each NULL or a NUL-terminated string; `out_client` and `out_error` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lshm_client_new(
    worker: *const c_char,
    argv: *const *const c_char,
    argc: usize,
    request_timeout_ms: u64,
    out_client: *mut *mut LshmClient,
    out_error: *mut *mut c_char,
) -> Status {
    let options = LshmOptions {
        request_timeout_ms,
        ..lshm_options_default()
    };
    // SAFETY: the same contract, and `options` is a valid struct on this stack.
    unsafe { lshm_client_new_with(worker, argv, argc, &options, out_client, out_error) }
}

/// Spawns a worker and connects to it with `options` (NULL: the defaults, see
/// [`lshm_options_default`]); otherwise as [`lshm_client_new`].
///
/// # Errors
/// As [`lshm_client_new`]; also [`LSHM_E_INVALID_ARGUMENT`] for options of another
/// `struct_size`, an unknown `prompt_policy` or a non-zero `reserved`.
///
/// # Safety
/// As [`lshm_client_new`]; `options` is NULL or points at a readable `lshm_options`.
#[no_mangle]
pub unsafe extern "C" fn lshm_client_new_with(
    worker: *const c_char,
    argv: *const *const c_char,
    argc: usize,
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
        // SAFETY: NULL or readable per the contract.
        let builder = unsafe { builder_from(options) }?;
        if argv.is_null() && argc > 0 {
            return Err(Failure::null("argv (with argc > 0)"));
        }
        let mut args = Vec::with_capacity(argc);
        for i in 0..argc {
            // SAFETY: `argv` is not NULL here (argc > 0) and holds `argc` pointers.
            let arg = unsafe { *argv.add(i) };
            // SAFETY: each entry is NULL or a NUL-terminated string (the contract).
            args.push(unsafe { input_str(arg, &format!("argv[{i}]")) }?.to_owned());
        }
        let path = if worker.is_null() {
            default_worker().ok_or_else(|| {
                Failure::new(
                    LSHM_E_WORKER_NOT_FOUND,
                    "no worker path given and llama-shm-worker not found \
                     ($LLAMA_SHM_WORKER, next to the library, next to the executable)",
                )
            })?
        } else {
            // SAFETY: not NULL, NUL-terminated per the contract.
            PathBuf::from(unsafe { input_str(worker, "worker") }?)
        };
        let client = builder
            .worker(path)
            .args(args)
            .spawn()
            .map_err(|e| Failure::new(spawn_status(&e), e.to_string()))?;
        // SAFETY: not NULL and writable (checked above).
        unsafe { put(out_client, LshmClient::into_raw(client)) };
        Ok(())
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}

/// The worker's process id, in `*out_pid` (it does not wait for a request in flight).
///
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`] for a NULL pointer, [`LSHM_E_CLOSED`] when the pid is unknown.
///
/// # Safety
/// `client` is NULL or a live handle from [`lshm_client_new`]; `out_pid` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lshm_client_worker_pid(client: *const LshmClient, out_pid: *mut u32) -> Status {
    let body = || {
        if out_pid.is_null() {
            return Err(Failure::null("out_pid"));
        }
        // SAFETY: NULL or a live handle (the contract); shared access only.
        let client = unsafe { client.as_ref() }.ok_or_else(|| Failure::null("client"))?;
        let pid = match client.worker_pid.load(Ordering::Relaxed) {
            0 => return Err(Failure::new(LSHM_E_CLOSED, "worker pid unknown")),
            pid => pid,
        };
        // SAFETY: not NULL, writable per the contract.
        unsafe { put(out_pid, pid) };
        Ok(())
    };
    // SAFETY: NULL is allowed for out_error.
    unsafe { run(std::ptr::null_mut(), body) }
}

/// Sets the most bytes one answer may have (default 8 MiB): a worker that goes on past them
/// (an endless answer) is cancelled and the request fails with [`LSHM_E_ANSWER_TOO_LONG`], so
/// the memory a client holds stays near the bound. Takes effect from the next request (waits
/// for one in flight on another thread).
///
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`] for a NULL client or a bound of 0.
///
/// # Safety
/// `client` is NULL or a live handle not being shut down or freed by another thread.
#[no_mangle]
pub unsafe extern "C" fn lshm_client_set_max_answer_bytes(client: *mut LshmClient, max_bytes: u64) -> Status {
    let body = || {
        // SAFETY: NULL or a live handle (the contract); the mutex gives exclusive access.
        let handle = unsafe { client.as_ref() }.ok_or_else(|| Failure::null("client"))?;
        if max_bytes == 0 {
            return Err(Failure::new(
                LSHM_E_INVALID_ARGUMENT,
                "max_bytes must be at least 1",
            ));
        }
        handle.lock().set_max_answer_bytes(max_bytes);
        Ok(())
    };
    // SAFETY: NULL is allowed for out_error.
    unsafe { run(std::ptr::null_mut(), body) }
}

/// Sends one request and waits for the whole answer.
///
/// `deadline_ms`: generation budget counted by the worker, 0 for none (when it passes the
/// answer so far comes back with `LSHM_FINISH_DEADLINE`). `max_tokens`: most tokens to
/// generate, 0 for the worker's own limit. On success `*out_response` holds the answer (its
/// `text` is the caller's to free); on failure its `text` is NULL. A cancelled request
/// succeeds, with `finish == LSHM_FINISH_CANCELLED` and the partial answer.
///
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`], [`LSHM_E_INVALID_UTF8`], [`LSHM_E_PANIC`], and the request
/// failures [`LSHM_E_TIMEOUT`] … [`LSHM_E_OS`]; the message goes to `*out_error` (when not NULL).
///
/// # Safety
/// `client` is NULL or a live handle not being shut down or freed by another thread; `user`
/// and `system` are NULL or NUL-terminated strings; `out_response` and `out_error` are NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn lshm_request(
    client: *mut LshmClient,
    user: *const c_char,
    system: *const c_char,
    deadline_ms: u64,
    max_tokens: u32,
    out_response: *mut LshmResponse,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        let opts = options(deadline_ms, max_tokens);
        // SAFETY: NULL or NUL-terminated strings that live through the call (the contract).
        let read = || unsafe { read_prompts(user, system) }.map(|body| (body, opts));
        // SAFETY: the pointers satisfy `exchange`'s contract (this function's); no extras.
        unsafe { exchange(client, read, None, out_response, std::ptr::null_mut()) }
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}

/// [`lshm_request`] that also hands the answer to `on_chunk` piece by piece as the worker
/// generates it, on the calling thread: `on_chunk(chunk, len, user_data)`, where `chunk` is
/// `len` bytes of UTF-8 followed by a NUL, valid only during the call. The chunks concatenate
/// to `out_response->text`.
///
/// # Errors
/// As [`lshm_request`]; a NULL `on_chunk` is [`LSHM_E_INVALID_ARGUMENT`].
///
/// # Safety
/// As [`lshm_request`]; `on_chunk` is NULL or a function that returns normally (no C++
/// exception, no `longjmp` out of it) and must not call into this client (a cancel through
/// an `lshm_canceller` is fine).
#[allow(clippy::too_many_arguments)]
#[no_mangle]
pub unsafe extern "C" fn lshm_stream(
    client: *mut LshmClient,
    user: *const c_char,
    system: *const c_char,
    deadline_ms: u64,
    max_tokens: u32,
    on_chunk: Option<ChunkCallback>,
    user_data: *mut c_void,
    out_response: *mut LshmResponse,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        if out_response.is_null() {
            return Err(Failure::null("out_response"));
        }
        let Some(callback) = on_chunk else {
            // SAFETY: not NULL, writable per the contract.
            unsafe { put(out_response, LshmResponse::EMPTY) };
            return Err(Failure::null("on_chunk"));
        };
        let opts = options(deadline_ms, max_tokens);
        // SAFETY: NULL or NUL-terminated strings that live through the call (the contract).
        let read = || unsafe { read_prompts(user, system) }.map(|body| (body, opts));
        let on_chunk = Some((callback, user_data));
        // SAFETY: the pointers and the callback satisfy `exchange`'s contract (this
        // function's); no extras.
        unsafe { exchange(client, read, on_chunk, out_response, std::ptr::null_mut()) }
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}

/// Frees `response->text` and resets `*response` to zeros. NULL is a no-op.
///
/// # Safety
/// `response` is NULL or points at an `lshm_response` filled by this library (or zeroed).
#[no_mangle]
pub unsafe extern "C" fn lshm_response_free(response: *mut LshmResponse) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if response.is_null() {
            return;
        }
        // SAFETY: not NULL, and a response of ours per the contract: `text` is NULL or ours.
        unsafe {
            lshm_string_free((*response).text);
            response.write(LshmResponse::EMPTY);
        }
    }));
}

/// A cancel handle for `client`, in `*out_canceller` (the caller's: release it with
/// [`lshm_canceller_free`]). It may be used from any thread, and may outlive the client (it
/// then cancels nothing).
///
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`] for a NULL pointer.
///
/// # Safety
/// `client` is NULL or a live handle; `out_canceller` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lshm_canceller_new(
    client: *const LshmClient,
    out_canceller: *mut *mut LshmCanceller,
) -> Status {
    let body = || {
        if out_canceller.is_null() {
            return Err(Failure::null("out_canceller"));
        }
        // SAFETY: not NULL, writable per the contract.
        unsafe { put(out_canceller, std::ptr::null_mut()) };
        // SAFETY: NULL or a live handle (the contract); the canceller is read only.
        let client = unsafe { client.as_ref() }.ok_or_else(|| Failure::null("client"))?;
        let handle = Box::into_raw(Box::new(LshmCanceller(client.canceller.clone())));
        // SAFETY: not NULL, writable per the contract.
        unsafe { put(out_canceller, handle) };
        Ok(())
    };
    // SAFETY: NULL is allowed for out_error.
    unsafe { run(std::ptr::null_mut(), body) }
}

/// Cancels the client's request in flight, if any: generation stops within a token and that
/// request returns `LSHM_OK` with `finish == LSHM_FINISH_CANCELLED` and the partial answer.
/// `*out_in_flight` (when not NULL) is set to 1 if a request was in flight, else 0.
///
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`] for a NULL `canceller`.
///
/// # Safety
/// `canceller` is NULL or a live handle from [`lshm_canceller_new`]; `out_in_flight` is NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn lshm_cancel(canceller: *const LshmCanceller, out_in_flight: *mut i32) -> Status {
    let body = || {
        // SAFETY: NULL or a live handle (the contract); `Canceller` is Sync.
        let c = unsafe { canceller.as_ref() }.ok_or_else(|| Failure::null("canceller"))?;
        let in_flight = c.0.cancel();
        // SAFETY: NULL or writable per the contract.
        unsafe { put(out_in_flight, i32::from(in_flight)) };
        Ok(())
    };
    // SAFETY: NULL is allowed for out_error.
    unsafe { run(std::ptr::null_mut(), body) }
}

/// Releases a cancel handle. NULL is a no-op.
///
/// # Safety
/// `canceller` is NULL or a handle from [`lshm_canceller_new`] not yet freed, and no other
/// thread is using it.
#[no_mangle]
pub unsafe extern "C" fn lshm_canceller_free(canceller: *mut LshmCanceller) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !canceller.is_null() {
            // SAFETY: a live handle made by `Box::into_raw` in `lshm_canceller_new`, given back
            // exactly once (the contract).
            drop(unsafe { Box::from_raw(canceller) });
        }
    }));
}

/// Shuts the worker down in order (bounded: 5 s, then it is killed) and frees `client`, which
/// is invalid afterwards whatever the status.
///
/// A client of [`lshm_client_attach`](crate::lshm_client_attach) has no worker of its own to
/// kill: this *asks the shared worker to exit* (as `llama_shm::Client::shutdown` does), for
/// every client attached to it, and waits (bounded) until it is seen to exit. To leave a
/// shared worker running, release the client with [`lshm_client_free`] instead.
///
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`] for NULL; [`LSHM_E_SHUTDOWN`] if the worker had to be killed
/// or exited with a failure status, or (attached) if no turn came to ask it, it refused, or
/// its exit was not seen within the bound (the message goes to `*out_error` when not NULL).
///
/// # Safety
/// `client` is NULL or a live handle from [`lshm_client_new`] or
/// [`lshm_client_attach`](crate::lshm_client_attach) that no other thread is using;
/// `out_error` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lshm_client_shutdown(
    client: *mut LshmClient,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        if client.is_null() {
            return Err(Failure::null("client"));
        }
        // SAFETY: a live handle made by `Box::into_raw`, given back exactly once (the
        // contract).
        let handle = unsafe { Box::from_raw(client) };
        let client = handle.client.into_inner().unwrap_or_else(|e| e.into_inner());
        client
            .shutdown()
            .map_err(|e: ShutdownError| Failure::new(LSHM_E_SHUTDOWN, e.to_string()))
    };
    // SAFETY: `out_error` is NULL or writable (the contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}

/// Frees `client` without reporting: a spawned worker is still shut down (as by
/// [`lshm_client_shutdown`], errors ignored); from a shared worker (a client of
/// [`lshm_client_attach`](crate::lshm_client_attach)) it just detaches, leaving the worker
/// running for its other clients. NULL is a no-op.
///
/// # Safety
/// `client` is NULL or a live handle from [`lshm_client_new`] or
/// [`lshm_client_attach`](crate::lshm_client_attach) that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn lshm_client_free(client: *mut LshmClient) {
    let _ = no_sigpipe(|| {
        catch_unwind(AssertUnwindSafe(|| {
            if !client.is_null() {
                // SAFETY: a live handle made by `Box::into_raw`, given back exactly once (the
                // contract).
                drop(unsafe { Box::from_raw(client) });
            }
        }))
    });
}

/// Frees a string returned by this library (an error message, `lshm_response.text`). NULL is
/// a no-op. The strings are `malloc`ed, so `free` works too.
///
/// # Safety
/// `s` is NULL or a string returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn lshm_string_free(s: *mut c_char) {
    // SAFETY: NULL or a pointer from `malloc` (in `malloc_string`) not yet freed (the
    // contract); `free(NULL)` is a no-op.
    unsafe { libc::free(s.cast()) };
}
