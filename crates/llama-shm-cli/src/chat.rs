//! `llama-shm chat`: a conversation, one line per turn.
//!
//! The wire carries one system and one user prompt of at most 4095 bytes each, and the worker
//! templates exactly those two messages. The conversation therefore travels in the system
//! field, after the user's system prompt, as a plain transcript; when it no longer fits, the
//! oldest turns are dropped (whole turns, never half of one) and a note on stderr says how
//! many. Keeping the transcript at the *end* of the system prompt also keeps the start of the
//! prompt stable from turn to turn, which is what the worker's prefix cache reuses.

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use llama_shm::internals::client::RequestError;
use llama_shm::Finish;
use llama_shm::Prompts;

use crate::{
    connect, disconnect, exit, interrupt_flag, request_options, CancelOnInterrupt, ChatArgs, Printer,
};

/// The header between the system prompt and the transcript.
const HEADER: &str = "\n\nThe conversation so far:\n";

/// One exchange of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Turn {
    pub user: String,
    pub assistant: String,
}

fn render(turn: &Turn) -> String {
    format!("User: {}\nAssistant: {}\n", turn.user, turn.assistant)
}

/// The system prompt for the next request: `base`, then as many of the most recent `turns` as
/// fit in `limit` bytes. Returns the prompt and how many of the oldest turns did not fit.
pub(crate) fn compose(base: &str, turns: &VecDeque<Turn>, limit: usize) -> (String, usize) {
    let rendered: Vec<String> = turns.iter().map(render).collect();
    let mut keep = rendered.len();
    let mut size = rendered.iter().map(String::len).sum::<usize>();
    while keep > 0 && base.len() + HEADER.len() + size > limit {
        size -= rendered[rendered.len() - keep].len();
        keep -= 1;
    }
    let dropped = rendered.len() - keep;
    if keep == 0 {
        return (base.to_owned(), dropped);
    }
    let mut out = String::with_capacity(base.len() + HEADER.len() + size);
    out.push_str(base);
    out.push_str(HEADER);
    for r in &rendered[dropped..] {
        out.push_str(r);
    }
    (out, dropped)
}

pub(crate) fn run(args: &ChatArgs) -> Result<(), (u8, String)> {
    let timeout = Duration::from_secs(args.timeout);
    let interrupted = interrupt_flag();
    let mut client = connect(&args.conn, timeout)?;
    let opts = request_options(args.max_tokens, None);
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut turns: VecDeque<Turn> = VecDeque::new();
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
                turns.clear();
                eprintln!("(conversation forgotten)");
                continue;
            }
            _ => {}
        }
        let (system, dropped) = compose(&args.system, &turns, Prompts::MAX_SYSTEM_BYTES);
        if dropped > 0 {
            turns.drain(..dropped);
            eprintln!(
                "(dropped the {dropped} oldest turn(s): the conversation must fit the 4 KiB system field)"
            );
        }
        if message.len() > Prompts::MAX_USER_BYTES {
            eprintln!("(your message is cut to the user field's 4095 bytes)");
        }
        interrupted.store(false, std::sync::atomic::Ordering::SeqCst);
        let result = {
            let _watch = CancelOnInterrupt::start(&interrupted, client.canceller());
            let mut printer = Printer::new(std::io::stdout().lock());
            let r = client.stream(
                Prompts {
                    system: &system,
                    user: message,
                },
                &opts,
                |c| printer.chunk(c),
            );
            if let Err(e) = printer.finish() {
                failure = Some((exit::REQUEST, format!("writing the answer: {e}")));
                break;
            }
            r
        };
        match result {
            Ok(r) => {
                match r.finish {
                    Finish::Cancelled => eprintln!("(stopped)"),
                    Finish::Length => eprintln!("(the answer reached its token limit)"),
                    _ => {}
                }
                turns.push_back(Turn {
                    user: message.to_owned(),
                    assistant: r.text.trim().to_owned(),
                });
            }
            Err(e @ (RequestError::WorkerDied { .. } | RequestError::Closed { .. })) => {
                failure = Some((exit::REQUEST, format!("request failed: {e}")));
                break;
            }
            Err(e) => eprintln!("llama-shm: request failed: {e}"),
        }
    }
    disconnect(client, args.conn.attach.is_some());
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(u: &str, a: &str) -> Turn {
        Turn {
            user: u.into(),
            assistant: a.into(),
        }
    }

    #[test]
    fn all_turns_fit() {
        let turns: VecDeque<Turn> = [turn("hi", "hello"), turn("2+2?", "4")].into();
        let (s, dropped) = compose("Be brief.", &turns, 4095);
        assert_eq!(dropped, 0);
        assert_eq!(
            s,
            "Be brief.\n\nThe conversation so far:\nUser: hi\nAssistant: hello\nUser: 2+2?\nAssistant: 4\n"
        );
    }

    #[test]
    fn oldest_turns_are_dropped_whole() {
        let turns: VecDeque<Turn> =
            [turn("one", &"a".repeat(50)), turn("two", "b"), turn("three", "c")].into();
        // Room for the base, the header and the last two turns only.
        let tail = "User: two\nAssistant: b\nUser: three\nAssistant: c\n";
        let limit = "S".len() + HEADER.len() + tail.len();
        let (s, dropped) = compose("S", &turns, limit);
        assert_eq!(dropped, 1);
        assert_eq!(s, format!("S{HEADER}{tail}"));
        // One byte less: only the last turn fits.
        let (s, dropped) = compose("S", &turns, limit - 1);
        assert_eq!(dropped, 2);
        assert!(s.ends_with("User: three\nAssistant: c\n") && !s.contains("two"));
    }

    #[test]
    fn nothing_fits_leaves_the_base_alone() {
        let turns: VecDeque<Turn> = [turn(&"x".repeat(5000), "y")].into();
        assert_eq!(compose("base", &turns, 4095), ("base".to_owned(), 1));
        assert_eq!(compose("base", &VecDeque::new(), 4095), ("base".to_owned(), 0));
    }
}
