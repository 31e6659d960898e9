//! The length-prefixed framing of the byte-stream transports (Unix socket, pipe pair, TCP):
//! every field is preceded by its length as 4 little-endian bytes.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::Duration;

use super::{filler, invalid_data, invalid_input, tags, verify_reply, Payload, MAX_FIELD, READ_BUFFER};

/// Reads one 4-byte little-endian length and checks it against [`MAX_FIELD`].
fn read_len<R: Read>(reader: &mut R) -> io::Result<usize> {
    let mut header = [0u8; 4];
    reader.read_exact(&mut header)?;
    checked_len(header)
}

fn checked_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FIELD {
        return Err(invalid_data(format!("field length {len} exceeds {MAX_FIELD}")));
    }
    Ok(len)
}

/// Reads the first length header of a request; `None` on a clean end of stream before it.
fn read_first_len<R: BufRead>(reader: &mut R) -> io::Result<Option<usize>> {
    if reader.fill_buf()?.is_empty() {
        return Ok(None);
    }
    read_len(reader).map(Some)
}

/// Reads one length-prefixed field (or an HTTP body of known length) into `buf`, reusing its
/// capacity.
pub(super) fn read_field<R: Read>(reader: &mut R, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(len, 0);
    reader.read_exact(buf)
}

/// Appends `[len][bytes]` to `out`.
fn push_field(out: &mut Vec<u8>, bytes: impl ExactSizeIterator<Item = u8>) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid_input("field too long".to_string()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend(bytes);
    Ok(())
}

/// Serves framed requests from `input` until it ends cleanly, replying on `output`.
pub(super) fn serve<R: Read, W: Write>(input: R, mut output: W, response: usize) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, input);
    let mut system = Vec::with_capacity(READ_BUFFER);
    let mut user = Vec::with_capacity(READ_BUFFER);
    let mut reply = Vec::with_capacity(4 + response);
    push_field(&mut reply, filler(response))?;
    loop {
        let Some(system_len) = read_first_len(&mut reader)? else {
            return Ok(());
        };
        read_field(&mut reader, system_len, &mut system)?;
        let user_len = read_len(&mut reader)?;
        read_field(&mut reader, user_len, &mut user)?;
        let (Some(&first), Some(&last)) = (system.first(), user.last()) else {
            return Err(invalid_data("empty request field".to_string()));
        };
        if let Some(payload) = reply.get_mut(4..).filter(|p| !p.is_empty()) {
            payload[0] = first;
            payload[payload.len() - 1] = last;
        }
        output.write_all(&reply)?;
    }
}

/// The client of the framed transports: one reused request buffer, one reused reply buffer.
struct FramedClient<R: Read, W: Write> {
    reader: BufReader<R>,
    writer: W,
    request: Vec<u8>,
    /// Offsets in `request` of the first byte of `system` and the last byte of `user`.
    tag_at: (usize, usize),
    reply: Vec<u8>,
    response: usize,
}

impl<R: Read, W: Write> FramedClient<R, W> {
    fn new(input: R, output: W, payload: Payload) -> io::Result<Self> {
        let mut request = Vec::with_capacity(8 + payload.system + payload.user);
        push_field(&mut request, filler(payload.system))?;
        push_field(&mut request, filler(payload.user))?;
        Ok(FramedClient {
            reader: BufReader::with_capacity(READ_BUFFER, input),
            writer: output,
            tag_at: (4, request.len() - 1),
            request,
            reply: Vec::with_capacity(payload.response),
            response: payload.response,
        })
    }

    fn round_trip(&mut self, round: u64) -> io::Result<()> {
        let tags = tags(round);
        self.request[self.tag_at.0] = tags.0;
        self.request[self.tag_at.1] = tags.1;
        self.writer.write_all(&self.request)?;
        let len = read_len(&mut self.reader)?;
        if len != self.response {
            return Err(invalid_data(format!(
                "reply header says {len} bytes, expected {}",
                self.response
            )));
        }
        read_field(&mut self.reader, len, &mut self.reply)?;
        verify_reply(&self.reply, self.response, tags)
    }
}

/// Measures framed round trips from `input`/`output`, the client's ends (see [`super::measure`]).
pub(super) fn measure<R: Read, W: Write>(
    input: R,
    output: W,
    payload: Payload,
    cpu: usize,
    warmup: usize,
    iters: usize,
) -> io::Result<Vec<Duration>> {
    let mut client = FramedClient::new(input, output, payload)?;
    super::measure(cpu, warmup, iters, |round| client.round_trip(round))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn framed_lengths_above_the_limit_are_rejected() {
        assert_eq!(
            checked_len((MAX_FIELD as u32).to_le_bytes()).expect("limit is fine"),
            MAX_FIELD
        );
        assert!(checked_len((MAX_FIELD as u32 + 1).to_le_bytes()).is_err());
        // A server fed an oversized length fails instead of allocating.
        let mut request = Vec::new();
        request.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(serve(Cursor::new(request), io::sink(), 10).is_err());
    }

    #[test]
    fn framed_server_echoes_tags_and_stops_at_clean_eof() {
        let mut client_request = Vec::new();
        push_field(&mut client_request, b"Xbc".iter().copied()).unwrap();
        push_field(&mut client_request, b"deY".iter().copied()).unwrap();
        let mut out = Vec::new();
        serve(Cursor::new(client_request), &mut out, 5).expect("one request, then EOF");
        assert_eq!(out, [&5u32.to_le_bytes()[..], b"XbcdY"].concat());
        // A request cut in the middle is an error, not a clean end.
        let mut cut = Vec::new();
        push_field(&mut cut, b"abc".iter().copied()).unwrap();
        cut.truncate(5);
        assert!(serve(Cursor::new(cut), io::sink(), 5).is_err());
    }

    #[test]
    fn framed_client_rejects_wrong_replies() {
        let payload = Payload {
            system: 3,
            user: 3,
            response: 4,
        };
        let (first, last) = tags(0);
        let replies: [(&str, Vec<u8>); 4] = [
            (
                "good",
                [&4u32.to_le_bytes()[..], &[first, b'x', b'x', last]].concat(),
            ),
            (
                "stale tags",
                [&4u32.to_le_bytes()[..], &[b'q', b'x', b'x', last]].concat(),
            ),
            (
                "wrong length",
                [&3u32.to_le_bytes()[..], &[first, b'x', last]].concat(),
            ),
            ("truncated", [&4u32.to_le_bytes()[..], &[first, b'x']].concat()),
        ];
        for (what, reply) in replies {
            let mut client = FramedClient::new(Cursor::new(reply), io::sink(), payload).unwrap();
            let result = client.round_trip(0);
            assert_eq!(result.is_ok(), what == "good", "{what}: {result:?}");
        }
    }
}
