//! `llama-shm`: the command-line front end. `llama-shm ask "question"` spawns a worker on the
//! default model (or attaches to a running one), prints the answer on stdout and exits 0; any
//! failure is one line on stderr and a non-zero exit. `llama-shm ls` lists the objects in
//! `/dev/shm` and whether they are in use; `llama-shm clean` removes the leftovers.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use llama_shm::Finish;
use llama_shm::Prefix;
use llama_shm::Prompts;
use llama_shm::{Client, EngineSettings, RequestError, RequestOptions, Response, SpawnError};

mod bench;
mod chat;
mod inventory;
mod status;
mod texts;

/// Exit codes (documented in `--help`).
mod exit {
    /// The request failed (worker error, timeout, worker died), or `ls`/`clean` failed.
    pub const REQUEST: u8 = 1;
    /// Bad command line (clap's own code; also an unreadable --json-schema or --grammar file).
    pub const USAGE: u8 = 2;
    /// The worker could not be started or attached (missing model, binary, objects).
    pub const STARTUP: u8 = 3;
    /// Interrupted by Ctrl-C (the partial answer was printed).
    pub const INTERRUPTED: u8 = 130;
}

/// The spawned worker's engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineKind {
    /// A GGUF model through llama.cpp.
    Llama,
    /// Answers `{system}\n{user}`, no model.
    Echo,
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
                  question and prints the answer as it is generated; `chat` holds a conversation. \
                  `ls` shows which objects in /dev/shm are in use and which are leftovers of dead \
                  processes; `clean` removes the leftovers. `bench` measures the transport, the \
                  worker's life cycle and the model against ordinary IPC and in-process use. \
                  `llama-shm help <command>` explains each command.",
    after_help = "Exit codes: 0 success, 1 the request failed, 2 bad usage, 3 the worker could not be started, 130 interrupted.\n\
                  Model: --model, else $LLAMA_SHM_MODEL, else ./models/SmolLM2-135M-Instruct.Q4_1.gguf (fetched by ci/setup).",
    after_long_help = "Exit codes:\n  \
                       0  success\n  \
                       1  the request failed (worker error, timeout, worker died), or ls/clean failed\n  \
                       2  bad usage (unknown option, missing argument)\n  \
                       3  the worker could not be started or attached (missing model, binary, objects)\n  \
                       130  interrupted by Ctrl-C (the partial answer was printed)\n\n\
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
    /// Ask one question and print the answer as it is generated (Ctrl-C stops it).
    Ask(AskArgs),
    /// Talk with the model, one line per turn (Ctrl-C stops an answer, Ctrl-D or /exit quits).
    ///
    /// The conversation goes to the worker as a list of messages, rendered with the model's chat
    /// template; each turn evaluates only its new tokens. When it no longer fits the model's
    /// context, the oldest turns are dropped (and a note on stderr says so). /reset forgets the
    /// conversation.
    Chat(ChatArgs),
    /// Print one embedding vector per text, as JSON lines.
    Embed(texts::EmbedArgs),
    /// Print how many tokens a text (or a conversation's prompt) takes for the model.
    Tokens(texts::TokensArgs),
    /// Measure: round trips against a Unix socket, a pipe, TCP and HTTP; start-up, shutdown,
    /// death detection; LLM tokens/s through the worker versus in-process; the prefix cache.
    Bench(bench::BenchArgs),
    /// Internal: the server process of one comparison transport of `bench`.
    #[command(name = "__bench-server", hide = true)]
    BenchServer(bench::ServerArgs),
    /// Internal: the minimal seed worker of `bench`'s seed floor.
    #[command(name = "__bench-seed-worker", hide = true)]
    BenchSeedWorker(bench::SeedWorkerArgs),
    /// Internal: the seed-style client of `bench`'s seed floor, alone against a running worker
    /// (for profiling one).
    #[command(name = "__bench-seed-client", hide = true)]
    BenchSeedClient(bench::SeedClientArgs),
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
    /// Show what a running worker is doing: its slots (busy or idle, requests answered,
    /// tokens generated) and how many clients wait in its admission queue.
    Status(status::StatusArgs),
}

/// How to reach a worker: spawn one (engine, model, sampling) or attach to a running one.
#[derive(Debug, clap::Args)]
struct ConnArgs {
    /// GGUF model to load.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Deterministic output (greedy sampling).
    #[arg(long)]
    greedy: bool,
    /// Sampling seed.
    #[arg(long)]
    seed: Option<u32>,
    /// Engine: llama (default) or echo (no model; for trying the plumbing).
    #[arg(long, value_enum, default_value = "llama")]
    engine: EngineKind,
    /// Use a running worker with this prefix instead of spawning one.
    #[arg(long)]
    attach: Option<Prefix>,
    /// Worker binary (default: llama-shm-worker next to this program, or $LLAMA_SHM_WORKER).
    #[arg(long)]
    worker: Option<PathBuf>,
    /// Extra argument for the spawned worker, e.g. --worker-arg=--ctx=4096 (repeatable; see
    /// `llama-shm-worker --help`).
    #[arg(long = "worker-arg", value_name = "ARG", allow_hyphen_values = true)]
    worker_args: Vec<String>,
    /// Refuse an answer longer than N bytes (the request is cancelled, exit 1): what an
    /// endless answer can cost in memory.
    #[arg(long, value_name = "N", default_value_t = llama_shm::DEFAULT_MAX_ANSWER_BYTES)]
    max_answer_bytes: u64,
}

#[derive(Debug, clap::Args)]
struct AskArgs {
    /// The question (the user prompt).
    prompt: String,
    /// System prompt.
    #[arg(long, default_value = "You are a helpful assistant.")]
    system: String,
    /// Stop after N generated tokens.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Stop generating after SECS seconds and keep the answer so far.
    #[arg(long, value_name = "SECS")]
    deadline: Option<f64>,
    /// Give up after SECS seconds (start-up and answer each).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Print the response and its usage as one JSON object (when it is complete).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    constraint: texts::ConstraintArgs,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
struct ChatArgs {
    /// System prompt (the conversation's first message; empty: none).
    #[arg(long, default_value = "You are a helpful assistant.")]
    system: String,
    /// Stop each answer after N generated tokens.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Give up after SECS seconds (start-up and each answer).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    constraint: texts::ConstraintArgs,
    #[command(flatten)]
    conn: ConnArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A benchmark server talks on its standard streams: before anything else could use them.
    if let Command::BenchServer(args) = &cli.command {
        return ExitCode::from(bench::serve_transport(args));
    }
    if let Command::BenchSeedWorker(args) = &cli.command {
        return ExitCode::from(bench::serve_seed_worker(args));
    }
    // The benchmark runs llama.cpp in this process too: with the worker's OpenMP settings.
    if matches!(&cli.command, Command::Bench(b) if b.runs_llm()) {
        llama_shm_worker::llama::reexec_with_short_openmp_spin();
    }
    llama_shm_serve::logging::init();
    let result = match cli.command {
        Command::Ask(args) => ask(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Embed(args) => texts::embed(&args),
        Command::Tokens(args) => texts::tokens(&args),
        Command::Bench(args) => bench::run(&args).map_err(|e| (exit::REQUEST, format!("{e:#}"))),
        Command::BenchServer(_) | Command::BenchSeedWorker(_) => unreachable!("served above"),
        Command::BenchSeedClient(args) => {
            bench::run_seed_client(&args).map_err(|e| (exit::REQUEST, format!("{e:#}")))
        }
        Command::Ls(args) => inventory::ls(&args).map_err(|e| (exit::REQUEST, e)),
        Command::Status(args) => status::run(&args).map_err(|e| (exit::REQUEST, e)),
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

/// Ctrl-C handling: the first SIGINT sets a flag (the request in flight is cancelled and its
/// partial answer kept); a second one while the flag is still set exits at once with 130.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let sig = signal_hook::consts::SIGINT;
    // Registration fails only for forbidden signals; SIGINT is not one.
    let _ =
        signal_hook::flag::register_conditional_shutdown(sig, exit::INTERRUPTED.into(), Arc::clone(&flag));
    let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    flag
}

/// Watches `flag` while a request runs and cancels it when set. Dropping the guard stops the
/// watcher.
struct CancelOnInterrupt {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CancelOnInterrupt {
    fn start(flag: &Arc<AtomicBool>, canceller: llama_shm::Canceller) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let (flag, stop) = (Arc::clone(flag), Arc::clone(&done));
        let thread = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if flag.load(Ordering::SeqCst) {
                    canceller.cancel();
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for CancelOnInterrupt {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Prints streamed text as it arrives, holding back trailing whitespace so the answer ends
/// with exactly one newline.
struct Printer<W: Write> {
    out: W,
    held: String,
    error: Option<std::io::Error>,
    /// Whether any text was written.
    wrote: bool,
}

impl<W: Write> Printer<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            held: String::new(),
            error: None,
            wrote: false,
        }
    }
    fn chunk(&mut self, chunk: &str) {
        if self.error.is_some() {
            return;
        }
        let body = chunk.trim_end();
        let result = if body.is_empty() {
            self.held.push_str(chunk);
            Ok(())
        } else {
            self.wrote = true;
            let r = write!(self.out, "{}{}", self.held, body).and_then(|()| self.out.flush());
            self.held.clear();
            self.held.push_str(&chunk[body.len()..]);
            r
        };
        if let Err(e) = result {
            self.error = Some(e);
        }
    }
    /// Ends the answer with its newline; a request that `failed` before any text prints
    /// nothing at all.
    fn finish(mut self, failed: bool) -> std::io::Result<()> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if failed && !self.wrote {
            return Ok(());
        }
        writeln!(self.out)?;
        self.out.flush()
    }
}

fn request_options(max_tokens: Option<u32>, deadline: Option<f64>) -> RequestOptions {
    RequestOptions {
        deadline: deadline.map(Duration::from_secs_f64),
        max_tokens,
        ..RequestOptions::default()
    }
}

fn ask(args: &AskArgs) -> Result<(), (u8, String)> {
    let timeout = Duration::from_secs(args.timeout);
    let interrupted = interrupt_flag();
    let mut opts = request_options(args.max_tokens, args.deadline);
    opts.constraint = args.constraint.load()?;
    let mut client = connect(&args.conn, timeout)?;
    let prompts = Prompts {
        system: &args.system,
        user: &args.prompt,
    };
    let (result, printed) = {
        let _watch = CancelOnInterrupt::start(&interrupted, client.canceller());
        if args.json {
            (client.request(prompts, &opts), Ok(()))
        } else {
            let mut printer = Printer::new(std::io::stdout().lock());
            let r = client.stream(prompts, &opts, |c| printer.chunk(c));
            let printed = printer.finish(r.is_err());
            (r, printed)
        }
    };
    disconnect(client, args.conn.attach.is_some());
    let response = result.map_err(|e| (exit::REQUEST, describe(&e)))?;
    printed.map_err(|e| (exit::REQUEST, format!("writing the answer: {e}")))?;
    if args.json {
        print_json(&response).map_err(|e| (exit::REQUEST, format!("writing the answer: {e}")))?;
    }
    finish_note(&response)
}

/// A line on stderr when the answer did not end by itself; exit 130 after Ctrl-C.
fn finish_note(r: &Response) -> Result<(), (u8, String)> {
    match r.finish {
        Finish::Cancelled => Err((
            exit::INTERRUPTED,
            "interrupted: the answer above is partial".into(),
        )),
        Finish::Deadline => {
            eprintln!("llama-shm: the deadline passed: the answer above is partial");
            Ok(())
        }
        Finish::Length => {
            eprintln!("llama-shm: the answer reached its token limit");
            Ok(())
        }
        _ => Ok(()),
    }
}

fn connect(conn: &ConnArgs, timeout: Duration) -> Result<Client, (u8, String)> {
    match &conn.attach {
        Some(prefix) => Client::builder()
            .request_timeout(timeout)
            .max_answer_bytes(conn.max_answer_bytes)
            .attach(prefix)
            .map_err(|e| (exit::STARTUP, format!("cannot attach to {prefix}: {e}"))),
        None => spawn(conn, timeout).map_err(|e| (exit::STARTUP, e.to_string())),
    }
}

fn disconnect(client: Client, attached: bool) {
    if attached {
        client.detach();
    } else if let Err(e) = client.shutdown() {
        tracing::warn!("worker shutdown: {e}");
    }
}

fn spawn(conn: &ConnArgs, timeout: Duration) -> Result<Client, SpawnError> {
    let worker = conn
        .worker
        .clone()
        .or_else(llama_shm::internals::client::default_worker_path)
        .unwrap_or_else(|| PathBuf::from("llama-shm-worker"));
    let b = Client::builder()
        .worker(worker)
        .startup_timeout(timeout)
        .request_timeout(timeout)
        .max_answer_bytes(conn.max_answer_bytes)
        .engine(EngineSettings {
            echo: conn.engine == EngineKind::Echo,
            model: conn.model.clone(),
            seed: conn.seed,
            greedy: conn.greedy,
            ..EngineSettings::default()
        })
        .args(&conn.worker_args);
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

fn print_json(r: &Response) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let v = serde_json::json!({
        "text": r.text,
        "truncated": r.truncated,
        "system_truncated": r.system_truncated,
        "user_truncated": r.user_truncated,
        "finish": format!("{:?}", r.finish).to_lowercase(),
        "dropped_messages": r.dropped_messages,
        "usage": {
            "prompt_tokens": r.usage.prompt_tokens,
            "cached_tokens": r.usage.cached_tokens,
            "generated_tokens": r.usage.generated_tokens,
            "prompt_ms": r.usage.prompt_time.as_secs_f64() * 1e3,
            "generation_ms": r.usage.generation_time.as_secs_f64() * 1e3,
        },
    });
    writeln!(out, "{v}")?;
    out.flush()
}
