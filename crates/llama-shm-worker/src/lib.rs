//! The llama.cpp engine of `llama-shm-worker` (feature `llama`, on by default). The binary in
//! `main.rs` brings it to the shared command line (`llama_shm_serve::command`); benchmarks
//! also use it in-process to compare.
#![warn(missing_docs)]

#[cfg(feature = "llama")]
pub mod llama;
