//! # llama-shm
//!
//! Talk to a local llama.cpp worker through POSIX shared memory and semaphores — the seed's
//! wire, byte for byte — without ever hanging on, leaking for, or trusting the other side.
//!
//! Layers, from the bottom: [`wire`] (layout and text marshalling, no OS), [`os`] (the only
//! `unsafe`: shared memory, named semaphores, processes), [`protocol`] (the three-semaphore
//! cycle, generic over its primitives so loom can check it), [`objects`] (the protocol on
//! POSIX objects), then [`client`] and [`worker`].
#![warn(missing_docs)]

pub mod client;
pub mod control;
pub mod engine;
pub mod guardian;
pub mod names;
pub mod objects;
pub mod os;
pub mod pool;
pub mod protocol;
pub mod standalone;
mod sync;
pub mod wire;
pub mod worker;

pub use client::{
    Canceller, Client, ClientBuilder, Mode, RequestError, RequestOptions, Response, SpawnError,
};
pub use engine::{EchoEngine, Engine};
pub use names::Prefix;
pub use pool::Pool;
pub use wire::text::Policy;

/// The README's Rust examples, compiled as doctests so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
