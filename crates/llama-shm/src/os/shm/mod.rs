//! POSIX shared memory: create (`O_EXCL`, exact mode), open (owner, mode and size checked),
//! map, and copy bytes in and out of the mapping.
//!
//! # Safety model
//! The mapping is shared with another process that may write any byte at any time. No Rust
//! reference (`&[u8]`, `&T`) to mapped bytes is ever created, and no plain `memcpy` touches
//! them: fields are copied out into private buffers with relaxed atomic loads (and in with
//! relaxed atomic stores) and validated there, and the control words are atomics. The mapping stays valid for the life of the handle;
//! the object's size is checked before mapping so that no access lies beyond its end (a peer
//! with write access that shrinks the object afterwards can still cause `SIGBUS`; see
//! SECURITY.md).

mod copy;

use copy::{copy_from_shared, copy_to_shared};
use std::ffi::{CStr, CString};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{self, MapFlags, ProtFlags};
use nix::sys::stat::{self, Mode};

/// What can go wrong with a shared-memory object. Every variant names the object.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// The name exists already (creation uses `O_EXCL`, so a squatter is never adopted).
    #[error("shared memory {name} already exists")]
    AlreadyExists {
        /// The object's name.
        name: String,
    },
    /// The name does not exist.
    #[error("shared memory {name} does not exist")]
    NotFound {
        /// The object's name.
        name: String,
    },
    /// The object belongs to another user.
    #[error("shared memory {name} is owned by uid {owner}, not by this user (uid {me}); refusing to use it")]
    WrongOwner {
        /// The object's name.
        name: String,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        me: u32,
    },
    /// The object's permissions grant more than allowed (e.g. 0666 when 0600 is required).
    #[error(
        "shared memory {name} has mode {mode:04o}, wider than the allowed {allowed:04o}; refusing to use it"
    )]
    WrongMode {
        /// The object's name.
        name: String,
        /// Its permission bits.
        mode: u32,
        /// The widest mode accepted.
        allowed: u32,
    },
    /// The object is smaller than the layout needs: mapping it would fault.
    #[error("shared memory {name} is {size} bytes, smaller than the {needed} the layout needs")]
    TooSmall {
        /// The object's name.
        name: String,
        /// Its size.
        size: u64,
        /// The minimum.
        needed: u64,
    },
    /// A system call failed.
    #[error("{op} on shared memory {name} failed: {source}")]
    Os {
        /// The call (`shm_open`, `ftruncate`, `mmap`, …).
        op: &'static str,
        /// The object's name.
        name: String,
        /// The errno.
        #[source]
        source: Errno,
    },
}

/// How [`SharedMemory::open`] vets an existing object before trusting it.
#[derive(Debug, Clone, Copy)]
pub struct OpenCheck {
    /// Refuse an object whose owner is not our effective uid.
    pub same_owner: bool,
    /// Refuse an object whose permission bits are not a subset of these.
    pub max_mode: u32,
    /// Refuse an object smaller than this many bytes.
    pub min_size: usize,
    /// Map at most this many bytes (the rest of a larger object is ignored).
    pub map_at_most: usize,
}

/// An open, mapped POSIX shared-memory object.
///
/// Dropping it unmaps and closes; the name is unlinked on drop only if this handle created
/// it and [`SharedMemory::unlink`] was not called (or failed) before.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    size: u64,
    name: CString,
    unlink_on_drop: std::sync::atomic::AtomicBool,
}

// SAFETY: the handle owns its mapping and fd; all access to the mapped bytes goes through
// raw-pointer copies and atomics (never references), which are sound from any thread.
unsafe impl Send for SharedMemory {}
// SAFETY: as above; no method hands out references to mapped memory.
unsafe impl Sync for SharedMemory {}

fn display(name: &CStr) -> String {
    name.to_string_lossy().into_owned()
}

impl SharedMemory {
    /// Creates `name` with exactly `size` bytes and permission bits `mode`, and maps it.
    ///
    /// Uses `O_CREAT | O_EXCL` so an existing object (stale or squatted) is never adopted,
    /// then `fchmod` so the process umask cannot change the mode.
    ///
    /// # Errors
    /// [`ShmError::AlreadyExists`] if the name exists; [`ShmError::Os`] for other failures
    /// (the name is unlinked again if creation fails half-way).
    #[doc(alias = "shm_open")]
    pub fn create(name: &CStr, size: usize, mode: u32) -> Result<Self, ShmError> {
        Self::create_with(name, size, mode, |_, _| Ok(()))
    }

    /// [`SharedMemory::create`] that runs `before_name` on the mapped object (to initialise
    /// it, and to tell a guardian the object's [`Identity`](super::Identity)) *before* the
    /// name appears: the object is made as an unnamed file (`O_TMPFILE`) and linked to its
    /// name last, so no other process ever opens it half-made, and a creator that dies
    /// before the link leaves nothing. Where `/dev/shm` has no `O_TMPFILE`, falls back to
    /// `shm_open(O_EXCL)` and runs `before_name` just after.
    ///
    /// # Errors
    /// As [`SharedMemory::create`]; `before_name`'s error as [`ShmError::Os`] (`before_name`).
    pub fn create_with(
        name: &CStr,
        size: usize,
        mode: u32,
        before_name: impl FnOnce(&Self, &super::Identity) -> std::io::Result<()>,
    ) -> Result<Self, ShmError> {
        let os = |op, source| ShmError::Os {
            op,
            name: display(name),
            source,
        };
        let path = super::dev_shm_path(name, false);
        let hook_err = |e: std::io::Error| {
            os(
                "before_name",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        };
        match super::unnamed_file(mode) {
            Ok(fd) => {
                nix::unistd::ftruncate(&fd, size as i64).map_err(|e| os("ftruncate", e))?;
                let identity = super::identity(&fd, path.clone()).map_err(|e| os("fstat", e))?;
                let link_fd = fd.try_clone().map_err(&hook_err)?;
                let shm = Self::map(fd, name, size, size as u64, false)?;
                before_name(&shm, &identity).map_err(hook_err)?;
                super::link_unnamed(&link_fd, &path).map_err(|e| match e {
                    Errno::EEXIST => ShmError::AlreadyExists { name: display(name) },
                    e => os("linkat", e),
                })?;
                shm.unlink_on_drop
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(shm)
            }
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {
                let shm = Self::create_named(name, size, mode)?;
                let identity = super::identity(&shm.fd, path).map_err(|e| os("fstat", e))?;
                before_name(&shm, &identity).map_err(hook_err)?;
                Ok(shm)
            }
            Err(e) => Err(os("open(O_TMPFILE)", e)),
        }
    }

    /// The fallback of [`SharedMemory::create_with`]: `shm_open(O_CREAT | O_EXCL)`.
    fn create_named(name: &CStr, size: usize, mode: u32) -> Result<Self, ShmError> {
        let os = |op, source| ShmError::Os {
            op,
            name: display(name),
            source,
        };
        let fd = mman::shm_open(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| match e {
            Errno::EEXIST => ShmError::AlreadyExists { name: display(name) },
            e => os("shm_open", e),
        })?;
        let result = (|| {
            stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode as _)).map_err(|e| os("fchmod", e))?;
            nix::unistd::ftruncate(&fd, size as i64).map_err(|e| os("ftruncate", e))?;
            Self::map(fd, name, size, size as u64, true)
        })();
        if result.is_err() {
            let _ = mman::shm_unlink(name);
        }
        result
    }

    /// Opens an existing object, vets it with `check` (owner, mode, size via `fstat`), and maps
    /// `min(size, check.map_at_most)` bytes.
    ///
    /// # Errors
    /// [`ShmError::NotFound`], [`ShmError::WrongOwner`], [`ShmError::WrongMode`],
    /// [`ShmError::TooSmall`], or [`ShmError::Os`].
    #[doc(alias = "shm_open")]
    pub fn open(name: &CStr, check: OpenCheck) -> Result<Self, ShmError> {
        let os = |op, source| ShmError::Os {
            op,
            name: display(name),
            source,
        };
        let fd = open_existing(name, OFlag::O_RDWR)?;
        let st = stat::fstat(fd.as_raw_fd()).map_err(|e| os("fstat", e))?;
        let me = nix::unistd::geteuid().as_raw();
        if check.same_owner && st.st_uid != me {
            return Err(ShmError::WrongOwner {
                name: display(name),
                owner: st.st_uid,
                me,
            });
        }
        let mode = st.st_mode & 0o7777;
        if mode & !check.max_mode != 0 {
            return Err(ShmError::WrongMode {
                name: display(name),
                mode,
                allowed: check.max_mode,
            });
        }
        let size = st.st_size.max(0) as u64;
        if size < check.min_size as u64 {
            return Err(ShmError::TooSmall {
                name: display(name),
                size,
                needed: check.min_size as u64,
            });
        }
        let len = (size.min(check.map_at_most as u64)) as usize;
        Self::map(fd, name, len, size, false)
    }

    fn map(fd: OwnedFd, name: &CStr, len: usize, size: u64, created: bool) -> Result<Self, ShmError> {
        let nz = NonZeroUsize::new(len).ok_or(ShmError::TooSmall {
            name: display(name),
            size,
            needed: 1,
        })?;
        // SAFETY: a fresh shared mapping of `len` bytes of `fd`, which is at least `len` bytes
        // long (created with that size, or checked with fstat). No address hint, so nothing
        // existing is replaced. The pointer is only used through copies and atomics.
        let base = unsafe {
            mman::mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }
        .map_err(|e| ShmError::Os {
            op: "mmap",
            name: display(name),
            source: e,
        })?;
        Ok(Self {
            fd,
            base: base.cast(),
            len,
            size,
            name: name.to_owned(),
            unlink_on_drop: created.into(),
        })
    }

    /// Removes the name; the object lives on until every handle is gone. Idempotent: a name
    /// already gone is not an error.
    ///
    /// # Errors
    /// [`ShmError::Os`] when `shm_unlink` fails for another reason than `ENOENT`.
    #[doc(alias = "shm_unlink")]
    pub fn unlink(&self) -> Result<(), ShmError> {
        self.unlink_on_drop
            .store(false, std::sync::atomic::Ordering::SeqCst);
        unlink(&self.name).map(|_| ())
    }

    /// The object's name.
    pub fn name(&self) -> &CStr {
        &self.name
    }
    /// Bytes mapped.
    pub fn mapped_len(&self) -> usize {
        self.len
    }
    /// The object's size when it was opened (may exceed the mapped length).
    pub fn object_size(&self) -> u64 {
        self.size
    }
    /// The object's inode (0 if `fstat` fails), to find the processes that map it.
    pub fn inode(&self) -> u64 {
        stat::fstat(self.fd.as_raw_fd()).map_or(0, |st| st.st_ino)
    }

    /// The file descriptor (for `flock` and `fstat`).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Tries to take the exclusive `flock` on this handle's open file description without
    /// blocking; `Ok(false)` if another holder has it. The kernel releases it when the
    /// holder closes the object or dies, so a crashed holder never blocks the others.
    ///
    /// # Errors
    /// [`ShmError::Os`] for failures other than "held elsewhere".
    #[doc(alias = "flock")]
    pub fn try_lock(&self) -> Result<bool, ShmError> {
        #[allow(deprecated)] // nix 0.29 deprecates `flock` in favour of `Flock`, which owns the fd.
        match nix::fcntl::flock(self.fd.as_raw_fd(), nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(()) => Ok(true),
            Err(Errno::EWOULDBLOCK) => Ok(false),
            Err(e) => Err(ShmError::Os {
                op: "flock",
                name: display(&self.name),
                source: e,
            }),
        }
    }

    /// Releases the lock taken with [`SharedMemory::try_lock`] (no-op if not held).
    pub fn unlock(&self) {
        #[allow(deprecated)]
        let _ = nix::fcntl::flock(self.fd.as_raw_fd(), nix::fcntl::FlockArg::Unlock);
    }

    fn in_bounds(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// Copies `dst.len()` bytes at `offset` out of the mapping. Out-of-range reads fill `dst`
    /// with zeros instead (a seed-size object has no extension page).
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        if !self.in_bounds(offset, dst.len()) {
            dst.fill(0);
            return;
        }
        // SAFETY: [offset, offset + len) lies inside the live mapping (checked above), which
        // stays mapped while `&self` lives; `dst` is private memory.
        unsafe { copy_from_shared(self.base.as_ptr().add(offset), dst) }
    }

    /// Copies `src` into the mapping at `offset`. Out-of-range writes are dropped.
    pub fn write(&self, offset: usize, src: &[u8]) {
        if !self.in_bounds(offset, src.len()) {
            return;
        }
        // SAFETY: the destination range is inside the live, writable mapping (checked above);
        // `src` is private memory.
        unsafe { copy_to_shared(src, self.base.as_ptr().add(offset)) }
    }

    /// Sets `len` bytes at `offset` to `byte`. Out-of-range fills are dropped.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        if !self.in_bounds(offset, len) {
            return;
        }
        let block = [byte; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(block.len());
            // SAFETY: [offset + done, offset + done + n) is inside the live, writable mapping
            // (the whole range was checked above).
            unsafe { copy_to_shared(&block[..n], self.base.as_ptr().add(offset + done)) };
            done += n;
        }
    }

    /// The 32-bit word at `offset` as an atomic, or `None` if out of range or misaligned.
    pub fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if !self.in_bounds(offset, 4) || offset % 4 != 0 {
            return None;
        }
        // SAFETY: in bounds and 4-aligned (the mapping is page-aligned); the memory lives as
        // long as `&self`, and is only ever accessed atomically at this offset by this crate.
        Some(unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast()) })
    }

    /// The 64-bit word at `offset` as an atomic, or `None` if out of range or misaligned.
    pub fn atomic_u64(&self, offset: usize) -> Option<&AtomicU64> {
        if !self.in_bounds(offset, 8) || offset % 8 != 0 {
            return None;
        }
        // SAFETY: as for `atomic_u32`, with 8-byte alignment.
        Some(unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast()) })
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping made in `map`, unmapped only here; no
        // references into it exist (see the module's safety model).
        let _ = unsafe { mman::munmap(self.base.cast(), self.len) };
        if *self.unlink_on_drop.get_mut() {
            let _ = unlink(&self.name);
        }
    }
}

/// `shm_open` of an existing object with `access` (`O_RDWR` or `O_RDONLY`), close-on-exec.
fn open_existing(name: &CStr, access: OFlag) -> Result<OwnedFd, ShmError> {
    mman::shm_open(name, access | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| match e {
        Errno::ENOENT => ShmError::NotFound { name: display(name) },
        e => ShmError::Os {
            op: "shm_open",
            name: display(name),
            source: e,
        },
    })
}

/// Reads `buf.len()` bytes at `offset` of the object `name` with `pread`, without mapping it:
/// for objects that may belong to someone else (a squatter toggling their size cannot make a
/// read of a file fault, as a mapping would). Returns how many bytes were read (fewer at the
/// end of the object).
///
/// # Errors
/// [`ShmError::NotFound`], or [`ShmError::Os`] for `shm_open` / `pread`.
pub fn read_unmapped(name: &CStr, offset: u64, buf: &mut [u8]) -> Result<usize, ShmError> {
    let fd = open_existing(name, OFlag::O_RDONLY)?;
    let mut done = 0;
    while done < buf.len() {
        match nix::sys::uio::pread(&fd, &mut buf[done..], (offset + done as u64) as i64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(ShmError::Os {
                    op: "pread",
                    name: display(name),
                    source: e,
                })
            }
        }
    }
    Ok(done)
}

/// Removes a shared-memory name. Returns `false` if it did not exist.
///
/// # Errors
/// [`ShmError::Os`] when `shm_unlink` fails for another reason than `ENOENT`.
#[doc(alias = "shm_unlink")]
pub fn unlink(name: &CStr) -> Result<bool, ShmError> {
    match mman::shm_unlink(name) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(ShmError::Os {
            op: "shm_unlink",
            name: display(name),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The atomic copies in and out of the mapping move exactly the bytes asked for, at every
    /// alignment of the shared address and every length across the 8-byte blocks.
    #[test]
    fn copies_in_and_out_are_exact_at_every_alignment() {
        let name = CString::new(format!("/lst_unit_copy_{}", std::process::id())).unwrap();
        let shm = SharedMemory::create(&name, 4096, 0o600).unwrap();
        let pattern: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for offset in 0..17 {
            for len in 0..41 {
                shm.fill(0, 256, 0xEE);
                shm.write(offset, &pattern[..len]);
                let mut back = vec![0u8; 256];
                shm.read(0, &mut back);
                assert!(
                    back[..offset].iter().all(|&b| b == 0xEE),
                    "before, {offset}/{len}"
                );
                assert_eq!(&back[offset..offset + len], &pattern[..len], "{offset}/{len}");
                assert!(
                    back[offset + len..].iter().all(|&b| b == 0xEE),
                    "after, {offset}/{len}"
                );
                let mut exact = vec![0u8; len];
                shm.read(offset, &mut exact);
                assert_eq!(exact, &pattern[..len]);
            }
        }
        shm.fill(3, 1000, 0x5A);
        let mut back = vec![0u8; 1010];
        shm.read(0, &mut back);
        assert!(back[3..1003].iter().all(|&b| b == 0x5A) && back[1003] != 0x5A);
    }
}
