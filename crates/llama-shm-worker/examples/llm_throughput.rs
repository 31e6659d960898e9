//! LLM throughput in-process versus through the shared-memory worker, in one run.
//!
//! `cargo run --release -p llama-shm-worker --example llm_throughput -- [MODEL] [ROUNDS]`
//!
//! Both sides run the same engine with the same settings (greedy, 64 generated tokens forced
//! past end-of-turn), alternating round by round so machine noise hits both alike. Prints
//! model load time, prompt and generation tokens/s, wall time per request, and the worker's
//! peak RSS.

use std::time::{Duration, Instant};

use llama_shm::engine::{Cancel, Engine, EngineRequest};
use llama_shm::worker::LimitedSink;
use llama_shm_worker::llama::{LlamaEngine, LlamaOptions};

const SYSTEM: &str = "You are a helpful assistant.";
const USER: &str = "Explain in detail how a steam engine works, step by step, for a curious student.";
const TOKENS: u32 = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let rounds: usize = std::env::args().nth(2).map_or(Ok(5), |s| s.parse())?;
    let worker =
        llama_shm::client::default_worker_path().ok_or("llama-shm-worker not found next to this example")?;

    let mut opts = LlamaOptions::new(&model);
    opts.sampling.greedy = true;
    opts.sampling.max_tokens = Some(TOKENS);
    opts.sampling.ignore_eog = true;
    // Every round sends the same prompt: without this the second round would evaluate one
    // token. (The prefix cache has its own benchmark.)
    opts.prefix_cache = false;
    let t = Instant::now();
    let mut engine = LlamaEngine::load(&opts)?;
    let load_inproc = t.elapsed();

    let t = Instant::now();
    let mut client = llama_shm::Client::builder()
        .worker(&worker)
        .args([
            "--engine",
            "llama",
            "--model",
            &model,
            "--greedy",
            "--max-tokens",
            &TOKENS.to_string(),
        ])
        .arg("--ignore-eog")
        .arg("--no-prefix-cache")
        .spawn()?;
    let spawn_to_ready = t.elapsed();
    let pid = client.worker_pid().ok_or("no worker pid")?;

    let mut answer = String::new();
    let (mut ip, mut wk) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        let t = Instant::now();
        let mut sink = LimitedSink::new(&mut answer, 32767);
        let g = engine.generate(
            &EngineRequest {
                system: SYSTEM,
                user: USER,
                max_tokens: None,
            },
            &mut sink,
            &Cancel::new(),
        )?;
        let wall_ip = t.elapsed();
        let t = Instant::now();
        let r = client.send_request(USER, SYSTEM)?;
        let wall_wk = t.elapsed();
        assert_eq!(r.usage.generated_tokens, TOKENS);
        if round > 0 {
            // Round 0 warms caches on both sides.
            ip.push((g.prompt_tokens, g.prompt_time, g.generation_time, wall_ip));
            wk.push((
                r.usage.prompt_tokens,
                r.usage.prompt_time,
                r.usage.generation_time,
                wall_wk,
            ));
        }
    }
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>())
        })
        .ok_or("no VmHWM")??;
    client.shutdown()?;

    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let report = |name: &str, s: &[(u32, Duration, Duration, Duration)]| {
        let mut pt: Vec<Duration> = s.iter().map(|x| x.1).collect();
        let mut gt: Vec<Duration> = s.iter().map(|x| x.2).collect();
        let mut wall: Vec<Duration> = s.iter().map(|x| x.3).collect();
        let (pt, gt, wall) = (med(&mut pt), med(&mut gt), med(&mut wall));
        let prompt_tps = f64::from(s[0].0) / pt.as_secs_f64();
        let gen_tps = f64::from(TOKENS) / gt.as_secs_f64();
        let wall_tps = f64::from(TOKENS) / wall.as_secs_f64();
        println!(
            "{name:<12} prompt {:>4} tok  {prompt_tps:>8.1} tok/s   generation {gen_tps:>7.1} tok/s   wall/request {:>8.1} ms ({wall_tps:.1} generated tok/s end to end)",
            s[0].0,
            wall.as_secs_f64() * 1e3
        );
        (prompt_tps, gen_tps, wall)
    };
    println!("model {model}, {TOKENS} generated tokens forced, greedy, median of {rounds} rounds");
    println!(
        "model load in-process: {:.1} ms; worker spawn-to-ready (incl. its model load): {:.1} ms",
        load_inproc.as_secs_f64() * 1e3,
        spawn_to_ready.as_secs_f64() * 1e3
    );
    let (p1, g1, w1) = report("in-process", &ip);
    let (p2, g2, w2) = report("via worker", &wk);
    println!(
        "worker / in-process: prompt {:.3}x  generation {:.3}x  wall {:.3}x",
        p2 / p1,
        g2 / g1,
        w1.as_secs_f64() / w2.as_secs_f64()
    );
    println!("worker peak RSS (VmHWM): {:.1} MiB", rss_kib as f64 / 1024.0);
    Ok(())
}
