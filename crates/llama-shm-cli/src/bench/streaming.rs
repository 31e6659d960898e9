//! Streaming and cancellation: time to the first chunk, to the full answer, and from
//! `cancel()` to the call's return.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use llama_shm::internals::client::RequestOptions;
use llama_shm::internals::stats::{fmt_duration, summarize};
use llama_shm::Prompts;

use super::llm::{llm_client, SYSTEM, USER};
use super::table::Table;
use super::BenchArgs;

/// `args.rounds` rounds of one full stream and one cancelled after its third chunk.
pub fn run(args: &BenchArgs, worker: &Path, model: &Path) -> anyhow::Result<()> {
    println!("## Streaming and cancellation (SmolLM2)\n");
    let mut client = llm_client(worker, model, &["--greedy", "--max-tokens", "64", "--ignore-eog"])?;
    let (mut firsts, mut fulls, mut cancels) = (Vec::new(), Vec::new(), Vec::new());
    let opts = RequestOptions::default();
    for i in 0..args.rounds.max(1) {
        let t = Instant::now();
        let mut first = None;
        let user = format!("{USER} (round {i})");
        let prompts = Prompts {
            system: SYSTEM,
            user: &user,
        };
        client
            .stream(prompts, &opts, |_| {
                first.get_or_insert_with(|| t.elapsed());
            })
            .context("stream")?;
        fulls.push(t.elapsed());
        firsts.push(first.context("no chunk arrived")?);
        // Cancel after the third chunk; time until the call returns.
        let canceller = client.canceller();
        let mut seen = 0;
        let mut at = None;
        let r = client
            .stream(prompts, &opts, |_| {
                seen += 1;
                if seen == 3 {
                    canceller.cancel();
                    at = Some(Instant::now());
                }
            })
            .context("stream")?;
        if let Some(at) = at {
            if r.finish == llama_shm::Finish::Cancelled {
                cancels.push(at.elapsed());
            }
        }
    }
    client.shutdown().context("shutdown")?;
    let mut table = Table::new(["what", "median", "max"]);
    for (label, v) in [
        ("time to first chunk (prompt of ~40 tokens)", &mut firsts),
        ("time to the full answer (64 tokens)", &mut fulls),
        ("cancel() to the call's return", &mut cancels),
    ] {
        if v.is_empty() {
            table.row([label.to_owned(), "—".into(), "—".into()]);
            continue;
        }
        let s = summarize(v);
        table.row([label.to_owned(), fmt_duration(s.p50), fmt_duration(s.max)]);
    }
    table.print();
    Ok(())
}
