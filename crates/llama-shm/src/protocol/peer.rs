//! What the protocol needs from the world: a counting semaphore, the shared region's fields,
//! and (for a worker shared by several clients) news of its clients. Production implements
//! them on POSIX objects, the tests on private memory, `verification/` on loom primitives.

use std::io;
use std::time::{Duration, Instant};

use crate::wire::layout::{Field, ObjectKind, Word32, Word64, RESPONSE_LEN};

/// A counting semaphore the protocol can post and wait on.
pub trait Semaphore {
    /// Increments the count, waking one waiter.
    ///
    /// # Errors
    /// The OS error (e.g. the count overflowed).
    fn post(&self) -> io::Result<()>;
    /// Decrements the count, waiting until `deadline` at the latest. `Ok(false)` on timeout.
    /// Like `sem_clockwait`, it may take a positive count even when `deadline` has passed:
    /// binding the deadline is the caller's job ([`wait_for`](super::wait_for) does it).
    ///
    /// # Errors
    /// The OS error.
    fn wait_until(&self, deadline: Option<Instant>) -> io::Result<bool>;
    /// Decrements the count if it is positive, without blocking. Returns whether it did.
    ///
    /// # Errors
    /// The OS error.
    fn try_wait(&self) -> io::Result<bool>;
    /// The current count (stale as soon as it returns: a hint, e.g. whether `ready` has been
    /// taken).
    ///
    /// # Errors
    /// The OS error.
    fn value(&self) -> io::Result<u32>;
}

/// What a worker shared by several clients (a standalone worker) learns about them, so that a
/// client that dies holding the turn, or while its answer is generated, never wedges the
/// worker for the others. A worker spawned for one client has none: that client's death ends
/// the worker anyway.
pub trait Clients {
    /// Whether the client that took `ready` `held` ago and has not posted `prompts_written`
    /// is to be taken for gone. Every client of this protocol posts within microseconds of
    /// taking `ready` (it only writes the request in between), so production answers
    /// `held >= grace` with a grace far above that.
    fn turn_abandoned(&self, held: Duration) -> bool;
    /// Whether the client that sent request `seq` (0: a seed-mode client), being answered
    /// since `since`, may still be there to read the answer. Asked every so often while the
    /// answer is generated; `false` ends the request at once.
    fn requester_present(&self, seq: u64, since: Instant) -> bool;
}

/// Access to the shared object's fields: copies in and out, never references (the peer may
/// change any byte at any time), and atomic access to the extension page's words.
///
/// In seed mode the extension page does not exist: implementations read zeros there and drop
/// writes, and the protocol does not touch it.
pub trait Region {
    /// Seed or extended.
    fn kind(&self) -> ObjectKind;
    /// Copies `dst.len()` bytes of `field`, starting `at` bytes into it. Every byte of `dst`
    /// is written: a range outside the field (or the mapping) reads as zeros, so a reused
    /// buffer never hands over what it held before.
    fn read(&self, field: Field, at: usize, dst: &mut [u8]);
    /// Copies `src` into `field`, starting `at` bytes into it.
    fn write(&self, field: Field, at: usize, src: &[u8]);
    /// Sets `len` bytes of `field`, starting `at`, to `byte`.
    fn fill(&self, field: Field, at: usize, len: usize, byte: u8);
    /// Loads a 32-bit word (acquire).
    fn load32(&self, word: Word32) -> u32;
    /// Stores a 32-bit word (release).
    fn store32(&self, word: Word32, value: u32);
    /// Loads a 64-bit word (acquire).
    fn load64(&self, word: Word64) -> u64;
    /// Stores a 64-bit word (release).
    fn store64(&self, word: Word64, value: u64);
    /// Capacity of the response area when it is used as the streaming ring. Both peers of a
    /// real object use [`RESPONSE_LEN`]; a model checker may shrink it to explore wrap-around
    /// and a full ring with a few bytes.
    fn ring_capacity(&self) -> usize {
        RESPONSE_LEN
    }
    /// How many bytes of the request area ([`Field::RequestArea`]) the region really holds
    /// (0: none, as in an object made before it, a seed-era one, or a model checker's).
    fn area_len(&self) -> usize {
        0
    }
    /// The CPU this thread runs on, plus one; 0 when unknown (the adaptive wait then never
    /// spins).
    fn current_cpu(&self) -> u32 {
        0
    }
}
