//! Status codes and finish reasons as they travel in the extension page.

/// The outcome of one request, as the worker reports it in [`super::layout::Word32::Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// The response field holds the answer.
    Ok,
    /// The request itself was malformed (e.g. a shutdown byte other than 0 or 1).
    BadRequest,
    /// The request did not carry the worker's auth token.
    Unauthorized,
    /// The prompt does not fit in the model's context (args: tokens, context size).
    PromptTooLong,
    /// The engine failed (a decode error, say); the message says how.
    EngineFailed,
    /// The worker is shutting down and did not answer.
    ShuttingDown,
    /// The request's JSON schema or grammar cannot be compiled: nothing was generated.
    InvalidConstraint,
    /// The worker's engine cannot do what the request asks (embeddings from an engine
    /// without them, say); the message says what.
    Unsupported,
    /// A code this build does not know (a newer worker).
    Unknown(u32),
}

impl StatusCode {
    /// The wire value.
    pub const fn to_u32(self) -> u32 {
        match self {
            StatusCode::Ok => 0,
            StatusCode::BadRequest => 1,
            StatusCode::Unauthorized => 2,
            StatusCode::PromptTooLong => 3,
            StatusCode::EngineFailed => 4,
            StatusCode::ShuttingDown => 5,
            StatusCode::InvalidConstraint => 6,
            StatusCode::Unsupported => 7,
            StatusCode::Unknown(v) => v,
        }
    }

    /// Decodes a wire value; unknown values are kept, never rejected.
    pub const fn from_u32(v: u32) -> Self {
        match v {
            0 => StatusCode::Ok,
            1 => StatusCode::BadRequest,
            2 => StatusCode::Unauthorized,
            3 => StatusCode::PromptTooLong,
            4 => StatusCode::EngineFailed,
            5 => StatusCode::ShuttingDown,
            6 => StatusCode::InvalidConstraint,
            7 => StatusCode::Unsupported,
            v => StatusCode::Unknown(v),
        }
    }
}

/// Why an answer ended, in [`super::layout::Word32::FinishReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Finish {
    /// Not reported (seed mode, or an error).
    Unknown,
    /// The engine finished its answer.
    Stop,
    /// A length limit ended the answer.
    Length,
    /// The request was cancelled (by the client, or the worker is shutting down).
    Cancelled,
    /// The request's deadline passed.
    Deadline,
    /// The engine failed part-way (the status says how).
    Error,
}

impl Finish {
    /// The wire value.
    pub const fn to_u32(self) -> u32 {
        match self {
            Finish::Unknown => 0,
            Finish::Stop => 1,
            Finish::Length => 2,
            Finish::Cancelled => 3,
            Finish::Deadline => 4,
            Finish::Error => 5,
        }
    }

    /// Decodes a wire value (anything unknown is `Unknown`).
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Finish::Stop,
            2 => Finish::Length,
            3 => Finish::Cancelled,
            4 => Finish::Deadline,
            5 => Finish::Error,
            _ => Finish::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for v in 0..32 {
            assert_eq!(StatusCode::from_u32(v).to_u32(), v);
        }
        assert_eq!(StatusCode::from_u32(u32::MAX), StatusCode::Unknown(u32::MAX));
    }

    #[test]
    fn finish_reasons_round_trip() {
        for f in [
            Finish::Unknown,
            Finish::Stop,
            Finish::Length,
            Finish::Cancelled,
            Finish::Deadline,
            Finish::Error,
        ] {
            assert_eq!(Finish::from_u32(f.to_u32()), f);
        }
        assert_eq!(Finish::from_u32(77), Finish::Unknown);
    }
}
