//! The turn lock of a shared worker: attached clients take it around each request, so one
//! client's request cannot start while another's is in flight. It is an `flock` on the
//! shared-memory object, so the kernel releases it when its holder dies.

use std::sync::Arc;

use super::PosixChannel;
use crate::os::shm::ShmError;

/// A held turn; released on drop.
#[derive(Debug)]
pub struct Turn(Arc<PosixChannel>);

impl Turn {
    /// Takes the turn if nobody holds it: `Ok(None)` when another process does.
    ///
    /// # Errors
    /// [`ShmError::Os`] when the lock call fails for another reason.
    pub fn try_take(channel: &Arc<PosixChannel>) -> Result<Option<Turn>, ShmError> {
        Ok(channel
            .region
            .shm()
            .try_lock()?
            .then(|| Turn(Arc::clone(channel))))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.region.shm().unlock();
    }
}
