//! The seed's streaming service (its C# `LocalLLMService`, `../shared/spec/seed-streaming.md`):
//! packed fields right after the shutdown byte, at the offsets that C# client reads and
//! writes. They lie in the gap between the seed region and the extension page, so no offset of
//! ours moves. (The seed's own C++ worker declared them in a C struct and got aligned offsets
//! 40961, 40964, 40968, 40972: the two halves of the seed disagree; applications have the C#
//! client, so these are the offsets served.) Integers are native-endian and unaligned: access
//! them as bytes. (`wire::layout` checks that they sit between the seed region and the extension
//! page.)

/// `stream_mode`, 1 byte: 1 = stream this request, 0 = one answer (client).
pub const STREAM_MODE: usize = 40961;
/// `update_counter`, i32: bumped by the worker after each update (client zeroes it).
pub const UPDATE_COUNTER: usize = 40962;
/// `generation_complete`, 1 byte: 1 once the answer is whole (worker; client zeroes it).
pub const GENERATION_COMPLETE: usize = 40966;
/// `tokens_generated`, i32 (worker; client zeroes it).
pub const TOKENS_GENERATED: usize = 40967;
/// One past the last byte of the fields.
pub const END: usize = 40971;

/// Where `absolute` (one of the offsets above) lies within
/// [`Field::SeedStream`](super::layout::Field::SeedStream).
pub const fn within(absolute: usize) -> usize {
    absolute - STREAM_MODE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::layout::{Field, Span};

    #[test]
    fn seed_stream_fields_sit_at_the_csharp_services_offsets() {
        // seed-streaming.md's table: 40960 shutdown, 40961 stream_mode, 40962 update_counter
        // (4), 40966 generation_complete, 40967 tokens_generated (4).
        assert_eq!(
            (
                STREAM_MODE,
                UPDATE_COUNTER,
                GENERATION_COMPLETE,
                TOKENS_GENERATED,
                END
            ),
            (40961, 40962, 40966, 40967, 40971)
        );
        assert_eq!(Field::Shutdown.span().offset + 1, STREAM_MODE);
        assert_eq!(
            Field::SeedStream.span(),
            Span {
                offset: 40961,
                len: 10
            }
        );
        assert!(!Field::SeedStream.is_extension());
    }
}
