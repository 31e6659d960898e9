//! Worker processes the benchmark starts itself: a standalone worker on a prefix of its own
//! (stopped with SIGTERM, so it removes its names), and the peak RSS of this process's workers.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use llama_shm::internals::client::{Client, ClientBuilder};
use llama_shm::Prefix;

/// A standalone worker of this benchmark, stopped (SIGTERM: it removes its names) on drop.
pub struct Standalone {
    child: Child,
    prefix: Prefix,
}

impl Standalone {
    /// Starts `worker` with `args` and `--parallel parallel` on a prefix named after `tag`,
    /// and waits until a client can attach (every slot's names exist).
    pub fn start(worker: &Path, args: &[String], parallel: usize, tag: &str) -> anyhow::Result<Self> {
        let prefix = Prefix::new(&format!("lshm_bench_{tag}_{}", std::process::id()))?;
        let child = Command::new(worker)
            .args(args)
            .args(["--parallel", &parallel.to_string(), "--prefix", prefix.as_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a standalone worker")?;
        let me = Self { child, prefix };
        // Ready once a client can attach (every slot's names exist).
        let t = Instant::now();
        while me.attach().is_err() {
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "the standalone worker did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client attached to it.
    pub fn attach(&self) -> anyhow::Result<Client> {
        Ok(ClientBuilder::default()
            .request_timeout(Duration::from_secs(600))
            .attach(&self.prefix)?)
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Peak RSS (`VmHWM`) of this process's child `llama-shm-worker` processes, summed, in KiB.
pub fn worker_rss_kib() -> Option<u64> {
    let me = std::process::id().to_string();
    let mut total = 0;
    let mut any = false;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        if field("PPid:").as_deref() == Some(me.as_str())
            && field("Name:").is_some_and(|n| n.starts_with("llama-shm-work"))
        {
            if let Some(k) = field("VmHWM:").and_then(|v| v.trim_end_matches(" kB").parse::<u64>().ok()) {
                total += k;
                any = true;
            }
        }
    }
    any.then_some(total)
}
