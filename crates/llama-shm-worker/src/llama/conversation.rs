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

/// The messages left when the oldest turn of `messages` goes: the first message after the
/// leading system messages, and the answers that follow it up to the next user message.
/// `None` when only the leading system messages and one more are left.
pub(super) fn without_oldest_turn(messages: &[Message]) -> Option<(Vec<Message>, u32)> {
    let lead = messages.iter().take_while(|m| m.role == Role::System).count();
    if messages.len() <= lead + 1 {
        return None;
    }
    let mut end = lead + 1;
    while end < messages.len() - 1 && messages[end].role != Role::User {
        end += 1;
    }
    let mut kept = messages[..lead].to_vec();
    kept.extend_from_slice(&messages[end..]);
    Some((kept, (end - lead) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_turn_goes_and_the_system_message_and_the_last_message_stay() {
        let m = [
            Message::system("s"),
            Message::user("u1"),
            Message::assistant("a1"),
            Message::user("u2"),
            Message::assistant("a2"),
            Message::user("u3"),
        ];
        let (kept, dropped) = without_oldest_turn(&m).unwrap();
        assert_eq!(dropped, 2);
        assert_eq!(kept, [m[0].clone(), m[3].clone(), m[4].clone(), m[5].clone()]);
        let (kept, dropped) = without_oldest_turn(&kept).unwrap();
        assert_eq!((kept, dropped), (vec![m[0].clone(), m[5].clone()], 2));
        assert_eq!(without_oldest_turn(&[m[0].clone(), m[5].clone()]), None);
        assert_eq!(without_oldest_turn(&[m[5].clone()]), None);
        // Answers without a user message between them go with the turn they follow.
        let odd = [
            Message::user("u"),
            Message::assistant("a"),
            Message::assistant("b"),
        ];
        assert_eq!(without_oldest_turn(&odd), Some((vec![odd[2].clone()], 2)));
    }
}
