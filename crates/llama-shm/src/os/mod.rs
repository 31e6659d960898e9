//! Safe handles over the POSIX objects the protocol runs on.
//!
//! This is the only place in the crate that says `unsafe`: each submodule owns the raw calls
//! for one kind of OS object and hands out owned types that clean up on drop and typed errors.
//! Everything above `os` sees [`SharedMemory`], [`NamedSemaphore`] and [`process`] helpers.

pub mod process;
pub mod sem;
pub mod shm;

pub use sem::NamedSemaphore;
pub use shm::SharedMemory;

use std::ffi::CStr;

/// The path under `/dev/shm` that backs a POSIX IPC name (glibc: `/name` → `/dev/shm/name`,
/// semaphores `/name` → `/dev/shm/sem.name`).
pub(crate) fn dev_shm_path(name: &CStr, semaphore: bool) -> std::path::PathBuf {
    let bare = name.to_string_lossy();
    let bare = bare.trim_start_matches('/');
    if semaphore {
        format!("/dev/shm/sem.{bare}").into()
    } else {
        format!("/dev/shm/{bare}").into()
    }
}
