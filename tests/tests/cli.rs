//! The `llama-shm` command line: answers on stdout, one clear line on stderr and a non-zero
//! exit on failure, JSON output with usage; `ls` and `clean` over the objects in /dev/shm.

use std::process::Command;

use llama_shm::internals::wire::names::Prefix;
use llama_shm_tests::{
    cli_path, own_entries, shm_entries, standalone_echo, terminate, unique_prefix, UnlinkOnDrop,
    STANDALONE_NAMES,
};

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(cli_path()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ask_with_the_echo_engine_prints_only_the_answer() {
    let (code, out, err) = run(&["ask", "--engine", "echo", "--system", "S", "hello"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "S\nhello\n");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn ask_json_carries_text_and_usage() {
    let (code, out, err) = run(&["ask", "--engine", "echo", "--json", "--system", "", "x"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["text"], "\nx");
    assert_eq!(v["truncated"], false);
    assert!(v["usage"]["prompt_tokens"].is_number());
}

#[test]
fn ask_on_the_default_model_answers_paris() {
    let (code, out, err) = run(&[
        "ask",
        "--greedy",
        "What is the capital of France? Answer in one sentence.",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Paris"), "{out:?}");
}

#[test]
fn missing_model_is_one_line_on_stderr_and_exit_3() {
    let (code, out, err) = run(&["ask", "--model", "/nonexistent/m.gguf", "hi"]);
    assert_eq!(code, Some(3));
    assert!(out.is_empty());
    assert!(
        err.starts_with("llama-shm: ") && err.contains("/nonexistent/m.gguf"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(own_entries().is_empty());
}

#[test]
fn attach_to_a_missing_prefix_fails_clearly() {
    let (code, _, err) = run(&["ask", "--attach", "lst_no_such_prefix", "hi"]);
    assert_eq!(code, Some(3));
    assert!(err.contains("does not exist"), "{err}");
}

// --- `ls` and `clean` ---------------------------------------------------------------------------

/// `ls --json` restricted to `prefix`: its one entry, if listed.
fn ls_entry(prefix: &Prefix) -> Option<serde_json::Value> {
    let (code, out, err) = run(&["ls", "--json", "--prefix", prefix.as_str()]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let list = v.as_array().expect("ls --json prints an array");
    assert!(list.len() <= 1, "{out}");
    list.first().cloned()
}

/// The table line of `ls` for `prefix`.
fn ls_line(prefix: &Prefix) -> String {
    let (code, out, err) = run(&["ls"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !out.contains('\x1b'),
        "colour codes while stdout is not a terminal: {out}"
    );
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(prefix.as_str()))
        .unwrap_or_else(|| panic!("{prefix} not listed:\n{out}"))
        .to_string()
}

/// Lines of `out` that say `verb` about a name of `prefix`.
fn said(out: &str, verb: &str, prefix: &Prefix) -> Vec<String> {
    out.lines()
        .filter(|l| {
            l.starts_with(verb)
                && (l.contains(&format!("/{prefix}_")) || l.contains(&format!("/sem.{prefix}_")))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn ls_shows_a_running_standalone_worker_as_live() {
    let prefix = unique_prefix("lslive");
    let worker = standalone_echo(&prefix, &[]);
    let pid = worker.id();

    let line = ls_line(&prefix);
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "live", "{line}");
    assert_eq!(cols[2], pid.to_string(), "{line}");
    assert!(line.contains("shm ready prompts response"), "{line}");

    let e = ls_entry(&prefix).expect("listed");
    assert_eq!(e["prefix"], prefix.as_str());
    assert_eq!(e["state"], "live");
    assert_eq!(e["kind"], "extended");
    assert_eq!(e["creator_pid"], pid);
    assert_eq!(e["creator_alive"], true);
    assert_eq!(e["complete"], true);
    assert_eq!(e["mode"], "0600");
    assert_eq!(e["owner_uid"], nix::unistd::geteuid().as_raw());
    // The seed region, the gap, the extension page and the 1 MiB request area.
    assert_eq!(e["size"], 49152 + (1 << 20));
    assert!(e["mapped_by"].as_array().unwrap().contains(&pid.into()), "{e}");

    assert_eq!(terminate(worker), Some(0));
    assert!(shm_entries(&prefix).is_empty());
    assert_eq!(ls_entry(&prefix), None);
}

#[test]
fn killed_worker_is_dead_and_clean_removes_exactly_its_objects() {
    let live = unique_prefix("cllive");
    let dead = unique_prefix("cldead");
    let live_worker = standalone_echo(&live, &[]);
    let dead_worker = standalone_echo(&dead, &[]);
    let _cleanup = UnlinkOnDrop(dead.clone());
    let dead_pid = dead_worker.id();
    llama_shm_tests::kill_with_guardian(dead_worker, &dead);
    assert_eq!(
        shm_entries(&dead).len(),
        STANDALONE_NAMES,
        "a worker SIGKILLed with its guardian leaves its names"
    );

    let line = ls_line(&dead);
    assert_eq!(line.split_whitespace().nth(1), Some("dead"), "{line}");
    let e = ls_entry(&dead).expect("listed");
    assert_eq!(e["state"], "dead");
    assert_eq!(e["creator_pid"], dead_pid);
    assert_eq!(e["creator_alive"], false);
    assert_eq!(e["mapped_by"], serde_json::json!([]));
    assert_eq!(ls_entry(&live).expect("listed")["state"], "live");

    // A dry run over everything names the dead set's five objects, not the live one's, and
    // removes nothing.
    let (code, out, err) = run(&["clean", "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(said(&out, "would remove", &dead).len(), STANDALONE_NAMES, "{out}");
    assert!(said(&out, "would remove", &live).is_empty(), "{out}");
    assert_eq!(shm_entries(&dead).len(), STANDALONE_NAMES);

    // The live set is never removed.
    let (code, out, err) = run(&["clean", "--prefix", live.as_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("kept {live}: in use")), "{out}");
    assert_eq!(shm_entries(&live).len(), STANDALONE_NAMES);

    let (code, out, err) = run(&["clean", "--prefix", dead.as_str()]);
    assert_eq!(code, Some(0), "{err}");
    let removed = said(&out, "removed", &dead);
    assert_eq!(removed.len(), STANDALONE_NAMES, "{out}");
    for name in [
        format!("removed /dev/shm/{dead}_shared_mem"),
        format!("removed /dev/shm/sem.{dead}_sem_ready"),
        format!("removed /dev/shm/sem.{dead}_sem_prompts_written"),
        format!("removed /dev/shm/sem.{dead}_sem_response_written"),
        format!("removed /dev/shm/sem.{dead}_sem_chunk_ready"),
    ] {
        assert!(removed.contains(&name), "{name} not in {out}");
    }
    assert!(shm_entries(&dead).is_empty(), "{:?}", shm_entries(&dead));
    assert_eq!(ls_entry(&dead), None);

    // The live worker is untouched and still answers.
    assert_eq!(shm_entries(&live).len(), STANDALONE_NAMES);
    let (code, out, err) = run(&["ask", "--attach", live.as_str(), "--system", "S", "still here"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "S\nstill here\n");
    assert_eq!(terminate(live_worker), Some(0));
    assert!(shm_entries(&live).is_empty());
}

#[test]
fn seed_era_objects_are_listed_as_seed_and_removed_only_when_unmapped_and_asked() {
    use llama_shm_tests::seed::SeedPeer;
    // Mapped by this process (a seed-style worker): listed as seed, mapped by us, kept.
    let mapped = unique_prefix("lsseedm");
    let peer = SeedPeer::create(mapped.as_str());
    let e = ls_entry(&mapped).expect("listed");
    assert_eq!(e["state"], "seed", "{e}");
    assert_eq!(e["kind"], "seed", "{e}");
    assert_eq!(e["creator_pid"], serde_json::Value::Null);
    assert_eq!(e["size"], 40961);
    assert!(
        e["mapped_by"]
            .as_array()
            .unwrap()
            .contains(&std::process::id().into()),
        "{e}"
    );
    let (code, out, err) = run(&["clean", "--include-seed", "--prefix", mapped.as_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(said(&out, "removed", &mapped).is_empty(), "{out}");
    assert_eq!(shm_entries(&mapped).len(), 4);
    drop(peer);
    assert!(shm_entries(&mapped).is_empty());

    // Created and left behind by a seed-style process (nothing maps it any more).
    let left = unique_prefix("lsseedl");
    let _cleanup = UnlinkOnDrop(left.clone());
    create_unmapped_seed_objects(&left);
    let e = ls_entry(&left).expect("listed");
    assert_eq!(e["state"], "seed", "{e}");
    assert_eq!(e["mapped_by"], serde_json::json!([]));
    assert!(e["detail"].as_str().unwrap().contains("not mapped"), "{e}");
    let (code, out, err) = run(&["clean", "--prefix", left.as_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("--include-seed"), "{out}");
    assert_eq!(shm_entries(&left).len(), 4);
    let (code, out, err) = run(&["clean", "--include-seed", "--prefix", left.as_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(said(&out, "removed", &left).len(), 4, "{out}");
    assert!(shm_entries(&left).is_empty());
}

/// The seed's four objects (a 40961-byte object without extension page), created and then
/// closed, as a crashed seed-era chatbot leaves them.
fn create_unmapped_seed_objects(prefix: &Prefix) {
    llama_shm_tests::seed::SeedPeer::create(prefix.as_str()).leave();
}

// --- `chat`, Ctrl-C, `bench` ---------------------------------------------------------------------

fn run_with_stdin(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut child = Command::new(cli_path())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The echo engine answers a conversation with its messages' contents, one per line, so each
/// answer shows the conversation the worker received: the whole history, as messages.
#[test]
fn chat_sends_the_whole_conversation_as_messages() {
    let (code, out, err) = run_with_stdin(
        &["chat", "--engine", "echo", "--system", "S"],
        "hello\nsecond\n/reset\nthird\n",
    );
    assert_eq!(code, Some(0), "{err}");
    // Turn 1: the system message and the question. Turn 2: and turn 1's answer. After /reset:
    // the system message and the question again.
    assert_eq!(out, "S\nhello\nS\nhello\nS\nhello\nsecond\nS\nthird\n", "{err}");
    assert!(err.contains("forgotten"), "{err}");
    // Messages far over the old 4 KiB fields go whole.
    let long = "x".repeat(6000);
    let (code, out, err) = run_with_stdin(
        &["chat", "--engine", "echo", "--system", ""],
        &format!("{long}\nlast\n"),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("{long}\n{long}\n{long}\nlast\n"));
}

/// The oldest turns go when the conversation no longer fits the model's context, and a note
/// says so (the model: the echo engine has no context).
#[test]
fn chat_drops_the_oldest_turns_when_the_context_is_full() {
    let long = "Tell me a long story about the sea and the ships on it. ".repeat(6);
    let input = format!("{long}\n{long}\n{long}\n{long}\nlast\n");
    let (code, out, err) = run_with_stdin(
        &[
            "chat",
            "--greedy",
            "--worker-arg=--ctx=256",
            "--worker-arg=--max-tokens=8",
        ],
        &input,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("oldest message(s) no longer fit"),
        "no note about dropped turns: {err}"
    );
    let answers = out.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(answers >= 5, "{answers} answers for 5 turns: {out}");
}

#[test]
fn a_schema_or_grammar_the_engine_cannot_apply_is_an_error_not_an_unconstrained_answer() {
    let dir = std::env::temp_dir().join(format!("lshm-cli-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("s.json");
    std::fs::write(&schema, r#"{"type": "object"}"#).unwrap();
    let out = Command::new(cli_path())
        .args(["ask", "--engine", "echo", "--json-schema"])
        .arg(&schema)
        .arg("hi")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = Command::new(cli_path())
        .args([
            "ask",
            "--engine",
            "echo",
            "--grammar",
            "/nonexistent/g.gbnf",
            "hi",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    // The model applies it: an answer from the grammar.
    let g = dir.join("g.gbnf");
    std::fs::write(&g, "root ::= \"yes\" | \"no\"\n").unwrap();
    let out = Command::new(cli_path())
        .args(["ask", "--greedy", "--grammar"])
        .arg(&g)
        .arg("Is the sky blue?")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text == "yes\n" || text == "no\n", "{text:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tokens_and_embed_print_counts_and_vectors() {
    let out = Command::new(cli_path())
        .args(["tokens", "--engine", "echo", "one two three"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "3\n");
    let out = Command::new(cli_path())
        .args(["embed", "--engine", "echo", "a", "b"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["index"], 1);
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), 16);
    assert_ne!(lines[0]["embedding"], lines[1]["embedding"]);
}

/// Ctrl-C (SIGINT) during an answer cancels it: the partial answer is printed, exit 130, and
/// nothing is left behind.
#[test]
fn ctrl_c_cancels_the_answer_and_exits_130() {
    // 400 bytes in ≤4-byte pieces, 20 ms each: about 2 s unless interrupted.
    let prompt = "z".repeat(400);
    let child = Command::new(cli_path())
        .args([
            "ask",
            "--engine",
            "echo",
            "--system",
            "",
            "--worker-arg=--echo-piece-us=20000",
        ])
        .arg(&prompt)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    let partial = stdout.trim_end();
    assert!(
        !partial.is_empty() && partial.len() < prompt.len(),
        "{} bytes",
        partial.len()
    );
    assert!(prompt.starts_with(partial.trim_start()), "{partial:?}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(own_entries().is_empty());
}

#[test]
fn bench_runs_every_transport_section_and_prints_tables() {
    let (code, out, err) = run(&["bench", "--iters", "200", "--kills", "3", "--no-llm"]);
    assert_eq!(code, Some(0), "{err}");
    for needle in [
        "shm, adaptive wait",
        "shm, blocking wait",
        "unix socket",
        "pipe pair",
        "tcp loopback",
        "http+json",
        "spawn to ready",
        "worker SIGKILLed mid-request",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }
    assert!(own_entries().is_empty());
}

#[test]
fn bench_only_runs_the_sections_asked_for() {
    let (code, out, err) = run(&["bench", "--kills", "3", "--only", "lifecycle"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("spawn to ready"), "{out}");
    // Both binaries, and the goals judged on the echo-only one (built with the workspace).
    assert!(out.contains("spawn to ready, echo-only binary"), "{out}");
    assert!(out.contains("spawn to ready, llama-linked binary"), "{out}");
    assert!(out.contains("death noticed p50, echo-only binary"), "{out}");
    for absent in [
        "unix socket",
        "LLM through the worker",
        "One model, many clients",
        "seed floor",
    ] {
        assert!(!out.contains(absent), "{absent:?} ran:\n{out}");
    }
    assert!(own_entries().is_empty());
}

/// The batch-IPC section streams to eight clients from the model and from the echo engine at
/// the model's pace, prints its goal rows, and leaves nothing behind (the figures are the
/// benchmark's, not the test's).
#[test]
fn bench_batch_ipc_streams_to_eight_clients_and_cleans_up() {
    let (code, out, err) = run(&["bench", "--batch-requests", "8", "--only", "batch-ipc"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Streaming to 8 clients at once"), "{out}");
    assert!(out.contains("| echo at the model's pace | 512 |"), "{out}");
    assert_eq!(out.matches("(< 1 %)").count(), 2, "{out}");
    // Whatever the machine, the IPC is a small part of a model's step: a share of even 50 %
    // is a unit or bookkeeping error (per-run totals against per-token figures, say).
    for line in out.lines().filter(|l| l.contains("(< 1 %)")) {
        let share: f64 = line
            .split('|')
            .nth(4)
            .and_then(|c| c.trim().trim_end_matches(" %").parse().ok())
            .unwrap_or_else(|| panic!("no share in {line:?}"));
        assert!(share.is_finite() && share < 50.0, "{line}");
    }
    assert!(own_entries().is_empty());
    assert!(
        !std::fs::read_dir("/dev/shm").unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("lshm_bench_ipc")),
        "batch-ipc names left in /dev/shm"
    );
}

/// The seed floor's minimal worker and seed-style client run, check every answer, and leave
/// nothing behind (its figures are the benchmark's, not the test's).
#[test]
fn bench_seed_floor_measures_both_workers_and_cleans_up() {
    let (code, out, err) = run(&["bench", "--iters", "200", "--only", "seed-floor"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("The seed floor"), "{out}");
    assert_eq!(out.matches("goal ≤ 1.15×").count(), 4, "{out}");
    assert!(
        !std::fs::read_dir("/dev/shm").unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("lshm_bench_seed")),
        "seed-floor names left in /dev/shm"
    );
}
