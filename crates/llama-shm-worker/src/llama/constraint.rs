//! Constrained generation: a JSON schema or a GBNF grammar becomes a grammar sampler in front
//! of the request's own, or a typed error before anything is generated (never an
//! unconstrained answer).

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use llama_shm::{Constraint, EngineError};

/// The GBNF grammar of `constraint`.
///
/// # Errors
/// [`EngineError::InvalidConstraint`] for a schema llama.cpp's converter refuses (not JSON,
/// or a construct it does not support).
pub(super) fn grammar_of(constraint: &Constraint) -> Result<String, EngineError> {
    match constraint {
        Constraint::Grammar(g) => Ok(g.clone()),
        Constraint::JsonSchema(schema) => llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| {
            EngineError::InvalidConstraint(format!(
                "the JSON schema cannot be turned into a grammar (is it valid JSON, and a schema llama.cpp's \
                 converter supports?): {e}"
            ))
        }),
    }
}

/// How one request's tokens are chosen: its sampler, behind its grammar when it has one.
///
/// With a grammar, the token `base` picks from all candidates is checked against the grammar
/// alone first (what it nearly always allows); only when the grammar refuses it is the grammar
/// applied to every candidate and the choice made again among those it allows. The result is
/// a choice among the allowed tokens either way — the same one greedy sampling makes with the
/// grammar first, nearly the same distribution otherwise (a min-p cut is taken over all
/// tokens, not the allowed ones, as llama.cpp's own sampler does) — at the cost of one check
/// per token instead of a pass of the grammar over the whole vocabulary.
pub(super) struct RequestSampler {
    base: LlamaSampler,
    grammar: Option<LlamaSampler>,
}

impl std::fmt::Debug for RequestSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSampler")
            .field("constrained", &self.grammar.is_some())
            .finish_non_exhaustive()
    }
}

impl RequestSampler {
    /// A sampler without a constraint.
    pub(super) fn free(base: LlamaSampler) -> Self {
        Self { base, grammar: None }
    }

    /// `base` behind the grammar of `constraint`.
    ///
    /// # Errors
    /// [`EngineError::InvalidConstraint`] for a schema or a grammar that does not compile.
    pub(super) fn constrained(
        model: &LlamaModel,
        constraint: &Constraint,
        base: LlamaSampler,
    ) -> Result<Self, EngineError> {
        let grammar = grammar_of(constraint)?;
        if grammar.trim().is_empty() {
            return Err(EngineError::InvalidConstraint("the grammar is empty".into()));
        }
        let sampler = LlamaSampler::grammar(model, &grammar, "root").map_err(|e| {
            EngineError::InvalidConstraint(format!(
                "the grammar does not compile (its start rule must be `root`): {e}"
            ))
        })?;
        Ok(Self {
            base,
            grammar: Some(sampler),
        })
    }

    /// The next token from the logits at batch index `idx`.
    ///
    /// # Errors
    /// [`EngineError::Inference`] when the grammar allows no token at all, or refuses the one
    /// it was given: the answer cannot be completed to match it (never passed off as a
    /// complete answer: a complete grammar still allows the end-of-generation token).
    pub(super) fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> Result<LlamaToken, EngineError> {
        let Some(grammar) = self.grammar.as_mut() else {
            return Ok(self.base.sample(ctx, idx));
        };
        let dead_end =
            || EngineError::Inference("the grammar allows no next token: the answer cannot match it".into());
        let mut all = ctx.token_data_array_ith(idx);
        all.apply_sampler(&mut self.base);
        let picked = all.selected_token().ok_or_else(dead_end)?;
        let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(picked, 0.0, 0.0)], false);
        one.apply_sampler(grammar);
        let token = if one.data.first().is_some_and(|d| d.logit().is_finite()) {
            picked
        } else {
            let mut allowed = ctx.token_data_array_ith(idx);
            allowed.apply_sampler(grammar);
            if !allowed.data.iter().any(|d| d.logit().is_finite()) {
                return Err(dead_end());
            }
            allowed.apply_sampler(&mut self.base);
            allowed.selected_token().ok_or_else(dead_end)?
        };
        grammar
            .try_accept(token)
            .map_err(|e| EngineError::Inference(format!("the grammar refused the token it allowed: {e}")))?;
        self.base.accept(token);
        Ok(token)
    }
}
