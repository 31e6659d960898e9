//! Prints the latency of the comparison transports of `llama-shm bench` (Unix socket, pipes,
//! TCP, HTTP+JSON) for both payload sizes and both placements.
//!
//! ```sh
//! cargo run --release -p llama-shm-cli --example baselines_demo -- [SMALL_ITERS] [LARGE_ITERS]
//! ```
//!
//! Defaults: 20000 round trips with the small payload, 5000 with the large one, each after a
//! warm-up of a tenth as many (at most 1000).

#[path = "../src/bench/mod.rs"]
mod bench;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bench::baselines::{pin_current_thread, run, Payload, Placement, Transport};
use bench::stats::{fmt_duration, summarize, Summary};

fn parse_count(arg: Option<String>, default: usize) -> Result<usize, String> {
    match arg {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("expected a positive iteration count, got {text:?}")),
        },
    }
}

fn row(payload: &str, placement: &str, transport: &str, s: &Summary) {
    println!(
        "{payload:<6} {placement:<8} {transport:<13} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
        s.n,
        fmt_duration(s.p50),
        fmt_duration(s.p99),
        fmt_duration(s.p999),
        fmt_duration(s.max),
        fmt_duration(s.mean),
    );
}

/// The cost of the timing itself: two `Instant::now()` calls, pinned to CPU 0.
fn clock_floor(iters: usize) -> std::io::Result<Vec<Duration>> {
    let _pinned = pin_current_thread(0)?;
    Ok((0..iters)
        .map(|_| {
            let start = Instant::now();
            start.elapsed()
        })
        .collect())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let counts =
        parse_count(args.next(), 20_000).and_then(|small| Ok((small, parse_count(args.next(), 5_000)?)));
    let (small_iters, large_iters) = match counts {
        Ok(counts) => counts,
        Err(e) => {
            eprintln!("baselines_demo: {e}");
            return ExitCode::from(2);
        }
    };

    println!(
        "{:<6} {:<8} {:<13} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "size", "cpus", "transport", "n", "p50", "p99", "p99.9", "max", "mean"
    );
    match clock_floor(small_iters) {
        Ok(mut samples) => row("-", "1 core", "clock only", &summarize(&mut samples)),
        Err(e) => println!("{:<6} {:<8} {:<13} error: {e}", "-", "1 core", "clock only"),
    }

    let mut failures = 0;
    for (label, payload, iters) in [
        ("small", Payload::SMALL, small_iters),
        ("large", Payload::LARGE, large_iters),
    ] {
        for placement in Placement::ALL {
            for transport in Transport::ALL {
                let warmup = (iters / 10).min(1000);
                // SAFETY: this program never starts a thread, so the process is single-threaded
                // at every fork.
                match unsafe { run(transport, payload, placement, warmup, iters) } {
                    Ok(mut samples) => row(
                        label,
                        placement.name(),
                        transport.name(),
                        &summarize(&mut samples),
                    ),
                    Err(e) => {
                        failures += 1;
                        println!(
                            "{label:<6} {:<8} {:<13} error: {e}",
                            placement.name(),
                            transport.name()
                        );
                    }
                }
            }
        }
    }
    println!(
        "payloads: small = {}/{}/{} bytes, large = {}/{}/{} bytes (system/user/response)",
        Payload::SMALL.system,
        Payload::SMALL.user,
        Payload::SMALL.response,
        Payload::LARGE.system,
        Payload::LARGE.user,
        Payload::LARGE.response
    );
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
