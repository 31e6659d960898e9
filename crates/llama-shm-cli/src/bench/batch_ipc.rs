//! The IPC cost of streaming to many clients at once (issue 17, goal 6): eight clients stream
//! the batching section's mix from one batching worker (`--parallel 8`), first with the model,
//! then with the echo engine pausing per step as long as the model took per token. The echo
//! engine does nothing but the IPC (and one sleep per step), so the CPU time its worker and its
//! clients spend is what the IPC costs; set against the model's generation time per token, that
//! is the goal's fraction.
//!
//! CPU time is read precisely: the worker's from `/proc/PID/task/*/schedstat` (nanoseconds,
//! its threads checked to be the same ones at both readings), this process's (the clients')
//! from `getrusage(RUSAGE_SELF)`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use llama_shm::internals::client::Client;
use llama_shm::internals::stats::{fmt_duration, summarize};
use nix::sys::resource::{getrusage, UsageWho};

use super::batching::{client_stream, drive, own_client, worker_args, FORCED, THREADS};
use super::table::Table;
use super::workers::Standalone;
use super::BenchArgs;

/// Clients streaming at once.
const CLIENTS: usize = 8;

/// CPU time of every thread of process `pid` and their ids.
fn process_cpu(pid: u32) -> anyhow::Result<(Duration, Vec<u32>)> {
    let mut total = Duration::ZERO;
    let mut tids = Vec::new();
    let dir = format!("/proc/{pid}/task");
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let e = e?;
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("schedstat"))
            .with_context(|| format!("reading the schedstat of thread {tid}"))?;
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("thread {tid}: schedstat {stat:?}"))?;
        total += Duration::from_nanos(ns);
        tids.push(tid);
    }
    tids.sort_unstable();
    Ok((total, tids))
}

/// CPU time (user and system) of this process, its ended threads included.
fn own_cpu() -> anyhow::Result<Duration> {
    let u = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    Ok(tv(u.user_time()) + tv(u.system_time()))
}

/// What one configuration measured over its timed requests.
struct Measured {
    tokens: u64,
    wall: Duration,
    /// Median over requests of generation time ÷ generated tokens: a step's time.
    per_token: Duration,
    worker_cpu: Duration,
    client_cpu: Duration,
}

/// `CLIENTS` clients streaming `requests` requests from a worker started with `args` and
/// `--parallel CLIENTS`, after one untimed request per client.
fn measure(worker: &Path, args: &[String], tag: &str, requests: usize) -> anyhow::Result<Measured> {
    let w = Standalone::start(worker, args, CLIENTS, tag)?;
    let clients: Vec<Mutex<Client>> = (0..CLIENTS)
        .map(|_| w.attach().map(Mutex::new))
        .collect::<anyhow::Result<_>>()?;
    let per_token = Mutex::new(Vec::new());
    // Each client thread keeps one client: CLIENTS requests are always in flight.
    let send = |t: usize, i: usize, first: &mut dyn FnMut()| -> anyhow::Result<u32> {
        let r = client_stream(&mut *own_client(&clients, t)?, i, first)?;
        let n = r.usage.generated_tokens.max(1);
        per_token
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push(r.usage.generation_time / n);
        Ok(r.usage.generated_tokens)
    };
    drive(CLIENTS, CLIENTS, &send)?;
    per_token.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clear();
    let (w0, tids0) = process_cpu(w.pid())?;
    let c0 = own_cpu()?;
    let (samples, wall) = drive(CLIENTS, requests, &send)?;
    let c1 = own_cpu()?;
    let (w1, tids1) = process_cpu(w.pid())?;
    ensure!(
        tids0 == tids1,
        "{tag}: the worker's threads changed during the run ({tids0:?} → {tids1:?}): its CPU time \
         would not add up"
    );
    for c in clients {
        if let Ok(c) = c.into_inner() {
            c.detach();
        }
    }
    drop(w);
    let mut v = per_token.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(Measured {
        tokens: samples.iter().map(|s| u64::from(s.generated)).sum(),
        wall,
        per_token: summarize(&mut v).p50,
        worker_cpu: w1.saturating_sub(w0),
        client_cpu: c1.saturating_sub(c0),
    })
}

fn per(d: Duration, n: u64) -> Duration {
    d / u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}

/// The model at eight clients, then the echo engine at the model's pace; the table and the
/// goal.
pub fn run(args: &BenchArgs, worker: &Path, model: &Path) -> anyhow::Result<()> {
    println!("## Streaming to {CLIENTS} clients at once: the IPC's share of the generation time\n");
    let requests = args.batch_requests.max(CLIENTS);
    let llm = measure(worker, &worker_args(model, THREADS), "ipc_llm", requests)?;
    // The echo answer (system prompt, newline, question: about 55 four-byte pieces) twice,
    // cut at the same token budget (the clients ask for it).
    let echo_args: Vec<String> = [
        "--engine",
        "echo",
        "--echo-repeat",
        "2",
        "--echo-piece-us",
        &llm.per_token.as_micros().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    let echo = measure(worker, &echo_args, "ipc_echo", requests)?;
    println!(
        "{requests} streamed requests of {FORCED} tokens over {CLIENTS} clients of one \
         `--parallel {CLIENTS}` worker, after one untimed request per client; the echo engine \
         pauses per step as long as the model's median time per generated token ({}). CPU \
         time: the worker's threads (schedstat) and this process's, which holds only the \
         clients.\n",
        fmt_duration(llm.per_token)
    );
    let mut table = Table::new([
        "engine",
        "tokens",
        "wall",
        "time per token (a step)",
        "worker CPU per token",
        "clients' CPU per token",
    ]);
    for (label, m) in [("SmolLM2", &llm), ("echo at the model's pace", &echo)] {
        table.row([
            label.to_string(),
            m.tokens.to_string(),
            fmt_duration(m.wall),
            fmt_duration(m.per_token),
            fmt_duration(per(m.worker_cpu, m.tokens)),
            fmt_duration(per(m.client_cpu, m.tokens)),
        ]);
    }
    table.print();
    // A step of `per_token` yields one token per client: the aggregate generation time per
    // token is per_token / CLIENTS.
    let generation = llm.per_token / CLIENTS as u32;
    let mut goal = Table::new(["goal", "IPC per token", "generation per token", "share", "met"]);
    let both = [
        (
            "worker and clients, echo run",
            per(echo.worker_cpu, echo.tokens) + per(echo.client_cpu, echo.tokens),
        ),
        // The clients with the model running beside them wait longer per piece (and spin
        // part of it): their CPU from the model's run, the worker's from the echo run.
        (
            "echo worker, the model run's clients",
            per(echo.worker_cpu, echo.tokens) + per(llm.client_cpu, llm.tokens),
        ),
    ];
    for (what, ipc) in both {
        let share = ipc.as_secs_f64() / generation.as_secs_f64();
        goal.row([
            format!("IPC ({what}) per token ÷ generation time per token, {CLIENTS} clients (< 1 %)"),
            fmt_duration(ipc),
            fmt_duration(generation),
            format!("{:.2} %", share * 100.0),
            (if share < 0.01 { "yes" } else { "no" }).into(),
        ]);
    }
    goal.print();
    Ok(())
}
