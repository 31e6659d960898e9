//! The worker's side of the cycle: give a turn, take a request (validated copies), write the
//! answer (whole or streamed through the ring) and publish it.

use std::io;
use std::time::{Duration, Instant};

use super::area::AreaRequest;
use super::channel::on_other_cpus;
use super::channel::{micros, token_eq, Channel};
use super::checksum::{area_hash_into, request_checksum, request_hasher, response_checksum, ResponseMeta};
use super::messages::{Incoming, Outcome, RequestParams};
use super::peer::{Clients, Region, Semaphore};
use super::stream_state::{Room, StreamState};
use crate::sync::{mutant, Mutant, Ordering};
use crate::wire::layout::{
    Field, Word32, Word64, REQUEST_STREAM, RESPONSE_LEN, RESPONSE_TRUNCATED, TOKEN_LEN,
};
use crate::wire::status::StatusCode;
use crate::wire::text::{self, Policy};
use xxhash_rust::xxh3::Xxh3;

/// How often a worker with [`Clients`] looks at its turn while waiting for a request.
const TURN_CHECK: Duration = Duration::from_millis(100);

/// Stale `ready` posts [`Channel::worker_ready`] takes back before it posts: a turn given back
/// by [`Channel::worker_wait`] to a holder that was slow, not gone, leaves one.
const READY_EXCESS_LIMIT: u32 = 64;

impl<S: Semaphore, R: Region> Channel<S, R> {
    // ----- worker side --------------------------------------------------------------------

    /// Worker: clears the request slot and posts `ready` (one request may now be written).
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_ready(&self) -> io::Result<()> {
        // Nobody has taken a `ready` still counted: take it back, so one post gives one turn
        // (bounded: a peer may post in a loop).
        for _ in 0..READY_EXCESS_LIMIT {
            if !self.ready.try_wait()? {
                break;
            }
        }
        if self.extended() {
            // A seed-mode client never writes request_seq: 0 tells the worker it was one.
            self.region.store64(Word64::RequestSeq, 0);
            // Nor does a client older than the request area write its words: one that comes
            // after a newer client must not inherit its kind, options or seed.
            for word in [Word32::RequestKind, Word32::RequestOptions, Word32::SampleSeed] {
                self.set32(word, 0);
            }
            // What `worker_wait`'s spin needs, read now: once `ready` is posted an idle
            // worker touches nothing in the region until a client wakes it.
            self.adaptive
                .peer_cpu
                .store(self.region.load32(Word32::ClientCpu), Ordering::Relaxed);
        }
        self.ready.post()
    }

    /// Worker: waits for `prompts_written`, in slices of `slice`, until it is posted or
    /// `stop` returns true. Returns `true` when woken by the client, `false` when stopped.
    /// Spins first while the client ran on another CPU when `worker_ready` looked (see
    /// [`AdaptiveWait`](super::AdaptiveWait)). Touches the region only once woken by a client.
    ///
    /// With `clients` (a standalone worker), a turn whose holder is gone is given back: when
    /// `ready` has been taken and [`Clients::turn_abandoned`] says its holder is gone (it died
    /// after taking `ready`, or after writing but before posting), the request slot is cleared
    /// and `ready` posted again, so the next client is served.
    ///
    /// # Errors
    /// The wait's OS error.
    pub fn worker_wait(
        &self,
        slice: Duration,
        stop: &dyn Fn() -> bool,
        clients: Option<&dyn Clients>,
    ) -> io::Result<bool> {
        if stop() {
            return Ok(false);
        }
        let started = Instant::now();
        // The client's CPU as `worker_ready` saw it (no access to the region while idle).
        let elsewhere = on_other_cpus(
            self.region.current_cpu(),
            self.adaptive.peer_cpu.load(Ordering::Relaxed),
        );
        let mut taken = self.extended() && self.adaptive.spin(&self.prompts_written, &|| elsewhere)?;
        // Since when `ready` has been seen taken without a request following.
        let mut held_since: Option<Instant> = None;
        while !taken {
            if stop() {
                return Ok(false);
            }
            // Watching a turn, look at it often enough to give it back well within a second.
            let slice = if clients.is_some() {
                slice.min(TURN_CHECK)
            } else {
                slice
            };
            taken = self.prompts_written.wait_until(Some(Instant::now() + slice))?;
            if taken || mutant(Mutant::TurnNotRecovered) {
                continue;
            }
            let Some(clients) = clients else { continue };
            if self.ready.value()? > 0 {
                held_since = None;
                continue;
            }
            let now = Instant::now();
            let since = *held_since.get_or_insert(now);
            if clients.turn_abandoned(now.saturating_duration_since(since)) {
                // A slow holder may have posted just now: then that is the request.
                taken = self.prompts_written.try_wait()?;
                if !taken {
                    tracing::warn!("the client holding the turn is gone; giving the turn to the next");
                    self.worker_ready()?;
                    held_since = None;
                }
            }
        }
        self.adaptive.record(started.elapsed());
        // A watcher posts to wake us when it wants us to stop: check again (and then touch
        // nothing: a stopping worker leaves the region alone).
        let go = !stop();
        if go && self.extended() {
            self.set32(Word32::WorkerCpu, self.region.current_cpu());
        }
        Ok(go)
    }

    /// Worker: reads and validates what the client wrote: the shutdown byte, the auth token
    /// (`expected` is `Some` when the worker requires one), the sequence number, the request
    /// checksum (extended clients), the parameters, and both prompts into `system` and `user`
    /// (repaired copies; flags say what was repaired).
    pub fn worker_take(
        &self,
        expected: Option<&[u8; TOKEN_LEN]>,
        system: &mut String,
        user: &mut String,
        scratch: &mut [u8; 4096],
    ) -> Incoming {
        let mut shutdown = [0u8];
        self.region.read(Field::Shutdown, 0, &mut shutdown);
        let shutdown = shutdown[0];
        let (seq, stored_check) = if self.extended() {
            (
                self.region.load64(Word64::RequestSeq),
                self.region.load64(Word64::RequestChecksum),
            )
        } else {
            (0, 0)
        };
        let seed_stream = seq == 0 && self.take_seed_stream_mode();
        let mut token = [0u8; TOKEN_LEN];
        let mut params = RequestParams {
            seed_stream,
            ..RequestParams::default()
        };
        if seq != 0 {
            self.region.read(Field::AuthToken, 0, &mut token);
            params = RequestParams {
                flags: self.region.load32(Word32::RequestFlags),
                max_tokens: self.region.load32(Word32::MaxTokens),
                deadline_us: self.region.load64(Word64::DeadlineMicros),
                seed_stream: false,
                kind: self.region.load32(Word32::RequestKind),
                options: self.region.load32(Word32::RequestOptions),
                sample_seed: self.region.load32(Word32::SampleSeed),
            };
        }
        let refuse = |status, message: String| {
            // A refused shutdown flag must not linger into the next request.
            if shutdown != 0 {
                self.region.write(Field::Shutdown, 0, &[0]);
            }
            Incoming::Refused {
                seq,
                status,
                message,
                seed_stream,
            }
        };
        if let Some(expected) = expected {
            if seq == 0 || !token_eq(&token, expected) {
                return refuse(
                    StatusCode::Unauthorized,
                    "request does not carry this worker's auth token".into(),
                );
            }
        }
        let corrupted = || {
            refuse(
                StatusCode::BadRequest,
                "request checksum mismatch: the request changed in shared memory while in transit".into(),
            )
        };
        match shutdown {
            0 => {}
            1 if seq != 0 && request_checksum(seq, &token, 1, params, &[], &[]) != stored_check => {
                return corrupted()
            }
            1 => return Incoming::Shutdown,
            other => {
                return refuse(
                    StatusCode::BadRequest,
                    format!("shutdown_requested is {other:#04x}; only 0 and 1 are valid"),
                )
            }
        }
        // Each prompt is copied once; the checksum and the decoding both use that copy.
        let mut hasher = request_hasher(seq, &token, 0, params);
        // An extended client says how long each prompt is: copy that and its NUL, not the
        // whole field (a length past the field is refused below, through the checksum).
        let lens = if seq != 0 {
            let cap = |f: Field| f.span().len;
            let s = self.region.load32(Word32::SystemLen) as usize;
            let u = self.region.load32(Word32::UserLen) as usize;
            if s >= cap(Field::SystemPrompt) || u >= cap(Field::UserPrompt) {
                return refuse(
                    StatusCode::BadRequest,
                    format!("prompt length words ({s}, {u}) exceed the fields"),
                );
            }
            Some((s, u))
        } else {
            None
        };
        let mut take = |field: Field, len: Option<usize>, out: &mut String| {
            let cap = len.map_or(field.span().len, |n| n + 1);
            debug_assert!(cap <= scratch.len());
            let buf = &mut scratch[..cap];
            self.region.read(field, 0, buf);
            let (payload, missing_nul) = text::text_part(buf);
            // A seed-mode request (seq 0) carries no checksum: nothing to hash.
            if seq != 0 {
                hasher.update(&(payload.len() as u64).to_le_bytes());
                hasher.update(payload);
            }
            text::decode_text_into(payload, missing_nul, out)
        };
        let system_flags = take(Field::SystemPrompt, lens.map(|l| l.0), system);
        let user_flags = take(Field::UserPrompt, lens.map(|l| l.1), user);
        // An area request: its bytes copied once (bounded by the area), hashed, and decoded
        // only from the copy, after the checksum says it is what the client wrote.
        let mut area_bytes = Vec::new();
        if params.kind != 0 {
            let used = self.region.load32(Word32::AreaUsed) as usize;
            // What this side's mapping holds, not the (peer-writable) `area_size` word.
            let cap = Field::RequestArea.span().len.min(self.region.area_len());
            if cap == 0 || used > cap {
                return refuse(
                    StatusCode::BadRequest,
                    if cap == 0 {
                        "this object has no request area; send two prompts".into()
                    } else {
                        format!("area_used is {used}, the request area holds {cap}")
                    },
                );
            }
            area_bytes.resize(used, 0);
            self.region.read(Field::RequestArea, 0, &mut area_bytes);
        }
        area_hash_into(&mut hasher, params, &area_bytes);
        if seq != 0 && hasher.digest() != stored_check {
            return corrupted();
        }
        let area = if params.kind != 0 {
            match AreaRequest::decode(params.kind, &area_bytes) {
                Ok(a) => Some(a),
                Err(e) => return refuse(StatusCode::BadRequest, e.to_string()),
            }
        } else {
            None
        };
        Incoming::Request {
            seq,
            system: system_flags,
            user: user_flags,
            params,
            area,
        }
    }

    /// Whether the client asked to cancel request `seq` (extended mode).
    pub fn worker_cancel_requested(&self, seq: u64) -> bool {
        seq != 0 && self.extended() && self.region.load64(Word64::CancelSeq) == seq
    }

    /// Worker: starts the answer to request `seq`. For an extended client (`seq != 0`) the
    /// response area becomes a ring: the cursor is reset before `stream_seq` names the
    /// request, so a client that sees its `seq` there never sees an older cursor.
    ///
    /// For a seed-mode request that asked for the seed's streaming service (see
    /// [`Channel::worker_take`]) the answer is streamed that way: its fields are zeroed here,
    /// each [`Channel::worker_seed_update`] shows the answer so far, and
    /// [`Channel::worker_finish`] sets `generation_complete`.
    pub fn worker_stream_begin(&self, seq: u64, params: RequestParams) -> StreamState {
        let ring = self.extended() && seq != 0;
        if ring {
            self.region.store64(Word64::StreamWritten, 0);
            self.region.store64(Word64::StreamSeq, seq);
        }
        let seed = if params.seed_stream && !ring {
            self.seed_stream_begin()
        } else {
            None
        };
        StreamState {
            seq,
            ring,
            stream: ring && params.flags & REQUEST_STREAM != 0,
            written: 0,
            published: 0,
            read_seen: 0,
            seed,
            hasher: Xxh3::new(),
        }
    }

    /// Worker: how many bytes of the answer fit now. In ring mode that is the ring's free
    /// space (the client's read cursor is validated); otherwise what is left of the seed's
    /// 32 767-byte C string.
    pub fn worker_stream_room(&self, st: &mut StreamState) -> Room {
        if !st.ring {
            return Room::Free((RESPONSE_LEN - 1).saturating_sub(st.written as usize));
        }
        let r = self.region.load64(Word64::StreamRead);
        if r < st.read_seen || r > st.published {
            return Room::Garbled;
        }
        st.read_seen = r;
        let cap = self.region.ring_capacity() as u64;
        Room::Free((cap - (st.written - r)) as usize)
    }

    /// Worker: appends `bytes` (at most what [`Channel::worker_stream_room`] said fits) to the
    /// answer. Nothing is visible to the client until [`Channel::worker_stream_publish`].
    pub fn worker_stream_write(&self, st: &mut StreamState, bytes: &[u8]) {
        if st.ring {
            let cap = self.region.ring_capacity();
            let pos = (st.written % cap as u64) as usize;
            let first = bytes.len().min(cap - pos);
            self.region.write(Field::Response, pos, &bytes[..first]);
            if first < bytes.len() {
                self.region.write(Field::Response, 0, &bytes[first..]);
            }
        } else if st.seed.is_some() {
            self.seed_stream_write(st.written as usize, bytes);
        } else {
            self.region.write(Field::Response, st.written as usize, bytes);
        }
        // Only a ring answer (an extended client's) has a checksum to hash for.
        if st.ring {
            st.hasher.update(bytes);
        }
        st.written += bytes.len() as u64;
    }

    /// Worker: publishes what was written since the last publication and wakes the client
    /// (ring mode only; a seed-mode answer is published whole by [`Channel::worker_finish`]).
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_stream_publish(&self, st: &mut StreamState) -> io::Result<()> {
        if st.ring && st.written > st.published {
            self.region.store64(Word64::StreamWritten, st.written);
            st.published = st.written;
            self.response_written.post()?;
        }
        Ok(())
    }

    /// Worker: ends the answer begun with [`Channel::worker_stream_begin`]: for a seed-mode
    /// client the NUL and the zero tail (only `[len, dirty)` is zeroed, `dirty` tracking what
    /// earlier answers left; start it at `RESPONSE_LEN`); for an extended client's request, in
    /// the extension page the status, lengths, flags, error, usage and checksum, the final
    /// cursor, and `response_seq` last, so a client that sees its `seq` sees the rest (a
    /// seed-mode client reads none of them). Then posts `response_written`.
    /// `outcome.text` is ignored: the text is what was written to `st`.
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_finish(&self, outcome: &Outcome<'_>, st: StreamState, dirty: &mut usize) -> io::Result<()> {
        let n = st.written as usize;
        if st.ring {
            // The ring leaves bytes up to where it wrote (the whole area once it wrapped).
            *dirty = (*dirty).max(n.min(self.region.ring_capacity()).min(RESPONSE_LEN));
        } else {
            let end = (*dirty).clamp(n + 1, RESPONSE_LEN);
            self.region.fill(Field::Response, n, end - n, 0);
            *dirty = n + 1;
        }
        // A seed-mode client (seq 0) reads none of the extension page's response words.
        if self.extended() && st.seq != 0 {
            let r = &self.region;
            let err = text::encode(outcome.error, Field::ErrorMessage.span().len, Policy::Truncate)
                .expect("Truncate never fails");
            // `error_len` says how much is valid: the text and a NUL, no zero tail.
            if err.bytes.is_empty() {
                self.set_bytes(Field::ErrorMessage, 0, &[0]);
            } else {
                r.write(Field::ErrorMessage, 0, err.bytes);
                r.write(Field::ErrorMessage, err.bytes.len(), &[0]);
            }
            r.store32(Word32::ErrorLen, err.bytes.len() as u32);
            r.store32(Word32::Status, outcome.status.to_u32());
            r.store32(Word32::ResponseLen, u32::try_from(n).unwrap_or(u32::MAX));
            r.store32(Word32::ResponseFlags, outcome.flags);
            r.store64(Word64::ErrorArg0, outcome.error_args.0);
            r.store64(Word64::ErrorArg1, outcome.error_args.1);
            let meta = ResponseMeta {
                finish: outcome.finish.to_u32(),
                prompt_tokens: outcome.usage.prompt_tokens,
                generated_tokens: outcome.usage.generated_tokens,
                prompt_us: micros(outcome.usage.prompt_time),
                generation_us: micros(outcome.usage.generation_time),
                cached_tokens: outcome.usage.cached_tokens,
                dropped_messages: outcome.dropped_messages,
                result_len: 0,
                result_hash: 0,
            };
            let mut meta = meta;
            // A result that does not fit the area is not sent (the engine sizes it to fit).
            let result = outcome.result;
            if !result.is_empty() && result.len() <= Field::RequestArea.span().len.min(r.area_len()) {
                r.write(Field::RequestArea, 0, result);
                meta.result_len = result.len() as u32;
                meta.result_hash = super::checksum::text_hash(result);
            }
            r.store32(Word32::DroppedMessages, meta.dropped_messages);
            r.store32(Word32::ResultLen, meta.result_len);
            r.store32(Word32::PromptTokens, meta.prompt_tokens);
            r.store32(Word32::GeneratedTokens, meta.generated_tokens);
            r.store64(Word64::PromptMicros, meta.prompt_us);
            r.store64(Word64::GenerationMicros, meta.generation_us);
            r.store32(Word32::CachedTokens, meta.cached_tokens);
            r.store32(Word32::FinishReason, meta.finish);
            let check = response_checksum(
                st.seq,
                outcome.status.to_u32(),
                outcome.flags,
                st.written,
                st.hasher.digest(),
                err.bytes,
                outcome.error_args,
                &meta,
            );
            r.store64(Word64::ResponseChecksum, check);
            if st.ring {
                r.store64(Word64::StreamWritten, st.written);
            }
            r.store64(Word64::ResponseSeq, st.seq);
        }
        if let Some(seed) = st.seed {
            // The whole answer is in place: say so before `response_written`.
            self.seed_stream_complete(seed, &outcome.usage);
        }
        self.response_written.post()
    }

    /// Writes the response for request `seq` in one piece and posts `response_written` (the
    /// path for refusals and errors, and for callers that hold the whole text).
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_respond(&self, seq: u64, outcome: &Outcome<'_>) -> io::Result<()> {
        self.worker_respond_tracked(seq, RequestParams::default(), outcome, &mut { RESPONSE_LEN })
    }

    /// [`Channel::worker_respond`] with the response area's dirty length tracked (see
    /// [`Channel::worker_finish`]). A text longer than the area is cut on a char boundary and
    /// flagged [`RESPONSE_TRUNCATED`].
    ///
    /// # Errors
    /// The post's OS error.
    pub fn worker_respond_tracked(
        &self,
        seq: u64,
        params: RequestParams,
        outcome: &Outcome<'_>,
        dirty: &mut usize,
    ) -> io::Result<()> {
        let mut st = self.worker_stream_begin(seq, params);
        let room = match self.worker_stream_room(&mut st) {
            Room::Free(n) => n,
            Room::Garbled => 0,
        };
        let cap = if st.ring { room } else { room.min(RESPONSE_LEN - 1) };
        let kept = text::encode(outcome.text, cap + 1, Policy::Truncate).expect("Truncate never fails");
        self.worker_stream_write(&mut st, kept.bytes);
        let mut o = *outcome;
        if kept.truncated {
            o.flags |= RESPONSE_TRUNCATED;
        }
        self.worker_finish(&o, st, dirty)
    }
}
