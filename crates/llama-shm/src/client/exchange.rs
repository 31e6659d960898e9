//! One request from start to end: take the turn, write, wait, read; the worker's death and
//! its replacement.

use std::io::{self};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conversation::Body;
use super::ClosedReason;
use super::{Client, Phase, PromptField, RequestError, RequestOptions, Response};
use crate::objects::queue::ShmQueue;
use crate::objects::turn::Turn;
use crate::os::process::{self, pid_exists, ExitInfo};
use crate::protocol::{
    AreaError, AreaRequest, Message, PreparedRequest, Prompts, Queue, RequestParams, Ticket, WaitError,
};
use crate::wire::layout::{
    Field, ObjectKind, KIND_CHAT, KIND_PROMPTS, OPTION_DROP_OLDEST, OPTION_SEED, REQUEST_STREAM,
};
use crate::wire::status::StatusCode;

impl Client {
    pub(super) fn alive_fn(&self) -> impl Fn() -> bool + '_ {
        let polled = self.watcher.is_none();
        move || {
            if self.dead.load(Ordering::SeqCst) {
                return false;
            }
            match (polled, self.worker_pid) {
                (true, Some(pid)) => process::pid_alive(pid),
                _ => true,
            }
        }
    }

    pub(super) fn died(&mut self, phase: Phase) -> RequestError {
        let exit = match &mut self.child {
            Some(p) => p
                .wait_until(Instant::now() + Duration::from_secs(1))
                .unwrap_or(ExitInfo::Unknown),
            None => ExitInfo::Unknown,
        };
        self.closed = Some(ClosedReason::WorkerDied { exit });
        self.restartable = self.child.is_some() && self.cfg.restart.max_attempts > 0;
        RequestError::WorkerDied { phase, exit }
    }

    pub(super) fn exchange(
        &mut self,
        prompts: Prompts<'_>,
        opts: &RequestOptions,
        stream: bool,
        on_chunk: &mut dyn FnMut(&str),
    ) -> Result<Response, RequestError> {
        // A constrained answer needs the request area: the prompts go as a conversation.
        if let Some(c) = &opts.constraint {
            let request = AreaRequest {
                messages: Message::from_prompts(prompts.system, prompts.user),
                constraint: Some(c.clone()),
                texts: Vec::new(),
            };
            return self.exchange_body(Body::Area(KIND_CHAT, &request), opts, stream, on_chunk);
        }
        self.exchange_body(Body::Prompts(prompts), opts, stream, on_chunk)
    }

    /// One request of any kind: two prompts, or records in the request area (whose result,
    /// if any, is left in `self.result`).
    pub(super) fn exchange_body(
        &mut self,
        body: Body<'_>,
        opts: &RequestOptions,
        stream: bool,
        on_chunk: &mut dyn FnMut(&str),
    ) -> Result<Response, RequestError> {
        if self.restartable {
            self.respawn()?;
        }
        if let Some(reason) = &self.closed {
            return Err(RequestError::Closed {
                reason: reason.clone(),
            });
        }
        self.result.clear();
        let (prompts, kind, area) = match body {
            Body::Prompts(p) => (p, KIND_PROMPTS, Vec::new()),
            Body::Area(kind, request) => {
                if request.messages.is_empty() && request.texts.is_empty() {
                    return Err(RequestError::BadRequest {
                        message:
                            "nothing to send: a conversation needs a message, an embedding or a count a text"
                                .into(),
                    });
                }
                let area = request
                    .encode(Field::RequestArea.span().len)
                    .map_err(|e| match e {
                        AreaError::TooLarge { len, max } => RequestError::RequestTooLarge { len, max },
                        other => RequestError::BadRequest {
                            message: other.to_string(),
                        },
                    })?;
                (Prompts::default(), kind, area)
            }
        };
        // Checked before the turn is taken: a refused request sends nothing and holds nothing.
        if (kind != KIND_PROMPTS || opts.seed.is_some() || opts.drop_oldest) && !self.channel.area_supported()
        {
            return Err(RequestError::Unsupported {
                message: if self.kind == ObjectKind::Extended {
                    "the worker is older than conversations, seeds and embeddings: send two prompts".into()
                } else {
                    "a seed-mode worker takes two prompts and nothing else".into()
                },
            });
        }
        let policy = self.cfg.policy;
        let sys = crate::wire::text::encode(prompts.system, crate::wire::layout::SYSTEM_PROMPT_LEN, policy)
            .map_err(|source| RequestError::Encode {
            field: PromptField::System,
            source,
        })?;
        let usr = crate::wire::text::encode(prompts.user, crate::wire::layout::USER_PROMPT_LEN, policy)
            .map_err(|source| RequestError::Encode {
                field: PromptField::User,
                source,
            })?;
        let started = Instant::now();
        let deadline = started + self.cfg.request_timeout;
        let slice = self.cfg.poll_slice;
        // Held until the response is read: another client's request cannot start meanwhile.
        let _turn = self.lock_turn(deadline)?;
        if !self.holding_turn {
            let alive = self.alive_fn();
            let r = self.channel.client_acquire(Some(deadline), slice, &alive);
            drop(alive);
            match r {
                Ok(()) => {}
                Err(WaitError::PeerGone) => return Err(self.died(Phase::WaitingReady)),
                Err(WaitError::TimedOut | WaitError::Garbled(_) | WaitError::TooLong { .. }) => {
                    return Err(RequestError::Timeout {
                        phase: Phase::WaitingReady,
                        waited: started.elapsed(),
                    })
                }
                Err(WaitError::Os(source)) => {
                    return Err(RequestError::Os {
                        phase: Phase::WaitingReady,
                        source,
                    })
                }
            }
        }
        self.holding_turn = false;
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        let extended = self.kind == ObjectKind::Extended;
        let req = PreparedRequest {
            system: sys,
            user: usr,
            seq: if extended { seq } else { 0 },
            token: self.token.as_ref(),
            client_pid: self.pid,
            params: RequestParams {
                flags: if stream { REQUEST_STREAM } else { 0 },
                max_tokens: opts.max_tokens.unwrap_or(0),
                deadline_us: opts
                    .deadline
                    .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)),
                seed_stream: false,
                kind,
                options: if opts.drop_oldest { OPTION_DROP_OLDEST } else { 0 }
                    | if opts.seed.is_some() { OPTION_SEED } else { 0 },
                sample_seed: opts.seed.unwrap_or(0),
            },
            area: &area,
        };

        // In flight for cancel() before it is written: a cancel() from here on is never lost
        // (the worker finds it when it takes the request). Modelled in stream.pml.
        self.cancel_slot.lock().seq = req.seq;
        if let Err(source) = self.channel.client_write(&req) {
            self.cancel_slot.lock().seq = 0;
            return Err(RequestError::Os {
                phase: Phase::WaitingResponse,
                source,
            });
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut bad_utf8 = false;
        let r = {
            let alive = self.alive_fn();
            self.channel.client_receive(
                req.seq,
                Some(deadline),
                slice,
                &alive,
                self.cfg.max_answer_bytes,
                &mut scratch,
                &mut |bytes: &[u8]| match std::str::from_utf8(bytes) {
                    Ok(s) => on_chunk(s),
                    Err(_) => {
                        // Only a scribbled region does this; the checksum will say so.
                        bad_utf8 = true;
                        on_chunk(&String::from_utf8_lossy(bytes));
                    }
                },
            )
        };
        self.scratch = scratch;
        self.cancel_slot.lock().seq = 0;
        let raw = match r {
            Ok(raw) => raw,
            Err(WaitError::PeerGone) => return Err(self.died(Phase::WaitingResponse)),
            Err(WaitError::TimedOut) => {
                // (client_receive cancelled the request, so the worker stops at once.)
                if !extended {
                    // Without sequence numbers a late answer would be taken for the next one.
                    self.closed = Some(ClosedReason::SeedTimeout);
                }
                return Err(RequestError::Timeout {
                    phase: Phase::WaitingResponse,
                    waited: started.elapsed(),
                });
            }
            Err(WaitError::Garbled(_)) => return Err(RequestError::Corrupt),
            Err(WaitError::TooLong { limit }) => {
                // (Cancelled: the worker stops; its last posts are drained by the next turn.)
                if !extended {
                    self.closed = Some(ClosedReason::SeedAnswerTooLong);
                }
                return Err(RequestError::AnswerTooLong { limit });
            }
            Err(WaitError::Os(source)) => {
                return Err(RequestError::Os {
                    phase: Phase::WaitingResponse,
                    source,
                })
            }
        };
        // (Seed-mode text arrives decoded: only the ring can hand over invalid UTF-8.)
        if !raw.intact || bad_utf8 {
            return Err(RequestError::Corrupt);
        }
        let truncated = raw.truncated();
        let message = raw.error;
        self.result = raw.result;
        match raw.status {
            StatusCode::Ok => Ok(Response {
                truncated,
                text: String::new(),
                system_truncated: sys.truncated,
                user_truncated: usr.truncated,
                seq: req.seq,
                usage: raw.usage,
                finish: raw.finish,
                dropped_messages: raw.dropped_messages,
            }),
            StatusCode::Unauthorized => Err(RequestError::Unauthorized { message }),
            StatusCode::PromptTooLong => Err(RequestError::PromptTooLong {
                tokens: raw.error_args.0,
                limit: raw.error_args.1,
            }),
            StatusCode::InvalidConstraint => Err(RequestError::InvalidConstraint { message }),
            StatusCode::Unsupported => Err(RequestError::Unsupported { message }),
            StatusCode::EngineFailed => Err(RequestError::Engine { message }),
            StatusCode::BadRequest => Err(RequestError::BadRequest { message }),
            StatusCode::ShuttingDown => Err(RequestError::ShuttingDown { message }),
            StatusCode::Unknown(status) => Err(RequestError::UnknownStatus { status, message }),
        }
    }

    /// Takes the turn lock of a shared worker (none for a client with a worker of its own),
    /// until `deadline`; a dead worker ends the wait at once.
    ///
    /// With several slots, the first free one's among slots 1.. (slot 0, the prefix's own
    /// names, is left to seed-era clients: they take its `ready` without the turn lock, and
    /// the seed's wire has no sequence number to keep their answers apart from ours), trying
    /// the slot of the last request first (whose KV cache holds this client's conversation);
    /// the request goes to that slot.
    ///
    /// When every slot is busy the client waits in the worker's admission queue (see
    /// [`Queue`](crate::protocol::Queue)) and tries the slots again only when its turn
    /// comes, so waiting clients get slots in the order they came;
    /// [`RequestError::Busy`] when the queue is full. (A worker without a queue: the slots are
    /// retried with a short backoff.)
    pub(super) fn lock_turn(&mut self, deadline: Instant) -> Result<Option<Turn>, RequestError> {
        if !self.turn_lock {
            return Ok(None);
        }
        let started = Instant::now();
        // Waiters that died at the head do not hold the queue (nobody else may be behind them
        // to skip them).
        if let Some(q) = &self.queue {
            q.prune(&pid_exists);
        }
        // Nobody waits: straight to the slots. Otherwise behind those who came first.
        if self.queue.as_ref().is_none_or(|q| q.waiting() == 0) {
            if let Some(turn) = self.try_slots()? {
                return Ok(Some(turn));
            }
        }
        let queue = self.queue.clone();
        let ticket = match &queue {
            Some(q) => Some(q.join(self.pid, &pid_exists).map_err(|f| RequestError::Busy {
                waiting: f.waiting,
                max: f.max,
            })?),
            None => None,
        };
        // Given back however the wait ends (a turn, an error, a panic).
        let _place = ticket.map(|t| Place {
            queue: queue.as_ref(),
            ticket: t,
            pid: self.pid,
        });
        let mut backoff = Duration::from_micros(20);
        // The head as last seen, and since when: a head that does not move while a slot is
        // free is not polling (stopped, its pid reused, in another pid namespace).
        let mut seen = (queue.as_ref().map(Queue::head), Instant::now());
        // When this client, behind a head that stood still, first found a slot free.
        let mut free_seen: Option<Instant> = None;
        loop {
            // (A zombie counts as alive here: one cheap system call per poll. Its parent
            // reaps it, or those behind it reach their deadlines.)
            let my_turn = match (&queue, ticket) {
                (Some(q), Some(t)) => {
                    q.turn_of(t) || {
                        q.skip_gone(&pid_exists);
                        q.turn_of(t)
                    }
                }
                _ => true,
            };
            let head = queue.as_ref().map(Queue::head);
            if head != seen.0 {
                seen = (head, Instant::now());
                free_seen = None;
            }
            if my_turn {
                if let Some(turn) = self.try_slots()? {
                    return Ok(Some(turn));
                }
            } else if seen.1.elapsed() >= STUCK_HEAD {
                // Behind a head that has not moved for a while: a slot that stays free for
                // FREE_FOR (a live head takes one within a millisecond) means the head's holder
                // is not polling, and this client goes ahead of it.
                match (self.try_slots()?, free_seen) {
                    (Some(turn), Some(at)) if at.elapsed() >= FREE_FOR => return Ok(Some(turn)),
                    (Some(_), None) => free_seen = Some(Instant::now()),
                    (Some(_), Some(_)) => {}
                    (None, _) => free_seen = None,
                }
            }
            if !(self.alive_fn())() {
                return Err(self.died(Phase::WaitingTurn));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RequestError::Timeout {
                    phase: Phase::WaitingTurn,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(backoff.min(deadline - now));
            // The client whose turn it is looks at the slots every millisecond at most; those
            // behind it only wait for the head to move, and look less often (every poll costs
            // CPU the worker may need).
            let cap = Duration::from_millis(if my_turn { 1 } else { 4 });
            backoff = (backoff * 2).min(cap);
        }
    }

    /// One pass over the slots: the turn of the first free one — the last request's slot
    /// first (its KV cache holds this client's conversation); a client's first request starts
    /// at a slot of its own random choice, so that new clients spread over the slots instead of
    /// all taking (and evicting the cache of) the first free one.
    fn try_slots(&mut self) -> Result<Option<Turn>, RequestError> {
        // Ours: slots 1..n of a multi-slot worker, else the one.
        let (first, n) = if self.slots.len() > 1 {
            (1, self.slots.len() - 1)
        } else {
            (0, 1)
        };
        let from = if self.slot >= first {
            self.slot - first
        } else {
            // `next_seq` starts at a random value per client (see `first_attach_seq`).
            (self.next_seq % n as u64) as usize
        };
        for i in 0..n {
            let k = first + (from + i) % n;
            let channel = self.slots.get(k).unwrap_or(&self.channel);
            match Turn::try_take(channel) {
                Ok(Some(turn)) => {
                    if k != self.slot {
                        self.use_slot(k);
                    }
                    return Ok(Some(turn));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(RequestError::Os {
                        phase: Phase::WaitingTurn,
                        source: io::Error::other(e),
                    })
                }
            }
        }
        Ok(None)
    }

    /// Sends the following requests to slot `k` (cancels included).
    fn use_slot(&mut self, k: usize) {
        self.slot = k;
        self.channel = Arc::clone(&self.slots[k]);
        self.cancel_slot.lock().channel = Arc::clone(&self.channel);
    }

    /// Replaces a dead worker by a new one, following the restart policy.
    pub(super) fn respawn(&mut self) -> Result<(), RequestError> {
        let policy = self.cfg.restart;
        loop {
            if self.restart_attempts >= policy.max_attempts {
                self.restartable = false;
                return Err(RequestError::Closed {
                    reason: ClosedReason::RestartsExhausted {
                        attempts: self.restart_attempts,
                    },
                });
            }
            if self.restart_attempts > 0 {
                let factor = 1u32 << (self.restart_attempts - 1).min(16);
                std::thread::sleep(policy.backoff.saturating_mul(factor).min(policy.max_backoff));
            }
            self.restart_attempts += 1;
            match self.cfg.clone().spawn() {
                Ok(mut fresh) => {
                    tracing::info!(attempt = self.restart_attempts, "worker restarted");
                    // Cancellers handed out earlier follow the new worker.
                    self.cancel_slot.lock().channel = Arc::clone(&fresh.channel);
                    fresh.cancel_slot = Arc::clone(&self.cancel_slot);
                    // The old client (its dead child reaped, its handles closed) drops here.
                    drop(std::mem::replace(self, fresh));
                    return Ok(());
                }
                Err(e) if self.restart_attempts >= policy.max_attempts => {
                    self.restartable = false;
                    return Err(RequestError::RestartFailed {
                        attempts: self.restart_attempts,
                        source: Box::new(e),
                    });
                }
                Err(e) => tracing::warn!(attempt = self.restart_attempts, "worker restart failed: {e}"),
            }
        }
    }
}

/// How long the queue's head may stand still while a waiter behind it finds a slot free
/// before that waiter goes ahead: a live head looks at the slots every millisecond.
const STUCK_HEAD: Duration = Duration::from_millis(200);
/// How long a slot must stay free, behind a head that stands still, before a waiter behind it
/// takes it.
const FREE_FOR: Duration = Duration::from_millis(20);

/// A ticket in the admission queue, given back when dropped.
struct Place<'q> {
    queue: Option<&'q Queue<ShmQueue>>,
    ticket: Ticket,
    pid: u32,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Some(q) = self.queue {
            q.leave(self.ticket, self.pid);
        }
    }
}
