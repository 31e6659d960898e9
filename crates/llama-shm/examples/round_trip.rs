//! Echo round trips through a spawned worker: prints p50/p99/max over N requests.
//!
//! `cargo run --release --example round_trip -p llama-shm -- [N] [SYSTEM USER ANSWER bytes] [SPIN_US]`
//! (build the worker first: `cargo build --release -p llama-shm-worker`). `llama-shm bench`
//! is the full benchmark; this is the quick probe.

use llama_shm::Prompts;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i: usize, default: usize| -> Result<usize, std::num::ParseIntError> {
        std::env::args().nth(i).map_or(Ok(default), |s| s.parse())
    };
    let (n, sys, usr, answer, spin) = (
        arg(1, 10_000)?,
        arg(2, 100)?,
        arg(3, 100)?,
        arg(4, 200)?,
        arg(5, 50)?,
    );
    let worker = llama_shm::internals::client::default_worker_path()
        .or_else(|| Some("target/release/llama-shm-worker".into()))
        .ok_or("no worker")?;
    let mut client = llama_shm::Client::builder()
        .worker(worker)
        .args([
            "--engine",
            "echo",
            "--echo-bytes",
            &answer.to_string(),
            "--spin-us",
            &spin.to_string(),
        ])
        .spin(Duration::from_micros(spin as u64))
        .spawn()?;
    let user = "u".repeat(usr);
    let system = "s".repeat(sys);
    let opts = llama_shm::RequestOptions::default();
    let mut out = String::new();
    let prompts = Prompts {
        system: &system,
        user: &user,
    };
    for _ in 0..1000 {
        client.request_into(prompts, &opts, &mut out)?;
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client.request_into(prompts, &opts, &mut out)?;
        samples.push(t.elapsed());
    }
    assert_eq!(out.len(), answer);
    samples.sort();
    let q = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    println!(
        "echo round trip, {sys}/{usr}/{answer} bytes, spin {spin} µs, {n} requests: p50 {:?}  p99 {:?}  max {:?}",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    client.shutdown()?;
    Ok(())
}
