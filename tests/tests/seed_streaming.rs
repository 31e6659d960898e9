//! The seed's streaming service (`LocalLLMService`, `seed-streaming.md`) against our standalone
//! worker: a client written from the spec alone (`llama_shm_tests::seed_stream`, raw libc, the
//! class's offsets and four semaphores) and today's seed client (`seed::SeedPeer`, three
//! semaphores, no streaming fields) on the same worker, with the echo engine and the model.
//! Every wait of the spec client is timed: a worker killed mid-stream is a timeout, not a hang.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llama_shm_tests::seed::SeedPeer;
use llama_shm_tests::seed_stream::{ServiceError, StreamingService, Update, STREAM_MODE_OFF};
use llama_shm_tests::{
    eventually, shm_entries, standalone_echo, terminate, unique_prefix, worker_path, ChildGuard,
    STANDALONE_NAMES,
};

const T: Duration = Duration::from_secs(20);

/// Checks what a streamed answer's updates must be: each the whole answer so far (a prefix
/// of the next, whole characters, no replacement character), counters strictly growing,
/// only the last complete, and the final text the last update's.
fn check_updates(updates: &[Update], final_text: &str) {
    assert!(!updates.is_empty());
    let brief = |u: &Update| {
        format!(
            "(counter {}, {} bytes, complete {})",
            u.counter,
            u.text.len(),
            u.complete
        )
    };
    for w in updates.windows(2) {
        assert!(
            w[1].counter > w[0].counter,
            "{} then {}",
            brief(&w[0]),
            brief(&w[1])
        );
        assert!(
            w[1].text.starts_with(&w[0].text),
            "{} then {}: not a prefix",
            brief(&w[0]),
            brief(&w[1])
        );
        assert!(!w[0].complete, "complete before the end: {}", brief(&w[0]));
    }
    for u in updates {
        assert!(
            !u.text.contains('\u{FFFD}'),
            "an update split a character: {}",
            brief(u)
        );
    }
    let last = updates.last().unwrap();
    assert!(last.complete);
    assert!(
        last.text == final_text,
        "the complete update ({}) is not the final answer ({} bytes)",
        brief(last),
        final_text.len()
    );
    assert!(last.tokens > 0, "{}", brief(last));
}

/// The reproduction: the class's `Initialize` opens four semaphores and failed with
/// "Failed to open semaphores" against a worker that created three. Here it starts the
/// worker with no arguments but the engine and a prefix, sleeps a fixed delay (the class's
/// `InitializationDelayMs`), opens by name; then streamed and non-streamed requests of the
/// class and today's seed client interleave on the one worker.
#[test]
fn the_streaming_service_and_a_seed_client_share_one_standalone_worker() {
    let prefix = unique_prefix("sstream");
    let worker = ChildGuard::worker(
        Command::new(worker_path())
            .args([
                "--engine",
                "echo",
                "--echo-piece-us",
                "20000",
                "--prefix",
                prefix.as_str(),
            ])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
        &prefix,
    );
    // The class's start-up: a fixed sleep (its default 3000 ms), then open by name.
    std::thread::sleep(Duration::from_millis(3000));
    let service = StreamingService::initialize(prefix.as_str()).expect("Initialize");
    assert_eq!(shm_entries(&prefix).len(), STANDALONE_NAMES);
    let seed = SeedPeer::open(prefix.as_str()).expect("the seed client opens its three");

    let mut updates = Vec::new();
    let user = "stream me, please";
    let text = service
        .get_response_streaming(user, "sys", T, |u| updates.push(u.clone()))
        .unwrap();
    assert_eq!(text, format!("sys\n{user}"));
    check_updates(&updates, &text);
    assert!(
        updates.len() > 3,
        "pieces of 4 bytes 20 ms apart came as {} updates",
        updates.len()
    );
    assert_eq!(
        service.byte_at(STREAM_MODE_OFF),
        0,
        "stream_mode cleared for the next"
    );

    // Non-streamed, by the class and by the seed client, then streamed again.
    assert_eq!(
        service.get_response("one answer", "S", T).unwrap(),
        "S\none answer"
    );
    assert_eq!(
        seed.request("seed client", "S2", T).as_deref(),
        Some("S2\nseed client")
    );
    let mut again = Vec::new();
    let text = service
        .get_response_streaming("twice", "", T, |u| again.push(u.clone()))
        .unwrap();
    assert_eq!(text, "\ntwice");
    check_updates(&again, &text);
    assert_eq!(
        seed.request("after a stream", "", T).as_deref(),
        Some("\nafter a stream")
    );

    drop(service);
    drop(seed);
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty(), "{:?}", shm_entries(&prefix));
}

/// An answer longer than the response field (the echo repeated past 40 000 bytes of two- and
/// three-byte characters) streams as whole characters and ends cut at 32 767 bytes or less,
/// on a character boundary.
#[test]
fn a_streamed_answer_past_32_kib_is_cut_at_a_character_boundary() {
    let prefix = unique_prefix("sslong");
    let worker = standalone_echo(&prefix, &["--echo-repeat", "9000", "--echo-piece-us", "1"]);
    let service = StreamingService::initialize(prefix.as_str()).unwrap();
    let mut updates = Vec::new();
    let text = service
        .get_response_streaming("é€", "", T, |u| updates.push(u.clone()))
        .unwrap();
    check_updates(&updates, &text);
    assert!(updates.len() > 10, "{} updates", updates.len());
    assert!(text.len() <= 32_767 && text.len() > 32_767 - 6, "{}", text.len());
    assert!(text.chars().all(|c| "\né€".contains(c)), "foreign characters");
    assert!(text.starts_with("\né€\né€"));
    drop(service);
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

/// The worker SIGKILLed mid-stream (the guardian then removes its names): the class's next
/// wait would block forever; the timed one of the spec client ends at its deadline.
#[test]
fn a_worker_killed_mid_stream_ends_the_clients_timed_wait() {
    let prefix = unique_prefix("sskill");
    let worker = standalone_echo(&prefix, &["--echo-piece-us", "20000", "--echo-repeat", "200"]);
    let service = StreamingService::initialize(prefix.as_str()).unwrap();
    let pid = worker.id();
    let timeout = Duration::from_secs(3);
    let started = Instant::now();
    let mut killed = false;
    let result = service.get_response_streaming("a long answer", "", timeout, |u| {
        if !killed && u.counter >= 3 {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            killed = true;
        }
    });
    let took = started.elapsed();
    assert!(killed, "no third update came: {result:?}");
    assert_eq!(result, Err(ServiceError::TimedOut { step: "chunk_ready" }));
    assert!(took < timeout + Duration::from_secs(2), "{took:?}");
    drop(service);
    let mut child = worker.take();
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || shm_entries(&prefix).is_empty()),
        "the guardian did not remove {:?}",
        shm_entries(&prefix)
    );
}

/// The model behind the service: a streamed greedy answer comes in several updates and is the
/// one the non-streamed request and today's seed client get for the same prompts.
#[test]
fn the_streaming_service_streams_the_real_model() {
    let prefix = unique_prefix("ssllm");
    let worker = ChildGuard::worker(
        Command::new(worker_path())
            .args(["--greedy", "--max-tokens", "40", "--prefix", prefix.as_str()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        &prefix,
    );
    let mut service = None;
    assert!(eventually(T, || {
        service = StreamingService::initialize(prefix.as_str()).ok();
        service.is_some()
    }));
    let service = service.unwrap();
    let timeout = Duration::from_secs(120);
    let (user, system) = ("Name three colors.", "You are a helpful assistant.");
    let mut updates = Vec::new();
    let streamed = service
        .get_response_streaming(user, system, timeout, |u| updates.push(u.clone()))
        .unwrap();
    check_updates(&updates, &streamed);
    assert!(updates.len() > 5, "{} updates", updates.len());
    assert!(!streamed.trim().is_empty());
    assert_eq!(service.get_response(user, system, timeout).unwrap(), streamed);
    let seed = SeedPeer::open(prefix.as_str()).unwrap();
    assert_eq!(
        seed.request(user, system, timeout).as_deref(),
        Some(streamed.as_str())
    );
    drop((service, seed));
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

/// `--test --stream` prints each piece as it comes, like the seed's chatbot: the first bytes
/// arrive while the worker is still generating (paced pieces of at most 4 bytes, 150 ms
/// apart), and all of them make the answer `--test` prints.
#[test]
fn test_mode_streams_pieces_to_stdout_as_they_come() {
    use std::io::Read;
    let mut child = ChildGuard::new(
        Command::new(worker_path())
            .args([
                "--test",
                "--stream",
                "--engine",
                "echo",
                "--echo-piece-us",
                "150000",
            ])
            .args(["--system", "sys", "--user", "hello world"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = child.0.as_mut().unwrap().stdout.take().unwrap();
    let mut first = [0u8; 64];
    let n = out.read(&mut first).unwrap();
    assert!(n > 0 && n < "sys\nhello world\n".len(), "{:?}", &first[..n]);
    assert!(
        child.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the worker had finished before its first piece was read"
    );
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let all = String::from_utf8(first[..n].to_vec()).unwrap() + &rest;
    assert_eq!(all, "sys\nhello world\n");
    let status = child.take().wait().unwrap();
    assert!(status.success(), "{status}");
}
