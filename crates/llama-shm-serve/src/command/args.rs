//! The worker's arguments (both binaries take the same ones; the echo-only binary refuses
//! `--engine llama`).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use llama_shm::Prefix;

/// Which engine serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// A GGUF model through llama.cpp (the seed's chatbot).
    Llama,
    /// Answers `{system}\n{user}`: no model, for tests and benchmarks.
    Echo,
}

/// Serve a local model (or the echo engine) over POSIX shared memory, wire-compatible with
/// the seed's chatbot.
#[derive(Debug, Parser)]
#[command(name = "llama-shm-worker", version, about, long_about = None)]
pub struct Args {
    /// Inference engine.
    #[arg(long, value_enum, default_value = "llama")]
    pub engine: EngineKind,
    /// GGUF model (default: $LLAMA_SHM_MODEL, else ./models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Context size in tokens.
    #[arg(long, default_value_t = 2048)]
    pub ctx: u32,
    /// Threads for generation and prompt processing (default: number of cores).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    pub temp: f32,
    /// min-p sampling threshold.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u32,
    /// Greedy (deterministic) sampling.
    #[arg(long)]
    pub greedy: bool,
    /// Stop after N generated tokens (default: end of turn or the response limit).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Keep generating past end-of-generation tokens (benchmarks: forces --max-tokens tokens).
    #[arg(long, hide = true)]
    pub ignore_eog: bool,
    /// With --test: print the templated prompt's token ids (JSON) instead of answering.
    #[arg(long, requires = "test")]
    pub dump_tokens: bool,
    /// Object-name prefix: objects are /PREFIX_shared_mem and /PREFIX_sem_*.
    #[arg(long, default_value = llama_shm::SEED_PREFIX)]
    pub prefix: Prefix,
    /// Permission bits (octal) for created objects.
    #[arg(long, default_value = "600", value_parser = parse_octal)]
    pub mode: u32,
    /// Answer one request from the command line on stdout and exit.
    #[arg(long)]
    pub test: bool,
    /// User prompt for --test.
    #[arg(long, requires = "test")]
    pub user: Option<String>,
    /// System prompt for --test.
    #[arg(long, default_value = "", requires = "test")]
    pub system: String,
    /// With --test: print the answer piece by piece as it is generated (like the seed's
    /// chatbot in streaming mode).
    #[arg(long, requires = "test")]
    pub stream: bool,
    /// Evaluate every prompt from scratch instead of reusing the KV cache of the previous
    /// request's common prefix.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// A GGUF model for embeddings requests instead of --model (loaded at the first one).
    #[arg(long, value_name = "FILE")]
    pub embedding_model: Option<PathBuf>,
    /// Echo engine: repeat the answer N times (to reach the response limit).
    #[arg(long, default_value_t = 1)]
    pub echo_repeat: u32,
    /// Echo engine: wait N ms before answering (cancellable), for failure tests.
    #[arg(long, default_value_t = 0)]
    pub echo_delay_ms: u64,
    /// Echo engine: answer in pieces of at most 4 bytes, pausing N µs before each (a model's
    /// pace, for streaming and cancellation tests).
    #[arg(long, default_value_t = 0)]
    pub echo_piece_us: u64,
    /// Echo engine: answer exactly N bytes (the echo repeated and cut), for benchmarks.
    #[arg(long)]
    pub echo_bytes: Option<usize>,
    /// Adaptive wait: spin at most N µs on a peer running on another CPU before blocking
    /// (0 blocks at once).
    #[arg(long, default_value_t = 50)]
    pub spin_us: u64,
    /// Serve up to N requests of extended clients at once, batched in one engine (a standalone
    /// worker): slots PREFIX.slot1..N for them, and the prefix's own names (slot 0) for
    /// seed-era clients. 1 serves one request at a time on the prefix's own names.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// How many clients may wait, first come first served, when every slot is busy (a
    /// standalone worker; at most 256). One more gets a "busy" error at once; 0: nobody waits.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=256))]
    pub max_queue: u32,
    /// Require this auth token on every request: a file holding 64 hex digits.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Spawned by a client: attach to its objects, read the token from stdin (a socket),
    /// exit when it hangs up.
    #[arg(long, hide = true)]
    pub control_stdin: bool,
    /// Tests: pause N ms at each step of start-up (start, signals ready, objects created, stop
    /// watcher running), so a signal can be sent in each window on purpose.
    #[arg(long, hide = true, default_value_t = 0)]
    pub startup_pause_ms: u64,
    /// Accept a --mode that lets other users write the objects: any of them can then crash
    /// this worker (and its clients) by shrinking an object (SIGBUS). Refused without this.
    #[arg(long)]
    pub others_may_crash_this_worker: bool,
    /// Internal: run as a standalone worker's guardian (stdin: the worker's socket).
    #[arg(long, hide = true)]
    pub guard: bool,
}

pub(super) fn parse_octal(s: &str) -> Result<u32, String> {
    let v =
        u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("not an octal mode: {e}"))?;
    if v > 0o777 {
        return Err(format!("mode {v:o} has bits beyond 0777"));
    }
    Ok(v)
}
