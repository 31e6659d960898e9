//! Shared helpers for the integration suites: where the worker binary is, unique prefixes,
//! leak checks on `/dev/shm`, and a raw seed-style client and worker written against the
//! seed's offsets (no llama-shm code on the wire side), for the compatibility suite.
//! Also scratch directories, bounded runs of child processes and the C# (Mono) compiler for
//! the frontend suites.

mod campaigns;
mod frontends;
mod processes;
pub mod seed;
pub mod seed_stream;
mod shm;
mod workers;

pub use campaigns::*;
pub use frontends::*;
pub use processes::*;
pub use shm::*;
pub use workers::*;
