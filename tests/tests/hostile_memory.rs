//! Hostile or broken shared memory: a third process scribbles random bytes over the region
//! (fields, extension page, lengths, flags, the shutdown byte) while a client sends echo
//! requests. The worker must never crash, and every request must end with the correct answer
//! or a typed error — never a wrong answer. A truncated object is refused with a typed error
//! before anything maps it.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llama_shm::internals::client::{Client, RequestError};
use llama_shm::internals::objects::ObjectsError;
use llama_shm::internals::os::shm::{OpenCheck, SharedMemory, ShmError};
use llama_shm::internals::wire::layout::{AREA_OBJECT_SIZE, AREA_OFFSET, EXT_OFFSET, OBJECT_SIZE, SEED_SIZE};
use llama_shm::internals::wire::names::Prefix;
use llama_shm_tests::{
    alive, shm_entries, standalone_echo, terminate, trials, unique_prefix, ChildGuard, Rng,
};

const TOKEN: [u8; 32] = [0x3c; 32];

fn token_file(prefix: &Prefix) -> std::path::PathBuf {
    let file = std::env::temp_dir().join(format!("{prefix}.token"));
    std::fs::write(
        &file,
        TOKEN.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    )
    .unwrap();
    file
}

/// Helper mode: map the object and scribble until killed.
#[test]
#[ignore = "helper process for scribbled_region_never_crashes_the_worker_or_yields_a_wrong_answer"]
fn scribbler_helper() {
    let Some(prefix) = std::env::var_os("LST_SCRIBBLE") else {
        return;
    };
    let prefix = Prefix::new(prefix.to_str().unwrap()).unwrap();
    let shm = SharedMemory::open(
        &prefix.shm(),
        OpenCheck {
            same_owner: true,
            max_mode: 0o600,
            min_size: OBJECT_SIZE,
            map_at_most: OBJECT_SIZE,
        },
    )
    .unwrap();
    let mut rng = Rng::from_env("scribbler");
    println!("SCRIBBLING");
    loop {
        // 40% anywhere, 40% the extension page's words, 10% the shutdown byte, 10% the starts
        // of the text fields; 1–16 random bytes; a burst every ~100 µs.
        let offset = match rng.below(10) {
            0..=3 => rng.below(OBJECT_SIZE as u64) as usize,
            4..=7 => EXT_OFFSET + rng.below(512) as usize,
            8 => SEED_SIZE - 1,
            _ => [0usize, 4096, 8192][rng.below(3) as usize] + rng.below(16) as usize,
        };
        let len = (1 + rng.below(16) as usize).min(OBJECT_SIZE - offset);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        shm.write(offset, &bytes);
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[test]
fn scribbled_region_never_crashes_the_worker_or_yields_a_wrong_answer() {
    let n = trials(10_000).max(10_000);
    let prefix = unique_prefix("scrib");
    let file = token_file(&prefix);
    let worker = standalone_echo(&prefix, &["--token-file", file.to_str().unwrap()]);
    // Attach before the scribbling starts: attaching reads the extension page's header, and a
    // scribbled header is (rightly) a typed attach error — this test is about requests.
    let mut client = Client::builder()
        .request_timeout(Duration::from_millis(200))
        .token(TOKEN)
        .attach(&prefix)
        .unwrap();
    let mut scribbler = ChildGuard::new(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "scribbler_helper", "--include-ignored", "--nocapture"])
            .env("LST_SCRIBBLE", prefix.as_str())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = std::io::BufReader::new(scribbler.0.as_mut().unwrap().stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("SCRIBBLING") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "scribbler did not start"
        );
    }
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let started = Instant::now();
    for i in 0..n {
        let (user, system) = (format!("user {i} ✓"), format!("sys {i}"));
        let kind = match client.send_request(&user, &system) {
            Ok(r) => {
                assert_eq!(
                    r.text,
                    format!("{system}\n{user}"),
                    "request {i}: a WRONG answer came back as Ok"
                );
                "correct answer"
            }
            Err(RequestError::Corrupt) => "Corrupt (response checksum)",
            Err(RequestError::BadRequest { .. }) => "BadRequest (request checksum / shutdown byte)",
            Err(RequestError::Unauthorized { .. }) => "Unauthorized (token scribbled)",
            Err(RequestError::Timeout { .. }) => "Timeout (response_seq scribbled)",
            Err(RequestError::UnknownStatus { .. }) => "UnknownStatus (status scribbled)",
            Err(e) => panic!("request {i}: unexpected error {e}"),
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    let elapsed = started.elapsed();
    drop(scribbler);
    assert!(alive(worker.id()), "the worker died under scribbling");
    // Still serving correctly once the scribbling stops.
    assert_eq!(client.send_request("after", "s").unwrap().text, "s\nafter");
    client.detach();
    assert_eq!(terminate(worker), Some(0));
    std::fs::remove_file(&file).unwrap();
    assert!(shm_entries(&prefix).is_empty());
    eprintln!("scribble campaign: {n} requests in {elapsed:?}: {outcomes:?}");
    assert!(
        outcomes.get("correct answer").copied().unwrap_or(0) > n / 2,
        "{outcomes:?}"
    );
}

/// The texts of the embeddings campaign: 1000 short ones, whose records take the request
/// area's first ~16 KiB; their 16-number vectors come back as 64,008 bytes.
fn campaign_texts() -> Vec<String> {
    (0..1000).map(|i| format!("text {i}")).collect()
}

/// The bytes of the request area the area scribbler hits: past every byte of the campaign's
/// request, inside its result, so that only the response checksum can tell.
const RESULT_SCRIBBLE: std::ops::Range<usize> = 24 * 1024..64_000;

/// Helper mode: map the object with its request area and scribble over `RESULT_SCRIBBLE`
/// until killed, as fast as it can.
#[test]
#[ignore = "helper process for a_scribbled_embeddings_result_is_corrupt_never_wrong_vectors"]
fn area_scribbler_helper() {
    let Some(prefix) = std::env::var_os("LST_AREA_SCRIBBLE") else {
        return;
    };
    let prefix = Prefix::new(prefix.to_str().unwrap()).unwrap();
    let shm = SharedMemory::open(
        &prefix.shm(),
        OpenCheck {
            same_owner: true,
            max_mode: 0o600,
            min_size: AREA_OBJECT_SIZE,
            map_at_most: AREA_OBJECT_SIZE,
        },
    )
    .unwrap();
    let mut rng = Rng::from_env("area scribbler");
    println!("SCRIBBLING");
    let span = (RESULT_SCRIBBLE.end - RESULT_SCRIBBLE.start) as u64;
    loop {
        // 1–8 random bytes, none of them left as they were.
        let at = RESULT_SCRIBBLE.start + rng.below(span - 8) as usize;
        let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next_u64() as u8).collect();
        let mut old = vec![0u8; bytes.len()];
        shm.read(AREA_OFFSET + at, &mut old);
        let new: Vec<u8> = bytes
            .iter()
            .zip(&old)
            .map(|(b, o)| if b == o { !o } else { *b })
            .collect();
        shm.write(AREA_OFFSET + at, &new);
        std::thread::yield_now();
    }
}

/// Issue 16: a third process scribbles over the embeddings result in the request area (after
/// the bytes of the request, so the requests themselves arrive intact) while a client asks for
/// 1000 vectors at a time. Every `Client::embed` returns the right vectors, bit for bit, or
/// `RequestError::Corrupt` (the response checksum covers the result) — never wrong vectors as
/// `Ok`; some do meet the scribbler; once it stops, the vectors are right again.
#[test]
fn a_scribbled_embeddings_result_is_corrupt_never_wrong_vectors() {
    let n = trials(1000);
    let prefix = unique_prefix("scremb");
    let worker = standalone_echo(&prefix, &[]);
    let mut client = Client::builder()
        .request_timeout(Duration::from_secs(10))
        .attach(&prefix)
        .unwrap();
    let texts = campaign_texts();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let bits = |e: &llama_shm::Embeddings| e.values.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let want = client.embed(&texts).unwrap();
    assert_eq!((want.count(), want.dim), (texts.len(), 16));
    for (i, t) in texts.iter().enumerate().step_by(97) {
        let expected = llama_shm::internals::worker::engine::echo_embedding(t);
        assert_eq!(want.vector(i).unwrap(), &expected[..], "vector {i}");
    }
    let want = bits(&want);
    let mut scribbler = ChildGuard::new(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "area_scribbler_helper",
                "--include-ignored",
                "--nocapture",
            ])
            .env("LST_AREA_SCRIBBLE", prefix.as_str())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = std::io::BufReader::new(scribbler.0.as_mut().unwrap().stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("SCRIBBLING") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "scribbler did not start"
        );
    }
    let (mut right, mut corrupt) = (0usize, 0usize);
    let started = Instant::now();
    for i in 0..n {
        match client.embed(&texts) {
            Ok(got) => {
                assert!(bits(&got) == want, "request {i}: WRONG vectors came back as Ok");
                right += 1;
            }
            Err(RequestError::Corrupt) => corrupt += 1,
            Err(e) => panic!("request {i}: unexpected error {e}"),
        }
    }
    let elapsed = started.elapsed();
    drop(scribbler);
    eprintln!("embeddings scribble campaign: {n} requests in {elapsed:?}: {right} right, {corrupt} Corrupt");
    assert!(
        corrupt > 0,
        "the scribbler never met a result in flight: the test proves nothing"
    );
    assert!(alive(worker.id()), "the worker died under scribbling");
    assert_eq!(bits(&client.embed(&texts).unwrap()), want);
    client.detach();
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}

#[test]
fn a_truncated_object_is_refused_before_mapping() {
    let prefix = unique_prefix("trunc");
    let worker = standalone_echo(&prefix, &[]);
    // Wait until the worker is idle (it posted `ready`): from then on it touches the region only
    // after a client's post. Truncating it during its start-up writes would fault it, which is
    // the documented limit (SECURITY.md), not what this test is about.
    let ready = llama_shm::internals::os::sem::NamedSemaphore::open(&prefix.sem_ready(), 0o600).unwrap();
    assert!(llama_shm_tests::eventually(Duration::from_secs(10), || ready
        .value()
        .is_ok_and(|v| v == 1)));
    drop(ready);
    for size in [0u64, 1000, SEED_SIZE as u64 - 1] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/dev/shm/{prefix}_shared_mem"))
            .unwrap();
        f.set_len(size).unwrap();
        match Client::builder().attach(&prefix) {
            Err(ObjectsError::Shm(ShmError::TooSmall { size: s, needed, .. })) => {
                assert_eq!((s, needed), (size, SEED_SIZE as u64))
            }
            other => panic!("size {size}: expected TooSmall, got {other:?}"),
        }
    }
    // The worker is idle (it touches the region only after a post): it still stops cleanly.
    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
}
