//! Unit tests of the status codes and the boundary helpers.

use super::*;
use crate::boundary::*;
use crate::handles::*;
use std::ffi::{c_char, CStr};

#[test]
fn every_status_has_its_own_message() {
    let codes: Vec<Status> = (LSHM_OK..=LSHM_E_REQUEST_TOO_LARGE).collect();
    let mut seen = std::collections::HashSet::new();
    for code in codes {
        let m = message_of(code).to_str().unwrap();
        assert_ne!(m, "unknown status code", "code {code} has no message");
        assert!(seen.insert(m), "code {code} shares its message {m:?}");
    }
    assert_eq!(
        message_of(LSHM_E_REQUEST_TOO_LARGE + 1).to_str().unwrap(),
        "unknown status code"
    );
    assert_eq!(message_of(999).to_str().unwrap(), "unknown status code");
    assert_eq!(message_of(-1).to_str().unwrap(), "unknown status code");
}

#[test]
fn finish_values_are_the_wire_values() {
    use llama_shm::Finish;
    assert_eq!(Finish::Unknown.to_u32(), LSHM_FINISH_UNKNOWN);
    assert_eq!(Finish::Stop.to_u32(), LSHM_FINISH_STOP);
    assert_eq!(Finish::Length.to_u32(), LSHM_FINISH_LENGTH);
    assert_eq!(Finish::Cancelled.to_u32(), LSHM_FINISH_CANCELLED);
    assert_eq!(Finish::Deadline.to_u32(), LSHM_FINISH_DEADLINE);
    assert_eq!(Finish::Error.to_u32(), LSHM_FINISH_ERROR);
}

/// Every entry point runs its body through `run`: a panic there comes back as
/// `LSHM_E_PANIC` with its message, and unwinds no further.
#[test]
fn a_panic_becomes_a_status_not_an_unwind() {
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: `err` is a live out-pointer.
    let status = unsafe { run(&mut err, || panic!("planted for the test")) };
    assert_eq!(status, LSHM_E_PANIC);
    // SAFETY: `run` set `err` to a NUL-terminated string of ours.
    let msg = unsafe { CStr::from_ptr(err) }.to_str().unwrap().to_owned();
    assert!(msg.contains("planted for the test"), "{msg}");
    // SAFETY: a string returned by the library, freed once.
    unsafe { lshm_string_free(err) };
    // A body that succeeds reports OK and leaves no message.
    // SAFETY: as above.
    assert_eq!(unsafe { run(&mut err, || Ok(())) }, LSHM_OK);
    assert!(err.is_null());
}

#[test]
fn null_arguments_are_invalid_argument_not_a_crash() {
    let mut err: *mut c_char = std::ptr::null_mut();
    let mut resp = LshmResponse::EMPTY;
    // SAFETY: NULL handles and strings are what is being tested; the out-pointers are live.
    unsafe {
        let s = lshm_request(
            std::ptr::null_mut(),
            c"u".as_ptr(),
            c"s".as_ptr(),
            0,
            0,
            &mut resp,
            &mut err,
        );
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
        assert!(!err.is_null());
        assert!(CStr::from_ptr(err).to_str().unwrap().contains("client"));
        lshm_string_free(err);
        assert!(resp.text.is_null());
        let mut out: *mut LshmClient = std::ptr::null_mut();
        let s = lshm_client_new(
            std::ptr::null(),
            std::ptr::null(),
            2,
            0,
            &mut out,
            std::ptr::null_mut(),
        );
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
        assert!(out.is_null());
        assert_eq!(
            lshm_cancel(std::ptr::null(), std::ptr::null_mut()),
            LSHM_E_INVALID_ARGUMENT
        );
        assert_eq!(
            lshm_client_shutdown(std::ptr::null_mut(), std::ptr::null_mut()),
            LSHM_E_INVALID_ARGUMENT
        );
        lshm_client_free(std::ptr::null_mut());
        lshm_canceller_free(std::ptr::null_mut());
        lshm_string_free(std::ptr::null_mut());
        lshm_response_free(std::ptr::null_mut());
    }
}

#[test]
fn invalid_utf8_arguments_are_rejected_before_spawning() {
    let bad = [0xffu8, 0xfe, 0];
    let args = [bad.as_ptr().cast::<c_char>()];
    let mut out: *mut LshmClient = std::ptr::null_mut();
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: `args` holds one NUL-terminated (non-UTF-8) string; the out-pointers are live.
    let s = unsafe { lshm_client_new(c"/nonexistent".as_ptr(), args.as_ptr(), 1, 0, &mut out, &mut err) };
    assert_eq!(s, LSHM_E_INVALID_UTF8);
    assert!(out.is_null());
    // SAFETY: `err` was set by the call to a string of ours.
    unsafe {
        assert!(CStr::from_ptr(err).to_str().unwrap().contains("argv[0]"));
        lshm_string_free(err);
    }
}

#[test]
fn a_missing_worker_binary_is_worker_not_found() {
    let mut out: *mut LshmClient = std::ptr::null_mut();
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: valid strings and live out-pointers.
    let s = unsafe {
        lshm_client_new(
            c"/nonexistent/llama-shm-worker".as_ptr(),
            std::ptr::null(),
            0,
            0,
            &mut out,
            &mut err,
        )
    };
    assert_eq!(s, LSHM_E_WORKER_NOT_FOUND);
    assert!(out.is_null());
    // SAFETY: `err` was set by the call to a string of ours.
    unsafe {
        let m = CStr::from_ptr(err).to_str().unwrap().to_owned();
        lshm_string_free(err);
        assert!(m.contains("/nonexistent/llama-shm-worker"), "{m}");
    }
}

#[test]
fn malloc_string_keeps_the_bytes_and_adds_a_nul() {
    let p = malloc_string("é\u{0}x".as_bytes()).unwrap();
    // SAFETY: `p` holds 4 bytes and a NUL (just written).
    let got = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), 5) }.to_vec();
    // SAFETY: `p` is ours and freed once.
    unsafe { lshm_string_free(p) };
    assert_eq!(got, [0xc3, 0xa9, 0, b'x', 0]);
}

/// Calls `lshm_client_attach(prefix, options, ...)` and returns its status, whether it left
/// `*out_client` NULL, and its message (the library's string, freed here).
fn attach(prefix: *const c_char, options: *const LshmOptions) -> (Status, bool, Option<String>) {
    let mut out: *mut LshmClient = std::ptr::dangling_mut();
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: `prefix` is NULL or a NUL-terminated string (the callers'), `options` NULL or a
    // live struct; the out-pointers are live.
    let s = unsafe { lshm_client_attach(prefix, options, &mut out, &mut err) };
    let msg = (!err.is_null()).then(|| {
        // SAFETY: set by the call to a NUL-terminated string of ours, freed once.
        let m = unsafe { CStr::from_ptr(err) }.to_str().unwrap().to_owned();
        // SAFETY: as above.
        unsafe { lshm_string_free(err) };
        m
    });
    if s == LSHM_OK {
        // SAFETY: a live handle just made; detaching leaves any worker running.
        unsafe { lshm_client_free(out) };
    }
    (s, out.is_null(), msg)
}

#[test]
fn attaching_to_a_prefix_nobody_serves_is_lshm_e_attach_with_a_message() {
    let name = format!("lshm_ffi_none_{}", std::process::id());
    let prefix = std::ffi::CString::new(name.clone()).unwrap();
    assert!(
        !std::path::Path::new(&format!("/dev/shm/{name}_shared_mem")).exists(),
        "{name} is served"
    );
    let (s, null, msg) = attach(prefix.as_ptr(), std::ptr::null());
    assert_eq!(s, LSHM_E_ATTACH, "{msg:?}");
    assert!(null, "out_client must be NULL on failure");
    let msg = msg.expect("a message in out_error");
    assert!(msg.contains(&name), "{msg}");
    assert_ne!(message_of(s).to_str().unwrap(), "unknown status code");
    // Options are checked too, and the same way as for a spawn.
    let options = lshm_options_default();
    assert_eq!(attach(prefix.as_ptr(), &options).0, LSHM_E_ATTACH);
}

#[test]
fn attach_arguments_are_checked_before_anything_is_opened() {
    let (s, null, msg) = attach(std::ptr::null(), std::ptr::null());
    assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
    assert!(null);
    assert!(msg.unwrap().contains("prefix is NULL"));
    for bad in [c"", c"a/b", c"../etc", c"has space"] {
        let (s, null, msg) = attach(bad.as_ptr(), std::ptr::null());
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT, "{bad:?}: {msg:?}");
        assert!(null);
        assert!(msg.unwrap().starts_with("prefix "), "{bad:?}");
    }
    let long = std::ffi::CString::new("p".repeat(201)).unwrap();
    assert_eq!(attach(long.as_ptr(), std::ptr::null()).0, LSHM_E_INVALID_ARGUMENT);
    let not_utf8 = [b'p', 0xff, 0];
    assert_eq!(
        attach(not_utf8.as_ptr().cast(), std::ptr::null()).0,
        LSHM_E_INVALID_UTF8
    );
    let wrong_size = LshmOptions {
        struct_size: 8,
        ..lshm_options_default()
    };
    let (s, _, msg) = attach(c"lshm_ffi_unused".as_ptr(), &wrong_size);
    assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
    assert!(msg.unwrap().contains("struct_size"));
    let bad_policy = LshmOptions {
        prompt_policy: 7,
        ..lshm_options_default()
    };
    assert_eq!(
        attach(c"lshm_ffi_unused".as_ptr(), &bad_policy).0,
        LSHM_E_INVALID_ARGUMENT
    );
    // SAFETY: a NULL out_client is what is being tested.
    let s = unsafe {
        lshm_client_attach(
            c"lshm_ffi_unused".as_ptr(),
            std::ptr::null(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
}

/// A C host keeps SIGPIPE's default action (terminate the process), which the Rust test
/// harness replaces by "ignore": so the test restores the default first. A write to a pipe
/// nobody reads inside `no_sigpipe` then fails with EPIPE, and the signal is neither delivered
/// (the process would die) nor left pending, and the thread's mask is as before.
#[test]
fn a_sigpipe_raised_inside_an_entry_point_is_absorbed_not_fatal() {
    let mut fds = [0; 2];
    // SAFETY: plain libc calls on a local array and descriptors of our own.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
    }
    let (n, errno) = no_sigpipe(|| {
        // SAFETY: `fds[1]` is our pipe's write end; one byte from a static buffer.
        let n = unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        (n, std::io::Error::last_os_error().raw_os_error())
    });
    assert_eq!((n, errno), (-1, Some(libc::EPIPE)));
    assert!(!sigpipe_pending(), "the SIGPIPE was left pending");
    // SAFETY: as above; `mask` is a local set filled by pthread_sigmask.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        assert_eq!(
            libc::sigismember(&mask, libc::SIGPIPE),
            0,
            "SIGPIPE is still blocked"
        );
        libc::close(fds[1]);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// A message of `role` whose content is `text`.
fn message(role: u32, text: &[u8]) -> LshmMessage {
    LshmMessage {
        role,
        reserved: 0,
        content: text.as_ptr().cast(),
        content_len: text.len(),
    }
}

#[test]
fn messages_are_read_with_their_roles_and_checked() {
    use crate::request_args::read_messages;
    use llama_shm::{Message, Role};
    let ok = [
        message(LSHM_ROLE_SYSTEM, b"be terse"),
        message(LSHM_ROLE_USER, "h\u{e9}llo".as_bytes()),
        message(LSHM_ROLE_ASSISTANT, b""),
        // Pointer and length: a NUL inside is content, and no terminator is read.
        message(LSHM_ROLE_USER, b"a\0b|not this"),
    ];
    let mut four = ok;
    four[3].content_len = 3;
    // SAFETY: four live structs whose contents are live slices of their lengths.
    let got = unsafe { read_messages(four.as_ptr(), four.len()) }.ok().unwrap();
    assert_eq!(
        got,
        [
            Message::system("be terse"),
            Message::user("h\u{e9}llo"),
            Message::new(Role::Assistant, ""),
            Message::user("a\0b"),
        ]
    );
    // SAFETY: NULL with 0 messages is allowed; NULL with 2 is what is being tested.
    unsafe {
        assert!(read_messages(std::ptr::null(), 0).ok().unwrap().is_empty());
        let e = read_messages(std::ptr::null(), 2).err().unwrap();
        assert_eq!(e.status, LSHM_E_INVALID_ARGUMENT);
        assert!(e.message.contains("messages"), "{}", e.message);
    }
    let check = |m: LshmMessage, status: Status, says: &str| {
        let two = [message(LSHM_ROLE_USER, b"fine"), m];
        // SAFETY: two live structs; contents live or NULL, as each case says.
        let e = unsafe { read_messages(two.as_ptr(), 2) }.err().unwrap();
        assert_eq!(e.status, status, "{}", e.message);
        assert!(e.message.contains(says), "{} lacks {says}", e.message);
    };
    check(message(3, b"x"), LSHM_E_INVALID_ARGUMENT, "messages[1].role 3");
    check(
        LshmMessage {
            reserved: 1,
            ..message(LSHM_ROLE_USER, b"x")
        },
        LSHM_E_INVALID_ARGUMENT,
        "messages[1].reserved",
    );
    check(
        LshmMessage {
            content: std::ptr::null(),
            ..message(LSHM_ROLE_USER, b"xyz")
        },
        LSHM_E_INVALID_ARGUMENT,
        "messages[1].content",
    );
    check(
        message(LSHM_ROLE_USER, &[b'o', 0xff]),
        LSHM_E_INVALID_UTF8,
        "messages[1].content",
    );
    // A NULL content of length 0 is an empty message.
    let empty = [LshmMessage {
        content: std::ptr::null(),
        ..message(LSHM_ROLE_USER, b"")
    }];
    // SAFETY: one live struct with no content.
    let got = unsafe { read_messages(empty.as_ptr(), 1) }.ok().unwrap();
    assert_eq!(got, [Message::user("")]);
}

#[test]
fn request_options_are_read_and_checked() {
    use crate::request_args::read_request_options;
    use llama_shm::{Constraint, RequestOptions};
    use std::time::Duration;
    // SAFETY: NULL or live structs whose strings are NULL or static NUL-terminated ones.
    unsafe {
        assert_eq!(
            read_request_options(std::ptr::null()).ok().unwrap(),
            RequestOptions::default()
        );
        let d = lshm_request_options_default();
        assert_eq!(read_request_options(&d).ok().unwrap(), RequestOptions::default());
        let o = LshmRequestOptions {
            max_tokens: 7,
            deadline_ms: 250,
            seed: 42,
            drop_oldest: 1,
            json_schema: c"{\"type\":\"object\"}".as_ptr(),
            ..d
        };
        assert_eq!(
            read_request_options(&o).ok().unwrap(),
            RequestOptions {
                deadline: Some(Duration::from_millis(250)),
                max_tokens: Some(7),
                constraint: Some(Constraint::JsonSchema("{\"type\":\"object\"}".into())),
                seed: Some(42),
                drop_oldest: true,
            }
        );
        let g = LshmRequestOptions {
            grammar: c"root ::= \"yes\"".as_ptr(),
            ..d
        };
        assert_eq!(
            read_request_options(&g).ok().unwrap().constraint,
            Some(Constraint::Grammar("root ::= \"yes\"".into()))
        );
        let refused = |o: LshmRequestOptions, status: Status, says: &str| {
            let e = read_request_options(&o).err().unwrap();
            assert_eq!(e.status, status, "{}", e.message);
            assert!(e.message.contains(says), "{} lacks {says}", e.message);
        };
        refused(
            LshmRequestOptions { struct_size: 32, ..d },
            LSHM_E_INVALID_ARGUMENT,
            "struct_size is 32",
        );
        refused(
            LshmRequestOptions { drop_oldest: 2, ..d },
            LSHM_E_INVALID_ARGUMENT,
            "drop_oldest",
        );
        refused(
            LshmRequestOptions {
                json_schema: c"{}".as_ptr(),
                ..g
            },
            LSHM_E_INVALID_ARGUMENT,
            "both",
        );
        let bad = [b'{', 0xff, 0];
        refused(
            LshmRequestOptions {
                grammar: bad.as_ptr().cast(),
                ..d
            },
            LSHM_E_INVALID_UTF8,
            "options.grammar",
        );
    }
}

#[test]
fn the_new_entry_points_refuse_null_arguments_and_clear_their_outputs() {
    let mut err: *mut c_char = std::ptr::null_mut();
    let msgs = [message(LSHM_ROLE_USER, b"hi")];
    // SAFETY: NULL handles are what is being tested; the out-pointers are live; `msgs` is a
    // live array with a live content.
    unsafe {
        let mut resp = LshmResponse {
            text_len: 9,
            ..LshmResponse::EMPTY
        };
        let mut extras = LshmResponseExtras {
            struct_size: std::mem::size_of::<LshmResponseExtras>() as u32,
            dropped_messages: 77,
        };
        let s = lshm_chat(
            std::ptr::null_mut(),
            msgs.as_ptr(),
            1,
            std::ptr::null(),
            &mut resp,
            &mut extras,
            &mut err,
        );
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
        assert!(CStr::from_ptr(err).to_str().unwrap().contains("client"));
        lshm_string_free(err);
        assert_eq!(
            (resp.text_len, extras.dropped_messages),
            (0, 0),
            "outputs cleared"
        );
        // Extras of another size are refused before anything else is looked at.
        extras.struct_size = 4;
        let s = lshm_chat(
            std::ptr::null_mut(),
            msgs.as_ptr(),
            1,
            std::ptr::null(),
            &mut resp,
            &mut extras,
            &mut err,
        );
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
        assert!(CStr::from_ptr(err).to_str().unwrap().contains("struct_size is 4"));
        lshm_string_free(err);
        let s = lshm_chat(
            std::ptr::null_mut(),
            msgs.as_ptr(),
            1,
            std::ptr::null(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
        let s = lshm_chat_stream(
            std::ptr::null_mut(),
            msgs.as_ptr(),
            1,
            std::ptr::null(),
            None,
            std::ptr::null_mut(),
            &mut resp,
            std::ptr::null_mut(),
            &mut err,
        );
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
        assert!(CStr::from_ptr(err).to_str().unwrap().contains("on_chunk"));
        lshm_string_free(err);
        let s = lshm_request_with(
            std::ptr::null_mut(),
            c"u".as_ptr(),
            c"s".as_ptr(),
            std::ptr::null(),
            &mut resp,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
        let s = lshm_stream_with(
            std::ptr::null_mut(),
            c"u".as_ptr(),
            c"s".as_ptr(),
            std::ptr::null(),
            None,
            std::ptr::null_mut(),
            &mut resp,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT);

        let mut tokens = 5u32;
        let s = lshm_count_tokens(
            std::ptr::null_mut(),
            c"a b".as_ptr(),
            &mut tokens,
            std::ptr::null_mut(),
        );
        assert_eq!((s, tokens), (LSHM_E_INVALID_ARGUMENT, 0));
        let s = lshm_count_tokens(
            std::ptr::null_mut(),
            c"a b".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
        tokens = 5;
        let s = lshm_count_conversation_tokens(
            std::ptr::null_mut(),
            msgs.as_ptr(),
            1,
            &mut tokens,
            std::ptr::null_mut(),
        );
        assert_eq!((s, tokens), (LSHM_E_INVALID_ARGUMENT, 0));

        let mut e = LshmEmbeddings {
            values: std::ptr::null_mut(),
            count: 3,
            dim: 16,
        };
        let texts = [c"a".as_ptr()];
        let s = lshm_embed(
            std::ptr::null_mut(),
            texts.as_ptr(),
            1,
            &mut e,
            std::ptr::null_mut(),
        );
        assert_eq!((s, e.count, e.dim), (LSHM_E_INVALID_ARGUMENT, 0, 0));
        assert!(e.values.is_null());
        let s = lshm_embed(
            std::ptr::null_mut(),
            texts.as_ptr(),
            1,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(s, LSHM_E_INVALID_ARGUMENT);
        lshm_embeddings_free(std::ptr::null_mut());
        lshm_embeddings_free(&mut e);
    }
}
