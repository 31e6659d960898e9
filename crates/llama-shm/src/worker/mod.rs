//! The worker: the serve loop (take a request, run the engine, answer — until shutdown or a
//! stop), the [`Engine`] trait an answer comes from, the sinks the answer goes into, and the
//! life of a worker process around them ([`host`]).
//! Generic over the protocol's primitives like [`protocol`](crate::protocol).

pub mod batch;
mod direct;
pub mod engine;
pub mod host;
mod serve;
mod sink;
pub mod slots;
pub mod token;

pub use engine::{Cancel, EchoEngine, Engine, EngineError, EngineRequest, Generation, ResponseSink};
pub use serve::{serve, ServeEnd, ServeOptions};
pub use sink::LimitedSink;

#[cfg(test)]
mod tests;
