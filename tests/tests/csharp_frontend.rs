//! The C# frontend (`frontends/csharp/`) under Mono: `SeedWireClient` P/Invokes libc exactly as
//! the seed's C# client does, on the seed's names and offsets, against a standalone worker.
//! `WireClientTest.exe` checks every echo answer byte for byte (non-ASCII, over-long prompts cut
//! at a character boundary) and then shuts the worker down through the shutdown byte.
//!
//! The library `LlamaShm.dll` (`frontends/csharp/LlamaShm/`) is compiled with its XML
//! documentation and its NUnit 2.6 suite (`frontends/csharp/LlamaShm.Tests/`) runs under
//! `nunit-console` against the echo worker.
//!
//! Needs `mcs` and `mono` (`ci/setup --extra`; the NUnit test also `nunit-console` and
//! `libnunit-framework2.6.3-cil`). Without them the tests print why and pass, unless
//! `LLAMA_SHM_REQUIRE_MONO` is set (as `ci/test` does): then they fail.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use llama_shm::internals::wire::names::Prefix;
use llama_shm_tests::{
    csharp_sources, entries_of, ffi_lib, llama_shm_dll, mcs, mcs_args, mono_available, nunit_available,
    nunit_framework, repo_root, run_bounded, shm_entries, unique_prefix, wait_or_kill, worker_path,
    ChildGuard, Ran, TempDir,
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

/// Runs `nunit-console` on `tests_dll` (in-process, so the objects its workers create are named
/// after the Mono process's pid) with the C library of `lib_dir` and `envs`; bounded by `limit`.
fn run_nunit(
    tests_dll: &Path,
    dir: &Path,
    lib_dir: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> Ran {
    let mut cmd = Command::new("nunit-console");
    cmd.current_dir(dir)
        // Mono's perf-counter area is a /dev/shm/mono.<pid> file: not wanted there.
        .env("MONO_DISABLE_SHARED_AREA", "1")
        .env("LD_LIBRARY_PATH", lib_dir)
        .env("LLAMA_SHM_WORKER", worker_path())
        .envs(envs.iter().copied())
        .arg(tests_dll)
        .args([
            "-nologo",
            "-labels",
            "-noshadow",
            "-process=Single",
            "-domain=Single",
        ])
        .arg(format!("-result={}", dir.join("TestResult.xml").display()))
        .args(extra);
    run_bounded(cmd, dir, limit)
}

/// The counts of nunit-console's summary line `Tests run: N, Errors: E, Failures: F, ...`.
fn nunit_summary(out: &str) -> (usize, usize, usize) {
    let line = out
        .lines()
        .find(|l| l.starts_with("Tests run: "))
        .unwrap_or_else(|| panic!("no `Tests run:` summary in the output:\n{out}"));
    let count = |key: &str| -> usize {
        let at = line.find(key).unwrap_or_else(|| panic!("no `{key}` in `{line}`")) + key.len();
        line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("bad `{key}` count in `{line}`"))
    };
    (count("Tests run: "), count("Errors: "), count("Failures: "))
}

/// Issue 14: the C# library `LlamaShm.dll` over the C ABI. Its NUnit suite checks, against the
/// echo worker (paced with `--echo-piece-us` where it matters): exact answers (sync and async),
/// argument checks, max tokens → `Length`, deadline → `Deadline`, strict and truncating prompt
/// policies, `AnswerTooLongException`, the request timeout as a `TimeoutException`, concurrent
/// calls; streamed pieces (several, in order, on the request's thread) that concatenate to the
/// answer through an Action, an `IProgress` and `OnStreamUpdate`; a throwing callback; a
/// `CancellationToken` mid-stream (an `OperationCanceledException` with the partial answer, soon
/// after the cancel), before the call (nothing sent) and right after it (not lost), a late cancel
/// that must not reach the next request, `Cancel()`, and the cancel-to-return time over 20 runs;
/// a callback that starts a request (refused, sync and async); the worker binary missing, a
/// worker that cannot start, a worker SIGKILLed mid-answer (`WorkerDiedException`, then
/// `ClientClosedException`), a restart policy, `Dispose` from another thread mid-answer and as a
/// request starts, `Shutdown`, a finalizer that does not wait for a busy worker, and the ABI
/// check; `LlamaShmClient.Attach` to standalone echo workers the suite starts (exact answers,
/// `Dispose` that only detaches, two clients served at once by two slots, a prefix nobody serves,
/// a full queue → `WorkerBusyException`, `Shutdown` that makes the shared worker exit); the ABI 5
/// calls (`ConversationTests`): `Chat` of three messages answered with their contents one per
/// line, a conversation over 4 KiB whole and streamed (Action, `IProgress`, `OnStreamUpdate`),
/// budget, deadline and cancel of a conversation, a schema or grammar refused by the echo engine
/// as `UnsupportedException` and nothing else (chat, stream, async, two prompts),
/// `DroppedMessages` 0, a request over the 1 MiB request area refused as
/// `RequestTooLargeException`, `Embed` (16 numbers per text, identical texts alike), `CountTokens`
/// of a text and of a conversation, and argument checks. A second run loads a stand-in library that
/// reports ABI 4 (the ABI before conversations) and requires the refusal. Nothing may be left in
/// `/dev/shm`.
#[test]
fn csharp_library_passes_its_nunit_suite_against_the_echo_worker() {
    let test = "csharp_library_passes_its_nunit_suite_against_the_echo_worker";
    if !nunit_available(test) {
        return;
    }
    let lib = ffi_lib();
    let lib_dir = lib.parent().unwrap();
    let dir = TempDir::new("csharp_nunit");
    let dll = llama_shm_dll(&dir.0);
    let doc = std::fs::read_to_string(dir.0.join("LlamaShm.xml")).expect("the XML documentation file");
    for member in [
        "T:LlamaShm.LlamaShmClient",
        "M:LlamaShm.LlamaShmClient.StreamAsync(System.String,System.String,System.IProgress{System.String}",
        "T:LlamaShm.RequestCanceledException",
        "P:LlamaShm.Response.Usage",
    ] {
        assert!(doc.contains(member), "LlamaShm.xml does not document {member}");
    }

    let sources = csharp_sources("LlamaShm.Tests");
    let tests_dll = dir.0.join("LlamaShm.Tests.dll");
    let mut args = vec![
        "-target:library".to_string(),
        format!("-out:{}", tests_dll.display()),
        format!("-r:{}", dll.display()),
        format!("-r:{}", nunit_framework().unwrap().display()),
    ];
    args.extend(sources.iter().cloned());
    mcs_args(&args);
    // How many tests the sources declare: the run must report exactly these.
    let declared: usize = sources
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(repo_root().join("frontends/csharp").join(f)).unwrap();
            text.lines()
                .filter(|l| l.trim_start().starts_with("[Test,") || l.trim() == "[Test]")
                .count()
        })
        .sum();
    assert!(declared >= 45, "only {declared} [Test] methods found");

    let ran = run_nunit(&tests_dll, &dir.0, lib_dir, &[], &[], Duration::from_secs(300));
    println!("--- nunit-console LlamaShm.Tests.dll\n{}---", ran.out);
    assert!(
        ran.status.success(),
        "the NUnit suite failed ({}):\n{}",
        ran.status,
        ran.out
    );
    assert_eq!(
        nunit_summary(&ran.out),
        (declared, 0, 0),
        "tests run, errors, failures"
    );
    let attach_tests = ran
        .out
        .lines()
        .filter(|l| l.starts_with("***** LlamaShm.Tests.AttachTests."))
        .count();
    assert_eq!(attach_tests, 5, "the AttachTests that ran:\n{}", ran.out);
    let conversation_tests = ran
        .out
        .lines()
        .filter(|l| l.starts_with("***** LlamaShm.Tests.ConversationTests."))
        .count();
    assert_eq!(
        conversation_tests, 9,
        "the ConversationTests that ran:\n{}",
        ran.out
    );
    assert!(
        ran.out.contains("cancel-to-return"),
        "the latency line is missing:\n{}",
        ran.out
    );
    let left = entries_of(ran.pid);
    assert!(left.is_empty(), "left in /dev/shm by the NUnit run: {left:?}");

    // A stand-in libllama_shm_ffi.so reporting ABI 4, the one before conversations:
    // LlamaShm.dll (ABI 5) must refuse it.
    let fake_dir = dir.0.join("abi4");
    std::fs::create_dir_all(&fake_dir).unwrap();
    let fake_c = fake_dir.join("fake.c");
    std::fs::write(
        &fake_c,
        "#include <stdint.h>\nuint32_t lshm_abi_version(void) { return 4; }\n\
         const char *lshm_version(void) { return \"0.0.0\"; }\n",
    )
    .unwrap();
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wall", "-Werror", "-o"])
        .arg(fake_dir.join("libllama_shm_ffi.so"))
        .arg(&fake_c)
        .output()
        .expect("running cc");
    assert!(cc.status.success(), "cc: {}", String::from_utf8_lossy(&cc.stderr));
    let ran = run_nunit(
        &tests_dll,
        &dir.0,
        &fake_dir,
        &["-run=LlamaShm.Tests.AbiTests"],
        &[("LLAMA_SHM_TEST_FAKE_ABI", "4")],
        Duration::from_secs(60),
    );
    println!(
        "--- nunit-console -run=LlamaShm.Tests.AbiTests (ABI 4 stand-in)\n{}---",
        ran.out
    );
    assert!(ran.status.success(), "the ABI refusal test failed:\n{}", ran.out);
    assert_eq!(nunit_summary(&ran.out), (1, 0, 0), "tests run, errors, failures");
}
