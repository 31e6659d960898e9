//! Fault campaigns on real processes (echo engine): the worker SIGKILLed at a uniformly random
//! moment of its life (start-up, reading prompts, generating, writing the response, between
//! requests) and the client SIGKILLed at a random moment. Bounded in CI; `LST_TRIALS=2000`
//! runs the long campaign. Each trial must end with a typed error naming the cause within
//! 100 ms of the kill, nothing left in /dev/shm, and — with the restart policy — a next
//! request that succeeds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llama_shm::internals::client::{Client, Phase, RequestError, RestartPolicy, SpawnError};
use llama_shm::internals::os::process::ExitInfo;
use llama_shm_tests::{
    alive, entries_of, eventually, find_worker, own_entries, p50_p99_max, spawn_helper, trials,
    unique_prefix, worker_path, Rng,
};

fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn worker_killed_at_random_points() {
    let n = trials(200);
    let mut rng = Rng::from_env("worker_killed_at_random_points");
    let mut latencies = Vec::new();
    let mut phases: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut missed = 0;
    for trial in 0..n {
        let prefix = unique_prefix("wkill");
        let builder = Client::builder()
            .worker(worker_path())
            .args(["--engine", "echo", "--echo-delay-ms", "1"])
            .prefix(prefix.clone())
            .startup_timeout(Duration::from_secs(10))
            .request_timeout(Duration::from_secs(10))
            .restart(RestartPolicy::DEFAULT);
        // The killer waits a uniform 0–25 ms from the start of the trial (spawning takes a
        // few ms, each request ~1.1 ms), finds the worker by its prefix, and kills it.
        let delay = Duration::from_micros(rng.below(25_000));
        let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let start = Instant::now();
        let killer = {
            let (prefix, killed_at) = (prefix.clone(), Arc::clone(&killed_at));
            std::thread::spawn(move || {
                let until = start + delay;
                let mut pid = None;
                while Instant::now() < until || pid.is_none() {
                    pid = find_worker(&prefix).or(pid);
                    if start.elapsed() > Duration::from_secs(2) {
                        return;
                    }
                }
                let pid = pid.unwrap();
                *killed_at.lock().unwrap() = Some(Instant::now());
                sigkill(pid);
            })
        };
        let (noticed, phase, mut client) = match builder.clone().spawn() {
            Err(SpawnError::WorkerExited {
                exit: ExitInfo::Signaled(9),
                ..
            }) => (Instant::now(), "start-up".to_string(), None),
            Err(e) => panic!("trial {trial}: unexpected spawn error {e}"),
            Ok(mut c) => {
                let mut outcome = None;
                for i in 0..200 {
                    match c.send_request(&format!("r{i}"), "s") {
                        Ok(r) => assert_eq!(r.text, format!("s\nr{i}")),
                        Err(RequestError::WorkerDied {
                            phase,
                            exit: ExitInfo::Signaled(9),
                        }) => {
                            let name = match phase {
                                Phase::WaitingReady => "waiting for ready",
                                Phase::WaitingResponse => "waiting for the response",
                                other => panic!("unexpected phase {other:?}"),
                            };
                            outcome = Some((Instant::now(), name.to_string()));
                            break;
                        }
                        Err(e) => panic!("trial {trial}: unexpected error {e}"),
                    }
                }
                match outcome {
                    Some((t, p)) => (t, p, Some(c)),
                    None => {
                        missed += 1;
                        killer.join().unwrap();
                        c.shutdown().unwrap();
                        continue;
                    }
                }
            }
        };
        killer.join().unwrap();
        let killed = killed_at.lock().unwrap().expect("error without a kill");
        let latency = noticed.saturating_duration_since(killed);
        latencies.push(latency);
        phases.entry(phase).or_default().push(latency);
        // The restart policy: the next request respawns the worker and succeeds.
        let mut c = match client.take() {
            Some(c) => c,
            None => builder.clone().spawn().unwrap(),
        };
        assert_eq!(
            c.send_request("after", "kill").unwrap().text,
            "kill\nafter",
            "trial {trial}"
        );
        c.shutdown().unwrap();
        assert!(own_entries().is_empty(), "trial {trial} left {:?}", own_entries());
    }
    let (p50, p99, max) = p50_p99_max(&mut latencies);
    eprintln!(
        "worker SIGKILL campaign: {n} trials ({} kills landed, {missed} missed); detection p50 {p50:?} p99 {p99:?} max {max:?}; leaks 0",
        latencies.len()
    );
    for (phase, mut v) in phases {
        let (p50, p99, max) = p50_p99_max(&mut v);
        eprintln!(
            "  {phase:<26} {:>5} kills  p50 {p50:?} p99 {p99:?} max {max:?}",
            v.len()
        );
    }
    assert!(
        missed * 10 < n,
        "too many trials where the kill did not land: {missed}"
    );
    assert!(max < Duration::from_millis(100), "detection max {max:?}");
}

/// Helper mode: a client that sends echo requests in a loop until killed.
#[test]
#[ignore = "helper process for client_killed_at_random_points"]
fn looping_client_helper() {
    if std::env::var_os("LST_LOOP_HELPER").is_none() {
        return;
    }
    let mut c = Client::builder()
        .worker(worker_path())
        .args(["--engine", "echo", "--echo-delay-ms", "1"])
        .spawn()
        .unwrap();
    println!("WORKER_PID={}", c.worker_pid().unwrap());
    for i in 0u64.. {
        c.send_request(&i.to_string(), "").unwrap();
    }
}

#[test]
fn client_killed_at_random_points() {
    let n = trials(200) / 4;
    let mut rng = Rng::from_env("client_killed_at_random_points");
    let mut exits = Vec::new();
    for trial in 0..n {
        let (mut helper, pid) = spawn_helper("looping_client_helper", "LST_LOOP_HELPER", "WORKER_PID");
        let (helper_pid, worker) = (helper.id(), pid.parse::<u32>().unwrap());
        std::thread::sleep(Duration::from_micros(rng.below(5_000)));
        let t = Instant::now();
        helper.kill().unwrap();
        helper.wait().unwrap();
        assert!(
            eventually(Duration::from_secs(2), || !alive(worker)),
            "trial {trial}: worker {worker} survived"
        );
        exits.push(t.elapsed());
        let left = entries_of(helper_pid);
        assert!(left.is_empty(), "trial {trial} left {left:?}");
    }
    let (p50, p99, max) = p50_p99_max(&mut exits);
    eprintln!("client SIGKILL campaign: {n} trials; worker exit after the kill p50 {p50:?} p99 {p99:?} max {max:?}; leaks 0");
    assert!(max < Duration::from_secs(1));
}
