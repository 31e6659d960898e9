//! Shared helpers for the integration suites: where the worker binary is, unique prefixes,
//! leak checks on `/dev/shm`, and a raw seed-style client and worker written against the
//! seed's offsets (no llama-shm code on the wire side), for the compatibility suite.
//! Also scratch directories, bounded runs of child processes and the C# (Mono) compiler for
//! the frontend suites.

pub mod seed;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use llama_shm::internals::wire::names::Prefix;

/// The worker binary built with this workspace.
pub fn worker_path() -> PathBuf {
    llama_shm::internals::client::default_worker_path()
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
    entries_of(std::process::id())
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
    llama_shm::internals::os::process::pid_alive(pid)
}

/// Median and maximum of a sample.
pub fn p50_max(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], *samples.last().unwrap())
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

/// Waits until the standalone worker `pid` has created (or re-created) the objects of
/// `prefix` and recorded itself as their creator.
pub fn wait_served_by(prefix: &Prefix, pid: u32) -> bool {
    eventually(Duration::from_secs(10), || {
        llama_shm::internals::objects::creator_pid(prefix) == Some(pid) && shm_entries(prefix).len() == 4
    })
}

/// The `llama-shm` CLI binary built with this workspace (next to the worker).
pub fn cli_path() -> PathBuf {
    worker_path().with_file_name("llama-shm")
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

/// A small deterministic PRNG (xorshift64*) so campaigns can print and replay their seed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `LST_SEED` if set, else from the clock; prints the seed.
    pub fn from_env(name: &str) -> Self {
        let seed = std::env::var("LST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{name}: LST_SEED={seed}");
        Self(seed.max(1))
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Trials for a campaign: `LST_TRIALS` if set (the long run), else `default`.
pub fn trials(default: usize) -> usize {
    std::env::var("LST_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// p50, p99 and max of a sample.
pub fn p50_p99_max(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let q = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), q(1.0))
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

/// Names in /dev/shm that contain `_<pid>_` (the objects a process with that pid created).
pub fn entries_of(pid: u32) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&format!("_{pid}_")))
        .collect()
}

/// Starts a standalone echo worker on `prefix` (plus `extra` arguments) and waits until it
/// has created its objects.
pub fn standalone_echo(prefix: &Prefix, extra: &[&str]) -> ChildGuard {
    let child = ChildGuard::worker(
        std::process::Command::new(worker_path())
            .args(["--engine", "echo", "--prefix", prefix.as_str()])
            .args(extra)
            .stderr(std::process::Stdio::null())
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

/// The guardian a standalone worker serving `prefix` recorded in its extension page.
pub fn guardian_of(prefix: &Prefix) -> Option<u32> {
    llama_shm::internals::objects::page_pids(prefix).and_then(|(_, guardian)| guardian)
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

/// The directory holding the C ABI library `libllama_shm_ffi.so` (crate `llama-shm-ffi`):
/// `$LLAMA_SHM_FFI_DIR` if set, else the worker binary's directory (`target/release`).
pub fn ffi_lib_dir() -> PathBuf {
    match std::env::var_os("LLAMA_SHM_FFI_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => worker_path()
            .parent()
            .expect("the worker path has a directory")
            .to_path_buf(),
    }
}

/// `libllama_shm_ffi.so` in [`ffi_lib_dir`]; panics (failing the test, never skipping it)
/// with the command that builds it when it is missing.
pub fn ffi_lib() -> PathBuf {
    let lib = ffi_lib_dir().join("libllama_shm_ffi.so");
    assert!(
        lib.exists(),
        "{} not found: build it with `cargo build --release -p llama-shm-ffi` \
         (or point LLAMA_SHM_FFI_DIR at the directory holding it)",
        lib.display()
    );
    lib
}

/// The repository's root directory (the parent of this crate's).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A scratch directory `<temp>/lst_<name>_<pid>`, created empty and removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `<temp>/lst_<name>_<pid>`, first removing whatever an earlier run left there.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lst_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles the C# files `sources` of `frontends/csharp` with Mono's `mcs` (C# 7) into
/// `dir/<exe_name>` and returns that path; panics with the compiler's output if it fails.
pub fn mcs(dir: &Path, sources: &[&str], exe_name: &str) -> PathBuf {
    let exe = dir.join(exe_name);
    let out = Command::new("mcs")
        .current_dir(repo_root().join("frontends/csharp"))
        .arg("-langversion:7")
        .arg(format!("-out:{}", exe.display()))
        .args(sources)
        .output()
        .expect("running mcs");
    assert!(
        out.status.success(),
        "mcs failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
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

/// A Python interpreter that can `import module`: `$LLAMA_SHM_PYTHON`, else `python3` on the
/// PATH, else the system's `/usr/bin/python3` (also when a version manager shadows `python3`).
pub fn python_that_imports(module: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("LLAMA_SHM_PYTHON") {
        Some(p) => vec![p.into()],
        None => vec!["python3".into(), "/usr/bin/python3".into()],
    };
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Whether Mono's C# compiler `mcs` is usable; `false` (after printing why) means skip `test`.
/// Panics instead when `LLAMA_SHM_REQUIRE_MONO` is set (as `ci/test` does).
pub fn mono_available(test: &str) -> bool {
    let mcs = Command::new("mcs")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mcs {
        return true;
    }
    if std::env::var_os("LLAMA_SHM_REQUIRE_MONO").is_some() {
        panic!("{test}: `mcs` (Mono C# compiler) not found but LLAMA_SHM_REQUIRE_MONO is set; run ci/setup --extra");
    }
    eprintln!("{test}: SKIPPED: `mcs` (Mono C# compiler) not found; install it with ci/setup --extra");
    false
}

/// Compiles the C program `source` (a path below the repository root) against the C ABI
/// (`llama_shm.h`, `libllama_shm_ffi`) with warnings as errors into `dir/<exe>`; panics with
/// the compiler's output when it fails. Returns the executable's path.
pub fn compile_c_against_ffi(source: &str, dir: &Path, exe: &str) -> PathBuf {
    let lib = ffi_lib();
    let lib_dir = ffi_lib_dir();
    let out = dir.join(exe);
    let cc = Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-std=c11"])
        .arg(repo_root().join(source))
        .arg("-I")
        .arg(repo_root().join("crates/llama-shm-ffi/include"))
        .arg(format!("-L{}", lib_dir.display()))
        .args(["-lllama_shm_ffi", "-lpthread"])
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("running cc (gcc)");
    assert!(
        cc.status.success(),
        "compiling {source} against {} failed:\n{}{}",
        lib.display(),
        String::from_utf8_lossy(&cc.stdout),
        String::from_utf8_lossy(&cc.stderr)
    );
    out
}
