//! A pool of workers: N spawned workers, each with its own objects; a request goes to an idle
//! worker, and a worker that dies is replaced.
//!
//! ```no_run
//! use llama_shm::{Client, Pool, Prompts, RequestOptions};
//! let pool = Pool::new(Client::builder().worker("target/release/llama-shm-worker").echo_engine(), 2)?;
//! std::thread::scope(|s| {
//!     for i in 0..4 {
//!         let pool = &pool;
//!         s.spawn(move || pool.request(Prompts::user(&format!("question {i}")), &RequestOptions::default()));
//!     }
//! });
//! pool.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Each worker is a [`Client`] of its own (its own prefix, token and death watcher), so the
//! pool adds no shared state to the wire: it is a queue of idle clients behind a mutex. On
//! this 2-core machine one worker with two llama.cpp threads and two workers with one thread
//! each are the two ways to use the cores; `llama-shm bench` measures both.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::ClosedReason;
use crate::client::{Client, ClientBuilder, Phase, RequestError, RequestOptions, Response, SpawnError};
use crate::protocol::{Embeddings, Message, Prompts};

/// A pool of spawned workers. All methods take `&self`: share it between threads.
#[derive(Debug)]
pub struct Pool {
    builder: ClientBuilder,
    state: Mutex<State>,
    idle_changed: Condvar,
}

#[derive(Debug)]
struct State {
    idle: Vec<Client>,
    /// Workers alive (idle or busy).
    live: usize,
    /// Workers replaced after they died.
    replaced: u64,
}

/// A worker taken from the pool; it goes back (or is replaced) when the request ends.
struct Lease<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl Lease<'_> {
    fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a lease holds its client until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let mut st = self.pool.lock();
            st.idle.push(client);
            drop(st);
            self.pool.idle_changed.notify_one();
        }
    }
}

impl Pool {
    /// Spawns `size` workers (one after the other) from `builder`.
    ///
    /// # Errors
    /// The first [`SpawnError`]; the workers already started are shut down.
    pub fn new(builder: ClientBuilder, size: usize) -> Result<Self, SpawnError> {
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(builder.clone().spawn()?);
        }
        Ok(Self {
            builder,
            state: Mutex::new(State {
                live: idle.len(),
                idle,
                replaced: 0,
            }),
            idle_changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Workers alive now (idle or busy).
    pub fn size(&self) -> usize {
        self.lock().live
    }

    /// How many dead workers were replaced so far.
    pub fn replaced(&self) -> u64 {
        self.lock().replaced
    }

    /// Waits for an idle worker, at most the builder's request timeout.
    fn lease(&self) -> Result<Lease<'_>, RequestError> {
        let started = Instant::now();
        let deadline = started + self.builder.request_timeout_value();
        let mut st = self.lock();
        loop {
            if st.live == 0 {
                return Err(RequestError::Closed {
                    reason: ClosedReason::PoolExhausted,
                });
            }
            if let Some(client) = st.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    client: Some(client),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RequestError::Timeout {
                    phase: Phase::WaitingTurn,
                    waited: started.elapsed(),
                });
            }
            st = self
                .idle_changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Replaces the leased worker after it died: a fresh one takes its place in the pool (or,
    /// if it cannot be started, the pool shrinks).
    fn replace(&self, mut lease: Lease<'_>) {
        drop(lease.client.take());
        let fresh = self.builder.clone().spawn();
        let mut st = self.lock();
        match fresh {
            Ok(c) => {
                st.idle.push(c);
                st.replaced += 1;
            }
            Err(e) => {
                tracing::warn!("pool: a worker died and could not be replaced: {e}");
                st.live -= 1;
            }
        }
        drop(st);
        self.idle_changed.notify_all();
    }

    fn run<T>(&self, call: impl FnOnce(&mut Client) -> Result<T, RequestError>) -> Result<T, RequestError> {
        let mut lease = self.lease()?;
        let result = call(lease.client());
        if matches!(
            result,
            Err(RequestError::WorkerDied { .. } | RequestError::Closed { .. })
        ) {
            self.replace(lease);
        }
        result
    }

    /// Sends one request to an idle worker (waiting for one if all are busy).
    ///
    /// # Errors
    /// As [`Client::request`]; a worker that died is replaced, and this request fails with
    /// [`RequestError::WorkerDied`] (send it again). [`RequestError::Timeout`] in phase
    /// `WaitingTurn` when no worker became idle within the request timeout;
    /// [`RequestError::Closed`] when no worker is left.
    pub fn request(&self, prompts: Prompts<'_>, opts: &RequestOptions) -> Result<Response, RequestError> {
        self.run(|c| c.request(prompts, opts))
    }

    /// [`Client::stream`] on an idle worker.
    ///
    /// # Errors
    /// As [`Pool::request`].
    pub fn stream(
        &self,
        prompts: Prompts<'_>,
        opts: &RequestOptions,
        on_chunk: impl FnMut(&str),
    ) -> Result<Response, RequestError> {
        self.run(|c| c.stream(prompts, opts, on_chunk))
    }

    /// [`Client::chat`] on an idle worker. (Each worker keeps the prefix cache of the last
    /// conversation it answered: a conversation's next turn is cheapest on the same worker, so
    /// for long conversations prefer one [`Client`] per conversation, or `--parallel`.)
    ///
    /// # Errors
    /// As [`Pool::request`].
    pub fn chat(&self, messages: &[Message], opts: &RequestOptions) -> Result<Response, RequestError> {
        self.run(|c| c.chat(messages, opts))
    }

    /// [`Client::embed`] on an idle worker.
    ///
    /// # Errors
    /// As [`Pool::request`].
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings, RequestError> {
        self.run(|c| c.embed(texts))
    }

    /// Shuts every worker down (no request can be running: this takes the pool by value).
    /// Returns how many workers did not exit cleanly.
    pub fn shutdown(self) -> usize {
        let idle = std::mem::take(&mut self.lock().idle);
        let mut failed = 0;
        for c in idle {
            if let Err(e) = c.shutdown() {
                tracing::warn!("pool: worker shutdown: {e}");
                failed += 1;
            }
        }
        failed
    }
}
