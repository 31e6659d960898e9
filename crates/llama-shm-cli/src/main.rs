//! `llama-shm`: the command-line front end. `llama-shm ask "question"` spawns a worker on the
//! default model (or attaches to a running one), prints the answer on stdout and exits 0; any
//! failure is one line on stderr and a non-zero exit. `llama-shm ls` lists the objects in
//! `/dev/shm` and whether they are in use; `llama-shm clean` removes the leftovers.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use llama_shm::client::{Client, RequestError, Response, SpawnError};
use llama_shm::names::Prefix;

mod inventory;

/// Exit codes (documented in `--help`).
mod exit {
    /// The request failed (worker error, timeout, worker died), or `ls`/`clean` failed.
    pub const REQUEST: u8 = 1;
    /// Bad command line (clap's own code).
    #[allow(dead_code)]
    pub const USAGE: u8 = 2;
    /// The worker could not be started or attached (missing model, binary, objects).
    pub const STARTUP: u8 = 3;
}

/// Talk to a local llama.cpp model through POSIX shared memory.
#[derive(Debug, Parser)]
#[command(
    name = "llama-shm",
    version,
    about = "Talk to a local llama.cpp model through POSIX shared memory",
    long_about = "Talk to a local llama.cpp model through POSIX shared memory and named semaphores, \
                  on the seed's wire (/P_shared_mem, /P_sem_ready, /P_sem_prompts_written, \
                  /P_sem_response_written; the seed's prefix P is llama_cpp).\n\n\
                  `ask` spawns a worker on the model (or, with --attach, uses a running one), asks one \
                  question and prints the answer. `ls` shows which objects in /dev/shm are in use \
                  and which are leftovers of dead processes; `clean` removes the leftovers. \
                  `llama-shm help <command>` explains each command.",
    after_help = "Exit codes: 0 success, 1 the request failed, 2 bad usage, 3 the worker could not be started.\n\
                  Model: --model, else $LLAMA_SHM_MODEL, else ./models/SmolLM2-135M-Instruct.Q4_1.gguf (fetched by ci/setup).",
    after_long_help = "Exit codes:\n  \
                       0  success\n  \
                       1  the request failed (worker error, timeout, worker died), or ls/clean failed\n  \
                       2  bad usage (unknown option, missing argument)\n  \
                       3  the worker could not be started or attached (missing model, binary, objects)\n\n\
                       Model: --model, else $LLAMA_SHM_MODEL, else ./models/SmolLM2-135M-Instruct.Q4_1.gguf \
                       (fetched by ci/setup).\n\
                       Worker: --worker, else $LLAMA_SHM_WORKER, else llama-shm-worker next to this program."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask one question and print the answer.
    Ask(AskArgs),
    /// List the objects in /dev/shm per prefix, with their creator and whether they are in use.
    ///
    /// States: live (the creator recorded in the extension page is running, or some process
    /// maps an object), dead (leftovers of a process that is gone; `clean` removes them), seed
    /// (a seed-era object without extension page: the listing says whether a process maps it),
    /// unknown (unreadable, e.g. another user's).
    Ls(inventory::LsArgs),
    /// Remove the objects of dead sets (never of a set in use), printing each name removed.
    ///
    /// A set is re-checked right before it is removed. Exit status 0, or 1 if a removal failed.
    Clean(inventory::CleanArgs),
}

#[derive(Debug, clap::Args)]
struct AskArgs {
    /// The question (the user prompt).
    prompt: String,
    /// System prompt.
    #[arg(long, default_value = "You are a helpful assistant.")]
    system: String,
    /// GGUF model to load.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Stop after N generated tokens.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Deterministic output (greedy sampling).
    #[arg(long)]
    greedy: bool,
    /// Sampling seed.
    #[arg(long)]
    seed: Option<u32>,
    /// Give up after SECS seconds (start-up and answer each).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Engine: llama (default) or echo (no model; for trying the plumbing).
    #[arg(long, default_value = "llama")]
    engine: String,
    /// Use a running worker with this prefix instead of spawning one.
    #[arg(long)]
    attach: Option<Prefix>,
    /// Worker binary (default: llama-shm-worker next to this program, or $LLAMA_SHM_WORKER).
    #[arg(long)]
    worker: Option<PathBuf>,
    /// Print the response and its usage as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Ask(args) => ask(&args),
        Command::Ls(args) => inventory::ls(&args).map_err(|e| (exit::REQUEST, e)),
        Command::Clean(args) => match inventory::clean(&args) {
            Ok(true) => Ok(()),
            Ok(false) => Err((exit::REQUEST, "some objects could not be removed".to_string())),
            Err(e) => Err((exit::REQUEST, e)),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("llama-shm: {msg}");
            ExitCode::from(code)
        }
    }
}

fn ask(args: &AskArgs) -> Result<(), (u8, String)> {
    let timeout = Duration::from_secs(args.timeout);
    let mut client = match &args.attach {
        Some(prefix) => Client::builder()
            .request_timeout(timeout)
            .attach(prefix)
            .map_err(|e| (exit::STARTUP, format!("cannot attach to {prefix}: {e}")))?,
        None => spawn(args, timeout).map_err(|e| (exit::STARTUP, e.to_string()))?,
    };
    let result = client.send_request(&args.prompt, &args.system);
    if args.attach.is_some() {
        client.detach();
    } else if let Err(e) = client.shutdown() {
        tracing::warn!("worker shutdown: {e}");
    }
    let response = result.map_err(|e| (exit::REQUEST, describe(&e)))?;
    print(args, &response).map_err(|e| (exit::REQUEST, format!("writing the answer: {e}")))
}

fn spawn(args: &AskArgs, timeout: Duration) -> Result<Client, SpawnError> {
    let worker = args
        .worker
        .clone()
        .or_else(llama_shm::client::default_worker_path)
        .unwrap_or_else(|| PathBuf::from("llama-shm-worker"));
    let mut b = Client::builder()
        .worker(worker)
        .startup_timeout(timeout)
        .request_timeout(timeout)
        .args(["--engine", &args.engine]);
    if let Some(m) = &args.model {
        b = b.arg("--model").arg(m);
    }
    if let Some(n) = args.max_tokens {
        b = b.arg("--max-tokens").arg(n.to_string());
    }
    if args.greedy {
        b = b.arg("--greedy");
    }
    if let Some(s) = args.seed {
        b = b.arg("--seed").arg(s.to_string());
    }
    let spinner = std::io::stderr().is_terminal().then(|| {
        let s = indicatif::ProgressBar::new_spinner().with_message("loading the model…");
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let client = b.spawn();
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    client
}

fn describe(e: &RequestError) -> String {
    format!("request failed: {e}")
}

fn print(args: &AskArgs, r: &Response) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "text": r.text,
            "truncated": r.truncated,
            "system_truncated": r.system_truncated,
            "user_truncated": r.user_truncated,
            "finish": format!("{:?}", r.finish).to_lowercase(),
            "usage": {
                "prompt_tokens": r.usage.prompt_tokens,
                "generated_tokens": r.usage.generated_tokens,
                "prompt_ms": r.usage.prompt_time.as_secs_f64() * 1e3,
                "generation_ms": r.usage.generation_time.as_secs_f64() * 1e3,
            },
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{}", r.text.trim_end())?;
    }
    out.flush()
}
