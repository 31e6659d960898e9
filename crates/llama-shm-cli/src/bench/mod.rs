//! `llama-shm bench`: one run that measures the shared-memory transport against ordinary IPC
//! (Unix socket, pipe pair, TCP, HTTP/1.1 + JSON), start-up, shutdown and death detection, and
//! the LLM through the worker against the same engine in-process, the prefix cache, streaming
//! and the worker pool. Prints Markdown tables (the ones in docs/BENCHMARKS.md).
//!
//! One module per section, each printing its tables with [`table::Table`] and summarising
//! samples with the core crate's one percentile definition (`internals::stats`):
//!
//! - [`round_trips`]: shm against the [`transports`] (whose servers are this program again,
//!   re-executed with the hidden `__bench-server` sub-command);
//! - [`lifecycle`]: spawn, shutdown, death detection;
//! - [`llm`]: tokens/s through the worker and in-process; [`prefix_cache`]; [`streaming`]
//!   (first chunk, cancel); [`pool`].

mod lifecycle;
mod llm;
mod pool;
mod prefix_cache;
mod round_trips;
mod streaming;
mod table;
mod transports;

pub use transports::{serve as serve_transport, ServerArgs};

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Options of `llama-shm bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Round trips per row with the small payload (the large one runs a quarter as many).
    #[arg(long, default_value_t = 20_000)]
    iters: usize,
    /// Worker kills for the death-detection figure.
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// Rounds of the LLM comparisons (medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Requests per configuration in the pool benchmark.
    #[arg(long, default_value_t = 24)]
    pool_requests: usize,
    /// GGUF model for the LLM sections.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Skip the LLM sections (transport figures only).
    #[arg(long)]
    no_llm: bool,
    /// Worker binary (default: llama-shm-worker next to this program, or $LLAMA_SHM_WORKER).
    #[arg(long)]
    worker: Option<PathBuf>,
}

impl BenchArgs {
    /// Whether the LLM sections run (llama.cpp in this process).
    pub fn runs_llm(&self) -> bool {
        !self.no_llm
    }
}

/// Runs every section and prints its table.
///
/// # Errors
/// The first measurement that could not be made, with what was being measured as context.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let worker = args
        .worker
        .clone()
        .or_else(llama_shm::internals::client::default_worker_path)
        .context("llama-shm-worker not found: build it (cargo build --release --workspace --bins) or pass --worker")?;
    let model = args.model.clone().unwrap_or_else(default_model);
    machine_header(&worker);
    round_trips::run(args, &worker)?;
    lifecycle::run(args, &worker)?;
    if args.no_llm {
        return Ok(());
    }
    if !model.exists() {
        bail!(
            "model {} not found (ci/setup fetches it; or pass --model, or --no-llm)",
            model.display()
        );
    }
    llm::throughput(args, &worker, &model)?;
    prefix_cache::run(args, &worker, &model)?;
    streaming::run(args, &worker, &model)?;
    pool::run(args, &worker, &model)?;
    Ok(())
}

fn default_model() -> PathBuf {
    llama_shm::internals::os::locate::default_model()
}

fn machine_header(worker: &Path) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model_name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# llama-shm bench\n");
    println!("- machine: {cpus} CPUs, {model_name}");
    println!(
        "- load average at start: {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("- worker: {}", worker.display());
    println!();
}
