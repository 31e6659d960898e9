//! LLM throughput through the worker against the same engine in this process, and what the
//! other LLM sections share: the prompts and the worker set-up.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use llama_shm::internals::client::Client;
use llama_shm::internals::stats::{fmt_duration, summarize};
use llama_shm::internals::worker::engine::{Cancel, Engine, EngineRequest};
use llama_shm::internals::worker::LimitedSink;
use llama_shm_worker::llama::{LlamaEngine, LlamaOptions};

use super::table::Table;
use super::BenchArgs;

/// The system prompt of the LLM sections.
pub const SYSTEM: &str = "You are a helpful assistant.";
/// The question of the throughput and streaming sections.
pub const USER: &str = "Explain in detail how a steam engine works, step by step, for a curious student.";
/// Generated tokens per throughput request (end of turn ignored).
const FORCED: u32 = 64;

/// A llama worker on `model` with `extra` worker arguments and generous time limits.
pub fn llm_client(worker: &Path, model: &Path, extra: &[&str]) -> anyhow::Result<Client> {
    Client::builder()
        .worker(worker)
        .args(["--engine", "llama", "--model"])
        .arg(model)
        .args(extra)
        .startup_timeout(Duration::from_secs(120))
        .request_timeout(Duration::from_secs(300))
        .spawn()
        .context("spawning the llama worker")
}

/// One round of one side: prompt tokens, prompt time, generation time, wall time.
type Round = (u32, Duration, Duration, Duration);

/// Prompt tokens/s, generation tokens/s and wall time per request, at the p50 of `rounds`.
fn rates(rounds: &[Round]) -> (f64, f64, Duration) {
    let p50 = |field: fn(&Round) -> Duration| {
        let mut v: Vec<Duration> = rounds.iter().map(field).collect();
        summarize(&mut v).p50
    };
    let (pt, gt, wall) = (p50(|r| r.1), p50(|r| r.2), p50(|r| r.3));
    (
        f64::from(rounds[0].0) / pt.as_secs_f64(),
        f64::from(FORCED) / gt.as_secs_f64(),
        wall,
    )
}

/// Alternates `args.rounds` requests in-process and through the worker (after a warm-up round).
pub fn throughput(args: &BenchArgs, worker: &Path, model: &Path) -> anyhow::Result<()> {
    println!("## LLM through the worker versus in-process\n");
    let mut opts = LlamaOptions::new(model);
    opts.sampling.greedy = true;
    opts.sampling.max_tokens = Some(FORCED);
    opts.sampling.ignore_eog = true;
    // Every round sends the same prompt: without this, later rounds would evaluate one token.
    opts.prefix_cache = false;
    let t = Instant::now();
    let mut engine = LlamaEngine::load(&opts).context("loading the model in-process")?;
    let load_inproc = t.elapsed();
    let mut spawns = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let c = llm_client(worker, model, &[])?;
        spawns.push(t.elapsed());
        c.shutdown().context("shutdown")?;
    }
    let forced = FORCED.to_string();
    let mut client = llm_client(
        worker,
        model,
        &[
            "--greedy",
            "--max-tokens",
            &forced,
            "--ignore-eog",
            "--no-prefix-cache",
        ],
    )?;
    let pid = client.worker_pid().context("no worker pid")?;
    let mut answer = String::new();
    let (mut ip, mut wk): (Vec<Round>, Vec<Round>) = (Vec::new(), Vec::new());
    for round in 0..=args.rounds {
        let t = Instant::now();
        let mut sink = LimitedSink::new(&mut answer, 32767);
        let g = engine
            .generate(
                &EngineRequest {
                    system: SYSTEM,
                    user: USER,
                    max_tokens: None,
                    ..EngineRequest::default()
                },
                &mut sink,
                &Cancel::new(),
            )
            .context("in-process generation")?;
        let wall_ip = t.elapsed();
        let t = Instant::now();
        let r = client.send_request(USER, SYSTEM).context("worker request")?;
        let wall_wk = t.elapsed();
        ensure!(
            r.usage.generated_tokens == FORCED && g.usage.generated_tokens == FORCED,
            "expected {FORCED} generated tokens, got {} (worker) and {} (in-process)",
            r.usage.generated_tokens,
            g.usage.generated_tokens
        );
        // Round 0 warms caches on both sides.
        if round > 0 {
            ip.push((
                g.usage.prompt_tokens,
                g.usage.prompt_time,
                g.usage.generation_time,
                wall_ip,
            ));
            wk.push((
                r.usage.prompt_tokens,
                r.usage.prompt_time,
                r.usage.generation_time,
                wall_wk,
            ));
        }
    }
    let rss_kib = peak_rss_kib(pid);
    client.shutdown().context("shutdown")?;
    ensure!(!ip.is_empty(), "--rounds must be at least 1");
    let (p1, g1, w1) = rates(&ip);
    let (p2, g2, w2) = rates(&wk);
    println!(
        "Model {}, greedy, {FORCED} generated tokens forced (end of turn ignored), {} prompt tokens, \
         median of {} rounds alternating in-process and worker.\n",
        model.display(),
        ip[0].0,
        args.rounds
    );
    let mut table = Table::new(["", "prompt tok/s", "generation tok/s", "wall per request"]);
    table
        .row([
            "in-process".into(),
            format!("{p1:.1}"),
            format!("{g1:.1}"),
            fmt_duration(w1),
        ])
        .row([
            "through the worker".into(),
            format!("{p2:.1}"),
            format!("{g2:.1}"),
            fmt_duration(w2),
        ])
        .row([
            "worker / in-process".into(),
            format!("{:.3}×", p2 / p1),
            format!("{:.3}×", g2 / g1),
            format!("{:.3}× (throughput)", w1.as_secs_f64() / w2.as_secs_f64()),
        ]);
    table.print();
    println!(
        "Model load in-process {}; worker spawn-to-ready with SmolLM2 (incl. its load), median of 3: {}; \
         worker peak RSS (VmHWM) {}.\n",
        fmt_duration(load_inproc),
        fmt_duration(summarize(&mut spawns).p50),
        rss_kib.map_or_else(|| "unknown".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    );
    Ok(())
}

/// The peak resident set of process `pid` (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
}
