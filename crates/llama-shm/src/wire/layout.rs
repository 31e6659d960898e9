//! The bytes of the shared-memory object, as `#[repr(C)]` types that prove their own offsets.
//!
//! ```text
//! offset  size   field                       who writes it
//! 0       4096   system_prompt  (C string)   client
//! 4096    4096   user_prompt    (C string)   client
//! 8192    32768  response       (C string)   worker
//! 40960   1      shutdown_requested (u8)     client
//! 40961   4095   gap (never touched; seed-era clients map up to 45000 bytes)
//! 45056   4096   extension page              both (see ExtensionPage)
//! 49152          end of object
//! ```
//! The first 40961 bytes are byte-identical to the seed. A seed-era worker creates only those;
//! [`ObjectKind::classify`] tells the two apart by size and magic.
//!
//! These types describe the wire; nothing maps shared memory *as* them (the peer may change
//! any byte at any time, so the crate copies fields out and validates the copies). They are
//! `Pod`, so tests and fuzzers can build a whole region in private memory.

use bytemuck::{Pod, Zeroable};
use static_assertions::{const_assert, const_assert_eq};
use std::mem::{align_of, offset_of, size_of};

/// Capacity of the system prompt field, NUL included.
pub const SYSTEM_PROMPT_LEN: usize = 4096;
/// Capacity of the user prompt field, NUL included.
pub const USER_PROMPT_LEN: usize = 4096;
/// Capacity of the response field, NUL included.
pub const RESPONSE_LEN: usize = 32768;
/// Size of the seed's region: the three fields and the shutdown byte.
pub const SEED_SIZE: usize = 40961;
/// Where the extension page starts: page-aligned, past every byte seed-era clients map.
pub const EXT_OFFSET: usize = 45056;
/// Size of the extension page.
pub const EXT_SIZE: usize = 4096;
/// Size of the whole object this crate creates.
pub const OBJECT_SIZE: usize = EXT_OFFSET + EXT_SIZE;

/// The seed's region, byte for byte.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SeedRegion {
    /// The system prompt: UTF-8, NUL-terminated, zero-filled.
    pub system_prompt: [u8; SYSTEM_PROMPT_LEN],
    /// The user prompt: UTF-8, NUL-terminated, zero-filled.
    pub user_prompt: [u8; USER_PROMPT_LEN],
    /// The answer: UTF-8, NUL-terminated, zero-filled.
    pub response: [u8; RESPONSE_LEN],
    /// 1 asks the worker to exit. A `u8`, never a Rust `bool`: any byte can arrive.
    pub shutdown_requested: u8,
}

const_assert_eq!(offset_of!(SeedRegion, system_prompt), 0);
const_assert_eq!(offset_of!(SeedRegion, user_prompt), 4096);
const_assert_eq!(offset_of!(SeedRegion, response), 8192);
const_assert_eq!(offset_of!(SeedRegion, shutdown_requested), 40960);
const_assert_eq!(size_of::<SeedRegion>(), SEED_SIZE);
const_assert_eq!(align_of::<SeedRegion>(), 1);

/// Magic at the start of the extension page.
pub const EXT_MAGIC: [u8; 8] = *b"LLSHMEXT";
/// Version of the extension page layout described here.
pub const EXT_VERSION: u32 = 1;
/// Capacity of the error message field, NUL included.
pub const ERROR_MESSAGE_LEN: usize = 256;
/// Size of the auth token.
pub const TOKEN_LEN: usize = 32;

/// Feature bit: the worker refuses requests that do not carry its auth token.
pub const FEATURE_TOKEN_REQUIRED: u32 = 1 << 0;
/// Feature bit: the worker streams answers through the response area used as a ring
/// (`stream_*` words), honours `cancel_seq`, `deadline_us` and `max_tokens`. A worker
/// without it answers in one piece of at most 32 767 bytes.
pub const FEATURE_STREAMING: u32 = 1 << 1;

/// Request flag: publish the answer piece by piece as it is generated (otherwise the worker
/// publishes only when the ring is full or the answer is complete).
pub const REQUEST_STREAM: u32 = 1 << 0;

/// Response flag: the answer was cut at the response limit.
pub const RESPONSE_TRUNCATED: u32 = 1 << 0;
/// Response flag: the worker found the system prompt without NUL, cut mid-char or with
/// invalid UTF-8 (it used a repaired copy).
pub const RESPONSE_SYSTEM_REPAIRED: u32 = 1 << 1;
/// Response flag: as [`RESPONSE_SYSTEM_REPAIRED`], for the user prompt.
pub const RESPONSE_USER_REPAIRED: u32 = 1 << 2;

/// The extension page: what the seed lacks — identity, sequence numbers, status, lengths,
/// usage and an auth token. All integers are native-endian (the peers share one machine).
///
/// Request fields are written by the client before it posts `prompts_written`; response
/// fields by the worker before it posts `response_written`. `request_seq` and
/// `response_seq` are accessed atomically; they order everything else.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ExtensionPage {
    /// [`EXT_MAGIC`], written last by the creator once the page is initialised.
    pub magic: [u8; 8],
    /// [`EXT_VERSION`].
    pub version: u32,
    /// [`EXT_SIZE`]: lets a reader check the page is as large as it thinks.
    pub page_size: u32,
    /// Pid of the process that created the objects (for stale-object detection).
    pub creator_pid: u32,
    /// Pid of the worker serving this region, 0 until it attaches.
    pub worker_pid: u32,
    /// `FEATURE_*` bits, set by the worker.
    pub features: u32,
    /// Reserved, zero.
    pub reserved0: u32,

    /// Sequence number of the request in the fields (client; 0 = a seed-mode request).
    pub request_seq: u64,
    /// Pid of the client that wrote the request.
    pub client_pid: u32,
    /// Reserved request flags, zero.
    pub request_flags: u32,
    /// The auth token of the request.
    pub auth_token: [u8; TOKEN_LEN],

    /// `request_seq` of the request this response answers (worker).
    pub response_seq: u64,
    /// Status of the response: a `StatusCode` value (0 = ok).
    pub status: u32,
    /// Length of the answer in `response`, in bytes, NUL excluded.
    pub response_len: u32,
    /// `RESPONSE_*` bits.
    pub response_flags: u32,
    /// Length of `error_message` in bytes, NUL excluded.
    pub error_len: u32,
    /// First numeric detail of an error (e.g. prompt tokens for "prompt too long").
    pub error_arg0: u64,
    /// Second numeric detail of an error (e.g. context size).
    pub error_arg1: u64,
    /// Usage: tokens in the evaluated prompt.
    pub prompt_tokens: u32,
    /// Usage: tokens generated.
    pub generated_tokens: u32,
    /// Usage: prompt evaluation time, µs.
    pub prompt_us: u64,
    /// Usage: generation time, µs.
    pub generation_us: u64,
    /// Why generation ended (a `FinishReason` value, 0 = unknown).
    pub finish_reason: u32,
    /// A standalone worker's guardian process, which removes the worker's names when the
    /// worker dies by SIGKILL (0: none). A successor does not reclaim the prefix while it
    /// lives.
    pub guardian_pid: u32,
    /// Checksum of the response (see `protocol::response_checksum`): a response the client
    /// reads with another checksum was corrupted in shared memory.
    pub response_checksum: u64,
    /// Checksum of the request (see `protocol::request_checksum`), written by the client.
    pub request_checksum: u64,
    /// Reserved for later fields, zero.
    pub reserved2: [u8; 88],
    /// A short, human-readable error for the last request: UTF-8, NUL-terminated.
    pub error_message: [u8; ERROR_MESSAGE_LEN],
    /// `request_seq` of the request whose answer the ring holds (worker, before any byte).
    pub stream_seq: u64,
    /// Bytes of the answer published so far (worker; release after the bytes).
    pub stream_written: u64,
    /// Bytes of the answer the client has consumed (client; release after reading).
    pub stream_read: u64,
    /// `request_seq` of a request the client wants cancelled (client, any time).
    pub cancel_seq: u64,
    /// Generation budget of the request in µs from when the worker takes it, 0 = none.
    pub deadline_us: u64,
    /// Most tokens the request may generate, 0 = the worker's limit.
    pub max_tokens: u32,
    /// CPU the worker last ran on, plus one (0 = not known yet), updated after each wait:
    /// the adaptive wait spins only on a peer that runs on another CPU.
    pub worker_cpu: u32,
    /// CPU the client last ran on, plus one (0 = not known yet).
    pub client_cpu: u32,
    /// Usage: prompt tokens whose KV cache was reused from the previous request (not
    /// evaluated again).
    pub cached_tokens: u32,
    /// Length of the system prompt's payload in bytes, NUL excluded (extended client): the
    /// worker copies only that much instead of the whole field.
    pub system_len: u32,
    /// Length of the user prompt's payload in bytes, NUL excluded (extended client).
    pub user_len: u32,
    /// Reserved for later fields, zero.
    pub reserved_future: [u8; 3520],
}

const_assert_eq!(offset_of!(ExtensionPage, magic), 0);
const_assert_eq!(offset_of!(ExtensionPage, version), 8);
const_assert_eq!(offset_of!(ExtensionPage, page_size), 12);
const_assert_eq!(offset_of!(ExtensionPage, creator_pid), 16);
const_assert_eq!(offset_of!(ExtensionPage, worker_pid), 20);
const_assert_eq!(offset_of!(ExtensionPage, features), 24);
const_assert_eq!(offset_of!(ExtensionPage, request_seq), 32);
const_assert_eq!(offset_of!(ExtensionPage, client_pid), 40);
const_assert_eq!(offset_of!(ExtensionPage, request_flags), 44);
const_assert_eq!(offset_of!(ExtensionPage, auth_token), 48);
const_assert_eq!(offset_of!(ExtensionPage, response_seq), 80);
const_assert_eq!(offset_of!(ExtensionPage, status), 88);
const_assert_eq!(offset_of!(ExtensionPage, response_len), 92);
const_assert_eq!(offset_of!(ExtensionPage, response_flags), 96);
const_assert_eq!(offset_of!(ExtensionPage, error_len), 100);
const_assert_eq!(offset_of!(ExtensionPage, error_arg0), 104);
const_assert_eq!(offset_of!(ExtensionPage, error_arg1), 112);
const_assert_eq!(offset_of!(ExtensionPage, prompt_tokens), 120);
const_assert_eq!(offset_of!(ExtensionPage, generated_tokens), 124);
const_assert_eq!(offset_of!(ExtensionPage, prompt_us), 128);
const_assert_eq!(offset_of!(ExtensionPage, generation_us), 136);
const_assert_eq!(offset_of!(ExtensionPage, finish_reason), 144);
const_assert_eq!(offset_of!(ExtensionPage, guardian_pid), 148);
const_assert_eq!(offset_of!(ExtensionPage, response_checksum), 152);
const_assert_eq!(offset_of!(ExtensionPage, request_checksum), 160);
const_assert_eq!(offset_of!(ExtensionPage, error_message), 256);
const_assert_eq!(offset_of!(ExtensionPage, stream_seq), 512);
const_assert_eq!(offset_of!(ExtensionPage, stream_written), 520);
const_assert_eq!(offset_of!(ExtensionPage, stream_read), 528);
const_assert_eq!(offset_of!(ExtensionPage, cancel_seq), 536);
const_assert_eq!(offset_of!(ExtensionPage, deadline_us), 544);
const_assert_eq!(offset_of!(ExtensionPage, max_tokens), 552);
const_assert_eq!(offset_of!(ExtensionPage, worker_cpu), 556);
const_assert_eq!(offset_of!(ExtensionPage, client_cpu), 560);
const_assert_eq!(offset_of!(ExtensionPage, system_len), 568);
const_assert_eq!(offset_of!(ExtensionPage, user_len), 572);
const_assert_eq!(offset_of!(ExtensionPage, reserved_future), 576);
const_assert_eq!(size_of::<ExtensionPage>(), EXT_SIZE);
const_assert_eq!(align_of::<ExtensionPage>(), 8);
// Atomically accessed words must be naturally aligned in the mapping.
const_assert_eq!((EXT_OFFSET + offset_of!(ExtensionPage, request_seq)) % 8, 0);
const_assert_eq!((EXT_OFFSET + offset_of!(ExtensionPage, response_seq)) % 8, 0);
const_assert_eq!((EXT_OFFSET + offset_of!(ExtensionPage, stream_seq)) % 8, 0);

/// The whole object this crate creates: the seed region, a gap, the extension page.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Object {
    /// The seed's 40961 bytes.
    pub seed: SeedRegion,
    /// Untouched bytes up to the page boundary.
    pub gap: [u8; EXT_OFFSET - SEED_SIZE],
    /// The extension page.
    pub ext: ExtensionPage,
}

const_assert_eq!(offset_of!(Object, seed), 0);
const_assert_eq!(offset_of!(Object, ext), EXT_OFFSET);
const_assert_eq!(size_of::<Object>(), OBJECT_SIZE);
const_assert_eq!(OBJECT_SIZE, 49152);
const_assert_eq!(EXT_OFFSET % 4096, 0);
// Seed-era clients map at most 45000 bytes: the extension must start past them.
const_assert!(EXT_OFFSET >= 45000);

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
    /// The extension page's magic.
    Magic,
    /// The extension page's auth token.
    AuthToken,
    /// The extension page's error message.
    ErrorMessage,
}

impl Field {
    /// Every field, for tests and fuzzers that touch them all.
    pub const ALL: [Field; 7] = [
        Field::SystemPrompt,
        Field::UserPrompt,
        Field::Response,
        Field::Shutdown,
        Field::Magic,
        Field::AuthToken,
        Field::ErrorMessage,
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
        }
    }

    /// Whether the field lives in the extension page (absent in seed mode).
    pub const fn is_extension(self) -> bool {
        self.span().offset >= EXT_OFFSET
    }
}

/// A 32-bit word of the extension page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Word32 {
    /// [`ExtensionPage::version`].
    Version,
    /// [`ExtensionPage::page_size`].
    PageSize,
    /// [`ExtensionPage::creator_pid`].
    CreatorPid,
    /// [`ExtensionPage::worker_pid`].
    WorkerPid,
    /// [`ExtensionPage::features`].
    Features,
    /// [`ExtensionPage::client_pid`].
    ClientPid,
    /// [`ExtensionPage::request_flags`].
    RequestFlags,
    /// [`ExtensionPage::status`].
    Status,
    /// [`ExtensionPage::response_len`].
    ResponseLen,
    /// [`ExtensionPage::response_flags`].
    ResponseFlags,
    /// [`ExtensionPage::error_len`].
    ErrorLen,
    /// [`ExtensionPage::prompt_tokens`].
    PromptTokens,
    /// [`ExtensionPage::generated_tokens`].
    GeneratedTokens,
    /// [`ExtensionPage::finish_reason`].
    FinishReason,
    /// [`ExtensionPage::max_tokens`].
    MaxTokens,
    /// [`ExtensionPage::worker_cpu`].
    WorkerCpu,
    /// [`ExtensionPage::client_cpu`].
    ClientCpu,
    /// [`ExtensionPage::cached_tokens`].
    CachedTokens,
    /// [`ExtensionPage::system_len`].
    SystemLen,
    /// [`ExtensionPage::user_len`].
    UserLen,
    /// [`ExtensionPage::guardian_pid`].
    GuardianPid,
}

impl Word32 {
    /// Offset of the word from the start of the object (4-byte aligned).
    pub const fn offset(self) -> usize {
        EXT_OFFSET
            + match self {
                Word32::Version => offset_of!(ExtensionPage, version),
                Word32::PageSize => offset_of!(ExtensionPage, page_size),
                Word32::CreatorPid => offset_of!(ExtensionPage, creator_pid),
                Word32::WorkerPid => offset_of!(ExtensionPage, worker_pid),
                Word32::Features => offset_of!(ExtensionPage, features),
                Word32::ClientPid => offset_of!(ExtensionPage, client_pid),
                Word32::RequestFlags => offset_of!(ExtensionPage, request_flags),
                Word32::Status => offset_of!(ExtensionPage, status),
                Word32::ResponseLen => offset_of!(ExtensionPage, response_len),
                Word32::ResponseFlags => offset_of!(ExtensionPage, response_flags),
                Word32::ErrorLen => offset_of!(ExtensionPage, error_len),
                Word32::PromptTokens => offset_of!(ExtensionPage, prompt_tokens),
                Word32::GeneratedTokens => offset_of!(ExtensionPage, generated_tokens),
                Word32::FinishReason => offset_of!(ExtensionPage, finish_reason),
                Word32::MaxTokens => offset_of!(ExtensionPage, max_tokens),
                Word32::WorkerCpu => offset_of!(ExtensionPage, worker_cpu),
                Word32::ClientCpu => offset_of!(ExtensionPage, client_cpu),
                Word32::CachedTokens => offset_of!(ExtensionPage, cached_tokens),
                Word32::SystemLen => offset_of!(ExtensionPage, system_len),
                Word32::UserLen => offset_of!(ExtensionPage, user_len),
                Word32::GuardianPid => offset_of!(ExtensionPage, guardian_pid),
            }
    }
}

/// A 64-bit word of the extension page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Word64 {
    /// [`ExtensionPage::request_seq`].
    RequestSeq,
    /// [`ExtensionPage::response_seq`].
    ResponseSeq,
    /// [`ExtensionPage::error_arg0`].
    ErrorArg0,
    /// [`ExtensionPage::error_arg1`].
    ErrorArg1,
    /// [`ExtensionPage::prompt_us`].
    PromptMicros,
    /// [`ExtensionPage::generation_us`].
    GenerationMicros,
    /// [`ExtensionPage::response_checksum`].
    ResponseChecksum,
    /// [`ExtensionPage::request_checksum`].
    RequestChecksum,
    /// [`ExtensionPage::stream_seq`].
    StreamSeq,
    /// [`ExtensionPage::stream_written`].
    StreamWritten,
    /// [`ExtensionPage::stream_read`].
    StreamRead,
    /// [`ExtensionPage::cancel_seq`].
    CancelSeq,
    /// [`ExtensionPage::deadline_us`].
    DeadlineMicros,
}

impl Word64 {
    /// Offset of the word from the start of the object (8-byte aligned).
    pub const fn offset(self) -> usize {
        EXT_OFFSET
            + match self {
                Word64::RequestSeq => offset_of!(ExtensionPage, request_seq),
                Word64::ResponseSeq => offset_of!(ExtensionPage, response_seq),
                Word64::ErrorArg0 => offset_of!(ExtensionPage, error_arg0),
                Word64::ErrorArg1 => offset_of!(ExtensionPage, error_arg1),
                Word64::PromptMicros => offset_of!(ExtensionPage, prompt_us),
                Word64::GenerationMicros => offset_of!(ExtensionPage, generation_us),
                Word64::ResponseChecksum => offset_of!(ExtensionPage, response_checksum),
                Word64::RequestChecksum => offset_of!(ExtensionPage, request_checksum),
                Word64::StreamSeq => offset_of!(ExtensionPage, stream_seq),
                Word64::StreamWritten => offset_of!(ExtensionPage, stream_written),
                Word64::StreamRead => offset_of!(ExtensionPage, stream_read),
                Word64::CancelSeq => offset_of!(ExtensionPage, cancel_seq),
                Word64::DeadlineMicros => offset_of!(ExtensionPage, deadline_us),
            }
    }
}

/// Which protocol an object speaks, judged from its size and the extension page's magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// The seed's 40961 bytes (or more, without a valid extension page): pure seed mode.
    Seed,
    /// A full object with a valid extension page of a version this crate reads.
    Extended,
}

/// Why an object cannot be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// Smaller than the seed region: mapping it would fault on access.
    #[error("shared memory object is {size} bytes, smaller than the seed layout's {SEED_SIZE}")]
    TooSmall {
        /// Size found.
        size: u64,
    },
    /// The extension magic is present but the version is not one this crate reads.
    #[error("extension page version {found} is not supported (this build reads {EXT_VERSION})")]
    UnsupportedVersion {
        /// Version found.
        found: u32,
    },
}

impl ObjectKind {
    /// Classifies an object of `size` bytes whose extension page (if the object is large
    /// enough to hold one) starts with `magic` and carries `version`.
    ///
    /// # Errors
    /// [`ClassifyError`] when the object is too small for the seed layout or speaks an
    /// unknown extension version.
    pub fn classify(size: u64, magic: Option<[u8; 8]>, version: u32) -> Result<Self, ClassifyError> {
        if size < SEED_SIZE as u64 {
            return Err(ClassifyError::TooSmall { size });
        }
        match magic {
            Some(m) if size >= OBJECT_SIZE as u64 && m == EXT_MAGIC => {
                if version == EXT_VERSION {
                    Ok(ObjectKind::Extended)
                } else {
                    Err(ClassifyError::UnsupportedVersion { found: version })
                }
            }
            _ => Ok(ObjectKind::Seed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_match_the_seed_offsets() {
        assert_eq!(Field::SystemPrompt.span(), Span { offset: 0, len: 4096 });
        assert_eq!(
            Field::UserPrompt.span(),
            Span {
                offset: 4096,
                len: 4096
            }
        );
        assert_eq!(
            Field::Response.span(),
            Span {
                offset: 8192,
                len: 32768
            }
        );
        assert_eq!(
            Field::Shutdown.span(),
            Span {
                offset: 40960,
                len: 1
            }
        );
        assert_eq!(
            Field::AuthToken.span(),
            Span {
                offset: 45056 + 48,
                len: 32
            }
        );
        assert_eq!(
            Field::ErrorMessage.span(),
            Span {
                offset: 45056 + 256,
                len: 256
            }
        );
    }

    #[test]
    fn fields_and_words_do_not_overlap() {
        let mut ranges: Vec<(usize, usize, String)> = Field::ALL
            .iter()
            .map(|f| (f.span().offset, f.span().offset + f.span().len, format!("{f:?}")))
            .collect();
        use Word32 as W;
        for w in [
            W::Version,
            W::PageSize,
            W::CreatorPid,
            W::WorkerPid,
            W::Features,
            W::ClientPid,
            W::RequestFlags,
            W::Status,
            W::ResponseLen,
            W::ResponseFlags,
            W::ErrorLen,
            W::PromptTokens,
            W::GeneratedTokens,
            W::FinishReason,
            W::MaxTokens,
            W::WorkerCpu,
            W::ClientCpu,
            W::CachedTokens,
            W::SystemLen,
            W::UserLen,
            W::GuardianPid,
        ] {
            assert_eq!(w.offset() % 4, 0);
            ranges.push((w.offset(), w.offset() + 4, format!("{w:?}")));
        }
        use Word64 as D;
        for w in [
            D::RequestSeq,
            D::ResponseSeq,
            D::ErrorArg0,
            D::ErrorArg1,
            D::PromptMicros,
            D::GenerationMicros,
            D::ResponseChecksum,
            D::RequestChecksum,
            D::StreamSeq,
            D::StreamWritten,
            D::StreamRead,
            D::CancelSeq,
            D::DeadlineMicros,
        ] {
            assert_eq!(w.offset() % 8, 0);
            ranges.push((w.offset(), w.offset() + 8, format!("{w:?}")));
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{} overlaps {}", pair[0].2, pair[1].2);
        }
        assert!(ranges.last().unwrap().1 <= OBJECT_SIZE);
    }

    #[test]
    fn classify_sizes_and_magic() {
        assert_eq!(
            ObjectKind::classify(40960, None, 0),
            Err(ClassifyError::TooSmall { size: 40960 })
        );
        assert_eq!(ObjectKind::classify(40961, None, 0), Ok(ObjectKind::Seed));
        assert_eq!(ObjectKind::classify(49152, Some([0; 8]), 1), Ok(ObjectKind::Seed));
        assert_eq!(
            ObjectKind::classify(49152, Some(EXT_MAGIC), 1),
            Ok(ObjectKind::Extended)
        );
        assert_eq!(
            ObjectKind::classify(49152, Some(EXT_MAGIC), 9),
            Err(ClassifyError::UnsupportedVersion { found: 9 })
        );
        // Magic present but the object is too short to hold the page: seed mode.
        assert_eq!(
            ObjectKind::classify(45000, Some(EXT_MAGIC), 1),
            Ok(ObjectKind::Seed)
        );
    }
}
