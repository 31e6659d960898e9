//! Soak: many echo requests on one worker with the worker's and the client's open fds, RSS
//! and the /dev/shm entries sampled every 10,000 requests (they must stay flat), and many
//! spawn/shutdown cycles (no fd, process or name leaks). Bounded in CI (100,000 requests,
//! 1,000 cycles); `LST_SOAK_REQUESTS=1000000` runs the long soak.

use std::time::{Duration, Instant};

use llama_shm::internals::client::Client;
use llama_shm_tests::{own_entries, worker_path};

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Entries in /dev/shm created by this process (other processes may come and go meanwhile).
fn shm_count() -> usize {
    llama_shm_tests::own_entries().len()
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

#[test]
fn soak_requests_keep_fds_rss_and_names_flat() {
    let n: u64 = std::env::var("LST_SOAK_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let me = std::process::id();
    let mut c = Client::builder()
        .worker(worker_path())
        .args(["--engine", "echo"])
        .spawn()
        .unwrap();
    let w = c.worker_pid().unwrap();
    let mut samples = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        if i % 10_000 == 0 {
            samples.push((i, fds(w), rss_kib(w), fds(me), rss_kib(me), shm_count()));
        }
        let r = c.send_request(&format!("q{i}"), "soak").unwrap();
        assert_eq!(r.text, format!("soak\nq{i}"));
    }
    samples.push((n, fds(w), rss_kib(w), fds(me), rss_kib(me), shm_count()));
    let elapsed = started.elapsed();
    c.shutdown().unwrap();
    let (first, last) = (samples[1], *samples.last().unwrap());
    eprintln!(
        "soak: {n} requests in {elapsed:?}; sample (requests, worker fds, worker RSS KiB, client fds, client RSS KiB, /dev/shm entries): start {first:?} end {last:?}"
    );
    // Sample 0 is before the first request (buffers not yet touched); compare from sample 1.
    for s in &samples[1..] {
        assert_eq!(
            (s.1, s.3, s.5),
            (first.1, first.3, first.5),
            "fds or /dev/shm entries changed: {samples:?}"
        );
        assert!(
            s.2 <= first.2 + 1024 && s.4 <= first.4 + 4096,
            "RSS grew: {samples:?}"
        );
    }
    assert!(own_entries().is_empty());
}

#[test]
fn spawn_and_shutdown_cycles_leak_nothing() {
    let n: usize = std::env::var("LST_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    let me = std::process::id();
    let builder = Client::builder()
        .worker(worker_path())
        .args(["--engine", "echo"])
        .startup_timeout(Duration::from_secs(10));
    // Warm up once so lazily opened fds (e.g. /dev/urandom) are already there.
    builder.clone().spawn().unwrap().shutdown().unwrap();
    let (fds0, threads0, shm0) = (fds(me), threads(me), shm_count());
    let started = Instant::now();
    for i in 0..n {
        let mut c = builder.clone().spawn().unwrap();
        assert_eq!(
            c.send_request("x", &i.to_string()).unwrap().text,
            format!("{i}\nx")
        );
        let pid = c.worker_pid().unwrap();
        c.shutdown().unwrap();
        assert!(
            !llama_shm_tests::alive(pid),
            "cycle {i}: worker {pid} still alive"
        );
    }
    let elapsed = started.elapsed();
    let (fds1, threads1, shm1) = (fds(me), threads(me), shm_count());
    eprintln!(
        "spawn/shutdown: {n} cycles in {elapsed:?} ({:?} each); client fds {fds0}->{fds1}, threads {threads0}->{threads1}, /dev/shm entries {shm0}->{shm1}",
        elapsed / n as u32
    );
    assert_eq!((fds1, threads1, shm1), (fds0, threads0, shm0));
    // No child left: every worker was reaped (a zombie would still be listed as our child).
    let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap_or_default();
    assert!(children.trim().is_empty(), "children left: {children}");
}
