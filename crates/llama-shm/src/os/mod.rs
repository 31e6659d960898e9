//! Safe handles over the POSIX objects the protocol runs on, and the rest of the OS glue.
//!
//! This is the only place in the crate that says `unsafe`: `shm`, `sem`, `process` and
//! `signals` each own the raw calls for one kind of OS object and hand out owned types that
//! clean up on drop and typed errors. `control` (the spawn handshake's socket) and `locate`
//! (where the worker binary and the default model are) are plain std code. Everything above
//! `os` sees [`SharedMemory`], [`NamedSemaphore`] and [`process`] helpers.

pub mod control;
pub mod locate;
pub mod process;
pub mod sem;
pub mod shm;
pub mod signals;

pub use sem::NamedSemaphore;
pub use shm::SharedMemory;

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Which object a name is about to be given to: what a guardian records, to remove the name
/// later only if it still names this object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The file under `/dev/shm` the name is.
    pub path: std::path::PathBuf,
    /// Its device.
    pub dev: u64,
    /// Its inode.
    pub ino: u64,
}

/// A new file in `/dev/shm` that has no name yet (`O_TMPFILE`), with permission bits `mode`
/// set exactly (past the umask). Whoever dies while holding it leaves nothing: the name only
/// appears, whole and initialised, with [`link_unnamed`].
///
/// # Errors
/// The errno of `open` (e.g. `EOPNOTSUPP` where the file system has no `O_TMPFILE`) or
/// `fchmod`.
pub(crate) fn unnamed_file(mode: u32) -> Result<OwnedFd, Errno> {
    let raw = nix::fcntl::open(
        "/dev/shm",
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    // SAFETY: `open` just returned this descriptor, and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode as _))?;
    Ok(fd)
}

/// The [`Identity`] `fd` will have once linked at `path`.
pub(crate) fn identity(fd: &OwnedFd, path: std::path::PathBuf) -> Result<Identity, Errno> {
    let st = nix::sys::stat::fstat(fd.as_fd().as_raw_fd())?;
    Ok(Identity {
        path,
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// Gives the unnamed file `fd` the name `path`; `EEXIST` if the name is taken (nothing is
/// replaced: this is the `O_EXCL` of the unnamed-file path).
///
/// # Errors
/// The errno of `linkat`.
pub(crate) fn link_unnamed(fd: &OwnedFd, path: &std::path::Path) -> Result<(), Errno> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::unistd::linkat(
        None,
        std::path::Path::new(&proc_path),
        None,
        path,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
}

/// Where glibc keeps POSIX shared memory and named semaphores.
pub const DEV_SHM: &str = "/dev/shm";
/// What glibc puts before a semaphore's name in [`DEV_SHM`].
pub const SEM_FILE_PREFIX: &str = "sem.";

/// The IPC name (without its `/`) and whether it is a semaphore, of a file name in
/// [`DEV_SHM`] (the inverse of [`dev_shm_path`]).
pub fn ipc_name_of_file(file: &str) -> (&str, bool) {
    match file.strip_prefix(SEM_FILE_PREFIX) {
        Some(name) => (name, true),
        None => (file, false),
    }
}

/// The path under `/dev/shm` that backs a POSIX IPC name (glibc: `/name` → `/dev/shm/name`,
/// semaphores `/name` → `/dev/shm/sem.name`).
pub fn dev_shm_path(name: &CStr, semaphore: bool) -> std::path::PathBuf {
    let bare = name.to_string_lossy();
    let bare = bare.trim_start_matches('/');
    let dir = std::path::Path::new(DEV_SHM);
    if semaphore {
        dir.join(format!("{SEM_FILE_PREFIX}{bare}"))
    } else {
        dir.join(bare)
    }
}
