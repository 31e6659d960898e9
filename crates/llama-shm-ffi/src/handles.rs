//! The handles C holds (client, canceller) and the response struct it reads.

use std::ffi::{c_char, c_void};
use std::sync::Mutex;
use std::time::Duration;

use llama_shm::{Canceller, RequestOptions};
use llama_shm::{Client, Response};

use crate::boundary::*;
use crate::status::*;

/// An opaque client handle (`lshm_client` in C): a [`Client`] behind a mutex, so calls on one
/// handle from several threads run one after the other, and its [`Canceller`] outside it, so a
/// cancel never waits for the request it cancels.
pub struct LshmClient {
    pub(crate) client: Mutex<Client>,
    pub(crate) canceller: Canceller,
    /// Fixed for the handle's life (the FFI never restarts a worker), so reading it does not
    /// wait for a request in flight.
    pub(crate) worker_pid: Option<u32>,
}

impl LshmClient {
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
    };
}

/// The C callback of [`lshm_stream`](crate::lshm_stream): `chunk` points at `len` bytes of UTF-8 followed by a
/// NUL, valid only during the call.
pub type ChunkCallback = unsafe extern "C" fn(chunk: *const c_char, len: usize, user_data: *mut c_void);

pub(crate) fn options(deadline_ms: u64, max_tokens: u32) -> RequestOptions {
    RequestOptions {
        deadline: (deadline_ms > 0).then(|| Duration::from_millis(deadline_ms)),
        max_tokens: (max_tokens > 0).then_some(max_tokens),
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
    })
}
