//! Inspecting `/dev/shm`: the names of a prefix, this process's own, and a process's mappings.

use llama_shm::internals::wire::names::Prefix;

/// Entries of `/dev/shm` that belong to `prefix` (object or semaphores).
pub fn shm_entries(prefix: &Prefix) -> Vec<String> {
    let p = prefix.as_str();
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{p}_")) || n.starts_with(&format!("sem.{p}_")))
        .collect()
}

/// Entries of `/dev/shm` of any llama-shm test or spawned worker of this process.
pub fn own_entries() -> Vec<String> {
    entries_of(std::process::id())
}

/// Names in /dev/shm that contain `_<pid>_` (the objects a process with that pid created).
pub fn entries_of(pid: u32) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&format!("_{pid}_")))
        .collect()
}
