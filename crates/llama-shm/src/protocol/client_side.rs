//! The client's side of the cycle: take a turn, write the request, wait for the answer and
//! read it (whole, or piece by piece from the ring), checking everything the worker wrote.

use std::io;
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::Xxh3;

use super::channel::Channel;
use super::checksum::{request_checksum, request_checksum_with_area, response_checksum, ResponseMeta};
use super::messages::{PreparedRequest, RawResponse, RequestParams, Usage};
use super::peer::{Region, Semaphore};
use super::wait::{expired, WaitError};
use crate::wire::layout::{Field, Word32, Word64, RESPONSE_LEN, TOKEN_LEN};
use crate::wire::status::{Finish, StatusCode};
use crate::wire::text::{self, DecodeFlags};

/// Most stale `response_written` posts [`Channel::client_acquire`] drains. A worker leaves at
/// most one per publication of the answers before; a peer posting in a loop is cut off here
/// (what is left over is skipped by sequence number like any stale post).
pub const DRAIN_LIMIT: u32 = 1 << 20;

/// The client's side of one answer in flight.
struct Receiver {
    read: u64,
    hasher: Xxh3,
}

impl<S: Semaphore, R: Region> Channel<S, R> {
    // ----- client side --------------------------------------------------------------------

    /// Client: waits for `ready` (the worker can take a request).
    ///
    /// # Errors
    /// As [`wait_for`](super::wait_for); also [`WaitError::PeerGone`] when the post came from a watcher that
    /// saw the worker die.
    pub fn client_acquire(
        &self,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<(), WaitError> {
        self.client_wait(&self.ready, deadline, slice, alive)?;
        if !alive() {
            return Err(WaitError::PeerGone);
        }
        // The worker posts `ready` only after the final `response_written` of the previous
        // request, and posts nothing more until we write: any `response_written` still counted
        // now was left by a request whose client stopped waiting (timed out, or died), or by
        // stream publications the client consumed in bulk. Drop them, so the count is exact
        // again and our own posts are the ones we wait for.
        // Bounded: by count, and by the deadline (checked every 1024 takes).
        for n in 1..=DRAIN_LIMIT {
            if !self.response_written.try_wait()? || (n % 1024 == 0 && expired(deadline, Instant::now())) {
                break;
            }
        }
        // A watcher that saw the worker die marks it dead *before* posting its wake-ups, so
        // if the drain just swallowed one of them, this check sees the death.
        if alive() {
            Ok(())
        } else {
            Err(WaitError::PeerGone)
        }
    }

    /// Client: writes the request and posts `prompts_written`. Call only while holding the
    /// turn (after [`Channel::client_acquire`]).
    ///
    /// # Errors
    /// The post's OS error.
    pub fn client_write(&self, req: &PreparedRequest<'_>) -> io::Result<()> {
        if self.extended() {
            let r = &self.region;
            let token = req.token.copied().unwrap_or([0; TOKEN_LEN]);
            // What rarely changes is written only when it does: a store to a cache line the
            // worker holds costs a transfer of that line.
            self.set_bytes(Field::AuthToken, 0, &token);
            self.set32(Word32::ClientPid, req.client_pid);
            self.set32(Word32::RequestFlags, req.params.flags);
            self.set32(Word32::MaxTokens, req.params.max_tokens);
            self.set64(Word64::DeadlineMicros, req.params.deadline_us);
            r.store64(Word64::StreamRead, 0);
            self.set32(Word32::ClientCpu, r.current_cpu());
            self.set32(Word32::RequestKind, req.params.kind);
            self.set32(Word32::RequestOptions, req.params.options);
            self.set32(Word32::SampleSeed, req.params.sample_seed);
            // Only a request of another kind than two prompts has records (the worker reads
            // and hashes the area for those only).
            let area = if req.params.kind != 0 { req.area } else { &[] };
            debug_assert!(
                area.len() <= Field::RequestArea.span().len,
                "the client refuses larger requests"
            );
            let area_len = area.len().min(Field::RequestArea.span().len);
            self.set32(Word32::AreaUsed, area_len as u32);
            if area_len > 0 {
                r.write(Field::RequestArea, 0, &area[..area_len]);
            }
            let check = request_checksum_with_area(
                req.seq,
                &token,
                0,
                req.params,
                req.system.bytes,
                req.user.bytes,
                &area[..area_len],
            );
            r.store64(Word64::RequestChecksum, check);
            r.store64(Word64::RequestSeq, req.seq);
            // The worker reads the lengths: payload and NUL are enough, no zero tail.
            for (field, word, bytes) in [
                (Field::SystemPrompt, Word32::SystemLen, req.system.bytes),
                (Field::UserPrompt, Word32::UserLen, req.user.bytes),
            ] {
                let n = bytes.len().min(field.span().len - 1);
                r.store32(word, n as u32);
                r.write(field, 0, &bytes[..n]);
                r.write(field, n, &[0]);
            }
        } else {
            self.write_text(Field::SystemPrompt, req.system.bytes);
            self.write_text(Field::UserPrompt, req.user.bytes);
        }
        self.set_bytes(Field::Shutdown, 0, &[0]);
        self.prompts_written.post()
    }

    /// Client: asks the worker to stop generating request `seq` (extended mode; a no-op in
    /// seed mode). Safe at any time and from any thread: the worker checks it between
    /// pieces, and a later request has another `seq`.
    pub fn client_cancel(&self, seq: u64) {
        if self.extended() && seq != 0 {
            self.region.store64(Word64::CancelSeq, seq);
        }
    }

    /// Client: waits for the response to request `seq` and reads it, text included. In
    /// extended mode a `response_written` whose `response_seq` is not `seq` is stale (left by
    /// an earlier request that timed out or whose client died) and is skipped.
    ///
    /// # Errors
    /// As [`Channel::client_receive`].
    pub fn client_await(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<RawResponse, WaitError> {
        let mut text_bytes = Vec::new();
        let mut scratch = Vec::new();
        let mut raw = self.client_receive(
            seq,
            deadline,
            slice,
            alive,
            u64::MAX,
            &mut scratch,
            &mut |b: &[u8]| text_bytes.extend_from_slice(b),
        )?;
        if self.extended() {
            let decoded = text::decode(&text_bytes);
            raw.decode = decoded.flags;
            raw.decode.missing_nul = false;
            raw.text = decoded.text.into_owned();
        } else {
            // The seed path decoded already and handed over valid UTF-8.
            raw.text = String::from_utf8(text_bytes).unwrap_or_default();
        }
        Ok(raw)
    }

    /// Client: waits for the answer to request `seq`, handing each published piece to
    /// `on_bytes` as it arrives (extended mode: whatever the worker published since the last
    /// wake-up, valid UTF-8 unless the region was scribbled on, which the final checksum then
    /// reports; seed mode: the whole decoded answer once). `scratch` is reused for the
    /// copies. The returned [`RawResponse`] has an empty `text`. At most `limit` bytes of
    /// answer are taken: a worker that goes on past them (an endless answer) is cancelled,
    /// so what the caller accumulates stays bounded.
    ///
    /// # Errors
    /// As [`wait_for`](super::wait_for) (the request is then cancelled, so the worker stops generating an
    /// answer nobody reads); [`WaitError::PeerGone`] when the worker died before answering;
    /// [`WaitError::Garbled`] when the stream cursor makes no sense, [`WaitError::TooLong`]
    /// past `limit` (both also cancelled).
    #[allow(clippy::too_many_arguments)] // One call site per kind of caller; a struct would only rename them.
    pub fn client_receive(
        &self,
        seq: u64,
        deadline: Option<Instant>,
        slice: Duration,
        alive: &dyn Fn() -> bool,
        limit: u64,
        scratch: &mut Vec<u8>,
        on_bytes: &mut dyn FnMut(&[u8]),
    ) -> Result<RawResponse, WaitError> {
        let mut rx = Receiver {
            read: 0,
            hasher: Xxh3::new(),
        };
        loop {
            if let Err(e) = self.client_wait(&self.response_written, deadline, slice, alive) {
                // Nobody will read the rest: let the worker stop at once (it would otherwise
                // wait for ring space until its stall limit).
                self.client_cancel(seq);
                return Err(e);
            }
            if !self.extended() {
                if !alive() {
                    return Err(WaitError::PeerGone);
                }
                return self.read_seed_response(limit, scratch, on_bytes);
            }
            // `response_seq` first: once it names us, the final cursor is visible too.
            let done = self.region.load64(Word64::ResponseSeq) == seq;
            let ours = self.region.load64(Word64::StreamSeq) == seq;
            if ours {
                if let Err(e) = self.consume(&mut rx, limit, scratch, on_bytes) {
                    self.client_cancel(seq);
                    return Err(e);
                }
            }
            if done {
                return Ok(self.read_extended_meta(seq, &rx));
            }
            if !alive() {
                return Err(WaitError::PeerGone);
            }
            // A stale post, or a piece of ours: keep waiting for the end. (The next wait
            // checks the deadline before it takes anything, so a peer that keeps posting
            // cannot hold us past it.)
        }
    }

    /// Copies what the worker published since the last call out of the ring, hands it over,
    /// and moves the read cursor so the worker may reuse the space.
    fn consume(
        &self,
        rx: &mut Receiver,
        limit: u64,
        scratch: &mut Vec<u8>,
        on_bytes: &mut dyn FnMut(&[u8]),
    ) -> Result<(), WaitError> {
        let r = &self.region;
        let cap = r.ring_capacity();
        let w = r.load64(Word64::StreamWritten);
        if w < rx.read || w - rx.read > cap as u64 {
            return Err(WaitError::Garbled(
                "the worker's write cursor moved backwards or past the ring",
            ));
        }
        if w > limit {
            return Err(WaitError::TooLong { limit });
        }
        let n = (w - rx.read) as usize;
        if n == 0 {
            return Ok(());
        }
        // Every byte is overwritten below: resizing a reused buffer fills nothing.
        scratch.resize(n, 0);
        let pos = (rx.read % cap as u64) as usize;
        let first = n.min(cap - pos);
        r.read(Field::Response, pos, &mut scratch[..first]);
        if first < n {
            r.read(Field::Response, 0, &mut scratch[first..]);
        }
        rx.read = w;
        r.store64(Word64::StreamRead, w);
        rx.hasher.update(scratch);
        on_bytes(scratch);
        Ok(())
    }

    fn read_seed_response(
        &self,
        limit: u64,
        scratch: &mut Vec<u8>,
        on_bytes: &mut dyn FnMut(&[u8]),
    ) -> Result<RawResponse, WaitError> {
        scratch.resize(RESPONSE_LEN, 0);
        self.region.read(Field::Response, 0, scratch);
        let decoded = text::decode(scratch);
        if decoded.text.len() as u64 > limit {
            return Err(WaitError::TooLong { limit });
        }
        if !decoded.text.is_empty() {
            on_bytes(decoded.text.as_bytes());
        }
        Ok(RawResponse {
            status: StatusCode::Ok,
            text: String::new(),
            decode: decoded.flags,
            flags: 0,
            error: String::new(),
            error_args: (0, 0),
            usage: Usage::default(),
            finish: Finish::Unknown,
            intact: true,
            dropped_messages: 0,
            result: Vec::new(),
        })
    }

    fn read_extended_meta(&self, seq: u64, rx: &Receiver) -> RawResponse {
        let r = &self.region;
        // Everything is copied once, then checked and decoded from the private copies.
        let status = r.load32(Word32::Status);
        let flags = r.load32(Word32::ResponseFlags);
        let stored_check = r.load64(Word64::ResponseChecksum);
        let args = (r.load64(Word64::ErrorArg0), r.load64(Word64::ErrorArg1));
        let len = u64::from(r.load32(Word32::ResponseLen));
        let err_len = (r.load32(Word32::ErrorLen) as usize).min(Field::ErrorMessage.span().len - 1);
        let mut ebuf = [0u8; crate::wire::layout::ERROR_MESSAGE_LEN];
        let ebuf = &mut ebuf[..err_len];
        r.read(Field::ErrorMessage, 0, ebuf);
        let meta = ResponseMeta {
            finish: r.load32(Word32::FinishReason),
            prompt_tokens: r.load32(Word32::PromptTokens),
            generated_tokens: r.load32(Word32::GeneratedTokens),
            prompt_us: r.load64(Word64::PromptMicros),
            generation_us: r.load64(Word64::GenerationMicros),
            cached_tokens: r.load32(Word32::CachedTokens),
            dropped_messages: r.load32(Word32::DroppedMessages),
            result_len: r.load32(Word32::ResultLen),
            result_hash: 0,
        };
        // The result (embeddings) is copied out once, bounded by the area, and hashed.
        let mut result = Vec::new();
        let mut meta = meta;
        if meta.result_len != 0 {
            let n = (meta.result_len as usize).min(Field::RequestArea.span().len);
            result.resize(n, 0);
            r.read(Field::RequestArea, 0, &mut result);
            meta.result_hash = super::checksum::text_hash(&result);
        }
        let intact = len == rx.read.min(u64::from(u32::MAX))
            && response_checksum(seq, status, flags, rx.read, rx.hasher.digest(), ebuf, args, &meta)
                == stored_check;
        RawResponse {
            status: StatusCode::from_u32(status),
            text: String::new(),
            decode: DecodeFlags::default(),
            flags,
            error: text::decode(ebuf).text.into_owned(),
            error_args: args,
            usage: Usage {
                prompt_tokens: meta.prompt_tokens,
                generated_tokens: meta.generated_tokens,
                prompt_time: Duration::from_micros(meta.prompt_us),
                generation_time: Duration::from_micros(meta.generation_us),
                cached_tokens: meta.cached_tokens,
            },
            finish: Finish::from_u32(meta.finish),
            intact,
            dropped_messages: meta.dropped_messages,
            result,
        }
    }

    /// Client: asks the worker to exit (shutdown byte 1, then `prompts_written`), carrying
    /// the token and `seq` in extended mode so a token-guarded worker accepts it.
    ///
    /// # Errors
    /// The post's OS error.
    pub fn client_request_shutdown(&self, token: Option<&[u8; TOKEN_LEN]>, seq: u64) -> io::Result<()> {
        if self.extended() {
            let token = token.copied().unwrap_or([0; TOKEN_LEN]);
            self.region.write(Field::AuthToken, 0, &token);
            self.region.store64(
                Word64::RequestChecksum,
                request_checksum(seq, &token, 1, RequestParams::default(), &[], &[]),
            );
            self.region.store64(Word64::RequestSeq, seq);
        }
        self.region.write(Field::Shutdown, 0, &[1]);
        self.prompts_written.post()
    }

    /// Client, after [`Channel::client_request_shutdown`] with `seq`: the worker's refusal of
    /// that shutdown, if it answered one (a worker that accepts exits without answering).
    /// Status and message; `None` while there is no answer to `seq` (extended mode only).
    pub fn client_shutdown_refusal(&self, seq: u64) -> Option<(StatusCode, String)> {
        if !self.extended() || self.region.load64(Word64::ResponseSeq) != seq {
            return None;
        }
        let r = &self.region;
        let status = StatusCode::from_u32(r.load32(Word32::Status));
        let err_len = (r.load32(Word32::ErrorLen) as usize).min(Field::ErrorMessage.span().len - 1);
        let mut ebuf = [0u8; crate::wire::layout::ERROR_MESSAGE_LEN];
        r.read(Field::ErrorMessage, 0, &mut ebuf[..err_len]);
        Some((status, text::decode(&ebuf[..err_len]).text.into_owned()))
    }
}
