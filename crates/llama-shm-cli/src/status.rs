//! `llama-shm status`: what a running worker is doing — its slots busy or idle, what each has
//! answered and generated, and how many clients wait in its admission queue.

use std::io::Write;

use llama_shm::internals::objects::status::{status as read_status, WorkerStatus};
use llama_shm::Prefix;

/// Options of `llama-shm status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The worker's prefix (default: the seed's names).
    #[arg(long)]
    prefix: Option<Prefix>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn to_json(prefix: &Prefix, s: &WorkerStatus) -> serde_json::Value {
    serde_json::json!({
        "prefix": prefix.as_str(),
        "worker_pid": s.worker_pid,
        "slots": s.slots.iter().map(|k| serde_json::json!({
            "index": k.index,
            "prefix": k.prefix.as_str(),
            "state": if k.busy { "busy" } else { "idle" },
            "answered": k.served,
            "generated_tokens": k.generated,
        })).collect::<Vec<_>>(),
        "busy": s.slots.iter().filter(|k| k.busy).count(),
        "queue": s.queue.map(|(waiting, max)| serde_json::json!({ "waiting": waiting, "max": max })),
    })
}

/// `llama-shm status`.
///
/// # Errors
/// No readable worker page under the prefix, or stdout closed.
pub fn run(args: &StatusArgs) -> Result<(), String> {
    let prefix = args.prefix.clone().unwrap_or_else(Prefix::seed);
    let s = read_status(&prefix).ok_or_else(|| {
        format!(
            "no llama-shm worker's page under {prefix} (none running, a seed-era worker, or another user's)"
        )
    })?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        writeln!(out, "{:#}", to_json(&prefix, &s))
    } else {
        print_table(&mut out, &prefix, &s)
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing the status: {e}"))
}

fn print_table(out: &mut impl Write, prefix: &Prefix, s: &WorkerStatus) -> std::io::Result<()> {
    let busy = s.slots.iter().filter(|k| k.busy).count();
    let queue = match s.queue {
        Some((waiting, max)) => format!("{waiting} waiting (at most {max})"),
        None => "none".into(),
    };
    writeln!(
        out,
        "worker pid {} on {prefix}: {} slot(s), {busy} busy; queue: {queue}",
        s.worker_pid,
        s.slots.len()
    )?;
    let width = s
        .slots
        .iter()
        .map(|k| k.prefix.as_str().len())
        .max()
        .unwrap_or(0)
        .max(6);
    writeln!(
        out,
        "{:>4}  {:<width$}  {:<5}  {:>9}  {:>10}",
        "SLOT", "PREFIX", "STATE", "ANSWERED", "GENERATED"
    )?;
    for k in &s.slots {
        writeln!(
            out,
            "{:>4}  {:<width$}  {:<5}  {:>9}  {:>10}{}",
            k.index,
            k.prefix.as_str(),
            if k.busy { "busy" } else { "idle" },
            k.served,
            k.generated,
            if k.index == 0 && s.slots.len() > 1 {
                "  (seed-era clients)"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}
