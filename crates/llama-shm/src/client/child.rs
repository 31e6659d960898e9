//! The spawned worker as a child process: reaping it with a deadline, and the tail of its
//! stderr for error messages.

use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::os::control::{self, ControlMsg};
use crate::os::process::{self, ExitInfo};

/// A spawned worker process and its side channels.
#[derive(Debug)]
pub(super) struct ChildProc {
    pub(super) child: Child,
    pub(super) control: UnixStream,
    pub(super) stderr: StderrTail,
    pub(super) rx: control::Receiver,
}

impl ChildProc {
    /// Waits (until `deadline`, then kills) for the worker to exit; returns how it ended and
    /// the error message it sent on the control socket, if any.
    pub(super) fn reap_with_message(&mut self, deadline: Instant) -> (Option<ExitInfo>, Option<String>) {
        let mut message = None;
        // The worker sends its error and exits; read until EOF (bounded by the deadline).
        while let Ok(Some(msg)) = self.rx.recv(&mut self.control, deadline) {
            if let ControlMsg::Error(m) = msg {
                message = Some(m);
            }
        }
        let exit = self.wait_until(deadline);
        if exit.is_none() {
            self.kill();
        }
        self.stderr.finish(deadline);
        (exit, message)
    }

    /// Waits for exit until `deadline` using a pidfd; `None` if still running.
    pub(super) fn wait_until(&mut self, deadline: Instant) -> Option<ExitInfo> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(ExitInfo::from_status(status));
        }
        if let Ok(pidfd) = process::pidfd_open(self.child.id()) {
            let _ = process::wait_readable(pidfd.as_fd(), deadline);
        } else {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.child.try_wait().ok().flatten().map(ExitInfo::from_status)
    }

    pub(super) fn kill(&mut self) -> Option<ExitInfo> {
        let _ = self.child.kill();
        self.child.wait().ok().map(ExitInfo::from_status)
    }
}

/// Keeps the last lines a worker wrote to stderr (and logs them at debug level).
#[derive(Debug)]
pub(super) struct StderrTail {
    pub(super) lines: Arc<Mutex<VecDeque<String>>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl StderrTail {
    const KEEP: usize = 20;
    /// Longest line kept (bytes); the rest of a longer one is dropped, so a worker that
    /// writes without newlines cannot grow the client.
    const MAX_LINE: usize = 4096;

    pub(super) fn start(stderr: Option<std::process::ChildStderr>) -> Self {
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let thread = stderr.and_then(|s| {
            let lines = Arc::clone(&lines);
            std::thread::Builder::new()
                .name("llama-shm-stderr".into())
                .spawn(move || {
                    let keep = |line: &[u8], cut: bool| {
                        let mut line = String::from_utf8_lossy(line).into_owned();
                        if cut {
                            line.push_str(" […]");
                        }
                        tracing::debug!(target: "llama_shm::worker", "{line}");
                        let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
                        if l.len() == Self::KEEP {
                            l.pop_front();
                        }
                        l.push_back(line);
                    };
                    let mut reader = io::BufReader::new(s);
                    let (mut line, mut cut) = (Vec::with_capacity(256), false);
                    loop {
                        let buf = match reader.fill_buf() {
                            Ok([]) | Err(_) => break,
                            Ok(buf) => buf,
                        };
                        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
                            Some(i) => (&buf[..i], Some(i + 1)),
                            None => (buf, None),
                        };
                        let room = Self::MAX_LINE - line.len();
                        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        cut |= chunk.len() > room;
                        let used = newline.unwrap_or(buf.len());
                        reader.consume(used);
                        if newline.is_some() {
                            keep(&line, cut);
                            (line, cut) = (Vec::with_capacity(256), false);
                        }
                    }
                    if !line.is_empty() {
                        keep(&line, cut);
                    }
                })
                .ok()
        });
        Self { lines, thread }
    }

    /// Waits (bounded) for the reader to see EOF, so the tail is complete.
    pub(super) fn finish(&mut self, deadline: Instant) {
        if let Some(t) = &self.thread {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = self.thread.take().map(|t| t.join());
            }
        }
    }

    pub(super) fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
