//! The C ABI (`crates/llama-shm-ffi`) through its frontends, against the real worker:
//! - `tests/c/smoke.c`, compiled with `cc -Wall -Wextra -Werror` against the header and the
//!   cdylib: exact echo answers, streaming, a cancel from a second pthread, NULL arguments;
//! - the Python package `frontends/python` (ctypes), through its pytest suite.
//!
//! Both need `libllama_shm_ffi.so` (`cargo build --release -p llama-shm-ffi`; found through
//! `LLAMA_SHM_FFI_DIR`, else next to the worker): without it they fail, saying so. The Python
//! test needs `pytest` (apt `python3-pytest`, installed by `ci/setup`); without it it prints why
//! and passes, unless `LLAMA_SHM_REQUIRE_FRONTENDS` is set (as `ci/test` does): then it fails.
//! Each checks that the process it ran left nothing in `/dev/shm` and exited 0.

use std::process::Command;
use std::time::Duration;

use llama_shm_tests::{
    compile_c_against_ffi, entries_of, ffi_lib, python_that_imports, repo_root, run_bounded, worker_path,
    TempDir,
};

#[test]
fn c_smoke_program_passes_against_the_echo_worker() {
    let dir = TempDir::new("ffi_c");
    let exe = compile_c_against_ffi("crates/llama-shm-ffi/tests/c/smoke.c", &dir.0, "smoke");

    let mut cmd = Command::new(&exe);
    cmd.arg(worker_path());
    let ran = run_bounded(cmd, &dir.0, Duration::from_secs(60));
    println!("--- smoke\n{}---", ran.out);
    assert_eq!(ran.status.code(), Some(0), "smoke.c failed:\n{}", ran.out);
    assert!(ran.out.contains("smoke: all checks passed"), "{}", ran.out);
    let left = entries_of(ran.pid);
    assert!(left.is_empty(), "left in /dev/shm by the C program: {left:?}");
}

#[test]
fn python_client_passes_its_pytest_suite() {
    let test = "python_client_passes_its_pytest_suite";
    let Some(python) = python_that_imports("pytest") else {
        if std::env::var_os("LLAMA_SHM_REQUIRE_FRONTENDS").is_some() {
            panic!("{test}: no python3 with pytest but LLAMA_SHM_REQUIRE_FRONTENDS is set; run ci/setup (python3-pytest)");
        }
        eprintln!("{test}: SKIPPED: no python3 with pytest; install python3-pytest (ci/setup)");
        return;
    };
    let lib = ffi_lib();
    let dir = TempDir::new("ffi_py");
    let mut cmd = Command::new(&python);
    cmd.current_dir(repo_root().join("frontends/python"))
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .env("LLAMA_SHM_FFI_LIB", &lib)
        .env("LLAMA_SHM_WORKER", worker_path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let ran = run_bounded(cmd, &dir.0, Duration::from_secs(300));
    println!(
        "--- {} -m pytest frontends/python/tests\n{}---",
        python.display(),
        ran.out
    );
    assert_eq!(
        ran.status.code(),
        Some(0),
        "the Python suite failed:\n{}",
        ran.out
    );
    assert!(ran.out.contains(" passed"), "{}", ran.out);
    let left = entries_of(ran.pid);
    assert!(left.is_empty(), "left in /dev/shm by the Python suite: {left:?}");
}
