//! The worker's command line, shared by its two binaries: `llama-shm-worker` (the llama.cpp
//! engine and the echo engine) and `llama-shm-echo-worker` (the echo engine only). The second
//! links no llama.cpp, no libstdc++ and no libgomp, so it starts in about half the time: the
//! binary for tests, benchmarks and frontends under development.
//!
//! A binary brings its model engines as a [`Models`]; [`main`] parses the arguments, then
//! serves, answers `--test`, or runs as a standalone worker's guardian.

mod args;
mod run;

pub use args::{Args, EngineKind};
pub use run::main;

use llama_shm::internals::worker::batch::BatchEngine;
use llama_shm::{Engine, EngineRequest};

/// Why the worker did not serve to its end; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Arguments refused after parsing (exit code 2, as clap's own usage errors).
    #[error("{0}")]
    Usage(String),
    /// A failure before serving started: objects, model, token (exit code 3).
    #[error("{0}")]
    Startup(String),
    /// A failure while serving (exit code 1).
    #[error("{0}")]
    Runtime(String),
}

/// The model engines of a binary (`--engine llama`); the echo engine is always there.
pub trait Models {
    /// The engine when `--engine` is not given.
    fn default_engine(&self) -> EngineKind;

    /// Runs first, before the logging and the signal handlers, when `--engine llama` serves
    /// (the llama binary re-executes itself here with OpenMP's spin shortened).
    fn prepare(&self, args: &Args) {
        let _ = args;
    }

    /// The engine for one request at a time.
    ///
    /// # Errors
    /// [`WorkerError::Startup`] when it cannot be loaded.
    fn load(&self, args: &Args) -> Result<Box<dyn Engine>, WorkerError>;

    /// The engine for `sequences` requests at once.
    ///
    /// # Errors
    /// [`WorkerError::Startup`] when it cannot be loaded.
    fn load_batch(&self, args: &Args, sequences: u32) -> Result<Box<dyn BatchEngine>, WorkerError>;

    /// `--test --dump-tokens`: the templated prompt's token ids.
    ///
    /// # Errors
    /// [`WorkerError::Startup`] when the model cannot be loaded, [`WorkerError::Runtime`]
    /// when the prompt cannot be templated.
    fn prompt_tokens(&self, args: &Args, request: &EngineRequest<'_>) -> Result<Vec<String>, WorkerError>;
}

/// No model engines: `--engine llama` is refused, naming the binary that has them.
#[derive(Debug, Clone, Copy)]
pub struct EchoOnly;

impl EchoOnly {
    fn refuse() -> WorkerError {
        WorkerError::Startup(
            "this binary serves the echo engine only (no llama.cpp linked); use llama-shm-worker for a model"
                .into(),
        )
    }
}

impl Models for EchoOnly {
    fn default_engine(&self) -> EngineKind {
        EngineKind::Echo
    }

    fn load(&self, _: &Args) -> Result<Box<dyn Engine>, WorkerError> {
        Err(Self::refuse())
    }

    fn load_batch(&self, _: &Args, _: u32) -> Result<Box<dyn BatchEngine>, WorkerError> {
        Err(Self::refuse())
    }

    fn prompt_tokens(&self, _: &Args, _: &EngineRequest<'_>) -> Result<Vec<String>, WorkerError> {
        Err(Self::refuse())
    }
}
