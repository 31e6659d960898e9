//! Round trips: the shared-memory transport (adaptive and blocking wait) against a Unix socket,
//! a pipe pair, TCP loopback and HTTP/1.1 + JSON, for two payloads and two placements.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use llama_shm::internals::client::{Client, RequestOptions};
use llama_shm::internals::stats::{summarize, Summary};
use llama_shm::Prompts;

use super::table::{latency_cells, Table};
use super::transports::{self, pin_current_thread, Payload, Placement, Transport};
use super::BenchArgs;

/// One shared-memory round-trip measurement: an echo worker answering exactly
/// `payload.response` bytes, client and worker placed as `placement`.
fn shm_round_trips(
    worker: &Path,
    payload: Payload,
    placement: Placement,
    spin: bool,
    warmup: usize,
    iters: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (client_cpu, worker_cpu) = placement.cpus();
    let spin_max = if spin {
        Duration::from_micros(50)
    } else {
        Duration::ZERO
    };
    let mut client = {
        // The worker inherits the mask of the thread that spawns it.
        let _pin = pin_current_thread(worker_cpu).context("pinning")?;
        Client::builder()
            .worker(worker)
            .args(["--engine", "echo", "--echo-bytes", &payload.response.to_string()])
            .arg("--spin-us")
            .arg(spin_max.as_micros().to_string())
            .spin(spin_max)
            .spawn()
            .context("spawning the echo worker")?
    };
    let _pin = pin_current_thread(client_cpu).context("pinning")?;
    let mut system = "s".repeat(payload.system);
    let user = "u".repeat(payload.user);
    let mut out = String::with_capacity(payload.response + 64);
    let opts = RequestOptions::default();
    let mut samples = Vec::with_capacity(iters);
    let mut tag = [0u8; 4];
    for i in 0..warmup + iters {
        // A tag that changes every round trip: a stale answer cannot pass the check.
        let c = char::from(b'a' + (i % 26) as u8);
        system.replace_range(0..1, c.encode_utf8(&mut tag));
        let t = Instant::now();
        client
            .request_into(
                Prompts {
                    system: &system,
                    user: &user,
                },
                &opts,
                &mut out,
            )
            .context("shm round trip")?;
        let dt = t.elapsed();
        ensure!(
            out.len() == payload.response && out.starts_with(c),
            "shm round trip {i}: answer of {} bytes starting {:?}, expected {} bytes starting {c:?}",
            out.len(),
            out.chars().next(),
            payload.response
        );
        if i >= warmup {
            samples.push(dt);
        }
    }
    client.shutdown().context("shutting the echo worker down")?;
    Ok(samples)
}

/// A row of a round-trip table; `ours` is the adaptive shm row the ratio compares with.
fn row(table: &mut Table, label: &str, s: &Summary, ours: Option<&Summary>) {
    let ratio = ours.map_or_else(
        || "—".to_string(),
        |o| format!("{:.2}×", s.p50.as_secs_f64() / o.p50.as_secs_f64()),
    );
    table.row(latency_cells(label, s).into_iter().chain([ratio]));
}

/// Warm-up and measured round trips for `payload`: the large payload runs a quarter as many.
fn counts(args: &BenchArgs, payload: Payload) -> (usize, usize) {
    let iters = if payload == Payload::SMALL {
        args.iters
    } else {
        (args.iters / 4).max(1)
    };
    ((iters / 10).clamp(1, 1000), iters)
}

/// Rounds per table: every row is measured this many times, the rows alternating within a
/// round, and the round with the median p50 is shown (a burst of load on the machine then
/// moves one round of one row, not the ratios).
const ROUNDS: usize = 3;

/// The round with the median p50 of `rounds` (their count is odd).
fn median_round(mut rounds: Vec<Summary>) -> Summary {
    rounds.sort_by_key(|s| s.p50);
    rounds.swap_remove(rounds.len() / 2)
}

/// Measures and prints the round-trip tables.
pub fn run(args: &BenchArgs, worker: &Path) -> anyhow::Result<()> {
    println!("## Round trips (echo engine; request system+user bytes, answer bytes)\n");
    println!(
        "Each row: the round with the median p50 of {ROUNDS} rounds, the rows of a table \
         alternating within each round. Ratio: that row's p50 over the shm (adaptive) p50 of \
         the same placement and payload.\n"
    );
    for payload in [Payload::SMALL, Payload::LARGE] {
        let (warmup, iters) = counts(args, payload);
        for placement in Placement::ALL {
            let mut adaptive = Vec::new();
            let mut blocking = Vec::new();
            let mut others: Vec<Vec<Summary>> = Transport::ALL.iter().map(|_| Vec::new()).collect();
            for _ in 0..ROUNDS {
                adaptive.push(summarize(&mut shm_round_trips(
                    worker, payload, placement, true, warmup, iters,
                )?));
                blocking.push(summarize(&mut shm_round_trips(
                    worker, payload, placement, false, warmup, iters,
                )?));
                for (k, transport) in Transport::ALL.into_iter().enumerate() {
                    let mut samples = transports::run(transport, payload, placement, warmup, iters)
                        .context(transport.name())?;
                    others[k].push(summarize(&mut samples));
                }
            }
            println!(
                "### {}/{}/{} bytes, {}\n",
                payload.system,
                payload.user,
                payload.response,
                placement.name()
            );
            let ours = median_round(adaptive);
            let mut table = Table::new(["transport", "n", "p50", "p99", "p99.9", "max", "p50 vs shm"]);
            row(&mut table, "shm, adaptive wait", &ours, None);
            row(
                &mut table,
                "shm, blocking wait",
                &median_round(blocking),
                Some(&ours),
            );
            for (transport, rounds) in Transport::ALL.into_iter().zip(others) {
                row(&mut table, transport.name(), &median_round(rounds), Some(&ours));
            }
            table.print();
        }
    }
    Ok(())
}
