//! The hand-written header `include/llama_shm.h` against the Rust sources (`src/status.rs`,
//! `src/handles.rs`, `src/entry.rs`, `src/attach.rs`, `src/conversation.rs`,
//! `src/request_args.rs`, `src/embed.rs`):
//! every exported function is declared with the same number of parameters, every status,
//! finish and role constant has the same value, and every struct C sees (`lshm_response`,
//! `lshm_options`, `lshm_message`, `lshm_request_options`, `lshm_response_extras`,
//! `lshm_embeddings`) has the same fields in the same order with matching types — so the two
//! cannot drift apart.

use std::collections::BTreeMap;

const HEADER: &str = include_str!("../include/llama_shm.h");
/// The Rust side: every source file that declares part of the C ABI.
const SOURCE: &str = concat!(
    include_str!("../src/status.rs"),
    include_str!("../src/handles.rs"),
    include_str!("../src/entry.rs"),
    include_str!("../src/attach.rs"),
    include_str!("../src/conversation.rs"),
    include_str!("../src/request_args.rs"),
    include_str!("../src/embed.rs"),
);

/// The text between the `(` at `open` and its matching `)`.
fn parenthesised(text: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after offset {open}");
}

fn count_params(list: &str) -> usize {
    let list = list.trim();
    if list.is_empty() || list == "void" {
        return 0;
    }
    list.split(',').filter(|p| !p.trim().is_empty()).count()
}

/// `#[no_mangle]` functions of the Rust source: name → parameter count.
fn rust_functions() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (at, _) in SOURCE.match_indices("#[no_mangle]") {
        let rest = &SOURCE[at..];
        let fn_at = rest.find("fn ").expect("a function after #[no_mangle]");
        let name_start = fn_at + 3;
        let open = name_start + rest[name_start..].find('(').unwrap();
        let name = rest[name_start..open].trim().to_string();
        assert!(
            name.starts_with("lshm_"),
            "exported {name} lacks the lshm_ prefix"
        );
        out.insert(name, count_params(parenthesised(rest, open)));
    }
    out
}

/// Function declarations of the header: name → parameter count.
fn header_functions() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let code = strip_comments(HEADER);
    for (at, _) in code.match_indices("lshm_") {
        let name_end = at
            + code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap();
        if !code[name_end..].starts_with('(') {
            continue;
        }
        let before = code[..at].trim_end();
        // A declaration, not a use: the name follows a return type (`T name(` or `T *name(`).
        if before.ends_with(|c: char| c.is_alphanumeric() || c == '*') {
            out.insert(
                code[at..name_end].to_string(),
                count_params(parenthesised(&code, name_end)),
            );
        }
    }
    out
}

fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("*/").expect("unterminated comment") + start + 2;
        out.push(' ');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `LSHM_*` constants: name → value, from `pub const NAME: T = V;` in Rust.
fn rust_constants() -> BTreeMap<String, i64> {
    SOURCE
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const LSHM_"))
        .map(|l| {
            let (name, rest) = l.split_once(':').unwrap();
            let value = rest.split_once('=').unwrap().1.trim().trim_end_matches(';');
            (format!("LSHM_{name}"), value.parse().unwrap())
        })
        .collect()
}

/// `LSHM_*` enumerators: name → value, from `NAME = V,` in the header.
fn header_constants() -> BTreeMap<String, i64> {
    strip_comments(HEADER)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LSHM_"))
        .filter_map(|l| {
            let (name, value) = l.split_once('=')?;
            Some((
                format!("LSHM_{}", name.trim()),
                value.trim().trim_end_matches(',').parse().unwrap(),
            ))
        })
        .collect()
}

#[test]
fn every_exported_function_is_declared_with_the_same_arity() {
    let rust = rust_functions();
    let header = header_functions();
    assert!(rust.len() >= 13, "found only {rust:?} in src/");
    assert_eq!(rust, header, "src/ (left) and include/llama_shm.h (right) differ");
}

#[test]
fn every_constant_has_the_same_value() {
    let rust = rust_constants();
    let header = header_constants();
    assert!(rust.contains_key("LSHM_E_INVALID_ARGUMENT") && rust.contains_key("LSHM_FINISH_CANCELLED"));
    assert_eq!(rust, header, "src/ (left) and include/llama_shm.h (right) differ");
}

/// Struct fields as (name, C type), in order.
type Fields = Vec<(String, String)>;

/// The fields of `pub struct {rust}` in the Rust source and of `typedef struct {c}` in the
/// header, as (name, C type) in order.
fn struct_fields(rust: &str, c: &str) -> (Fields, Fields) {
    let rust_body = SOURCE
        .split(&format!("pub struct {rust} {{"))
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    let rust: Vec<(String, String)> = rust_body
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .map(|l| {
            let (name, ty) = l.split_once(':').unwrap();
            let c = match ty.trim().trim_end_matches(',') {
                "*mut c_char" => "char *",
                "*const c_char" => "const char *",
                "*mut f32" => "float *",
                "usize" => "size_t",
                "u32" => "uint32_t",
                "u64" => "uint64_t",
                other => panic!("no C type known for {other}"),
            };
            (name.trim().to_string(), c.to_string())
        })
        .collect();
    let code = strip_comments(HEADER);
    let c_body = code
        .split(&format!("typedef struct {c} {{"))
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    let c: Vec<(String, String)> = c_body
        .split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let split = d.rfind([' ', '*']).unwrap() + 1;
            let ty = d[..split].split_whitespace().collect::<Vec<_>>().join(" ");
            (d[split..].to_string(), ty.replace("char*", "char *"))
        })
        .collect();
    (rust, c)
}

#[test]
fn the_response_struct_has_the_same_fields_and_types() {
    let (rust, c) = struct_fields("LshmResponse", "lshm_response");
    assert_eq!(rust.len(), 11);
    assert_eq!(rust, c, "LshmResponse (left) and lshm_response (right) differ");
}

#[test]
fn the_options_struct_has_the_same_fields_and_types() {
    let (rust, c) = struct_fields("LshmOptions", "lshm_options");
    assert_eq!(rust.len(), 9);
    assert_eq!(rust, c, "LshmOptions (left) and lshm_options (right) differ");
}

#[test]
fn the_conversation_structs_have_the_same_fields_and_types() {
    for (rust, c, n) in [
        ("LshmMessage", "lshm_message", 4),
        ("LshmRequestOptions", "lshm_request_options", 7),
        ("LshmResponseExtras", "lshm_response_extras", 2),
        ("LshmEmbeddings", "lshm_embeddings", 3),
    ] {
        let (r, h) = struct_fields(rust, c);
        assert_eq!(r.len(), n, "{rust}: {r:?}");
        assert_eq!(r, h, "{rust} (left) and {c} (right) differ");
    }
}

/// The sizes C computes for `struct_size` are the ones the library checks: on LP64 every
/// field of these structs is naturally aligned, with no padding a compiler could place
/// differently.
#[test]
fn the_versioned_structs_have_the_sizes_the_library_checks() {
    use llama_shm_ffi::*;
    assert_eq!(std::mem::size_of::<LshmRequestOptions>(), 40);
    assert_eq!(std::mem::size_of::<LshmResponseExtras>(), 8);
    assert_eq!(std::mem::size_of::<LshmMessage>(), 24);
    assert_eq!(std::mem::size_of::<LshmEmbeddings>(), 24);
    assert_eq!(lshm_request_options_default().struct_size, 40);
}
