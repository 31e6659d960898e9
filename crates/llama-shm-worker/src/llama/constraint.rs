//! Constrained generation: a JSON schema or a GBNF grammar becomes a grammar sampler in front
//! of the request's own, or a typed error before anything is generated (never an
//! unconstrained answer).

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

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

/// `base` behind the grammar of `constraint`: the grammar removes the tokens it does not
/// allow, `base` picks among the rest.
///
/// # Errors
/// [`EngineError::InvalidConstraint`] for a schema or a grammar that does not compile.
pub(super) fn constrained(
    model: &LlamaModel,
    constraint: &Constraint,
    base: LlamaSampler,
) -> Result<LlamaSampler, EngineError> {
    let grammar = grammar_of(constraint)?;
    if grammar.trim().is_empty() {
        return Err(EngineError::InvalidConstraint("the grammar is empty".into()));
    }
    let sampler = LlamaSampler::grammar(model, &grammar, "root").map_err(|e| {
        EngineError::InvalidConstraint(format!(
            "the grammar does not compile (its start rule must be `root`): {e}"
        ))
    })?;
    Ok(LlamaSampler::chain_simple([sampler, base]))
}
