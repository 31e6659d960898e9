//! The llama.cpp engine: an [`Engine`](llama_shm::Engine) that runs a GGUF model through the `llama-cpp-2` crate.
//!
//! [`LlamaEngine::load`] checks the model file, initialises the process-global llama.cpp
//! backend (once), loads the model and makes one context that serves every request. Each
//! request then:
//!
//! 1. builds its prompt with the model's own chat template, **without role injection**: the
//!    template is rendered once at load time with placeholder contents, its markup is
//!    tokenized with special-token parsing on, and the request's system and user texts are
//!    tokenized as plain text (so `<|im_start|>` typed by a user stays text, not a token);
//! 2. checks the prompt fits: it may use at most `ctx - min(ctx / 8, 64)` tokens, so at least
//!    `min(ctx / 8, 64)` positions are left to answer ([`LlamaEngine::max_prompt_tokens`]);
//! 3. clears the KV cache, evaluates the prompt, then samples token by token with a fresh
//!    sampler (min-p → temperature → seeded distribution, or greedy), so the same seed gives
//!    the same answer;
//! 4. streams the text into the [`ResponseSink`](llama_shm::ResponseSink), carrying incomplete UTF-8 sequences from one
//!    token to the next and dropping NUL bytes, until an end-of-generation token
//!    ([`Finish::Stop`](llama_shm::Finish::Stop)), the token budget, a full context or a full response area
//!    ([`Finish::Length`](llama_shm::Finish::Length)), or the cancel flag ([`Finish::Cancelled`](llama_shm::Finish::Cancelled)).
//!
//! llama.cpp's own log lines go to `tracing` under the target `llama-cpp-2` (its chatty
//! model-load report is ~140 INFO lines), so a filter such as `info,llama-cpp-2=warn` keeps
//! them quiet unless `RUST_LOG` asks for them (`RUST_LOG=llama-cpp-2=info`).
//!
//! The llama.cpp backend is process-global and initialised once ([`LlamaEngine::load`] does
//! it); the engine itself is meant to stay on one thread and serve one request at a time.

mod batch;
mod constraint;
mod conversation;
mod embed;
mod engine;
mod load;
mod openmp;
mod options;
mod prompt;
mod template;
mod utf8;

pub use batch::LlamaBatchEngine;
pub use engine::LlamaEngine;
pub use load::LoadError;
pub use openmp::reexec_with_short_openmp_spin;
pub use options::{LlamaOptions, Sampling};

use constraint::*;
use conversation::*;
use embed::*;
use load::*;
use options::*;
use template::*;
use utf8::*;

#[cfg(test)]
mod tests;
