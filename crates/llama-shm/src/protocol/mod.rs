//! The seed's three-semaphore cycle and the extension page's rules, written once.
//!
//! ```text
//!  worker                                   client
//!  ──────                                   ──────
//!  worker_ready: request_seq := 0, post ready ──► client_acquire: wait ready (deadline)
//!                                           client_write: token, seq, pid, prompts,
//!  worker_wait: wait prompts_written ◄────── shutdown := 0, post prompts_written
//!  worker_take: shutdown byte? token? seq? prompts (validated copies)
//!  … engine runs …
//!  worker_respond: response, status, lengths,
//!    usage, then response_seq := seq,
//!    post response_written ───────────────► client_await: wait response_written (deadline),
//!  (loop: worker_ready)                      response_seq == seq? else stale, wait again
//! ```
//! Everything is generic over [`Semaphore`] and [`Region`]: production runs it on POSIX
//! named semaphores and a mapped object ([`crate::objects`]); `verification/` runs the very
//! same functions on loom primitives. Nothing here touches the OS.
//!
//! In seed mode (an object without the extension page) the extension steps are skipped and
//! the cycle is exactly the seed's.

pub mod area;
mod channel;
mod checksum;
mod client_side;
pub mod mem;
mod messages;
mod peer;
mod queue;
mod seed_stream;
mod stream_state;
mod wait;
mod worker_side;

pub use area::{AreaError, AreaRequest, Constraint, Embeddings, Message, Role};
pub use channel::Channel;
pub use checksum::{
    request_checksum, request_checksum_with_area, response_checksum, text_hash, ResponseMeta,
};
pub use client_side::DRAIN_LIMIT;
pub use messages::{Incoming, Outcome, PreparedRequest, Prompts, RawResponse, RequestParams, Usage};
pub use peer::{Clients, Region, Semaphore};
pub use queue::{MemQueue, Queue, QueueFull, QueueWords, Ticket};
pub use stream_state::{Room, StreamState};
pub use wait::{wait_for, AdaptiveWait, WaitError};

#[cfg(test)]
mod tests;
