//! The architecture as rules the source must keep (issue 13): imports point down the layers
//! (wire → os → protocol → objects → client/worker), the binaries and the C ABI stay off the
//! wire, `unsafe` stays in `os/` and the C ABI, and no source file holds more than 500 lines
//! before its tests. Each rule names the file and line that breaks it.

use std::path::{Path, PathBuf};

use llama_shm_tests::repo_root;

/// Every `.rs` file below `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The code lines of a file (comments and doc comments left out), numbered from 1.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

/// `file:line: text` for every code line under `dir` that contains one of `needles`.
fn offending(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(dir) {
        for (n, line) in code_lines(&file) {
            if needles.iter().any(|needle| line.contains(needle)) {
                found.push(format!("{}:{n}: {}", file.display(), line.trim()));
            }
        }
    }
    found
}

fn core(sub: &str) -> PathBuf {
    repo_root().join("crates/llama-shm/src").join(sub)
}

#[test]
fn the_wire_imports_nothing_from_the_layers_above() {
    let above = [
        "crate::os",
        "crate::protocol",
        "crate::objects",
        "crate::client",
        "crate::worker",
    ];
    let found = offending(&core("wire"), &above);
    assert!(
        found.is_empty(),
        "wire/ imports from above:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_protocol_imports_neither_the_os_nor_what_is_built_on_it() {
    let above = ["crate::os", "crate::objects", "crate::client", "crate::worker"];
    let found = offending(&core("protocol"), &above);
    assert!(
        found.is_empty(),
        "protocol/ imports from os or above:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_os_layer_does_not_import_the_protocol_or_above() {
    let above = [
        "crate::protocol",
        "crate::objects",
        "crate::client",
        "crate::worker",
    ];
    let found = offending(&core("os"), &above);
    assert!(found.is_empty(), "os/ imports from above:\n{}", found.join("\n"));
}

/// Every crate of the workspace (the folders of `crates/`), so a new one is checked too.
fn crates() -> Vec<String> {
    let mut all: Vec<String> = std::fs::read_dir(repo_root().join("crates"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    all.sort();
    assert!(all.len() >= 5, "crates/ holds {all:?}");
    all
}

#[test]
fn the_binaries_and_the_c_abi_do_not_import_the_wire() {
    let mut found = Vec::new();
    for krate in crates().iter().filter(|k| *k != "llama-shm") {
        let src = repo_root().join("crates").join(krate).join("src");
        found.extend(offending(&src, &["llama_shm::wire", "internals::wire"]));
    }
    assert!(found.is_empty(), "imports of the wire:\n{}", found.join("\n"));
}

#[test]
fn unsafe_lives_only_in_os_and_the_c_abi() {
    // And the loom models' thread scope, compiled only under `--cfg loom` (loom has no scoped
    // threads: it lends the scope's borrows to loom threads it joins before returning).
    let allowed = [
        core("os"),
        repo_root().join("crates/llama-shm-ffi/src"),
        core("sync/loom_thread.rs"),
    ];
    let mut found = Vec::new();
    for krate in crates() {
        let src = repo_root().join("crates").join(krate).join("src");
        found.extend(
            offending(&src, &["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"])
                .into_iter()
                .filter(|hit| !allowed.iter().any(|a| hit.starts_with(&*a.to_string_lossy()))),
        );
    }
    assert!(
        found.is_empty(),
        "unsafe outside os/ and the C ABI:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_source_file_holds_more_than_500_lines_before_its_tests() {
    let mut found = Vec::new();
    for krate in crates() {
        for file in rust_files(&repo_root().join("crates").join(krate).join("src")) {
            // A test module in a file of its own is a test file, not a source file.
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let before = lines
                .windows(2)
                .position(|w| w[0].starts_with("#[cfg(test)]") && w[1].starts_with("mod tests"))
                .unwrap_or(lines.len());
            if before > 500 {
                found.push(format!("{}: {before} lines", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "files over 500 lines before their tests:\n{}",
        found.join("\n")
    );
}
