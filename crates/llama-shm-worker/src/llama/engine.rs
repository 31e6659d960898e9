//! The engine: one model, one context, one request at a time (see the module docs of
//! [`crate::llama`]).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use llama_shm::{Cancel, Embeddings, Engine, EngineError, EngineRequest, Finish, Generation, ResponseSink};

use super::*;

/// A model and its context, ready to answer requests (see the [module docs](crate::llama)).
///
/// The model is loaded once and deliberately leaked (it lives until the process exits) so
/// that the context, which borrows it, can live in the same struct without `unsafe`. Load one
/// engine per process; every extra load keeps another model mapped.
pub struct LlamaEngine {
    pub(super) model: &'static LlamaModel,
    pub(super) ctx: LlamaContext<'static>,
    pub(super) template: LlamaChatTemplate,
    /// Context of one sequence, in tokens (with `parallel` > 1 the sequences share these
    /// cells: one unified KV cache, as much memory as one sequence's).
    pub(super) n_ctx: u32,
    /// Sequences the context holds ([`LlamaOptions::parallel`]).
    pub(super) parallel: u32,
    pub(super) threads: i32,
    pub(super) with_system: Layout,
    pub(super) without_system: Layout,
    pub(super) sampling: Sampling,
    load_time: Duration,
    pub(super) prefix_cache: bool,
    /// The tokens whose KV entries sit in sequence 0 at positions `0..len` (empty after an
    /// error or a cancelled prompt: the cache is then cleared before the next request).
    cached: Vec<LlamaToken>,
    /// The model for embeddings, when not this one ([`LlamaOptions::embedding_model`]).
    pub(super) embedding_model: Option<std::path::PathBuf>,
    /// That model once loaded (it lives until the process exits).
    pub(super) embedding_loaded: Option<&'static LlamaModel>,
    /// The embedding context, made at the first embeddings request.
    pub(super) embedder: Option<Embedder>,
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

        let parallel = options.parallel.max(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(options.ctx))
            .with_n_seq_max(parallel)
            // One pool of cells for all sequences: the memory of one context whatever the
            // number of slots, each request able to grow to the whole context (the batched
            // engine ends the youngest request when they are all taken).
            .with_kv_unified(true)
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
            parallel,
            threads,
            with_system,
            without_system,
            sampling: options.sampling,
            load_time,
            prefix_cache: options.prefix_cache,
            cached: Vec::new(),
            embedding_model: options.embedding_model.clone(),
            embedding_loaded: None,
            embedder: None,
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

    /// The vocabulary's model (for pieces and end-of-generation tokens).
    pub(super) fn model(&self) -> &'static LlamaModel {
        self.model
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
pub(super) fn to_pos(index: usize) -> Result<i32, EngineError> {
    i32::try_from(index).map_err(|_| EngineError::Inference(format!("position {index} overflows")))
}

impl Engine for LlamaEngine {
    fn generate(
        &mut self,
        request: &EngineRequest<'_>,
        out: &mut dyn ResponseSink,
        cancel: &Cancel,
    ) -> Result<Generation, EngineError> {
        let (prompt, dropped) = self.fitted_prompt(request)?;
        // Before anything is evaluated: a constraint that does not compile fails here.
        let mut sampler = self.sampler_for(request)?;
        let n_prompt = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        let mut generation = Generation::new(Finish::Cancelled);
        generation.usage.prompt_tokens = n_prompt;
        generation.dropped_messages = dropped;
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
            let token = sampler.sample(&self.ctx, logits_index)?;
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

    fn embed(
        &mut self,
        texts: &[String],
        max_values: usize,
        cancel: &Cancel,
    ) -> Result<Embeddings, EngineError> {
        self.embeddings(texts, max_values, cancel)
    }

    fn count_tokens(&mut self, request: &EngineRequest<'_>, text: Option<&str>) -> Result<u32, EngineError> {
        self.count(request, text)
    }
}
