//! # llama-shm
//!
//! Talk to a local llama.cpp worker through POSIX shared memory and semaphores — the seed's
//! wire, byte for byte — without ever hanging on, leaking for, or trusting the other side.
//!
//! ## Start here
//! - [`Client`] (built by [`Client::builder`]): spawn a worker of your own, or attach to a
//!   running one by its [`Prefix`]; [`Client::send_request`] is the seed's `SendRequest`,
//!   [`Client::request`] and [`Client::stream`] take [`Prompts`] and [`RequestOptions`] and
//!   give a [`Response`] (its [`Finish`] and [`Usage`]); a [`Canceller`] stops one from
//!   another thread. Each operation has its own error: [`SpawnError`], [`AttachError`],
//!   [`RequestError`], [`ShutdownError`].
//! - [`Pool`]: several workers behind one handle, for more cores than one context uses.
//! - Writing a worker of your own: implement [`Engine`] (see [`EchoEngine`]).
//!
//! ## Layers
//! ```text
//!   client/  worker/          the API: requests, turns, spawning · the serve loop, engines
//!        └──┬──┘
//!       objects/              the protocol on the POSIX objects: create, open, reclaim, guard
//!        ┌──┴──┐
//!   protocol/   os/           the three-semaphore cycle (generic, loom-checked) · safe OS handles
//!        └──┬──┘              (the only `unsafe` that ships)
//!         wire/               names, layout, text, status codes: what the seed fixed
//! ```
//! `sync.rs` beside them is the loom façade: `std` normally, loom's checked primitives (and a
//! thread scope for the models, the one `unsafe` outside `os/`, built only under
//! `--cfg loom`) in the verification models.
//! Imports point down only. The layers are not public API; sibling crates (the worker
//! binary, the C ABI, the fuzzers and the models) reach them through a hidden `internals`
//! module.
#![warn(missing_docs)]

mod client;
mod objects;
mod os;
mod protocol;
mod stats;
mod sync;
mod wire;
mod worker;

pub use client::pool::Pool;
pub use client::{
    AttachError, Canceller, Client, ClientBuilder, ClosedReason, EngineSettings, Phase, PromptField,
    Protocol, RequestError, RequestOptions, Response, RestartPolicy, ShutdownError, SpawnError,
    DEFAULT_MAX_ANSWER_BYTES,
};
pub use protocol::{Constraint, Embeddings, Message, Prompts, Role, Usage};
pub use wire::layout::ObjectKind;
pub use wire::names::{Prefix, PrefixError, SEED_PREFIX};
pub use wire::status::Finish;
pub use wire::text::Policy;
pub use worker::{
    Cancel, EchoEngine, Engine, EngineError, EngineRequest, Generation, LimitedSink, ResponseSink,
};

/// The layers, for the crates of this workspace (the worker binary, the C ABI, the CLI's
/// tools, tests, fuzzers and models). Not a stable API.
#[doc(hidden)]
pub mod internals {
    /// See the crate's `wire/`.
    pub mod wire {
        pub use crate::wire::{layout, names, status, text};
    }
    /// See the crate's `os/`.
    pub mod os {
        pub use crate::os::*;
    }
    /// See the crate's `protocol/`.
    pub mod protocol {
        pub use crate::protocol::*;
    }
    /// See the crate's `objects/`.
    pub mod objects {
        pub use crate::objects::*;
    }
    /// See the crate's `client/`.
    pub mod client {
        pub use crate::client::*;
    }
    /// See the crate's `worker/`.
    pub mod worker {
        pub use crate::worker::*;
    }
    /// See the crate's `stats.rs`.
    pub mod stats {
        pub use crate::stats::*;
    }
}

/// The README's Rust examples, compiled as doctests so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
