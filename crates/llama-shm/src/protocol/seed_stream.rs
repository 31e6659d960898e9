//! The worker's side of the seed's streaming service (`LocalLLMService`, see
//! [`crate::wire::seed_stream`]): whether a seed-mode request asks for it, each update (the
//! whole answer so far, `tokens_generated`, `update_counter`, a `chunk_ready` post), and the
//! end (`generation_complete`, a last post) before the cycle's `response_written`.

use super::channel::Channel;
use super::messages::Usage;
use super::peer::{Region, Semaphore};
use super::stream_state::{SeedUpdates, StreamState};
use crate::sync::{fence, Ordering};
use crate::wire::layout::Field;
use crate::wire::seed_stream;

/// Stale `chunk_ready` posts [`Channel::worker_take`] takes back before a seed-mode request:
/// a streaming client stops waiting at `generation_complete` and leaves the posts it did not
/// take (one per update it coalesced), and one that died mid-stream leaves the rest. Bounded:
/// a peer may post in a loop (its own client then just sees updates that are not new).
const CHUNK_EXCESS_LIMIT: u32 = 1 << 16;

impl<S: Semaphore, R: Region> Channel<S, R> {
    /// Worker, for a seed-mode request on a channel with `chunk_ready`: whether `stream_mode`
    /// asks for the seed's streaming service. The byte is cleared (a seed-era client that
    /// never writes it must not inherit the last streaming client's 1) and stale `chunk_ready`
    /// posts are taken back (bounded), so that the new request's first post is its own.
    pub(super) fn take_seed_stream_mode(&self) -> bool {
        let Some(chunk_ready) = &self.chunk_ready else {
            return false;
        };
        let at = seed_stream::within(seed_stream::STREAM_MODE);
        let mut mode = [0u8];
        self.region.read(Field::SeedStream, at, &mut mode);
        if mode[0] != 0 {
            self.region.write(Field::SeedStream, at, &[0]);
        }
        for _ in 0..CHUNK_EXCESS_LIMIT {
            if !matches!(chunk_ready.try_wait(), Ok(true)) {
                break;
            }
        }
        mode[0] == 1
    }

    /// Posts `chunk_ready`. A failure (a peer flooded it to the maximum count) is logged once
    /// per answer, not fatal: the update is in the region, the client sees it at its next
    /// wake-up.
    fn post_chunk_ready(&self, seed: &mut SeedUpdates) {
        if let Some(chunk_ready) = &self.chunk_ready {
            if let Err(e) = chunk_ready.post() {
                if !std::mem::replace(&mut seed.post_failed, true) {
                    tracing::warn!("posting chunk_ready: {e} (not said again for this answer)");
                }
            }
        }
    }

    /// Worker: for a client of the seed's streaming service, shows what was written since the
    /// last update: `tokens_generated`, then `update_counter` + 1, then a `chunk_ready` post
    /// (the text itself is already in place, NUL-terminated, see
    /// [`Channel::worker_stream_write`]). Nothing for any other answer, or when nothing new
    /// was written.
    pub fn worker_seed_update(&self, st: &mut StreamState) {
        let Some(seed) = st.seed.as_mut() else {
            return;
        };
        if st.written <= seed.shown {
            return;
        }
        seed.shown = st.written;
        seed.pieces = seed.pieces.saturating_add(1);
        seed.counter = seed.counter.wrapping_add(1);
        self.write_seed_i32(seed_stream::TOKENS_GENERATED, seed.pieces);
        fence(Ordering::Release);
        self.write_seed_i32(seed_stream::UPDATE_COUNTER, seed.counter);
        self.post_chunk_ready(seed);
    }

    /// Writes one of the seed streaming service's unaligned int32 fields.
    fn write_seed_i32(&self, absolute: usize, value: u32) {
        let v = i32::try_from(value).unwrap_or(i32::MAX);
        self.region
            .write(Field::SeedStream, seed_stream::within(absolute), &v.to_ne_bytes());
    }

    /// Worker: appends `bytes` to a streamed answer of the service at `pos`. Its client may
    /// read the C string at any time: it must always end in a NUL, at the old end or the new.
    /// So the tail and its NUL first, the byte that overwrites the old NUL last.
    pub(super) fn seed_stream_write(&self, pos: usize, bytes: &[u8]) {
        let Some((first, tail)) = bytes.split_first() else {
            return;
        };
        self.region.write(Field::Response, pos + 1, tail);
        self.region.write(Field::Response, pos + bytes.len(), &[0]);
        fence(Ordering::Release);
        self.region.write(Field::Response, pos, &[*first]);
    }

    /// Worker: starts a streamed answer of the service when the channel serves it: the
    /// service's fields and the answer's first byte zeroed (the client zeroed them too; a
    /// careless one is not trusted), so the first update shows nothing of an older answer.
    pub(super) fn seed_stream_begin(&self) -> Option<SeedUpdates> {
        self.chunk_ready.as_ref()?;
        self.region.write(Field::Response, 0, &[0]);
        self.region
            .fill(Field::SeedStream, 0, Field::SeedStream.span().len, 0);
        Some(SeedUpdates::default())
    }

    /// Worker: ends a streamed answer of the service, once the whole answer is in place:
    /// `tokens_generated` (the engine's count, else the updates'), `generation_complete` = 1,
    /// `update_counter` + 1, and a last `chunk_ready` post.
    pub(super) fn seed_stream_complete(&self, mut seed: SeedUpdates, usage: &Usage) {
        let tokens = if usage.generated_tokens > 0 {
            usage.generated_tokens
        } else {
            seed.pieces
        };
        self.write_seed_i32(seed_stream::TOKENS_GENERATED, tokens);
        let at = seed_stream::within(seed_stream::GENERATION_COMPLETE);
        self.region.write(Field::SeedStream, at, &[1]);
        fence(Ordering::Release);
        self.write_seed_i32(seed_stream::UPDATE_COUNTER, seed.counter.wrapping_add(1));
        self.post_chunk_ready(&mut seed);
    }
}
