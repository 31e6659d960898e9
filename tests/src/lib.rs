//! Shared helpers for the integration suites: where the worker binary is, unique prefixes,
//! leak checks on `/dev/shm`, and a raw seed-style client and worker written against the
//! seed's offsets (no llama-shm code on the wire side), for the compatibility suite.

pub mod seed;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use llama_shm::names::Prefix;

/// The worker binary built with this workspace.
pub fn worker_path() -> PathBuf {
    llama_shm::client::default_worker_path()
        .expect("llama-shm-worker not found next to the test binary; build the workspace first")
}

/// A prefix unique to this test process and `tag`.
pub fn unique_prefix(tag: &str) -> Prefix {
    let mut b = [0u8; 4];
    getrandom(&mut b);
    Prefix::new(&format!(
        "lst_{tag}_{}_{:08x}",
        std::process::id(),
        u32::from_ne_bytes(b)
    ))
    .unwrap()
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(buf)
        .unwrap();
}

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
    let pid = std::process::id();
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&format!("_{pid}_")))
        .collect()
}

/// Waits up to `limit` for `cond`, polling every millisecond; returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether a process with this pid exists (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    llama_shm::os::process::pid_alive(pid)
}

/// Median and maximum of a sample.
pub fn p50_max(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], *samples.last().unwrap())
}

/// A child process that is SIGKILLed and reaped when dropped (so a failing test does not
/// leave a worker, and its objects, behind).
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }
    /// Takes the child out of the guard.
    pub fn take(mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until the standalone worker `pid` has created (or re-created) the objects of
/// `prefix` and recorded itself as their creator.
pub fn wait_served_by(prefix: &Prefix, pid: u32) -> bool {
    eventually(Duration::from_secs(10), || {
        llama_shm::objects::creator_pid(prefix) == Some(pid) && shm_entries(prefix).len() == 4
    })
}

/// The `llama-shm` CLI binary built with this workspace (next to the worker).
pub fn cli_path() -> PathBuf {
    worker_path().with_file_name("llama-shm")
}
