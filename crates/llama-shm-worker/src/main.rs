//! `llama-shm-worker`: serves a model through llama.cpp (or the echo engine) over the seed's
//! shared-memory protocol.
//!
//! Started with no arguments it behaves like the seed's chatbot: it creates the seed's names
//! (`/llama_cpp_shared_mem`, `/llama_cpp_sem_*`) and serves until a client sets the shutdown
//! flag or SIGINT/SIGTERM arrives. `--test` answers one request on stdout. A client that
//! spawns the worker passes `--control-stdin`: the objects exist already, the auth token
//! arrives on stdin (a socket), and the worker exits when that socket hangs up. The command
//! line is `llama_shm_serve::command`'s; this file brings the llama.cpp engine to it.

use std::process::ExitCode;
use std::time::Instant;

use llama_shm::internals::os::locate;
use llama_shm::internals::worker::batch::BatchEngine;
use llama_shm::{Engine, EngineRequest};
use llama_shm_serve::command::{self, Args, EngineKind, Models, WorkerError};
use llama_shm_worker::llama;

/// The llama.cpp engines.
struct Llama;

impl Models for Llama {
    fn default_engine(&self) -> EngineKind {
        EngineKind::Llama
    }

    fn prepare(&self, _: &Args) {
        llama::reexec_with_short_openmp_spin();
    }

    fn load(&self, args: &Args) -> Result<Box<dyn Engine>, WorkerError> {
        let opts = llama_options(args);
        let t = Instant::now();
        let engine = llama::LlamaEngine::load(&opts).map_err(|e| WorkerError::Startup(e.to_string()))?;
        tracing::info!(model = %opts.model.display(), ms = t.elapsed().as_millis() as u64, "model loaded");
        Ok(Box::new(engine))
    }

    fn load_batch(&self, args: &Args, sequences: u32) -> Result<Box<dyn BatchEngine>, WorkerError> {
        let mut opts = llama_options(args);
        opts.parallel = sequences;
        let t = Instant::now();
        let engine = llama::LlamaBatchEngine::load(&opts).map_err(|e| WorkerError::Startup(e.to_string()))?;
        tracing::info!(model = %opts.model.display(), sequences, ms = t.elapsed().as_millis() as u64, "model loaded (batched)");
        Ok(Box::new(engine))
    }

    fn prompt_tokens(&self, args: &Args, request: &EngineRequest<'_>) -> Result<Vec<String>, WorkerError> {
        let engine = llama::LlamaEngine::load(&llama_options(args))
            .map_err(|e| WorkerError::Startup(e.to_string()))?;
        let tokens = engine
            .prompt_tokens(request)
            .map_err(|e| WorkerError::Runtime(e.to_string()))?;
        Ok(tokens.iter().map(|t| t.to_string()).collect())
    }
}

fn llama_options(args: &Args) -> llama::LlamaOptions {
    let mut opts = llama::LlamaOptions::new(args.model.clone().unwrap_or_else(locate::default_model));
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

fn main() -> ExitCode {
    command::main(
        "llama-shm-worker",
        "Serve a local model (or the echo engine) over POSIX shared memory, wire-compatible with \
         the seed's chatbot.",
        &Llama,
    )
}
