//! Requests answered without generating: embeddings and token counts. No ring, no stream:
//! the engine's result goes back in the request area (embeddings) or the usage (a count).

use std::io;
use std::time::{Duration, Instant};

use super::engine::{Cancel, Engine, EngineError, EngineRequest};
use super::serve::error_outcome;
use crate::protocol::{AreaRequest, Channel, Embeddings, Outcome, Region, RequestParams, Semaphore, Usage};
use crate::wire::layout::{Word32, AREA_LEN, KIND_COUNT, KIND_EMBED};
use crate::wire::status::{Finish, StatusCode};

/// Whether a request is answered without generating (embeddings, a token count).
pub(super) fn is_direct(params: RequestParams) -> bool {
    matches!(params.kind, KIND_EMBED | KIND_COUNT)
}

/// The most numbers of an embeddings result that fit the request area.
pub(super) const MAX_EMBED_VALUES: usize = (AREA_LEN - Embeddings::encoded_len(0, 0)) / 4;

/// What a direct request gives: its usage and the bytes of its result.
pub(super) type Direct = Result<(Usage, Vec<u8>), EngineError>;

/// What answers direct requests: an [`Engine`] or a batch engine.
pub(super) trait DirectEngine {
    fn embed(&mut self, texts: &[String], max: usize, cancel: &Cancel) -> Result<Embeddings, EngineError>;
    fn count(&mut self, request: &EngineRequest<'_>, text: Option<&str>) -> Result<u32, EngineError>;
}

/// An [`Engine`] answering direct requests.
pub(super) struct OneEngine<'e, E: ?Sized>(pub(super) &'e mut E);

impl<E: Engine + ?Sized> DirectEngine for OneEngine<'_, E> {
    fn embed(&mut self, texts: &[String], max: usize, cancel: &Cancel) -> Result<Embeddings, EngineError> {
        self.0.embed(texts, max, cancel)
    }
    fn count(&mut self, request: &EngineRequest<'_>, text: Option<&str>) -> Result<u32, EngineError> {
        self.0.count_tokens(request, text)
    }
}

/// Answers an embeddings or count request (taken from `channel`) with the engine's `embed` or
/// `count`, as a generating request is answered: the slot busy meanwhile, the request's
/// deadline and the worker's stop in `cancel`, nothing done for a request cancelled before
/// it started or a worker stopping (`stopping`).
///
/// # Errors
/// The post's OS error.
#[allow(clippy::too_many_arguments)] // The request as taken, and where its answer goes.
pub(super) fn serve_direct<S: Semaphore, R: Region>(
    channel: &Channel<S, R>,
    seq: u64,
    params: RequestParams,
    area: &AreaRequest,
    request: &EngineRequest<'_>,
    cancel: &Cancel,
    stopping: bool,
    engine: &mut dyn DirectEngine,
    dirty: &mut usize,
) -> io::Result<()> {
    cancel.reset();
    if params.deadline_us != 0 {
        cancel.set_deadline(Instant::now().checked_add(Duration::from_micros(params.deadline_us)));
    }
    let result = if stopping {
        cancel.cancel();
        Err((
            StatusCode::ShuttingDown,
            "the worker is shutting down; request not started",
        ))
    } else if channel.worker_cancel_requested(seq) || cancel.is_cancelled() {
        Err((
            StatusCode::EngineFailed,
            "the request was cancelled before it started",
        ))
    } else {
        Ok(())
    };
    channel.region.store32(Word32::SlotBusy, 1);
    let answer = match result {
        Ok(()) => answer_direct(params, area, request, cancel, engine),
        Err((status, message)) => {
            let o = Outcome::error(status, message);
            channel.region.store32(Word32::SlotBusy, 0);
            return channel.worker_respond_tracked(seq, params, &o, dirty);
        }
    };
    respond_direct(channel, seq, params, answer, dirty)
}

/// Answers an embeddings or count request with the engine's `embed` or `count`.
fn answer_direct(
    params: RequestParams,
    area: &AreaRequest,
    request: &EngineRequest<'_>,
    cancel: &Cancel,
    engine: &mut dyn DirectEngine,
) -> Direct {
    let started = Instant::now();
    if params.kind == KIND_EMBED {
        let e = engine.embed(&area.texts, MAX_EMBED_VALUES, cancel)?;
        let usage = Usage {
            prompt_time: started.elapsed(),
            ..Usage::default()
        };
        Ok((usage, e.encode()))
    } else {
        let tokens = engine.count(request, area.texts.first().map(String::as_str))?;
        let usage = Usage {
            prompt_tokens: tokens,
            prompt_time: started.elapsed(),
            ..Usage::default()
        };
        Ok((usage, Vec::new()))
    }
}

/// Writes the answer to a direct request (its result in the request area) and posts it.
///
/// # Errors
/// The post's OS error.
fn respond_direct<S: Semaphore, R: Region>(
    channel: &Channel<S, R>,
    seq: u64,
    params: RequestParams,
    result: Direct,
    dirty: &mut usize,
) -> io::Result<()> {
    let message;
    let outcome = match &result {
        Ok((usage, bytes)) => Outcome {
            status: StatusCode::Ok,
            text: "",
            flags: 0,
            error: "",
            error_args: (0, 0),
            usage: *usage,
            finish: Finish::Stop,
            dropped_messages: 0,
            result: bytes,
        },
        Err(e) => {
            message = e.to_string();
            error_outcome(e, &message)
        }
    };
    let r = &channel.region;
    r.store32(Word32::SlotServed, r.load32(Word32::SlotServed).wrapping_add(1));
    r.store32(Word32::SlotBusy, 0);
    channel.worker_respond_tracked(seq, params, &outcome, dirty)
}
