//! POSIX named semaphores (`sem_open` and friends through libc; nix has no wrapper).
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

/// An open named semaphore. Closed on drop; the name is unlinked on drop only if this handle
/// created it and it was not unlinked explicitly before.
#[derive(Debug)]
pub struct NamedSemaphore {
    sem: NonNull<libc::sem_t>,
    name: CString,
    unlink_on_drop: std::sync::atomic::AtomicBool,
}

// SAFETY: POSIX semaphore operations are thread-safe; the handle owns the `sem_t*` returned
// by `sem_open` until `sem_close` in drop.
unsafe impl Send for NamedSemaphore {}
// SAFETY: as above: `sem_post`, `sem_clockwait`, `sem_trywait` and `sem_getvalue` may be
// called concurrently on one semaphore.
unsafe impl Sync for NamedSemaphore {}

fn display(name: &CStr) -> String {
    name.to_string_lossy().into_owned()
}

impl NamedSemaphore {
    /// Creates `name` with value `initial` and permission bits `mode` (`O_CREAT | O_EXCL`;
    /// the mode is then set exactly, past the umask).
    ///
    /// # Errors
    /// [`SemError::AlreadyExists`] or [`SemError::Os`].
    #[doc(alias = "sem_open")]
    pub fn create(name: &CStr, mode: u32, initial: u32) -> Result<Self, SemError> {
        // SAFETY: `name` is a valid C string; with O_CREAT sem_open reads two more variadic
        // arguments, a mode_t (passed as c_uint after promotion) and an unsigned value.
        let sem = unsafe {
            libc::sem_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL,
                0o600 as libc::c_uint,
                initial as libc::c_uint,
            )
        };
        let sem = Self::check(sem, name, "sem_open")?;
        let handle = Self {
            sem,
            name: name.to_owned(),
            unlink_on_drop: true.into(),
        };
        // glibc backs the semaphore with /dev/shm/sem.<name>; set the mode past the umask.
        let path = super::dev_shm_path(name, true);
        if let Err(e) = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)) {
            return Err(SemError::Os {
                op: "chmod",
                name: display(name),
                source: e,
            });
        }
        Ok(handle)
    }

    /// Opens an existing semaphore after checking that its backing file belongs to this user
    /// and grants no more than `max_mode` (pass `0o7777` to skip the mode check).
    ///
    /// # Errors
    /// [`SemError::NotFound`], [`SemError::Untrusted`] or [`SemError::Os`].
    #[doc(alias = "sem_open")]
    pub fn open(name: &CStr, max_mode: u32) -> Result<Self, SemError> {
        use std::os::unix::fs::MetadataExt;
        let path = super::dev_shm_path(name, true);
        match std::fs::metadata(&path) {
            Ok(md) => {
                let me = nix::unistd::geteuid().as_raw();
                let mode = md.mode() & 0o7777;
                if md.uid() != me || mode & !max_mode != 0 {
                    return Err(SemError::Untrusted {
                        name: display(name),
                        owner: md.uid(),
                        mode,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SemError::NotFound { name: display(name) })
            }
            Err(e) => {
                return Err(SemError::Os {
                    op: "stat",
                    name: display(name),
                    source: e,
                })
            }
        }
        // SAFETY: `name` is a valid C string; without O_CREAT no variadic arguments are read.
        let sem = unsafe { libc::sem_open(name.as_ptr(), 0) };
        let sem = Self::check(sem, name, "sem_open")?;
        Ok(Self {
            sem,
            name: name.to_owned(),
            unlink_on_drop: false.into(),
        })
    }

    fn check(sem: *mut libc::sem_t, name: &CStr, op: &'static str) -> Result<NonNull<libc::sem_t>, SemError> {
        if sem == libc::SEM_FAILED {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EEXIST) => SemError::AlreadyExists { name: display(name) },
                Some(libc::ENOENT) => SemError::NotFound { name: display(name) },
                _ => SemError::Os {
                    op,
                    name: display(name),
                    source: e,
                },
            });
        }
        NonNull::new(sem).ok_or_else(|| SemError::Os {
            op,
            name: display(name),
            source: io::Error::other("sem_open returned NULL"),
        })
    }

    /// Increments the semaphore, waking one waiter.
    ///
    /// # Errors
    /// `EOVERFLOW` when the value is at `SEM_VALUE_MAX` (a peer posting in a loop).
    #[doc(alias = "sem_post")]
    pub fn post(&self) -> io::Result<()> {
        // SAFETY: `self.sem` is a live semaphore from sem_open, closed only in drop.
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
        // SAFETY: `self.sem` came from sem_open and is closed exactly once, here.
        unsafe { libc::sem_close(self.sem.as_ptr()) };
        if *self.unlink_on_drop.get_mut() {
            let _ = unlink(&self.name);
        }
    }
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
