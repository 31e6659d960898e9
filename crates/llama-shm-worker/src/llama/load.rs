//! Loading a model: the GGUF check (a clear error before llama.cpp sees the file) and the
//! process-global backend.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::{send_logs_to_tracing, LogOptions};

/// How to get a model, appended to every "no usable model" error.
pub(super) const MODEL_HINT: &str =
    "run ci/setup to fetch the default model, or pass --model PATH / set LLAMA_SHM_MODEL";

/// The first four bytes of every GGUF file.
pub(super) const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Why [`LlamaEngine::load`](crate::llama::LlamaEngine::load) failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The model file does not exist.
    #[error("model file {path:?} not found: {MODEL_HINT}")]
    NotFound {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The model file exists but could not be read.
    #[error("cannot read model file {path:?}: {source}; {MODEL_HINT}")]
    Io {
        /// The path that was tried.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file does not start with the GGUF magic: it is not a GGUF model.
    #[error("{path:?} is not a GGUF model file (no GGUF magic): {MODEL_HINT}")]
    NotGguf {
        /// The path that was tried.
        path: PathBuf,
    },
    /// llama.cpp refused the model (truncated, corrupt, an unsupported architecture, or not
    /// enough memory to map it).
    #[error(
        "llama.cpp could not load model {path:?} ({reason}): the file may be truncated, corrupt or of an \
         unsupported architecture, or memory is short (llama.cpp's own reason is in the worker's log \
         lines); {MODEL_HINT}"
    )]
    Model {
        /// The path that was tried.
        path: PathBuf,
        /// What llama-cpp-2 reported; llama.cpp's own reason is in the `llama-cpp-2` logs.
        reason: String,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Options(String),
    /// The llama.cpp backend could not be initialised.
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    /// The inference context could not be created (out of memory, say).
    #[error("cannot create a llama.cpp context of {ctx} tokens: {reason}")]
    Context {
        /// The requested context size.
        ctx: u32,
        /// What llama-cpp-2 reported.
        reason: String,
    },
    /// The model's chat template could not be used to build prompts.
    #[error("chat template of {path:?}: {reason}")]
    Template {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The process-global llama.cpp backend, initialised by the first [`LlamaEngine::load`].
///
/// llama.cpp's backend init is process-wide and `llama-cpp-2` refuses a second init, so the
/// result (or its error) is kept for the life of the process. Log routing to `tracing` is
/// installed first, so even the backend's own lines go through `tracing`.
pub(super) fn backend() -> Result<&'static LlamaBackend, LoadError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LoadError::Backend(e.clone()))
}

/// Checks that `path` exists and starts with the GGUF magic, before llama.cpp sees it.
pub(super) fn check_gguf(path: &Path) -> Result<(), LoadError> {
    let mut file = File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoadError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            LoadError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(LoadError::NotGguf {
            path: path.to_path_buf(),
        });
    }
    let mut magic = [0_u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == GGUF_MAGIC => Ok(()),
        Ok(()) => Err(LoadError::NotGguf {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(LoadError::NotGguf {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(LoadError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
