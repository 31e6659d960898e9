//! What the worker does with its arguments: serve (standalone or spawned by a client), answer
//! `--test` on stdout, or watch a standalone worker's names as its guardian.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use llama_shm::internals::os::signals;
use llama_shm::internals::worker::batch::EchoBatch;
use llama_shm::internals::worker::host::{self, Engines, HostOptions};
use llama_shm::{Cancel, EchoEngine, Engine, EngineRequest, LimitedSink};

use super::{Args, EngineKind, Models, WorkerError};

/// Exit code for a failure before serving started (objects, model, token).
const EXIT_STARTUP: u8 = 3;
/// Exit code for arguments refused after parsing (as clap's own usage errors).
const EXIT_USAGE: u8 = 2;
/// Exit code for a failure while serving.
const EXIT_RUNTIME: u8 = 1;

/// The worker binary `name` with the engines of `models`: parses the process's arguments
/// and runs.
pub fn main(name: &'static str, about: &'static str, models: &dyn Models) -> ExitCode {
    let default_engine = match models.default_engine() {
        EngineKind::Llama => "llama",
        EngineKind::Echo => "echo",
    };
    let command = Args::command()
        .name(name)
        .bin_name(name)
        .about(about)
        .mut_arg("engine", |a| a.default_value(default_engine));
    let args = match Args::from_arg_matches(&command.get_matches()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if args.guard {
        return run_guardian(name);
    }
    if !args.test {
        // Held back from here until the handlers are in place (`host::run`): a stop signal
        // at any moment of start-up — during the re-exec below, while the objects are
        // created, during the model load — is then a graceful exit that removes what was
        // created, never the default action with the names left behind. (The mask survives
        // the re-exec, and so do pending signals.)
        let _ = signals::hold_stop_signals();
    }
    if args.engine == EngineKind::Llama {
        models.prepare(&args);
    }
    crate::logging::init();
    let result = if args.test {
        run_test(&args, models)
    } else {
        run_server(&args, models)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{name}: error: {e}");
            ExitCode::from(match e {
                WorkerError::Usage(_) => EXIT_USAGE,
                WorkerError::Startup(_) => EXIT_STARTUP,
                WorkerError::Runtime(_) => EXIT_RUNTIME,
            })
        }
    }
}

/// The engine for `--parallel`: one request at a time, or a batch of that many.
fn load_engines(args: &Args, models: &dyn Models) -> Result<Engines, WorkerError> {
    if args.parallel == 1 {
        return load_engine(args, models).map(Engines::One);
    }
    // The extended clients' slots and the seed names' slot 0.
    let sequences = args.parallel + 1;
    match args.engine {
        EngineKind::Echo => {
            let mut engine = EchoBatch::new(sequences as usize, Duration::from_micros(args.echo_piece_us));
            engine.repeat = args.echo_repeat;
            Ok(Engines::Batch(Box::new(engine)))
        }
        EngineKind::Llama => models.load_batch(args, sequences).map(Engines::Batch),
    }
}

fn load_engine(args: &Args, models: &dyn Models) -> Result<Box<dyn Engine>, WorkerError> {
    match args.engine {
        EngineKind::Echo => Ok(Box::new(EchoEngine {
            repeat: args.echo_repeat,
            delay: Duration::from_millis(args.echo_delay_ms),
            piece_delay: Duration::from_micros(args.echo_piece_us),
            answer_bytes: args.echo_bytes,
        })),
        EngineKind::Llama => models.load(args),
    }
}

fn run_test(args: &Args, models: &dyn Models) -> Result<(), WorkerError> {
    let user = args
        .user
        .as_deref()
        .ok_or_else(|| WorkerError::Startup("--test needs --user".into()))?;
    if args.dump_tokens {
        return dump_tokens(args, models, user);
    }
    let mut engine = load_engine(args, models)?;
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

fn dump_tokens(args: &Args, models: &dyn Models, user: &str) -> Result<(), WorkerError> {
    if args.engine != EngineKind::Llama {
        return Err(WorkerError::Startup("--dump-tokens needs --engine llama".into()));
    }
    let tokens = models.prompt_tokens(
        args,
        &EngineRequest {
            system: &args.system,
            user,
            max_tokens: None,
            ..EngineRequest::default()
        },
    )?;
    println!("[{}]", tokens.join(","));
    Ok(())
}

fn run_server(args: &Args, models: &dyn Models) -> Result<(), WorkerError> {
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
    host::run(&opts, || {
        load_engines(args, models).map_err(|e| e.to_string().into())
    })
    .map_err(|e| {
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
fn run_guardian(name: &str) -> ExitCode {
    let removed = host::run_guardian();
    if !removed.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "{name} (guardian): the worker died without removing its names; removed {}",
            removed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    ExitCode::SUCCESS
}
