//! The worker pool: requests from many threads go to idle workers, every answer reaches the
//! thread that asked, and a worker that dies is replaced.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llama_shm::internals::client::{Client, RequestError, RequestOptions};
use llama_shm::Pool;
use llama_shm::Prompts;
use llama_shm_tests::{own_entries, worker_path};

fn echo_pool(n: usize, extra: &[&str]) -> Pool {
    Pool::new(
        Client::builder()
            .worker(worker_path())
            .echo_engine()
            .args(extra)
            .request_timeout(Duration::from_secs(20)),
        n,
    )
    .unwrap()
}

#[test]
fn many_threads_share_a_pool_and_get_their_own_answers() {
    let pool = echo_pool(3, &[]);
    assert_eq!(pool.size(), 3);
    std::thread::scope(|s| {
        for t in 0..4 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..250 {
                    let user = format!("thread {t} request {i}");
                    let r = pool
                        .request(
                            Prompts {
                                system: "sys",
                                user: &user,
                            },
                            &RequestOptions::default(),
                        )
                        .unwrap();
                    assert_eq!(r.text, format!("sys\n{user}"));
                }
            });
        }
    });
    assert_eq!(pool.replaced(), 0);
    assert_eq!(pool.shutdown(), 0);
    assert!(own_entries().is_empty());
}

#[test]
fn a_killed_worker_is_replaced_and_only_its_request_fails() {
    // Each request takes ~20 ms, so kills land mid-request.
    let pool = echo_pool(2, &["--echo-delay-ms", "20"]);
    let failed = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..3 {
            let (pool, failed, done) = (&pool, &failed, &done);
            s.spawn(move || {
                for i in 0..30 {
                    let user = format!("{t}/{i}");
                    match pool.request(
                        Prompts {
                            system: "",
                            user: &user,
                        },
                        &RequestOptions::default(),
                    ) {
                        Ok(r) => {
                            assert_eq!(r.text, format!("\n{user}"));
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(RequestError::WorkerDied { .. }) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            });
        }
        // Kill two workers, one after the other, while requests run.
        s.spawn(|| {
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(150));
                let pids = llama_shm_tests::children_named("llama-shm-worker");
                let pid = *pids.first().expect("a pool worker");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        });
    });
    let (failed, done) = (failed.into_inner(), done.into_inner());
    assert_eq!(failed + done, 90);
    assert!(failed <= 2, "{failed} requests failed for 2 kills");
    assert_eq!(pool.replaced(), 2);
    assert_eq!(pool.size(), 2);
    assert_eq!(pool.shutdown(), 0);
    assert!(own_entries().is_empty());
}
