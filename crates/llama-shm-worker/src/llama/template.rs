//! The chat template without role injection: rendered once with placeholder contents, its
//! markup tokenized with special-token parsing, the request's texts as plain text.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

/// Placeholders rendered through the chat template in place of the real contents. They are
/// never tokenized: only the markup around them is.
pub(super) const SYSTEM_SLOT: &str = "\u{1}llama-shm-system-slot\u{1}";
pub(super) const USER_SLOT: &str = "\u{1}llama-shm-user-slot\u{1}";

/// One piece of the templated prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part {
    /// Template markup, already tokenized with special-token parsing.
    Markup(Vec<LlamaToken>),
    /// Where the system text goes (tokenized as plain text).
    System,
    /// Where the user text goes (tokenized as plain text).
    User,
}

/// A chat template rendered with placeholders and split into [`Part`]s.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub(super) parts: Vec<Part>,
}

/// The chat messages for `system` (omitted when empty) and `user`.
pub(super) fn messages(
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
pub(super) fn render_layout(
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
