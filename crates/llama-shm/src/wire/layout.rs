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
//! 49152   1 MiB  request area                client, worker (FEATURE_REQUEST_AREA)
//! 1097728        end of object (an object made before the request area ends at 49152)
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
/// Size of an extended object without a request area (the smallest this crate accepts as
/// extended, and what objects made before the request area hold).
pub const OBJECT_SIZE: usize = EXT_OFFSET + EXT_SIZE;
/// Where the request area starts: right after the extension page.
pub const AREA_OFFSET: usize = OBJECT_SIZE;
/// Size of the request area: conversations, schemas, texts to embed, and the embeddings
/// (see [`FEATURE_REQUEST_AREA`]). Pages of it nobody touches take no memory.
pub const AREA_LEN: usize = 1 << 20;
/// Size of the object this crate creates: the seed region, the gap, the extension page and
/// the request area.
pub const AREA_OBJECT_SIZE: usize = AREA_OFFSET + AREA_LEN;

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
/// Feature bit: the worker serves the seed's streaming service (`stream_mode` and the other
/// `wire::seed_stream` fields, `/P_sem_chunk_ready`) to seed-mode clients. Only standalone workers
/// do: the seed's `LocalLLMService` starts one with no arguments.
pub const FEATURE_SEED_STREAMING: u32 = 1 << 2;
/// Feature bit: the worker serves `slot_count` slots at once, batched in one engine: slot 0
/// on this prefix's names (seed-era clients), slot `k` on those of `Prefix::slot(k)`.
pub const FEATURE_SLOTS: u32 = 1 << 3;
/// Feature bit: clients that find every slot busy wait in the admission queue of slot 0's
/// page (`queue_*` words, [`QUEUE_CAPACITY`] entries), first come first served, at most
/// `queue_max` of them; one more gets a typed "busy" error.
pub const FEATURE_QUEUE: u32 = 1 << 4;
/// Feature bit: the object holds the request area ([`AREA_LEN`] bytes at [`AREA_OFFSET`]) and
/// the worker reads requests of other kinds than two prompts from it (`request_kind`):
/// conversations, constrained generation, embeddings, token counts.
pub const FEATURE_REQUEST_AREA: u32 = 1 << 5;
/// Entries of the admission queue: the most clients that can wait at once.
pub const QUEUE_CAPACITY: usize = 256;

/// Request flag: publish the answer piece by piece as it is generated (otherwise the worker
/// publishes only when the ring is full or the answer is complete).
pub const REQUEST_STREAM: u32 = 1 << 0;

/// `request_kind`: the prompts are in the seed's two fields (what every older client means).
pub const KIND_PROMPTS: u32 = 0;
/// `request_kind`: a conversation in the request area, answered through the ring.
pub const KIND_CHAT: u32 = 1;
/// `request_kind`: texts in the request area to embed; the vectors come back in the area.
pub const KIND_EMBED: u32 = 2;
/// `request_kind`: a text or a conversation in the request area to count the tokens of.
pub const KIND_COUNT: u32 = 3;

/// `request_options` bit: a conversation over the context loses its oldest turns instead of
/// failing (the response's `dropped_messages` says how many messages went).
pub const OPTION_DROP_OLDEST: u32 = 1 << 0;
/// `request_options` bit: `sample_seed` holds the request's seed (0 included); without it the
/// worker's own sampler goes on.
pub const OPTION_SEED: u32 = 1 << 1;

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
    /// Why generation ended (a `Finish` wire value, 0 = unknown).
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
    /// Slots of the worker, slot 0 included (0 or 1: one; see [`FEATURE_SLOTS`]).
    pub slot_count: u32,
    /// Which slot this object is (0 for the prefix's own).
    pub slot_index: u32,
    /// Most clients the admission queue holds (worker, with [`FEATURE_QUEUE`]; slot 0).
    pub queue_max: u32,
    /// Tickets handed out so far, wrapping (clients, compare-and-swap; slot 0).
    pub queue_tail: u32,
    /// The ticket whose holder may take the next free slot, wrapping (clients; slot 0).
    pub queue_head: u32,
    /// 1 while this slot's request is being answered, 0 when idle (worker; status view).
    pub slot_busy: u32,
    /// Requests this slot has answered, wrapping (worker; status view).
    pub slot_served: u32,
    /// Tokens this slot has generated, wrapping (worker; status view).
    pub slot_generated: u32,
    /// The admission queue: entry `ticket % QUEUE_CAPACITY` holds `ticket << 32 | pid` of a
    /// waiting client, 0 when free (clients; slot 0).
    pub queue_entries: [u64; QUEUE_CAPACITY],
    /// What the request is (client): [`KIND_PROMPTS`] (0, every older client), [`KIND_CHAT`],
    /// [`KIND_EMBED`] or [`KIND_COUNT`]. The worker zeroes it with `request_seq`.
    pub request_kind: u32,
    /// Bytes of the request area the request uses (client).
    pub area_used: u32,
    /// `OPTION_*` bits of an area request (client).
    pub request_options: u32,
    /// Sampling seed of the request, 0 = the worker's own sampler (client).
    pub sample_seed: u32,
    /// Messages the worker dropped from the front of a conversation to fit it (worker).
    pub dropped_messages: u32,
    /// Bytes of the request area holding the result (worker; embeddings).
    pub result_len: u32,
    /// Size of the request area, [`AREA_LEN`] (creator; 0 = the object has none).
    pub area_size: u32,
    /// Reserved for later fields, zero.
    pub reserved_future: [u8; 1412],
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
const_assert_eq!(offset_of!(ExtensionPage, slot_count), 576);
const_assert_eq!(offset_of!(ExtensionPage, slot_index), 580);
const_assert_eq!(offset_of!(ExtensionPage, queue_max), 584);
const_assert_eq!(offset_of!(ExtensionPage, queue_tail), 588);
const_assert_eq!(offset_of!(ExtensionPage, queue_head), 592);
const_assert_eq!(offset_of!(ExtensionPage, slot_busy), 596);
const_assert_eq!(offset_of!(ExtensionPage, slot_served), 600);
const_assert_eq!(offset_of!(ExtensionPage, slot_generated), 604);
const_assert_eq!(offset_of!(ExtensionPage, queue_entries), 608);
const_assert_eq!(offset_of!(ExtensionPage, request_kind), 2656);
const_assert_eq!(offset_of!(ExtensionPage, area_used), 2660);
const_assert_eq!(offset_of!(ExtensionPage, request_options), 2664);
const_assert_eq!(offset_of!(ExtensionPage, sample_seed), 2668);
const_assert_eq!(offset_of!(ExtensionPage, dropped_messages), 2672);
const_assert_eq!(offset_of!(ExtensionPage, result_len), 2676);
const_assert_eq!(offset_of!(ExtensionPage, area_size), 2680);
const_assert_eq!(offset_of!(ExtensionPage, reserved_future), 2684);
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

// The seed streaming service's fields follow the shutdown byte, fit within what its C# client
// maps (45000 bytes) and end before the extension page.
const_assert_eq!(super::seed_stream::STREAM_MODE, SEED_SIZE);
const_assert!(super::seed_stream::END <= 45000 && super::seed_stream::END <= EXT_OFFSET);

/// Defines a word enum from one table (variant => `ExtensionPage` field): the enum, its
/// offsets and the list of all its words, so that the list exists once for the layout, its
/// tests, the in-memory region and the loom models.
macro_rules! words {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $field:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                #[doc = concat!("[`ExtensionPage::", stringify!($field), "`].")]
                $variant,
            )+
        }

        impl $name {
            /// Every word, in declaration order (`word as usize` indexes it).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// How many words there are.
            pub const COUNT: usize = Self::ALL.len();

            /// Offset of the word from the start of the object.
            pub const fn offset(self) -> usize {
                EXT_OFFSET
                    + match self {
                        $($name::$variant => offset_of!(ExtensionPage, $field),)+
                    }
            }
        }
    };
}

words! {
    /// A 32-bit word of the extension page (4-byte aligned).
    Word32 {
        Version => version,
        PageSize => page_size,
        CreatorPid => creator_pid,
        WorkerPid => worker_pid,
        Features => features,
        ClientPid => client_pid,
        RequestFlags => request_flags,
        Status => status,
        ResponseLen => response_len,
        ResponseFlags => response_flags,
        ErrorLen => error_len,
        PromptTokens => prompt_tokens,
        GeneratedTokens => generated_tokens,
        FinishReason => finish_reason,
        MaxTokens => max_tokens,
        WorkerCpu => worker_cpu,
        ClientCpu => client_cpu,
        CachedTokens => cached_tokens,
        SystemLen => system_len,
        UserLen => user_len,
        GuardianPid => guardian_pid,
        SlotCount => slot_count,
        SlotIndex => slot_index,
        QueueMax => queue_max,
        QueueTail => queue_tail,
        QueueHead => queue_head,
        SlotBusy => slot_busy,
        SlotServed => slot_served,
        SlotGenerated => slot_generated,
        RequestKind => request_kind,
        AreaUsed => area_used,
        RequestOptions => request_options,
        SampleSeed => sample_seed,
        DroppedMessages => dropped_messages,
        ResultLen => result_len,
        AreaSize => area_size,
    }
}

words! {
    /// A 64-bit word of the extension page (8-byte aligned).
    Word64 {
        RequestSeq => request_seq,
        ResponseSeq => response_seq,
        ErrorArg0 => error_arg0,
        ErrorArg1 => error_arg1,
        PromptMicros => prompt_us,
        GenerationMicros => generation_us,
        ResponseChecksum => response_checksum,
        RequestChecksum => request_checksum,
        StreamSeq => stream_seq,
        StreamWritten => stream_written,
        StreamRead => stream_read,
        CancelSeq => cancel_seq,
        DeadlineMicros => deadline_us,
    }
}

/// Offset from the start of the object of admission queue entry `i` (below
/// [`QUEUE_CAPACITY`]; 8-byte aligned).
pub const fn queue_entry_offset(i: usize) -> usize {
    EXT_OFFSET + offset_of!(ExtensionPage, queue_entries) + 8 * i
}

pub use super::field::{Field, Span};
pub use super::kind::{ClassifyError, ObjectKind};

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
        for w in Word32::ALL {
            assert_eq!(w.offset() % 4, 0);
            ranges.push((w.offset(), w.offset() + 4, format!("{w:?}")));
        }
        for w in Word64::ALL {
            assert_eq!(w.offset() % 8, 0);
            ranges.push((w.offset(), w.offset() + 8, format!("{w:?}")));
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{} overlaps {}", pair[0].2, pair[1].2);
        }
        assert!(ranges.last().unwrap().1 <= AREA_OBJECT_SIZE);
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

    #[test]
    fn words_sit_where_wire_md_puts_them() {
        // Offsets from docs/WIRE.md's table of the extension page (page at 45056).
        let page = 45056;
        assert_eq!(Word32::Version.offset(), page + 8);
        assert_eq!(Word32::Features.offset(), page + 24);
        assert_eq!(Word32::FinishReason.offset(), page + 144);
        assert_eq!(Word32::GuardianPid.offset(), page + 148);
        assert_eq!(Word32::UserLen.offset(), page + 572);
        assert_eq!(Word32::SlotCount.offset(), page + 576);
        assert_eq!(Word32::SlotIndex.offset(), page + 580);
        assert_eq!(Word64::RequestSeq.offset(), page + 32);
        assert_eq!(Word64::ResponseSeq.offset(), page + 80);
        assert_eq!(Word64::ResponseChecksum.offset(), page + 152);
        assert_eq!(Word64::StreamSeq.offset(), page + 512);
        assert_eq!(Word64::DeadlineMicros.offset(), page + 544);
        assert_eq!(Field::Magic.span(), Span { offset: page, len: 8 });
        assert_eq!(Word32::RequestKind.offset(), page + 2656);
        assert_eq!(Word32::AreaSize.offset(), page + 2680);
        assert_eq!(
            Field::RequestArea.span(),
            Span {
                offset: 49152,
                len: 1 << 20
            }
        );
        assert_eq!((Word32::COUNT, Word64::COUNT), (36, 13));
    }

    #[test]
    fn flag_bits_are_the_documented_values() {
        // docs/WIRE.md: features, request and response flags.
        assert_eq!(FEATURE_TOKEN_REQUIRED, 1);
        assert_eq!(FEATURE_STREAMING, 2);
        assert_eq!((FEATURE_SEED_STREAMING, FEATURE_SLOTS, FEATURE_QUEUE), (4, 8, 16));
        assert_eq!(FEATURE_REQUEST_AREA, 32);
        assert_eq!((KIND_PROMPTS, KIND_CHAT, KIND_EMBED, KIND_COUNT), (0, 1, 2, 3));
        assert_eq!((OPTION_DROP_OLDEST, OPTION_SEED), (1, 2));
        assert_eq!(REQUEST_STREAM, 1);
        assert_eq!(RESPONSE_TRUNCATED, 1);
        assert_eq!(RESPONSE_SYSTEM_REPAIRED, 2);
        assert_eq!(RESPONSE_USER_REPAIRED, 4);
    }

    #[test]
    fn only_the_extension_page_fields_are_extension_fields() {
        let ext: Vec<Field> = Field::ALL.iter().copied().filter(|f| f.is_extension()).collect();
        assert_eq!(
            ext,
            [
                Field::Magic,
                Field::AuthToken,
                Field::ErrorMessage,
                Field::RequestArea
            ]
        );
    }
}
