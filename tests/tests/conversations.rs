//! Conversations, structured output, embeddings and token counts on the default model
//! (SmolLM2-135M-Instruct) through the request area. Real model, no mocks.

use std::process::{Command, Stdio};
use std::time::Duration;

use llama_shm::internals::client::{Client, RequestError, RequestOptions};
use llama_shm::{Finish, Message};
use llama_shm_tests::{eventually, slot_names, terminate, unique_prefix, worker_path, ChildGuard};

fn spawn(args: &[&str]) -> Client {
    Client::builder()
        .worker(worker_path())
        .startup_timeout(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(180))
        .args(["--engine", "llama"])
        .args(args)
        .spawn()
        .unwrap()
}

const QUESTIONS: [&str; 10] = [
    "Name a fruit.",
    "What colour is it?",
    "Name another fruit.",
    "Which of the two is sweeter?",
    "Name a vegetable.",
    "Is it green?",
    "Name a drink.",
    "Is it hot or cold?",
    "Name a city.",
    "Which country is it in?",
];

/// Runs the conversation of [`QUESTIONS`] (each answer appended as the assistant's message);
/// returns each turn's answer, prompt tokens and cached tokens.
fn converse(c: &mut Client, turns: usize) -> Vec<(String, u32, u32)> {
    let mut history = vec![Message::system(
        "You are a helpful assistant. Answer in a few words.",
    )];
    let mut out = Vec::new();
    for q in &QUESTIONS[..turns] {
        history.push(Message::user(*q));
        let r = c.chat(&history, &RequestOptions::default()).unwrap();
        assert_eq!(r.dropped_messages, 0);
        out.push((r.text.clone(), r.usage.prompt_tokens, r.usage.cached_tokens));
        history.push(Message::assistant(r.text));
    }
    out
}

#[test]
fn a_ten_turn_conversation_evaluates_only_each_turns_new_tokens() {
    let mut c = spawn(&["--greedy", "--max-tokens", "24"]);
    let turns = converse(&mut c, 10);
    eprintln!("(answer, prompt tokens, cached tokens) per turn: {turns:#?}");
    for (i, pair) in turns.windows(2).enumerate() {
        let ((_, before, _), (answer, prompt, cached)) = (&pair[0], &pair[1]);
        // The whole previous prompt is reused, and what is evaluated is the new user message,
        // the end of the previous answer's turn and the template's markup around them.
        assert!(
            cached >= before,
            "turn {}: {cached} cached of the previous {before}",
            i + 2
        );
        let new = prompt - cached;
        assert!(
            new <= 40,
            "turn {}: {new} tokens evaluated of {prompt} ({answer:?})",
            i + 2
        );
    }
    let (_, last_prompt, last_cached) = turns.last().unwrap();
    assert!(*last_prompt > 150, "ten turns are {last_prompt} tokens");
    assert!(f64::from(*last_cached) / f64::from(*last_prompt) > 0.8);
    c.shutdown().unwrap();
}

#[test]
fn greedy_answers_are_the_same_with_and_without_the_prefix_cache() {
    let mut cached = spawn(&["--greedy", "--max-tokens", "24"]);
    let with = converse(&mut cached, 4);
    cached.shutdown().unwrap();
    let mut uncached = spawn(&["--greedy", "--max-tokens", "24", "--no-prefix-cache"]);
    let without = converse(&mut uncached, 4);
    uncached.shutdown().unwrap();
    for (i, (a, b)) in with.iter().zip(&without).enumerate() {
        assert_eq!(a.0, b.0, "turn {} differs with the cache", i + 1);
        assert_eq!(a.1, b.1, "turn {}: other prompt tokens", i + 1);
        assert_eq!(b.2, 0, "the uncached worker reused {} tokens", b.2);
    }
    assert!(
        with[1..].iter().all(|t| t.2 > 0),
        "the cached worker reused nothing: {with:?}"
    );
}

#[test]
fn a_conversation_over_the_context_is_a_typed_error_unless_the_oldest_turns_may_go() {
    let mut c = spawn(&["--greedy", "--max-tokens", "8", "--ctx", "256"]);
    let mut history = vec![Message::system("Be brief.")];
    for i in 0..12 {
        history.push(Message::user(format!(
            "Tell me about the number {i} in some detail, please."
        )));
        history.push(Message::assistant(format!(
            "The number {i} is a number that comes after {}.",
            i + 1
        )));
    }
    history.push(Message::user("And the number 99?"));
    let counted = c.count_conversation_tokens(&history).unwrap();
    match c.chat(&history, &RequestOptions::default()) {
        Err(e @ RequestError::PromptTooLong { tokens, limit }) => {
            assert_eq!(tokens, u64::from(counted), "the count and the error disagree");
            assert!(tokens > limit);
            assert_eq!(e.tokens_over(), Some(tokens - limit));
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    let r = c
        .chat(&history, &RequestOptions::default().drop_oldest())
        .unwrap();
    assert!(
        r.dropped_messages >= 2 && r.dropped_messages % 2 == 0,
        "{}",
        r.dropped_messages
    );
    assert!(r.usage.prompt_tokens <= 256);
    // What was kept is the system message and the newest turns: counting them agrees.
    let kept: Vec<Message> = std::iter::once(history[0].clone())
        .chain(history[1 + r.dropped_messages as usize..].iter().cloned())
        .collect();
    assert_eq!(c.count_conversation_tokens(&kept).unwrap(), r.usage.prompt_tokens);
    c.shutdown().unwrap();
}

const SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "maxLength": 24},
    "age": {"type": "integer"},
    "colour": {"enum": ["red", "green", "blue"]},
    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3}
  },
  "required": ["name", "age", "colour", "hobbies"],
  "additionalProperties": false
}"#;

/// Whether `v` is what [`SCHEMA`] accepts (checked by hand, field by field).
fn validates(v: &serde_json::Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["age", "colour", "hobbies", "name"] {
        return Err(format!("keys {keys:?}"));
    }
    let name = o["name"].as_str().ok_or("name is not a string")?;
    if name.chars().count() > 24 {
        return Err("name too long".into());
    }
    if !o["age"].is_i64() && !o["age"].is_u64() {
        return Err(format!("age {:?} is not an integer", o["age"]));
    }
    if !["red", "green", "blue"].contains(&o["colour"].as_str().ok_or("colour is not a string")?) {
        return Err(format!("colour {:?}", o["colour"]));
    }
    let hobbies = o["hobbies"].as_array().ok_or("hobbies is not an array")?;
    if hobbies.len() > 3
        || !hobbies
            .iter()
            .all(|h| h.as_str().is_some_and(|s| s.chars().count() <= 16))
    {
        return Err(format!("hobbies {hobbies:?}"));
    }
    Ok(())
}

#[test]
fn answers_constrained_by_a_json_schema_parse_and_validate_in_20_seeded_runs() {
    // Sampled (temperature 0.7), not greedy: each seed gives another answer, all must pass.
    let mut c = spawn(&["--max-tokens", "160"]);
    let messages = [
        Message::system("You answer with JSON only."),
        Message::user("Describe a person: name, age, favourite colour and hobbies."),
    ];
    let mut answers = std::collections::HashSet::new();
    for seed in 1..=20 {
        let opts = RequestOptions::default().json_schema(SCHEMA).seed(seed);
        let r = c.chat(&messages, &opts).unwrap();
        assert_eq!(
            r.finish,
            Finish::Stop,
            "seed {seed}: cut at the budget: {:?}",
            r.text
        );
        let v: serde_json::Value =
            serde_json::from_str(&r.text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {:?}", r.text));
        validates(&v).unwrap_or_else(|e| panic!("seed {seed}: {e}: {}", r.text));
        eprintln!("seed {seed}: {}", r.text);
        answers.insert(r.text);
    }
    assert!(
        answers.len() > 1,
        "20 seeds gave one answer: the seed is not used"
    );
    // The same seed gives the same answer.
    let opts = RequestOptions::default().json_schema(SCHEMA).seed(7);
    let a = c.chat(&messages, &opts).unwrap().text;
    let b = c.chat(&messages, &opts).unwrap().text;
    assert_eq!(a, b);
    c.shutdown().unwrap();
}

#[test]
fn a_grammar_constrains_the_answer_and_a_budget_cut_says_length() {
    let mut c = spawn(&["--greedy", "--max-tokens", "64"]);
    let q = [Message::user("Is water wet? Explain at length.")];
    let opts = RequestOptions::default().grammar(r#"root ::= ("yes" | "no") "." "#);
    let r = c.chat(&q, &opts).unwrap();
    assert!(r.text == "yes." || r.text == "no.", "{:?}", r.text);
    assert_eq!(r.finish, Finish::Stop);
    // Two prompts take a constraint too.
    let r = c
        .request(llama_shm::Prompts::user("Is fire hot?"), &opts)
        .unwrap();
    assert!(r.text == "yes." || r.text == "no.", "{:?}", r.text);
    // Cut by the token budget: the caller is told it may not parse.
    let cut = c
        .chat(&q, &RequestOptions::default().json_schema(SCHEMA).max_tokens(4))
        .unwrap();
    assert_eq!(cut.finish, Finish::Length, "{:?}", cut.text);
    assert!(serde_json::from_str::<serde_json::Value>(&cut.text).is_err());
    c.shutdown().unwrap();
}

#[test]
fn an_invalid_schema_or_grammar_is_a_typed_error_before_any_token() {
    let mut c = spawn(&["--greedy", "--max-tokens", "16"]);
    let q = [Message::user("Say something.")];
    for opts in [
        RequestOptions::default().json_schema("{\"type\": \"object\", "),
        RequestOptions::default().json_schema("[1, 2"),
        RequestOptions::default().grammar("root ::= ( \"a\""),
        RequestOptions::default().grammar("start ::= \"a\""),
        RequestOptions::default().grammar(""),
    ] {
        let mut chunks = 0;
        match c.chat_stream(&q, &opts, |_| chunks += 1) {
            Err(RequestError::InvalidConstraint { message }) => assert!(!message.is_empty()),
            other => panic!("{:?}: expected InvalidConstraint, got {other:?}", opts.constraint),
        }
        assert_eq!(chunks, 0, "{:?}: text came before the error", opts.constraint);
    }
    // The worker is still there.
    assert!(!c.chat(&q, &RequestOptions::default()).unwrap().text.is_empty());
    c.shutdown().unwrap();
}

#[test]
fn embeddings_of_identical_texts_are_identical_of_different_texts_differ_and_have_the_models_dimension() {
    let mut c = spawn(&["--greedy"]);
    let texts = [
        "The cat sat on the mat.",
        "The cat sat on the mat.",
        "Stock markets fell sharply today.",
    ];
    let e = c.embed(&texts).unwrap();
    // SmolLM2-135M's embedding length.
    assert_eq!((e.count(), e.dim), (3, 576));
    let (a, b, d) = (e.vector(0).unwrap(), e.vector(1).unwrap(), e.vector(2).unwrap());
    assert_eq!(a, b);
    assert_ne!(a, d);
    for v in [a, d] {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
    let cos: f32 = a.iter().zip(d).map(|(x, y)| x * y).sum();
    assert!(cos < 0.9999, "different texts, cosine {cos}");
    // The same text alone, or among others, embeds the same (batching does not change it).
    let alone = c.embed(&texts[2..]).unwrap();
    let close = alone
        .vector(0)
        .unwrap()
        .iter()
        .zip(d)
        .all(|(x, y)| (x - y).abs() < 1e-3);
    assert!(close, "batched and alone differ");
    c.shutdown().unwrap();
}

#[test]
fn token_counts_agree_with_what_the_worker_evaluates() {
    let mut c = spawn(&["--greedy", "--max-tokens", "4"]);
    assert_eq!(c.count_tokens("").unwrap(), 0);
    let n = c.count_tokens("Hello world, this is a test.").unwrap();
    assert!((5..=12).contains(&n), "{n}");
    let conv = [
        Message::system("Be brief."),
        Message::user("Hello world, this is a test."),
    ];
    let counted = c.count_conversation_tokens(&conv).unwrap();
    assert!(counted > n);
    let r = c.chat(&conv, &RequestOptions::default()).unwrap();
    assert_eq!(r.usage.prompt_tokens, counted);
    // Two prompts and the same conversation are the same prompt.
    let r = c
        .request(
            llama_shm::Prompts::user(conv[1].content.as_str()).with_system("Be brief."),
            &RequestOptions::default(),
        )
        .unwrap();
    assert_eq!(r.usage.prompt_tokens, counted);
    c.shutdown().unwrap();
}

#[test]
fn a_batching_worker_serves_conversations_schemas_and_embeddings_too() {
    let prefix = unique_prefix("convbatch");
    let worker = ChildGuard::worker(
        Command::new(worker_path())
            .args([
                "--engine",
                "llama",
                "--greedy",
                "--max-tokens",
                "96",
                "--parallel",
                "2",
            ])
            .args(["--prefix", prefix.as_str()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        &prefix,
    );
    assert!(
        eventually(Duration::from_secs(60), || slot_names(&prefix, 2) == 13),
        "slots not created"
    );
    let mut c = Client::builder()
        .request_timeout(Duration::from_secs(180))
        .attach(&prefix)
        .unwrap();
    let history = [
        Message::user("Name a fruit."),
        Message::assistant("Apple."),
        Message::user("Another?"),
    ];
    let r = c.chat(&history, &RequestOptions::default()).unwrap();
    assert!(!r.text.is_empty());
    let r = c
        .chat(
            &[Message::user("Describe a person as JSON.")],
            &RequestOptions::default().json_schema(SCHEMA),
        )
        .unwrap();
    validates(&serde_json::from_str(&r.text).unwrap()).unwrap();
    assert_eq!(c.embed(&["a", "b"]).unwrap().count(), 2);
    assert!(c.count_tokens("one two").unwrap() >= 2);
    drop(c);
    assert_eq!(terminate(worker), Some(0));
    assert_eq!(slot_names(&prefix, 2), 0, "names left behind");
}

#[test]
fn a_worker_embeds_with_the_model_it_was_given_for_embeddings_and_refuses_a_missing_one() {
    // The default model again, loaded a second time for embeddings only.
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = model.canonicalize().unwrap();
    let mut c = spawn(&["--greedy", "--embedding-model", model.to_str().unwrap()]);
    let e = c.embed(&["one text", "another text"]).unwrap();
    assert_eq!((e.count(), e.dim), (2, 576));
    c.shutdown().unwrap();
    let mut c = spawn(&[
        "--greedy",
        "--max-tokens",
        "4",
        "--embedding-model",
        "/nonexistent/e.gguf",
    ]);
    match c.embed(&["text"]) {
        Err(RequestError::Unsupported { message }) => {
            assert!(message.contains("/nonexistent/e.gguf"), "{message}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // Asked again: the same typed error, and generation still works.
    assert!(matches!(
        c.embed(&["text"]),
        Err(RequestError::Unsupported { .. })
    ));
    assert!(!c
        .chat(&[Message::user("Hi")], &RequestOptions::default())
        .unwrap()
        .text
        .is_empty());
    c.shutdown().unwrap();
}
