//! Conversations and per-request options (ABI 5): [`lshm_chat`] and [`lshm_chat_stream`] send
//! an array of messages through the worker's request area; [`lshm_request_with`] and
//! [`lshm_stream_with`] send the two prompts with the same [`LshmRequestOptions`] (a JSON
//! schema or grammar, a seed); [`lshm_count_conversation_tokens`] and [`lshm_count_tokens`]
//! measure before sending. What the old response struct has no room for (the messages a
//! conversation lost to `drop_oldest`) comes back in an optional, size-checked
//! [`LshmResponseExtras`], so `lshm_response` keeps its layout.
//!
//! ```text
//!  lshm_message[n] ─┐  lshm_request_options (NULL: none) ─┐
//!                   └─► lshm_chat / lshm_chat_stream ◄────┘
//!                         ├─► lshm_response        (text, finish, usage: as lshm_request)
//!                         └─► lshm_response_extras (NULL: not wanted; dropped_messages)
//! ```
//!
//! Every request shares one body, [`exchange`], with [`lshm_request`](crate::lshm_request)
//! and [`lshm_stream`](crate::lshm_stream): one place clears the out-parameters, takes the
//! client's lock, forwards the chunks to C and fills the response.

use std::ffi::{c_char, c_void};
use std::sync::atomic::Ordering;

use llama_shm::{Client, RequestError, RequestOptions};

use crate::boundary::*;
use crate::handles::*;
use crate::status::*;

use crate::request_args::*;

/// Runs `f` on the client at `client`, under its lock, and records the worker's pid after it
/// (a restart policy may have replaced the worker).
///
/// # Safety
/// `client` is NULL or a live handle not being shut down or freed by another thread.
pub(crate) unsafe fn with_client<T>(
    client: *mut LshmClient,
    f: impl FnOnce(&mut Client) -> Result<T, RequestError>,
) -> Result<T, Failure> {
    // SAFETY: NULL or a live handle (the contract); the mutex gives exclusive access.
    let handle = unsafe { client.as_ref() }.ok_or_else(|| Failure::null("client"))?;
    let mut client = handle.lock();
    let result = f(&mut client);
    handle
        .worker_pid
        .store(client.worker_pid().unwrap_or(0), Ordering::Relaxed);
    drop(client);
    result.map_err(|e| Failure::new(request_status(&e), e.to_string()))
}

/// The one body of every request that answers with text: checks and clears the
/// out-parameters, reads the request with `read` (after the client is known to be there),
/// sends it, forwarding chunks to `on_chunk` when streaming, and fills the response and the
/// extras.
///
/// # Safety
/// `client` is NULL or a live handle not being shut down or freed by another thread;
/// `out_response` is NULL or writable; `out_extras` is NULL or a writable
/// `lshm_response_extras` of the caller's ABI; `on_chunk`'s function is valid, returns
/// normally and does not call into this client.
pub(crate) unsafe fn exchange<'a>(
    client: *mut LshmClient,
    read: impl FnOnce() -> Result<(Body<'a>, RequestOptions), Failure>,
    on_chunk: Option<(ChunkCallback, *mut c_void)>,
    out_response: *mut LshmResponse,
    out_extras: *mut LshmResponseExtras,
) -> Result<(), Failure> {
    if out_response.is_null() {
        return Err(Failure::null("out_response"));
    }
    // SAFETY: not NULL, writable per the contract; clears it for the failure paths.
    unsafe { put(out_response, LshmResponse::EMPTY) };
    // SAFETY: NULL or writable, of the caller's ABI (the contract).
    unsafe { clear_extras(out_extras) }?;
    if client.is_null() {
        return Err(Failure::null("client"));
    }
    let (body, opts) = read()?;
    let mut buf = Vec::new();
    let mut forward = |chunk: &str| {
        if let Some((callback, user_data)) = on_chunk {
            buf.clear();
            buf.extend_from_slice(chunk.as_bytes());
            buf.push(0);
            // SAFETY: the caller guarantees `callback` is a valid function that does not
            // unwind; `buf` holds `chunk.len()` bytes and a NUL and outlives the call.
            unsafe { callback(buf.as_ptr().cast(), chunk.len(), user_data) };
        }
    };
    let streaming = on_chunk.is_some();
    // SAFETY: `client` is not NULL, and live and not shared with a shutdown (the contract).
    let response = unsafe {
        with_client(client, |c| match body {
            Body::Prompts(p) if streaming => c.stream(p, &opts, &mut forward),
            Body::Prompts(p) => c.request(p, &opts),
            Body::Chat(m) if streaming => c.chat_stream(&m, &opts, &mut forward),
            Body::Chat(m) => c.chat(&m, &opts),
        })
    }?;
    let filled = fill_response(&response)?;
    // SAFETY: not NULL (checked above) and writable per the contract.
    unsafe { put(out_response, filled) };
    if !out_extras.is_null() {
        // SAFETY: checked by `clear_extras`: of this library's size, writable.
        unsafe { out_extras.write_unaligned(extras_of(Some(&response))) };
    }
    Ok(())
}

/// [`lshm_request`](crate::lshm_request) with [`LshmRequestOptions`] (NULL: none): a JSON
/// schema or grammar the answer must match (the two prompts then go to the worker as a
/// conversation of a system and a user message, through its request area), a seed, and the
/// budget. `out_extras` (NULL: not wanted; else its `struct_size` set by the caller) receives
/// what `lshm_response` has no room for.
///
/// # Errors
/// As [`lshm_request`](crate::lshm_request); also [`LSHM_E_INVALID_ARGUMENT`] for options or
/// extras of another `struct_size`, a `drop_oldest` other than 0 or 1, or both a schema and a
/// grammar; [`LSHM_E_INVALID_CONSTRAINT`] for a schema or grammar the worker cannot compile
/// (nothing was generated); [`LSHM_E_UNSUPPORTED`] from a worker or engine that cannot honour
/// the options (a seed-era worker, an engine without constraints).
///
/// # Safety
/// As [`lshm_request`](crate::lshm_request); `options` is NULL or a readable
/// `lshm_request_options` whose strings are NULL or NUL-terminated; `out_extras` is NULL or a
/// writable `lshm_response_extras`.
#[no_mangle]
pub unsafe extern "C" fn lshm_request_with(
    client: *mut LshmClient,
    user: *const c_char,
    system: *const c_char,
    options: *const LshmRequestOptions,
    out_response: *mut LshmResponse,
    out_extras: *mut LshmResponseExtras,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        // SAFETY: the strings and options satisfy the readers' contracts (this function's).
        let read = || unsafe { Ok((read_prompts(user, system)?, read_request_options(options)?)) };
        // SAFETY: the pointers satisfy `exchange`'s contract (this function's).
        unsafe { exchange(client, read, None, out_response, out_extras) }
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}

/// [`lshm_request_with`] that also hands the answer to `on_chunk` piece by piece, as
/// [`lshm_stream`](crate::lshm_stream) does.
///
/// # Errors
/// As [`lshm_request_with`]; a NULL `on_chunk` is [`LSHM_E_INVALID_ARGUMENT`].
///
/// # Safety
/// As [`lshm_request_with`] and [`lshm_stream`](crate::lshm_stream).
#[allow(clippy::too_many_arguments)]
#[no_mangle]
pub unsafe extern "C" fn lshm_stream_with(
    client: *mut LshmClient,
    user: *const c_char,
    system: *const c_char,
    options: *const LshmRequestOptions,
    on_chunk: Option<ChunkCallback>,
    user_data: *mut c_void,
    out_response: *mut LshmResponse,
    out_extras: *mut LshmResponseExtras,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        // SAFETY: the strings and options satisfy the readers' contracts (this function's).
        let read = || unsafe { Ok((read_prompts(user, system)?, read_request_options(options)?)) };
        // SAFETY: the pointers satisfy `exchange`'s contract (this function's).
        unsafe { exchange_streaming(client, read, on_chunk, user_data, out_response, out_extras) }
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}

/// [`exchange`] for the streaming calls: a NULL `on_chunk` fails, after clearing the
/// out-parameters.
///
/// # Safety
/// As [`exchange`].
unsafe fn exchange_streaming<'a>(
    client: *mut LshmClient,
    read: impl FnOnce() -> Result<(Body<'a>, RequestOptions), Failure>,
    on_chunk: Option<ChunkCallback>,
    user_data: *mut c_void,
    out_response: *mut LshmResponse,
    out_extras: *mut LshmResponseExtras,
) -> Result<(), Failure> {
    match on_chunk {
        // SAFETY: per this function's contract.
        Some(callback) => unsafe {
            exchange(
                client,
                read,
                Some((callback, user_data)),
                out_response,
                out_extras,
            )
        },
        None => {
            if out_response.is_null() {
                return Err(Failure::null("out_response"));
            }
            // SAFETY: not NULL, writable per the contract.
            unsafe { put(out_response, LshmResponse::EMPTY) };
            // SAFETY: NULL or writable, of the caller's ABI (the contract).
            unsafe { clear_extras(out_extras) }?;
            Err(Failure::null("on_chunk"))
        }
    }
}

/// Answers the conversation of `n_messages` messages at `messages` (system, user and
/// assistant messages, rendered with the model's chat template; as many turns as the model's
/// context and the 1 MiB request area hold), with `options` (NULL: none). On success
/// `*out_response` holds the answer (its `text` is the caller's to free) and `*out_extras`
/// (when not NULL; its `struct_size` set by the caller) how many messages `drop_oldest` cut.
/// A cancelled request succeeds, with `finish == LSHM_FINISH_CANCELLED` and the partial answer.
///
/// # Errors
/// As [`lshm_request_with`]; also [`LSHM_E_INVALID_ARGUMENT`] for a NULL `messages` with
/// `n_messages > 0`, a role that is not an `LSHM_ROLE_*`, a non-zero `reserved`, or a NULL
/// `content` with `content_len > 0`; [`LSHM_E_INVALID_UTF8`] for a content that is not UTF-8;
/// [`LSHM_E_PROMPT_TOO_LONG`] when the conversation does not fit the context (and
/// `drop_oldest` is 0); [`LSHM_E_REQUEST_TOO_LARGE`] when it does not fit the request area
/// (nothing was sent); [`LSHM_E_UNSUPPORTED`] from a worker without a request area.
///
/// # Safety
/// `client` is NULL or a live handle not being shut down or freed by another thread;
/// `messages` is NULL or points at `n_messages` readable `lshm_message`s whose contents are
/// NULL or `content_len` readable bytes; `options` is NULL or a readable
/// `lshm_request_options` whose strings are NULL or NUL-terminated; `out_response` and
/// `out_error` are NULL or writable; `out_extras` is NULL or a writable `lshm_response_extras`.
#[no_mangle]
pub unsafe extern "C" fn lshm_chat(
    client: *mut LshmClient,
    messages: *const LshmMessage,
    n_messages: usize,
    options: *const LshmRequestOptions,
    out_response: *mut LshmResponse,
    out_extras: *mut LshmResponseExtras,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        // SAFETY: the messages and options satisfy the readers' contracts (this function's).
        let read = || unsafe {
            let messages = read_messages(messages, n_messages)?;
            Ok((Body::Chat(messages), read_request_options(options)?))
        };
        // SAFETY: the pointers satisfy `exchange`'s contract (this function's).
        unsafe { exchange(client, read, None, out_response, out_extras) }
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}

/// [`lshm_chat`] that also hands the answer to `on_chunk` piece by piece as the worker
/// generates it, on the calling thread, as [`lshm_stream`](crate::lshm_stream) does.
///
/// # Errors
/// As [`lshm_chat`]; a NULL `on_chunk` is [`LSHM_E_INVALID_ARGUMENT`].
///
/// # Safety
/// As [`lshm_chat`]; `on_chunk` is NULL or a function that returns normally (no C++
/// exception, no `longjmp` out of it) and must not call into this client (a cancel through
/// an `lshm_canceller` is fine).
#[allow(clippy::too_many_arguments)]
#[no_mangle]
pub unsafe extern "C" fn lshm_chat_stream(
    client: *mut LshmClient,
    messages: *const LshmMessage,
    n_messages: usize,
    options: *const LshmRequestOptions,
    on_chunk: Option<ChunkCallback>,
    user_data: *mut c_void,
    out_response: *mut LshmResponse,
    out_extras: *mut LshmResponseExtras,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        // SAFETY: the messages and options satisfy the readers' contracts (this function's).
        let read = || unsafe {
            let messages = read_messages(messages, n_messages)?;
            Ok((Body::Chat(messages), read_request_options(options)?))
        };
        // SAFETY: the pointers and the callback satisfy `exchange`'s contract (this
        // function's).
        unsafe { exchange_streaming(client, read, on_chunk, user_data, out_response, out_extras) }
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}

/// How many tokens `text` is for the worker's model (no chat template, no special tokens),
/// in `*out_tokens` (0 after a failure). The echo engine counts whitespace-separated words.
///
/// # Errors
/// [`LSHM_E_INVALID_ARGUMENT`] (NULL `client`, `text` or `out_tokens`), [`LSHM_E_INVALID_UTF8`],
/// [`LSHM_E_UNSUPPORTED`] (a worker without a request area, an engine that cannot count),
/// [`LSHM_E_REQUEST_TOO_LARGE`], and the request failures of
/// [`lshm_request`](crate::lshm_request).
///
/// # Safety
/// `client` is NULL or a live handle not being shut down or freed by another thread; `text`
/// is NULL or a NUL-terminated string; `out_tokens` and `out_error` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lshm_count_tokens(
    client: *mut LshmClient,
    text: *const c_char,
    out_tokens: *mut u32,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        if out_tokens.is_null() {
            return Err(Failure::null("out_tokens"));
        }
        // SAFETY: not NULL, writable per the contract.
        unsafe { put(out_tokens, 0) };
        if client.is_null() {
            return Err(Failure::null("client"));
        }
        // SAFETY: NULL or NUL-terminated (the contract).
        let text = unsafe { input_str(text, "text") }?;
        // SAFETY: `client` is live and not shared with a shutdown (the contract).
        let n = unsafe { with_client(client, |c| c.count_tokens(text)) }?;
        // SAFETY: not NULL (checked above), writable per the contract.
        unsafe { put(out_tokens, n) };
        Ok(())
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}

/// How many prompt tokens the conversation of `n_messages` messages at `messages` takes
/// through the model's chat template (what [`lshm_chat`] would evaluate), in `*out_tokens`
/// (0 after a failure), so a caller can budget before it sends. The echo engine counts the
/// whitespace-separated words of all contents.
///
/// # Errors
/// As [`lshm_count_tokens`], and the message errors of [`lshm_chat`].
///
/// # Safety
/// `client` as for [`lshm_count_tokens`]; `messages` as for [`lshm_chat`]; `out_tokens` and
/// `out_error` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lshm_count_conversation_tokens(
    client: *mut LshmClient,
    messages: *const LshmMessage,
    n_messages: usize,
    out_tokens: *mut u32,
    out_error: *mut *mut c_char,
) -> Status {
    let body = || {
        if out_tokens.is_null() {
            return Err(Failure::null("out_tokens"));
        }
        // SAFETY: not NULL, writable per the contract.
        unsafe { put(out_tokens, 0) };
        if client.is_null() {
            return Err(Failure::null("client"));
        }
        // SAFETY: NULL or `n_messages` readable messages (the contract).
        let messages = unsafe { read_messages(messages, n_messages) }?;
        // SAFETY: `client` is live and not shared with a shutdown (the contract).
        let n = unsafe { with_client(client, |c| c.count_conversation_tokens(&messages)) }?;
        // SAFETY: not NULL (checked above), writable per the contract.
        unsafe { put(out_tokens, n) };
        Ok(())
    };
    // SAFETY: `out_error` is NULL or writable (this function's contract).
    unsafe { run(out_error, || no_sigpipe(body)) }
}
