//! The C# frontend (`frontends/csharp/`) under Mono: `SeedWireClient` P/Invokes libc exactly as
//! the seed's C# client does, on the seed's names and offsets, against a standalone worker.
//! `WireClientTest.exe` checks every echo answer byte for byte (non-ASCII, over-long prompts cut
//! at a character boundary) and then shuts the worker down through the shutdown byte.
//!
//! Needs `mcs` and `mono` (`ci/setup --extra`). Without `mcs` the tests print why and pass,
//! unless `LLAMA_SHM_REQUIRE_MONO` is set (as `ci/test` does): then they fail.

use std::process::{Command, Stdio};
use std::time::Duration;

use llama_shm::internals::wire::names::Prefix;
use llama_shm_tests::{
    entries_of, ffi_lib, mcs, mono_available, run_bounded, shm_entries, unique_prefix, wait_or_kill,
    worker_path, ChildGuard, TempDir,
};

/// Compiles `SeedWireClient.cs` and `WireClientTest.cs` (with `TestChecks.cs`) into
/// `WireClientTest.exe`, starts a standalone worker on `prefix` (it creates the names; the C#
/// client attaches), runs the C# client against it with `client_args`, and checks that the
/// client and then the worker exit 0 and that no name of `prefix` is left.
fn run_against_standalone(tag: &str, worker_args: &[&str], client_args: &[&str], worker_exit: Duration) {
    let dir = TempDir::new(&format!("csharp_{tag}"));
    let exe = mcs(
        &dir.0,
        &["TestChecks.cs", "SeedWireClient.cs", "WireClientTest.cs"],
        "WireClientTest.exe",
    );
    let prefix: Prefix = unique_prefix(tag);
    // No waiting for the objects here: the client retries opening them until its deadline.
    let worker = ChildGuard::worker(
        Command::new(worker_path())
            .args(worker_args)
            .args(["--prefix", prefix.as_str()])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
        &prefix,
    );
    let out = Command::new("mono")
        // Mono's perf-counter area is a /dev/shm/mono.<pid> file: not wanted there.
        .env("MONO_DISABLE_SHARED_AREA", "1")
        .arg(&exe)
        .arg(prefix.as_str())
        .args(client_args)
        .output()
        .expect("running mono (is mono-runtime installed? ci/setup --extra)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "--- mono WireClientTest.exe {} {}\n{stdout}{stderr}---",
        prefix,
        client_args.join(" ")
    );
    assert!(
        out.status.success(),
        "the C# client failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(stdout.contains("shutdown requested"), "{stdout}");

    let Some(status) = wait_or_kill(&mut worker.take(), worker_exit) else {
        let _ = llama_shm::internals::objects::unlink_prefix(&prefix);
        panic!("the worker did not exit within {worker_exit:?} of the C# client's shutdown");
    };
    let left = shm_entries(&prefix);
    let _ = llama_shm::internals::objects::unlink_prefix(&prefix);
    assert_eq!(status.code(), Some(0), "worker exit status");
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

#[test]
fn csharp_client_talks_to_the_echo_worker_byte_for_byte() {
    if !mono_available("csharp_client_talks_to_the_echo_worker_byte_for_byte") {
        return;
    }
    run_against_standalone("csecho", &["--engine", "echo"], &[], Duration::from_secs(5));
}

/// Issue 12, item 7: after a request that timed out (the worker answers after 1.5 s, the
/// client waits 375 ms), the seed-mode wire client is closed: the next request throws the
/// closed error and never returns the late answer; a fresh client gets its own answer.
#[test]
fn csharp_wire_client_is_closed_after_a_timeout_and_never_returns_the_old_answer() {
    if !mono_available("csharp_wire_client_is_closed_after_a_timeout_and_never_returns_the_old_answer") {
        return;
    }
    run_against_standalone(
        "csslow",
        &["--engine", "echo", "--echo-delay-ms", "1500"],
        &["--slow-worker", "1500"],
        Duration::from_secs(5),
    );
}

/// Issue 12, item 7: the wire client checks owner and mode of what it opens: objects of mode
/// 0666 are refused under the default trust (0600) and served once the trust is widened.
#[test]
fn csharp_wire_client_refuses_objects_wider_than_it_trusts() {
    if !mono_available("csharp_wire_client_refuses_objects_wider_than_it_trusts") {
        return;
    }
    run_against_standalone(
        "cswide",
        &[
            "--engine",
            "echo",
            "--mode",
            "666",
            "--others-may-crash-this-worker",
        ],
        &["--wide-mode", "666"],
        Duration::from_secs(5),
    );
}

#[test]
fn csharp_client_gets_an_answer_from_the_default_model() {
    if !mono_available("csharp_client_gets_an_answer_from_the_default_model") {
        return;
    }
    run_against_standalone(
        "csllm",
        &["--engine", "llama", "--greedy", "--max-tokens", "64"],
        &["--llm", "--timeout", "120"],
        Duration::from_secs(10),
    );
}

/// Compiles `LlamaCppLinuxClient.cs` (the seed's API over the C ABI) and `FfiClientTest.cs` (with
/// `TestChecks.cs`), runs `FfiClientTest.exe <worker> <client_args>` under Mono with the C
/// library on `LD_LIBRARY_PATH`, and checks that it exits 0 and that nothing of its workers is
/// left in `/dev/shm` (they are named after the Mono process's pid).
fn run_ffi_client(tag: &str, client_args: &[&str], limit: Duration) {
    let lib = ffi_lib();
    let dir = TempDir::new(&format!("csharp_{tag}"));
    let exe = mcs(
        &dir.0,
        &["TestChecks.cs", "LlamaCppLinuxClient.cs", "FfiClientTest.cs"],
        "FfiClientTest.exe",
    );
    let mut cmd = Command::new("mono");
    cmd.env("MONO_DISABLE_SHARED_AREA", "1")
        .env("LD_LIBRARY_PATH", lib.parent().unwrap())
        .arg(&exe)
        .arg(worker_path())
        .args(client_args);
    let ran = run_bounded(cmd, &dir.0, limit);
    println!(
        "--- mono FfiClientTest.exe {}\n{}---",
        client_args.join(" "),
        ran.out
    );
    assert!(ran.status.success(), "the C# FFI client failed:\n{}", ran.out);
    assert!(ran.out.contains("checks passed"), "{}", ran.out);
    let left = entries_of(ran.pid);
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

#[test]
fn csharp_ffi_client_gets_exact_echo_answers() {
    if !mono_available("csharp_ffi_client_gets_exact_echo_answers") {
        return;
    }
    run_ffi_client("csffi", &[], Duration::from_secs(60));
}

#[test]
fn csharp_ffi_client_gets_paris_from_the_default_model() {
    if !mono_available("csharp_ffi_client_gets_paris_from_the_default_model") {
        return;
    }
    run_ffi_client("csffillm", &["--llm"], Duration::from_secs(180));
}
