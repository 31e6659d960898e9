//! Peers that misbehave on the semaphores rather than in memory (issue 12): a process that
//! posts a semaphore in a loop, and clients that die while they hold the worker's turn. The
//! promise under test: every wait ends by its deadline whatever anyone posts, and one dead
//! client never wedges a worker for the others.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llama_shm::client::{Client, Phase, RequestError};
use llama_shm::names::Prefix;
use llama_shm::os::NamedSemaphore;
use llama_shm_tests::{cli_path, shm_entries, standalone_echo, terminate, unique_prefix};

/// Posts `response_written` of `prefix` as fast as it can until dropped: a hostile peer (or
/// one that raised the semaphore's value) keeping it positive.
struct Poster {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Poster {
    fn start(prefix: &Prefix) -> Self {
        let [_, _, response_written] = prefix.sems();
        let sem = NamedSemaphore::open(&response_written, 0o600).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut posts = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // At SEM_VALUE_MAX the post fails; take one and go on posting.
                    if sem.post().is_err() {
                        let _ = sem.try_wait();
                    }
                    posts += 1;
                }
                posts
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Poster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Issue 12, item 1, through the library: against a worker that answers only after 20 s and a
/// peer that posts `response_written` in a loop, a request with a 2 s timeout fails with a
/// typed `Timeout` while waiting for the response, within the deadline + 50 ms.
#[test]
fn a_request_timeout_binds_against_a_hostile_poster() {
    let prefix = unique_prefix("hpost");
    let worker = standalone_echo(&prefix, &["--echo-delay-ms", "20000"]);
    let poster = Poster::start(&prefix);
    let timeout = Duration::from_secs(2);
    let mut client = Client::builder()
        .request_timeout(timeout)
        .attach(&prefix)
        .unwrap();
    let start = Instant::now();
    let r = client.send_request("late", "");
    let took = start.elapsed();
    drop(poster);
    eprintln!("hostile poster: request with a 2 s timeout returned after {took:?}: {r:?}");
    assert!(
        matches!(
            r,
            Err(RequestError::Timeout {
                phase: Phase::WaitingResponse,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(took < timeout + Duration::from_millis(50), "returned after {took:?}");
    client.detach();
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

/// The same through the command line, as reported: `llama-shm ask --attach P --timeout 2`
/// exits 1 with a timeout message, by the deadline (plus process start-up), instead of
/// running until the late answer and printing it.
#[test]
fn cli_ask_with_a_timeout_exits_by_it_against_a_hostile_poster() {
    let prefix = unique_prefix("hpcli");
    let worker = standalone_echo(&prefix, &["--echo-delay-ms", "20000"]);
    let poster = Poster::start(&prefix);
    let start = Instant::now();
    let out = Command::new(cli_path())
        .args(["ask", "--attach", prefix.as_str(), "--timeout", "2", "late"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    drop(poster);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("hostile poster: `llama-shm ask --timeout 2` exited after {took:?}: {stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("timed out"), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.trim().is_empty(), "printed a late answer: {stdout:?}");
    assert!(took < Duration::from_millis(2500), "exited after {took:?}");
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}
