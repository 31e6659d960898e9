//! One model, many clients: 1, 2, 4 and 8 concurrent clients sending the same mix (a short
//! system prompt, a ~40-token question, 64 generated tokens, greedy) to (a) one batching
//! worker (`--parallel N`), (b) one worker with the turn queue, (c) the `Pool` with as many
//! workers as fit the thread budget, and (d) the ceiling: the same batch engine in this process
//! (no IPC), same model, same threads. Aggregate generated tokens/s, time to first token and
//! per-request wall time (p50/p99), peak RSS of the worker processes; then the goals at
//! 4 clients as ratios of this run.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use llama_shm::internals::client::{Client, RequestOptions, Response};
use llama_shm::internals::stats::{fmt_duration, summarize};
use llama_shm::internals::worker::batch::{BatchEngine, BatchSink};
use llama_shm::{EngineError, EngineRequest, Generation, Pool, Prompts};
use llama_shm_worker::llama::{LlamaBatchEngine, LlamaOptions};

use super::table::Table;
use super::workers::{worker_rss_kib, Standalone};
use super::BenchArgs;

/// The system prompt of the mix.
pub(super) const SYSTEM: &str = "You are a helpful assistant. Answer clearly.";
/// Generated tokens per request (end of turn ignored).
pub(super) const FORCED: u32 = 64;
/// The thread budget every configuration gets.
pub(super) const THREADS: u32 = 2;
/// Client counts.
const CLIENTS: [usize; 4] = [1, 2, 4, 8];

const TOPICS: [&str; 16] = [
    "a steam engine",
    "a refrigerator",
    "the human heart",
    "a solar panel",
    "a bicycle gearbox",
    "a vaccine",
    "a jet engine",
    "the internet",
    "a volcano",
    "a battery",
    "photosynthesis",
    "a microwave oven",
    "a lighthouse",
    "the stock market",
    "a rainbow",
    "a nuclear reactor",
];

/// Question `i` of the mix: about 40 tokens, a different topic per request (so the prefix
/// cache, off here anyway, could not shorten any prompt).
fn question(i: usize) -> String {
    format!(
        "Question {i}: in a few short paragraphs, explain to a curious high-school student how {} \
         works, what its most important parts are, and why it matters in everyday life.",
        TOPICS[i % TOPICS.len()]
    )
}

/// What one request measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) ttft: Duration,
    pub(super) wall: Duration,
    pub(super) generated: u32,
}

/// One configuration at one client count.
struct Run {
    samples: Vec<Sample>,
    wall: Duration,
    rss_kib: Option<u64>,
}

impl Run {
    fn tokens_per_s(&self) -> f64 {
        let tokens: u32 = self.samples.iter().map(|s| s.generated).sum();
        f64::from(tokens) / self.wall.as_secs_f64()
    }
    fn ttft(&self) -> (Duration, Duration) {
        let mut v: Vec<Duration> = self.samples.iter().map(|s| s.ttft).collect();
        let s = summarize(&mut v);
        (s.p50, s.p99)
    }
    fn request_wall(&self) -> (Duration, Duration) {
        let mut v: Vec<Duration> = self.samples.iter().map(|s| s.wall).collect();
        let s = summarize(&mut v);
        (s.p50, s.p99)
    }
}

/// The worker arguments every configuration shares.
pub(super) fn worker_args(model: &Path, threads: u32) -> Vec<String> {
    [
        "--engine",
        "llama",
        "--greedy",
        "--max-tokens",
        &FORCED.to_string(),
        "--ignore-eog",
        "--no-prefix-cache",
        "--threads",
        &threads.to_string(),
        "--model",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .chain(std::iter::once(model.display().to_string()))
    .collect()
}

/// Sends request `i` (the second argument) from client thread `t` (the first; each of the
/// `n` threads of [`drive`] has its own, `0..n`), calling the third at its first piece;
/// returns the tokens generated.
pub(super) type Send<'a> = dyn Fn(usize, usize, &mut dyn FnMut()) -> anyhow::Result<u32> + Sync + 'a;

/// `n` client threads, each sending its share of `requests` one after another through
/// `send` (given the question index and a first-piece callback), timed.
pub(super) fn drive(n: usize, requests: usize, send: &Send<'_>) -> anyhow::Result<(Vec<Sample>, Duration)> {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    let per_thread: Vec<anyhow::Result<Vec<Sample>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let next = &next;
                s.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= requests {
                            return Ok(out);
                        }
                        let start = Instant::now();
                        let mut first = None;
                        let generated = send(t, i, &mut || {
                            first.get_or_insert_with(Instant::now);
                        })?;
                        let end = Instant::now();
                        out.push(Sample {
                            ttft: first.unwrap_or(end) - start,
                            wall: end - start,
                            generated,
                        });
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a client thread panicked")))
            .collect()
    });
    let wall = t.elapsed();
    let mut samples = Vec::new();
    for r in per_thread {
        samples.extend(r?);
    }
    Ok((samples, wall))
}

/// Client thread `t`'s own client. Never waited for: a client another thread holds means the
/// threads share clients, and fewer requests are in flight than the row says.
pub(super) fn own_client(
    clients: &[std::sync::Mutex<Client>],
    t: usize,
) -> anyhow::Result<std::sync::MutexGuard<'_, Client>> {
    clients[t].try_lock().map_err(|e| match e {
        std::sync::TryLockError::WouldBlock => {
            anyhow::anyhow!("client thread {t} found its client in use by another thread")
        }
        std::sync::TryLockError::Poisoned(_) => anyhow::anyhow!("poisoned"),
    })
}

/// A streamed request of question `i` through `client`, its generated tokens checked.
pub(super) fn client_send(client: &mut Client, i: usize, first: &mut dyn FnMut()) -> anyhow::Result<u32> {
    Ok(client_stream(client, i, first)?.usage.generated_tokens)
}

/// As [`client_send`], returning the whole response.
pub(super) fn client_stream(
    client: &mut Client,
    i: usize,
    first: &mut dyn FnMut(),
) -> anyhow::Result<Response> {
    let q = question(i);
    let r = client
        .stream(
            Prompts::user(&q).with_system(SYSTEM),
            // The worker's --max-tokens too; the echo engine knows only the client's.
            &RequestOptions::default().max_tokens(FORCED),
            |_| first(),
        )
        .with_context(|| format!("request {i}"))?;
    ensure!(
        r.usage.generated_tokens == FORCED,
        "request {i}: {} tokens generated, not {FORCED}",
        r.usage.generated_tokens
    );
    Ok(r)
}

/// (a) and (b): `n` clients attached to one standalone worker of `--parallel parallel`.
fn standalone_run(
    worker: &Path,
    model: &Path,
    parallel: usize,
    n: usize,
    requests: usize,
) -> anyhow::Result<Run> {
    let w = Standalone::start(
        worker,
        &worker_args(model, THREADS),
        parallel,
        &format!("p{parallel}n{n}"),
    )?;
    let clients: Vec<std::sync::Mutex<Client>> = (0..n)
        .map(|_| w.attach().map(std::sync::Mutex::new))
        .collect::<anyhow::Result<_>>()?;
    // Each client thread keeps one client, so `n` requests are always in flight (the lock is
    // never contended).
    let send =
        |t: usize, i: usize, first: &mut dyn FnMut()| client_send(&mut *own_client(&clients, t)?, i, first);
    // Warm-up: one request per client at once, untimed.
    drive(n, n, &send)?;
    let (samples, wall) = drive(n, requests, &send)?;
    let rss_kib = worker_rss_kib();
    for c in clients {
        if let Ok(c) = c.into_inner() {
            c.detach();
        }
    }
    drop(w);
    Ok(Run {
        samples,
        wall,
        rss_kib,
    })
}

/// (c): the pool, with as many workers as fit the thread budget (at most `n`).
fn pool_run(worker: &Path, model: &Path, n: usize, requests: usize) -> anyhow::Result<(Run, usize)> {
    let workers = n.min(THREADS as usize);
    let threads = THREADS / workers as u32;
    let builder = Client::builder()
        .worker(worker)
        .args(worker_args(model, threads))
        .startup_timeout(Duration::from_secs(120))
        .request_timeout(Duration::from_secs(600));
    let pool = Pool::new(builder, workers).context("starting the pool")?;
    let send = |_: usize, i: usize, first: &mut dyn FnMut()| -> anyhow::Result<u32> {
        let q = question(i);
        let r = pool
            .stream(
                Prompts::user(&q).with_system(SYSTEM),
                &RequestOptions::default(),
                |_| first(),
            )
            .with_context(|| format!("pool request {i}"))?;
        Ok(r.usage.generated_tokens)
    };
    drive(n, n, &send)?;
    let (samples, wall) = drive(n, requests, &send)?;
    let rss_kib = worker_rss_kib();
    pool.shutdown();
    Ok((
        Run {
            samples,
            wall,
            rss_kib,
        },
        workers,
    ))
}

/// The batch sink of the ceiling: first-piece times and ends per sequence.
struct Collect {
    first: Vec<Option<Instant>>,
    ended: Vec<(usize, Result<Generation, EngineError>)>,
}

impl BatchSink for Collect {
    fn piece(&mut self, seq: usize, _piece: &str) -> bool {
        self.first[seq].get_or_insert_with(Instant::now);
        true
    }
    fn done(&mut self, seq: usize, result: Result<Generation, EngineError>) {
        self.ended.push((seq, result));
    }
}

/// (d): the batch engine in this process, `n` sequences each taking the next request when
/// its last one ends (as `n` clients would), no IPC.
fn ceiling_run(model: &Path, n: usize, requests: usize) -> anyhow::Result<Run> {
    let mut opts = LlamaOptions::new(model);
    opts.sampling.greedy = true;
    opts.sampling.max_tokens = Some(FORCED);
    opts.sampling.ignore_eog = true;
    opts.prefix_cache = false;
    opts.threads = Some(THREADS as i32);
    opts.parallel = n as u32;
    let mut engine = LlamaBatchEngine::load(&opts).context("loading the batch engine in-process")?;
    let mut go = |count: usize| -> anyhow::Result<(Vec<Sample>, Duration)> {
        let questions: Vec<String> = (0..count).map(question).collect();
        let mut out = Collect {
            first: vec![None; n],
            ended: Vec::new(),
        };
        let mut started = vec![Instant::now(); n];
        let mut next = 0;
        let mut samples = Vec::new();
        let t = Instant::now();
        let admit = |seq: usize, next: &mut usize, engine: &mut LlamaBatchEngine, started: &mut [Instant]| {
            if *next >= count {
                return Ok(());
            }
            started[seq] = Instant::now();
            let r = engine.admit(
                seq,
                &EngineRequest {
                    system: SYSTEM,
                    user: &questions[*next],
                    max_tokens: None,
                    ..EngineRequest::default()
                },
            );
            *next += 1;
            r.map_err(|e| anyhow::anyhow!("in-process admit: {e}"))
        };
        for seq in 0..n {
            admit(seq, &mut next, &mut engine, &mut started)?;
        }
        while engine.is_busy() {
            engine.step(&mut out);
            for (seq, result) in std::mem::take(&mut out.ended) {
                let g = result.map_err(|e| anyhow::anyhow!("in-process generation: {e}"))?;
                let end = Instant::now();
                samples.push(Sample {
                    ttft: out.first[seq].take().unwrap_or(end) - started[seq],
                    wall: end - started[seq],
                    generated: g.usage.generated_tokens,
                });
                admit(seq, &mut next, &mut engine, &mut started)?;
            }
        }
        Ok((samples, t.elapsed()))
    };
    go(n)?;
    let (samples, wall) = go(requests)?;
    Ok(Run {
        samples,
        wall,
        rss_kib: None,
    })
}

/// (a) ÷ (d) tokens/s, (a) ÷ (b) tokens/s, (a) ÷ (d) TTFT p99, (a) ÷ (b) peak RSS (NaN
/// when unknown).
fn ratios(a: &Run, b: &Run, d: &Run) -> [f64; 4] {
    [
        a.tokens_per_s() / d.tokens_per_s(),
        a.tokens_per_s() / b.tokens_per_s(),
        a.ttft().1.as_secs_f64() / d.ttft().1.as_secs_f64(),
        match (a.rss_kib, b.rss_kib) {
            (Some(ra), Some(rb)) => ra as f64 / rb as f64,
            _ => f64::NAN,
        },
    ]
}

fn mib(k: Option<u64>) -> String {
    k.map_or_else(|| "—".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

/// Runs every configuration at every client count and prints the table and the goals.
pub fn run(args: &BenchArgs, worker: &Path, model: &Path) -> anyhow::Result<()> {
    println!("## One model, many clients: batching versus the turn queue, the pool and in-process\n");
    let requests = args.batch_requests.max(8);
    println!(
        "{requests} requests per row (after one untimed request per client): system prompt \
         {SYSTEM:?}, a ~40-token question (a different topic each), {FORCED} generated tokens \
         (greedy, end of turn ignored, prefix cache off), {THREADS} threads per configuration. \
         Tokens/s is all generated tokens over the row's wall time; TTFT and wall are per \
         request, from its send (waiting for a slot included).\n"
    );
    let mut table = Table::new([
        "configuration",
        "clients",
        "generated tok/s",
        "TTFT p50",
        "TTFT p99",
        "wall p50",
        "wall p99",
        "peak RSS (workers)",
    ]);
    let mut at4 = Vec::new();
    for n in CLIENTS {
        let rows = [
            (
                "(a) batching worker",
                standalone_run(worker, model, n, n, requests)?,
            ),
            (
                "(b) turn queue, one worker",
                standalone_run(worker, model, 1, n, requests)?,
            ),
            {
                let (r, workers) = pool_run(worker, model, n, requests)?;
                let label = if workers == 1 {
                    "(c) pool, 1 worker × 2 threads"
                } else {
                    "(c) pool, 2 workers × 1 thread"
                };
                (label, r)
            },
            (
                "(d) ceiling: batch engine in-process",
                ceiling_run(model, n, requests)?,
            ),
        ];
        for (label, r) in &rows {
            let (t50, t99) = r.ttft();
            let (w50, w99) = r.request_wall();
            table.row([
                (*label).to_string(),
                n.to_string(),
                format!("{:.1}", r.tokens_per_s()),
                fmt_duration(t50),
                fmt_duration(t99),
                fmt_duration(w50),
                fmt_duration(w99),
                mib(r.rss_kib),
            ]);
        }
        if n == 4 {
            at4 = rows.into_iter().map(|(_, r)| r).collect();
        }
    }
    table.print();
    if let [a, b, _, d] = at4.as_slice() {
        // The goals' ratios: this table's 4-client rows, then more rounds of (a), (b), (d)
        // one after the other, so a burst of load on the machine moves one round, not the
        // median.
        let mut rounds = vec![ratios(a, b, d)];
        for _ in 1..args.goal_rounds.max(1) {
            let a = standalone_run(worker, model, 4, 4, requests)?;
            let b = standalone_run(worker, model, 1, 4, requests)?;
            let d = ceiling_run(model, 4, requests)?;
            rounds.push(ratios(&a, &b, &d));
        }
        let median = |k: usize| {
            let mut v: Vec<f64> = rounds.iter().map(|r| r[k]).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v)
        };
        println!(
            "Goals at 4 clients: the median over {} rounds of (a), (b) and (d) run one after the \
             other (the first round is the table's); every round's ratio, sorted.\n",
            rounds.len()
        );
        let mut goals = Table::new(["goal", "median", "rounds", "met"]);
        let mut row = |label: &str, k: usize, ok: fn(f64) -> bool| {
            let (m, v) = median(k);
            let each: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
            goals.row([
                label.to_string(),
                format!("{m:.2}×"),
                each.join(", "),
                (if ok(m) { "yes" } else { "no" }).into(),
            ]);
        };
        row("batching tok/s ÷ in-process ceiling (≥ 0.95×)", 0, |x| {
            x >= 0.95
        });
        row("batching tok/s ÷ turn queue (≥ 1.3×)", 1, |x| x >= 1.3);
        row("batching TTFT p99 ÷ ceiling's (≤ 1.2×)", 2, |x| x <= 1.2);
        if rounds.iter().all(|r| !r[3].is_nan()) {
            row("batching peak RSS ÷ one worker's (≤ 1.2×)", 3, |x| x <= 1.2);
        }
        goals.print();
    }
    Ok(())
}
