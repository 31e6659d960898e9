//! `llama-shm chat`: a conversation, one line per turn.
//!
//! The conversation goes to the worker as what it is, a list of messages (through the request
//! area), rendered with the model's own chat template; the worker's prefix cache makes each
//! turn cost only its new tokens. When it no longer fits the model's context, the worker drops
//! the oldest turns (whole turns; the system prompt stays) and a note on stderr says how many.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use llama_shm::internals::client::RequestError;
use llama_shm::{Finish, Message, Role};

use crate::{
    connect, disconnect, exit, interrupt_flag, request_options, CancelOnInterrupt, ChatArgs, Printer,
};

/// Forgets the `dropped` oldest messages after the leading system messages of `history` (as
/// the worker dropped them).
pub(crate) fn forget_oldest(history: &mut Vec<Message>, dropped: usize) {
    let lead = history.iter().take_while(|m| m.role == Role::System).count();
    let end = (lead + dropped).min(history.len());
    history.drain(lead..end);
}

pub(crate) fn run(args: &ChatArgs) -> Result<(), (u8, String)> {
    let timeout = Duration::from_secs(args.timeout);
    let interrupted = interrupt_flag();
    let mut opts = request_options(args.max_tokens, None);
    opts.constraint = args.constraint.load()?;
    opts.drop_oldest = true;
    let mut client = connect(&args.conn, timeout)?;
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let fresh = || {
        let mut h = Vec::new();
        if !args.system.is_empty() {
            h.push(Message::system(args.system.as_str()));
        }
        h
    };
    let mut history = fresh();
    let mut line = String::new();
    let mut failure = None;
    if interactive {
        eprintln!(
            "llama-shm chat: Ctrl-C stops an answer, /reset forgets the conversation, Ctrl-D or /exit quits."
        );
    }
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                failure = Some((exit::REQUEST, format!("reading stdin: {e}")));
                break;
            }
        }
        let message = line.trim();
        match message {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = fresh();
                eprintln!("(conversation forgotten)");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(message));
        interrupted.store(false, std::sync::atomic::Ordering::SeqCst);
        let result = {
            let _watch = CancelOnInterrupt::start(&interrupted, client.canceller());
            let mut printer = Printer::new(std::io::stdout().lock());
            let r = client.chat_stream(&history, &opts, |c| printer.chunk(c));
            if let Err(e) = printer.finish(r.is_err()) {
                failure = Some((exit::REQUEST, format!("writing the answer: {e}")));
                break;
            }
            r
        };
        match result {
            Ok(r) => {
                if r.dropped_messages > 0 {
                    forget_oldest(&mut history, r.dropped_messages as usize);
                    eprintln!(
                        "(the {} oldest message(s) no longer fit the model's context and were dropped)",
                        r.dropped_messages
                    );
                }
                match r.finish {
                    Finish::Cancelled => eprintln!("(stopped)"),
                    Finish::Length => eprintln!("(the answer reached its token limit)"),
                    _ => {}
                }
                history.push(Message::assistant(r.text.trim()));
            }
            Err(e @ (RequestError::WorkerDied { .. } | RequestError::Closed { .. })) => {
                failure = Some((exit::REQUEST, format!("request failed: {e}")));
                break;
            }
            Err(e) => {
                // The message got no answer: it is not part of the conversation.
                history.pop();
                eprintln!("llama-shm: request failed: {e}");
            }
        }
    }
    disconnect(client, args.conn.attach.is_some());
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_messages_go_and_the_system_prompt_stays() {
        let mut h = vec![
            Message::system("s"),
            Message::user("u1"),
            Message::assistant("a1"),
            Message::user("u2"),
        ];
        forget_oldest(&mut h, 2);
        assert_eq!(h, [Message::system("s"), Message::user("u2")]);
        let mut no_system = vec![Message::user("u1"), Message::assistant("a1"), Message::user("u2")];
        forget_oldest(&mut no_system, 2);
        assert_eq!(no_system, [Message::user("u2")]);
        forget_oldest(&mut no_system, 9);
        assert!(no_system.is_empty());
    }
}
