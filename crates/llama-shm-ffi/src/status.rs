//! Status codes and finish values of the C ABI, their messages, and the mapping from the
//! library's errors.

use std::ffi::CStr;

use llama_shm::{RequestError, SpawnError};

/// The ABI this library implements: a frontend built against another value refuses the
/// library ([`lshm_abi_version`](crate::lshm_abi_version) returns it). 4 added
/// [`lshm_client_attach`](crate::lshm_client_attach) and [`LSHM_E_ATTACH`]; 5 added
/// conversations ([`lshm_chat`](crate::lshm_chat)), per-request options
/// ([`lshm_request_with`](crate::lshm_request_with)), embeddings
/// ([`lshm_embed`](crate::lshm_embed)), token counts and [`LSHM_E_INVALID_CONSTRAINT`],
/// [`LSHM_E_UNSUPPORTED`], [`LSHM_E_REQUEST_TOO_LARGE`].
pub const LSHM_ABI_VERSION: u32 = 5;

/// [`LshmOptions::prompt_policy`](crate::LshmOptions): cut a prompt that does not fit on a
/// character boundary (and at a NUL).
pub const LSHM_POLICY_TRUNCATE: u32 = 0;
/// [`LshmOptions::prompt_policy`](crate::LshmOptions): refuse a prompt that does not fit whole
/// or holds a NUL ([`LSHM_E_ENCODE`]).
pub const LSHM_POLICY_STRICT: u32 = 1;

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
/// Every slot of the shared worker is busy and its admission queue is full: nothing was sent.
pub const LSHM_E_BUSY: Status = 22;
/// [`lshm_client_attach`](crate::lshm_client_attach) found no usable worker under the prefix:
/// its objects are missing (no worker serves it), untrusted (another owner, or a mode wider
/// than 0600) or malformed.
pub const LSHM_E_ATTACH: Status = 23;
/// The request's JSON schema or grammar cannot be compiled: nothing was generated.
pub const LSHM_E_INVALID_CONSTRAINT: Status = 24;
/// The worker cannot do what the request asks (no request area, no embeddings…).
pub const LSHM_E_UNSUPPORTED: Status = 25;
/// The request does not fit the worker's request area: nothing was sent.
pub const LSHM_E_REQUEST_TOO_LARGE: Status = 26;

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
pub(crate) fn message_of(code: Status) -> &'static CStr {
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
        LSHM_E_BUSY => c"the worker is busy: every slot is taken and its queue is full",
        LSHM_E_ATTACH => {
            c"no usable worker under that prefix: its objects are missing, untrusted or malformed"
        }
        LSHM_E_INVALID_CONSTRAINT => c"the JSON schema or grammar cannot be compiled; nothing was generated",
        LSHM_E_UNSUPPORTED => c"the worker cannot do what the request asks",
        LSHM_E_REQUEST_TOO_LARGE => c"the request does not fit the worker's request area",
        _ => c"unknown status code",
    }
}

pub(crate) fn request_status(e: &RequestError) -> Status {
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
        RequestError::Busy { .. } => LSHM_E_BUSY,
        RequestError::InvalidConstraint { .. } => LSHM_E_INVALID_CONSTRAINT,
        RequestError::Unsupported { .. } => LSHM_E_UNSUPPORTED,
        RequestError::RequestTooLarge { .. } => LSHM_E_REQUEST_TOO_LARGE,
    }
}

pub(crate) fn spawn_status(e: &SpawnError) -> Status {
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
pub(crate) struct Failure {
    pub(crate) status: Status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn null(what: &str) -> Self {
        Self::new(LSHM_E_INVALID_ARGUMENT, format!("{what} is NULL"))
    }
}
