//! Where an engine's answer goes: [`LimitedSink`] (a bounded string) and the wire's sink, which
//! writes each piece straight into the response area and publishes it.

use std::io;
use std::time::Instant;

use crate::protocol::{Channel, Region, Room, Semaphore, StreamState};
use crate::wire::layout::RESPONSE_LEN;
use crate::wire::text::{self, floor_char_boundary};
use crate::worker::engine::{Cancel, ResponseSink};

use super::serve::ServeOptions;

/// A [`ResponseSink`] that keeps at most `limit` bytes, cut on a char boundary, NUL-free.
#[derive(Debug)]
pub struct LimitedSink<'a> {
    buf: &'a mut String,
    limit: usize,
    full: bool,
}

impl<'a> LimitedSink<'a> {
    /// A sink writing into `buf` (cleared first) up to `limit` bytes.
    pub fn new(buf: &'a mut String, limit: usize) -> Self {
        buf.clear();
        Self {
            buf,
            limit,
            full: false,
        }
    }
    /// A sink that keeps what the seed's response field holds (32 767 bytes and its NUL).
    pub fn seed_sized(buf: &'a mut String) -> Self {
        Self::new(buf, RESPONSE_LEN - 1)
    }
    /// Whether a push did not fit.
    pub fn is_full(&self) -> bool {
        self.full
    }
    /// What was kept so far.
    pub fn as_str(&self) -> &str {
        self.buf
    }
}

impl ResponseSink for LimitedSink<'_> {
    fn push(&mut self, piece: &str) -> bool {
        if self.full {
            return false;
        }
        // The wire is a C string: a NUL would end the answer early for seed clients.
        text::nul_free_parts(piece).all(|part| self.append(part))
    }
}

impl LimitedSink<'_> {
    fn append(&mut self, s: &str) -> bool {
        let room = self.limit - self.buf.len();
        if s.len() <= room {
            self.buf.push_str(s);
            return true;
        }
        self.buf.push_str(&s[..floor_char_boundary(s, room)]);
        self.full = true;
        false
    }
}

/// The [`ResponseSink`] of a request: writes pieces straight into the response area (the ring
/// of an extended client, or the seed's C string), publishes them (each piece when the client
/// streams; otherwise only when the ring is full), and refuses more once the request is
/// cancelled, past its deadline, or the worker is stopping — setting `cancel`, so an engine
/// that checks it between tokens stops within one token.
pub(super) struct WireSink<'a, S, R> {
    pub(super) channel: &'a Channel<S, R>,
    pub(super) st: StreamState,
    pub(super) cancel: &'a Cancel,
    pub(super) stop: &'a dyn Fn() -> bool,
    pub(super) opts: &'a ServeOptions,
    pub(super) refused: Option<Refusal>,
    pub(super) error: Option<io::Error>,
    /// When the request was taken, and when the requester's presence was last asked.
    pub(super) since: Instant,
    pub(super) asked: Instant,
    /// The multi-slot worker's sinks never wait for a client to read a full ring (one engine
    /// thread serves every slot): what does not fit waits in `pending` ([`WireSink::flush`]),
    /// and the engine holds the sequence meanwhile.
    pub(super) defer: bool,
    /// Answer text the ring had no room for yet (with `defer`).
    pub(super) pending: String,
    /// Since when the ring has been full.
    pub(super) stalled_since: Option<Instant>,
}

impl<S: Semaphore, R: Region> WireSink<'_, S, R> {
    pub(super) fn check(&mut self) -> Option<Refusal> {
        if self.refused.is_some() {
            return self.refused;
        }
        let why = if (self.stop)() {
            Refusal::Stopping
        } else if self.channel.worker_cancel_requested(self.st.seq()) {
            Refusal::Cancelled
        } else if self.cancel.deadline_passed() {
            Refusal::Deadline
        } else if self.requester_gone() {
            Refusal::ClientGone
        } else {
            return None;
        };
        self.refuse(why);
        Some(why)
    }

    /// Asks [`Clients::requester_present`](crate::protocol::Clients::requester_present), at most every `presence_every`.
    fn requester_gone(&mut self) -> bool {
        let Some(clients) = &self.opts.clients else {
            return false;
        };
        let now = Instant::now();
        if now.saturating_duration_since(self.asked) < self.opts.presence_every {
            return false;
        }
        self.asked = now;
        !clients.requester_present(self.st.seq(), self.since)
    }

    fn refuse(&mut self, why: Refusal) {
        self.refused = Some(why);
        self.cancel.cancel();
    }

    /// Publishes what was written; a failed post ends the request (the worker is stopping).
    pub(super) fn publish(&mut self) -> bool {
        match self.channel.worker_stream_publish(&mut self.st) {
            Ok(()) => true,
            Err(e) => {
                self.error = Some(e);
                self.refuse(Refusal::Stopping);
                false
            }
        }
    }

    /// Appends `s` (NUL-free), waiting for ring space as needed.
    fn append(&mut self, mut s: &str) -> bool {
        // Behind text still pending: after it, in order.
        if self.defer && !self.pending.is_empty() {
            self.pending.push_str(s);
            return true;
        }
        let mut attempt = 0u32;
        let mut stalled_since: Option<Instant> = None;
        while !s.is_empty() {
            let room = match self.channel.worker_stream_room(&mut self.st) {
                Room::Free(n) => n,
                Room::Garbled => {
                    self.refuse(Refusal::Garbled);
                    return false;
                }
            };
            let cut = floor_char_boundary(s, room.min(s.len()));
            if cut > 0 {
                self.channel
                    .worker_stream_write(&mut self.st, &s.as_bytes()[..cut]);
                s = &s[cut..];
                attempt = 0;
                stalled_since = None;
                continue;
            }
            if !self.st.is_ring() {
                self.refuse(Refusal::Full);
                return false;
            }
            // The ring is full: let the client see what is there, then wait for it to read.
            if !self.publish() || self.check().is_some() {
                return false;
            }
            if self.defer {
                self.pending.push_str(s);
                self.stalled_since.get_or_insert_with(Instant::now);
                return true;
            }
            let since = *stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.opts.stall_limit {
                self.refuse(Refusal::Stalled);
                return false;
            }
            (self.opts.pause)(attempt);
            attempt = attempt.saturating_add(1);
        }
        true
    }

    /// Writes what is pending, waiting for the client to read as a single-slot worker does
    /// (up to the stall limit): the last resort before an answer's end is written.
    pub(super) fn drain_pending(&mut self) {
        if !self.pending.is_empty() && self.refused.is_none() {
            self.defer = false;
            let pending = std::mem::take(&mut self.pending);
            let _ = self.append(&pending);
        }
    }

    /// Writes what is pending as far as the ring has room, without waiting. Returns whether
    /// nothing is pending any more; refuses the request (`Stalled`) once the ring has been
    /// full for the stall limit, or as [`WireSink::check`] does.
    pub(super) fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        if self.check().is_some() {
            return false;
        }
        let mut written = 0;
        while written < self.pending.len() {
            let room = match self.channel.worker_stream_room(&mut self.st) {
                Room::Free(n) => n,
                Room::Garbled => {
                    self.refuse(Refusal::Garbled);
                    return false;
                }
            };
            let rest = &self.pending[written..];
            let cut = floor_char_boundary(rest, room.min(rest.len()));
            if cut == 0 {
                break;
            }
            self.channel
                .worker_stream_write(&mut self.st, &rest.as_bytes()[..cut]);
            written += cut;
        }
        self.pending.drain(..written);
        if written > 0 {
            // Progress: the stall limit counts from the last time the client read.
            self.stalled_since = None;
        }
        if !self.publish() {
            return false;
        }
        if self.pending.is_empty() {
            self.stalled_since = None;
            return true;
        }
        let since = *self.stalled_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.opts.stall_limit {
            self.refuse(Refusal::Stalled);
        }
        false
    }
}

impl<S: Semaphore, R: Region> ResponseSink for WireSink<'_, S, R> {
    fn push(&mut self, piece: &str) -> bool {
        if self.check().is_some() {
            return false;
        }
        // Behind text still pending: in order, after it.
        if !self.pending.is_empty() && !self.flush() {
            if self.refused.is_some() {
                return false;
            }
            text::nul_free_parts(piece).for_each(|part| self.pending.push_str(part));
            return true;
        }
        // The wire is a C string for seed clients: a NUL would end the answer early.
        let whole = text::nul_free_parts(piece).all(|part| self.append(part));
        // A client of the seed's streaming service sees each piece (and a cut one) at once.
        self.channel.worker_seed_update(&mut self.st);
        whole && (!self.st.is_streaming() || self.publish())
    }
}

/// Why the sink refused more text before the engine finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The seed's 32 767 bytes are full.
    Full,
    /// The client cancelled the request.
    Cancelled,
    /// The request's deadline passed.
    Deadline,
    /// The worker is stopping.
    Stopping,
    /// The client did not read a full ring within the stall limit.
    Stalled,
    /// The client's read cursor is impossible.
    Garbled,
    /// The client that sent the request is gone: nobody will read the answer.
    ClientGone,
}
