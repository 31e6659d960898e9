//! The worker pool: short LLM requests per second with one worker of two threads and with two
//! workers of one thread.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use llama_shm::internals::client::{Client, RequestOptions};
use llama_shm::internals::stats::fmt_duration;
use llama_shm::{Pool, Prompts};

use super::llm::SYSTEM;
use super::table::Table;
use super::BenchArgs;

/// `args.pool_requests` requests per configuration, from two threads per worker.
pub fn run(args: &BenchArgs, worker: &Path, model: &Path) -> anyhow::Result<()> {
    println!("## Worker pool: short LLM requests per second\n");
    let mut table = Table::new(["configuration", "requests", "wall", "requests/s"]);
    for (workers, threads) in [(1usize, 2u32), (2, 1)] {
        let builder = Client::builder()
            .worker(worker)
            .args(["--engine", "llama", "--model"])
            .arg(model)
            .args([
                "--greedy",
                "--max-tokens",
                "16",
                "--threads",
                &threads.to_string(),
            ])
            .startup_timeout(Duration::from_secs(120))
            .request_timeout(Duration::from_secs(300));
        let pool = Pool::new(builder, workers).context("starting the pool")?;
        let n = args.pool_requests.max(2);
        let next = AtomicUsize::new(0);
        let t = Instant::now();
        let failures: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers * 2)
                .map(|_| {
                    s.spawn(|| {
                        let mut errors = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= n {
                                break;
                            }
                            let q = format!(
                                "Name one fruit that is {}.",
                                ["red", "yellow", "green", "orange"][i % 4]
                            );
                            if let Err(e) = pool.request(
                                Prompts {
                                    system: SYSTEM,
                                    user: &q,
                                },
                                &RequestOptions::default(),
                            ) {
                                errors.push(e.to_string());
                            }
                        }
                        errors
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let wall = t.elapsed();
        pool.shutdown();
        if let Some(e) = failures.first() {
            bail!("pool request failed: {e}");
        }
        table.row([
            format!("{workers} worker(s) × {threads} thread(s)"),
            n.to_string(),
            fmt_duration(wall),
            format!("{:.2}", n as f64 / wall.as_secs_f64()),
        ]);
    }
    table.print();
    Ok(())
}
