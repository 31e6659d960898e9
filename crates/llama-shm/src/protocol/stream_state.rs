//! One answer in flight, as the worker writes it: how much it wrote and published, the
//! running hash, and (for the seed's streaming service) what its client was shown.

use xxhash_rust::xxh3::Xxh3;

/// The worker's side of one answer in flight: how much it wrote, what it published, and the
/// running hash. Start one with [`Channel::worker_stream_begin`](super::Channel::worker_stream_begin).
pub struct StreamState {
    pub(super) seq: u64,
    /// Ring mode (an extended client): the response area is a ring of
    /// [`Region::ring_capacity`](super::Region::ring_capacity) bytes. Otherwise the seed's single C string.
    pub(super) ring: bool,
    pub(super) stream: bool,
    pub(super) written: u64,
    pub(super) published: u64,
    pub(super) read_seen: u64,
    /// The seed streaming service's progress, when this answer is streamed that way.
    pub(super) seed: Option<SeedUpdates>,
    pub(super) hasher: Xxh3,
}

impl StreamState {
    /// The request this answer belongs to.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Whether the answer goes through the ring (an extended client), so its length is not
    /// capped at the response area.
    pub fn is_ring(&self) -> bool {
        self.ring
    }
    /// Whether the client asked for each piece to be published as it comes.
    pub fn is_streaming(&self) -> bool {
        self.stream
    }
    /// Whether the answer goes to a client of the seed's streaming service (`stream_mode` 1):
    /// the whole answer so far and a `chunk_ready` post per update.
    pub fn is_seed_streaming(&self) -> bool {
        self.seed.is_some()
    }
}

/// Why the worker cannot write more of an answer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// This many bytes fit now.
    Free(usize),
    /// The client's read cursor is impossible (behind its previous value or past what was
    /// written): the region was changed by someone else.
    Garbled,
}

impl std::fmt::Debug for StreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamState")
            .field("seq", &self.seq)
            .field("ring", &self.ring)
            .field("stream", &self.stream)
            .field("written", &self.written)
            .field("published", &self.published)
            .field("read_seen", &self.read_seen)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// What the worker told a client of the seed's streaming service so far.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SeedUpdates {
    /// The last `update_counter` written.
    pub(super) counter: u32,
    /// Updates announced (the `tokens_generated` shown while streaming).
    pub(super) pieces: u32,
    /// Bytes of the answer the last update showed.
    pub(super) shown: u64,
    /// A `chunk_ready` post failed during this answer (logged once).
    pub(super) post_failed: bool,
}
