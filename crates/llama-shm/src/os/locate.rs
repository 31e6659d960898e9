//! Where the installed pieces are: the worker binary and the default model. One rule each,
//! for the client, the C ABI, the CLI and the worker.
//!
//! An environment variable set to the empty string counts as unset everywhere.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The default model's file name (SmolLM2-135M-Instruct, fetched into `models/` by
/// `ci/setup`).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The worker binary: `$LLAMA_SHM_WORKER`, else `llama-shm-worker` in the first of
/// `dirs_first` that has one, else next to the current executable (or one directory up, for
/// test binaries in `target/*/deps`).
pub fn worker_binary(dirs_first: &[&Path]) -> Option<PathBuf> {
    binary("LLAMA_SHM_WORKER", "llama-shm-worker", dirs_first)
}

/// The echo-only worker binary (no llama.cpp linked: it starts in about half the time), found
/// as [`worker_binary`] is: `$LLAMA_SHM_ECHO_WORKER`, else `llama-shm-echo-worker` in
/// `dirs_first` or next to the current executable.
pub fn echo_worker_binary(dirs_first: &[&Path]) -> Option<PathBuf> {
    binary("LLAMA_SHM_ECHO_WORKER", "llama-shm-echo-worker", dirs_first)
}

fn binary(env: &str, name: &str, dirs_first: &[&Path]) -> Option<PathBuf> {
    if let Some(p) = env_path(env) {
        return Some(p);
    }
    let name: OsString = name.into();
    let exe = std::env::current_exe().ok();
    let exe_dir = exe.as_deref().and_then(Path::parent);
    dirs_first
        .iter()
        .copied()
        .chain(exe_dir)
        .chain(exe_dir.and_then(Path::parent))
        .map(|d| d.join(&name))
        .find(|p| p.exists())
}

/// The model to load when none is named: `$LLAMA_SHM_MODEL`, else `./models/<default>`, else
/// `models/<default>` at the root of the workspace the current executable was built in
/// (`target/<profile>/…`); `./models/<default>` when none exists (so the error names it).
pub fn default_model() -> PathBuf {
    if let Some(p) = env_path("LLAMA_SHM_MODEL") {
        return p;
    }
    let local = Path::new("models").join(DEFAULT_MODEL_FILE);
    if local.exists() {
        return local;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let root = exe.parent()?.parent()?.parent()?;
            Some(root.join("models").join(DEFAULT_MODEL_FILE))
        })
        .filter(|p| p.exists())
        .unwrap_or(local)
}
