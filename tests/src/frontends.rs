//! The frontends' tool chains: the C ABI library, scratch directories, Mono's C# compiler,
//! Python and the C compiler.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::workers::worker_path;

/// The directory holding the C ABI library `libllama_shm_ffi.so` (crate `llama-shm-ffi`):
/// `$LLAMA_SHM_FFI_DIR` if set, else the worker binary's directory (`target/release`).
pub fn ffi_lib_dir() -> PathBuf {
    match std::env::var_os("LLAMA_SHM_FFI_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => worker_path()
            .parent()
            .expect("the worker path has a directory")
            .to_path_buf(),
    }
}

/// `libllama_shm_ffi.so` in [`ffi_lib_dir`]; panics (failing the test, never skipping it)
/// with the command that builds it when it is missing.
pub fn ffi_lib() -> PathBuf {
    let lib = ffi_lib_dir().join("libllama_shm_ffi.so");
    assert!(
        lib.exists(),
        "{} not found: build it with `cargo build --release -p llama-shm-ffi` \
         (or point LLAMA_SHM_FFI_DIR at the directory holding it)",
        lib.display()
    );
    lib
}

/// The repository's root directory (the parent of this crate's).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A scratch directory `<temp>/lst_<name>_<pid>`, created empty and removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `<temp>/lst_<name>_<pid>`, first removing whatever an earlier run left there.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lst_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles the C# files `sources` of `frontends/csharp` with Mono's `mcs` (C# 7) into
/// `dir/<exe_name>` and returns that path; panics with the compiler's output if it fails.
pub fn mcs(dir: &Path, sources: &[&str], exe_name: &str) -> PathBuf {
    let exe = dir.join(exe_name);
    let out = Command::new("mcs")
        .current_dir(repo_root().join("frontends/csharp"))
        .arg("-langversion:7")
        .arg(format!("-out:{}", exe.display()))
        .args(sources)
        .output()
        .expect("running mcs");
    assert!(
        out.status.success(),
        "mcs failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// A Python interpreter that can `import module`: `$LLAMA_SHM_PYTHON`, else `python3` on the
/// PATH, else the system's `/usr/bin/python3` (also when a version manager shadows `python3`).
pub fn python_that_imports(module: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("LLAMA_SHM_PYTHON") {
        Some(p) => vec![p.into()],
        None => vec!["python3".into(), "/usr/bin/python3".into()],
    };
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Whether Mono's C# compiler `mcs` is usable; `false` (after printing why) means skip `test`.
/// Panics instead when `LLAMA_SHM_REQUIRE_MONO` is set (as `ci/test` does).
pub fn mono_available(test: &str) -> bool {
    let mcs = Command::new("mcs")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mcs {
        return true;
    }
    if std::env::var_os("LLAMA_SHM_REQUIRE_MONO").is_some() {
        panic!("{test}: `mcs` (Mono C# compiler) not found but LLAMA_SHM_REQUIRE_MONO is set; run ci/setup --extra");
    }
    eprintln!("{test}: SKIPPED: `mcs` (Mono C# compiler) not found; install it with ci/setup --extra");
    false
}

/// Compiles the C program `source` (a path below the repository root) against the C ABI
/// (`llama_shm.h`, `libllama_shm_ffi`) with warnings as errors into `dir/<exe>`; panics with
/// the compiler's output when it fails. Returns the executable's path.
pub fn compile_c_against_ffi(source: &str, dir: &Path, exe: &str) -> PathBuf {
    let lib = ffi_lib();
    let lib_dir = ffi_lib_dir();
    let out = dir.join(exe);
    let cc = Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-std=c11"])
        .arg(repo_root().join(source))
        .arg("-I")
        .arg(repo_root().join("crates/llama-shm-ffi/include"))
        .arg(format!("-L{}", lib_dir.display()))
        .args(["-lllama_shm_ffi", "-lpthread"])
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("running cc (gcc)");
    assert!(
        cc.status.success(),
        "compiling {source} against {} failed:\n{}{}",
        lib.display(),
        String::from_utf8_lossy(&cc.stdout),
        String::from_utf8_lossy(&cc.stderr)
    );
    out
}

/// Runs Mono's `mcs` (C# 7) in `frontends/csharp` with `args`; panics with the compiler's
/// output if it fails.
pub fn mcs_args(args: &[String]) {
    let out = Command::new("mcs")
        .current_dir(repo_root().join("frontends/csharp"))
        .arg("-langversion:7")
        .args(args)
        .output()
        .expect("running mcs");
    assert!(
        out.status.success(),
        "mcs {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `.cs` files of `frontends/csharp/<folder>`, sorted, as paths relative to
/// `frontends/csharp`.
pub fn csharp_sources(folder: &str) -> Vec<String> {
    let dir = repo_root().join("frontends/csharp").join(folder);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cs"))
        .map(|n| format!("{folder}/{n}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .cs files in {}", dir.display());
    files
}

/// Compiles the C# library `LlamaShm.dll` (`frontends/csharp/LlamaShm/*.cs` and the seed-API
/// `LlamaCppLinuxClient.cs`) with its XML documentation `LlamaShm.xml` into `dir`; returns the
/// DLL's path.
pub fn llama_shm_dll(dir: &Path) -> PathBuf {
    let dll = dir.join("LlamaShm.dll");
    let mut args = vec![
        "-target:library".to_string(),
        format!("-out:{}", dll.display()),
        format!("-doc:{}", dir.join("LlamaShm.xml").display()),
    ];
    args.extend(csharp_sources("LlamaShm"));
    args.push("LlamaCppLinuxClient.cs".to_string());
    mcs_args(&args);
    dll
}

/// NUnit 2.6's framework assembly: `$LLAMA_SHM_NUNIT_FRAMEWORK`, else Debian's
/// (`libnunit-framework2.6.3-cil`), if it exists.
pub fn nunit_framework() -> Option<PathBuf> {
    let path = std::env::var_os("LLAMA_SHM_NUNIT_FRAMEWORK")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/cli/nunit.framework-2.6.3/nunit.framework.dll"));
    path.exists().then_some(path)
}

/// Whether `mcs`, `nunit-console` and NUnit's framework assembly are there; `false` (after
/// printing why) means skip `test`. Panics instead when `LLAMA_SHM_REQUIRE_MONO` is set.
pub fn nunit_available(test: &str) -> bool {
    if !mono_available(test) {
        return false;
    }
    let console = Command::new("nunit-console")
        .arg("-help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if console && nunit_framework().is_some() {
        return true;
    }
    if std::env::var_os("LLAMA_SHM_REQUIRE_MONO").is_some() {
        panic!(
            "{test}: nunit-console or nunit.framework.dll not found but LLAMA_SHM_REQUIRE_MONO is set; \
             run ci/setup --extra"
        );
    }
    eprintln!(
        "{test}: SKIPPED: nunit-console or nunit.framework.dll not found; install them with ci/setup --extra"
    );
    false
}
