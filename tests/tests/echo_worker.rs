//! The echo-only worker binary (`llama-shm-echo-worker`): the same command line, protocol and
//! behaviour as `llama-shm-worker --engine echo`, without llama.cpp linked.

use std::time::Duration;

use llama_shm::internals::client::{Client, RequestOptions};
use llama_shm::Prompts;
use llama_shm_tests::{
    echo_worker_path, eventually, own_entries, shm_entries, unique_prefix, wait_served_by, ChildGuard,
    UnlinkOnDrop,
};

/// Spawned by a client with no arguments (the echo engine is its default), it answers, streams
/// and shuts down, leaving nothing.
#[test]
fn spawned_it_answers_streams_and_leaves_nothing() {
    let mut c = Client::builder()
        .worker(echo_worker_path())
        .startup_timeout(Duration::from_secs(20))
        .spawn()
        .unwrap();
    assert_eq!(c.send_request("U", "S").unwrap().text, "S\nU");
    let mut chunks = Vec::new();
    let r = c
        .stream(
            Prompts::user("hello").with_system("sys"),
            &RequestOptions::default(),
            |s| chunks.push(s.to_owned()),
        )
        .unwrap();
    assert_eq!(r.text, "sys\nhello");
    assert_eq!(chunks.concat(), "sys\nhello");
    c.shutdown().unwrap();
    assert!(own_entries().is_empty(), "{:?}", own_entries());
}

/// `--engine llama` is refused at start-up (exit code 3) with a message that names the binary
/// that has the model engine.
#[test]
fn a_model_is_refused_naming_the_worker_that_has_one() {
    let out = std::process::Command::new(echo_worker_path())
        .args(["--engine", "llama", "--test", "--user", "hi"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("llama-shm-echo-worker: error:") && stderr.contains("use llama-shm-worker"),
        "{stderr}"
    );
    let out = std::process::Command::new(echo_worker_path())
        .args(["--test", "--system", "S", "--user", "U"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "S\nU\n");
}

/// A standalone echo-only worker has its guardian (the same binary, re-executed): SIGKILLed,
/// its names are removed all the same.
#[test]
fn standalone_its_guardian_removes_the_names_of_a_killed_worker() {
    let prefix = unique_prefix("echobin");
    let child = ChildGuard::worker(
        std::process::Command::new(echo_worker_path())
            .args(["--prefix", prefix.as_str()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        &prefix,
    );
    assert!(wait_served_by(&prefix, child.id()), "no objects");
    let mut c = Client::builder().attach(&prefix).unwrap();
    assert_eq!(c.send_request("u", "s").unwrap().text, "s\nu");
    c.detach();
    // From here the names are the guardian's to remove; removed anyway if it fails to.
    let _cleanup = UnlinkOnDrop(prefix.clone());
    let mut worker = child.take();
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || shm_entries(&prefix).is_empty()),
        "the guardian left {:?}",
        shm_entries(&prefix)
    );
}

/// The point of the binary: it needs neither libstdc++ nor libgomp (llama.cpp's), so it loads
/// and starts in about half the time of `llama-shm-worker`.
#[test]
fn it_links_no_llama_cpp() {
    let out = std::process::Command::new("ldd")
        .arg(echo_worker_path())
        .output()
        .expect("ldd (libc-bin) runs");
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{libs}");
    assert!(libs.contains("libc.so"), "{libs}");
    for absent in ["libstdc++", "libgomp"] {
        assert!(!libs.contains(absent), "{absent} is linked:\n{libs}");
    }
}
