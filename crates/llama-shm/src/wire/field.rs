//! The byte fields of the wire: where each lives in the object ([`Span`]), by name
//! ([`Field`]).

use std::mem::offset_of;

use super::layout::{
    ExtensionPage, SeedRegion, AREA_LEN, AREA_OFFSET, ERROR_MESSAGE_LEN, EXT_MAGIC, EXT_OFFSET, RESPONSE_LEN,
    SYSTEM_PROMPT_LEN, TOKEN_LEN, USER_PROMPT_LEN,
};

/// A byte range inside the object: where one wire field lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset from the start of the object.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// A byte field of the wire (prompts, response, shutdown flag, token, error message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `system_prompt[4096]` at 0.
    SystemPrompt,
    /// `user_prompt[4096]` at 4096.
    UserPrompt,
    /// `response[32768]` at 8192.
    Response,
    /// `shutdown_requested` at 40960.
    Shutdown,
    /// The seed streaming service's fields, 40961..40971 (see `wire::seed_stream`): in the gap
    /// after the seed region, so present in every object of [`OBJECT_SIZE`](super::layout::OBJECT_SIZE) bytes and in none
    /// of the seed's own 40961.
    SeedStream,
    /// The extension page's magic.
    Magic,
    /// The extension page's auth token.
    AuthToken,
    /// The extension page's error message.
    ErrorMessage,
    /// The request area ([`AREA_LEN`] bytes at [`AREA_OFFSET`], with
    /// [`FEATURE_REQUEST_AREA`](super::layout::FEATURE_REQUEST_AREA); absent from smaller objects, where it reads as zeros).
    RequestArea,
}

impl Field {
    /// Every field, in declaration order (`Field::ALL[f as usize] == f`: the loom models'
    /// region indexes its cells so), for tests and fuzzers that touch them all.
    pub const ALL: [Field; 9] = [
        Field::SystemPrompt,
        Field::UserPrompt,
        Field::Response,
        Field::Shutdown,
        Field::SeedStream,
        Field::Magic,
        Field::AuthToken,
        Field::ErrorMessage,
        Field::RequestArea,
    ];

    /// Where the field lives in the object.
    pub const fn span(self) -> Span {
        match self {
            Field::SystemPrompt => Span {
                offset: offset_of!(SeedRegion, system_prompt),
                len: SYSTEM_PROMPT_LEN,
            },
            Field::UserPrompt => Span {
                offset: offset_of!(SeedRegion, user_prompt),
                len: USER_PROMPT_LEN,
            },
            Field::Response => Span {
                offset: offset_of!(SeedRegion, response),
                len: RESPONSE_LEN,
            },
            Field::Shutdown => Span {
                offset: offset_of!(SeedRegion, shutdown_requested),
                len: 1,
            },
            Field::Magic => Span {
                offset: EXT_OFFSET + offset_of!(ExtensionPage, magic),
                len: EXT_MAGIC.len(),
            },
            Field::AuthToken => Span {
                offset: EXT_OFFSET + offset_of!(ExtensionPage, auth_token),
                len: TOKEN_LEN,
            },
            Field::ErrorMessage => Span {
                offset: EXT_OFFSET + offset_of!(ExtensionPage, error_message),
                len: ERROR_MESSAGE_LEN,
            },
            Field::RequestArea => Span {
                offset: AREA_OFFSET,
                len: AREA_LEN,
            },
            Field::SeedStream => Span {
                offset: super::seed_stream::STREAM_MODE,
                len: super::seed_stream::END - super::seed_stream::STREAM_MODE,
            },
        }
    }

    /// Whether the field lives in the extension page (absent in seed mode).
    pub const fn is_extension(self) -> bool {
        self.span().offset >= EXT_OFFSET
    }
}

// `ALL` lists the fields in declaration order (what `Field::ALL[f as usize]` relies on).
const _: () = {
    let mut i = 0;
    while i < Field::ALL.len() {
        assert!(
            Field::ALL[i] as usize == i,
            "Field::ALL is not in declaration order"
        );
        i += 1;
    }
};
