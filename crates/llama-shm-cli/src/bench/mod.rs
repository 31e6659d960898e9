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
//!   (first chunk, cancel); [`pool`]; [`batching`] (many clients: the batching worker, the turn
//!   queue, the pool and the in-process ceiling); [`batch_ipc`] (the IPC's share of the
//!   generation time when eight clients stream at once); [`conversations`] (a conversation's second
//!   turn, schema-constrained generation, embeddings).

mod batch_ipc;
mod batching;
mod conversations;
mod lifecycle;
mod llm;
mod pool;
mod prefix_cache;
mod round_trips;
mod seed_floor;
mod streaming;
mod table;
mod transports;
mod workers;

pub use seed_floor::{run_seed_client, serve_seed_worker, SeedClientArgs, SeedWorkerArgs};
pub use transports::{serve as serve_transport, ServerArgs};

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Options of `llama-shm bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Round trips per row with the small payload (the large one runs a quarter as many).
    #[arg(long, default_value_t = 20_000)]
    iters: usize,
    /// Worker kills for the death-detection figure (1000: enough for a p99 that means
    /// something; about 7 s here).
    #[arg(long, default_value_t = 1000)]
    kills: usize,
    /// Rounds of the LLM comparisons (medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Requests per configuration in the pool benchmark.
    #[arg(long, default_value_t = 24)]
    pool_requests: usize,
    /// Requests per row of the many-clients (batching) section.
    #[arg(long, default_value_t = 16)]
    batch_requests: usize,
    /// Rounds of the many-clients section's goals at 4 clients (the median is judged).
    #[arg(long, default_value_t = 3)]
    goal_rounds: usize,
    /// Run only these sections (repeatable): round-trips, seed-floor, lifecycle, llm,
    /// prefix-cache, conversations, streaming, pool, batching, batch-ipc. Default: all.
    #[arg(long, value_enum)]
    only: Vec<Section>,
    /// GGUF model for the LLM sections.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Skip the LLM sections (transport figures only).
    #[arg(long)]
    no_llm: bool,
    /// Worker binary (default: llama-shm-worker next to this program, or $LLAMA_SHM_WORKER).
    #[arg(long)]
    worker: Option<PathBuf>,
    /// Echo-only worker binary for the start-up and death figures (default:
    /// llama-shm-echo-worker next to this program, or $LLAMA_SHM_ECHO_WORKER).
    #[arg(long)]
    echo_worker: Option<PathBuf>,
}

/// A section of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Round trips against the other transports.
    RoundTrips,
    /// A seed-style client against a minimal spec worker and ours.
    SeedFloor,
    /// Spawn, shutdown, death detection.
    Lifecycle,
    /// LLM tokens/s through the worker and in-process.
    Llm,
    /// The prefix cache.
    PrefixCache,
    /// Conversations, structured output, embeddings.
    Conversations,
    /// Streaming: first chunk, cancel.
    Streaming,
    /// The worker pool.
    Pool,
    /// Many clients: batching, turn queue, pool, in-process ceiling.
    Batching,
    /// The IPC's share of the generation time, eight clients streaming at once.
    BatchIpc,
}

impl BenchArgs {
    /// Whether the LLM sections run (llama.cpp in this process).
    pub fn runs_llm(&self) -> bool {
        !self.no_llm
    }

    fn runs(&self, s: Section) -> bool {
        self.only.is_empty() || self.only.contains(&s)
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
    if args.runs(Section::RoundTrips) {
        round_trips::run(args, &worker)?;
    }
    if args.runs(Section::SeedFloor) {
        seed_floor::run(args, &worker)?;
    }
    if args.runs(Section::Lifecycle) {
        let echo = args.echo_worker.clone().or_else(|| {
            let dir = worker.parent().map(Path::to_path_buf).unwrap_or_default();
            llama_shm::internals::os::locate::echo_worker_binary(&[&dir])
        });
        lifecycle::run(args, &worker, echo.as_deref())?;
    }
    let llm = [
        Section::Llm,
        Section::PrefixCache,
        Section::Conversations,
        Section::Streaming,
        Section::Pool,
        Section::Batching,
        Section::BatchIpc,
    ];
    if args.no_llm || !llm.iter().any(|&s| args.runs(s)) {
        return Ok(());
    }
    if !model.exists() {
        bail!(
            "model {} not found (ci/setup fetches it; or pass --model, or --no-llm)",
            model.display()
        );
    }
    if args.runs(Section::Llm) {
        llm::throughput(args, &worker, &model)?;
    }
    if args.runs(Section::PrefixCache) {
        prefix_cache::run(args, &worker, &model)?;
    }
    if args.runs(Section::Conversations) {
        conversations::run(args, &worker, &model)?;
    }
    if args.runs(Section::Streaming) {
        streaming::run(args, &worker, &model)?;
    }
    if args.runs(Section::Pool) {
        pool::run(args, &worker, &model)?;
    }
    if args.runs(Section::Batching) {
        batching::run(args, &worker, &model)?;
    }
    if args.runs(Section::BatchIpc) {
        batch_ipc::run(args, &worker, &model)?;
    }
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
