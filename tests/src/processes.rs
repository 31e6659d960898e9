//! Processes: liveness, waiting with a bound, helper processes re-run from this test binary,
//! bounded runs of tools.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::workers::worker_path;

/// Whether a process with this pid exists (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    llama_shm::internals::os::process::pid_alive(pid)
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

/// Re-runs this test binary as a helper process running the ignored test `test` (with
/// `env_key=1` set), and waits until it prints `<KEY>=<value>` on stdout; returns the child
/// and the value. Used for client processes that a test kills.
// The child is returned to the caller (who kills and reaps it), and reaped here on the early
// exit path; the lint cannot follow the return.
pub fn spawn_helper(test: &str, env_key: &str, key: &str) -> (std::process::Child, String) {
    spawn_helper_with(test, &[(env_key, "1")], key)
}

/// [`spawn_helper`] with the helper's environment variables given (`(name, value)` pairs).
#[allow(clippy::zombie_processes)]
pub fn spawn_helper_with(test: &str, envs: &[(&str, &str)], key: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--include-ignored", "--nocapture"])
        .envs(envs.iter().copied())
        .env("LLAMA_SHM_WORKER", worker_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(helper.stdout.take().unwrap());
    let mut line = String::new();
    let prefix = format!("{key}=");
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = helper.wait();
            panic!("helper {test} ended before printing {key}");
        }
        if let Some(v) = line.trim().strip_prefix(&prefix) {
            return (helper, v.to_string());
        }
    }
}

/// What a child run by [`run_bounded`] did.
pub struct Ran {
    /// How it exited.
    pub status: ExitStatus,
    /// Its pid (to look for the objects it left in `/dev/shm`).
    pub pid: u32,
    /// Its stdout and stderr, interleaved.
    pub out: String,
}

/// Runs `cmd` with stdin closed and stdout and stderr into `dir/output.log`; if it has not
/// finished after `limit`, kills it and fails the test with its output.
pub fn run_bounded(mut cmd: Command, dir: &Path, limit: Duration) -> Ran {
    let log = dir.join("output.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let pid = child.id();
    let status = wait_or_kill(&mut child, limit);
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let Some(status) = status else {
        panic!("{cmd:?} did not finish within {limit:?}; output:\n{out}");
    };
    Ran { status, pid, out }
}

/// Waits up to `limit` for `child` to exit and returns how it did; if it has not exited by
/// then, kills and reaps it and returns `None`.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    let finished = eventually(limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// Pids of this process's children whose command name is `name` (cut to the kernel's 15
/// characters), from `/proc/*/stat`.
pub fn children_named(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let comm: String = name.chars().take(15).collect();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if stat[open + 1..close] == comm && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(me) {
            pids.push(pid);
        }
    }
    pids
}
