//! The llama.cpp engine: an [`Engine`] that runs a GGUF model through the `llama-cpp-2` crate.
//!
//! [`LlamaEngine::load`] checks the model file, initialises the process-global llama.cpp
//! backend (once), loads the model and makes one context that serves every request. Each
//! request then:
//!
//! 1. builds its prompt with the model's own chat template, **without role injection**: the
//!    template is rendered once at load time with placeholder contents, its markup is
//!    tokenized with special-token parsing on, and the request's system and user texts are
//!    tokenized as plain text (so `<|im_start|>` typed by a user stays text, not a token);
//! 2. checks the prompt fits: it may use at most `ctx - min(ctx / 8, 64)` tokens, so at least
//!    `min(ctx / 8, 64)` positions are left to answer ([`LlamaEngine::max_prompt_tokens`]);
//! 3. clears the KV cache, evaluates the prompt, then samples token by token with a fresh
//!    sampler (min-p → temperature → seeded distribution, or greedy), so the same seed gives
//!    the same answer;
//! 4. streams the text into the [`ResponseSink`], carrying incomplete UTF-8 sequences from one
//!    token to the next and dropping NUL bytes, until an end-of-generation token
//!    ([`Finish::Stop`]), the token budget, a full context or a full response area
//!    ([`Finish::Length`]), or the cancel flag ([`Finish::Cancelled`]).
//!
//! llama.cpp's own log lines go to `tracing` under the target `llama-cpp-2` (its chatty
//! model-load report is ~140 INFO lines), so a filter such as `info,llama-cpp-2=warn` keeps
//! them quiet unless `RUST_LOG` asks for them (`RUST_LOG=llama-cpp-2=info`).
//!
//! The llama.cpp backend is process-global and initialised once ([`LlamaEngine::load`] does
//! it); the engine itself is meant to stay on one thread and serve one request at a time.

use std::fs::File;
use std::io::Read;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{send_logs_to_tracing, LogOptions};

use llama_shm::{Cancel, Engine, EngineError, EngineRequest, Finish, Generation, ResponseSink};

/// The default model, relative to the repository root (fetched by `ci/setup`).
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// How to get a model, appended to every "no usable model" error.
const MODEL_HINT: &str =
    "run ci/setup to fetch the default model, or pass --model PATH / set LLAMA_SHM_MODEL";

/// The first four bytes of every GGUF file.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Smallest context accepted by [`LlamaEngine::load`].
const MIN_CTX: u32 = 64;

/// Placeholders rendered through the chat template in place of the real contents. They are
/// never tokenized: only the markup around them is.
const SYSTEM_SLOT: &str = "\u{1}llama-shm-system-slot\u{1}";
const USER_SLOT: &str = "\u{1}llama-shm-user-slot\u{1}";

/// Settings for [`LlamaEngine::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaOptions {
    /// The GGUF model file.
    pub model: PathBuf,
    /// Context size in tokens (prompt plus answer). Default 2048.
    pub ctx: u32,
    /// Threads for prompt evaluation and generation (both are set); `None` means
    /// [`std::thread::available_parallelism`]. ggml's threads meet at spinning barriers, so
    /// more threads than *free* cores is very slow (4 threads on 2 cores: ~1000× slower
    /// generation); on a loaded machine 1 thread can beat 2.
    pub threads: Option<i32>,
    /// How tokens are chosen (defaults: min-p 0.05 → temperature 0.7 → seeded distribution).
    pub sampling: Sampling,
    /// Keep the KV cache of the previous request and evaluate only the tokens after the
    /// longest common prefix (default on).
    pub prefix_cache: bool,
}

impl LlamaOptions {
    /// Default settings for the model at `model`.
    #[must_use]
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            ctx: 2048,
            threads: None,
            sampling: Sampling::default(),
            prefix_cache: true,
        }
    }
}

impl Default for LlamaOptions {
    /// Default settings for [`DEFAULT_MODEL`].
    fn default() -> Self {
        Self::new(DEFAULT_MODEL)
    }
}

/// How tokens are chosen: at load time ([`LlamaOptions::sampling`]) and per request after it
/// ([`LlamaEngine::sampling_mut`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Sampling temperature. Default 0.7.
    pub temp: f32,
    /// Min-p cut-off: tokens less likely than `min_p` × the top token's probability are
    /// dropped. Default 0.05.
    pub min_p: f32,
    /// Seed of the sampler, reset for every request: the same seed and prompt give the same
    /// answer. `u32::MAX` asks llama.cpp for a random seed per request. Default 42.
    pub seed: u32,
    /// Always pick the most likely token (ignores `temp`, `min_p` and `seed`).
    pub greedy: bool,
    /// Most tokens generated per request; `None` means until the context is full.
    pub max_tokens: Option<u32>,
    /// Keep generating past end-of-generation tokens (they produce no text). For benchmarks
    /// that need a fixed number of generated tokens; never for serving.
    #[doc(hidden)]
    pub ignore_eog: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temp: 0.7,
            min_p: 0.05,
            seed: 42,
            greedy: false,
            max_tokens: None,
            ignore_eog: false,
        }
    }
}

/// Why [`LlamaEngine::load`] failed.
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
fn backend() -> Result<&'static LlamaBackend, LoadError> {
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
fn check_gguf(path: &Path) -> Result<(), LoadError> {
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

/// One piece of the templated prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Template markup, already tokenized with special-token parsing.
    Markup(Vec<LlamaToken>),
    /// Where the system text goes (tokenized as plain text).
    System,
    /// Where the user text goes (tokenized as plain text).
    User,
}

/// A chat template rendered with placeholders and split into [`Part`]s.
#[derive(Debug, Clone)]
struct Layout {
    parts: Vec<Part>,
}

/// Streams token bytes as text: keeps an incomplete UTF-8 sequence until the next token
/// completes it, replaces invalid bytes with U+FFFD and drops NUL characters.
#[derive(Debug, Default)]
struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// Adds `bytes` and returns the complete characters available so far.
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                }
                Err(err) => {
                    let valid_end = start + err.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    if let Some(bad) = err.error_len() {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start = valid_end + bad;
                    } else {
                        // An incomplete sequence at the end: wait for the next token.
                        start = valid_end;
                        break;
                    }
                }
            }
        }
        self.pending.drain(..start);
        out.retain(|c| c != '\0');
        out
    }

    /// Ends the stream. What is still pending is an incomplete character (complete ones and
    /// invalid bytes were emitted by `push`): generation stopped inside it, so it is dropped
    /// rather than shown as U+FFFD. Returns whether anything was dropped.
    fn finish(&mut self) -> bool {
        let dropped = !self.pending.is_empty();
        self.pending.clear();
        dropped
    }
}

/// A model and its context, ready to answer requests (see the [module docs](self)).
///
/// The model is loaded once and deliberately leaked (it lives until the process exits) so
/// that the context, which borrows it, can live in the same struct without `unsafe`. Load one
/// engine per process; every extra load keeps another model mapped.
pub struct LlamaEngine {
    model: &'static LlamaModel,
    ctx: LlamaContext<'static>,
    template: LlamaChatTemplate,
    n_ctx: u32,
    threads: i32,
    with_system: Layout,
    without_system: Layout,
    sampling: Sampling,
    load_time: Duration,
    prefix_cache: bool,
    /// The tokens whose KV entries sit in sequence 0 at positions `0..len` (empty after an
    /// error or a cancelled prompt: the cache is then cleared before the next request).
    cached: Vec<LlamaToken>,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field("n_ctx", &self.n_ctx)
            .field("threads", &self.threads)
            .field("sampling", &self.sampling)
            .field("load_time", &self.load_time)
            .finish_non_exhaustive()
    }
}

impl LlamaEngine {
    /// Loads the model in `options.model` and makes a context of `options.ctx` tokens.
    ///
    /// # Errors
    /// [`LoadError::NotFound`], [`LoadError::Io`] or [`LoadError::NotGguf`] when the file is
    /// missing, unreadable or not GGUF (checked before llama.cpp sees it);
    /// [`LoadError::Model`] when llama.cpp rejects it; [`LoadError::Options`] for a context
    /// under 64 tokens, a thread count under 1 or a non-finite temperature or min-p;
    /// [`LoadError::Backend`], [`LoadError::Context`] or [`LoadError::Template`] when
    /// llama.cpp cannot be set up or the chat template cannot be used.
    pub fn load(options: &LlamaOptions) -> Result<Self, LoadError> {
        let started = Instant::now();
        if options.ctx < MIN_CTX {
            return Err(LoadError::Options(format!(
                "context of {} tokens is under the minimum of {MIN_CTX}",
                options.ctx
            )));
        }
        let threads = match options.threads {
            Some(n) if n < 1 => {
                return Err(LoadError::Options(format!("threads must be at least 1, got {n}")))
            }
            Some(n) => n,
            None => {
                std::thread::available_parallelism().map_or(1, |n| i32::try_from(n.get()).unwrap_or(i32::MAX))
            }
        };
        if !options.sampling.temp.is_finite() || !options.sampling.min_p.is_finite() {
            return Err(LoadError::Options("temp and min_p must be finite".into()));
        }
        check_gguf(&options.model)?;
        let backend = backend()?;

        let model = LlamaModel::load_from_file(backend, &options.model, &LlamaModelParams::default())
            .map_err(|e| LoadError::Model {
                path: options.model.clone(),
                reason: e.to_string(),
            })?;

        let template = match model.chat_template(None) {
            Ok(template) => template,
            Err(e) => {
                tracing::warn!(error = %e, "model has no usable chat template, using chatml");
                LlamaChatTemplate::new("chatml").map_err(|e| LoadError::Template {
                    path: options.model.clone(),
                    reason: e.to_string(),
                })?
            }
        };
        let layout = |system: bool| {
            render_layout(&model, &template, system).map_err(|reason| LoadError::Template {
                path: options.model.clone(),
                reason,
            })
        };
        let with_system = layout(true)?;
        let without_system = layout(false)?;
        // From here on the model lives until the process exits (see [`LlamaEngine`]).
        let model: &'static LlamaModel = Box::leak(Box::new(model));

        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(options.ctx))
            .with_n_batch(options.ctx)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_no_perf(false);
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| LoadError::Context {
                ctx: options.ctx,
                reason: e.to_string(),
            })?;
        let n_ctx = ctx.n_ctx();
        let load_time = started.elapsed();
        tracing::info!(
            model = %options.model.display(),
            n_ctx,
            threads,
            load_ms = load_time.as_millis(),
            "llama.cpp model loaded"
        );
        Ok(Self {
            model,
            ctx,
            template,
            n_ctx,
            threads,
            with_system,
            without_system,
            sampling: options.sampling,
            load_time,
            prefix_cache: options.prefix_cache,
            cached: Vec::new(),
        })
    }

    /// The context size in tokens.
    #[must_use]
    pub fn ctx(&self) -> u32 {
        self.n_ctx
    }

    /// The number of threads used for prompt evaluation and generation.
    #[must_use]
    pub fn threads(&self) -> i32 {
        self.threads
    }

    /// How long [`LlamaEngine::load`] took (file check, model load and context creation).
    #[must_use]
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The longest prompt accepted: `ctx - min(ctx / 8, 64)`, so at least `min(ctx / 8, 64)`
    /// positions are left to answer.
    #[must_use]
    pub fn max_prompt_tokens(&self) -> u32 {
        self.n_ctx - (self.n_ctx / 8).min(64)
    }

    /// The sampling settings used by the next requests.
    #[must_use]
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// Changes the sampling settings for the next requests (seed, greedy, token budget…).
    pub fn sampling_mut(&mut self) -> &mut Sampling {
        &mut self.sampling
    }

    /// Tokenizes `text` with the model's vocabulary, without adding BOS/EOS. With
    /// `parse_special`, texts such as `<|im_start|>` become their special tokens; without it
    /// they stay plain text.
    #[must_use]
    pub fn tokenize(&self, text: &str, parse_special: bool) -> Vec<i32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, parse_special)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// Turns token ids back into text (special tokens rendered as their text; invalid UTF-8
    /// replaced by U+FFFD). For tests and diagnostics.
    #[must_use]
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        let tokens: Vec<LlamaToken> = tokens.iter().copied().map(LlamaToken).collect();
        String::from_utf8_lossy(&self.model.vocab().detokenize(&tokens, false, true)).into_owned()
    }

    /// The request rendered through the chat template as one string (generation prompt
    /// included). For diagnostics only: the engine never tokenizes this string, since special
    /// parsing over it would turn markup typed by the user into real tokens.
    ///
    /// # Errors
    /// [`EngineError::Inference`] when a text holds a NUL byte or the template fails.
    pub fn render_prompt(&self, request: &EngineRequest<'_>) -> Result<String, EngineError> {
        let messages = messages(request.system, request.user)
            .map_err(|e| EngineError::Inference(format!("chat message: {e}")))?;
        self.model
            .apply_chat_template(&self.template, &messages, true)
            .map_err(|e| EngineError::Inference(format!("chat template: {e}")))
    }

    /// The token ids the engine evaluates for `request`: the chat template's markup (special
    /// tokens parsed) around the system and user texts (tokenized as plain text).
    ///
    /// # Errors
    /// None today; the `Result` leaves room for templates that can fail per request.
    pub fn prompt_tokens(&self, request: &EngineRequest<'_>) -> Result<Vec<i32>, EngineError> {
        Ok(self.prompt(request).into_iter().map(|t| t.0).collect())
    }

    /// Builds the prompt's tokens from the cached layout.
    fn prompt(&self, request: &EngineRequest<'_>) -> Vec<LlamaToken> {
        let layout = if request.system.is_empty() {
            &self.without_system
        } else {
            &self.with_system
        };
        let vocab = self.model.vocab();
        let mut tokens = Vec::new();
        for part in &layout.parts {
            match part {
                Part::Markup(markup) => tokens.extend_from_slice(markup),
                Part::System => {
                    vocab.tokenize_into(request.system.as_bytes(), &mut tokens, false, false);
                }
                Part::User => {
                    vocab.tokenize_into(request.user.as_bytes(), &mut tokens, false, false);
                }
            }
        }
        if vocab.should_add_bos() && tokens.first() != Some(&vocab.bos()) {
            tokens.insert(0, vocab.bos());
        }
        tokens
    }

    /// A fresh sampler seeded from the settings, so every request starts from the same state.
    fn sampler(&self) -> LlamaSampler {
        if self.sampling.greedy {
            LlamaSampler::greedy()
        } else {
            LlamaSampler::chain_simple([
                LlamaSampler::min_p(self.sampling.min_p, 1),
                LlamaSampler::temp(self.sampling.temp),
                LlamaSampler::dist(self.sampling.seed),
            ])
        }
    }

    /// Evaluates `tokens` from position 0, in batches of at most `n_batch` tokens; the logits
    /// of the last token are kept. Returns that token's index in the last batch.
    /// Evaluates `tokens` at positions from `start` on; returns the batch index of the last
    /// token's logits, or `None` when cancelled.
    fn eval_prompt(
        &mut self,
        tokens: &[LlamaToken],
        start: usize,
        batch: &mut LlamaBatch<'_>,
        cancel: &Cancel,
    ) -> Result<Option<i32>, EngineError> {
        let n_batch = usize::try_from(self.ctx.n_batch()).unwrap_or(usize::MAX).max(1);
        let last = start + tokens.len().saturating_sub(1);
        let mut last_index = 0;
        for (chunk_no, chunk) in tokens.chunks(n_batch).enumerate() {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            batch.clear();
            for (i, &token) in chunk.iter().enumerate() {
                let pos = start + chunk_no * n_batch + i;
                batch
                    .add(token, to_pos(pos)?, &[0], pos == last)
                    .map_err(|e| EngineError::Inference(format!("prompt batch: {e}")))?;
            }
            self.ctx
                .decode(batch)
                .map_err(|e| EngineError::Inference(format!("prompt evaluation: {e}")))?;
            last_index = batch.n_tokens() - 1;
        }
        Ok(Some(last_index))
    }
}

/// A llama.cpp position from a token index.
fn to_pos(index: usize) -> Result<i32, EngineError> {
    i32::try_from(index).map_err(|_| EngineError::Inference(format!("position {index} overflows")))
}

/// The chat messages for `system` (omitted when empty) and `user`.
fn messages(
    system: &str,
    user: &str,
) -> Result<Vec<LlamaChatMessage>, llama_cpp_2::NewLlamaChatMessageError> {
    let mut messages = Vec::with_capacity(2);
    if !system.is_empty() {
        messages.push(LlamaChatMessage::new("system".into(), system.into())?);
    }
    messages.push(LlamaChatMessage::new("user".into(), user.into())?);
    Ok(messages)
}

/// Renders `template` with placeholder contents (with or without a system message) and splits
/// the result into markup, tokenized with special parsing, and content slots.
fn render_layout(
    model: &LlamaModel,
    template: &LlamaChatTemplate,
    with_system: bool,
) -> Result<Layout, String> {
    let system = if with_system { SYSTEM_SLOT } else { "" };
    let messages = messages(system, USER_SLOT).map_err(|e| e.to_string())?;
    let rendered = model
        .apply_chat_template(template, &messages, true)
        .map_err(|e| format!("cannot apply the chat template: {e}"))?;
    let mut slots = vec![(USER_SLOT, Part::User)];
    if with_system {
        slots.push((SYSTEM_SLOT, Part::System));
    }
    let mut found = Vec::new();
    for (slot, part) in slots {
        let mut hits = rendered.match_indices(slot);
        match (hits.next(), hits.next()) {
            (Some((at, _)), None) => found.push((at, slot.len(), part)),
            _ => {
                return Err(format!(
                    "the template must place each message exactly once, got {rendered:?}"
                ))
            }
        }
    }
    found.sort_by_key(|&(at, _, _)| at);
    let vocab = model.vocab();
    let mut parts = Vec::new();
    let markup = |text: &str, parts: &mut Vec<Part>| {
        if !text.is_empty() {
            parts.push(Part::Markup(vocab.tokenize(text.as_bytes(), false, true)));
        }
    };
    let mut at = 0;
    for (start, len, part) in found {
        markup(&rendered[at..start], &mut parts);
        parts.push(part);
        at = start + len;
    }
    markup(&rendered[at..], &mut parts);
    Ok(Layout { parts })
}

impl Engine for LlamaEngine {
    fn generate(
        &mut self,
        request: &EngineRequest<'_>,
        out: &mut dyn ResponseSink,
        cancel: &Cancel,
    ) -> Result<Generation, EngineError> {
        let prompt = self.prompt(request);
        if prompt.is_empty() {
            return Err(EngineError::Inference("the templated prompt is empty".into()));
        }
        let n_prompt = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if n_prompt > self.max_prompt_tokens() {
            return Err(EngineError::PromptTooLong {
                tokens: n_prompt,
                ctx: self.n_ctx,
            });
        }
        let mut generation = Generation::new(Finish::Cancelled);
        generation.usage.prompt_tokens = n_prompt;
        // What the KV cache holds is known only when this request ends well: until then the
        // engine's record is empty (an error or a cancel below leaves it so).
        let mut cached = std::mem::take(&mut self.cached);
        let mut common = if self.prefix_cache {
            cached.iter().zip(&prompt).take_while(|(a, b)| a == b).count()
        } else {
            0
        };
        // The last prompt token is always evaluated again: its logits start the answer.
        common = common.min(prompt.len() - 1);
        let kept = common > 0
            && u32::try_from(common)
                .ok()
                .and_then(|p0| self.ctx.clear_kv_cache_seq(Some(0), Some(p0), None).ok())
                .unwrap_or(false);
        if !kept {
            common = 0;
            self.ctx.clear_kv_cache();
        }
        cached.truncate(common);
        self.ctx.reset_timings();
        let mut sampler = self.sampler();
        let batch_size = usize::try_from(self.ctx.n_batch()).unwrap_or(1).max(1);
        let mut batch = LlamaBatch::new(batch_size, 1);

        let prompt_started = Instant::now();
        let evaluated = self.eval_prompt(&prompt[common..], common, &mut batch, cancel)?;
        generation.usage.prompt_time = prompt_started.elapsed();
        let Some(mut logits_index) = evaluated else {
            return Ok(generation);
        };
        cached.extend_from_slice(&prompt[common..]);
        generation.usage.cached_tokens = u32::try_from(common).unwrap_or(u32::MAX);
        tracing::debug!(
            reused = common,
            evaluated = prompt.len() - common,
            "prompt evaluated"
        );

        let sampling = self.sampling;
        let vocab = self.model.vocab();
        let mut text = Utf8Carry::default();
        let mut piece = Vec::new();
        let mut pos = prompt.len();
        let ctx_len = usize::try_from(self.n_ctx).unwrap_or(usize::MAX);
        let started = Instant::now();
        let max_tokens = match (sampling.max_tokens, request.max_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if max_tokens == Some(0) {
            generation.finish = Finish::Length;
            self.cached = cached;
            return Ok(generation);
        }
        let finish = loop {
            if cancel.is_cancelled() {
                break Finish::Cancelled;
            }
            let token = sampler.sample(&self.ctx, logits_index);
            if !sampling.ignore_eog && vocab.is_eog(token) {
                break Finish::Stop;
            }
            generation.usage.generated_tokens += 1;
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            let chunk = text.push(&piece);
            if !chunk.is_empty() && !out.push(&chunk) {
                break Finish::Length;
            }
            if max_tokens.is_some_and(|max| generation.usage.generated_tokens >= max) || pos >= ctx_len {
                break Finish::Length;
            }
            if cancel.is_cancelled() {
                break Finish::Cancelled;
            }
            batch.clear();
            batch
                .add(token, to_pos(pos)?, &[0], true)
                .map_err(|e| EngineError::Inference(format!("batch: {e}")))?;
            self.ctx
                .decode(&mut batch)
                .map_err(|e| EngineError::Inference(format!("decode at position {pos}: {e}")))?;
            cached.push(token);
            pos += 1;
            logits_index = 0;
        };
        self.cached = cached;
        if text.finish() {
            tracing::debug!("generation ended inside a character; its partial bytes were dropped");
        }
        generation.usage.generation_time = started.elapsed();
        generation.finish = finish;
        let timings = self.ctx.timings();
        tracing::debug!(
            prompt_tokens = generation.usage.prompt_tokens,
            generated_tokens = generation.usage.generated_tokens,
            prompt_ms = timings.t_p_eval_ms(),
            eval_ms = timings.t_eval_ms(),
            finish = ?finish,
            "llama.cpp request done"
        );
        Ok(generation)
    }
}

/// Executes the current program again with `GOMP_SPINCOUNT=1000` unless the user set
/// `GOMP_SPINCOUNT` or `OMP_WAIT_POLICY`; returns only when it does not (or the exec failed).
///
/// libgomp's threads spin at every barrier (GOMP_SPINCOUNT, 300,000 by default) before they
/// sleep. ggml meets at a barrier many times per token, so when another busy process shares
/// the cores, a waiting thread burns the CPU its descheduled partner needs: on a 2-core machine
/// one CPU hog made 64 tokens take 28 s instead of 0.8 s; with a spin count of 1000 the same
/// run took 2.3 s, and unloaded generation was unchanged (`llama-shm-worker --test`, measured
/// alternately). libgomp reads the variable when it is loaded, before `main`, hence the exec:
/// call this first thing in `main`, before any thread or state exists (the pid, the open
/// descriptors without close-on-exec, such as a control socket on stdin, and the arguments
/// are kept).
pub fn reexec_with_short_openmp_spin() {
    use std::os::unix::process::CommandExt;
    if ["GOMP_SPINCOUNT", "OMP_WAIT_POLICY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        return;
    }
    let mut argv = std::env::args_os();
    let arg0 = argv.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(argv)
        .env("GOMP_SPINCOUNT", "1000")
        .exec();
    tracing::warn!("could not execute again with GOMP_SPINCOUNT set: {err}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_carry_joins_split_characters() {
        let text = "日本語 🎉!";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut carry = Utf8Carry::default();
            let mut out = carry.push(&bytes[..split]);
            out.push_str(&carry.push(&bytes[split..]));
            assert!(!carry.finish(), "split at {split}: bytes left over");
            assert_eq!(out, text, "split at {split}");
        }
        // One byte at a time.
        let mut carry = Utf8Carry::default();
        let out: String = bytes.iter().map(|b| carry.push(&[*b])).collect();
        assert_eq!(out, text);
        assert!(!carry.finish());
    }

    #[test]
    fn utf8_carry_replaces_invalid_bytes_and_drops_nul() {
        let mut carry = Utf8Carry::default();
        assert_eq!(carry.push(b"a\0b\xffc"), "ab\u{fffd}c");
        // An unfinished sequence at the end is held back, then dropped (never U+FFFD).
        assert_eq!(carry.push(b"x\xe6\x97"), "x");
        assert!(carry.finish());
        assert!(!carry.finish());
    }

    #[test]
    fn missing_and_non_gguf_files_are_named() {
        let missing = Path::new("/nonexistent/model.gguf");
        let err = LlamaEngine::load(&LlamaOptions::new(missing)).unwrap_err();
        assert!(matches!(err, LoadError::NotFound { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/model.gguf") && msg.contains(MODEL_HINT),
            "{msg}"
        );

        let dir = std::env::temp_dir().join(format!("llama-rs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bogus = dir.join("bogus.gguf");
        std::fs::write(&bogus, b"not a model at all").unwrap();
        let err = LlamaEngine::load(&LlamaOptions::new(&bogus)).unwrap_err();
        assert!(matches!(err, LoadError::NotGguf { .. }), "{err:?}");
        assert!(err.to_string().contains("bogus.gguf"));
        std::fs::write(&bogus, b"GG").unwrap();
        assert!(matches!(
            LlamaEngine::load(&LlamaOptions::new(&bogus)),
            Err(LoadError::NotGguf { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
