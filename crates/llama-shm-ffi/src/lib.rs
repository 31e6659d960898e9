//! # llama-shm-ffi
//!
//! The C ABI of llama-shm: `libllama_shm_ffi.so` / `.a` and the hand-written header
//! `include/llama_shm.h` (the header is the reference; `tests/header.rs` keeps the two in step).
//!
//! Every entry point checks its pointers (NULL → [`LSHM_E_INVALID_ARGUMENT`]), validates the
//! UTF-8 of its strings ([`LSHM_E_INVALID_UTF8`]) and runs under `catch_unwind` (a panic
//! becomes [`LSHM_E_PANIC`]): nothing unwinds into C. Strings handed to C are allocated with
//! `malloc` and released with [`lshm_string_free`] (or `free`).
//!
//! ```text
//!  lshm_client_new    (spawns a worker) ─┐
//!  lshm_client_attach (a shared one)    ─┴─► lshm_request / lshm_stream (any number)
//!        │                                          ▲          ─► lshm_client_shutdown
//!        │                                          │             (or lshm_client_free)
//!        │                                          │
//!        │          lshm_request_with / lshm_stream_with (a schema, a grammar, a seed)
//!        │          lshm_chat / lshm_chat_stream (a conversation: lshm_message[n])
//!        │          lshm_embed ─► lshm_embeddings_free
//!        │          lshm_count_tokens / lshm_count_conversation_tokens
//!        │                                          ▲
//!        └─► lshm_canceller_new ─► lshm_cancel (from any thread) ─► lshm_canceller_free
//! ```
//!
//! A client of `lshm_client_attach` shares a running standalone worker with other clients and
//! processes: `lshm_client_free` detaches from it (it goes on serving the others), while
//! `lshm_client_shutdown` asks it to exit, as `llama_shm::Client::shutdown` does.
//!
//! The `unsafe` here is the C boundary itself: reading the caller's strings and arrays,
//! writing its out-parameters, calling its callback, and owning the boxed handles and
//! `malloc`ed strings. Each function's `# Safety` section states what C must guarantee.

mod attach;
mod boundary;
mod conversation;
mod embed;
mod entry;
mod handles;
mod locate;
mod request_args;
mod status;

pub use attach::*;
pub use conversation::{
    lshm_chat, lshm_chat_stream, lshm_count_conversation_tokens, lshm_count_tokens, lshm_request_with,
    lshm_stream_with,
};
pub use embed::{lshm_embed, lshm_embeddings_free, LshmEmbeddings};
pub use entry::*;
pub use handles::{ChunkCallback, LshmCanceller, LshmClient, LshmOptions, LshmResponse};
pub use request_args::{
    lshm_request_options_default, LshmMessage, LshmRequestOptions, LshmResponseExtras, LSHM_ROLE_ASSISTANT,
    LSHM_ROLE_SYSTEM, LSHM_ROLE_USER,
};
pub use status::*;

#[cfg(test)]
mod tests;
