//! The auth token and the names: a worker with a token refuses requests without it; stale
//! objects of a SIGKILLed worker are cleaned on the next start; live ones are refused; a
//! squatted name (mode 0666) is not used.

use std::process::Command;
use std::time::Duration;

use llama_shm::internals::client::{Client, RequestError, ShutdownError};
use llama_shm::internals::wire::status::StatusCode;
use llama_shm_tests::seed::SeedPeer;
use llama_shm_tests::{shm_entries, standalone_echo, terminate, unique_prefix, worker_path};

const T: Duration = Duration::from_secs(10);

#[test]
fn a_worker_with_a_token_refuses_requests_without_it() {
    let prefix = unique_prefix("auth");
    let token = [0x5au8; 32];
    let file = std::env::temp_dir().join(format!("{prefix}.token"));
    std::fs::write(
        &file,
        token.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    )
    .unwrap();
    let worker = standalone_echo(&prefix, &["--token-file", file.to_str().unwrap()]);

    let mut wrong = Client::builder()
        .request_timeout(T)
        .token([1; 32])
        .attach(&prefix)
        .unwrap();
    match wrong.send_request("let me in", "") {
        Err(RequestError::Unauthorized { message }) => assert!(message.contains("token"), "{message}"),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    wrong.detach();
    let mut none = Client::builder().request_timeout(T).attach(&prefix).unwrap();
    assert!(matches!(
        none.send_request("x", ""),
        Err(RequestError::Unauthorized { .. })
    ));
    none.detach();
    // A seed-style client cannot present a token: it gets the seed's empty answer.
    let peer = SeedPeer::open(prefix.as_str()).unwrap();
    assert_eq!(peer.request("x", "y", T).as_deref(), Some(""));
    drop(peer);

    let mut right = Client::builder()
        .request_timeout(T)
        .token(token)
        .attach(&prefix)
        .unwrap();
    assert_eq!(right.send_request("hello", "s").unwrap().text, "s\nhello");
    // A shutdown without the token is refused: the worker keeps serving.
    let none = Client::builder()
        .request_timeout(T)
        .shutdown_timeout(std::time::Duration::from_millis(1000))
        .attach(&prefix)
        .unwrap();
    // Issue 12, item 9: and says so, typed (it returned Ok before).
    let refused = none.shutdown();
    assert!(
        matches!(
            refused,
            Err(ShutdownError::Refused {
                status: StatusCode::Unauthorized,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(
        llama_shm_tests::alive(worker.id()),
        "a shutdown without the token stopped the worker"
    );
    assert_eq!(right.send_request("still", "s").unwrap().text, "s\nstill");
    // With the token the worker exits 0 and removes its names.
    right.shutdown().unwrap();
    let mut worker = worker.take();
    assert_eq!(worker.wait().unwrap().code(), Some(0));
    std::fs::remove_file(&file).unwrap();
    assert!(shm_entries(&prefix).is_empty());
}

#[test]
fn stale_objects_of_a_killed_worker_are_removed_on_the_next_start() {
    let prefix = unique_prefix("stale");
    let _cleanup = llama_shm_tests::UnlinkOnDrop(prefix.clone());
    // The worker and its guardian both SIGKILLed (as by the OOM killer): the names stay.
    llama_shm_tests::kill_with_guardian(standalone_echo(&prefix, &[]), &prefix);
    assert_eq!(
        shm_entries(&prefix).len(),
        llama_shm_tests::STANDALONE_NAMES,
        "SIGKILL of worker and guardian leaves the names (that is the point)"
    );
    let second = standalone_echo(&prefix, &[]);
    let mut c = Client::builder().request_timeout(T).attach(&prefix).unwrap();
    assert_eq!(c.send_request("after", "crash").unwrap().text, "crash\nafter");
    c.detach();
    assert_eq!(terminate(second), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

#[test]
fn a_live_owner_is_refused_with_its_pid() {
    let prefix = unique_prefix("live");
    let first = standalone_echo(&prefix, &[]);
    let out = Command::new(worker_path())
        .args(["--engine", "echo", "--prefix", prefix.as_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("in use by pid {}", first.id())), "{err}");
    assert_eq!(terminate(first), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

#[test]
fn a_squatted_world_writable_object_is_not_used() {
    let prefix = unique_prefix("squat");
    // A squatter creates the seed-size object with mode 0666 and keeps it mapped.
    let squatter = SeedPeer::create(prefix.as_str());
    std::fs::set_permissions(
        format!("/dev/shm/{prefix}_shared_mem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    match Client::builder().attach(&prefix) {
        Err(e) => assert!(e.to_string().contains("mode 0666"), "{e}"),
        Ok(_) => panic!("attached to a 0666 object"),
    }
    // A worker asked to serve this prefix refuses: the squatter is alive.
    let out = Command::new(worker_path())
        .args(["--engine", "echo", "--prefix", prefix.as_str()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(squatter);
    assert!(shm_entries(&prefix).is_empty());
}
