//! `llama-shm embed` and `llama-shm tokens`, and the `--json-schema` / `--grammar` options of
//! `ask` and `chat`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use llama_shm::Constraint;

use crate::{connect, disconnect, exit, ConnArgs};

/// What the answer must match (read from a file).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConstraintArgs {
    /// Constrain the answer to JSON that this JSON schema (a file) accepts; a schema the
    /// worker cannot compile is an error before anything is generated.
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    json_schema: Option<PathBuf>,
    /// Constrain the answer to this GBNF grammar (a file; start rule `root`).
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
}

impl ConstraintArgs {
    /// The constraint the options name, read from its file.
    pub(crate) fn load(&self) -> Result<Option<Constraint>, (u8, String)> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|e| (exit::USAGE, format!("cannot read {}: {e}", p.display())))
        };
        Ok(match (&self.json_schema, &self.grammar) {
            (Some(s), _) => Some(Constraint::JsonSchema(read(s)?)),
            (None, Some(g)) => Some(Constraint::Grammar(read(g)?)),
            (None, None) => None,
        })
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct EmbedArgs {
    /// The texts to embed (one vector each).
    #[arg(required = true)]
    texts: Vec<String>,
    /// Give up after SECS seconds (start-up and the request each).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TokensArgs {
    /// The text to count (with --system, --user or none of them: a conversation's prompt).
    text: Option<String>,
    /// Count a conversation's prompt (the chat template included) with this system message.
    #[arg(long, conflicts_with = "text")]
    system: Option<String>,
    /// Count a conversation's prompt with this user message.
    #[arg(long, conflicts_with = "text")]
    user: Option<String>,
    /// Give up after SECS seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    conn: ConnArgs,
}

/// `llama-shm embed`: one JSON line per text, `{"index", "embedding"}`.
pub(crate) fn embed(args: &EmbedArgs) -> Result<(), (u8, String)> {
    let mut client = connect(&args.conn, Duration::from_secs(args.timeout))?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let result = client.embed(&texts);
    disconnect(client, args.conn.attach.is_some());
    let e = result.map_err(|e| (exit::REQUEST, format!("request failed: {e}")))?;
    let mut out = std::io::stdout().lock();
    for i in 0..e.count() {
        let line = serde_json::json!({ "index": i, "embedding": e.vector(i).unwrap_or_default() });
        writeln!(out, "{line}").map_err(|e| (exit::REQUEST, format!("writing: {e}")))?;
    }
    Ok(())
}

/// `llama-shm tokens`: the count on stdout.
pub(crate) fn tokens(args: &TokensArgs) -> Result<(), (u8, String)> {
    let mut client = connect(&args.conn, Duration::from_secs(args.timeout))?;
    let result = match &args.text {
        Some(t) => client.count_tokens(t),
        None => {
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(llama_shm::Message::system(s.as_str()));
            }
            messages.push(llama_shm::Message::user(args.user.clone().unwrap_or_default()));
            client.count_conversation_tokens(&messages)
        }
    };
    disconnect(client, args.conn.attach.is_some());
    let n = result.map_err(|e| (exit::REQUEST, format!("request failed: {e}")))?;
    println!("{n}");
    Ok(())
}
