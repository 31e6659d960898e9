//! The C# frontend (`frontends/csharp/`) under Mono: `SeedWireClient` P/Invokes libc exactly as
//! the seed's C# client does, on the seed's names and offsets, against a standalone worker.
//! `WireClientTest.exe` checks every echo answer byte for byte (non-ASCII, over-long prompts cut
//! at a character boundary) and then shuts the worker down through the shutdown byte.
//!
//! Needs `mcs` and `mono` (`ci/setup --extra`). Without `mcs` the tests print why and pass,
//! unless `LLAMA_SHM_REQUIRE_MONO` is set (as `ci/test` does): then they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use llama_shm::names::Prefix;
use llama_shm_tests::{eventually, shm_entries, unique_prefix, worker_path, ChildGuard};

fn csharp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("frontends/csharp")
}

/// Whether the Mono tools are usable; `false` (after saying why) means skip the test.
fn mono_available(test: &str) -> bool {
    let mcs = Command::new("mcs")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mcs {
        return true;
    }
    if std::env::var_os("LLAMA_SHM_REQUIRE_MONO").is_some() {
        panic!("{test}: `mcs` (Mono C# compiler) not found but LLAMA_SHM_REQUIRE_MONO is set; run ci/setup --extra");
    }
    eprintln!("{test}: SKIPPED: `mcs` (Mono C# compiler) not found; install it with ci/setup --extra");
    false
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles `SeedWireClient.cs` and `WireClientTest.cs` into `<tmp>/WireClientTest.exe`.
fn compile(tag: &str) -> (TempDir, PathBuf) {
    let dir = TempDir(std::env::temp_dir().join(format!("lst_csharp_{tag}_{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let exe = dir.0.join("WireClientTest.exe");
    let out = Command::new("mcs")
        .current_dir(csharp_dir())
        .arg("-langversion:7")
        .arg(format!("-out:{}", exe.display()))
        .args(["SeedWireClient.cs", "WireClientTest.cs"])
        .output()
        .expect("running mcs");
    assert!(
        out.status.success(),
        "mcs failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, exe)
}

/// Starts a standalone worker on `prefix` (it creates the names; the C# client attaches),
/// runs the C# client against it with `client_args`, and checks that the client and then the
/// worker exit 0 and that no name of `prefix` is left.
fn run_against_standalone(tag: &str, worker_args: &[&str], client_args: &[&str], worker_exit: Duration) {
    let (_dir, exe) = compile(tag);
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

    let mut worker = worker.take();
    let mut status = None;
    let exited = eventually(worker_exit, || {
        status = worker.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = worker.kill();
        let _ = worker.wait();
        let _ = llama_shm::objects::unlink_prefix(&prefix);
        panic!("the worker did not exit within {worker_exit:?} of the C# client's shutdown");
    }
    let left = shm_entries(&prefix);
    let _ = llama_shm::objects::unlink_prefix(&prefix);
    assert_eq!(status.unwrap().code(), Some(0), "worker exit status");
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

#[test]
fn csharp_client_talks_to_the_echo_worker_byte_for_byte() {
    if !mono_available("csharp_client_talks_to_the_echo_worker_byte_for_byte") {
        return;
    }
    run_against_standalone("csecho", &["--engine", "echo"], &[], Duration::from_secs(5));
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

/// Compiles `LlamaCppLinuxClient.cs` (the seed's API over the C ABI) and `FfiClientTest.cs`,
/// runs `FfiClientTest.exe <worker> <client_args>` under Mono with the C library on
/// `LD_LIBRARY_PATH`, and checks that it exits 0 and that nothing of its workers is left in
/// `/dev/shm` (they are named after the Mono process's pid).
fn run_ffi_client(tag: &str, client_args: &[&str], limit: Duration) {
    let lib = llama_shm_tests::ffi_lib();
    let dir = TempDir(std::env::temp_dir().join(format!("lst_csharp_{tag}_{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let exe = dir.0.join("FfiClientTest.exe");
    let out = Command::new("mcs")
        .current_dir(csharp_dir())
        .arg("-langversion:7")
        .arg(format!("-out:{}", exe.display()))
        .args(["LlamaCppLinuxClient.cs", "FfiClientTest.cs"])
        .output()
        .expect("running mcs");
    assert!(
        out.status.success(),
        "mcs failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = dir.0.join("output.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("mono")
        .env("MONO_DISABLE_SHARED_AREA", "1")
        .env("LD_LIBRARY_PATH", lib.parent().unwrap())
        .arg(&exe)
        .arg(worker_path())
        .args(client_args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("running mono (is mono-runtime installed? ci/setup --extra)");
    let pid = child.id();
    let mut status = None;
    let finished = eventually(limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
    }
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    println!(
        "--- mono FfiClientTest.exe {}\n{output}---",
        client_args.join(" ")
    );
    assert!(finished, "FfiClientTest.exe did not finish within {limit:?}");
    assert!(status.unwrap().success(), "the C# FFI client failed:\n{output}");
    assert!(output.contains("checks passed"), "{output}");
    let left = llama_shm_tests::entries_of(pid);
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
