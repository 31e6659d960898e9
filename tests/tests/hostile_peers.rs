//! Peers that misbehave on the semaphores rather than in memory (issue 12): a process that
//! posts a semaphore in a loop, and clients that die while they hold the worker's turn. The
//! promise under test: every wait ends by its deadline whatever anyone posts, and one dead
//! client never wedges a worker for the others.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llama_shm::internals::client::{Client, Phase, RequestError};
use llama_shm::internals::objects::{self, Trust};
use llama_shm::internals::os::NamedSemaphore;
use llama_shm::internals::protocol::{request_checksum_with_area, AreaRequest, Region, RequestParams};
use llama_shm::internals::wire::layout::{Field, Word32, Word64, AREA_LEN, KIND_CHAT, TOKEN_LEN};
use llama_shm::internals::wire::names::Prefix;
use llama_shm::internals::wire::status::StatusCode;
use llama_shm::Prompts;
use llama_shm::{Message, RequestOptions};
use llama_shm_tests::seed::SeedPeer;
use llama_shm_tests::{cli_path, shm_entries, spawn_helper_with, standalone_echo, terminate, unique_prefix};

/// Posts `response_written` of `prefix` as fast as it can until dropped: a hostile peer (or
/// one that raised the semaphore's value) keeping it positive.
struct Poster {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Poster {
    fn start(prefix: &Prefix) -> Self {
        let [_, _, response_written] = prefix.sems();
        let sem = NamedSemaphore::open(&response_written, 0o600).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut posts = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // At SEM_VALUE_MAX the post fails; take one and go on posting.
                    if sem.post().is_err() {
                        let _ = sem.try_wait();
                    }
                    posts += 1;
                }
                posts
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Poster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Issue 12, item 1, through the library: against a worker that answers only after 20 s and a
/// peer that posts `response_written` in a loop, a request with a 2 s timeout fails with a
/// typed `Timeout` while waiting for the response, within the deadline + 50 ms.
#[test]
fn a_request_timeout_binds_against_a_hostile_poster() {
    let prefix = unique_prefix("hpost");
    let worker = standalone_echo(&prefix, &["--echo-delay-ms", "20000"]);
    let poster = Poster::start(&prefix);
    let timeout = Duration::from_secs(2);
    let mut client = Client::builder()
        .request_timeout(timeout)
        .attach(&prefix)
        .unwrap();
    let start = Instant::now();
    let r = client.send_request("late", "");
    let took = start.elapsed();
    drop(poster);
    eprintln!("hostile poster: request with a 2 s timeout returned after {took:?}: {r:?}");
    assert!(
        matches!(
            r,
            Err(RequestError::Timeout {
                phase: Phase::WaitingResponse,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(
        took < timeout + Duration::from_millis(50),
        "returned after {took:?}"
    );
    client.detach();
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

/// The same through the command line, as reported: `llama-shm ask --attach P --timeout 2`
/// exits 1 with a timeout message, by the deadline (plus process start-up), instead of
/// running until the late answer and printing it.
#[test]
fn cli_ask_with_a_timeout_exits_by_it_against_a_hostile_poster() {
    let prefix = unique_prefix("hpcli");
    let worker = standalone_echo(&prefix, &["--echo-delay-ms", "20000"]);
    let poster = Poster::start(&prefix);
    let start = Instant::now();
    let out = Command::new(cli_path())
        .args(["ask", "--attach", prefix.as_str(), "--timeout", "2", "late"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    drop(poster);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("hostile poster: `llama-shm ask --timeout 2` exited after {took:?}: {stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("timed out"), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.trim().is_empty(), "printed a late answer: {stdout:?}");
    assert!(took < Duration::from_millis(2500), "exited after {took:?}");
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

/// How a helper client dies holding the worker's turn.
const DIE_MODES: [&str; 4] = ["seed-ready", "seed-written", "ext-ready", "ext-written"];

/// Helper process: a client of `LST_DIE_PREFIX` that takes the turn the way `LST_DIE_MODE`
/// says, prints `HELD=1`, and waits to be SIGKILLed:
/// - `seed-ready`: a seed-era client (no lock) that took `ready`;
/// - `seed-written`: the same, after writing its prompts, before posting;
/// - `ext-ready`: an extended client holding the turn lock that took `ready`;
/// - `ext-written`: the same, after writing its request (sequence number included);
/// - `ext-posted`: an extended client whose streamed answer is being generated;
/// - `seed-posted`: a seed-era client that posted its request.
#[test]
#[ignore = "helper process for the dead-client tests"]
fn dying_client_helper() {
    let (Ok(prefix), Ok(mode)) = (std::env::var("LST_DIE_PREFIX"), std::env::var("LST_DIE_MODE")) else {
        return;
    };
    let hold = || {
        println!("HELD=1");
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    };
    let t = Duration::from_secs(10);
    match mode.as_str() {
        "seed-ready" | "seed-written" | "seed-posted" => {
            let peer = SeedPeer::open(&prefix).unwrap();
            assert!(peer.take_ready(t));
            if mode != "seed-ready" {
                peer.write_prompt(0, "dead");
                peer.write_prompt(4096, "client");
            }
            if mode == "seed-posted" {
                peer.post_prompts_written();
            }
            hold()
        }
        "ext-ready" | "ext-written" => {
            let ch = objects::open(&Prefix::new(&prefix).unwrap(), Trust::default()).unwrap();
            assert!(ch.region.shm().try_lock().unwrap());
            ch.client_acquire(
                Some(std::time::Instant::now() + t),
                Duration::from_millis(50),
                &|| true,
            )
            .unwrap();
            if mode == "ext-written" {
                ch.region.store64(Word64::RequestSeq, 0xdead);
                ch.region.write(Field::UserPrompt, 0, b"dead\0");
            }
            hold()
        }
        "ext-posted" => {
            let mut client = Client::builder().attach(&Prefix::new(&prefix).unwrap()).unwrap();
            let mut once = Some(());
            let _ = client.stream(
                Prompts {
                    system: "client",
                    user: "dead",
                },
                &RequestOptions::default(),
                |_| {
                    if once.take().is_some() {
                        println!("HELD=1");
                    }
                },
            );
            hold()
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Starts a helper client of `prefix` that takes the turn as `mode` says, and SIGKILLs it.
fn kill_turn_holder(prefix: &Prefix, mode: &str) {
    let (mut helper, _) = spawn_helper_with(
        "dying_client_helper",
        &[("LST_DIE_PREFIX", prefix.as_str()), ("LST_DIE_MODE", mode)],
        "HELD",
    );
    helper.kill().unwrap();
    helper.wait().unwrap();
}

/// Kills a helper that holds the turn of `prefix` in `mode`, then returns how long a new
/// client took to get its answer.
fn next_client_after_death(prefix: &Prefix, mode: &str) -> Duration {
    kill_turn_holder(prefix, mode);
    let start = Instant::now();
    let mut client = Client::builder()
        .request_timeout(Duration::from_secs(10))
        .attach(prefix)
        .unwrap();
    let r = client.send_request("next", "sys").unwrap();
    let took = start.elapsed();
    assert_eq!(r.text, "sys\nnext", "{mode}");
    client.detach();
    took
}

/// Issue 12, item 2: a client that dies holding the turn of a standalone worker — after
/// taking `ready`, or after writing its request but before posting it; a seed-era client
/// (no lock) or an extended one (the kernel releases its turn lock) — does not wedge the
/// worker: the next client is served within 1 s, and the worker serves on.
#[test]
fn a_client_that_dies_holding_the_turn_does_not_wedge_a_standalone_worker() {
    let prefix = unique_prefix("hdie");
    let worker = standalone_echo(&prefix, &[]);
    for mode in DIE_MODES {
        let took = next_client_after_death(&prefix, mode);
        eprintln!("client died holding the turn ({mode}): next client served after {took:?}");
        assert!(
            took < Duration::from_secs(1),
            "{mode}: next client served after {took:?}"
        );
    }
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

/// A client that dies while its answer is being generated: the worker notices within its
/// presence interval (an extended client named itself in `client_pid`; for a seed-era
/// client, no process that mapped the object is left) and serves the next client within
/// 1 s, although the answer would have taken 20 s more. The seed-era case holds only while no
/// other client maps the object when the worker first looks (100 ms into the request), so
/// there the next client attaches after that look: with other clients mapping, a dead seed
/// client's answer is generated to its end (see `objects/clients.rs`).
#[test]
fn a_client_that_dies_during_its_answer_does_not_hold_a_standalone_worker() {
    for mode in ["ext-posted", "seed-posted"] {
        let prefix = unique_prefix("hans");
        // "client\ndead" × 8000 in 4-byte pieces, 10 ms each: 20 s of answer.
        let worker = standalone_echo(&prefix, &["--echo-piece-us", "10000", "--echo-repeat", "8000"]);
        let took = next_client_after_death_during_answer(&prefix, mode);
        eprintln!("client died during its answer ({mode}): next client served after {took:?}");
        assert!(
            took < Duration::from_secs(1),
            "{mode}: next client served after {took:?}"
        );
        assert_eq!(terminate(worker), Some(0));
        assert!(shm_entries(&prefix).is_empty());
    }
}

fn next_client_after_death_during_answer(prefix: &Prefix, mode: &str) -> Duration {
    kill_turn_holder(prefix, mode);
    let start = Instant::now();
    if mode.starts_with("seed") {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut client = Client::builder()
        .request_timeout(Duration::from_secs(10))
        .attach(prefix)
        .unwrap();
    let mut first = None;
    let r = client
        .stream(
            Prompts {
                system: "",
                user: "x",
            },
            &RequestOptions::default().max_tokens(1),
            |_| {
                first.get_or_insert_with(|| start.elapsed());
            },
        )
        .unwrap();
    assert!(!r.text.is_empty());
    client.detach();
    first.unwrap()
}

/// Issue 12, item 3: an endless answer (an echo worker repeating forever) no longer grows the
/// client without bound: the request fails with a typed `AnswerTooLong` at the client's bound
/// (the worker is cancelled), and the client stays usable.
#[test]
fn an_endless_answer_stops_at_the_clients_bound() {
    let limit = 1 << 20;
    let mut client = Client::builder()
        .worker(llama_shm_tests::worker_path())
        .args(["--engine", "echo", "--echo-repeat", "4294967295"])
        .max_answer_bytes(limit)
        .request_timeout(Duration::from_secs(20))
        .spawn()
        .unwrap();
    for _ in 0..2 {
        let start = Instant::now();
        let r = client.send_request("forever", "");
        eprintln!(
            "endless answer, bound {limit} B: {r:?} after {:?}",
            start.elapsed()
        );
        assert!(
            matches!(r, Err(RequestError::AnswerTooLong { limit: l }) if l == limit),
            "{r:?}"
        );
    }
    // (The second request met the bound again rather than a closed client: still usable.)
    client.shutdown().unwrap();
}

/// The same through the command line with the default bound (8 MiB): `llama-shm ask` facing
/// an endless answer exits 1 with the typed error, and the peak RSS of the client and its
/// worker stays near the bound (it grew to 2.1 GB and aborted before).
#[test]
fn cli_facing_an_endless_answer_keeps_its_memory_near_the_bound() {
    let start = Instant::now();
    let out = Command::new(cli_path())
        .args(["ask", "--engine", "echo", "--worker-arg=--echo-repeat=4294967295"])
        .args(["--timeout", "20", "forever"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    // SAFETY: getrusage with a valid `who` and an out-pointer to a zeroed struct.
    let peak_kib = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru), 0);
        ru.ru_maxrss
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "endless answer through the CLI: exit {:?} after {took:?}, peak RSS {} MiB: {stderr}",
        out.status.code(),
        peak_kib / 1024
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("answer longer than"), "{stderr}");
    assert!(peak_kib < 96 * 1024, "peak RSS {peak_kib} KiB");
}

/// Issue 12, item 9: a worker that writes 50 MB to stderr without a newline (and then fails
/// its start-up) does not grow the client: the tail it keeps is a few lines of at most 4 KiB,
/// and the typed start-up error still comes.
#[test]
fn a_worker_writing_an_endless_line_to_stderr_does_not_grow_the_client() {
    use std::os::unix::fs::PermissionsExt;
    let dir = llama_shm_tests::TempDir::new("endless_stderr");
    let script = dir.0.join("noisy-worker");
    std::fs::write(
        &script,
        "#!/bin/sh\nhead -c 50000000 /dev/zero | tr '\\0' x >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = Client::builder()
        .worker(&script)
        .startup_timeout(Duration::from_secs(30))
        .spawn();
    match r {
        Err(llama_shm::SpawnError::WorkerExited { stderr, .. }) => {
            let longest = stderr.iter().map(String::len).max().unwrap_or(0);
            eprintln!(
                "endless stderr line: {} lines kept, longest {longest} bytes",
                stderr.len()
            );
            assert!(longest <= 4096 + 8, "a line of {longest} bytes was kept");
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
}

/// How a hostile client lies in its request area (issue 16). Each request is otherwise as
/// `client_write` makes it: kind, `area_used`, records and a checksum over them.
struct AreaLie {
    what: &'static str,
    /// `request_kind`.
    kind: u32,
    /// The records the checksum is computed over.
    records: Vec<u8>,
    /// `area_used`, if not the records' length.
    used: Option<u32>,
    /// A byte changed in the area after the checksum was computed: (offset, new byte).
    scribble: Option<(usize, u8)>,
    /// What the worker's refusal must say.
    refusal: &'static str,
}

/// Records `tag | len | bytes` as the request area carries them.
fn record(tag: u32, len: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = tag.to_le_bytes().to_vec();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Plays a hostile client of `prefix` with the internals API: takes the turn (the turn lock
/// and `ready`), writes request `seq` as `lie` says, posts it, and returns the worker's
/// answer (status and message). The turn lock goes with the objects when this returns.
fn send_area_lie(prefix: &Prefix, seq: u64, lie: &AreaLie) -> (StatusCode, String) {
    let ch = objects::open(prefix, Trust::default()).unwrap();
    assert!(ch.area_supported());
    assert!(eventually_locked(&ch), "the turn lock stays taken");
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    ch.client_acquire(deadline, Duration::from_millis(50), &|| true)
        .unwrap();
    let r = &ch.region;
    let params = RequestParams {
        kind: lie.kind,
        ..RequestParams::default()
    };
    let token = [0u8; TOKEN_LEN];
    r.write(Field::AuthToken, 0, &token);
    r.store32(Word32::ClientPid, std::process::id());
    r.store32(Word32::RequestFlags, 0);
    r.store32(Word32::MaxTokens, 0);
    r.store64(Word64::DeadlineMicros, 0);
    r.store64(Word64::StreamRead, 0);
    r.store32(Word32::RequestKind, lie.kind);
    r.store32(Word32::RequestOptions, 0);
    r.store32(Word32::SampleSeed, 0);
    r.store32(Word32::AreaUsed, lie.used.unwrap_or(lie.records.len() as u32));
    r.write(Field::RequestArea, 0, &lie.records);
    let check = request_checksum_with_area(seq, &token, 0, params, b"", b"", &lie.records);
    r.store64(Word64::RequestChecksum, check);
    if let Some((at, byte)) = lie.scribble {
        r.write(Field::RequestArea, at, &[byte]);
    }
    r.store64(Word64::RequestSeq, seq);
    for (field, word) in [
        (Field::SystemPrompt, Word32::SystemLen),
        (Field::UserPrompt, Word32::UserLen),
    ] {
        r.store32(word, 0);
        r.write(field, 0, &[0]);
    }
    r.write(Field::Shutdown, 0, &[0]);
    ch.prompts_written.post().unwrap();
    let raw = ch
        .client_await(seq, deadline, Duration::from_millis(50), &|| true)
        .unwrap();
    assert!(raw.intact, "{}: the refusal failed its checksum", lie.what);
    (raw.status, raw.error)
}

/// The turn lock of `ch`, taken within 10 s (a client that just detached may still hold it).
fn eventually_locked(ch: &objects::PosixChannel) -> bool {
    llama_shm_tests::eventually(Duration::from_secs(10), || ch.region.shm().try_lock().unwrap())
}

/// Issue 16: a client that lies in the request area — scribbles it after computing the
/// checksum, says it uses more than the area holds, sends records that run past their end,
/// an unknown tag, a text with a NUL, or a kind nobody knows (each with a checksum that
/// matches) — gets a typed `BadRequest` saying what was wrong, and the worker goes on: the
/// next honest `Client::chat` gets its own answer.
#[test]
fn a_client_lying_in_the_request_area_is_refused_and_the_worker_serves_on() {
    let prefix = unique_prefix("harea");
    let worker = standalone_echo(&prefix, &[]);
    let honest = AreaRequest::chat(&[Message::user("hello")], None)
        .encode(AREA_LEN)
        .unwrap();
    let lies = [
        AreaLie {
            what: "area scribbled after the checksum",
            kind: KIND_CHAT,
            records: honest.clone(),
            used: None,
            // "hello" becomes "jello": still a valid chat, so only the checksum can tell.
            scribble: Some((8, b'j')),
            refusal: "request checksum mismatch",
        },
        AreaLie {
            what: "area_used past the area",
            kind: KIND_CHAT,
            records: honest.clone(),
            used: Some(AREA_LEN as u32 + 1),
            scribble: None,
            refusal: "area_used is 1048577",
        },
        AreaLie {
            what: "a record running past its end",
            kind: KIND_CHAT,
            records: record(2, 1000, b"short"),
            used: None,
            scribble: None,
            refusal: "runs past the end",
        },
        AreaLie {
            what: "an unknown record tag",
            kind: KIND_CHAT,
            records: [honest.clone(), record(99, 1, b"x")].concat(),
            used: None,
            scribble: None,
            refusal: "unknown record tag 99",
        },
        AreaLie {
            what: "a message holding a NUL",
            kind: KIND_CHAT,
            records: record(2, 3, b"a\0b"),
            used: None,
            scribble: None,
            refusal: "is not UTF-8 or holds a NUL",
        },
        AreaLie {
            what: "an unknown request kind",
            kind: 9,
            records: honest.clone(),
            used: None,
            scribble: None,
            refusal: "request kind 9 is unknown",
        },
    ];
    let mut client = Client::builder()
        .request_timeout(Duration::from_secs(10))
        .attach(&prefix)
        .unwrap();
    for (i, lie) in lies.iter().enumerate() {
        let (status, message) = send_area_lie(&prefix, 0xa000 + i as u64, lie);
        eprintln!("hostile area request ({}): {status:?}: {message}", lie.what);
        assert_eq!(status, StatusCode::BadRequest, "{}: {message}", lie.what);
        assert!(message.contains(lie.refusal), "{}: {message}", lie.what);
        assert!(
            llama_shm_tests::alive(worker.id()),
            "{}: the worker died",
            lie.what
        );
        let history = [
            Message::system("terse"),
            Message::user(format!("after lie {i}")),
            Message::assistant("ok"),
            Message::user("again"),
        ];
        let r = client.chat(&history, &RequestOptions::default()).unwrap();
        assert_eq!(r.text, format!("terse\nafter lie {i}\nok\nagain"), "{}", lie.what);
    }
    client.detach();
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}
