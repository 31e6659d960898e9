//! The full request cycle against the real worker binary (echo engine): one request, many,
//! prompts at and over the field limits with multi-byte characters at the cut, a response at
//! the 32 KiB limit, graceful shutdown — and nothing left in /dev/shm.

use std::time::Duration;

use llama_shm::internals::client::{Client, ClientBuilder, PromptField, Protocol, RequestError};
use llama_shm::internals::wire::layout::ObjectKind;
use llama_shm::internals::wire::text::{EncodeError, Policy};
use llama_shm_tests::{own_entries, worker_path};

fn echo() -> ClientBuilder {
    Client::builder()
        .worker(worker_path())
        .echo_engine()
        .startup_timeout(Duration::from_secs(20))
}

#[test]
fn one_request_round_trips_and_leaves_nothing() {
    let mut c = echo().spawn().unwrap();
    assert_eq!(c.kind(), ObjectKind::Extended);
    let pid = c.worker_pid().unwrap();
    // Names are unlinked as soon as the worker attached.
    assert!(
        own_entries().is_empty(),
        "names still visible: {:?}",
        own_entries()
    );
    let r = c.send_request("What is 2+2?", "You are terse.").unwrap();
    assert_eq!(r.text, "You are terse.\nWhat is 2+2?");
    assert!(!r.truncated && !r.system_truncated && !r.user_truncated);
    assert_eq!(r.seq, 1);
    c.shutdown().unwrap();
    assert!(
        !llama_shm_tests::alive(pid),
        "worker still running after shutdown"
    );
    assert!(own_entries().is_empty());
}

#[test]
fn hundred_consecutive_requests_each_get_their_own_answer() {
    let mut c = echo().spawn().unwrap();
    for i in 0..100u64 {
        let user = format!("request {i} ✓");
        let r = c.send_request(&user, &format!("sys {i}")).unwrap();
        assert_eq!(r.text, format!("sys {i}\n{user}"));
        assert_eq!(r.seq, i + 1);
    }
    c.shutdown().unwrap();
}

#[test]
fn prompt_of_exactly_4095_bytes_arrives_whole() {
    let mut c = echo().spawn().unwrap();
    let user = format!("{}€", "u".repeat(4092)); // 4092 + 3 = 4095 bytes
    assert_eq!(user.len(), 4095);
    let r = c.send_request(&user, "").unwrap();
    assert!(!r.user_truncated);
    assert_eq!(r.text, format!("\n{user}"));
    c.shutdown().unwrap();
}

#[test]
fn prompt_of_5000_bytes_is_cut_on_a_char_boundary_or_refused() {
    // A 3-byte char straddles byte 4095: Truncate must drop it whole.
    let user = format!("{}日本語{}", "a".repeat(4093), "b".repeat(898));
    assert_eq!(user.len(), 5000);
    let mut c = echo().spawn().unwrap();
    let r = c.send_request(&user, "S").unwrap();
    assert!(r.user_truncated && !r.system_truncated);
    let expected_user = "a".repeat(4093); // "日" (bytes 4093..4096) does not fit
    assert_eq!(r.text, format!("S\n{expected_user}"));
    c.shutdown().unwrap();

    let mut strict = echo().policy(Policy::Strict).spawn().unwrap();
    match strict.send_request(&user, "S") {
        Err(RequestError::Encode {
            field: PromptField::User,
            source: EncodeError::TooLong { len: 5000, max: 4095 },
        }) => {}
        other => panic!("expected TooLong, got {other:?}"),
    }
    // Nothing was sent: the next request works.
    assert_eq!(strict.send_request("ok", "").unwrap().text, "\nok");
    strict.shutdown().unwrap();
}

#[test]
fn interior_nul_is_cut_or_refused() {
    let mut c = echo().spawn().unwrap();
    let r = c.send_request("before\0after", "").unwrap();
    assert!(r.user_truncated);
    assert_eq!(r.text, "\nbefore");
    c.shutdown().unwrap();
    let mut strict = echo().policy(Policy::Strict).spawn().unwrap();
    assert!(matches!(
        strict.send_request("before\0after", ""),
        Err(RequestError::Encode {
            source: EncodeError::InteriorNul { at: 6 },
            ..
        })
    ));
    strict.shutdown().unwrap();
}

#[test]
fn response_at_the_32k_limit_is_cut_on_a_char_boundary_and_flagged() {
    // "€€…\n€€…" repeated until it passes 32767 bytes.
    let system = "€".repeat(1000); // 3000 bytes
    let user = "é".repeat(1000); // 2000 bytes
    let full = format!("{system}\n{user}").repeat(10);
    // A seed-mode client gets the seed's C string: cut on a char boundary.
    let prefix = llama_shm_tests::unique_prefix("cut32k");
    let worker = llama_shm_tests::standalone_echo(&prefix, &["--echo-repeat", "10"]);
    let mut c = Client::builder()
        .protocol(Protocol::Seed)
        .attach(&prefix)
        .unwrap();
    let r = c.send_request(&user, &system).unwrap();
    assert!(
        r.text.len() <= 32767 && r.text.len() > 32767 - 4,
        "{}",
        r.text.len()
    );
    assert!(full.starts_with(&r.text));
    c.detach();
    assert_eq!(llama_shm_tests::terminate(worker), Some(0));
    // An extended client gets all of it through the ring, not flagged.
    let mut c = echo().arg("--echo-repeat").arg("10").spawn().unwrap();
    let r = c.send_request(&user, &system).unwrap();
    assert!(!r.truncated);
    assert_eq!(r.text.len(), full.len());
    assert!(r.text == full, "extended answer differs from the echo");
    c.shutdown().unwrap();

    // Exactly at the limit is not truncated.
    let mut c = echo().spawn().unwrap();
    let user = "x".repeat(4095);
    let r = c.send_request(&user, "").unwrap();
    assert!(!r.truncated);
    c.shutdown().unwrap();
}

#[test]
fn empty_and_whitespace_prompts_are_answered() {
    let mut c = echo().spawn().unwrap();
    assert_eq!(c.send_request("", "").unwrap().text, "\n");
    assert_eq!(c.send_request("  \t ", " ").unwrap().text, " \n  \t ");
    c.shutdown().unwrap();
}

#[test]
fn drop_shuts_the_worker_down_and_leaves_nothing() {
    let c = echo().spawn().unwrap();
    let pid = c.worker_pid().unwrap();
    drop(c); // Drop shuts down like shutdown() does.
    assert!(!llama_shm_tests::alive(pid));
    assert!(own_entries().is_empty());
}

#[test]
fn worker_binary_errors_are_typed() {
    use llama_shm::internals::client::SpawnError;
    match Client::builder().worker("/nonexistent/llama-shm-worker").spawn() {
        Err(SpawnError::WorkerNotFound { path }) => {
            assert_eq!(path.to_str(), Some("/nonexistent/llama-shm-worker"))
        }
        other => panic!("expected WorkerNotFound, got {other:?}"),
    }
    let dir = std::env::temp_dir().join(format!("lst_noexec_{}", std::process::id()));
    std::fs::write(&dir, "#!/bin/sh\n").unwrap();
    match Client::builder().worker(&dir).spawn() {
        Err(SpawnError::NotExecutable { .. }) => {}
        other => panic!("expected NotExecutable, got {other:?}"),
    }
    std::fs::remove_file(&dir).unwrap();
    // A worker that exits at once: its status and stderr are reported.
    match Client::builder()
        .worker(worker_path())
        .arg("--no-such-flag")
        .spawn()
    {
        Err(SpawnError::WorkerExited { exit, stderr, .. }) => {
            assert_eq!(exit, llama_shm::internals::os::process::ExitInfo::Exited(2));
            assert!(stderr.iter().any(|l| l.contains("--no-such-flag")), "{stderr:?}");
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    assert!(own_entries().is_empty(), "{:?}", own_entries());
}

#[test]
fn echo_test_mode_prints_system_newline_user() {
    let out = std::process::Command::new(worker_path())
        .args(["--engine", "echo", "--test", "--system", "S", "--user", "U"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "S\nU\n");
}
