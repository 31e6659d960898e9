//! Start-up, shutdown and death detection of an echo worker: the echo-only binary
//! (`llama-shm-echo-worker`, no llama.cpp linked) and the llama-linked `llama-shm-worker`
//! serving the echo engine, one after the other in the same run; then issue 17's goals, judged
//! on the echo-only binary.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use llama_shm::internals::client::{Client, RequestError};
use llama_shm::internals::stats::{fmt_duration, summarize, Summary};

use super::table::{latency_cells, Table};
use super::BenchArgs;

/// Spawns and shuts down this many workers.
const SPAWNS: usize = 50;

/// One binary's figures.
struct Lifecycle {
    spawn: Summary,
    shutdown: Summary,
    death: Summary,
}

/// Spawns and shuts down [`SPAWNS`] workers of `worker`, then kills `kills` of them
/// mid-request.
fn measure(worker: &Path, kills: usize) -> anyhow::Result<Lifecycle> {
    let mut spawn = Vec::new();
    let mut shutdown = Vec::new();
    for _ in 0..SPAWNS {
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
    for i in 0..kills {
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
    Ok(Lifecycle {
        spawn: summarize(&mut spawn),
        shutdown: summarize(&mut shutdown),
        death: summarize(&mut detect),
    })
}

/// Spawning and reaping `/bin/true` [`SPAWNS`] times: the floor of starting any process on
/// this machine, for the start-up rows to be read against.
fn process_floor() -> anyhow::Result<Summary> {
    let mut v = Vec::new();
    for _ in 0..SPAWNS {
        let t = Instant::now();
        let status = std::process::Command::new("/bin/true")
            .status()
            .context("running /bin/true")?;
        v.push(t.elapsed());
        if !status.success() {
            bail!("/bin/true failed: {status}");
        }
    }
    Ok(summarize(&mut v))
}

/// Both binaries (the echo-only one when it is found), the table, and the goals.
pub fn run(args: &BenchArgs, worker: &Path, echo_worker: Option<&Path>) -> anyhow::Result<()> {
    println!("## Start-up, shutdown, death detection (echo engine)\n");
    let mut runs = Vec::new();
    if let Some(echo) = echo_worker {
        runs.push(("echo-only binary", measure(echo, args.kills)?));
    } else {
        println!("(llama-shm-echo-worker not found: the llama-linked binary only.)\n");
    }
    runs.push(("llama-linked binary", measure(worker, args.kills)?));
    let floor = process_floor()?;
    let mut table = Table::new(["what", "n", "p50", "p99", "p99.9", "max"]);
    table.row(latency_cells(
        "spawn and reap /bin/true (any process's floor here)",
        &floor,
    ));
    for (binary, r) in &runs {
        for (what, s) in [
            ("spawn to ready", &r.spawn),
            ("shutdown (request to exit reaped)", &r.shutdown),
            ("worker SIGKILLed mid-request → client error", &r.death),
        ] {
            table.row(latency_cells(&format!("{what}, {binary}"), s));
        }
    }
    table.print();
    let (binary, r) = &runs[0];
    let mut goals = Table::new(["goal", "figure", "met"]);
    // Nothing measured (`--kills 0`) is no figure, and meets nothing.
    let mut goal = |label: String, s: &Summary, d: Duration, limit: Duration| {
        let (figure, met) = if s.n == 0 {
            ("not measured".to_string(), "—")
        } else {
            (fmt_duration(d), if d <= limit { "yes" } else { "no" })
        };
        goals.row([label, figure, met.into()]);
    };
    goal(
        format!("spawn to ready p50, {binary} (≤ 1 ms)"),
        &r.spawn,
        r.spawn.p50,
        Duration::from_millis(1),
    );
    goal(
        format!("death noticed p99 over {} kills, {binary} (≤ 1 ms)", args.kills),
        &r.death,
        r.death.p99,
        Duration::from_millis(1),
    );
    goal(
        format!("death noticed p50, {binary} (≤ 0.3 ms)"),
        &r.death,
        r.death.p50,
        Duration::from_micros(300),
    );
    goals.row([
        format!("spawn to ready p50, {binary}, ÷ /bin/true's spawn and reap (context)"),
        format!("{:.2}×", r.spawn.p50.as_secs_f64() / floor.p50.as_secs_f64()),
        "—".into(),
    ]);
    goals.print();
    Ok(())
}
