//! What travels: a request as the client prepares it and the worker finds it, and a response
//! as the worker gives it and the client reads it.

use std::time::Duration;

use super::area::AreaRequest;
use crate::wire::layout::{Field, RESPONSE_TRUNCATED, TOKEN_LEN};
use crate::wire::status::{Finish, StatusCode};
use crate::wire::text::{self, DecodeFlags, Encoded, Policy};

/// What a request asks of the worker beyond its prompts (extended mode only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestParams {
    /// `REQUEST_*` bits.
    pub flags: u32,
    /// Most tokens to generate, 0 = the worker's limit.
    pub max_tokens: u32,
    /// Generation budget in µs from when the worker takes the request, 0 = none.
    pub deadline_us: u64,
    /// A seed-mode request asked for the seed's streaming service (`stream_mode` 1, see
    /// `wire::seed_stream`): set by [`Channel::worker_take`](super::Channel::worker_take) on a
    /// channel that serves it, never read from the extension page nor hashed.
    pub seed_stream: bool,
    /// `request_kind`: `KIND_PROMPTS` (0), or a request whose records are in the request
    /// area (`KIND_CHAT`, `KIND_EMBED`, `KIND_COUNT`).
    pub kind: u32,
    /// `OPTION_*` bits of an area request.
    pub options: u32,
    /// Sampling seed of this request, 0 = the worker's.
    pub sample_seed: u32,
}

impl RequestParams {
    /// Whether anything beyond what older clients send is set (then the request checksum
    /// covers these words and the request area too; otherwise it is what it always was).
    pub fn extended_words(&self) -> bool {
        self.kind != 0 || self.options != 0 || self.sample_seed != 0
    }
}

/// Resource use of one request, as the worker reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the evaluated prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Time spent on the prompt.
    pub prompt_time: Duration,
    /// Time spent generating.
    pub generation_time: Duration,
    /// Prompt tokens whose KV cache was reused (counted in `prompt_tokens`, not evaluated).
    pub cached_tokens: u32,
}

/// The two prompts of a request, by name, so they cannot be swapped by accident. (The
/// seed's `SendRequest(user, system)` order lives on only in [`Client::send_request`].)
///
/// [`Client::send_request`]: crate::Client::send_request
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prompts<'a> {
    /// The system prompt: who the model is, how to answer (may be empty).
    pub system: &'a str,
    /// The user's message.
    pub user: &'a str,
}

impl<'a> Prompts<'a> {
    /// The most bytes a system prompt carries whole (its field holds one more, the NUL).
    pub const MAX_SYSTEM_BYTES: usize = Field::SystemPrompt.span().len - 1;
    /// The most bytes a user prompt carries whole.
    pub const MAX_USER_BYTES: usize = Field::UserPrompt.span().len - 1;

    /// A user message with no system prompt.
    pub fn user(user: &'a str) -> Self {
        Self { system: "", user }
    }

    /// The same prompts with `system` as the system prompt.
    pub fn with_system(self, system: &'a str) -> Self {
        Self { system, ..self }
    }
}

/// A request, encoded for the fields and ready to write.
#[derive(Debug, Clone, Copy)]
pub struct PreparedRequest<'a> {
    /// What goes into `system_prompt`.
    pub system: Encoded<'a>,
    /// What goes into `user_prompt`.
    pub user: Encoded<'a>,
    /// Sequence number (non-zero) identifying this request's response.
    pub seq: u64,
    /// The worker's auth token, if it requires one.
    pub token: Option<&'a [u8; TOKEN_LEN]>,
    /// The client's pid, for diagnostics.
    pub client_pid: u32,
    /// Streaming, token budget and deadline.
    pub params: RequestParams,
    /// The request area's records (see [`AreaRequest::encode`]); empty for two prompts.
    pub area: &'a [u8],
}

impl<'a> PreparedRequest<'a> {
    /// Encodes both prompts for their fields under `policy`.
    ///
    /// # Errors
    /// [`text::EncodeError`] under [`Policy::Strict`] when a prompt is too long or holds a NUL.
    pub fn encode(prompts: Prompts<'a>, policy: Policy) -> Result<Self, text::EncodeError> {
        Ok(Self {
            system: text::encode(prompts.system, Field::SystemPrompt.span().len, policy)?,
            user: text::encode(prompts.user, Field::UserPrompt.span().len, policy)?,
            seq: 0,
            token: None,
            client_pid: 0,
            params: RequestParams::default(),
            area: &[],
        })
    }
}

/// A response as read by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// The worker's status (always `Ok` in seed mode).
    pub status: StatusCode,
    /// The answer text (empty on error).
    pub text: String,
    /// What decoding the response field noticed (a seed worker's missing NUL, say).
    pub decode: DecodeFlags,
    /// `RESPONSE_*` flags from the worker (0 in seed mode).
    pub flags: u32,
    /// The worker's error message (empty when none).
    pub error: String,
    /// The error's numeric details.
    pub error_args: (u64, u64),
    /// Usage (zero in seed mode).
    pub usage: Usage,
    /// Why the answer ended.
    pub finish: Finish,
    /// Whether the response's checksum matched (always true in seed mode, which has none).
    pub intact: bool,
    /// Messages the worker dropped from the front of the conversation to fit it.
    pub dropped_messages: u32,
    /// What the worker left in the request area (embeddings), empty for others.
    pub result: Vec<u8>,
}

impl RawResponse {
    /// Whether the worker cut the answer at the response limit.
    pub fn truncated(&self) -> bool {
        self.flags & RESPONSE_TRUNCATED != 0
    }
}

/// What the worker found after `prompts_written`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A request; the prompts are in the caller's buffers.
    Request {
        /// Its sequence number (0 for a seed-mode client).
        seq: u64,
        /// What decoding the system prompt noticed.
        system: DecodeFlags,
        /// What decoding the user prompt noticed.
        user: DecodeFlags,
        /// Streaming, token budget and deadline (zeros from a seed-mode client).
        params: RequestParams,
        /// The request area's records, decoded (a request of another kind than two prompts).
        area: Option<AreaRequest>,
    },
    /// The client asked the worker to exit.
    Shutdown,
    /// A request the worker must refuse; it answers with `status` and `message`.
    Refused {
        /// Its sequence number.
        seq: u64,
        /// The status to answer with.
        status: StatusCode,
        /// Why.
        message: String,
        /// The request asked for the seed's streaming service: the refusal ends that stream
        /// (see [`RequestParams::seed_stream`]).
        seed_stream: bool,
    },
}

/// What the worker answers.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// Ok, or the error.
    pub status: StatusCode,
    /// The answer (≤ 32767 bytes, NUL-free; longer text is cut on a char boundary).
    pub text: &'a str,
    /// `RESPONSE_*` flags.
    pub flags: u32,
    /// A short error message (cut to the field).
    pub error: &'a str,
    /// The error's numeric details.
    pub error_args: (u64, u64),
    /// Usage.
    pub usage: Usage,
    /// Why the answer ended.
    pub finish: Finish,
    /// Messages dropped from the front of the conversation to fit it.
    pub dropped_messages: u32,
    /// What goes back in the request area (embeddings); empty for others.
    pub result: &'a [u8],
}

impl Outcome<'_> {
    /// An error outcome with no text (finish [`Finish::Error`]).
    pub fn error(status: StatusCode, message: &str) -> Outcome<'_> {
        Outcome {
            status,
            text: "",
            flags: 0,
            error: message,
            error_args: (0, 0),
            usage: Usage::default(),
            finish: Finish::Error,
            dropped_messages: 0,
            result: &[],
        }
    }
}
