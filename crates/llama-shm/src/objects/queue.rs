//! The admission queue ([`crate::protocol::Queue`]) on slot 0's mapped extension page, and
//! the status words a worker keeps per slot (busy, answered, generated) for `llama-shm status`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::PosixChannel;
use crate::protocol::{Queue, QueueWords, Region};
use crate::wire::layout::{queue_entry_offset, ObjectKind, Word32, FEATURE_QUEUE, QUEUE_CAPACITY};

/// The queue words of a worker's slot 0.
#[derive(Debug, Clone)]
pub struct ShmQueue(Arc<PosixChannel>);

/// Stands in for a word [`ShmQueue::of`] checked is mapped: never reached.
static UNMAPPED32: AtomicU32 = AtomicU32::new(0);
/// As [`UNMAPPED32`].
static UNMAPPED64: AtomicU64 = AtomicU64::new(0);

impl ShmQueue {
    /// The admission queue of the worker whose slot 0 is `channel`: `None` for a seed-era
    /// object or a worker without one ([`FEATURE_QUEUE`]).
    pub fn of(channel: &Arc<PosixChannel>) -> Option<Queue<ShmQueue>> {
        let r = &channel.region;
        let shm = r.shm();
        let mapped = [Word32::QueueMax, Word32::QueueTail, Word32::QueueHead]
            .iter()
            .all(|w| shm.atomic_u32(w.offset()).is_some())
            && shm.atomic_u64(queue_entry_offset(QUEUE_CAPACITY - 1)).is_some();
        (r.kind() == ObjectKind::Extended && r.load32(Word32::Features) & FEATURE_QUEUE != 0 && mapped)
            .then(|| Queue(ShmQueue(Arc::clone(channel))))
    }

    fn word(&self, w: Word32) -> &AtomicU32 {
        self.0.region.shm().atomic_u32(w.offset()).unwrap_or(&UNMAPPED32)
    }
}

impl QueueWords for ShmQueue {
    fn max(&self) -> u32 {
        self.word(Word32::QueueMax).load(Ordering::Acquire)
    }
    fn tail(&self) -> &AtomicU32 {
        self.word(Word32::QueueTail)
    }
    fn head(&self) -> &AtomicU32 {
        self.word(Word32::QueueHead)
    }
    fn entry(&self, i: usize) -> &AtomicU64 {
        self.0
            .region
            .shm()
            .atomic_u64(queue_entry_offset(i.min(QUEUE_CAPACITY - 1)))
            .unwrap_or(&UNMAPPED64)
    }
}
