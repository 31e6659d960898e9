//! Planted bugs (feature `planted-bugs`): each ignored test runs a model on a protocol variant
//! with one defect; ci/loom.sh runs each one in its own process and requires it to FAIL (loom
//! aborts the process on a deadlock, so `#[should_panic]` cannot express "caught").
#![cfg(all(loom, feature = "planted-bugs"))]

use llama_shm::internals::protocol::{PreparedRequest, WaitError};
use llama_shm::internals::wire::layout::ObjectKind;
use llama_shm::internals::wire::text::Policy;
use llama_shm::Prompts;
use llama_shm_verification::planted::{buggy_serve, read_before_wait, shutdown_without_post, WorkerBug};
use llama_shm_verification::{assert_idle, channel, LoomChannel, SLICE};
use loom::sync::Arc;
use loom::thread;

fn always() -> bool {
    true
}

fn write_request(ch: &LoomChannel, seq: u64) {
    ch.client_acquire(None, SLICE, &always).unwrap();
    let mut req = PreparedRequest::encode(
        Prompts {
            system: "s",
            user: "u",
        },
        Policy::Truncate,
    )
    .unwrap();
    req.seq = seq;
    ch.client_write(&req).unwrap();
}

fn await_ok(ch: &LoomChannel, seq: u64) -> Result<(), WaitError> {
    let r = ch.client_await(seq, None, SLICE, &always)?;
    assert_eq!(r.text, "s\nu");
    Ok(())
}

fn shutdown(ch: &LoomChannel) {
    ch.client_acquire(None, SLICE, &always).unwrap();
    ch.client_request_shutdown(None, 99).unwrap();
}

fn model_with_worker(kind: ObjectKind, bug: Option<WorkerBug>, client: fn(&LoomChannel)) {
    loom::model(move || {
        let ch = Arc::new(channel(kind));
        let worker = {
            let ch = Arc::clone(&ch);
            thread::spawn(move || match bug {
                Some(bug) => buggy_serve(&ch, bug),
                None => buggy_serve(&ch, WorkerBug::None),
            })
        };
        client(&ch);
        worker.join().unwrap();
        assert_idle(&ch);
    });
}

#[test]
#[ignore = "planted bug: this model must FAIL; ci/loom.sh runs it and requires the failure"]
fn planted_read_response_before_waiting_is_caught() {
    model_with_worker(ObjectKind::Extended, None, |ch| {
        write_request(ch, 1);
        read_before_wait(ch);
        await_ok(ch, 1).unwrap();
        shutdown(ch);
    });
}

/// In seed mode: there the client reads as soon as it is woken. (In extended mode the client's
/// sequence-number check absorbs this defect — it sees a stale `response_seq` and waits for
/// the second post — so the model passes there; ci/loom.sh records that too.)
#[test]
#[ignore = "planted bug: this model must FAIL; ci/loom.sh runs it and requires the failure"]
fn planted_post_response_before_writing_is_caught() {
    model_with_worker(ObjectKind::Seed, Some(WorkerBug::PostBeforeWrite), |ch| {
        write_request(ch, 1);
        await_ok(ch, 1).unwrap();
        shutdown(ch);
    });
}

#[test]
#[ignore = "planted bug: this model must FAIL; ci/loom.sh runs it and requires the failure"]
fn planted_forgotten_shutdown_post_is_caught() {
    model_with_worker(ObjectKind::Extended, None, |ch| {
        write_request(ch, 1);
        await_ok(ch, 1).unwrap();
        ch.client_acquire(None, SLICE, &always).unwrap();
        shutdown_without_post(ch);
    });
}

#[test]
#[ignore = "planted bug: this model must FAIL; ci/loom.sh runs it and requires the failure"]
fn planted_double_ready_post_is_caught() {
    model_with_worker(ObjectKind::Extended, Some(WorkerBug::ReadyTwice), |ch| {
        write_request(ch, 1);
        await_ok(ch, 1).unwrap();
        shutdown(ch);
    });
}

/// The extended protocol tolerates an early `response_written` (the sequence check).
#[test]
fn extended_mode_absorbs_an_early_response_post() {
    model_with_worker(ObjectKind::Extended, Some(WorkerBug::PostBeforeWrite), |ch| {
        write_request(ch, 1);
        await_ok(ch, 1).unwrap();
        shutdown(ch);
    });
}

/// The same harness with no bug planted passes, in both modes: the failures above come from
/// the bugs.
#[test]
fn unplanted_control_passes() {
    model_with_worker(ObjectKind::Seed, None, |ch| {
        write_request(ch, 1);
        await_ok(ch, 1).unwrap();
        shutdown(ch);
    });
    model_with_worker(ObjectKind::Extended, None, |ch| {
        write_request(ch, 1);
        await_ok(ch, 1).unwrap();
        shutdown(ch);
    });
}

/// A streaming reader that hands the ring back (stores `stream_read`) *before* copying the
/// bytes out: the worker may overwrite them while they are read. Against the shipped worker and
/// a 4-byte ring, loom must report the unordered access (or the garbled text).
#[test]
#[ignore = "planted bug: this model must FAIL; ci/loom.sh runs it and requires the failure"]
fn planted_ring_released_before_copy_is_caught() {
    use llama_shm::internals::protocol::{Region, Semaphore};
    use llama_shm::internals::wire::layout::{Field, Word64};
    use llama_shm_verification::{spawn_pieces_worker, write_stream_request, LOOM_RING};
    loom::model(|| {
        let ch = Arc::new(channel(ObjectKind::Extended));
        let worker = spawn_pieces_worker(&ch, &["ab", "cde", "f"]);
        write_stream_request(&ch, 1);
        let (mut text, mut read) = (Vec::new(), 0u64);
        loop {
            assert!(ch.response_written.wait_until(None).unwrap());
            let done = ch.region.load64(Word64::ResponseSeq) == 1;
            if ch.region.load64(Word64::StreamSeq) == 1 {
                let w = ch.region.load64(Word64::StreamWritten);
                ch.region.store64(Word64::StreamRead, w); // the planted defect
                for i in read..w {
                    let mut b = [0u8];
                    ch.region
                        .read(Field::Response, (i % LOOM_RING as u64) as usize, &mut b);
                    text.push(b[0]);
                }
                read = w;
            }
            if done {
                break;
            }
        }
        assert_eq!(String::from_utf8_lossy(&text), "abcdef");
        ch.client_acquire(None, SLICE, &always).unwrap();
        ch.client_request_shutdown(None, 2).unwrap();
        worker.join().unwrap();
    });
}
