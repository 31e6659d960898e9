//! Copies in and out of memory the peer writes concurrently. A plain `memcpy` (or a `&[u8]`)
//! over such memory is a data race, undefined behaviour in Rust's model however the bytes are
//! validated afterwards; relaxed atomic loads and stores of each byte — eight at a time where
//! the shared address is 8-aligned — are not: they may see any mix of old and new bytes (which
//! the validation and checksums are for), never anything undefined. They compile to plain
//! moves; the peer's own accesses (another process, perhaps not Rust) are outside the model,
//! which is the best any shared-memory protocol can do.

use std::sync::atomic::AtomicU64;

/// Copies `dst.len()` bytes from shared memory at `src` into `dst`, with relaxed atomic loads.
///
/// # Safety
/// `src .. src + dst.len()` must be inside a live mapping, valid for reads, for the whole
/// call; it is only ever accessed atomically by this process.
pub(super) unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
    let n = dst.len();
    let mut i = 0;
    while i < n && (src as usize + i) % 8 != 0 {
        // SAFETY: in range (the caller's contract); any address is aligned for a u8.
        dst[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Relaxed);
        i += 1;
    }
    while i + 8 <= n {
        // SAFETY: in range, and 8-aligned (the loop above reached an 8-aligned address).
        let word = unsafe { AtomicU64::from_ptr(src.add(i).cast_mut().cast()) }.load(Relaxed);
        dst[i..i + 8].copy_from_slice(&word.to_ne_bytes());
        i += 8;
    }
    while i < n {
        // SAFETY: in range; a u8 is always aligned.
        dst[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Relaxed);
        i += 1;
    }
}

/// Copies `src` into shared memory at `dst`, with relaxed atomic stores.
///
/// # Safety
/// `dst .. dst + src.len()` must be inside a live, writable mapping for the whole call; it is
/// only ever accessed atomically by this process.
pub(super) unsafe fn copy_to_shared(src: &[u8], dst: *mut u8) {
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
    let n = src.len();
    let mut i = 0;
    while i < n && (dst as usize + i) % 8 != 0 {
        // SAFETY: in range (the caller's contract); any address is aligned for a u8.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(src[i], Relaxed);
        i += 1;
    }
    while i + 8 <= n {
        let word = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
        // SAFETY: in range, and 8-aligned (the loop above reached an 8-aligned address).
        unsafe { AtomicU64::from_ptr(dst.add(i).cast()) }.store(word, Relaxed);
        i += 8;
    }
    while i < n {
        // SAFETY: in range; a u8 is always aligned.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(src[i], Relaxed);
        i += 1;
    }
}
