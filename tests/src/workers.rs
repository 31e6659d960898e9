//! Workers under test: where the binaries are, unique prefixes, a standalone echo worker,
//! and ending one (politely, or with its guardian).

use std::path::PathBuf;
use std::time::Duration;

use llama_shm::internals::wire::names::Prefix;

use crate::processes::{alive, eventually};
use crate::shm::shm_entries;

/// The worker binary built with this workspace.
pub fn worker_path() -> PathBuf {
    llama_shm::internals::client::default_worker_path()
        .expect("llama-shm-worker not found next to the test binary; build the workspace first")
}

/// The echo-only worker binary built with this workspace (next to the worker).
pub fn echo_worker_path() -> PathBuf {
    llama_shm::internals::os::locate::echo_worker_binary(&[])
        .expect("llama-shm-echo-worker not found next to the test binary; build the workspace first")
}

/// The `llama-shm` CLI binary built with this workspace (next to the worker).
pub fn cli_path() -> PathBuf {
    worker_path().with_file_name("llama-shm")
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

/// A child process stopped and reaped when dropped, so a failing test leaves neither a worker
/// nor its objects behind: SIGTERM first (a worker then removes its names itself), SIGKILL
/// after 2 s, and finally the names of `prefix` (if set) are removed if they are still there.
pub struct ChildGuard(pub Option<std::process::Child>, pub Option<Prefix>);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> Self {
        Self(Some(child), None)
    }
    /// Guards `child`, a worker serving `prefix`.
    pub fn worker(child: std::process::Child, prefix: &Prefix) -> Self {
        Self(Some(child), Some(prefix.clone()))
    }
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }
    /// Takes the child out of the guard; the caller now owns its cleanup (and its names').
    pub fn take(mut self) -> std::process::Child {
        self.1 = None;
        self.0.take().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if !eventually(Duration::from_secs(2), || matches!(c.try_wait(), Ok(Some(_)))) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(prefix) = &self.1 {
            let _ = llama_shm::internals::objects::unlink_prefix(prefix);
        }
    }
}

/// Removes the names of a prefix when dropped: for tests that leave names behind on purpose
/// (a SIGKILLed worker and guardian), so a failing assertion does not leave them for the
/// next test (or the suite's final check of `/dev/shm`).
pub struct UnlinkOnDrop(pub Prefix);

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        let _ = llama_shm::internals::objects::unlink_prefix(&self.0);
    }
}

/// How many names a standalone worker creates: the seed's four and the seed streaming
/// service's `chunk_ready`.
pub const STANDALONE_NAMES: usize = 5;

/// Starts a standalone echo worker on `prefix` (plus `extra` arguments) and waits until it
/// has created its objects.
pub fn standalone_echo(prefix: &Prefix, extra: &[&str]) -> ChildGuard {
    let child = ChildGuard::worker(
        std::process::Command::new(worker_path())
            .args(["--engine", "echo", "--prefix", prefix.as_str()])
            .args(extra)
            // LST_WORKER_STDERR=1: the worker's log on the test's stderr (debugging).
            .stderr(if std::env::var_os("LST_WORKER_STDERR").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .spawn()
            .unwrap(),
        prefix,
    );
    assert!(
        wait_served_by(prefix, child.id()),
        "worker did not create its objects"
    );
    child
}

/// Names of a worker of `--parallel n` on `prefix` that exist: slot 0's five (the seed names),
/// four for each of the `n` slots of extended clients.
pub fn slot_names(prefix: &Prefix, n: u32) -> usize {
    (0..=n).map(|k| shm_entries(&prefix.slot(k).unwrap()).len()).sum()
}

/// Starts a standalone batching echo worker of `--parallel n` (plus `extra`) and waits for
/// all its names.
pub fn batching_echo(prefix: &Prefix, n: u32, extra: &[&str]) -> ChildGuard {
    let n_arg = n.to_string();
    let mut args = vec!["--parallel", &n_arg];
    args.extend_from_slice(extra);
    let child = standalone_echo(prefix, &args);
    assert!(
        eventually(Duration::from_secs(10), || slot_names(prefix, n)
            == STANDALONE_NAMES + 4 * n as usize),
        "not all slots' names exist: {}",
        slot_names(prefix, n)
    );
    child
}

/// Sends SIGTERM to a standalone worker and returns its exit code.
///
/// A worker that exits 0 removed its names itself (the callers check that nothing is left);
/// one that does not, had no chance to: its names are removed here, so a failing test does not
/// leave them behind for the next one.
pub fn terminate(child: ChildGuard) -> Option<i32> {
    let prefix = child.1.clone();
    let mut child = child.take();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let code = child.wait().unwrap().code();
    if code != Some(0) {
        if let Some(prefix) = prefix {
            let _ = llama_shm::internals::objects::unlink_prefix(&prefix);
        }
    }
    code
}

/// SIGKILLs a standalone worker serving `prefix` together with its guardian (the guardian
/// first), as the OOM killer or a `kill -9` of everything would: the one way its names stay
/// behind, stale, for `ls`, `clean` and the next worker's reclaim to deal with.
pub fn kill_with_guardian(child: ChildGuard, prefix: &Prefix) {
    if let Some(guardian) = guardian_of(prefix) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(guardian as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        eventually(Duration::from_secs(5), || !alive(guardian));
    }
    let mut child = child.take();
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The guardian a standalone worker serving `prefix` recorded in its extension page.
pub fn guardian_of(prefix: &Prefix) -> Option<u32> {
    llama_shm::internals::objects::page_pids(prefix).and_then(|(_, guardian)| guardian)
}

/// Waits until the standalone worker `pid` has created (or re-created) the objects of
/// `prefix` and recorded itself as their creator.
pub fn wait_served_by(prefix: &Prefix, pid: u32) -> bool {
    eventually(Duration::from_secs(10), || {
        llama_shm::internals::objects::creator_pid(prefix) == Some(pid)
            && shm_entries(prefix).len() == STANDALONE_NAMES
    })
}

/// Pid of the process whose command line contains `--prefix <prefix>` (a spawned worker).
pub fn find_worker(prefix: &Prefix) -> Option<u32> {
    let needle = format!("--prefix\0{}\0", prefix.as_str());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmd).contains(&needle).then_some(pid)
    })
}
