//! `llama-shm-worker`: serves an engine over the seed's shared-memory protocol.
//!
//! Started with no arguments it behaves like the seed's chatbot: it creates the seed's names
//! (`/llama_cpp_shared_mem`, `/llama_cpp_sem_*`) and serves until a client sets the shutdown
//! flag or SIGINT/SIGTERM arrives. `--test` answers one request on stdout. A client that
//! spawns the worker passes `--control-stdin`: the objects exist already, the auth token
//! arrives on stdin (a socket), and the worker exits when that socket hangs up.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use llama_shm::objects::clients::SharedClients;
use llama_shm::objects::guardian::Guardian;
use llama_shm::objects::{self, ExtInit, PosixChannel, Trust};
use llama_shm::os::control::{self, ControlMsg};
use llama_shm::os::process::{Watch, Watcher};
use llama_shm::protocol::Region;
use llama_shm::wire::layout::{Word32, FEATURE_STREAMING, FEATURE_TOKEN_REQUIRED, RESPONSE_LEN, TOKEN_LEN};
use llama_shm::wire::names::Prefix;
use llama_shm::worker::engine::{Cancel, EchoEngine, Engine, EngineRequest};
use llama_shm::worker::{serve, LimitedSink, ServeEnd, ServeOptions};
use nix::sys::signal::{SigSet, Signal};

/// Exit code for a failure before serving started (objects, model, token).
const EXIT_STARTUP: u8 = 3;
/// Exit code for arguments refused after parsing (as clap's own usage errors).
const EXIT_USAGE: u8 = 2;
/// Exit code for a failure while serving.
const EXIT_RUNTIME: u8 = 1;

#[cfg(feature = "llama")]
use llama_shm_worker::llama;

/// The default model's file name, looked for in `./models/`.
const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

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
    #[arg(long, default_value = llama_shm::wire::names::SEED_PREFIX)]
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
    /// Evaluate every prompt from scratch instead of reusing the KV cache of the previous
    /// request's common prefix.
    #[arg(long)]
    no_prefix_cache: bool,
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

/// The signals that end a serving worker gracefully (names removed, exit 0).
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

fn stop_signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for sig in STOP_SIGNALS {
        set.add(sig);
    }
    set
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.guard {
        return run_guardian();
    }
    if !args.test {
        // Held back from here until the handlers are in place (`run_server`): a stop signal
        // at any moment of start-up — during the re-exec below, while the objects are
        // created, during the model load — is then a graceful exit that removes what was
        // created, never the default action with the names left behind. (The mask survives
        // the re-exec, and so do pending signals.)
        let _ = stop_signal_set().thread_block();
    }
    tune_openmp(&args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(|| QuietStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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

/// The model to load: `--model`, else `$LLAMA_SHM_MODEL`, else `./models/<default>`, else
/// `models/<default>` at the workspace root this binary was built in.
fn resolve_model(arg: Option<&PathBuf>) -> PathBuf {
    if let Some(p) = arg {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("LLAMA_SHM_MODEL").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let local = PathBuf::from("models").join(DEFAULT_MODEL_FILE);
    if local.exists() {
        return local;
    }
    // target/<profile>/llama-shm-worker → <workspace>/models/…
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            Some(
                exe.parent()?
                    .parent()?
                    .parent()?
                    .join("models")
                    .join(DEFAULT_MODEL_FILE),
            )
        })
        .filter(|p| p.exists())
        .unwrap_or(local)
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
    let mut answer = String::with_capacity(RESPONSE_LEN);
    let mut sink = LimitedSink::new(&mut answer, RESPONSE_LEN - 1);
    engine
        .generate(
            &EngineRequest {
                system: &args.system,
                user,
                max_tokens: None,
            },
            &mut sink,
            &Cancel::new(),
        )
        .map_err(|e| WorkerError::Runtime(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{answer}")
        .and_then(|()| out.flush())
        .map_err(|e| WorkerError::Runtime(e.to_string()))
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

fn read_token_file(path: &PathBuf) -> Result<[u8; TOKEN_LEN], WorkerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| WorkerError::Startup(format!("cannot read token file {}: {e}", path.display())))?;
    let hex = text.trim();
    let bad = || {
        WorkerError::Startup(format!(
            "token file {} must hold {} hex digits",
            path.display(),
            TOKEN_LEN * 2
        ))
    };
    if hex.len() != TOKEN_LEN * 2 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut token = [0u8; TOKEN_LEN];
    for (i, b) in token.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(token)
}

/// Why serving should stop, set by the watcher thread.
#[derive(Debug, Default)]
struct StopState {
    stop: AtomicBool,
}

fn run_server(args: &Args) -> Result<(), WorkerError> {
    let startup = |e: &dyn std::fmt::Display| WorkerError::Startup(e.to_string());
    objects::check_mode(args.mode, args.others_may_crash_this_worker)
        .map_err(|e| WorkerError::Usage(e.to_string()))?;
    let me = std::process::id();
    pause_for_tests(args, "start (stop signals held back)");
    // 0. Stop signals first, before anything exists that would need removing: from here a
    //    signal only writes to this pipe, which the stop watcher reads once it runs.
    let (sig_rx, sig_tx) = UnixStream::pair().map_err(|e| startup(&e))?;
    for sig in STOP_SIGNALS {
        signal_hook::low_level::pipe::register(sig as i32, sig_tx.try_clone().map_err(|e| startup(&e))?)
            .map_err(|e| startup(&e))?;
    }
    let _ = stop_signal_set().thread_unblock();
    pause_for_tests(args, "signals ready");
    // 1. The objects: attach to the spawning client's, or create our own (seed-style).
    // `_guardian` first: dropped last, after our own removal of the names (then it finds
    // nothing to do).
    // Spawned: the client creates the names while we wait for its token. If it dies before
    // it unlinks them, they are ours to remove on the way out (only when their creator is
    // dead and nobody else maps them: a live client's names are left alone).
    let _spawn_window = args.control_stdin.then(|| ReclaimOnExit(args.prefix.clone()));
    let (_guardian, channel, mut control_sock, token) = if args.control_stdin {
        let fd = std::io::stdin().lock();
        let owned = std::os::fd::AsFd::as_fd(&fd)
            .try_clone_to_owned()
            .map_err(|e| startup(&e))?;
        let mut sock = UnixStream::from(owned);
        let token = control::recv_token(&mut sock, Instant::now() + Duration::from_secs(10))
            .map_err(|e| startup(&format!("no auth token from the spawning client: {e}")))?;
        let channel = objects::open(&args.prefix, Trust { max_mode: args.mode }).map_err(|e| {
            let _ = control::send(&mut sock, &ControlMsg::Error(e.to_string()));
            startup(&e)
        })?;
        (None, channel, Some(sock), Some(token))
    } else {
        let token = args.token_file.as_ref().map(read_token_file).transpose()?;
        // The guardian first: it removes our names if we die by SIGKILL.
        let mut guardian = Guardian::spawn(Path::new("/proc/self/exe"), &["--guard"])
            .map_err(|e| startup(&format!("cannot start the guardian: {e}")))?;
        objects::reclaim(&args.prefix).map_err(|e| startup(&e))?;
        let features = if token.is_some() {
            FEATURE_TOKEN_REQUIRED
        } else {
            0
        };
        // Each object is told to the guardian before its name appears: at no moment can a
        // SIGKILL leave a name the guardian does not know.
        let init = ExtInit {
            creator_pid: me,
            features,
            guardian_pid: guardian.pid(),
        };
        let channel = objects::create_guarded(&args.prefix, args.mode, init, &mut |id| guardian.guard(id))
            .map_err(|e| startup(&e))?;
        (Some(guardian), channel, None, token)
    };
    pause_for_tests(args, "objects created");
    channel.region.store32(Word32::WorkerPid, me);
    let features = channel.region.load32(Word32::Features);
    channel
        .region
        .store32(Word32::Features, features | FEATURE_STREAMING);
    if let Some(sock) = control_sock.as_mut() {
        // The client unlinks the names once it reads this.
        control::send(sock, &ControlMsg::Attached).map_err(|e| startup(&format!("control socket: {e}")))?;
    }
    let mut channel = channel;
    channel.adaptive = llama_shm::protocol::AdaptiveWait::new(Duration::from_micros(args.spin_us));
    let channel = Arc::new(channel);
    // Names are unlinked on every exit path below (created handles unlink on drop; a
    // spawned worker removes them too, in case its client died before it could).
    let _names = NameGuard {
        channel: Arc::clone(&channel),
        spawned: args.control_stdin,
    };

    // 2. Stop conditions: SIGINT/SIGTERM, and the spawning client hanging up.
    let stop = Arc::new(StopState::default());
    let cancel = Cancel::new();
    let mut watches = vec![Watch::Readable(sig_rx.into())];
    if let Some(sock) = &control_sock {
        watches.push(Watch::HangUp(sock.try_clone().map_err(|e| startup(&e))?.into()));
        // The client process itself too: a child it forked (Python's multiprocessing, say)
        // inherits the socket and would keep it open after the client's death.
        let creator = channel.region.load32(Word32::CreatorPid);
        match llama_shm::os::process::pidfd_open(creator) {
            Ok(fd) => watches.push(Watch::Pidfd(fd)),
            Err(e) => tracing::debug!("no pidfd for the spawning client {creator}: {e}"),
        }
    }
    let _watcher = {
        let (stop, cancel, channel) = (Arc::clone(&stop), cancel.clone(), Arc::clone(&channel));
        Watcher::spawn("llama-shm-stop", watches, move |which| {
            tracing::info!(
                "{}: stopping",
                if which == 0 {
                    "signal received"
                } else {
                    "spawning client is gone"
                }
            );
            stop.stop.store(true, Ordering::SeqCst);
            cancel.cancel();
            let _ = channel.prompts_written.post();
        })
        .map_err(|e| startup(&e))?
    };

    pause_for_tests(args, "stop watcher running");
    if stop.stop.load(Ordering::SeqCst) {
        // Stopped during start-up: do not load the model only to exit.
        tracing::info!("stopped during start-up");
        return Ok(());
    }
    // 3. The engine (model load), then serve. Objects exist before the model loads, so a
    //    seed client that opens them early just waits on `ready`.
    let mut engine = match load_engine(args) {
        Ok(e) => e,
        Err(e) => {
            if let Some(sock) = control_sock.as_mut() {
                let _ = control::send(sock, &ControlMsg::Error(e.to_string()));
            }
            return Err(e);
        }
    };
    let opts = ServeOptions {
        token,
        // Shared by whoever attaches: a client that dies holding the turn or mid-answer must
        // not wedge the worker for the others. (A spawned worker ends with its one client.)
        clients: (!args.control_stdin)
            .then(|| std::sync::Arc::new(SharedClients::new(Arc::clone(&channel))) as std::sync::Arc<_>),
        ..ServeOptions::default()
    };
    let stopped = || stop.stop.load(Ordering::SeqCst);
    let (end, served) = serve(&*channel, &mut *engine, &opts, &stopped, &cancel)
        .map_err(|e| WorkerError::Runtime(format!("semaphore failure: {e}")))?;
    tracing::info!(?end, served, "worker exiting");
    match end {
        ServeEnd::ShutdownRequested | ServeEnd::Stopped => Ok(()),
    }
}

/// The guardian mode (`--guard`, started by a standalone worker): removes the worker's names
/// once it is gone (see `llama_shm::objects::guardian`).
fn run_guardian() -> ExitCode {
    use nix::sys::signal::{signal, SigHandler};
    // A terminal's Ctrl-C or hang-up is for the worker; the guardian ends when the worker does.
    for sig in [Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; nothing else in this process relies on
        // these signals.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    let removed = llama_shm::objects::guardian::watch(std::io::stdin().lock());
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

/// With the hidden `--startup-pause-ms N`: sleeps N ms at the named step of start-up, so that
/// tests can deliver a signal in each window on purpose.
fn pause_for_tests(args: &Args, step: &str) {
    if args.startup_pause_ms > 0 {
        tracing::debug!("start-up step: {step}");
        std::thread::sleep(Duration::from_millis(args.startup_pause_ms));
    }
}

/// stderr that never fails: a spawned worker's stderr is a pipe to its client, which may be
/// gone (then a write is EPIPE). A log line must not end the worker — `eprintln!`, and the
/// error report of tracing's writer, panic on a failed write — least of all on its way out,
/// removing the names of that very client.
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Removes the stale names of a prefix (creator dead, unmapped) when dropped.
struct ReclaimOnExit(Prefix);

impl Drop for ReclaimOnExit {
    fn drop(&mut self) {
        if let Ok(objects::Presence::Stale { .. }) = objects::reclaim(&self.0) {
            tracing::info!("removed the names of a client that died while spawning us");
        }
    }
}

/// Removes the prefix's names when the worker exits, however it exits (short of SIGKILL).
struct NameGuard {
    channel: Arc<PosixChannel>,
    spawned: bool,
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        if self.spawned {
            if let Err(e) = objects::unlink(&self.channel) {
                tracing::warn!("removing names: {e}");
            }
        }
        // Created (standalone) handles unlink themselves when the last Arc drops.
    }
}
