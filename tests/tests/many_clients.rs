//! Many clients, one worker: independent clients attached to one standalone worker are
//! serialised by the turn lock (`flock` on the shm fd), every answer goes to the client that
//! asked, and a client SIGKILLed while holding the turn does not block the others.

use std::time::{Duration, Instant};

use llama_shm::internals::client::Client;
use llama_shm_tests::{shm_entries, spawn_helper, standalone_echo, terminate, unique_prefix};

#[test]
fn four_clients_times_1000_requests_each_get_their_own_answers() {
    let prefix = unique_prefix("many");
    let worker = standalone_echo(&prefix, &[]);
    let threads: Vec<_> = (0..4)
        .map(|c| {
            let prefix = prefix.clone();
            std::thread::spawn(move || {
                let mut client = Client::builder()
                    .request_timeout(Duration::from_secs(20))
                    .attach(&prefix)
                    .unwrap();
                for i in 0..1000 {
                    let (user, system) = (format!("client {c} request {i}"), format!("c{c}"));
                    let r = client.send_request(&user, &system).unwrap();
                    assert_eq!(
                        r.text,
                        format!("{system}\n{user}"),
                        "client {c} got another's answer"
                    );
                }
                client.detach();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

/// Helper mode: attach and send one slow request, holding the turn, until killed.
#[test]
#[ignore = "helper process for a_client_killed_holding_the_turn_does_not_block_the_others"]
fn turn_holder_helper() {
    let Some(prefix) = std::env::var_os("LST_TURN_PREFIX") else {
        return;
    };
    let prefix = llama_shm::Prefix::new(prefix.to_str().unwrap()).unwrap();
    let mut c = Client::builder().attach(&prefix).unwrap();
    println!("SENDING=1");
    let _ = c.send_request("holding the turn", "");
}

#[test]
fn a_client_killed_holding_the_turn_does_not_block_the_others() {
    let prefix = unique_prefix("turn");
    let worker = standalone_echo(&prefix, &["--echo-delay-ms", "300"]);
    std::env::set_var("LST_TURN_PREFIX", prefix.as_str());
    let (mut helper, _) = spawn_helper("turn_holder_helper", "LST_TURN_HELPER", "SENDING");
    std::thread::sleep(Duration::from_millis(50)); // its request is in flight, turn held
    helper.kill().unwrap();
    helper.wait().unwrap();
    let t = Instant::now();
    let mut c = Client::builder()
        .request_timeout(Duration::from_secs(5))
        .attach(&prefix)
        .unwrap();
    let r = c.send_request("next", "s").unwrap();
    assert_eq!(r.text, "s\nnext");
    // The dead client's request finishes (~250 ms left) before ours (300 ms).
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    c.detach();
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

/// Issue 12, item 9: an attached client whose shutdown gets no turn within the bound (another
/// client's long request holds the worker) says so with a typed `NoTurn` instead of `Ok`; the
/// worker was not asked, and is still running.
#[test]
fn an_attached_shutdown_without_a_turn_is_a_typed_error() {
    let prefix = llama_shm_tests::unique_prefix("noturn");
    let worker = llama_shm_tests::standalone_echo(&prefix, &["--echo-delay-ms", "3000"]);
    let busy = {
        let prefix = prefix.clone();
        std::thread::spawn(move || {
            let mut c = Client::builder().attach(&prefix).unwrap();
            let r = c.send_request("long", "");
            c.detach();
            r.map(|r| r.text)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let late = Client::builder()
        .shutdown_timeout(Duration::from_millis(600))
        .attach(&prefix)
        .unwrap();
    let r = late.shutdown();
    assert!(
        matches!(r, Err(llama_shm::internals::client::ShutdownError::NoTurn { .. })),
        "{r:?}"
    );
    assert!(llama_shm_tests::alive(worker.id()));
    assert_eq!(busy.join().unwrap().unwrap(), "\nlong");
    assert_eq!(llama_shm_tests::terminate(worker), Some(0));
}
