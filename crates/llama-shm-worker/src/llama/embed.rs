//! Embeddings: a second context of the model (or of a model loaded for embeddings) that
//! outputs pooled vectors instead of logits, made the first time one is asked for.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;

use llama_shm::{Cancel, Embeddings, EngineError};

/// Texts embedded in one decode at most.
const SEQS: u32 = 8;

/// The most memory the embedding context's per-token outputs may take: it outputs every
/// token, and for a generative model that is the logits too (`n_vocab` floats per token:
/// 196 KiB for SmolLM2's 49 152), so the longest text embedded is what fits this, in whole
/// [`CTX_STEP`]s, between one step and [`MAX_CTX`] tokens (512 for SmolLM2).
const OUTPUT_BUDGET: usize = 128 << 20;
/// llama.cpp pads a context to a multiple of 256 cells; a micro-batch of another size than the
/// padded context fails its pooling graph (an abort), so the size is a multiple of this.
const CTX_STEP: u32 = 256;
/// See [`OUTPUT_BUDGET`].
const MAX_CTX: u32 = 2048;

/// A context that embeds.
pub(super) struct Embedder {
    model: &'static LlamaModel,
    ctx: LlamaContext<'static>,
    n_ctx: usize,
    dim: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("n_ctx", &self.n_ctx)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

/// The pooling `model` defines in its metadata (`<arch>.pooling_type`), if any.
fn defined_pooling(model: &LlamaModel) -> Option<LlamaPoolingType> {
    let arch = model.meta_val_str("general.architecture").ok()?;
    let value = model.meta_val_str(&format!("{arch}.pooling_type")).ok()?;
    value.trim().parse::<i32>().ok().map(LlamaPoolingType::from)
}

impl Embedder {
    /// An embedding context of `n_ctx` tokens for `model`, pooled as the model defines (mean
    /// for a model that defines none).
    ///
    /// # Errors
    /// [`EngineError::Unsupported`] for a reranking model (its output is a score);
    /// [`EngineError::Inference`] when llama.cpp cannot make the context.
    pub(super) fn new(model: &'static LlamaModel, n_ctx: u32, threads: i32) -> Result<Self, EngineError> {
        // No longer than the model was trained for (a BERT model's position table has that
        // many rows: a longer text would make llama.cpp abort), nor than the output budget.
        let vocab = usize::try_from(model.n_vocab()).unwrap_or(1).max(1);
        let budget = u32::try_from(OUTPUT_BUDGET / (4 * vocab))
            .unwrap_or(MAX_CTX)
            .clamp(CTX_STEP, MAX_CTX);
        let n_ctx = n_ctx.min(model.n_ctx_train().max(1)).min(budget);
        let n_ctx = (n_ctx / CTX_STEP).max(1) * CTX_STEP;
        let pooling = match defined_pooling(model) {
            Some(LlamaPoolingType::Rank) => {
                return Err(EngineError::Unsupported(
                    "the embedding model is a reranker: it scores pairs, it has no embeddings".into(),
                ))
            }
            Some(p @ (LlamaPoolingType::Mean | LlamaPoolingType::Cls | LlamaPoolingType::Last)) => p,
            _ => LlamaPoolingType::Mean,
        };
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            // A text is pooled over all its tokens: it must fit one micro-batch.
            .with_n_ubatch(n_ctx)
            .with_n_seq_max(SEQS)
            .with_kv_unified(true)
            .with_embeddings(true)
            .with_pooling_type(pooling)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model
            .new_context(
                super::backend().map_err(|e| EngineError::Inference(e.to_string()))?,
                params,
            )
            .map_err(|e| EngineError::Inference(format!("embedding context: {e}")))?;
        let n_ctx = ctx.n_ctx() as usize;
        let dim = usize::try_from(model.n_embd_out()).unwrap_or(0);
        tracing::info!(n_ctx, dim, ?pooling, "embedding context made");
        Ok(Self {
            model,
            ctx,
            n_ctx,
            dim,
        })
    }

    /// Vectors for as many of `texts` (from the first) as fit `max_values` numbers and about
    /// one context's worth of tokens (at least one text), L2-normalised.
    ///
    /// # Errors
    /// [`EngineError::PromptTooLong`] for a text longer than the context;
    /// [`EngineError::Unsupported`] when not even one vector fits; [`EngineError::Inference`]
    /// for a llama.cpp failure. A cancel ends it with what was done (at least one vector) or
    /// an error.
    pub(super) fn embed(
        &mut self,
        texts: &[String],
        max_values: usize,
        cancel: &Cancel,
    ) -> Result<Embeddings, EngineError> {
        let fit = (max_values / self.dim.max(1)).min(texts.len());
        if fit == 0 {
            return Err(EngineError::Unsupported("no vector fits the request area".into()));
        }
        let vocab = self.model.vocab();
        let tokenized: Vec<_> = texts[..fit]
            .iter()
            .map(|t| {
                // BOS, EOS or SEP as the model's metadata asks (a last-token pooling model pools
                // over its EOS, a BERT model expects its SEP).
                let mut tokens = vocab.tokenize(t.as_bytes(), true, false);
                if tokens.is_empty() {
                    // An empty text still needs a token to pool over.
                    tokens.push(vocab.bos());
                }
                tokens
            })
            .collect();
        if let Some(t) = tokenized.iter().find(|t| t.len() > self.n_ctx) {
            return Err(EngineError::PromptTooLong {
                tokens: u32::try_from(t.len()).unwrap_or(u32::MAX),
                limit: u32::try_from(self.n_ctx).unwrap_or(u32::MAX),
            });
        }
        let mut out = Embeddings {
            dim: self.dim,
            values: Vec::with_capacity(fit * self.dim),
        };
        let mut next = 0;
        let mut evaluated = 0;
        let mut batch = LlamaBatch::new(self.n_ctx, SEQS as i32);
        while next < fit {
            // One request evaluates about a context's worth of tokens (at least one group):
            // its time stays bounded, and the client sends the rest in the next request.
            if next > 0 && (cancel.is_cancelled() || evaluated >= self.n_ctx) {
                break;
            }
            // As many texts as fit one batch of the context, at most SEQS.
            let mut group = Vec::new();
            let mut used = 0;
            while next + group.len() < fit && group.len() < SEQS as usize {
                let t = &tokenized[next + group.len()];
                if !group.is_empty() && used + t.len() > self.n_ctx {
                    break;
                }
                used += t.len();
                group.push(t);
            }
            batch.clear();
            for (seq, tokens) in group.iter().enumerate() {
                for (pos, &token) in tokens.iter().enumerate() {
                    batch
                        .add(token, pos as i32, &[seq as i32], true)
                        .map_err(|e| EngineError::Inference(format!("embedding batch: {e}")))?;
                }
            }
            self.ctx.clear_kv_cache();
            self.ctx
                .decode(&mut batch)
                .map_err(|e| EngineError::Inference(format!("embedding evaluation: {e}")))?;
            for seq in 0..group.len() {
                let v = self
                    .ctx
                    .embeddings_seq_ith(seq as i32)
                    .map_err(|e| EngineError::Inference(format!("embedding of sequence {seq}: {e}")))?;
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                out.values.extend(v.iter().take(self.dim).map(|x| x * scale));
            }
            next += group.len();
            evaluated += used;
        }
        Ok(out)
    }
}
