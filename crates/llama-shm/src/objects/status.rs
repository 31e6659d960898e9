//! What a running worker says about itself in its extension pages — slots busy or idle, what
//! each has answered, the admission queue's depth — read for `llama-shm status` with
//! `pread` (never mapped: looking must not count as using, nor fault on a squatter's object).

use bytemuck::Zeroable;

use crate::os::shm;
use crate::protocol::{MemQueue, Queue};
use crate::wire::layout::{ExtensionPage, EXT_MAGIC, EXT_OFFSET, EXT_SIZE, FEATURE_QUEUE, FEATURE_SLOTS};
use crate::wire::names::Prefix;

/// One slot's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// Its index (0: the prefix's own names).
    pub index: u32,
    /// The prefix of its names.
    pub prefix: Prefix,
    /// A request of it is being answered.
    pub busy: bool,
    /// Requests it has answered (wrapping at 2³²).
    pub served: u32,
    /// Tokens it has generated (wrapping at 2³²).
    pub generated: u32,
}

/// A worker's state, as its pages say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    /// The worker's pid (0 before it attached).
    pub worker_pid: u32,
    /// Its slots, slot 0 first (those whose page could be read).
    pub slots: Vec<SlotStatus>,
    /// Clients waiting in the admission queue and the most that may, when it has one.
    pub queue: Option<(u32, u32)>,
}

fn page(prefix: &Prefix) -> Option<ExtensionPage> {
    let mut page = ExtensionPage::zeroed();
    let bytes = bytemuck::bytes_of_mut(&mut page);
    let n = shm::read_unmapped(&prefix.shm(), EXT_OFFSET as u64, bytes).ok()?;
    (n == EXT_SIZE && page.magic == EXT_MAGIC).then_some(page)
}

/// The state of the worker serving `prefix`; `None` when it has no readable extension page
/// (absent, seed-era, another user's).
pub fn status(prefix: &Prefix) -> Option<WorkerStatus> {
    let first = page(prefix)?;
    let count = if first.features & FEATURE_SLOTS != 0 {
        first.slot_count.clamp(1, 1024)
    } else {
        1
    };
    let slot = |index: u32, p: Prefix, pg: &ExtensionPage| SlotStatus {
        index,
        prefix: p,
        busy: pg.slot_busy != 0,
        served: pg.slot_served,
        generated: pg.slot_generated,
    };
    let mut slots = vec![slot(0, prefix.clone(), &first)];
    for k in 1..count {
        let Some(p) = prefix.slot(k) else { break };
        // Only pages that say they are this worker's slot k.
        if let Some(pg) = page(&p).filter(|pg| pg.slot_index == k && pg.creator_pid == first.creator_pid) {
            slots.push(slot(k, p, &pg));
        }
    }
    let queue = (first.features & FEATURE_QUEUE != 0).then(|| {
        let copy = MemQueue::from_words(
            first.queue_max,
            first.queue_tail,
            first.queue_head,
            &first.queue_entries,
        );
        (Queue(&copy).waiting(), first.queue_max)
    });
    Some(WorkerStatus {
        worker_pid: first.worker_pid,
        slots,
        queue,
    })
}
