//! What a llama.cpp engine is loaded with: the model, the context, threads and sampling.

use std::path::PathBuf;

/// Smallest context accepted by [`LlamaEngine::load`].
pub(super) const MIN_CTX: u32 = 64;

/// Settings for [`LlamaEngine::load`](crate::llama::LlamaEngine::load).
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
    /// Sequences decoded together (the batched engine's slots). They share the `ctx` cells of
    /// one KV cache: each can grow to `ctx` tokens while the cells last. Default 1.
    pub parallel: u32,
    /// A GGUF model for embeddings instead of `model` (loaded at the first embeddings
    /// request). Default none: `model` embeds.
    pub embedding_model: Option<PathBuf>,
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
            parallel: 1,
            embedding_model: None,
        }
    }
}

impl Default for LlamaOptions {
    /// Default settings for the default model (`llama_shm`'s `locate::default_model`).
    fn default() -> Self {
        Self::new(llama_shm::internals::os::locate::default_model())
    }
}

/// How tokens are chosen: at load time ([`LlamaOptions::sampling`]) and per request after it
/// ([`LlamaEngine::sampling_mut`](crate::llama::LlamaEngine::sampling_mut)).
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
