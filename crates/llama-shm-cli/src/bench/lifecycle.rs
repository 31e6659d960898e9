//! Start-up, shutdown and death detection of an echo worker.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use llama_shm::internals::client::{Client, RequestError};
use llama_shm::internals::stats::summarize;

use super::table::{latency_cells, Table};
use super::BenchArgs;

/// Spawns and shuts down 50 workers, then kills `args.kills` of them mid-request.
pub fn run(args: &BenchArgs, worker: &Path) -> anyhow::Result<()> {
    println!("## Start-up, shutdown, death detection (echo engine)\n");
    let mut spawn = Vec::new();
    let mut shutdown = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let c = Client::builder()
            .worker(worker)
            .args(["--engine", "echo"])
            .spawn()
            .context("spawn")?;
        spawn.push(t.elapsed());
        let t = Instant::now();
        c.shutdown().context("shutdown")?;
        shutdown.push(t.elapsed());
    }
    let mut detect = Vec::new();
    for i in 0..args.kills {
        let mut c = Client::builder()
            .worker(worker)
            .args(["--engine", "echo", "--echo-delay-ms", "60000"])
            .spawn()
            .context("spawn")?;
        let pid = c.worker_pid().context("spawned worker without pid")?;
        // Kill it while the request waits, at a varying moment.
        let delay = Duration::from_micros(2000 + (i as u64 * 37) % 3000);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let at = Instant::now();
            // SIGKILL our own child: it cannot be a stranger's process (we have not reaped it).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            at
        });
        let r = c.send_request("never answered", "");
        let noticed = Instant::now();
        let killed_at = killer.join().map_err(|_| anyhow!("killer thread panicked"))?;
        match r {
            Err(RequestError::WorkerDied { .. }) => detect.push(noticed.saturating_duration_since(killed_at)),
            other => bail!("kill {i}: expected WorkerDied, got {other:?}"),
        }
    }
    let mut table = Table::new(["what", "n", "p50", "p99", "p99.9", "max"]);
    for (label, v) in [
        ("spawn to ready", &mut spawn),
        ("shutdown (request to exit reaped)", &mut shutdown),
        ("worker SIGKILLed mid-request → client error", &mut detect),
    ] {
        table.row(latency_cells(label, &summarize(v)));
    }
    table.print();
    Ok(())
}
