//! # llama-shm-ffi
//!
//! The C ABI of llama-shm: `libllama_shm_ffi.so` / `.a` and the hand-written header
//! `include/llama_shm.h` (the header is the reference; `tests/header.rs` keeps the two in step).
//!
//! Every entry point checks its pointers (NULL → [`LSHM_E_INVALID_ARGUMENT`]), validates the
//! UTF-8 of its strings ([`LSHM_E_INVALID_UTF8`]) and runs under `catch_unwind` (a panic
//! becomes [`LSHM_E_PANIC`]): nothing unwinds into C. Strings handed to C are allocated with
//! `malloc` and released with [`lshm_string_free`] (or `free`).
//!
//! ```text
//!  lshm_client_new ─► lshm_request / lshm_stream (any number) ─► lshm_client_shutdown
//!        │                     ▲                                  (or lshm_client_free)
//!        └─► lshm_canceller_new ─► lshm_cancel (from any thread) ─► lshm_canceller_free
//! ```
//!
//! The `unsafe` here is the C boundary itself: reading the caller's strings and arrays,
//! writing its out-parameters, calling its callback, and owning the boxed handles and
//! `malloc`ed strings. Each function's `# Safety` section states what C must guarantee.

use llama_shm::Prompts;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use llama_shm::internals::client::{Canceller, RequestOptions, ShutdownError};
use llama_shm::{Client, RequestError, Response, SpawnError};

/// A status code (`lshm_status` in C, an `int32_t`). 0 is success.
pub type Status = i32;

/// Success.
pub const LSHM_OK: Status = 0;
/// A required pointer was NULL, or an argument is out of range.
pub const LSHM_E_INVALID_ARGUMENT: Status = 1;
/// A string argument is not valid UTF-8.
pub const LSHM_E_INVALID_UTF8: Status = 2;
/// The library panicked (a bug); the call had no effect beyond what it did before.
pub const LSHM_E_PANIC: Status = 3;
/// An allocation for a returned string failed.
pub const LSHM_E_NO_MEMORY: Status = 4;
/// The worker binary was not given and not found, does not exist, or is not executable.
pub const LSHM_E_WORKER_NOT_FOUND: Status = 5;
/// The worker could not be started (it exited, was not ready in time, objects failed).
pub const LSHM_E_STARTUP: Status = 6;
/// A prompt could not be encoded (too long or an interior NUL under a strict policy).
pub const LSHM_E_ENCODE: Status = 7;
/// The request timeout passed.
pub const LSHM_E_TIMEOUT: Status = 8;
/// The worker died.
pub const LSHM_E_WORKER_DIED: Status = 9;
/// The worker refused the request's auth token.
pub const LSHM_E_UNAUTHORIZED: Status = 10;
/// The prompt does not fit in the model's context.
pub const LSHM_E_PROMPT_TOO_LONG: Status = 11;
/// The worker's engine failed.
pub const LSHM_E_ENGINE: Status = 12;
/// The worker judged the request malformed.
pub const LSHM_E_BAD_REQUEST: Status = 13;
/// The worker is shutting down.
pub const LSHM_E_SHUTTING_DOWN: Status = 14;
/// The worker answered with a status this build does not know.
pub const LSHM_E_UNKNOWN_STATUS: Status = 15;
/// A dead worker could not be restarted.
pub const LSHM_E_RESTART_FAILED: Status = 16;
/// The response was corrupted in shared memory; the request may be retried.
pub const LSHM_E_CORRUPT: Status = 17;
/// The client is closed (shut down, or an earlier failure such as the worker's death).
pub const LSHM_E_CLOSED: Status = 18;
/// An OS call (semaphore) failed.
pub const LSHM_E_OS: Status = 19;
/// Shutdown was not clean: the worker had to be killed or exited with a failure status.
pub const LSHM_E_SHUTDOWN: Status = 20;
/// The answer grew past the client's bound (`lshm_client_set_max_answer_bytes`); the request
/// was cancelled.
pub const LSHM_E_ANSWER_TOO_LONG: Status = 21;

/// `lshm_response.finish`: not reported (seed-mode worker, or an error).
pub const LSHM_FINISH_UNKNOWN: u32 = 0;
/// The engine finished its answer.
pub const LSHM_FINISH_STOP: u32 = 1;
/// A length limit (max_tokens, the worker's limit) ended the answer.
pub const LSHM_FINISH_LENGTH: u32 = 2;
/// The request was cancelled (`lshm_cancel`, or the worker is shutting down).
pub const LSHM_FINISH_CANCELLED: u32 = 3;
/// The request's deadline passed.
pub const LSHM_FINISH_DEADLINE: u32 = 4;
/// The engine failed part-way.
pub const LSHM_FINISH_ERROR: u32 = 5;

/// The message of a status code, as a static NUL-terminated string.
fn message_of(code: Status) -> &'static CStr {
    match code {
        LSHM_OK => c"ok",
        LSHM_E_INVALID_ARGUMENT => c"invalid argument (NULL pointer or value out of range)",
        LSHM_E_INVALID_UTF8 => c"a string argument is not valid UTF-8",
        LSHM_E_PANIC => c"internal error: the library panicked",
        LSHM_E_NO_MEMORY => c"out of memory",
        LSHM_E_WORKER_NOT_FOUND => c"worker binary not found or not executable",
        LSHM_E_STARTUP => c"the worker could not be started",
        LSHM_E_ENCODE => c"a prompt could not be encoded",
        LSHM_E_TIMEOUT => c"request timed out",
        LSHM_E_WORKER_DIED => c"the worker died",
        LSHM_E_UNAUTHORIZED => c"the worker refused the request's token",
        LSHM_E_PROMPT_TOO_LONG => c"the prompt does not fit in the model's context",
        LSHM_E_ENGINE => c"the worker's engine failed",
        LSHM_E_BAD_REQUEST => c"the worker judged the request malformed",
        LSHM_E_SHUTTING_DOWN => c"the worker is shutting down",
        LSHM_E_UNKNOWN_STATUS => c"the worker answered with an unknown status",
        LSHM_E_RESTART_FAILED => c"the worker could not be restarted",
        LSHM_E_CORRUPT => c"the response was corrupted in shared memory",
        LSHM_E_CLOSED => c"the client is closed",
        LSHM_E_OS => c"an OS call failed",
        LSHM_E_SHUTDOWN => c"the worker did not shut down cleanly",
        LSHM_E_ANSWER_TOO_LONG => c"the answer is longer than the client's bound",
        _ => c"unknown status code",
    }
}

fn request_status(e: &RequestError) -> Status {
    match e {
        RequestError::Encode { .. } => LSHM_E_ENCODE,
        RequestError::Timeout { .. } => LSHM_E_TIMEOUT,
        RequestError::WorkerDied { .. } => LSHM_E_WORKER_DIED,
        RequestError::Unauthorized { .. } => LSHM_E_UNAUTHORIZED,
        RequestError::PromptTooLong { .. } => LSHM_E_PROMPT_TOO_LONG,
        RequestError::Engine { .. } => LSHM_E_ENGINE,
        RequestError::BadRequest { .. } => LSHM_E_BAD_REQUEST,
        RequestError::ShuttingDown { .. } => LSHM_E_SHUTTING_DOWN,
        RequestError::UnknownStatus { .. } => LSHM_E_UNKNOWN_STATUS,
        RequestError::RestartFailed { .. } => LSHM_E_RESTART_FAILED,
        RequestError::Corrupt => LSHM_E_CORRUPT,
        RequestError::Closed { .. } => LSHM_E_CLOSED,
        RequestError::Os { .. } => LSHM_E_OS,
        RequestError::AnswerTooLong { .. } => LSHM_E_ANSWER_TOO_LONG,
    }
}

fn spawn_status(e: &SpawnError) -> Status {
    match e {
        SpawnError::NoWorker | SpawnError::WorkerNotFound { .. } | SpawnError::NotExecutable { .. } => {
            LSHM_E_WORKER_NOT_FOUND
        }
        SpawnError::WorkerExited { .. }
        | SpawnError::StartupTimeout { .. }
        | SpawnError::Objects(_)
        | SpawnError::Io(_) => LSHM_E_STARTUP,
    }
}

/// A failed call: its status and the message for `out_error`.
struct Failure {
    status: Status,
    message: String,
}

impl Failure {
    fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn null(what: &str) -> Self {
        Self::new(LSHM_E_INVALID_ARGUMENT, format!("{what} is NULL"))
    }
}

/// An opaque client handle (`lshm_client` in C): a [`Client`] behind a mutex, so calls on one
/// handle from several threads run one after the other, and its [`Canceller`] outside it, so a
/// cancel never waits for the request it cancels.
pub struct LshmClient {
    client: Mutex<Client>,
    canceller: Canceller,
    /// Fixed for the handle's life (the FFI never restarts a worker), so reading it does not
    /// wait for a request in flight.
    worker_pid: Option<u32>,
}

impl LshmClient {
    fn lock(&self) -> std::sync::MutexGuard<'_, Client> {
        // A poisoned lock means a panic inside an earlier call (reported as LSHM_E_PANIC);
        // the client itself stays consistent enough to answer or report `Closed`.
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An opaque cancel handle (`lshm_canceller` in C), usable from any thread.
pub struct LshmCanceller(Canceller);

/// The result of a request (`lshm_response` in C). `text` is owned by the caller once the
/// call returns: release it with [`lshm_response_free`] or [`lshm_string_free`].
#[repr(C)]
#[derive(Debug)]
pub struct LshmResponse {
    /// The answer, UTF-8 and NUL-terminated (`malloc`ed); NULL after a failed call.
    pub text: *mut c_char,
    /// Length of `text` in bytes, without the terminating NUL.
    pub text_len: usize,
    /// Why the answer ended: one of the `LSHM_FINISH_*` values.
    pub finish: u32,
    /// 1 if the answer was cut at the response limit, else 0.
    pub truncated: u32,
    /// The request's sequence number (0 with a seed-mode worker).
    pub seq: u64,
    /// Tokens in the evaluated prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Time spent on the prompt, in microseconds.
    pub prompt_time_us: u64,
    /// Time spent generating, in microseconds.
    pub generation_time_us: u64,
}

impl LshmResponse {
    const EMPTY: LshmResponse = LshmResponse {
        text: std::ptr::null_mut(),
        text_len: 0,
        finish: LSHM_FINISH_UNKNOWN,
        truncated: 0,
        seq: 0,
        prompt_tokens: 0,
        generated_tokens: 0,
        prompt_time_us: 0,
        generation_time_us: 0,
    };
}

/// The C callback of [`lshm_stream`]: `chunk` points at `len` bytes of UTF-8 followed by a
/// NUL, valid only during the call.
pub type ChunkCallback = unsafe extern "C" fn(chunk: *const c_char, len: usize, user_data: *mut c_void);

// --- strings ------------------------------------------------------------------------------

/// Copies `bytes` into a new `malloc`ed, NUL-terminated buffer (interior NULs are kept; the
/// length is returned separately where it matters). `None` when `malloc` fails.
fn malloc_string(bytes: &[u8]) -> Option<*mut c_char> {
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
unsafe fn input_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
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
unsafe fn put<T>(out: *mut T, value: T) {
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
unsafe fn run(out_error: *mut *mut c_char, body: impl FnOnce() -> Result<(), Failure>) -> Status {
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

// --- finding the worker --------------------------------------------------------------------

/// The default worker: `$LLAMA_SHM_WORKER`, else `llama-shm-worker` next to this library
/// (`target/release` holds both), else next to the executable.
fn default_worker() -> Option<PathBuf> {
    let lib = library_dir();
    llama_shm::internals::os::locate::worker_binary(&lib.iter().map(PathBuf::as_path).collect::<Vec<_>>())
}

/// The directory of the file this code was loaded from (the `.so`, or the executable it is
/// linked into), from the mapping of one of its functions in `/proc/self/maps`.
fn library_dir() -> Option<PathBuf> {
    let addr = lshm_version as *const () as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (lo, hi) = fields.next()?.split_once('-')?;
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).ok()?,
            usize::from_str_radix(hi, 16).ok()?,
        );
        let path = fields.nth(4)?;
        ((lo..hi).contains(&addr) && path.starts_with('/'))
            .then(|| PathBuf::from(path).parent().map(PathBuf::from))
            .flatten()
    })
}

fn options(deadline_ms: u64, max_tokens: u32) -> RequestOptions {
    RequestOptions {
        deadline: (deadline_ms > 0).then(|| Duration::from_millis(deadline_ms)),
        max_tokens: (max_tokens > 0).then_some(max_tokens),
    }
}

fn fill_response(r: &Response) -> Result<LshmResponse, Failure> {
    let text = malloc_string(r.text.as_bytes())
        .ok_or_else(|| Failure::new(LSHM_E_NO_MEMORY, "out of memory copying the answer"))?;
    Ok(LshmResponse {
        text,
        text_len: r.text.len(),
        finish: r.finish.to_u32(),
        truncated: u32::from(r.truncated),
        seq: r.seq,
        prompt_tokens: r.usage.prompt_tokens,
        generated_tokens: r.usage.generated_tokens,
        prompt_time_us: u64::try_from(r.usage.prompt_time.as_micros()).unwrap_or(u64::MAX),
        generation_time_us: u64::try_from(r.usage.generation_time.as_micros()).unwrap_or(u64::MAX),
    })
}

// --- the entry points ---------------------------------------------------------------------

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

/// Spawns a worker and connects to it; waits until it is ready (start-up timeout 120 s).
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
    let body = || {
        if out_client.is_null() {
            return Err(Failure::null("out_client"));
        }
        // SAFETY: not NULL and writable per the contract.
        unsafe { put(out_client, std::ptr::null_mut()) };
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
        let mut builder = Client::builder().worker(path).args(args);
        if request_timeout_ms > 0 {
            builder = builder.request_timeout(Duration::from_millis(request_timeout_ms));
        }
        let client = builder
            .spawn()
            .map_err(|e| Failure::new(spawn_status(&e), e.to_string()))?;
        let handle = Box::new(LshmClient {
            canceller: client.canceller(),
            worker_pid: client.worker_pid(),
            client: Mutex::new(client),
        });
        // SAFETY: not NULL and writable (checked above).
        unsafe { put(out_client, Box::into_raw(handle)) };
        Ok(())
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, body) }
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
        let pid = client
            .worker_pid
            .ok_or_else(|| Failure::new(LSHM_E_CLOSED, "worker pid unknown"))?;
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

/// Shared body of [`lshm_request`] and [`lshm_stream`].
///
/// # Safety
/// As [`lshm_stream`], with `on_chunk` already checked when streaming.
unsafe fn exchange(
    client: *mut LshmClient,
    user: *const c_char,
    system: *const c_char,
    opts: RequestOptions,
    on_chunk: Option<(ChunkCallback, *mut c_void)>,
    out_response: *mut LshmResponse,
) -> Result<(), Failure> {
    if out_response.is_null() {
        return Err(Failure::null("out_response"));
    }
    // SAFETY: not NULL, writable per the contract; clears it for the failure paths.
    unsafe { put(out_response, LshmResponse::EMPTY) };
    // SAFETY: NULL or a live handle (the contract); the mutex gives exclusive access.
    let handle = unsafe { client.as_ref() }.ok_or_else(|| Failure::null("client"))?;
    // SAFETY: NULL or NUL-terminated strings that live through the call (the contract).
    let (user, system) = unsafe { (input_str(user, "user")?, input_str(system, "system")?) };
    let mut client = handle.lock();
    let result = match on_chunk {
        None => client.request(Prompts { system, user }, &opts),
        Some((callback, user_data)) => {
            let mut buf = Vec::new();
            client.stream(Prompts { system, user }, &opts, |chunk| {
                buf.clear();
                buf.extend_from_slice(chunk.as_bytes());
                buf.push(0);
                // SAFETY: the caller guarantees `callback` is a valid function that does not
                // unwind; `buf` holds `chunk.len()` bytes and a NUL and outlives the call.
                unsafe { callback(buf.as_ptr().cast(), chunk.len(), user_data) };
            })
        }
    };
    drop(client);
    let response = result.map_err(|e| Failure::new(request_status(&e), e.to_string()))?;
    let filled = fill_response(&response)?;
    // SAFETY: not NULL (checked above) and writable per the contract.
    unsafe { put(out_response, filled) };
    Ok(())
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
        // SAFETY: the pointers satisfy `exchange`'s contract (this function's).
        unsafe { exchange(client, user, system, opts, None, out_response) }
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, body) }
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
        let on_chunk = Some((callback, user_data));
        // SAFETY: the pointers and the callback satisfy `exchange`'s contract (this
        // function's).
        unsafe { exchange(client, user, system, opts, on_chunk, out_response) }
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, body) }
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
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`] for NULL; [`LSHM_E_SHUTDOWN`] if the worker had to be killed
/// or exited with a failure status (the message goes to `*out_error` when not NULL).
///
/// # Safety
/// `client` is NULL or a live handle from [`lshm_client_new`] that no other thread is using;
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
    unsafe { run(out_error, body) }
}

/// Frees `client` without reporting: the worker is still shut down (as by
/// [`lshm_client_shutdown`], errors ignored). NULL is a no-op.
///
/// # Safety
/// `client` is NULL or a live handle from [`lshm_client_new`] that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn lshm_client_free(client: *mut LshmClient) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !client.is_null() {
            // SAFETY: a live handle made by `Box::into_raw`, given back exactly once (the
            // contract).
            drop(unsafe { Box::from_raw(client) });
        }
    }));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_its_own_message() {
        let codes: Vec<Status> = (LSHM_OK..=LSHM_E_ANSWER_TOO_LONG).collect();
        let mut seen = std::collections::HashSet::new();
        for code in codes {
            let m = message_of(code).to_str().unwrap();
            assert_ne!(m, "unknown status code", "code {code} has no message");
            assert!(seen.insert(m), "code {code} shares its message {m:?}");
        }
        assert_eq!(message_of(999).to_str().unwrap(), "unknown status code");
        assert_eq!(message_of(-1).to_str().unwrap(), "unknown status code");
    }

    #[test]
    fn finish_values_are_the_wire_values() {
        use llama_shm::Finish;
        assert_eq!(Finish::Unknown.to_u32(), LSHM_FINISH_UNKNOWN);
        assert_eq!(Finish::Stop.to_u32(), LSHM_FINISH_STOP);
        assert_eq!(Finish::Length.to_u32(), LSHM_FINISH_LENGTH);
        assert_eq!(Finish::Cancelled.to_u32(), LSHM_FINISH_CANCELLED);
        assert_eq!(Finish::Deadline.to_u32(), LSHM_FINISH_DEADLINE);
        assert_eq!(Finish::Error.to_u32(), LSHM_FINISH_ERROR);
    }

    /// Every entry point runs its body through `run`: a panic there comes back as
    /// `LSHM_E_PANIC` with its message, and unwinds no further.
    #[test]
    fn a_panic_becomes_a_status_not_an_unwind() {
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: `err` is a live out-pointer.
        let status = unsafe { run(&mut err, || panic!("planted for the test")) };
        assert_eq!(status, LSHM_E_PANIC);
        // SAFETY: `run` set `err` to a NUL-terminated string of ours.
        let msg = unsafe { CStr::from_ptr(err) }.to_str().unwrap().to_owned();
        assert!(msg.contains("planted for the test"), "{msg}");
        // SAFETY: a string returned by the library, freed once.
        unsafe { lshm_string_free(err) };
        // A body that succeeds reports OK and leaves no message.
        // SAFETY: as above.
        assert_eq!(unsafe { run(&mut err, || Ok(())) }, LSHM_OK);
        assert!(err.is_null());
    }

    #[test]
    fn null_arguments_are_invalid_argument_not_a_crash() {
        let mut err: *mut c_char = std::ptr::null_mut();
        let mut resp = LshmResponse::EMPTY;
        // SAFETY: NULL handles and strings are what is being tested; the out-pointers are live.
        unsafe {
            let s = lshm_request(
                std::ptr::null_mut(),
                c"u".as_ptr(),
                c"s".as_ptr(),
                0,
                0,
                &mut resp,
                &mut err,
            );
            assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
            assert!(!err.is_null());
            assert!(CStr::from_ptr(err).to_str().unwrap().contains("client"));
            lshm_string_free(err);
            assert!(resp.text.is_null());
            let mut out: *mut LshmClient = std::ptr::null_mut();
            let s = lshm_client_new(
                std::ptr::null(),
                std::ptr::null(),
                2,
                0,
                &mut out,
                std::ptr::null_mut(),
            );
            assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
            assert!(out.is_null());
            assert_eq!(
                lshm_cancel(std::ptr::null(), std::ptr::null_mut()),
                LSHM_E_INVALID_ARGUMENT
            );
            assert_eq!(
                lshm_client_shutdown(std::ptr::null_mut(), std::ptr::null_mut()),
                LSHM_E_INVALID_ARGUMENT
            );
            lshm_client_free(std::ptr::null_mut());
            lshm_canceller_free(std::ptr::null_mut());
            lshm_string_free(std::ptr::null_mut());
            lshm_response_free(std::ptr::null_mut());
        }
    }

    #[test]
    fn invalid_utf8_arguments_are_rejected_before_spawning() {
        let bad = [0xffu8, 0xfe, 0];
        let args = [bad.as_ptr().cast::<c_char>()];
        let mut out: *mut LshmClient = std::ptr::null_mut();
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: `args` holds one NUL-terminated (non-UTF-8) string; the out-pointers are live.
        let s = unsafe { lshm_client_new(c"/nonexistent".as_ptr(), args.as_ptr(), 1, 0, &mut out, &mut err) };
        assert_eq!(s, LSHM_E_INVALID_UTF8);
        assert!(out.is_null());
        // SAFETY: `err` was set by the call to a string of ours.
        unsafe {
            assert!(CStr::from_ptr(err).to_str().unwrap().contains("argv[0]"));
            lshm_string_free(err);
        }
    }

    #[test]
    fn a_missing_worker_binary_is_worker_not_found() {
        let mut out: *mut LshmClient = std::ptr::null_mut();
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid strings and live out-pointers.
        let s = unsafe {
            lshm_client_new(
                c"/nonexistent/llama-shm-worker".as_ptr(),
                std::ptr::null(),
                0,
                0,
                &mut out,
                &mut err,
            )
        };
        assert_eq!(s, LSHM_E_WORKER_NOT_FOUND);
        assert!(out.is_null());
        // SAFETY: `err` was set by the call to a string of ours.
        unsafe {
            let m = CStr::from_ptr(err).to_str().unwrap().to_owned();
            lshm_string_free(err);
            assert!(m.contains("/nonexistent/llama-shm-worker"), "{m}");
        }
    }

    #[test]
    fn malloc_string_keeps_the_bytes_and_adds_a_nul() {
        let p = malloc_string("é\u{0}x".as_bytes()).unwrap();
        // SAFETY: `p` holds 4 bytes and a NUL (just written).
        let got = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), 5) }.to_vec();
        // SAFETY: `p` is ours and freed once.
        unsafe { lshm_string_free(p) };
        assert_eq!(got, [0xc3, 0xa9, 0, b'x', 0]);
    }
}
