//! A conversation's prompt: any list of messages through the model's chat template, without
//! role injection (the template's markup is tokenized with special-token parsing, every
//! message's content as plain text), and the oldest turns dropped when asked to fit.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use llama_shm::{EngineError, Message, Role};

/// What marks a placeholder's ends in the rendered template (no template emits it, and no
/// content is ever rendered: only placeholders).
const MARK: char = '\u{1}';

/// The name inside placeholder `i`.
fn placeholder_name(i: usize) -> String {
    format!("llama-shm-message-{i}")
}

/// The rendered template split at its placeholders: the markup before message 0, between
/// each message and the next, and after the last (`n + 1` pieces), in one pass.
///
/// # Errors
/// [`EngineError::Unsupported`] when the template does not place every message exactly once
/// and in order (it drops, repeats or merges some: the prompt would not be the conversation
/// sent).
fn split_markup(rendered: &str, n: usize) -> Result<Vec<&str>, EngineError> {
    let pieces: Vec<&str> = rendered.split(MARK).collect();
    let placed = pieces.len() == 2 * n + 1
        && pieces
            .iter()
            .skip(1)
            .step_by(2)
            .enumerate()
            .all(|(i, name)| *name == placeholder_name(i));
    if !placed {
        return Err(EngineError::Unsupported(
            "the model's chat template does not place every message once, in order".into(),
        ));
    }
    Ok(pieces.into_iter().step_by(2).collect())
}

/// The prompt tokens of `messages` through `template`, with the generation prompt.
///
/// # Errors
/// [`EngineError::Unsupported`] when the template does not place every message exactly once
/// (see [`split_markup`]).
pub(super) fn conversation_tokens(
    model: &LlamaModel,
    template: &LlamaChatTemplate,
    messages: &[Message],
) -> Result<Vec<LlamaToken>, EngineError> {
    let chat = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            LlamaChatMessage::new(
                m.role.as_str().into(),
                format!("{MARK}{}{MARK}", placeholder_name(i)),
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Inference(format!("chat message: {e}")))?;
    let rendered = model
        .apply_chat_template(template, &chat, true)
        .map_err(|e| EngineError::Inference(format!("chat template: {e}")))?;
    let markup = split_markup(&rendered, messages.len())?;
    let vocab = model.vocab();
    let mut tokens = Vec::new();
    for (i, piece) in markup.iter().enumerate() {
        if !piece.is_empty() {
            vocab.tokenize_into(piece.as_bytes(), &mut tokens, false, true);
        }
        if let Some(m) = messages.get(i) {
            vocab.tokenize_into(m.content.as_bytes(), &mut tokens, false, false);
        }
    }
    if vocab.should_add_bos() && tokens.first() != Some(&vocab.bos()) {
        tokens.insert(0, vocab.bos());
    }
    Ok(tokens)
}

/// Where the conversation may start after its leading system messages when its oldest turns
/// go, oldest cut first: the index of each user message after the first message that
/// follows them (a turn is a user message and the answers up to the next one; the first
/// message always goes with the first cut), and the last message, which always stays. Dropping to start `s` drops `s - lead` messages.
pub(super) fn turn_starts(messages: &[Message]) -> Vec<usize> {
    let lead = messages.iter().take_while(|m| m.role == Role::System).count();
    if messages.len() <= lead + 1 {
        return Vec::new();
    }
    let last = messages.len() - 1;
    let mut starts: Vec<usize> = (lead + 1..last)
        .filter(|&i| messages[i].role == Role::User)
        .collect();
    starts.push(last);
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_markup_splits_at_each_placeholder_once_and_in_order() {
        let p = |i| format!("{MARK}{}{MARK}", placeholder_name(i));
        let ok = format!("<s>{}<u>{}<a>", p(0), p(1));
        assert_eq!(split_markup(&ok, 2).unwrap(), ["<s>", "<u>", "<a>"]);
        assert_eq!(split_markup(&p(0), 1).unwrap(), ["", ""]);
        // A message dropped, repeated, out of order; a stray mark.
        assert!(split_markup(&format!("<s>{}<a>", p(0)), 2).is_err());
        assert!(split_markup(&format!("{}{}{}", p(0), p(0), p(1)), 3).is_err());
        assert!(split_markup(&format!("{}{}", p(1), p(0)), 2).is_err());
        assert!(split_markup(&format!("{}x{MARK}y", p(0)), 1).is_err());
    }

    #[test]
    fn turns_start_at_user_messages_and_the_last_message_always_stays() {
        let m = [
            Message::system("s"),
            Message::user("u1"),
            Message::assistant("a1"),
            Message::user("u2"),
            Message::assistant("a2"),
            Message::user("u3"),
        ];
        // Keep from u2 (2 dropped), or from u3 (4 dropped).
        assert_eq!(turn_starts(&m), [3, 5]);
        assert_eq!(turn_starts(&m[..2]), Vec::<usize>::new());
        assert_eq!(turn_starts(&[Message::user("u")]), Vec::<usize>::new());
        // Answers without a user message between them go with the turn they follow.
        let odd = [
            Message::user("u"),
            Message::assistant("a"),
            Message::assistant("b"),
        ];
        assert_eq!(turn_starts(&odd), [2]);
        let many = [
            Message::user("u1"),
            Message::assistant("a1"),
            Message::user("u2"),
            Message::user("u3"),
            Message::assistant("a3"),
        ];
        assert_eq!(turn_starts(&many), [2, 3, 4]);
        // A second user message right after the first is a turn of its own.
        let two = [
            Message::system("s"),
            Message::user("u1"),
            Message::user("u2"),
            Message::assistant("a"),
        ];
        assert_eq!(turn_starts(&two), [2, 3]);
    }
}
