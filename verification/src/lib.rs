//! loom implementations of the protocol's primitives, so the models in `tests/` run the
//! protocol functions that ship (`llama_shm::internals::protocol`, `llama_shm::internals::worker::serve`) on
//! primitives loom can explore exhaustively:
//!
//! - `LoomSemaphore`: a counting semaphore (loom `Mutex` + `Condvar`). Waits block until a
//!   post, unless timeouts are switched on, in which case a wait that finds the count at zero
//!   is a deadline that expired.
//! - `LoomRegion`: every wire field in its own `loom::cell::UnsafeCell`, so loom reports
//!   any access to a field that is not ordered by the protocol's posts (a data race), and
//!   every extension word a loom atomic.
//!
//! Built only with `RUSTFLAGS="--cfg loom"`; otherwise the crate is empty.
#![cfg(loom)]
#![warn(missing_docs)]

use std::io;
use std::time::{Duration, Instant};

use llama_shm::internals::protocol::{Channel, Region, Semaphore};
use llama_shm::internals::wire::layout::{Field, ObjectKind, Word32, Word64};
use llama_shm::internals::worker::{serve, ServeEnd, ServeOptions};
use llama_shm::Prompts;
use llama_shm::{Cancel, Engine, EngineError, EngineRequest, Finish, Generation, ResponseSink};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use loom::sync::{Condvar, Mutex};

#[cfg(feature = "planted-bugs")]
pub mod planted;

/// A counting semaphore on loom primitives.
#[derive(Debug)]
pub struct LoomSemaphore {
    count: Mutex<u32>,
    cv: Condvar,
    timeouts: std::sync::atomic::AtomicBool,
    made: Instant,
}

impl LoomSemaphore {
    /// A semaphore at zero whose waits block until posted.
    pub fn new() -> Self {
        Self {
            count: Mutex::new(0),
            cv: Condvar::new(),
            timeouts: false.into(),
            made: Instant::now(),
        }
    }
    /// From now on, a wait that finds the count at zero times out at once (the deadline
    /// expired before any post); `false` restores blocking waits. Only the waiting thread
    /// may call this (it is not a loom-tracked operation).
    pub fn set_timeouts(&self, on: bool) {
        self.timeouts.store(on, std::sync::atomic::Ordering::Relaxed);
    }
    /// The current count.
    pub fn count(&self) -> u32 {
        *self.count.lock().unwrap()
    }
}

impl Default for LoomSemaphore {
    fn default() -> Self {
        Self::new()
    }
}

impl Semaphore for LoomSemaphore {
    fn post(&self) -> io::Result<()> {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_one();
        Ok(())
    }

    fn wait_until(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let mut count = self.count.lock().unwrap();
        // As sem_clockwait: a positive count is taken even when the deadline has passed; a
        // zero count with a passed deadline times out at once. "Passed" means before this
        // semaphore was made (a model's deliberately expired deadline), never the wall clock
        // during exploration, which would make executions differ from run to run.
        let expired = deadline.is_some_and(|d| d <= self.made);
        if expired || self.timeouts.load(std::sync::atomic::Ordering::Relaxed) {
            if *count == 0 {
                drop(count);
                // A waiter that times out goes round its loop: let the others run first (a
                // spin loop in loom must yield, or a schedule can run it forever).
                loom::thread::yield_now();
                return Ok(false);
            }
        } else {
            while *count == 0 {
                count = self.cv.wait(count).unwrap();
            }
        }
        *count -= 1;
        Ok(true)
    }

    fn value(&self) -> io::Result<u32> {
        Ok(*self.count.lock().unwrap())
    }

    fn try_wait(&self) -> io::Result<bool> {
        let mut count = self.count.lock().unwrap();
        if *count == 0 {
            return Ok(false);
        }
        *count -= 1;
        Ok(true)
    }
}

const N_WORD32: usize = Word32::COUNT;
const N_WORD64: usize = Word64::COUNT;

/// Capacity of the response area used as a ring in the models: small, so a few bytes of
/// answer wrap around and fill it (production uses the whole 32 KiB area).
pub const LOOM_RING: usize = 4;

/// Bytes at the start of the response area that get a loom cell each (the ring lives there;
/// the worker writes one part while the client reads another, which loom must see as the
/// disjoint accesses they are). The rest of the area is one cell.
const RESPONSE_CELLS: usize = 64;

/// The wire's fields in loom cells.
#[derive(Debug)]
pub struct LoomRegion {
    kind: ObjectKind,
    /// The ring's capacity (at most [`RESPONSE_CELLS`]: a cell per byte).
    ring: usize,
    fields: Vec<UnsafeCell<Vec<u8>>>,
    /// The response area: one cell per byte for the first [`RESPONSE_CELLS`] bytes, then one
    /// cell for the tail.
    response: Vec<UnsafeCell<Vec<u8>>>,
    words32: Vec<AtomicU32>,
    words64: Vec<AtomicU64>,
}

// SAFETY: every field is a loom UnsafeCell whose accesses loom checks for races (that is the
// point of the model); the words are loom atomics.
unsafe impl Sync for LoomRegion {}

impl LoomRegion {
    /// A zeroed region of `kind` with a ring of [`LOOM_RING`] bytes.
    pub fn new(kind: ObjectKind) -> Self {
        Self::with_ring(kind, LOOM_RING)
    }

    /// A zeroed region of `kind` with a ring of `ring` bytes (at most 64).
    pub fn with_ring(kind: ObjectKind, ring: usize) -> Self {
        assert!(
            (1..=RESPONSE_CELLS).contains(&ring),
            "a ring of 1 to {RESPONSE_CELLS} bytes"
        );
        Self {
            kind,
            ring,
            fields: Field::ALL
                .iter()
                .map(|f| UnsafeCell::new(vec![0u8; cell_len(*f)]))
                .collect(),
            response: (0..RESPONSE_CELLS)
                .map(|_| UnsafeCell::new(vec![0u8]))
                .chain(std::iter::once(UnsafeCell::new(vec![
                    0u8;
                    Field::Response.span().len
                        - RESPONSE_CELLS
                ])))
                .collect(),
            words32: (0..N_WORD32).map(|_| AtomicU32::new(0)).collect(),
            words64: (0..N_WORD64).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Bytes of `field`'s own cell: none for the response (its bytes live in `response`) and for
/// the request area, which this region does not hold ([`Region::area_len`] says 0, so no
/// client sends an area request and the worker reads none; reads of it are zeros, writes
/// dropped, and a model allocates no MiB per execution).
fn cell_len(field: Field) -> usize {
    match field {
        Field::Response | Field::RequestArea => 0,
        _ => field.span().len,
    }
}

/// What [`LoomRegion::response_access`] calls per cell: the cell, the offset into the
/// caller's buffer, the range within the cell.
type CellAccess<'a> = dyn FnMut(&UnsafeCell<Vec<u8>>, usize, std::ops::Range<usize>) + 'a;

impl LoomRegion {
    /// Calls `f(cell, offset into the caller's buffer, range within the cell)` for every cell
    /// the response bytes `[at, at + len)` touch; out of the area: nothing (reads of it are
    /// never issued by the protocol).
    fn response_access(&self, at: usize, len: usize, f: &mut CellAccess<'_>) {
        let end = at + len;
        if end > Field::Response.span().len {
            return;
        }
        let mut pos = at;
        while pos < end {
            if pos < RESPONSE_CELLS {
                f(&self.response[pos], pos - at, 0..1);
                pos += 1;
            } else {
                let start = pos - RESPONSE_CELLS;
                f(
                    &self.response[RESPONSE_CELLS],
                    pos - at,
                    start..end - RESPONSE_CELLS,
                );
                pos = end;
            }
        }
    }
}

impl Region for LoomRegion {
    fn kind(&self) -> ObjectKind {
        self.kind
    }
    fn read(&self, field: Field, at: usize, dst: &mut [u8]) {
        if field == Field::Response {
            // Out of the field: zeros, as every region reads there (`response_access` then
            // touches no cell).
            if at.saturating_add(dst.len()) > Field::Response.span().len {
                dst.fill(0);
                return;
            }
            return self.response_access(at, dst.len(), &mut |cell, off, range| {
                cell.with(|p| {
                    // SAFETY: loom grants shared access here and reports a race if a write to
                    // this byte (or the tail) is not ordered before it.
                    let v = unsafe { &*p };
                    dst[off..off + range.len()].copy_from_slice(&v[range]);
                })
            });
        }
        self.fields[field as usize].with(|p| {
            // SAFETY: loom grants shared access here and reports a race if a write to this
            // field is not ordered before it.
            let v = unsafe { &*p };
            match v.get(at..at + dst.len()) {
                Some(src) => dst.copy_from_slice(src),
                None => dst.fill(0),
            }
        });
    }
    fn write(&self, field: Field, at: usize, src: &[u8]) {
        if field == Field::Response {
            return self.response_access(at, src.len(), &mut |cell, off, range| {
                cell.with_mut(|p| {
                    // SAFETY: loom grants exclusive access here and reports any unordered access.
                    let v = unsafe { &mut *p };
                    v[range.clone()].copy_from_slice(&src[off..off + range.len()]);
                })
            });
        }
        self.fields[field as usize].with_mut(|p| {
            // SAFETY: loom grants exclusive access here and reports any unordered access.
            let v = unsafe { &mut *p };
            if let Some(dst) = v.get_mut(at..at + src.len()) {
                dst.copy_from_slice(src);
            }
        });
    }
    fn fill(&self, field: Field, at: usize, len: usize, byte: u8) {
        if field == Field::Response {
            return self.response_access(at, len, &mut |cell, _, range| {
                cell.with_mut(|p| {
                    // SAFETY: as in `write`.
                    let v = unsafe { &mut *p };
                    v[range].fill(byte);
                })
            });
        }
        self.fields[field as usize].with_mut(|p| {
            // SAFETY: as in `write`.
            let v = unsafe { &mut *p };
            if let Some(dst) = v.get_mut(at..at + len) {
                dst.fill(byte);
            }
        });
    }
    fn ring_capacity(&self) -> usize {
        self.ring
    }
    fn load32(&self, word: Word32) -> u32 {
        self.words32[word as usize].load(Ordering::Acquire)
    }
    fn store32(&self, word: Word32, value: u32) {
        self.words32[word as usize].store(value, Ordering::Release);
    }
    fn load64(&self, word: Word64) -> u64 {
        self.words64[word as usize].load(Ordering::Acquire)
    }
    fn store64(&self, word: Word64, value: u64) {
        self.words64[word as usize].store(value, Ordering::Release);
    }
}

/// The protocol on loom primitives.
pub type LoomChannel = Channel<LoomSemaphore, LoomRegion>;

/// A fresh channel over a zeroed region of `kind` (a ring of [`LOOM_RING`] bytes).
pub fn channel(kind: ObjectKind) -> LoomChannel {
    channel_with_ring(kind, LOOM_RING)
}

/// A fresh channel over a zeroed region of `kind` whose ring holds `ring` bytes.
pub fn channel_with_ring(kind: ObjectKind, ring: usize) -> LoomChannel {
    let mut ch = Channel::new(
        LoomSemaphore::new(),
        LoomSemaphore::new(),
        LoomSemaphore::new(),
        LoomRegion::with_ring(kind, ring),
    );
    // Spinning is a performance path over the same semaphores; loom explores the blocking
    // protocol (a spin that takes the semaphore is the same step as a wait that does).
    ch.adaptive = llama_shm::internals::protocol::AdaptiveWait::off();
    ch
}

/// The slice the protocol's waits use between liveness checks (irrelevant to loom, whose
/// waits block; any value works).
pub const SLICE: Duration = Duration::from_millis(50);

/// Asserts that every semaphore is back at its idle value (0): a stray post is not a data
/// race, so this is how a model catches one.
pub fn assert_idle(ch: &LoomChannel) {
    assert_eq!(
        (
            ch.ready.count(),
            ch.prompts_written.count(),
            ch.response_written.count()
        ),
        (0, 0, 0),
        "semaphores (ready, prompts_written, response_written) not idle at the end"
    );
}

/// An engine that answers with fixed pieces, one per "token": it stops when the sink refuses
/// more or the cancel flag is set, as the llama engine does between tokens.
#[derive(Debug)]
pub struct Pieces(pub &'static [&'static str]);

impl Engine for Pieces {
    fn generate(
        &mut self,
        _request: &EngineRequest<'_>,
        out: &mut dyn ResponseSink,
        cancel: &Cancel,
    ) -> Result<Generation, EngineError> {
        let mut finish = Finish::Stop;
        for p in self.0 {
            if cancel.is_cancelled() {
                finish = Finish::Cancelled;
                break;
            }
            if !out.push(p) {
                finish = Finish::Length;
                break;
            }
        }
        Ok(Generation::new(finish))
    }
}

/// Starts `serve` with [`Pieces`] on `ch` in a loom thread.
pub fn spawn_pieces_worker(
    ch: &loom::sync::Arc<LoomChannel>,
    pieces: &'static [&'static str],
) -> loom::thread::JoinHandle<(ServeEnd, u64)> {
    let ch = loom::sync::Arc::clone(ch);
    loom::thread::spawn(move || {
        serve(
            &*ch,
            &mut Pieces(pieces),
            &ServeOptions::default(),
            &|| false,
            &Cancel::new(),
        )
        .unwrap()
    })
}

/// Takes the turn and writes streamed request `seq` ("s" / "u") with the shipped client calls.
pub fn write_stream_request(ch: &LoomChannel, seq: u64) {
    ch.client_acquire(None, SLICE, &|| true).unwrap();
    let mut req = llama_shm::internals::protocol::PreparedRequest::encode(
        Prompts {
            system: "s",
            user: "u",
        },
        llama_shm::internals::wire::text::Policy::Truncate,
    )
    .unwrap();
    req.seq = seq;
    req.params.flags = llama_shm::internals::wire::layout::REQUEST_STREAM;
    ch.client_write(&req).unwrap();
}
