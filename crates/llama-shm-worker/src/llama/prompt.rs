//! What the engine evaluates and how it picks tokens for one request: the prompt (two prompts
//! from the cached layout, or a conversation through the chat template, fitted to the
//! context), the request's sampler, token counts and embeddings.

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use llama_shm::{Cancel, Embeddings, EngineError, EngineRequest, Message, Role};

use super::*;

impl LlamaEngine {
    /// The request rendered through the chat template as one string (generation prompt
    /// included). For diagnostics only: the engine never tokenizes this string, since special
    /// parsing over it would turn markup typed by the user into real tokens.
    ///
    /// # Errors
    /// [`EngineError::Inference`] when a text holds a NUL byte or the template fails.
    pub fn render_prompt(&self, request: &EngineRequest<'_>) -> Result<String, EngineError> {
        let messages = request
            .conversation()
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.as_str().into(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
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
        Ok(self.prompt(request)?.into_iter().map(|t| t.0).collect())
    }

    /// Builds the prompt's tokens: two prompts from the cached layout, a conversation
    /// through the chat template (see [`conversation_tokens`]).
    ///
    /// # Errors
    /// A conversation the template cannot render as sent.
    pub(super) fn prompt(&self, request: &EngineRequest<'_>) -> Result<Vec<LlamaToken>, EngineError> {
        if !request.messages.is_empty() {
            return conversation_tokens(self.model, &self.template, request.messages);
        }
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
        Ok(tokens)
    }

    /// The prompt of `request` checked to fit [`LlamaEngine::max_prompt_tokens`]: with
    /// [`EngineRequest::drop_oldest`], a conversation loses its oldest turns until it fits.
    /// Returns the tokens and how many messages were dropped.
    ///
    /// # Errors
    /// [`EngineError::PromptTooLong`] (by how many tokens: `tokens - limit`), an empty
    /// prompt, or [`LlamaEngine::prompt`]'s.
    pub(super) fn fitted_prompt(
        &self,
        request: &EngineRequest<'_>,
    ) -> Result<(Vec<LlamaToken>, u32), EngineError> {
        let limit = self.max_prompt_tokens();
        let mut prompt = self.prompt(request)?;
        let mut dropped = 0;
        if prompt.len() > limit as usize && request.drop_oldest {
            // The fewest oldest turns to drop, found by bisection over the turns' starts (a
            // conversation loses tokens as it loses turns): a few renderings, not one per turn.
            let messages = request.messages;
            let lead = messages.iter().take_while(|m| m.role == Role::System).count();
            let starts = turn_starts(messages);
            let kept = |s: usize| -> Vec<Message> {
                messages[..lead].iter().chain(&messages[s..]).cloned().collect()
            };
            let (mut lo, mut hi) = (0, starts.len());
            let mut best = None;
            while lo < hi {
                let mid = (lo + hi) / 2;
                let tokens = conversation_tokens(self.model, &self.template, &kept(starts[mid]))?;
                if tokens.len() <= limit as usize {
                    best = Some((starts[mid], tokens));
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            match best {
                Some((start, tokens)) => {
                    dropped = u32::try_from(start - lead).unwrap_or(u32::MAX);
                    prompt = tokens;
                }
                // Not even the last turn fits: report that one's size.
                None => {
                    if let Some(&last) = starts.last() {
                        prompt = conversation_tokens(self.model, &self.template, &kept(last))?;
                    }
                }
            }
        }
        if prompt.is_empty() {
            return Err(EngineError::Inference("the templated prompt is empty".into()));
        }
        let n_prompt = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if n_prompt > limit {
            return Err(EngineError::PromptTooLong {
                tokens: n_prompt,
                limit,
            });
        }
        Ok((prompt, dropped))
    }

    /// The sampler of `request`: the engine's settings (the request's seed instead of the
    /// engine's when it has one), behind the request's grammar when it has a constraint.
    ///
    /// # Errors
    /// [`EngineError::InvalidConstraint`] for a schema or grammar that does not compile.
    pub(super) fn sampler_for(&self, request: &EngineRequest<'_>) -> Result<RequestSampler, EngineError> {
        let mut sampling = self.sampling;
        if let Some(seed) = request.seed {
            sampling.seed = seed;
        }
        let base = sampler_of(&sampling);
        match request.constraint {
            None => Ok(RequestSampler::free(base)),
            Some(c) => RequestSampler::constrained(self.model, c, base),
        }
    }

    /// How many tokens `text` is (plain text, no BOS), or `request`'s prompt (its
    /// conversation through the chat template, as [`LlamaEngine::prompt`] builds it).
    ///
    /// # Errors
    /// [`LlamaEngine::prompt`]'s.
    pub(super) fn count(&self, request: &EngineRequest<'_>, text: Option<&str>) -> Result<u32, EngineError> {
        let n = match text {
            Some(t) => self.model.vocab().tokenize(t.as_bytes(), false, false).len(),
            None => self.prompt(request)?.len(),
        };
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Embeddings of `texts` (see [`Engine::embed`]), from the embedding context, made the
    /// first time.
    ///
    /// # Errors
    /// As [`Engine::embed`].
    pub(super) fn embeddings(
        &mut self,
        texts: &[String],
        max_values: usize,
        cancel: &Cancel,
    ) -> Result<Embeddings, EngineError> {
        if self.embedder.is_none() {
            // A model loaded for embeddings is loaded once, even when its context cannot be
            // made (the next request tries the context again, not the load).
            let model = match (&self.embedding_model, self.embedding_loaded) {
                (None, _) => self.model,
                (Some(_), Some(loaded)) => loaded,
                (Some(path), None) => *self.embedding_loaded.insert(load_embedding_model(path)?),
            };
            self.embedder = Some(Embedder::new(model, self.n_ctx, self.threads)?);
        }
        self.embedder
            .as_mut()
            .expect("made above")
            .embed(texts, max_values, cancel)
    }
}

/// A sampler for `sampling`, fresh (seeded) for one request.
pub(super) fn sampler_of(sampling: &Sampling) -> LlamaSampler {
    if sampling.greedy {
        LlamaSampler::greedy()
    } else {
        LlamaSampler::chain_simple([
            LlamaSampler::min_p(sampling.min_p, 1),
            LlamaSampler::temp(sampling.temp),
            LlamaSampler::dist(sampling.seed),
        ])
    }
}

/// The model a worker loads for embeddings only (`--embedding-model`), kept for the process.
pub(super) fn load_embedding_model(path: &std::path::Path) -> Result<&'static LlamaModel, EngineError> {
    check_gguf(path).map_err(|e| EngineError::Unsupported(format!("embedding model: {e}")))?;
    let backend = backend().map_err(|e| EngineError::Inference(e.to_string()))?;
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
        .map_err(|e| EngineError::Unsupported(format!("embedding model {}: {e}", path.display())))?;
    Ok(Box::leak(Box::new(model)))
}
