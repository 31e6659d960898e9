//! What every worker binary shares: its command line ([`command`]: arguments, serving,
//! `--test`, the guardian) and the logging set-up ([`logging`], also the `llama-shm` CLI's).
//! A binary brings its model engines as a [`command::Models`]: `llama-shm-worker` (package
//! `llama-shm-worker`) the llama.cpp engine, `llama-shm-echo-worker` (this package) none. The
//! second links no llama.cpp, so it starts in about half the time.
#![warn(missing_docs)]

pub mod command;
pub mod logging;
