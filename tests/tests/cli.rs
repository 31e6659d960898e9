//! The `llama-shm` command line: answers on stdout, one clear line on stderr and a non-zero
//! exit on failure, JSON output with usage.

use std::process::Command;

use llama_shm_tests::{cli_path, own_entries};

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
