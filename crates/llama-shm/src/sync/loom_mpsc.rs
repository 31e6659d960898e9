//! `std::sync::mpsc` on loom primitives, with what the worker uses of it: senders that
//! count (the receiver sees `Disconnected` once all are gone), `send` to a dropped receiver
//! failing, `recv`, `try_recv`, `recv_timeout`.
//!
//! A model has no clock: `recv_timeout` waits as `recv` does (until a message or the last
//! sender's drop). Its only caller is the idle engine thread, whose timeout re-checks the
//! stop condition; a model's stop reaches it through the waiters (each sees the stop and
//! ends, dropping its sender).
use std::collections::VecDeque;
use std::time::Duration;

pub(crate) use std::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError};

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    receiver: bool,
}

#[derive(Debug)]
struct Shared<T> {
    state: loom::sync::Mutex<State<T>>,
    cv: loom::sync::Condvar,
}

/// See `std::sync::mpsc::Sender`.
#[derive(Debug)]
pub(crate) struct Sender<T>(loom::sync::Arc<Shared<T>>);

/// See `std::sync::mpsc::Receiver`.
#[derive(Debug)]
pub(crate) struct Receiver<T>(loom::sync::Arc<Shared<T>>);

/// See `std::sync::mpsc::channel`.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = loom::sync::Arc::new(Shared {
        state: loom::sync::Mutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
            receiver: true,
        }),
        cv: loom::sync::Condvar::new(),
    });
    (Sender(loom::sync::Arc::clone(&shared)), Receiver(shared))
}

impl<T> Sender<T> {
    /// See `std::sync::mpsc::Sender::send`.
    pub(crate) fn send(&self, t: T) -> Result<(), SendError<T>> {
        let mut s = self.0.state.lock().unwrap();
        if !s.receiver {
            return Err(SendError(t));
        }
        s.queue.push_back(t);
        drop(s);
        self.0.cv.notify_all();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.state.lock().unwrap().senders += 1;
        Sender(loom::sync::Arc::clone(&self.0))
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // A model that failed is being torn down (loom's execution is gone): touch nothing.
        if std::thread::panicking() {
            return;
        }
        let mut s = self.0.state.lock().unwrap();
        s.senders -= 1;
        let last = s.senders == 0;
        drop(s);
        if last {
            self.0.cv.notify_all();
        }
    }
}

impl<T> Receiver<T> {
    /// See `std::sync::mpsc::Receiver::recv`.
    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        let mut s = self.0.state.lock().unwrap();
        loop {
            if let Some(t) = s.queue.pop_front() {
                return Ok(t);
            }
            if s.senders == 0 {
                return Err(RecvError);
            }
            s = self.0.cv.wait(s).unwrap();
        }
    }

    /// See `std::sync::mpsc::Receiver::try_recv`.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut s = self.0.state.lock().unwrap();
        match s.queue.pop_front() {
            Some(t) => Ok(t),
            None if s.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Waits as [`Receiver::recv`] does (see the module docs): never `Timeout`.
    pub(crate) fn recv_timeout(&self, _timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv().map_err(|RecvError| RecvTimeoutError::Disconnected)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        self.0.state.lock().unwrap().receiver = false;
    }
}
