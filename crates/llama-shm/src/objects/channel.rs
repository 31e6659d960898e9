//! The protocol's [`Region`] and [`Semaphore`] on the POSIX objects: a mapped object and named
//! semaphores.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::os::{NamedSemaphore, SharedMemory};
use crate::protocol::{Channel, Region, Semaphore};
use crate::wire::layout::{Field, ObjectKind, Word32, Word64};

/// The protocol on POSIX objects.
pub type PosixChannel = Channel<NamedSemaphore, ShmRegion>;

/// A mapped object together with the protocol it speaks.
#[derive(Debug)]
pub struct ShmRegion {
    pub(super) shm: SharedMemory,
    pub(super) kind: ObjectKind,
}

impl ShmRegion {
    /// The underlying handle.
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// Speak the seed's protocol only, ignoring the extension page.
    pub fn force_seed(&mut self) {
        self.kind = ObjectKind::Seed;
    }

    /// The bytes of `field` the protocol may touch: none of the extension page in seed mode
    /// (even when the mapping is large enough to hold one), per the `Region` contract.
    fn span_of(&self, field: Field) -> Option<crate::wire::layout::Span> {
        (self.kind == ObjectKind::Extended || !field.is_extension()).then(|| field.span())
    }

    fn word_offset(&self, offset: usize) -> Option<usize> {
        (self.kind == ObjectKind::Extended).then_some(offset)
    }
}

impl Region for ShmRegion {
    fn kind(&self) -> ObjectKind {
        self.kind
    }
    fn read(&self, field: Field, at: usize, dst: &mut [u8]) {
        match self.span_of(field) {
            Some(span) if at.saturating_add(dst.len()) <= span.len => self.shm.read(span.offset + at, dst),
            _ => dst.fill(0),
        }
    }
    fn write(&self, field: Field, at: usize, src: &[u8]) {
        if let Some(span) = self
            .span_of(field)
            .filter(|s| at.saturating_add(src.len()) <= s.len)
        {
            self.shm.write(span.offset + at, src);
        }
    }
    fn fill(&self, field: Field, at: usize, len: usize, byte: u8) {
        if let Some(span) = self.span_of(field).filter(|s| at.saturating_add(len) <= s.len) {
            self.shm.fill(span.offset + at, len, byte);
        }
    }
    fn load32(&self, word: Word32) -> u32 {
        self.word_offset(word.offset())
            .and_then(|o| self.shm.atomic_u32(o))
            .map_or(0, |a| a.load(Ordering::Acquire))
    }
    fn store32(&self, word: Word32, value: u32) {
        if let Some(a) = self
            .word_offset(word.offset())
            .and_then(|o| self.shm.atomic_u32(o))
        {
            a.store(value, Ordering::Release);
        }
    }
    fn load64(&self, word: Word64) -> u64 {
        self.word_offset(word.offset())
            .and_then(|o| self.shm.atomic_u64(o))
            .map_or(0, |a| a.load(Ordering::Acquire))
    }
    fn store64(&self, word: Word64, value: u64) {
        if let Some(a) = self
            .word_offset(word.offset())
            .and_then(|o| self.shm.atomic_u64(o))
        {
            a.store(value, Ordering::Release);
        }
    }
    fn current_cpu(&self) -> u32 {
        crate::os::process::current_cpu()
    }
    fn area_len(&self) -> usize {
        match self.kind {
            ObjectKind::Extended => {
                let span = Field::RequestArea.span();
                self.shm.mapped_len().saturating_sub(span.offset).min(span.len)
            }
            ObjectKind::Seed => 0,
        }
    }
}

impl Semaphore for NamedSemaphore {
    fn post(&self) -> io::Result<()> {
        NamedSemaphore::post(self)
    }
    fn wait_until(&self, deadline: Option<Instant>) -> io::Result<bool> {
        NamedSemaphore::wait_until(self, deadline)
    }
    fn try_wait(&self) -> io::Result<bool> {
        NamedSemaphore::try_wait(self)
    }
    fn value(&self) -> io::Result<u32> {
        NamedSemaphore::value(self).map(|v| u32::try_from(v).unwrap_or(0))
    }
}
