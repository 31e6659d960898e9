//! Streaming, cancellation, deadlines and token budgets against the real worker binary (echo
//! engine, paced with `--echo-piece-us` so it behaves like a model emitting tokens).

use std::time::{Duration, Instant};

use llama_shm::internals::client::{Client, ClientBuilder, RequestError, RequestOptions};
use llama_shm::internals::wire::status::Finish;
use llama_shm::Prompts;
use llama_shm_tests::{own_entries, worker_path};

fn echo(extra: &[&str]) -> ClientBuilder {
    Client::builder()
        .worker(worker_path())
        .args(["--engine", "echo"])
        .args(extra)
        .startup_timeout(Duration::from_secs(20))
        .request_timeout(Duration::from_secs(20))
}

/// The echo engine's answer, computed here (not by the code under test).
fn echoed(system: &str, user: &str) -> String {
    format!("{system}\n{user}")
}

#[test]
fn chunks_arrive_while_generating_and_join_to_the_answer() {
    // 2 ms before each ≤4-byte piece: ~30 pieces, ≥ 60 ms in all.
    let mut c = echo(&["--echo-piece-us", "2000"]).spawn().unwrap();
    assert!(c.supports_streaming());
    let (system, user) = ("sys", "a streamed answer, piece by piece ✓");
    let started = Instant::now();
    let mut chunks: Vec<(Duration, String)> = Vec::new();
    let r = c
        .stream(Prompts { system, user }, &RequestOptions::default(), |chunk| {
            chunks.push((started.elapsed(), chunk.to_owned()))
        })
        .unwrap();
    let total = started.elapsed();
    let joined: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(joined, echoed(system, user));
    assert_eq!(r.text, joined);
    assert_eq!(r.finish, Finish::Stop);
    assert!(chunks.len() >= 5, "only {} chunks", chunks.len());
    // The first piece came long before the answer was complete.
    let first = chunks[0].0;
    assert!(first < total / 2, "first chunk after {first:?} of {total:?}");
    eprintln!(
        "echo stream: {} chunks, first after {first:?}, complete after {total:?}",
        chunks.len()
    );
    c.shutdown().unwrap();
    assert!(own_entries().is_empty());
}

#[test]
fn answers_beyond_32k_arrive_whole_streamed_or_not_even_with_a_slow_reader() {
    // 100 000 bytes of multi-byte text: three times the response area, so the ring wraps and
    // the worker must wait for the reader.
    let system = "€".repeat(1000);
    let user = "é".repeat(1000);
    let mut c = echo(&["--echo-repeat", "20"]).spawn().unwrap();
    let full = echoed(&system, &user).repeat(20);
    assert!(full.len() > 3 * 32768);
    let r = c.send_request(&user, &system).unwrap();
    assert_eq!(r.text.len(), full.len());
    assert!(r.text == full, "request: answer differs");
    assert!(!r.truncated);
    // A reader that stalls on its first chunk: the worker waits (ring full), then goes on.
    let mut first = true;
    let mut pieces = 0;
    let r = c
        .stream(
            Prompts {
                system: &system,
                user: &user,
            },
            &RequestOptions::default(),
            |_| {
                pieces += 1;
                if first {
                    first = false;
                    std::thread::sleep(Duration::from_millis(100));
                }
            },
        )
        .unwrap();
    assert!(r.text == full, "stream: answer differs");
    assert!(pieces >= 2, "{pieces} pieces for {} bytes", full.len());
    c.shutdown().unwrap();
}

#[test]
fn cancel_from_another_thread_stops_within_a_piece_and_the_worker_is_ready_again() {
    let mut c = echo(&["--echo-piece-us", "5000"]).spawn().unwrap();
    let user = "x".repeat(2000); // 500 pieces × 5 ms: 2.5 s if nobody cancels
    let canceller = c.canceller();
    assert!(!canceller.cancel(), "nothing in flight yet");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        rx.recv().unwrap();
        let at = Instant::now();
        assert!(canceller.cancel());
        at
    });
    let mut tx = Some(tx);
    let started = Instant::now();
    let r = c
        .stream(
            Prompts {
                system: "",
                user: &user,
            },
            &RequestOptions::default(),
            |_| {
                if let Some(tx) = tx.take() {
                    tx.send(()).unwrap();
                }
            },
        )
        .unwrap();
    let ended = Instant::now();
    let cancelled_at = t.join().unwrap();
    assert_eq!(r.finish, Finish::Cancelled);
    let full = echoed("", &user);
    assert!(
        full.starts_with(&r.text) && r.text.len() < full.len() / 2,
        "{}",
        r.text.len()
    );
    let latency = ended - cancelled_at;
    eprintln!(
        "cancel latency (echo, 5 ms pieces): {latency:?}; request lasted {:?}",
        ended - started
    );
    assert!(latency < Duration::from_millis(500), "cancel took {latency:?}");
    // The worker is ready for the next request at once, and answers it whole.
    let t = Instant::now();
    let r = c.send_request("ok", "s").unwrap();
    assert_eq!(r.text, "s\nok");
    assert_eq!(r.finish, Finish::Stop);
    assert!(t.elapsed() < Duration::from_secs(1));
    c.shutdown().unwrap();
}

#[test]
fn a_deadline_ends_generation_with_the_partial_answer() {
    let mut c = echo(&["--echo-piece-us", "5000"]).spawn().unwrap();
    let user = "y".repeat(2000);
    let started = Instant::now();
    let r = c
        .request(
            Prompts {
                system: "",
                user: &user,
            },
            &RequestOptions::default().deadline(Duration::from_millis(60)),
        )
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.finish, Finish::Deadline);
    assert!(echoed("", &user).starts_with(&r.text));
    assert!(
        took < Duration::from_millis(1500),
        "deadline of 60 ms took {took:?}"
    );
    let r = c.send_request("next", "s").unwrap();
    assert_eq!((r.text.as_str(), r.finish), ("s\nnext", Finish::Stop));
    c.shutdown().unwrap();
}

#[test]
fn a_token_budget_ends_with_length() {
    let mut c = echo(&["--echo-piece-us", "1"]).spawn().unwrap();
    let r = c
        .request(
            Prompts {
                system: "",
                user: "abcdefghijklmnopqrstuvwxyz",
            },
            &RequestOptions::default().max_tokens(3),
        )
        .unwrap();
    assert_eq!(r.finish, Finish::Length);
    assert_eq!(r.usage.generated_tokens, 3);
    // Pieces are ≤ 4 bytes: "\n" is the first piece on its own, then "abcd", "efgh".
    assert_eq!(r.text, "\nabcdefgh");
    c.shutdown().unwrap();
}

#[test]
fn a_timed_out_request_is_cancelled_so_the_next_one_is_served_at_once() {
    let mut c = echo(&["--echo-piece-us", "5000"]).spawn().unwrap();
    c.set_request_timeout(Duration::from_millis(100));
    let r = c.send_request(&"z".repeat(2000), "");
    assert!(matches!(r, Err(RequestError::Timeout { .. })), "{r:?}");
    // Without the cancel the worker would go on for ~2.5 s and the next request would time
    // out waiting for `ready`.
    c.set_request_timeout(Duration::from_secs(1));
    let r = c.send_request("after", "s").unwrap();
    assert_eq!(r.text, "s\nafter");
    c.shutdown().unwrap();
}

#[test]
fn cancelling_a_seed_mode_request_is_refused() {
    let prefix = llama_shm_tests::unique_prefix("cseed");
    let worker = llama_shm_tests::standalone_echo(&prefix, &[]);
    let c = Client::builder()
        .protocol(llama_shm::internals::client::Protocol::Seed)
        .attach(&prefix)
        .unwrap();
    assert!(!c.supports_streaming());
    assert!(!c.canceller().cancel());
    c.detach();
    assert_eq!(llama_shm_tests::terminate(worker), Some(0));
}
