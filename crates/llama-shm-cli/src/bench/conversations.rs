//! Conversations, structured output and embeddings: the second turn of a ~1000-token
//! conversation against its first, schema-constrained generation against unconstrained, and
//! embeddings per second of ~100-token texts.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use llama_shm::internals::stats::{fmt_duration, summarize};
use llama_shm::{Message, RequestOptions};

use super::llm::llm_client;
use super::table::Table;
use super::BenchArgs;

/// A conversation of about 1000 tokens (session `s` makes it differ from every other one,
/// so its first request is cold): a system message and eight turns.
fn history(s: usize) -> Vec<Message> {
    let topics = [
        "rivers of Europe",
        "the planets",
        "bread baking",
        "bird migration",
        "old bridges",
        "tea",
        "volcanoes",
        "chess openings",
        "glass making",
        "lighthouses",
    ];
    let mut m = vec![Message::system(format!(
        "Session {s}. You are a patient tutor. Answer in two or three sentences."
    ))];
    for (i, t) in topics.iter().enumerate() {
        m.push(Message::user(format!(
            "Question {i} of session {s}: tell me something about {t}, please."
        )));
        m.push(Message::assistant(format!(
            "Here is something about {t}. It has a long history, many people study it, and there are \
             several surprising facts about {t} that are worth knowing; for example, people in many \
             countries have written books about {t}, and some of those books are still read today. \
             Would you like to hear more about {t}?"
        )));
    }
    m.push(Message::user("Which of these topics is the oldest?"));
    m
}

/// A ~100-token text (number `i`).
fn text_of(i: usize) -> String {
    format!(
        "Document {i}. The library opens at nine in the morning and closes at six in the evening on \
         weekdays. On Saturdays it opens at ten and closes at four, and on Sundays it is closed. \
         Members may borrow up to eight books at a time for three weeks, and may renew them twice \
         online or at the desk, unless another member has reserved them. Late returns cost ten cents \
         per book per day."
    )
}

const SCHEMA: &str = r#"{"type": "object", "properties": {"title": {"type": "string"}, "story": {"type": "string"}}, "required": ["title", "story"]}"#;

/// Tokens per second of a generation.
fn rate(tokens: u32, time: Duration) -> f64 {
    f64::from(tokens) / time.as_secs_f64().max(1e-9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

pub fn run(args: &BenchArgs, worker: &Path, model: &Path) -> anyhow::Result<()> {
    let rounds = args.rounds.max(1);
    println!("## Conversations, structured output, embeddings\n");

    // Second turn against first of a ~1000-token conversation.
    let mut client = llm_client(
        worker,
        model,
        &["--greedy", "--max-tokens", "128", "--ctx", "2048"],
    )?;
    let short = RequestOptions::default().max_tokens(16);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut tokens = (0, 0, 0);
    for s in 0..rounds {
        let mut h = history(s);
        let a = client.chat(&h, &short).context("first turn")?;
        h.push(Message::assistant(a.text));
        h.push(Message::user("And which one is the youngest?"));
        let b = client.chat(&h, &short).context("second turn")?;
        first.push(a.usage.prompt_time);
        second.push(b.usage.prompt_time);
        tokens = (
            a.usage.prompt_tokens,
            b.usage.prompt_tokens,
            b.usage.cached_tokens,
        );
    }
    let (f, s) = (summarize(&mut first).p50, summarize(&mut second).p50);
    let mut table = Table::new([
        "turn",
        "prompt tokens",
        "evaluated",
        &format!("prompt time (median of {rounds})"),
    ]);
    table
        .row([
            "first (cold)".into(),
            tokens.0.to_string(),
            tokens.0.to_string(),
            fmt_duration(f),
        ])
        .row([
            format!("second ({} cached)", tokens.2),
            tokens.1.to_string(),
            (tokens.1 - tokens.2).to_string(),
            fmt_duration(s),
        ]);
    table.print();
    println!(
        "Second turn / first prompt time: {:.1} % (goal ≤ 10 %).\n",
        100.0 * s.as_secs_f64() / f.as_secs_f64()
    );

    // Constrained against unconstrained generation, interleaved rounds: the unconstrained
    // answer gets the budget the constrained one used, so both generate about as many tokens
    // (a longer answer is slower per token: it attends to more).
    let ask = [Message::user(
        "Write a short story about a lighthouse keeper, as JSON with a title and the story.",
    )];
    let (mut free, mut bound, mut lens) = (Vec::new(), Vec::new(), (Vec::new(), Vec::new()));
    for seed in 1..=rounds as u32 {
        let opts = RequestOptions::default().max_tokens(128).seed(seed);
        let b = client
            .chat(&ask, &opts.clone().json_schema(SCHEMA))
            .context("constrained")?;
        let a = client
            .chat(&ask, &opts.max_tokens(b.usage.generated_tokens.max(1)))
            .context("unconstrained")?;
        free.push(rate(a.usage.generated_tokens, a.usage.generation_time));
        bound.push(rate(b.usage.generated_tokens, b.usage.generation_time));
        lens.0.push(f64::from(a.usage.generated_tokens));
        lens.1.push(f64::from(b.usage.generated_tokens));
    }
    let (fr, br) = (median(free), median(bound));
    let mut table = Table::new([
        "generation",
        "tokens (median)",
        &format!("tokens/s (median of {rounds})"),
    ]);
    table
        .row([
            "unconstrained".into(),
            format!("{:.0}", median(lens.0)),
            format!("{fr:.1}"),
        ])
        .row([
            "JSON schema".into(),
            format!("{:.0}", median(lens.1)),
            format!("{br:.1}"),
        ]);
    table.print();
    println!(
        "Constrained / unconstrained tokens/s: {:.2}× (goal ≥ 0.8×).\n",
        br / fr
    );

    // Embeddings of ~100-token texts: one request of 32, and one text at a time.
    let texts: Vec<String> = (0..32).map(text_of).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let per_text = client.count_tokens(&texts[0]).context("count")?;
    client.embed(&refs[..1]).context("warm-up embedding")?;
    let (mut batched, mut single) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let e = client.embed(&refs).context("embeddings")?;
        anyhow::ensure!(
            e.count() == refs.len(),
            "{} vectors for {} texts",
            e.count(),
            refs.len()
        );
        batched.push(refs.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for r in &refs[..8] {
            client.embed(std::slice::from_ref(r)).context("one embedding")?;
        }
        single.push(8.0 / t.elapsed().as_secs_f64());
    }
    client.shutdown().context("shutdown")?;
    let mut table = Table::new(["embeddings", &format!("texts/s (median of {rounds})")]);
    table
        .row([
            format!("32 texts of {per_text} tokens per request"),
            format!("{:.1}", median(batched)),
        ])
        .row([
            format!("one text of {per_text} tokens per request"),
            format!("{:.1}", median(single)),
        ]);
    table.print();
    Ok(())
}
