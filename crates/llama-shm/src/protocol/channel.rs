//! The channel: one worker's semaphores (the protocol's three, and the seed streaming
//! service's `chunk_ready` where it is served) and region, and the helpers both sides use.

use std::time::{Duration, Instant};

use super::peer::{Region, Semaphore};
use super::wait::{expired, wait_for, AdaptiveWait, WaitError};
use crate::wire::layout::{
    Field, ObjectKind, Word32, Word64, FEATURE_REQUEST_AREA, FEATURE_STREAMING, FEATURE_TOKEN_REQUIRED,
    TOKEN_LEN,
};

/// The semaphores and the region of one worker.
#[derive(Debug)]
pub struct Channel<S, R> {
    /// Posted by the worker when it can take a request.
    pub ready: S,
    /// Posted by the client when the prompts are written (or shutdown is requested).
    pub prompts_written: S,
    /// Posted by the worker when the response is written.
    pub response_written: S,
    /// The shared fields.
    pub region: R,
    /// This side's adaptive wait (see [`AdaptiveWait`]); [`AdaptiveWait::off`] blocks at once.
    pub adaptive: AdaptiveWait,
    /// The seed streaming service's `chunk_ready` (a standalone worker's fifth name, see
    /// [`Channel::with_chunk_ready`]); `None`: the service is not served on this channel.
    pub chunk_ready: Option<S>,
}

/// Whether two advertised CPUs (plus one; 0 = unknown) are known and different.
pub(super) fn on_other_cpus(me: u32, peer: u32) -> bool {
    me != 0 && peer != 0 && me != peer
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
pub(super) fn token_eq(a: &[u8; TOKEN_LEN], b: &[u8; TOKEN_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S: Semaphore, R: Region> Channel<S, R> {
    /// A channel over three semaphores and a region, with the default adaptive wait.
    pub fn new(ready: S, prompts_written: S, response_written: S, region: R) -> Self {
        Self {
            ready,
            prompts_written,
            response_written,
            region,
            adaptive: AdaptiveWait::default(),
            chunk_ready: None,
        }
    }

    /// The same channel serving the seed's streaming service too, posting `chunk_ready` per
    /// update (see [`Channel::worker_seed_update`]).
    pub fn with_chunk_ready(mut self, chunk_ready: S) -> Self {
        self.chunk_ready = Some(chunk_ready);
        self
    }

    pub(super) fn extended(&self) -> bool {
        self.region.kind() == ObjectKind::Extended
    }

    /// Whether the peer, by the CPU it last advertised in `peer`, runs on a CPU other than ours
    /// (0: not known yet).
    pub(super) fn peer_elsewhere(&self, peer: Word32) -> bool {
        on_other_cpus(self.region.current_cpu(), self.region.load32(peer))
    }

    /// The adaptive wait: spin while the peer's CPU is another than ours (see [`AdaptiveWait`]),
    /// then block in [`wait_for`]; either way, advertise the CPU we run on afterwards.
    pub(super) fn wait_adaptive(
        &self,
        sem: &S,
        me: Word32,
        peer: Word32,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<(), WaitError> {
        if !self.extended() {
            return wait_for(sem, deadline, slice, alive);
        }
        let started = Instant::now();
        if expired(deadline, started) {
            return Err(WaitError::TimedOut);
        }
        if !self.adaptive.spin(sem, &|| self.peer_elsewhere(peer))? {
            wait_for(sem, deadline, slice, alive)?;
        }
        self.adaptive.record(started.elapsed());
        self.set32(me, self.region.current_cpu());
        Ok(())
    }

    /// The client's adaptive wait on `sem` (its peer is the worker).
    pub(super) fn client_wait(
        &self,
        sem: &S,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<(), WaitError> {
        self.wait_adaptive(sem, Word32::ClientCpu, Word32::WorkerCpu, deadline, slice, alive)
    }

    /// Whether requests of other kinds than two prompts (and a seed or drop-oldest option) can
    /// be sent: the worker said it takes them ([`FEATURE_REQUEST_AREA`], set when it
    /// attaches: an older worker never does), the object says it holds the area, and this
    /// side maps all of it.
    pub fn area_supported(&self) -> bool {
        let len = Field::RequestArea.span().len;
        self.extended()
            && self.region.load32(Word32::Features) & FEATURE_REQUEST_AREA != 0
            && self.region.load32(Word32::AreaSize) as usize >= len
            && self.region.area_len() >= len
    }

    /// Stores `value` unless the word already holds it (no cache-line transfer then).
    pub(super) fn set32(&self, word: Word32, value: u32) {
        if self.region.load32(word) != value {
            self.region.store32(word, value);
        }
    }

    /// [`Channel::set32`] for a 64-bit word.
    pub(super) fn set64(&self, word: Word64, value: u64) {
        if self.region.load64(word) != value {
            self.region.store64(word, value);
        }
    }

    /// Writes `src` (at most 64 bytes) into `field` at `at` unless it already holds it.
    pub(super) fn set_bytes(&self, field: Field, at: usize, src: &[u8]) {
        let mut cur = [0u8; 64];
        let cur = &mut cur[..src.len().min(64)];
        self.region.read(field, at, cur);
        if cur != src {
            self.region.write(field, at, src);
        }
    }

    /// Writes `encoded` into `field`, NUL-terminates it and zero-fills the rest.
    pub(super) fn write_text(&self, field: Field, encoded: &[u8]) {
        let cap = field.span().len;
        let n = encoded.len().min(cap - 1);
        self.region.write(field, 0, &encoded[..n]);
        self.region.fill(field, n, cap - n, 0);
    }

    /// Whether the worker advertises that it requires an auth token.
    pub fn token_required(&self) -> bool {
        self.extended() && self.region.load32(Word32::Features) & FEATURE_TOKEN_REQUIRED != 0
    }

    /// Whether the worker streams through the ring and honours cancel, deadline and token
    /// budget ([`FEATURE_STREAMING`]).
    pub fn streaming_supported(&self) -> bool {
        self.extended() && self.region.load32(Word32::Features) & FEATURE_STREAMING != 0
    }
}
