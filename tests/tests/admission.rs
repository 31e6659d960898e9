//! The admission queue of a shared worker: when every slot is busy, clients wait first come
//! first served, at most `--max-queue` of them; one more gets a typed "busy" error at once. A
//! waiter that dies or gives up does not hold up those behind it. `llama-shm status` shows the
//! slots and the queue.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use llama_shm::internals::client::{Client, Phase, RequestError};
use llama_shm::internals::objects::status::status;
use llama_shm::internals::wire::names::Prefix;
use llama_shm::{Prompts, RequestOptions};
use llama_shm_tests::{
    cli_path, eventually, shm_entries, spawn_helper, standalone_echo, terminate, unique_prefix,
};

const T: Duration = Duration::from_secs(30);

/// Clients waiting in the queue of the worker on `prefix`, as its page says.
fn waiting(prefix: &Prefix) -> Option<u32> {
    status(prefix).and_then(|s| s.queue).map(|(w, _)| w)
}

/// A client that streams a `bytes`-long answer on the worker's one slot (holding it for
/// `bytes / 4` pieces): returns once the answer has begun.
fn hold_the_slot(prefix: &Prefix, bytes: usize) -> JoinHandle<String> {
    let (tx, rx) = mpsc::channel();
    let prefix = prefix.clone();
    let holder = std::thread::spawn(move || {
        let mut c = Client::builder().request_timeout(T).attach(&prefix).unwrap();
        let mut told = false;
        let r = c
            .stream(
                Prompts::user(&"a".repeat(bytes)).with_system("holder"),
                &RequestOptions::default(),
                |_| {
                    if !told {
                        let _ = tx.send(());
                        told = true;
                    }
                },
            )
            .unwrap();
        c.detach();
        r.text
    });
    rx.recv_timeout(T).expect("the holder's answer did not begin");
    holder
}

/// A client that sends one short request and says when its answer came.
fn queued_client(prefix: &Prefix, tag: &'static str) -> JoinHandle<(String, Instant)> {
    let prefix = prefix.clone();
    std::thread::spawn(move || {
        let mut c = Client::builder().request_timeout(T).attach(&prefix).unwrap();
        let r = c.send_request(tag, tag).unwrap();
        let at = Instant::now();
        c.detach();
        (r.text, at)
    })
}

/// One slot (a standalone worker without `--parallel`), a queue of two: the third client to find the slot busy is told at once that the
/// worker is busy (nothing sent), the two waiting ones are served in the order they came, and
/// `llama-shm status` shows the busy slot and the queue's depth meanwhile.
#[test]
fn a_full_queue_is_a_typed_busy_error_and_waiters_are_served_in_order() {
    let prefix = unique_prefix("queue");
    let worker = standalone_echo(&prefix, &["--echo-piece-us", "4000", "--max-queue", "2"]);
    assert_eq!(waiting(&prefix), Some(0));
    // 1200 bytes in pieces of 4 at 4 ms: 1.2 s on the slot.
    let holder = hold_the_slot(&prefix, 1200);
    let first = queued_client(&prefix, "first");
    assert!(
        eventually(T, || waiting(&prefix) == Some(1)),
        "{:?}",
        status(&prefix)
    );
    let second = queued_client(&prefix, "second");
    assert!(
        eventually(T, || waiting(&prefix) == Some(2)),
        "{:?}",
        status(&prefix)
    );

    let mut late = Client::builder().request_timeout(T).attach(&prefix).unwrap();
    let t = Instant::now();
    match late.send_request("late", "late") {
        Err(RequestError::Busy { waiting: 2, max: 2 }) => {}
        other => panic!("expected Busy {{ waiting: 2, max: 2 }}, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "busy took {:?}",
        t.elapsed()
    );

    let out = std::process::Command::new(cli_path())
        .args(["status", "--json", "--prefix", prefix.as_str()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["queue"]["waiting"], 2, "{v}");
    assert_eq!(v["queue"]["max"], 2, "{v}");
    assert_eq!(v["slots"][0]["state"], "busy", "{v}");

    assert_eq!(holder.join().unwrap(), format!("holder\n{}", "a".repeat(1200)));
    let (a, a_at) = first.join().unwrap();
    let (b, b_at) = second.join().unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("first\nfirst", "second\nsecond"));
    assert!(a_at < b_at, "the second waiter was served before the first");
    assert_eq!(waiting(&prefix), Some(0));
    // The busy client stays usable: now there is room.
    assert_eq!(late.send_request("late", "late").unwrap().text, "late\nlate");
    let s = status(&prefix).unwrap();
    assert_eq!((s.slots[0].busy, s.slots[0].served), (false, 4), "{s:?}");
    late.detach();
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty(), "names left");
}

/// Helper mode: attach to the worker and send one request (it waits in the queue until killed).
#[test]
#[ignore = "helper process for a_waiter_killed_in_the_queue_does_not_hold_up_those_behind_it"]
fn queue_waiter_helper() {
    let Some(prefix) = std::env::var_os("LST_QUEUE_PREFIX") else {
        return;
    };
    let prefix = Prefix::new(prefix.to_str().unwrap()).unwrap();
    let mut c = Client::builder().request_timeout(T).attach(&prefix).unwrap();
    println!("ATTACHED=1");
    let _ = c.send_request("helper", "helper");
}

/// The first waiter is SIGKILLed in the queue: the one behind it skips its ticket and gets
/// the slot as soon as the holder's answer ends; and a waiter whose deadline passes leaves
/// the queue (a `Timeout` while waiting for its turn) without holding anyone up either.
#[test]
fn a_waiter_killed_in_the_queue_does_not_hold_up_those_behind_it() {
    let prefix = unique_prefix("qkill");
    let worker = standalone_echo(&prefix, &["--echo-piece-us", "4000"]);
    let holder = hold_the_slot(&prefix, 1200);
    std::env::set_var("LST_QUEUE_PREFIX", prefix.as_str());
    let (mut helper, _) = spawn_helper("queue_waiter_helper", "LST_QUEUE_HELPER", "ATTACHED");
    assert!(
        eventually(T, || waiting(&prefix) == Some(1)),
        "{:?}",
        status(&prefix)
    );
    // A waiter that gives up before its turn.
    let mut quitter = Client::builder()
        .request_timeout(Duration::from_millis(200))
        .attach(&prefix)
        .unwrap();
    match quitter.send_request("quit", "quit") {
        Err(RequestError::Timeout {
            phase: Phase::WaitingTurn,
            ..
        }) => {}
        other => panic!("expected a timeout waiting for the turn, got {other:?}"),
    }
    assert_eq!(waiting(&prefix), Some(1), "the quitter kept its place");
    let behind = queued_client(&prefix, "behind");
    assert!(
        eventually(T, || waiting(&prefix) == Some(2)),
        "{:?}",
        status(&prefix)
    );
    helper.kill().unwrap();
    helper.wait().unwrap();
    let text = holder.join().unwrap();
    let ended = Instant::now();
    assert_eq!(text, format!("holder\n{}", "a".repeat(1200)));
    let (b, b_at) = behind.join().unwrap();
    assert_eq!(b, "behind\nbehind");
    // Its turn came at once (one poll of the queue and one short answer), not at a deadline.
    assert!(
        b_at.duration_since(ended) < Duration::from_secs(2),
        "{:?}",
        b_at.duration_since(ended)
    );
    assert_eq!(waiting(&prefix), Some(0));
    quitter.detach();
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty(), "names left");
}

/// With room for one waiter, that waiter is SIGKILLed and nobody waits behind it: once the
/// slot is free the next client is served, not told the dead client's place is taken.
#[test]
fn a_queue_whose_only_waiter_died_is_empty_to_the_next_client() {
    let prefix = unique_prefix("qdead");
    let worker = standalone_echo(&prefix, &["--echo-piece-us", "4000", "--max-queue", "1"]);
    let holder = hold_the_slot(&prefix, 800);
    std::env::set_var("LST_QUEUE_PREFIX", prefix.as_str());
    let (mut helper, _) = spawn_helper("queue_waiter_helper", "LST_QUEUE_HELPER", "ATTACHED");
    assert!(
        eventually(T, || waiting(&prefix) == Some(1)),
        "{:?}",
        status(&prefix)
    );
    helper.kill().unwrap();
    helper.wait().unwrap();
    holder.join().unwrap();
    let mut next = Client::builder().request_timeout(T).attach(&prefix).unwrap();
    assert_eq!(next.send_request("next", "next").unwrap().text, "next\nnext");
    assert_eq!(waiting(&prefix), Some(0));
    next.detach();
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty(), "names left");
}

/// The first waiter is stopped (SIGSTOP: alive, but not polling): once the slot is free the
/// client behind it goes ahead within a fraction of a second instead of waiting for its
/// deadline; the stopped one, continued, is served after.
#[test]
fn a_stopped_waiter_at_the_head_does_not_hold_up_those_behind_it() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let prefix = unique_prefix("qstop");
    let worker = standalone_echo(&prefix, &["--echo-piece-us", "4000"]);
    let holder = hold_the_slot(&prefix, 800);
    std::env::set_var("LST_QUEUE_PREFIX", prefix.as_str());
    let (mut helper, _) = spawn_helper("queue_waiter_helper", "LST_QUEUE_HELPER", "ATTACHED");
    assert!(
        eventually(T, || waiting(&prefix) == Some(1)),
        "{:?}",
        status(&prefix)
    );
    let pid = Pid::from_raw(helper.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let behind = queued_client(&prefix, "behind");
    assert!(
        eventually(T, || waiting(&prefix) == Some(2)),
        "{:?}",
        status(&prefix)
    );
    holder.join().unwrap();
    let ended = Instant::now();
    let (b, at) = behind.join().unwrap();
    assert_eq!(b, "behind\nbehind");
    assert!(
        at.duration_since(ended) < Duration::from_secs(3),
        "waited {:?} behind a stopped head",
        at.duration_since(ended)
    );
    kill(pid, Signal::SIGCONT).unwrap();
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty(), "names left");
}
