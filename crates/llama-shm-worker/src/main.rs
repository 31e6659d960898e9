//! `llama-shm-worker`: serves an engine over the seed's shared-memory protocol.
//!
//! Started with no arguments it behaves like the seed's chatbot: it creates the seed's names
//! (`/llama_cpp_shared_mem`, `/llama_cpp_sem_*`) and serves until a client sets the shutdown
//! flag or SIGINT/SIGTERM arrives. `--test` answers one request on stdout. A client that
//! spawns the worker passes `--control-stdin`: the objects exist already, the auth token
//! arrives on stdin (a socket), and the worker exits when that socket hangs up.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use llama_shm::internals::os::{locate, signals};
use llama_shm::internals::worker::batch::EchoBatch;
use llama_shm::internals::worker::host::{self, Engines, HostOptions};
use llama_shm::{Cancel, EchoEngine, Engine, EngineRequest, LimitedSink, Prefix};

/// Exit code for a failure before serving started (objects, model, token).
const EXIT_STARTUP: u8 = 3;
/// Exit code for arguments refused after parsing (as clap's own usage errors).
const EXIT_USAGE: u8 = 2;
/// Exit code for a failure while serving.
const EXIT_RUNTIME: u8 = 1;

#[cfg(feature = "llama")]
use llama_shm_worker::llama;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EngineKind {
    /// A GGUF model through llama.cpp (the seed's chatbot).
    Llama,
    /// Answers `{system}\n{user}`: no model, for tests and benchmarks.
    Echo,
}

/// Serve a local model (or the echo engine) over POSIX shared memory, wire-compatible with
/// the seed's chatbot.
#[derive(Debug, Parser)]
#[command(name = "llama-shm-worker", version, about, long_about = None)]
struct Args {
    /// Inference engine.
    #[arg(long, value_enum, default_value = "llama")]
    engine: EngineKind,
    /// GGUF model (default: $LLAMA_SHM_MODEL, else ./models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Context size in tokens.
    #[arg(long, default_value_t = 2048)]
    ctx: u32,
    /// Threads for generation and prompt processing (default: number of cores).
    #[arg(long)]
    threads: Option<u32>,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    temp: f32,
    /// min-p sampling threshold.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    seed: u32,
    /// Greedy (deterministic) sampling.
    #[arg(long)]
    greedy: bool,
    /// Stop after N generated tokens (default: end of turn or the response limit).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Keep generating past end-of-generation tokens (benchmarks: forces --max-tokens tokens).
    #[arg(long, hide = true)]
    ignore_eog: bool,
    /// With --test: print the templated prompt's token ids (JSON) instead of answering.
    #[arg(long, requires = "test")]
    dump_tokens: bool,
    /// Object-name prefix: objects are /PREFIX_shared_mem and /PREFIX_sem_*.
    #[arg(long, default_value = llama_shm::SEED_PREFIX)]
    prefix: Prefix,
    /// Permission bits (octal) for created objects.
    #[arg(long, default_value = "600", value_parser = parse_octal)]
    mode: u32,
    /// Answer one request from the command line on stdout and exit.
    #[arg(long)]
    test: bool,
    /// User prompt for --test.
    #[arg(long, requires = "test")]
    user: Option<String>,
    /// System prompt for --test.
    #[arg(long, default_value = "", requires = "test")]
    system: String,
    /// With --test: print the answer piece by piece as it is generated (like the seed's
    /// chatbot in streaming mode).
    #[arg(long, requires = "test")]
    stream: bool,
    /// Evaluate every prompt from scratch instead of reusing the KV cache of the previous
    /// request's common prefix.
    #[arg(long)]
    no_prefix_cache: bool,
    /// A GGUF model for embeddings requests instead of --model (loaded at the first one).
    #[arg(long, value_name = "FILE")]
    embedding_model: Option<PathBuf>,
    /// Echo engine: repeat the answer N times (to reach the response limit).
    #[arg(long, default_value_t = 1)]
    echo_repeat: u32,
    /// Echo engine: wait N ms before answering (cancellable), for failure tests.
    #[arg(long, default_value_t = 0)]
    echo_delay_ms: u64,
    /// Echo engine: answer in pieces of at most 4 bytes, pausing N µs before each (a model's
    /// pace, for streaming and cancellation tests).
    #[arg(long, default_value_t = 0)]
    echo_piece_us: u64,
    /// Echo engine: answer exactly N bytes (the echo repeated and cut), for benchmarks.
    #[arg(long)]
    echo_bytes: Option<usize>,
    /// Adaptive wait: spin at most N µs on a peer running on another CPU before blocking
    /// (0 blocks at once).
    #[arg(long, default_value_t = 50)]
    spin_us: u64,
    /// Serve up to N requests of extended clients at once, batched in one engine (a standalone
    /// worker): slots PREFIX.slot1..N for them, and the prefix's own names (slot 0) for
    /// seed-era clients. 1 serves one request at a time on the prefix's own names.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    parallel: u32,
    /// How many clients may wait, first come first served, when every slot is busy (a
    /// standalone worker; at most 256). One more gets a "busy" error at once; 0: nobody waits.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=256))]
    max_queue: u32,
    /// Require this auth token on every request: a file holding 64 hex digits.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Spawned by a client: attach to its objects, read the token from stdin (a socket),
    /// exit when it hangs up.
    #[arg(long, hide = true)]
    control_stdin: bool,
    /// Tests: pause N ms at each step of start-up (start, signals ready, objects created, stop
    /// watcher running), so a signal can be sent in each window on purpose.
    #[arg(long, hide = true, default_value_t = 0)]
    startup_pause_ms: u64,
    /// Accept a --mode that lets other users write the objects: any of them can then crash
    /// this worker (and its clients) by shrinking an object (SIGBUS). Refused without this.
    #[arg(long)]
    others_may_crash_this_worker: bool,
    /// Internal: run as a standalone worker's guardian (stdin: the worker's socket).
    #[arg(long, hide = true)]
    guard: bool,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    let v =
        u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("not an octal mode: {e}"))?;
    if v > 0o777 {
        return Err(format!("mode {v:o} has bits beyond 0777"));
    }
    Ok(v)
}

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Startup(String),
    #[error("{0}")]
    Runtime(String),
}

#[cfg(feature = "llama")]
fn tune_openmp(args: &Args) {
    if args.engine == EngineKind::Llama {
        llama_shm_worker::llama::reexec_with_short_openmp_spin();
    }
}

#[cfg(not(feature = "llama"))]
fn tune_openmp(_: &Args) {}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.guard {
        return run_guardian();
    }
    if !args.test {
        // Held back from here until the handlers are in place (`host::run`): a stop signal
        // at any moment of start-up — during the re-exec below, while the objects are
        // created, during the model load — is then a graceful exit that removes what was
        // created, never the default action with the names left behind. (The mask survives
        // the re-exec, and so do pending signals.)
        let _ = signals::hold_stop_signals();
    }
    tune_openmp(&args);
    llama_shm_worker::logging::init();
    let result = if args.test {
        run_test(&args)
    } else {
        run_server(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "llama-shm-worker: error: {e}");
            ExitCode::from(match e {
                WorkerError::Usage(_) => EXIT_USAGE,
                WorkerError::Startup(_) => EXIT_STARTUP,
                WorkerError::Runtime(_) => EXIT_RUNTIME,
            })
        }
    }
}

/// The engine for `--parallel`: one request at a time, or a batch of that many.
fn load_engines(args: &Args) -> Result<Engines, WorkerError> {
    if args.parallel == 1 {
        return load_engine(args).map(Engines::One);
    }
    match args.engine {
        EngineKind::Echo => {
            let mut engine = EchoBatch::new(
                args.parallel as usize + 1,
                Duration::from_micros(args.echo_piece_us),
            );
            engine.repeat = args.echo_repeat;
            Ok(Engines::Batch(Box::new(engine)))
        }
        #[cfg(feature = "llama")]
        EngineKind::Llama => {
            let mut opts = llama_options(args);
            // The extended clients' slots and the seed names' slot 0.
            opts.parallel = args.parallel + 1;
            let t = Instant::now();
            let engine =
                llama::LlamaBatchEngine::load(&opts).map_err(|e| WorkerError::Startup(e.to_string()))?;
            tracing::info!(model = %opts.model.display(), sequences = opts.parallel, ms = t.elapsed().as_millis() as u64, "model loaded (batched)");
            Ok(Engines::Batch(Box::new(engine)))
        }
        #[cfg(not(feature = "llama"))]
        EngineKind::Llama => Err(WorkerError::Startup(
            "this llama-shm-worker was built without the `llama` feature; use --engine echo".into(),
        )),
    }
}

/// The model to load: `--model`, else the default (see `llama_shm::internals::os::locate`).
fn resolve_model(arg: Option<&PathBuf>) -> PathBuf {
    arg.cloned().unwrap_or_else(locate::default_model)
}

fn load_engine(args: &Args) -> Result<Box<dyn Engine>, WorkerError> {
    match args.engine {
        EngineKind::Echo => Ok(Box::new(EchoEngine {
            repeat: args.echo_repeat,
            delay: Duration::from_millis(args.echo_delay_ms),
            piece_delay: Duration::from_micros(args.echo_piece_us),
            answer_bytes: args.echo_bytes,
        })),
        #[cfg(feature = "llama")]
        EngineKind::Llama => {
            let opts = llama_options(args);
            let t = Instant::now();
            let engine = llama::LlamaEngine::load(&opts).map_err(|e| WorkerError::Startup(e.to_string()))?;
            tracing::info!(model = %opts.model.display(), ms = t.elapsed().as_millis() as u64, "model loaded");
            Ok(Box::new(engine))
        }
        #[cfg(not(feature = "llama"))]
        EngineKind::Llama => Err(WorkerError::Startup(
            "this llama-shm-worker was built without the `llama` feature; use --engine echo".into(),
        )),
    }
}

#[cfg(feature = "llama")]
fn llama_options(args: &Args) -> llama::LlamaOptions {
    let mut opts = llama::LlamaOptions::new(resolve_model(args.model.as_ref()));
    opts.ctx = args.ctx;
    if let Some(t) = args.threads {
        opts.threads = Some(t as i32);
    }
    opts.sampling = llama::Sampling {
        temp: args.temp,
        min_p: args.min_p,
        seed: args.seed,
        greedy: args.greedy,
        max_tokens: args.max_tokens,
        ignore_eog: args.ignore_eog,
    };
    opts.prefix_cache = !args.no_prefix_cache;
    opts.embedding_model = args.embedding_model.clone();
    opts
}

fn run_test(args: &Args) -> Result<(), WorkerError> {
    let user = args
        .user
        .as_deref()
        .ok_or_else(|| WorkerError::Startup("--test needs --user".into()))?;
    if args.dump_tokens {
        return dump_tokens(args, user);
    }
    let mut engine = load_engine(args)?;
    let mut answer = String::new();
    let request = EngineRequest {
        system: &args.system,
        user,
        max_tokens: None,
        ..EngineRequest::default()
    };
    let out = std::io::stdout();
    let written = if args.stream {
        let mut sink = PrintingSink {
            kept: LimitedSink::seed_sized(&mut answer),
            out: out.lock(),
            failed: None,
        };
        let generated = engine.generate(&request, &mut sink, &Cancel::new());
        if let Some(e) = sink.failed {
            return Err(WorkerError::Runtime(format!("writing to stdout: {e}")));
        }
        generated.map_err(|e| WorkerError::Runtime(e.to_string()))?;
        let mut out = sink.out;
        writeln!(out).and_then(|()| out.flush())
    } else {
        let mut sink = LimitedSink::seed_sized(&mut answer);
        engine
            .generate(&request, &mut sink, &Cancel::new())
            .map_err(|e| WorkerError::Runtime(e.to_string()))?;
        let mut out = out.lock();
        writeln!(out, "{answer}").and_then(|()| out.flush())
    };
    written.map_err(|e| WorkerError::Runtime(e.to_string()))
}

/// `--test --stream`: prints each piece the moment it is generated (the same bound as the
/// wire's, 32 767 bytes), and stops the engine if stdout fails (a closed pipe, say).
struct PrintingSink<'a> {
    kept: LimitedSink<'a>,
    out: std::io::StdoutLock<'static>,
    failed: Option<std::io::Error>,
}

impl llama_shm::ResponseSink for PrintingSink<'_> {
    fn push(&mut self, piece: &str) -> bool {
        let before = self.kept.as_str().len();
        let more = self.kept.push(piece);
        let new = &self.kept.as_str()[before..];
        if let Err(e) = self.out.write_all(new.as_bytes()).and_then(|()| self.out.flush()) {
            self.failed = Some(e);
            return false;
        }
        more
    }
}

#[cfg(feature = "llama")]
fn dump_tokens(args: &Args, user: &str) -> Result<(), WorkerError> {
    if args.engine != EngineKind::Llama {
        return Err(WorkerError::Startup("--dump-tokens needs --engine llama".into()));
    }
    let engine =
        llama::LlamaEngine::load(&llama_options(args)).map_err(|e| WorkerError::Startup(e.to_string()))?;
    let tokens = engine
        .prompt_tokens(&EngineRequest {
            system: &args.system,
            user,
            max_tokens: None,
            ..EngineRequest::default()
        })
        .map_err(|e| WorkerError::Runtime(e.to_string()))?;
    let list: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    println!("[{}]", list.join(","));
    Ok(())
}

#[cfg(not(feature = "llama"))]
fn dump_tokens(_: &Args, _: &str) -> Result<(), WorkerError> {
    Err(WorkerError::Startup("built without the `llama` feature".into()))
}

fn run_server(args: &Args) -> Result<(), WorkerError> {
    let opts = HostOptions {
        prefix: args.prefix.clone(),
        permissions: args.mode,
        accept_permissions: args.others_may_crash_this_worker,
        spawned: args.control_stdin,
        token_file: args.token_file.clone(),
        spin: Duration::from_micros(args.spin_us),
        startup_pause: Duration::from_millis(args.startup_pause_ms),
        parallel: args.parallel,
        max_queue: args.max_queue,
    };
    host::run(&opts, || load_engines(args).map_err(|e| e.to_string().into())).map_err(|e| {
        if e.is_usage() {
            WorkerError::Usage(e.to_string())
        } else if e.while_serving() {
            WorkerError::Runtime(e.to_string())
        } else {
            WorkerError::Startup(e.to_string())
        }
    })?;
    Ok(())
}

/// The guardian mode (`--guard`, started by a standalone worker): removes the worker's names
/// once it is gone (see `llama_shm::internals::objects::guardian`).
fn run_guardian() -> ExitCode {
    let removed = host::run_guardian();
    if !removed.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "llama-shm-worker (guardian): the worker died without removing its names; removed {}",
            removed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    ExitCode::SUCCESS
}
