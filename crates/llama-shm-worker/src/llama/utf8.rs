//! Token pieces to text: incomplete UTF-8 sequences carried from one token to the next, NUL
//! bytes dropped.

/// Streams token bytes as text: keeps an incomplete UTF-8 sequence until the next token
/// completes it, replaces invalid bytes with U+FFFD and drops NUL characters.
#[derive(Debug, Default)]
pub(super) struct Utf8Carry {
    pub(super) pending: Vec<u8>,
}

impl Utf8Carry {
    /// Adds `bytes` and returns the complete characters available so far.
    pub(super) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                }
                Err(err) => {
                    let valid_end = start + err.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    if let Some(bad) = err.error_len() {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start = valid_end + bad;
                    } else {
                        // An incomplete sequence at the end: wait for the next token.
                        start = valid_end;
                        break;
                    }
                }
            }
        }
        self.pending.drain(..start);
        out.retain(|c| c != '\0');
        out
    }

    /// Ends the stream. What is still pending is an incomplete character (complete ones and
    /// invalid bytes were emitted by `push`): generation stopped inside it, so it is dropped
    /// rather than shown as U+FFFD. Returns whether anything was dropped.
    pub(super) fn finish(&mut self) -> bool {
        let dropped = !self.pending.is_empty();
        self.pending.clear();
        dropped
    }
}
