//! Protocol variants with one planted defect each (feature `planted-bugs`; never shipped).
//! Each is the shipped sequence of protocol calls with exactly one step wrong, so a model
//! that passes on the real sequence and fails on these shows it can tell them apart.

use llama_shm::internals::protocol::{Incoming, Outcome, Region, Semaphore, Usage};
use llama_shm::internals::wire::layout::Field;
use llama_shm::internals::wire::status::{Finish, StatusCode};

use crate::LoomChannel;

/// Which worker defect to plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerBug {
    /// No defect: the control, identical to `serve`'s sequence.
    None,
    /// Post `response_written` before writing the response.
    PostBeforeWrite,
    /// Post `ready` twice per cycle.
    ReadyTwice,
}

/// The worker loop of `llama_shm::internals::worker::serve` (echo engine), with `bug` planted.
/// Returns the number of requests answered before a shutdown.
pub fn buggy_serve(ch: &LoomChannel, bug: WorkerBug) -> u64 {
    let mut system = String::new();
    let mut user = String::new();
    let mut scratch = Box::new([0u8; 4096]);
    let mut served = 0;
    loop {
        ch.worker_ready().unwrap();
        if bug == WorkerBug::ReadyTwice {
            ch.ready.post().unwrap();
        }
        assert!(ch.worker_wait(crate::SLICE, &|| false, None).unwrap());
        let seq = match ch.worker_take(None, &mut system, &mut user, &mut scratch) {
            Incoming::Shutdown => return served,
            Incoming::Refused { seq, .. } => seq,
            Incoming::Request { seq, .. } => seq,
        };
        let answer = format!("{system}\n{user}");
        let outcome = Outcome {
            status: StatusCode::Ok,
            text: &answer,
            flags: 0,
            error: "",
            error_args: (0, 0),
            usage: Usage::default(),
            finish: Finish::Stop,
            dropped_messages: 0,
            result: &[],
        };
        if bug == WorkerBug::PostBeforeWrite {
            ch.response_written.post().unwrap();
            // worker_respond writes, then posts again.
        }
        ch.worker_respond(seq, &outcome).unwrap();
        served += 1;
    }
}

/// A client that reads the response field before waiting for `response_written`.
pub fn read_before_wait(ch: &LoomChannel) {
    let mut early = vec![0u8; 16];
    ch.region.read(Field::Response, 0, &mut early);
}

/// A client that sets the shutdown flag but forgets to post `prompts_written`.
pub fn shutdown_without_post(ch: &LoomChannel) {
    ch.region.write(Field::Shutdown, 0, &[1]);
}

/// A batch engine (two sequences) that hands every piece to the worker under the *other*
/// sequence's number: what a worker dispatching a piece to the wrong slot's sink would do
/// (the multi-slot worker's cross-talk). Everything else is the wrapped engine's.
#[derive(Debug)]
pub struct CrossedPieces<E>(pub E);

impl<E: llama_shm::internals::worker::batch::BatchEngine> llama_shm::internals::worker::batch::BatchEngine
    for CrossedPieces<E>
{
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
    fn admit(
        &mut self,
        seq: usize,
        request: &llama_shm::EngineRequest<'_>,
    ) -> Result<(), llama_shm::EngineError> {
        self.0.admit(seq, request)
    }
    fn abort(&mut self, seq: usize) {
        self.0.abort(seq);
    }
    fn hold(&mut self, seq: usize, held: bool) {
        self.0.hold(seq, held);
    }
    fn is_busy(&self) -> bool {
        self.0.is_busy()
    }
    fn step(&mut self, out: &mut dyn llama_shm::internals::worker::batch::BatchSink) {
        struct Crossed<'a>(&'a mut dyn llama_shm::internals::worker::batch::BatchSink);
        impl llama_shm::internals::worker::batch::BatchSink for Crossed<'_> {
            fn piece(&mut self, seq: usize, piece: &str) -> bool {
                self.0.piece(seq ^ 1, piece)
            }
            fn done(&mut self, seq: usize, result: Result<llama_shm::Generation, llama_shm::EngineError>) {
                self.0.done(seq, result);
            }
        }
        self.0.step(&mut Crossed(out));
    }
}
