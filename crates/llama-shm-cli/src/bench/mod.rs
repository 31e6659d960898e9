//! `llama-shm bench`: latency of the shared-memory transport against ordinary IPC baselines.

pub mod baselines;
pub mod stats;
