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

pub mod objects;
pub mod os;

pub mod protocol;

mod sync;
pub mod wire;
pub mod worker;

pub use client::pool::Pool;
pub use client::{
    Canceller, Client, ClientBuilder, Mode, RequestError, RequestOptions, Response, SpawnError,
};
pub use wire::names::Prefix;
pub use wire::text::Policy;
pub use worker::{EchoEngine, Engine};

/// The README's Rust examples, compiled as doctests so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
