//! Cancelling the request in flight from another thread.

use std::sync::{Arc, Mutex};

use crate::objects::PosixChannel;
use crate::protocol::Region;
use crate::wire::layout::ObjectKind;

/// Cancels the request a [`Client`](super::Client) is running, from any thread. Get one with
/// [`Client::canceller`](super::Client::canceller); it stays valid for the client's life, across restarts of its worker.
///
/// ```no_run
/// use std::time::Duration;
/// use llama_shm::{Client, Prompts, RequestOptions};
/// let mut client = Client::builder().worker("target/release/llama-shm-worker").spawn()?;
/// let canceller = client.canceller();
/// std::thread::spawn(move || {
///     std::thread::sleep(Duration::from_secs(2));
///     canceller.cancel(); // the request below returns its partial answer, finish Cancelled
/// });
/// let r = client.stream(Prompts::user("Tell me a long story."), &RequestOptions::default(), |c| print!("{c}"))?;
/// println!("\n{:?}", r.finish);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Canceller(pub(super) Arc<CancelSlot>);

/// What a [`Canceller`] needs, under one lock: the client sets and clears `in_flight` under
/// it, and `cancel` holds it while it reads `in_flight` and stores the cancel, so a cancel can
/// never store the sequence number of a request that already ended over a newer request's
/// cancel (found by the spin model, verification/spin/stream.pml).
#[derive(Debug)]
pub(super) struct CancelSlot(pub(super) Mutex<InFlight>);

#[derive(Debug)]
pub(super) struct InFlight {
    /// Sequence number of the request in flight, 0 when none.
    pub(super) seq: u64,
    /// The channel of the current worker (replaced on restart).
    pub(super) channel: Arc<PosixChannel>,
}

impl CancelSlot {
    pub(super) fn new(channel: &Arc<PosixChannel>) -> Arc<Self> {
        Arc::new(Self(Mutex::new(InFlight {
            seq: 0,
            channel: Arc::clone(channel),
        })))
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Canceller {
    /// Asks the worker to stop the request in flight: generation stops within one token and
    /// the request returns what was produced, with [`Finish::Cancelled`](crate::wire::status::Finish::Cancelled). Returns whether
    /// a request was in flight. A seed-mode worker cannot be told, and this returns `false`.
    pub fn cancel(&self) -> bool {
        let slot = self.0.lock();
        if slot.seq == 0 || slot.channel.region.kind() != ObjectKind::Extended {
            return false;
        }
        slot.channel.client_cancel(slot.seq);
        true
    }
}
