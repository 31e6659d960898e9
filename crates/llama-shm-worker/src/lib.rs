//! Engines of `llama-shm-worker` that need more than the core crate: the llama.cpp engine
//! (feature `llama`, on by default). The binary in `main.rs` serves them over shared memory;
//! benchmarks use them in-process to compare. Also the logging set-up of the binaries (the
//! worker's and the `llama-shm` CLI's).
#![warn(missing_docs)]

#[cfg(feature = "llama")]
pub mod llama;
pub mod logging;
