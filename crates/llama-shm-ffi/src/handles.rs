//! The handles C holds (client, canceller) and the response struct it reads.

use std::ffi::{c_char, c_void};
use std::sync::atomic::AtomicU32;
use std::sync::Mutex;
use std::time::Duration;

use llama_shm::{Canceller, Client, ClientBuilder, Policy, RequestOptions, Response, RestartPolicy};

use crate::boundary::*;
use crate::status::*;

/// An opaque client handle (`lshm_client` in C): a [`Client`] behind a mutex, so calls on one
/// handle from several threads run one after the other, and its [`Canceller`] outside it, so a
/// cancel never waits for the request it cancels.
pub struct LshmClient {
    pub(crate) client: Mutex<Client>,
    pub(crate) canceller: Canceller,
    /// The worker's pid (0: unknown), kept outside the mutex so reading it does not wait for
    /// a request in flight; updated after each request (a restart policy may have replaced
    /// the worker).
    pub(crate) worker_pid: AtomicU32,
}

impl LshmClient {
    /// Boxes `client` as a handle for C (the caller's to release with
    /// [`lshm_client_shutdown`](crate::lshm_client_shutdown) or
    /// [`lshm_client_free`](crate::lshm_client_free)).
    pub(crate) fn into_raw(client: Client) -> *mut LshmClient {
        Box::into_raw(Box::new(LshmClient {
            canceller: client.canceller(),
            worker_pid: AtomicU32::new(client.worker_pid().unwrap_or(0)),
            client: Mutex::new(client),
        }))
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Client> {
        // A poisoned lock means a panic inside an earlier call (reported as LSHM_E_PANIC);
        // the client itself stays consistent enough to answer or report `Closed`.
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An opaque cancel handle (`lshm_canceller` in C), usable from any thread.
pub struct LshmCanceller(pub(crate) Canceller);

/// The result of a request (`lshm_response` in C). `text` is owned by the caller once the
/// call returns: release it with [`lshm_response_free`](crate::lshm_response_free) or [`lshm_string_free`](crate::lshm_string_free).
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
    /// Prompt tokens whose KV cache was reused (counted in `prompt_tokens`, not evaluated).
    pub cached_tokens: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

impl LshmResponse {
    pub(crate) const EMPTY: LshmResponse = LshmResponse {
        text: std::ptr::null_mut(),
        text_len: 0,
        finish: LSHM_FINISH_UNKNOWN,
        truncated: 0,
        seq: 0,
        prompt_tokens: 0,
        generated_tokens: 0,
        prompt_time_us: 0,
        generation_time_us: 0,
        cached_tokens: 0,
        reserved: 0,
    };
}

/// How a client is started and bounded (`lshm_options` in C). Start from
/// [`lshm_options_default`](crate::lshm_options_default) and change what you need; a zero
/// field means the library's default.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LshmOptions {
    /// `sizeof(lshm_options)` as the caller was compiled: the library refuses a struct of
    /// another size (another ABI) with `LSHM_E_INVALID_ARGUMENT`.
    pub struct_size: u32,
    /// `LSHM_POLICY_TRUNCATE` (default) or `LSHM_POLICY_STRICT`.
    pub prompt_policy: u32,
    /// Deadline for the worker's start-up in ms; 0 = 120 s.
    pub startup_timeout_ms: u64,
    /// Bound on each request in ms; 0 = 600 s.
    pub request_timeout_ms: u64,
    /// Most bytes one answer may have; 0 = 8 MiB.
    pub max_answer_bytes: u64,
    /// Spawn attempts after the worker died, per outage; 0 = never restart.
    pub restart_max_attempts: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Wait before the second restart attempt of an outage, in ms (doubling).
    pub restart_backoff_ms: u64,
    /// Longest wait between restart attempts, in ms.
    pub restart_max_backoff_ms: u64,
}

/// The C callback of [`lshm_stream`](crate::lshm_stream): `chunk` points at `len` bytes of UTF-8 followed by a
/// NUL, valid only during the call.
pub type ChunkCallback = unsafe extern "C" fn(chunk: *const c_char, len: usize, user_data: *mut c_void);

pub(crate) fn options(deadline_ms: u64, max_tokens: u32) -> RequestOptions {
    RequestOptions {
        deadline: (deadline_ms > 0).then(|| Duration::from_millis(deadline_ms)),
        max_tokens: (max_tokens > 0).then_some(max_tokens),
        ..RequestOptions::default()
    }
}

pub(crate) fn fill_response(r: &Response) -> Result<LshmResponse, Failure> {
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
        cached_tokens: r.usage.cached_tokens,
        reserved: 0,
    })
}

/// Refuses options of another size than this library's (another ABI).
fn check_size(struct_size: u32) -> Result<(), Failure> {
    if struct_size as usize == std::mem::size_of::<LshmOptions>() {
        return Ok(());
    }
    Err(Failure::new(
        LSHM_E_INVALID_ARGUMENT,
        format!(
            "options.struct_size is {struct_size}, this library's lshm_options has {} bytes (ABI {})",
            std::mem::size_of::<LshmOptions>(),
            LSHM_ABI_VERSION
        ),
    ))
}

/// [`builder_with`] the options at `options` (NULL: the defaults). Their `struct_size` is read
/// alone first, so a caller's struct of another size is refused before the rest is read.
///
/// # Safety
/// `options` is NULL or points at a readable `lshm_options` of the caller's ABI (at least its
/// first field, `struct_size`, readable).
pub(crate) unsafe fn builder_from(options: *const LshmOptions) -> Result<ClientBuilder, Failure> {
    if options.is_null() {
        return builder_with(&crate::lshm_options_default());
    }
    // SAFETY: not NULL, and its first field is readable per the contract (`addr_of!` makes
    // no reference to the whole struct; an unaligned read asks nothing of the caller's layout).
    let size = unsafe { std::ptr::addr_of!((*options).struct_size).read_unaligned() };
    check_size(size)?;
    // SAFETY: the caller's struct has this library's size, so all of it is readable; plain
    // data, copied out whole (unaligned: the caller's allocation may be anywhere).
    builder_with(&unsafe { options.read_unaligned() })
}

/// A builder set up from C's options, which are checked first. Every field applies to a
/// spawned client; an attached one ([`lshm_client_attach`](crate::lshm_client_attach)) uses
/// `prompt_policy`, `request_timeout_ms` and `max_answer_bytes` only (it starts no worker and
/// restarts none).
pub(crate) fn builder_with(o: &LshmOptions) -> Result<ClientBuilder, Failure> {
    check_size(o.struct_size)?;
    if o.reserved != 0 {
        return Err(Failure::new(
            LSHM_E_INVALID_ARGUMENT,
            "options.reserved must be 0",
        ));
    }
    let policy = match o.prompt_policy {
        LSHM_POLICY_TRUNCATE => Policy::Truncate,
        LSHM_POLICY_STRICT => Policy::Strict,
        other => {
            return Err(Failure::new(
                LSHM_E_INVALID_ARGUMENT,
                format!(
                    "options.prompt_policy {other} is neither LSHM_POLICY_TRUNCATE nor LSHM_POLICY_STRICT"
                ),
            ))
        }
    };
    let ms = Duration::from_millis;
    let mut b = Client::builder().policy(policy);
    if o.startup_timeout_ms > 0 {
        b = b.startup_timeout(ms(o.startup_timeout_ms));
    }
    if o.request_timeout_ms > 0 {
        b = b.request_timeout(ms(o.request_timeout_ms));
    }
    if o.max_answer_bytes > 0 {
        b = b.max_answer_bytes(o.max_answer_bytes);
    }
    if o.restart_max_attempts > 0 {
        b = b.restart(RestartPolicy {
            max_attempts: o.restart_max_attempts,
            backoff: ms(o.restart_backoff_ms),
            max_backoff: ms(o.restart_max_backoff_ms.max(o.restart_backoff_ms)),
        });
    }
    Ok(b)
}
