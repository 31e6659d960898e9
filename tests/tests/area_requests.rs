//! Requests through the request area on the echo engine (no model): conversations longer than
//! the seed's fields, embeddings over several requests, counts, a pool; and a worker without
//! the area (the seed's) refusing them with a typed error instead of anything else.

use std::time::Duration;

use llama_shm::internals::client::{Client, RequestError, RequestOptions};
use llama_shm::{Message, ObjectKind, Pool, Prompts};
use llama_shm_tests::seed::SeedPeer;
use llama_shm_tests::{own_entries, unique_prefix, worker_path};

const T: Duration = Duration::from_secs(30);

fn echo() -> Client {
    Client::builder()
        .worker(worker_path())
        .echo_engine()
        .request_timeout(T)
        .spawn()
        .unwrap()
}

#[test]
fn a_conversation_far_over_the_seed_fields_arrives_whole_and_in_order() {
    let mut c = echo();
    let mut history = vec![Message::system("s")];
    for i in 0..40 {
        history.push(Message::user(format!("question {i}: {}", "q".repeat(500))));
        history.push(Message::assistant(format!("answer {i}: {}", "é".repeat(300))));
    }
    history.push(Message::user("last"));
    let expected: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
    let r = c.chat(&history, &RequestOptions::default()).unwrap();
    assert!(r.text.len() > 40_000, "{}", r.text.len());
    assert_eq!(r.text, expected.join("\n"));
    assert_eq!(r.dropped_messages, 0);
    let mut streamed = String::new();
    let r = c
        .chat_stream(&history[..3], &RequestOptions::default(), |chunk| {
            streamed.push_str(chunk)
        })
        .unwrap();
    assert_eq!(streamed, r.text);
    assert_eq!(r.text, expected[..3].join("\n"));
    // A two-prompt request after an area request is answered as two prompts.
    assert_eq!(c.send_request("u", "s").unwrap().text, "s\nu");
    c.shutdown().unwrap();
    assert!(own_entries().is_empty());
}

#[test]
fn a_request_larger_than_the_area_is_refused_before_it_is_sent() {
    let mut c = echo();
    let huge = [Message::user("x".repeat(1 << 20))];
    match c.chat(&huge, &RequestOptions::default()) {
        Err(RequestError::RequestTooLarge { len, max }) => assert_eq!((len, max), ((1 << 20) + 8, 1 << 20)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.embed(&[&"y".repeat(1 << 20)]),
        Err(RequestError::RequestTooLarge { .. })
    ));
    // Nothing was sent: the client is not waiting for a late answer.
    assert_eq!(
        c.chat(&[Message::user("ok")], &RequestOptions::default())
            .unwrap()
            .text,
        "ok"
    );
    c.shutdown().unwrap();
}

#[test]
fn embeddings_of_many_texts_come_over_several_requests_in_order() {
    let mut c = echo();
    // 300 texts of 4 KB: 1.2 MB, more than one request area holds.
    let texts: Vec<String> = (0..300)
        .map(|i| format!("{i:04} {}", "abcdefgh".repeat(500)))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let all = c.embed(&refs).unwrap();
    assert_eq!(all.count(), 300);
    // Each vector is the one of its text sent alone (another request, another position).
    for i in [0, 1, 150, 254, 255, 256, 299] {
        let alone = c.embed(&refs[i..=i]).unwrap();
        assert_eq!(alone.count(), 1);
        assert_eq!(all.vector(i), alone.vector(0), "text {i}");
    }
    assert_ne!(all.vector(0), all.vector(1));
    let same = c.embed(&["same", "same", "other"]).unwrap();
    assert_eq!(same.vector(0), same.vector(1));
    assert_ne!(same.vector(0), same.vector(2));
    c.shutdown().unwrap();
}

#[test]
fn counts_and_a_constraint_the_engine_cannot_apply() {
    let mut c = echo();
    // The echo engine counts whitespace-separated words.
    assert_eq!(c.count_tokens("one two  three").unwrap(), 3);
    assert_eq!(
        c.count_conversation_tokens(&[Message::system("a b"), Message::user("c")])
            .unwrap(),
        3
    );
    // Never an unconstrained answer: a typed error, and no text.
    let mut chunks = 0;
    let r = c.chat_stream(
        &[Message::user("hi")],
        &RequestOptions::default().json_schema("{}"),
        |_| chunks += 1,
    );
    assert!(matches!(r, Err(RequestError::Unsupported { .. })), "{r:?}");
    let r = c.request(
        Prompts::user("hi"),
        &RequestOptions::default().grammar("root ::= \"a\""),
    );
    assert!(matches!(r, Err(RequestError::Unsupported { .. })), "{r:?}");
    assert_eq!(chunks, 0);
    c.shutdown().unwrap();
}

#[test]
fn a_pool_answers_conversations_and_embeddings() {
    let pool = Pool::new(
        Client::builder()
            .worker(worker_path())
            .echo_engine()
            .request_timeout(T),
        2,
    )
    .unwrap();
    let r = pool
        .chat(
            &[Message::user("a"), Message::assistant("b"), Message::user("c")],
            &RequestOptions::default(),
        )
        .unwrap();
    assert_eq!(r.text, "a\nb\nc");
    assert_eq!(pool.embed(&["x", "y"]).unwrap().count(), 2);
    assert_eq!(pool.shutdown(), 0);
}

#[test]
fn a_seed_era_worker_gets_two_prompts_and_nothing_else() {
    let prefix = unique_prefix("areaseed");
    let worker = SeedPeer::create(prefix.as_str());
    let server = std::thread::spawn(move || {
        worker.serve(Duration::from_secs(2), |user, system| {
            format!("[{system}|{user}]")
        })
    });
    let mut c = Client::builder()
        .request_timeout(Duration::from_secs(2))
        .attach(&prefix)
        .unwrap();
    assert_eq!(c.kind(), ObjectKind::Seed);
    for r in [
        c.chat(&[Message::user("hi")], &RequestOptions::default())
            .map(|_| ()),
        c.embed(&["hi"]).map(|_| ()),
        c.count_tokens("hi").map(|_| ()),
        c.request(Prompts::user("hi"), &RequestOptions::default().seed(3))
            .map(|_| ()),
    ] {
        assert!(matches!(r, Err(RequestError::Unsupported { .. })), "{r:?}");
    }
    // Nothing was sent: the seed worker answers the next plain request as the first.
    assert_eq!(c.send_request("u", "s").unwrap().text, "[s|u]");
    c.detach();
    assert_eq!(server.join().unwrap(), 1);
    let _ = llama_shm::internals::objects::unlink_prefix(&prefix);
}

#[test]
fn a_batching_worker_takes_area_requests_in_every_slot() {
    use llama_shm_tests::{batching_echo, slot_names, terminate};
    let prefix = unique_prefix("areabatch");
    let worker = batching_echo(&prefix, 2, &[]);
    std::thread::scope(|s| {
        for t in 0..3 {
            let prefix = &prefix;
            s.spawn(move || {
                let mut c = Client::builder().request_timeout(T).attach(prefix).unwrap();
                for i in 0..20 {
                    let history = [
                        Message::user(format!("t{t}")),
                        Message::assistant("a"),
                        Message::user(format!("i{i}")),
                    ];
                    let r = c.chat(&history, &RequestOptions::default()).unwrap();
                    assert_eq!(r.text, format!("t{t}\na\ni{i}"));
                    let e = c.embed(&[&format!("t{t}"), "same"]).unwrap();
                    assert_eq!(e.count(), 2);
                    assert_eq!(c.count_tokens("a b c").unwrap(), 3);
                }
                c.detach();
            });
        }
    });
    assert_eq!(terminate(worker), Some(0));
    assert_eq!(slot_names(&prefix, 2), 0);
}

/// The creator of the objects only sizes the area; the worker says it takes area requests
/// when it attaches (an older worker on objects a newer client made never does, so that
/// client sends it two prompts, not records it would take for a corrupted request).
#[test]
fn the_creator_sizes_the_area_and_only_a_worker_says_it_takes_it() {
    use llama_shm::internals::objects::{create, unlink, ExtInit};
    use llama_shm::internals::protocol::Region;
    use llama_shm::internals::wire::layout::{Word32, AREA_LEN, FEATURE_REQUEST_AREA};
    let prefix = unique_prefix("areacreator");
    let ch = create(&prefix, 0o600, ExtInit::default()).unwrap();
    assert_eq!(ch.region.load32(Word32::AreaSize) as usize, AREA_LEN);
    assert_eq!(ch.region.area_len(), AREA_LEN);
    assert_eq!(ch.region.load32(Word32::Features) & FEATURE_REQUEST_AREA, 0);
    assert!(!ch.area_supported());
    unlink(&ch).unwrap();
    drop(ch);
    assert!(own_entries().is_empty());
}
