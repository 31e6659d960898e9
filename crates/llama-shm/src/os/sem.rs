//! POSIX named semaphores, as glibc makes them (a `sem_t` in a file `/dev/shm/sem.<name>`,
//! mapped shared): created in an unnamed file and linked to the name once initialised, opened
//! by descriptor and checked on that descriptor; posted and waited on with libc's `sem_*` (nix
//! has no wrapper). Interoperable with any `sem_open` of the same name.
//!
//! Waits always carry a deadline on `CLOCK_MONOTONIC` (`sem_clockwait`, glibc ≥ 2.30), so a
//! wall-clock jump can neither shorten nor stretch them, and `EINTR` is retried with the
//! remaining time recomputed from the same deadline.

use std::ffi::{CStr, CString};
use std::io;
use std::ptr::NonNull;
use std::time::Instant;

/// What can go wrong with a named semaphore. Every variant names the semaphore.
#[derive(Debug, thiserror::Error)]
pub enum SemError {
    /// The name exists already (creation uses `O_EXCL`).
    #[error("semaphore {name} already exists")]
    AlreadyExists {
        /// The semaphore's name.
        name: String,
    },
    /// The name does not exist.
    #[error("semaphore {name} does not exist")]
    NotFound {
        /// The semaphore's name.
        name: String,
    },
    /// The semaphore's backing file belongs to another user or is too widely accessible.
    #[error("semaphore {name} is owned by uid {owner} with mode {mode:04o}; refusing to use it")]
    Untrusted {
        /// The semaphore's name.
        name: String,
        /// Owner of `/dev/shm/sem.<name>`.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// A system call failed.
    #[error("{op} on semaphore {name} failed: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// The semaphore's name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

extern "C" {
    // glibc ≥ 2.30; the libc crate does not declare it.
    fn sem_clockwait(
        sem: *mut libc::sem_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// An open named semaphore. Unmapped on drop; the name is unlinked on drop only if this handle
/// created it and it was not unlinked explicitly before.
#[derive(Debug)]
pub struct NamedSemaphore {
    sem: NonNull<libc::sem_t>,
    name: CString,
    unlink_on_drop: std::sync::atomic::AtomicBool,
}

// SAFETY: POSIX semaphore operations are thread-safe; the handle owns the mapping of its
// `sem_t` until `munmap` in drop.
unsafe impl Send for NamedSemaphore {}
// SAFETY: as above: `sem_post`, `sem_clockwait`, `sem_trywait` and `sem_getvalue` may be
// called concurrently on one semaphore.
unsafe impl Sync for NamedSemaphore {}

fn display(name: &CStr) -> String {
    name.to_string_lossy().into_owned()
}

impl NamedSemaphore {
    /// Creates `name` with value `initial` and permission bits `mode` (the name must not
    /// exist; the mode is set exactly, past the umask).
    ///
    /// # Errors
    /// [`SemError::AlreadyExists`] or [`SemError::Os`].
    #[doc(alias = "sem_open")]
    pub fn create(name: &CStr, mode: u32, initial: u32) -> Result<Self, SemError> {
        Self::create_with(name, mode, initial, |_| Ok(()))
    }

    /// [`NamedSemaphore::create`] that runs `before_name` with the semaphore's
    /// [`Identity`](super::Identity) before its name appears. Like glibc's `sem_open`, the
    /// semaphore is made in an unnamed file (`O_TMPFILE` in `/dev/shm`, initialised with
    /// `sem_init(pshared)`) and linked to `sem.<name>` last, so that nobody opens it half
    /// made and a creator that dies before the link leaves nothing; unlike `sem_open`, it
    /// tells the caller what it is about to name. Any `sem_open` of the name (a seed-era
    /// peer) sees an ordinary named semaphore.
    ///
    /// # Errors
    /// [`SemError::AlreadyExists`], `before_name`'s error, or [`SemError::Os`].
    pub fn create_with(
        name: &CStr,
        mode: u32,
        initial: u32,
        before_name: impl FnOnce(&super::Identity) -> io::Result<()>,
    ) -> Result<Self, SemError> {
        let os = |op: &'static str, source: io::Error| SemError::Os {
            op,
            name: display(name),
            source,
        };
        let path = super::dev_shm_path(name, true);
        let fd = super::unnamed_file(mode).map_err(|e| os("open(O_TMPFILE)", e.into()))?;
        nix::unistd::ftruncate(&fd, SEM_SIZE as i64).map_err(|e| os("ftruncate", e.into()))?;
        let sem = map_sem(&fd).map_err(|e| os("mmap", e))?;
        let handle = Self {
            sem,
            name: name.to_owned(),
            unlink_on_drop: false.into(),
        };
        // SAFETY: `sem` is a fresh shared mapping of SEM_SIZE bytes that nothing else can
        // reach yet (the file has no name); pshared = 1 makes it a process-shared semaphore,
        // as sem_open would.
        if unsafe { libc::sem_init(handle.sem.as_ptr(), 1, initial as libc::c_uint) } != 0 {
            return Err(os("sem_init", io::Error::last_os_error()));
        }
        let identity = super::identity(&fd, path.clone()).map_err(|e| os("fstat", e.into()))?;
        before_name(&identity).map_err(|e| os("before_name", e))?;
        super::link_unnamed(&fd, &path).map_err(|e| match e {
            nix::errno::Errno::EEXIST => SemError::AlreadyExists { name: display(name) },
            e => os("linkat", e.into()),
        })?;
        handle
            .unlink_on_drop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(handle)
    }

    /// Opens an existing semaphore after checking that its backing file is a regular file
    /// of the right size, belongs to this user and grants no more than `max_mode` (pass
    /// `0o7777` to skip the mode check). What is checked is what is used: the file is opened
    /// once (`O_NOFOLLOW`), checked with `fstat` on that descriptor and mapped from it, so a
    /// swap of the name between the check and the open cannot fool it.
    ///
    /// # Errors
    /// [`SemError::NotFound`], [`SemError::Untrusted`] or [`SemError::Os`].
    #[doc(alias = "sem_open")]
    pub fn open(name: &CStr, max_mode: u32) -> Result<Self, SemError> {
        let os = |op: &'static str, source: io::Error| SemError::Os {
            op,
            name: display(name),
            source,
        };
        let path = super::dev_shm_path(name, true);
        let fd = match nix::fcntl::open(
            &path,
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            // SAFETY: `open` just returned this descriptor, and nothing else owns it.
            Ok(raw) => unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) },
            Err(nix::errno::Errno::ENOENT) => return Err(SemError::NotFound { name: display(name) }),
            Err(e) => return Err(os("open", e.into())),
        };
        let st =
            nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd)).map_err(|e| os("fstat", e.into()))?;
        let me = nix::unistd::geteuid().as_raw();
        let mode = st.st_mode & 0o7777;
        let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        if !regular || st.st_uid != me || mode & !max_mode != 0 {
            return Err(SemError::Untrusted {
                name: display(name),
                owner: st.st_uid,
                mode,
            });
        }
        if (st.st_size as u64) < SEM_SIZE as u64 {
            return Err(os(
                "fstat",
                io::Error::other(format!(
                    "the semaphore file has {} bytes, not {SEM_SIZE}",
                    st.st_size
                )),
            ));
        }
        let sem = map_sem(&fd).map_err(|e| os("mmap", e))?;
        Ok(Self {
            sem,
            name: name.to_owned(),
            unlink_on_drop: false.into(),
        })
    }
    /// Increments the semaphore, waking one waiter.
    ///
    /// # Errors
    /// `EOVERFLOW` when the value is at `SEM_VALUE_MAX` (a peer posting in a loop).
    #[doc(alias = "sem_post")]
    pub fn post(&self) -> io::Result<()> {
        // SAFETY: `self.sem` is a live, initialised semaphore mapping (from `create_with` or
        // `open`), unmapped only in drop.
        if unsafe { libc::sem_post(self.sem.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Decrements the semaphore, waiting until `deadline` at the latest (`None`: no limit —
    /// the crate never passes `None` for a wait on a peer). Returns `false` on timeout.
    ///
    /// # Errors
    /// Any error other than `ETIMEDOUT` and `EINTR` (which is retried).
    #[doc(alias = "sem_clockwait")]
    pub fn wait_until(&self, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            let rc = match deadline {
                None => {
                    // SAFETY: live semaphore (see `post`).
                    unsafe { libc::sem_wait(self.sem.as_ptr()) }
                }
                Some(deadline) => {
                    let ts = monotonic_timespec(deadline);
                    // SAFETY: live semaphore; `ts` is a valid timespec on the stack.
                    unsafe { sem_clockwait(self.sem.as_ptr(), libc::CLOCK_MONOTONIC, &ts) }
                }
            };
            if rc == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ETIMEDOUT) => return Ok(false),
                _ => return Err(e),
            }
        }
    }

    /// Decrements the semaphore if it is positive; never blocks. Returns whether it did.
    ///
    /// # Errors
    /// Any error other than `EAGAIN` and `EINTR`.
    #[doc(alias = "sem_trywait")]
    pub fn try_wait(&self) -> io::Result<bool> {
        loop {
            // SAFETY: live semaphore (see `post`).
            if unsafe { libc::sem_trywait(self.sem.as_ptr()) } == 0 {
                return Ok(true);
            }
            // errno read directly: this is the spinning hot path.
            match nix::errno::Errno::last() {
                nix::errno::Errno::EINTR => continue,
                nix::errno::Errno::EAGAIN => return Ok(false),
                e => return Err(e.into()),
            }
        }
    }

    /// The current value (for tests and diagnostics; stale as soon as it returns).
    ///
    /// # Errors
    /// The OS error of `sem_getvalue`.
    #[doc(alias = "sem_getvalue")]
    pub fn value(&self) -> io::Result<i32> {
        let mut v: libc::c_int = 0;
        // SAFETY: live semaphore; `v` is a valid out-pointer.
        if unsafe { libc::sem_getvalue(self.sem.as_ptr(), &mut v) } == 0 {
            Ok(v)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Removes the name (idempotent); open handles keep working.
    ///
    /// # Errors
    /// [`SemError::Os`] for failures other than `ENOENT`.
    pub fn unlink(&self) -> Result<(), SemError> {
        self.unlink_on_drop
            .store(false, std::sync::atomic::Ordering::SeqCst);
        unlink(&self.name).map(|_| ())
    }

    /// The semaphore's name.
    pub fn name(&self) -> &CStr {
        &self.name
    }
}

impl Drop for NamedSemaphore {
    fn drop(&mut self) {
        // SAFETY: `self.sem` is the mapping made by `map_sem`, unmapped exactly once, here;
        // no reference into it outlives the handle.
        let _ = unsafe { nix::sys::mman::munmap(self.sem.cast(), SEM_SIZE) };
        if *self.unlink_on_drop.get_mut() {
            let _ = unlink(&self.name);
        }
    }
}

/// Bytes of a `sem_t` (the size of glibc's semaphore files).
const SEM_SIZE: usize = std::mem::size_of::<libc::sem_t>();

/// Maps the semaphore file `fd` (at least [`SEM_SIZE`] bytes), as `sem_open` does.
fn map_sem(fd: &std::os::fd::OwnedFd) -> io::Result<NonNull<libc::sem_t>> {
    use nix::sys::mman::{MapFlags, ProtFlags};
    let len = std::num::NonZeroUsize::new(SEM_SIZE).expect("sem_t is not empty");
    // SAFETY: a fresh shared mapping of SEM_SIZE bytes of a file at least that long (created
    // with that size, or checked with fstat); no address hint, so nothing is replaced. The
    // pointer is used only with the sem_* calls, which are made for shared sem_t memory.
    let p = unsafe {
        nix::sys::mman::mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }?;
    Ok(p.cast())
}

/// Removes a semaphore name. Returns `false` if it did not exist.
///
/// # Errors
/// [`SemError::Os`] for failures other than `ENOENT`.
#[doc(alias = "sem_unlink")]
pub fn unlink(name: &CStr) -> Result<bool, SemError> {
    // SAFETY: `name` is a valid C string.
    if unsafe { libc::sem_unlink(name.as_ptr()) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(false),
        _ => Err(SemError::Os {
            op: "sem_unlink",
            name: display(name),
            source: e,
        }),
    }
}

/// `deadline` as an absolute `CLOCK_MONOTONIC` time (the clock `Instant` uses on Linux).
fn monotonic_timespec(deadline: Instant) -> libc::timespec {
    let now = Instant::now();
    let remaining = deadline.saturating_duration_since(now);
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer; CLOCK_MONOTONIC cannot fail on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mut sec = ts.tv_sec.saturating_add(remaining.as_secs() as libc::time_t);
    let mut nsec = ts.tv_nsec + remaining.subsec_nanos() as libc::c_long;
    if nsec >= 1_000_000_000 {
        sec = sec.saturating_add(1);
        nsec -= 1_000_000_000;
    }
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}
