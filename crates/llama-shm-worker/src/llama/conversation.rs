//! A conversation's prompt: any list of messages through the model's chat template, without
//! role injection (the template's markup is tokenized with special-token parsing, every
//! message's content as plain text), and the oldest turns dropped when asked to fit.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use llama_shm::{EngineError, Message, Role};

/// The placeholder rendered in place of message `i`'s content (never tokenized).
fn placeholder(i: usize) -> String {
    format!("\u{1}llama-shm-message-{i}\u{1}")
}

/// The prompt tokens of `messages` through `template`, with the generation prompt.
///
/// # Errors
/// [`EngineError::Unsupported`] when the template does not place every message exactly once
/// (it drops or merges some: the prompt would not be the conversation sent).
pub(super) fn conversation_tokens(
    model: &LlamaModel,
    template: &LlamaChatTemplate,
    messages: &[Message],
) -> Result<Vec<LlamaToken>, EngineError> {
    let chat = messages
        .iter()
        .enumerate()
        .map(|(i, m)| LlamaChatMessage::new(m.role.as_str().into(), placeholder(i)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Inference(format!("chat message: {e}")))?;
    let rendered = model
        .apply_chat_template(template, &chat, true)
        .map_err(|e| EngineError::Inference(format!("chat template: {e}")))?;
    let vocab = model.vocab();
    let mut tokens = Vec::new();
    let mut at = 0;
    for (i, m) in messages.iter().enumerate() {
        let slot = placeholder(i);
        let mut hits = rendered[at..].match_indices(&slot);
        let Some((start, _)) = hits.next() else {
            return Err(EngineError::Unsupported(format!(
                "the model's chat template does not place message {i} ({}) where it belongs",
                m.role.as_str()
            )));
        };
        if hits.next().is_some() || rendered[..at].contains(&slot) {
            return Err(EngineError::Unsupported(format!(
                "the model's chat template repeats message {i}"
            )));
        }
        let start = at + start;
        let markup = &rendered[at..start];
        if !markup.is_empty() {
            vocab.tokenize_into(markup.as_bytes(), &mut tokens, false, true);
        }
        vocab.tokenize_into(m.content.as_bytes(), &mut tokens, false, false);
        at = start + slot.len();
    }
    let tail = &rendered[at..];
    if !tail.is_empty() {
        vocab.tokenize_into(tail.as_bytes(), &mut tokens, false, true);
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
