//! Objects of another user (run as `nobody` with setpriv, since CI runs as root) are never
//! used; bad input written by a raw client gets a typed error or a repaired, flagged request;
//! a worker under a memory limit too small for the model fails start-up with a clear error.
//! After each fault the next valid request succeeds.

use std::process::{Command, Stdio};
use std::time::Duration;

use llama_shm::internals::client::{Client, SpawnError};
use llama_shm::internals::objects::ObjectsError;
use llama_shm::internals::os::shm::ShmError;
use llama_shm_tests::seed::{SeedPeer, SHUTDOWN_OFF};
use llama_shm_tests::{
    eventually, own_entries, shm_entries, standalone_echo, terminate, unique_prefix, worker_path, ChildGuard,
};

const T: Duration = Duration::from_secs(10);

/// `program` to be run as `nobody` (with setpriv; see [`as_nobody`]).
fn nobody_runs(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(program);
    cmd
}

fn as_nobody() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("setpriv")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn objects_of_another_user_are_refused_and_never_adopted() {
    if !as_nobody() {
        eprintln!("skipped: needs root and setpriv to act as another user");
        return;
    }
    // The worker binary must be reachable by `nobody`.
    let bin = std::env::temp_dir().join(format!("lst-worker-{}", std::process::id()));
    std::fs::copy(worker_path(), &bin).unwrap();
    let prefix = unique_prefix("other");
    let theirs = ChildGuard::new(
        nobody_runs(&bin)
            .args(["--engine", "echo", "--prefix", prefix.as_str()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        eventually(T, || shm_entries(&prefix).len()
            == llama_shm_tests::STANDALONE_NAMES),
        "nobody's worker did not start"
    );
    // Attach refuses: owner is not us.
    match Client::builder().attach(&prefix) {
        Err(ObjectsError::Shm(ShmError::WrongOwner {
            owner: 65534, me: 0, ..
        })) => {}
        other => panic!("expected WrongOwner, got {other:?}"),
    }
    // Our worker refuses to serve the prefix while their worker lives.
    let out = Command::new(worker_path())
        .args(["--engine", "echo", "--prefix", prefix.as_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by pid"),
        "{out:?}"
    );
    // SIGKILL of their worker and its guardian: their names stay behind, stale.
    let _cleanup = llama_shm_tests::UnlinkOnDrop(prefix.clone());
    llama_shm_tests::kill_with_guardian(theirs, &prefix);
    assert_eq!(shm_entries(&prefix).len(), llama_shm_tests::STANDALONE_NAMES);
    // A new worker of ours removes the stale set (root may) and creates its own, O_EXCL.
    let ours = standalone_echo(&prefix, &[]);
    let meta = std::fs::metadata(format!("/dev/shm/{prefix}_shared_mem")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    let mut c = Client::builder().request_timeout(T).attach(&prefix).unwrap();
    assert_eq!(c.send_request("mine", "now").unwrap().text, "now\nmine");
    c.shutdown().unwrap();
    drop(ours);
    std::fs::remove_file(&bin).unwrap();
    assert!(eventually(T, || shm_entries(&prefix).is_empty()));
}

#[test]
fn raw_client_bad_input_gets_typed_errors_and_the_next_request_succeeds() {
    let prefix = unique_prefix("badin");
    let worker = standalone_echo(&prefix, &[]);
    let raw = SeedPeer::open(prefix.as_str()).unwrap();
    // Invalid UTF-8 in the middle and a cut multi-byte char at the end: repaired, not echoed raw.
    raw.request("placeholder", "", T).unwrap();
    let answer = {
        let mut field = vec![0u8; 4096];
        field[..8].copy_from_slice(b"ab\xffcd\xe6\x97\x00");
        // Write by hand (the helper's write_prompt would write valid UTF-8).
        raw.request_with_fields(&[0u8; 4096], &field, T).unwrap()
    };
    assert_eq!(answer, "\nab\u{fffd}cd");
    // Shutdown byte values other than 0 and 1 are refused (the seed client sees an empty
    // answer); the worker keeps serving.
    for bad in [2u8, 0x80, 0xff] {
        assert_eq!(raw.request_with_shutdown_byte("x", bad, T).as_deref(), Some(""));
        assert_eq!(
            raw.read_at(SHUTDOWN_OFF, 1),
            vec![0],
            "the worker resets the bad flag"
        );
    }
    assert_eq!(raw.request("fine", "s", T).as_deref(), Some("s\nfine"));
    // An extended client on the same worker is served normally afterwards.
    let mut c = Client::builder().request_timeout(T).attach(&prefix).unwrap();
    assert_eq!(c.send_request("ok", "").unwrap().text, "\nok");
    c.detach();
    drop(raw);
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

#[test]
fn worker_under_a_memory_limit_too_small_for_the_model_fails_startup_clearly() {
    // 64 MiB of address space cannot hold the 98 MB model (plus llama.cpp and the runtime).
    let r = Client::builder()
        .worker("prlimit")
        .args(["--as=67108864", "--"])
        .arg(worker_path())
        .args(["--engine", "llama"])
        .startup_timeout(Duration::from_secs(30))
        .spawn();
    match r {
        Err(SpawnError::WorkerExited {
            exit,
            message,
            stderr,
        }) => {
            let all = format!("{exit} {message:?} {stderr:?}");
            assert!(
                all.contains("memory") || all.contains("alloc") || all.contains("model"),
                "{all}"
            );
            eprintln!("out-of-memory start-up error: {all}");
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    assert!(own_entries().is_empty(), "{:?}", own_entries());
    // The same worker without the limit starts and answers.
    let mut c = Client::builder()
        .worker(worker_path())
        .args(["--engine", "llama", "--greedy", "--max-tokens", "8"])
        .spawn()
        .unwrap();
    assert!(!c.send_request("Hi", "").unwrap().text.is_empty());
    c.shutdown().unwrap();
}

/// Issue 12, item 6: a mode that lets other users write the objects is refused unless the
/// caller accepts, in so many words, that they may crash the worker — by the worker (exit 2,
/// the reason named), by a spawning client and by an attaching client (typed errors).
#[test]
fn a_mode_other_users_can_write_is_refused_unless_accepted() {
    let prefix = unique_prefix("wide");
    let out = Command::new(worker_path())
        .args(["--engine", "echo", "--mode", "666", "--prefix", prefix.as_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--others-may-crash-this-worker"), "{stderr}");
    assert!(shm_entries(&prefix).is_empty());
    let spawned = Client::builder()
        .worker(worker_path())
        .arg("--engine")
        .arg("echo")
        .permissions(0o660)
        .spawn();
    assert!(
        matches!(
            spawned,
            Err(SpawnError::Objects(ObjectsError::WritableByOthers {
                mode: 0o660
            }))
        ),
        "{spawned:?}"
    );
    let attached = Client::builder().accept_permissions(0o666).attach(&prefix);
    assert!(
        matches!(attached, Err(ObjectsError::WritableByOthers { mode: 0o666 })),
        "{attached:?}"
    );
    // Accepted: the spawned worker serves with the wide mode.
    let mut c = Client::builder()
        .worker(worker_path())
        .args(["--engine", "echo"])
        .permissions(0o666)
        .others_may_crash_this_client(true)
        .spawn()
        .unwrap();
    assert_eq!(c.send_request("u", "s").unwrap().text, "s\nu");
    c.shutdown().unwrap();
}

/// What another user can do to a standalone worker in each mode, as SECURITY.md states it:
/// 0600 — not even open its objects; 0644 — read them, but neither shrink them nor post its
/// semaphores, so the worker survives; 0666 (accepted with --others-may-crash-this-worker) —
/// shrink the object and post `prompts_written`, which kills the worker with SIGBUS.
#[test]
fn what_another_user_can_do_in_each_mode() {
    if !as_nobody() {
        eprintln!("skipped: needs root and setpriv to act as another user");
        return;
    }
    let nobody = |script: &str| {
        nobody_runs("/usr/bin/python3")
            .args(["-c", script])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    for (mode, crashes) in [("600", false), ("644", false), ("666", true)] {
        let prefix = unique_prefix("mode");
        let worker = standalone_echo(&prefix, &["--mode", mode, "--others-may-crash-this-worker"]);
        let shm = format!("/dev/shm/{prefix}_shared_mem");
        let sem = format!("/{prefix}_sem_prompts_written");
        let truncated = nobody(&format!("import os; os.truncate('{shm}', 0)"));
        let posted = nobody(&format!(
            "import ctypes; l = ctypes.CDLL(None); l.sem_open.restype = ctypes.c_void_p; \
             s = l.sem_open(b'{sem}', 0); assert s not in (None, 0xffffffffffffffff) and s != 0; \
             assert l.sem_post(ctypes.c_void_p(s)) == 0"
        ));
        assert_eq!((truncated, posted), (crashes, crashes), "mode {mode}");
        std::thread::sleep(Duration::from_millis(300));
        let mut child = worker.take();
        let status = child.try_wait().unwrap();
        let _ = llama_shm::internals::objects::unlink_prefix(&prefix);
        if crashes {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.and_then(|s| s.signal()),
                Some(libc::SIGBUS),
                "mode {mode}: {status:?}"
            );
        } else {
            assert!(status.is_none(), "mode {mode}: the worker died: {status:?}");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            assert_eq!(child.wait().unwrap().code(), Some(0));
        }
    }
}

/// Issue 12, item 9: `llama-shm ls` and a worker's reclaim read other users' objects (the
/// creator and guardian pids of a stale set) with `pread`, never a mapping: a squatter (another
/// user) that toggles its object's size between full and zero as fast as it can cannot make
/// them fault (a mapping read past a shrunk end is SIGBUS; a `pread` is a short read).
#[test]
fn a_squatter_toggling_its_size_cannot_fault_ls_or_reclaim() {
    if !as_nobody() {
        eprintln!("skipped: needs root and setpriv to act as another user");
        return;
    }
    let prefix = unique_prefix("toggle");
    let path = format!("/dev/shm/{prefix}_shared_mem");
    let script = format!(
        "import os, time\n\
         p = '{path}'\n\
         page = bytearray(49152); page[45056:45064] = b'LLSHMEXT'\n\
         with open(p, 'wb') as f: f.write(page)\n\
         os.chmod(p, 0o644)\n\
         end = time.time() + 3\n\
         fd = os.open(p, os.O_RDWR)\n\
         while time.time() < end:\n\
         \x20   os.ftruncate(fd, 0); os.ftruncate(fd, 49152); os.pwrite(fd, b'LLSHMEXT', 45056)\n\
         os.unlink(p)\n"
    );
    let mut squatter = nobody_runs("/usr/bin/python3")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    assert!(eventually(T, || std::path::Path::new(&path).exists()));
    let start = std::time::Instant::now();
    let (mut checks, mut listings) = (0u32, 0u32);
    while start.elapsed() < Duration::from_millis(2500) {
        let _ = llama_shm::internals::objects::presence(&prefix);
        let _ = llama_shm::internals::objects::page_pids(&prefix);
        checks += 1;
        if checks % 200 == 0 {
            let out = Command::new(llama_shm_tests::cli_path())
                .args(["ls", "--prefix", prefix.as_str()])
                .output()
                .unwrap();
            assert!(out.status.success(), "ls died: {:?}", out.status);
            listings += 1;
        }
    }
    assert!(squatter.wait().unwrap().success());
    eprintln!("{checks} presence checks and {listings} listings against a size-toggling squatter");
}
