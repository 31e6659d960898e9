//! The client's errors, one enum per operation.

use std::io::{self};
use std::path::PathBuf;
use std::time::Duration;

use crate::objects::ObjectsError;
use crate::os::process::ExitInfo;
use crate::wire::status::StatusCode;
use crate::wire::text::EncodeError;

/// The step of a request (or of start-up) during which something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Starting the worker and waiting for its first `ready`.
    Startup,
    /// Waiting for the turn lock that serialises clients attached to one worker.
    WaitingTurn,
    /// Waiting for `ready` before writing a request.
    WaitingReady,
    /// Waiting for `response_written`.
    WaitingResponse,
    /// Shutting down.
    Shutdown,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Startup => "start-up",
            Phase::WaitingTurn => "waiting for the turn (another client is using the worker)",
            Phase::WaitingReady => "waiting for the worker to be ready",
            Phase::WaitingResponse => "waiting for the response",
            Phase::Shutdown => "shutdown",
        })
    }
}

/// Which prompt an encoding error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptField {
    /// The system prompt.
    System,
    /// The user prompt.
    User,
}

/// Why the worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No worker path was given.
    #[error("no worker binary given (ClientBuilder::worker)")]
    NoWorker,
    /// The worker binary does not exist.
    #[error("worker binary {path} does not exist")]
    WorkerNotFound {
        /// The path.
        path: PathBuf,
    },
    /// The worker binary cannot be executed.
    #[error("worker binary {path} is not executable: {source}")]
    NotExecutable {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The worker exited during start-up.
    #[error("worker {exit} during start-up{}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default(), stderr_suffix(stderr))]
    WorkerExited {
        /// How it ended.
        exit: ExitInfo,
        /// The error it reported, if any.
        message: Option<String>,
        /// The last lines it wrote to stderr.
        stderr: Vec<String>,
    },
    /// The worker did not become ready in time.
    #[error("worker not ready after {waited:?} (start-up timeout); it was killed")]
    StartupTimeout {
        /// How long we waited.
        waited: Duration,
    },
    /// Creating or opening the objects failed.
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    /// Another OS failure (random source, socket, pidfd).
    #[error("start-up failed: {0}")]
    Io(#[from] io::Error),
}

fn stderr_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last stderr: {}", lines.join(" | "))
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A prompt cannot be encoded under [`Policy::Strict`](crate::Policy::Strict) (too long, or an interior NUL).
    #[error("{field:?} prompt rejected: {source}")]
    Encode {
        /// Which prompt.
        field: PromptField,
        /// Why.
        #[source]
        source: EncodeError,
    },
    /// The deadline passed.
    #[error("timed out after {waited:?} {phase}")]
    Timeout {
        /// The step.
        phase: Phase,
        /// How long we waited.
        waited: Duration,
    },
    /// The worker died.
    #[error("worker {exit} while {phase}")]
    WorkerDied {
        /// The step.
        phase: Phase,
        /// How it ended.
        exit: ExitInfo,
    },
    /// The worker refused the request's auth token.
    #[error("worker refused the request: {message}")]
    Unauthorized {
        /// The worker's message.
        message: String,
    },
    /// The prompt (or conversation) does not fit in the model's context with room to answer:
    /// it is `tokens - limit` tokens too long (see [`RequestError::tokens_over`]).
    #[error("prompt is {tokens} tokens, {} over the {limit} the context takes with room to answer", tokens.saturating_sub(*limit))]
    PromptTooLong {
        /// Prompt tokens (the conversation through the chat template).
        tokens: u64,
        /// The most prompt tokens the worker takes.
        limit: u64,
    },
    /// The request's JSON schema or grammar cannot be compiled: nothing was generated.
    #[error("invalid schema or grammar: {message}")]
    InvalidConstraint {
        /// The worker's message.
        message: String,
    },
    /// The worker cannot do what the request asks (a seed-era worker and a conversation, an
    /// engine without embeddings…).
    #[error("not supported by this worker: {message}")]
    Unsupported {
        /// What is missing.
        message: String,
    },
    /// The request's records do not fit the request area: nothing was sent.
    #[error("the request needs {len} bytes; the request area holds {max}")]
    RequestTooLarge {
        /// Bytes it needs.
        len: usize,
        /// Bytes the area holds.
        max: usize,
    },
    /// The worker's engine failed.
    #[error("engine failed: {message}")]
    Engine {
        /// The worker's message.
        message: String,
    },
    /// The worker judged the request malformed.
    #[error("bad request: {message}")]
    BadRequest {
        /// The worker's message.
        message: String,
    },
    /// The worker is shutting down.
    #[error("worker is shutting down: {message}")]
    ShuttingDown {
        /// The worker's message.
        message: String,
    },
    /// A status this build does not know.
    #[error("worker answered with unknown status {status}: {message}")]
    UnknownStatus {
        /// The status.
        status: u32,
        /// The worker's message.
        message: String,
    },
    /// The worker had died and could not be started again within the restart policy.
    #[error("worker could not be restarted after {attempts} attempt(s): {source}")]
    RestartFailed {
        /// Spawn attempts made in this outage.
        attempts: u32,
        /// The last spawn error.
        #[source]
        source: Box<SpawnError>,
    },
    /// Every slot of the shared worker is busy and its admission queue is full (the worker's
    /// `--max-queue`): nothing was sent. Retry later, or start another worker.
    #[error("the worker is busy: every slot is taken and {waiting} of {max} queue places are full")]
    Busy {
        /// Clients waiting in the queue.
        waiting: u32,
        /// Most that may wait.
        max: u32,
    },
    /// The response's checksum did not match: something changed it in shared memory after
    /// the worker wrote it. The request may be retried.
    #[error("response corrupted in shared memory (checksum mismatch)")]
    Corrupt,
    /// The answer grew past the client's bound ([`ClientBuilder::max_answer_bytes`](super::ClientBuilder::max_answer_bytes)): the
    /// request was cancelled, and what arrived before the bound was handed to the stream
    /// callback but is not returned. The client stays usable.
    #[error("answer longer than {limit} bytes (the client's bound); request cancelled")]
    AnswerTooLong {
        /// The bound, in bytes.
        limit: u64,
    },
    /// The client was shut down, or an earlier failure left it unusable.
    #[error("client is closed: {reason}")]
    Closed {
        /// Why.
        reason: ClosedReason,
    },
    /// A semaphore failed.
    #[error("semaphore failure {phase}: {source}")]
    Os {
        /// The step.
        phase: Phase,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl RequestError {
    /// For [`RequestError::PromptTooLong`], by how many tokens the prompt is over what the
    /// worker takes (drop that many tokens of history, or ask for the oldest turns to be
    /// dropped with [`RequestOptions::drop_oldest`](super::RequestOptions::drop_oldest)).
    pub fn tokens_over(&self) -> Option<u64> {
        match self {
            RequestError::PromptTooLong { tokens, limit } => Some(tokens.saturating_sub(*limit)),
            _ => None,
        }
    }
}

/// Why a client could not attach to a running worker.
pub type AttachError = ObjectsError;

/// Why shutdown was not clean.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// The worker did not exit within the bound and was killed.
    #[error("worker did not exit within {waited:?} and was killed")]
    Killed {
        /// How long we waited.
        waited: Duration,
    },
    /// The worker exited with a failure status.
    #[error("worker {exit}")]
    Failed {
        /// How it ended.
        exit: ExitInfo,
    },
    /// Posting the shutdown failed.
    #[error("could not signal shutdown: {0}")]
    Io(#[from] io::Error),
    /// No turn came within half the bound (the worker is busy with another client's request):
    /// nothing was asked of the worker, which is still running.
    #[error("no turn within {waited:?}: the worker is busy and was not asked to shut down")]
    NoTurn {
        /// How long we waited for the turn.
        waited: Duration,
    },
    /// The worker refused the shutdown (a missing or wrong auth token) and is still running.
    #[error("the worker refused the shutdown ({status:?}): {message}")]
    Refused {
        /// The worker's status.
        status: StatusCode,
        /// The worker's message.
        message: String,
    },
    /// The shutdown was asked, but the worker was not seen to exit within the bound.
    #[error("asked the worker to shut down, but it did not exit within {waited:?}")]
    NotConfirmed {
        /// How long we waited.
        waited: Duration,
    },
}

/// Why a client takes no more requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClosedReason {
    /// The worker died (and no restart policy replaces it).
    WorkerDied {
        /// How it ended.
        exit: ExitInfo,
    },
    /// The worker died or timed out during start-up.
    StartupFailed,
    /// A seed-mode request timed out: without sequence numbers its late answer would be
    /// taken for the next request's.
    SeedTimeout,
    /// A seed-mode answer was refused as longer than the client's bound (its remainder
    /// would be taken for the next answer).
    SeedAnswerTooLong,
    /// The worker died and the restart policy's attempts all failed.
    RestartsExhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// Every worker of a pool died and could not be replaced.
    PoolExhausted,
    /// The client was shut down or detached.
    Ended,
}

impl std::fmt::Display for ClosedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClosedReason::WorkerDied { exit } => write!(f, "worker {exit}"),
            ClosedReason::StartupFailed => write!(f, "the worker's start-up failed"),
            ClosedReason::SeedTimeout => {
                write!(
                    f,
                    "a seed-mode request timed out; the late answer would be misread"
                )
            }
            ClosedReason::SeedAnswerTooLong => write!(f, "a seed-mode answer was refused as too long"),
            ClosedReason::RestartsExhausted { attempts } => {
                write!(f, "worker died and {attempts} restart attempt(s) failed")
            }
            ClosedReason::PoolExhausted => {
                write!(f, "every worker of the pool died and could not be replaced")
            }
            ClosedReason::Ended => write!(f, "shut down or detached"),
        }
    }
}
