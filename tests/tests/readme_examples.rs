//! The frontends' examples in the docs are real programs: `frontends/examples/hello.c`,
//! `Hello.cs` and `hello.py`. The lines between each file's markers (`// example:begin` and
//! `// example:end`, `# ...` in Python; flush left) are quoted verbatim by `frontends/README.md`
//! (its ```` ```c ````, ```` ```csharp ```` and ```` ```python ```` blocks), and every such block of
//! the top-level `README.md` must be one of them too. These tests check that, then compile and
//! run each program against the echo worker: it checks its answer itself and exits 0, leaving
//! nothing in `/dev/shm`. (The README's Rust blocks are doctests of the crate `llama-shm`.)
//!
//! The C and Python programs need `libllama_shm_ffi.so` (`cargo build --release -p
//! llama-shm-ffi`; `LLAMA_SHM_FFI_DIR`, else next to the worker): without it they fail. Without
//! `mcs` the C# test passes after saying why unless `LLAMA_SHM_REQUIRE_MONO` is set; without
//! python3 the Python test does the same unless `LLAMA_SHM_REQUIRE_FRONTENDS` is set.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use llama_shm_tests::{
    compile_c_against_ffi, entries_of, ffi_lib, llama_shm_dll, mcs_args, mono_available, python_that_imports,
    repo_root, run_bounded, worker_path, Ran, TempDir,
};

/// An example program: its file in `frontends/examples`, its comment leader, and the
/// info-string languages of the Markdown code blocks that quote it.
struct Example {
    file: &'static str,
    comment: &'static str,
    langs: &'static [&'static str],
}

const EXAMPLES: [Example; 3] = [
    Example {
        file: "hello.c",
        comment: "//",
        langs: &["c"],
    },
    Example {
        file: "Hello.cs",
        comment: "//",
        langs: &["csharp", "cs", "c#"],
    },
    Example {
        file: "hello.py",
        comment: "#",
        langs: &["python", "py", "python3"],
    },
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The lines strictly between the example's `<comment> example:begin` and `<comment>
/// example:end` lines (each exactly once, in that order), each followed by `\n`.
fn marked_region(ex: &Example) -> String {
    let path = repo_root().join("frontends/examples").join(ex.file);
    let text = read(&path);
    let lines: Vec<&str> = text.lines().collect();
    let find = |marker: &str| {
        let marker = format!("{} example:{marker}", ex.comment);
        let at: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].trim() == marker).collect();
        assert_eq!(
            at.len(),
            1,
            "{}: expected exactly one `{marker}` line, found {}",
            path.display(),
            at.len()
        );
        at[0]
    };
    let (begin, end) = (find("begin"), find("end"));
    assert!(
        begin + 1 < end,
        "{}: empty or inverted example region",
        path.display()
    );
    lines[begin + 1..end].iter().map(|l| format!("{l}\n")).collect()
}

/// A fenced code block of a Markdown file: the first word of its info string (lower case, cut
/// at `,` or `{`, e.g. `rust` for `rust,no_run`), its content (each line followed by `\n`) and
/// the line of its opening fence (1-based).
struct Block {
    lang: String,
    content: String,
    line: usize,
}

/// The fenced code blocks (backticks or tildes, three or more) of `markdown`.
fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(char, usize, Block)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let t = line.trim_start();
        let fence = t.chars().next().filter(|c| *c == '`' || *c == '~');
        let run = fence.map_or(0, |c| t.chars().take_while(|x| *x == c).count());
        match open.take() {
            Some((c, n, block)) if fence == Some(c) && run >= n && t[run..].trim().is_empty() => {
                blocks.push(block);
            }
            Some((c, n, mut block)) => {
                block.content.push_str(line);
                block.content.push('\n');
                open = Some((c, n, block));
            }
            None if run >= 3 => {
                let info = t[run..].trim().to_lowercase();
                let lang = info
                    .split(|ch: char| ch.is_whitespace() || ch == ',' || ch == '{')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let block = Block {
                    lang,
                    content: String::new(),
                    line: i + 1,
                };
                open = Some((fence.unwrap(), run, block));
            }
            None => {}
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    blocks
}

/// How a block and the region it should quote differ: both, line-numbered.
fn mismatch(doc: &str, block: &Block, ex: &Example, region: &str) -> String {
    let number = |s: &str| -> String {
        s.lines()
            .enumerate()
            .map(|(i, l)| format!("{:3}| {l}\n", i + 1))
            .collect()
    };
    format!(
        "the ```{} block of {doc} (line {}) is not the example region of frontends/examples/{} \
         verbatim; make it exactly the lines between the markers.\n--- {doc}\n{}--- {}\n{}",
        block.lang,
        block.line,
        ex.file,
        number(&block.content),
        ex.file,
        number(region)
    )
}

#[test]
fn frontends_readme_quotes_each_example_verbatim() {
    let doc = "frontends/README.md";
    let blocks = fenced_blocks(&read(&repo_root().join(doc)));
    for ex in &EXAMPLES {
        let region = marked_region(ex);
        let candidates: Vec<&Block> = blocks
            .iter()
            .filter(|b| ex.langs.contains(&b.lang.as_str()))
            .collect();
        assert!(
            !candidates.is_empty(),
            "{doc} has no ```{} block (it must quote frontends/examples/{})",
            ex.langs[0],
            ex.file
        );
        if !candidates.iter().any(|b| b.content == region) {
            panic!("{}", mismatch(doc, candidates[0], ex, &region));
        }
    }
}

/// Checks that every C, C# and Python block of the Markdown `text` (named `doc`) is the
/// marked region of its language's example; returns how many there are.
fn every_frontend_block_is_an_example(doc: &str, text: &str) -> Result<usize, String> {
    let mut checked = 0;
    for block in &fenced_blocks(text) {
        let Some(ex) = EXAMPLES.iter().find(|ex| ex.langs.contains(&block.lang.as_str())) else {
            continue;
        };
        let region = marked_region(ex);
        if block.content != region {
            return Err(mismatch(doc, block, ex, &region));
        }
        checked += 1;
    }
    Ok(checked)
}

#[test]
fn top_level_readme_frontend_blocks_are_the_examples() {
    let doc = "README.md";
    let checked = every_frontend_block_is_an_example(doc, &read(&repo_root().join(doc)))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{doc}: {checked} C/C#/Python block(s) checked against frontends/examples");
}

/// The checks themselves: fences of any length and kind are parsed, Rust and shell blocks are
/// not examples, a quoted region passes and a block one space off fails.
#[test]
fn the_block_checks_catch_a_drifted_block() {
    let py = marked_region(&EXAMPLES[2]);
    let c = marked_region(&EXAMPLES[0]);
    let good = format!(
        "# T\n\n```rust,no_run\nlet x = 1;\n```\n\n~~~sh\nls\n~~~\n\n````python\n{py}````\n\n```c\n{c}```\n"
    );
    assert_eq!(every_frontend_block_is_an_example("good.md", &good), Ok(2));
    let blocks = fenced_blocks(&good);
    let langs: Vec<&str> = blocks.iter().map(|b| b.lang.as_str()).collect();
    assert_eq!(langs, ["rust", "sh", "python", "c"]);
    assert_eq!(blocks[0].content, "let x = 1;\n");
    let drifted = good.replacen("(args=[", "(args= [", 1);
    let err = every_frontend_block_is_an_example("drifted.md", &drifted).unwrap_err();
    assert!(err.contains("```python block of drifted.md"), "{err}");
    let nested = "```markdown\n```c\nint x;\n```\n";
    assert_eq!(
        every_frontend_block_is_an_example("nested.md", nested),
        Ok(0),
        "only the outer block is one"
    );
}

/// Checks that an example program exited 0 and left nothing in `/dev/shm`.
fn check_ran(what: &str, ran: &Ran) {
    println!("--- {what}\n{}---", ran.out);
    assert_eq!(ran.status.code(), Some(0), "{what} failed:\n{}", ran.out);
    let left = entries_of(ran.pid);
    assert!(left.is_empty(), "left in /dev/shm by {what}: {left:?}");
}

#[test]
fn c_example_runs_against_the_echo_worker() {
    let dir = TempDir::new("readme_c");
    let exe = compile_c_against_ffi("frontends/examples/hello.c", &dir.0, "hello");
    let mut cmd = Command::new(&exe);
    cmd.arg(worker_path());
    let ran = run_bounded(cmd, &dir.0, Duration::from_secs(60));
    check_ran("hello.c", &ran);
    assert!(ran.out.contains("Be terse.\nHello"), "{}", ran.out);
}

#[test]
fn csharp_example_runs_against_the_echo_worker() {
    if !mono_available("csharp_example_runs_against_the_echo_worker") {
        return;
    }
    let lib = ffi_lib();
    let dir = TempDir::new("readme_cs");
    // Hello.exe uses LlamaShm.dll, which Mono finds beside it.
    let dll = llama_shm_dll(&dir.0);
    let exe = dir.0.join("Hello.exe");
    mcs_args(&[
        format!("-out:{}", exe.display()),
        format!("-r:{}", dll.display()),
        "../examples/Hello.cs".to_string(),
    ]);
    let mut cmd = Command::new("mono");
    // Mono's perf-counter area is a /dev/shm/mono.<pid> file: not wanted there.
    cmd.env("MONO_DISABLE_SHARED_AREA", "1")
        .env("LD_LIBRARY_PATH", lib.parent().unwrap())
        .arg(&exe)
        .arg(worker_path());
    let ran = run_bounded(cmd, &dir.0, Duration::from_secs(60));
    check_ran("mono Hello.exe", &ran);
    assert!(ran.out.contains("Be terse.\nHello"), "{}", ran.out);
}

#[test]
fn python_example_runs_against_the_echo_worker() {
    let test = "python_example_runs_against_the_echo_worker";
    let Some(python) = python_that_imports("ctypes") else {
        if std::env::var_os("LLAMA_SHM_REQUIRE_FRONTENDS").is_some() {
            panic!("{test}: no python3 but LLAMA_SHM_REQUIRE_FRONTENDS is set; install python3");
        }
        eprintln!("{test}: SKIPPED: no python3 (with ctypes)");
        return;
    };
    let lib = ffi_lib();
    let dir = TempDir::new("readme_py");
    // The source tree's package; ffi_frontends.rs runs hello.py against the installed wheel.
    let mut cmd = Command::new(&python);
    cmd.current_dir(&dir.0)
        .arg(repo_root().join("frontends/examples/hello.py"))
        .env("PYTHONPATH", repo_root().join("frontends/python"))
        .env("LLAMA_SHM_FFI_LIB", &lib)
        .env("LLAMA_SHM_WORKER", worker_path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let ran = run_bounded(cmd, &dir.0, Duration::from_secs(60));
    check_ran(&format!("{} hello.py", python.display()), &ran);
}
