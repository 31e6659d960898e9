//! Echo round trips through a spawned worker: prints p50/p99/max over N requests.
//!
//! `cargo run --release --example round_trip -p llama-shm -- [N]` (build the worker first:
//! `cargo build --release -p llama-shm-worker`). Issue #6's benchmark supersedes this quick probe.

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(Ok(10_000), |s| s.parse())?;
    let worker = llama_shm::client::default_worker_path()
        .or_else(|| Some("target/release/llama-shm-worker".into()))
        .ok_or("no worker")?;
    let mut client = llama_shm::Client::builder()
        .worker(worker)
        .args(["--engine", "echo"])
        .spawn()?;
    let user = "u".repeat(100);
    let system = "s".repeat(100);
    for _ in 0..1000 {
        client.send_request(&user, &system)?;
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client.send_request(&user, &system)?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let q = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    println!(
        "echo round trip, 100/100 bytes, {n} requests: p50 {:?}  p99 {:?}  max {:?}",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    client.shutdown()?;
    Ok(())
}
