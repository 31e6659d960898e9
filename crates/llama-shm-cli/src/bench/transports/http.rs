//! The HTTP/1.1 + JSON transport: a keep-alive `POST /v1/echo` with `{"system":…,"user":…}`,
//! answered by `{"response":…}`. Heads are parsed with `httparse`, bodies with `serde_json`.
//!
//! A head is read line by line (so that not one byte of the body is consumed) up to the empty
//! line that ends it, at most [`MAX_HTTP_HEAD`] bytes, then handed to `httparse` whole. On top of
//! what `httparse` checks, every line must end in CRLF (it accepts a bare LF), header values must
//! be UTF-8, `Content-Length` must be plain digits, at most [`MAX_FIELD`] and not contradicted
//! by a second one, and `Transfer-Encoding` is refused.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::time::Duration;

use super::framed::read_field;
use super::{filler, invalid_data, tags, verify_reply, Payload, MAX_FIELD, READ_BUFFER};

/// Longest HTTP head (start line and headers together) either end accepts.
const MAX_HTTP_HEAD: usize = 8 * 1024;

/// Header slots for `httparse` on the stack. A head with more headers is parsed again with one
/// slot per line, so the count has no limit beyond [`MAX_HTTP_HEAD`]. (Slots for the most a head
/// could hold, 2048, would cost a 64 KiB stack frame per parse: measured +12 µs per large round
/// trip on one core.)
const INLINE_HEADERS: usize = 32;

/// What the benchmark needs from an HTTP head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct HttpHead {
    /// `Content-Length`, at most [`MAX_FIELD`].
    content_length: Option<usize>,
    /// `Content-Type` is `application/json` (parameters such as `charset` allowed).
    json: bool,
    /// `Connection: close` was sent.
    close: bool,
}

impl HttpHead {
    /// The body length of a head that must carry a JSON body.
    fn json_body_len(&self) -> io::Result<usize> {
        if !self.json {
            return Err(invalid_data("Content-Type is not application/json".to_string()));
        }
        self.content_length
            .ok_or_else(|| invalid_data("no Content-Length".to_string()))
    }

    /// The fields of interest of parsed `headers`.
    fn from_headers(headers: &[httparse::Header<'_>]) -> io::Result<HttpHead> {
        let mut head = HttpHead::default();
        for header in headers {
            let (name, value) = (header.name, header.value);
            let value = std::str::from_utf8(value)
                .map_err(|_| invalid_data(format!("non-UTF-8 value of HTTP header {name:?}")))?
                .trim_matches([' ', '\t']);
            if name.eq_ignore_ascii_case("content-length") {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid_data(format!("bad Content-Length {value:?}")));
                }
                let len = value
                    .parse::<usize>()
                    .ok()
                    .filter(|&len| len <= MAX_FIELD)
                    .ok_or_else(|| invalid_data(format!("Content-Length {value} exceeds {MAX_FIELD}")))?;
                if head.content_length.is_some_and(|previous| previous != len) {
                    return Err(invalid_data("conflicting Content-Length headers".to_string()));
                }
                head.content_length = Some(len);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(invalid_data(format!(
                    "Transfer-Encoding {value:?} is not supported"
                )));
            } else if name.eq_ignore_ascii_case("content-type") {
                let media = value.split(';').next().unwrap_or("").trim_matches([' ', '\t']);
                head.json = media.eq_ignore_ascii_case("application/json");
            } else if name.eq_ignore_ascii_case("connection") {
                head.close = value
                    .split(',')
                    .any(|v| v.trim_matches([' ', '\t']).eq_ignore_ascii_case("close"));
            }
        }
        Ok(head)
    }
}

/// Reads one head into `head` (reusing its capacity): lines up to and including the empty one,
/// at most [`MAX_HTTP_HEAD`] bytes. Returns `false` if the stream ended cleanly before its first
/// byte.
fn read_head<R: BufRead>(reader: &mut R, head: &mut Vec<u8>) -> io::Result<bool> {
    head.clear();
    let mut budget = MAX_HTTP_HEAD;
    loop {
        let start = head.len();
        let n = reader.by_ref().take(budget as u64).read_until(b'\n', head)?;
        budget -= n;
        if n == 0 && start == 0 {
            return Ok(false);
        }
        if n == 0 || head.last() != Some(&b'\n') {
            return Err(if budget == 0 {
                invalid_data(format!("HTTP head longer than {MAX_HTTP_HEAD} bytes"))
            } else {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside an HTTP head",
                )
            });
        }
        if head[start..] == *b"\r\n" || head[start..] == *b"\n" {
            break;
        }
    }
    let bare_lf = head.first() == Some(&b'\n') || head.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r');
    if bare_lf {
        return Err(invalid_data("HTTP line not terminated by CRLF".to_string()));
    }
    Ok(true)
}

/// `httparse`'s verdict on a whole head: it must be complete and end where the head ends.
fn complete(status: httparse::Status<usize>, head: &[u8], what: &str) -> io::Result<()> {
    match status {
        httparse::Status::Complete(n) if n == head.len() => Ok(()),
        _ => Err(invalid_data(format!("incomplete HTTP {what} head"))),
    }
}

/// The first line of `head`, for error messages.
fn start_line(head: &[u8]) -> String {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or(&[]);
    String::from_utf8_lossy(line).into_owned()
}

/// One header slot per line of `head`: enough for any head.
fn line_slots<'b>(head: &[u8]) -> Vec<MaybeUninit<httparse::Header<'b>>> {
    let lines = head.iter().filter(|&&b| b == b'\n').count();
    (0..lines).map(|_| MaybeUninit::uninit()).collect()
}

/// Parses a request head with `slots`; the outer error is `httparse`'s.
fn request_fields<'b>(
    head: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<io::Result<HttpHead>, httparse::Error> {
    let mut request = httparse::Request::new(&mut []);
    let status =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, head, slots)?;
    Ok(complete(status, head, "request").and_then(|()| {
        if (request.method, request.path, request.version) != (Some("POST"), Some("/v1/echo"), Some(1)) {
            return Err(invalid_data(format!(
                "unexpected request line {:?}",
                start_line(head)
            )));
        }
        HttpHead::from_headers(request.headers)
    }))
}

/// Parses a response head with `slots`; the outer error is `httparse`'s.
fn response_fields<'b>(
    head: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<io::Result<HttpHead>, httparse::Error> {
    let mut response = httparse::Response::new(&mut []);
    let status =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, head, slots)?;
    Ok(
        complete(status, head, "response").and_then(|()| match (response.version, response.code) {
            (Some(1), Some(200)) => HttpHead::from_headers(response.headers),
            (Some(1), Some(code)) => Err(invalid_data(format!("HTTP status {code}"))),
            _ => Err(invalid_data(format!(
                "malformed status line {:?}",
                start_line(head)
            ))),
        }),
    )
}

/// Runs `fields` with [`INLINE_HEADERS`] slots, and again with [`line_slots`] if that was too few.
fn parse_head<'b, F>(head: &'b [u8], what: &str, fields: F) -> io::Result<HttpHead>
where
    F: Fn(
        &'b [u8],
        &mut [MaybeUninit<httparse::Header<'b>>],
    ) -> Result<io::Result<HttpHead>, httparse::Error>,
{
    let mut inline = [const { MaybeUninit::uninit() }; INLINE_HEADERS];
    let parsed = match fields(head, &mut inline) {
        Err(httparse::Error::TooManyHeaders) => fields(head, &mut line_slots(head)),
        other => other,
    };
    parsed.map_err(|e| invalid_data(format!("malformed HTTP {what} head: {e}")))?
}

/// Reads a request head (`POST /v1/echo HTTP/1.1` and headers) into `buf`; `None` on a clean end
/// of stream before it, as when a keep-alive client hangs up.
fn read_request_head<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<Option<HttpHead>> {
    if !read_head(reader, buf)? {
        return Ok(None);
    }
    parse_head(buf, "request", request_fields).map(Some)
}

/// Reads a response head into `buf`; anything but `HTTP/1.1 200` is an error.
fn read_response_head<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<HttpHead> {
    if !read_head(reader, buf)? {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    parse_head(buf, "response", response_fields)
}

/// Returns the string member `key` of the JSON object `value`.
fn json_str<'a>(value: &'a serde_json::Value, key: &str) -> io::Result<&'a str> {
    value
        .get(key)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| invalid_data(format!("no string {key:?} in JSON")))
}

fn parse_json(body: &[u8]) -> io::Result<serde_json::Value> {
    serde_json::from_slice(body).map_err(|e| invalid_data(format!("bad JSON body: {e}")))
}

/// Replaces the first and last character of the ASCII `text` with `first` and `last`.
fn set_tags(text: &mut String, first: u8, last: u8) -> io::Result<()> {
    if text.is_empty() || !first.is_ascii() || !last.is_ascii() {
        return Err(invalid_data(
            "tags need a non-empty text and ASCII tags".to_string(),
        ));
    }
    let end = text.len();
    let mut buf = [0u8; 4];
    text.replace_range(end - 1..end, char::from(last).encode_utf8(&mut buf));
    text.replace_range(0..1, char::from(first).encode_utf8(&mut buf));
    Ok(())
}

/// Serves HTTP requests on `stream` until the client closes it or asks to.
pub(super) fn serve(stream: &TcpStream, response: usize) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
    let mut writer = stream;
    let mut head = Vec::with_capacity(256);
    let mut body = Vec::with_capacity(READ_BUFFER);
    let mut reply_body = Vec::with_capacity(response + 64);
    let mut out = Vec::with_capacity(response + 256);
    let mut text: String = filler(response).map(char::from).collect();
    loop {
        let Some(request_head) = read_request_head(&mut reader, &mut head)? else {
            return Ok(());
        };
        read_field(&mut reader, request_head.json_body_len()?, &mut body)?;
        let request = parse_json(&body)?;
        let (system, user) = (json_str(&request, "system")?, json_str(&request, "user")?);
        let (Some(&first), Some(&last)) = (system.as_bytes().first(), user.as_bytes().last()) else {
            return Err(invalid_data("empty request field".to_string()));
        };
        set_tags(&mut text, first, last)?;
        reply_body.clear();
        let reply = BTreeMap::from([("response", text.as_str())]);
        serde_json::to_writer(&mut reply_body, &reply).map_err(io::Error::other)?;
        out.clear();
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply_body.len()
        )?;
        out.extend_from_slice(&reply_body);
        writer.write_all(&out)?;
        if request_head.close {
            return Ok(());
        }
    }
}

/// The HTTP client: reused strings and buffers, but a fresh JSON encoding and parse per round.
struct HttpClient<'a> {
    reader: BufReader<&'a TcpStream>,
    writer: &'a TcpStream,
    system: String,
    user: String,
    body: Vec<u8>,
    out: Vec<u8>,
    head: Vec<u8>,
    reply_body: Vec<u8>,
    response: usize,
}

impl<'a> HttpClient<'a> {
    fn new(stream: &'a TcpStream, payload: Payload) -> Self {
        HttpClient {
            reader: BufReader::with_capacity(READ_BUFFER, stream),
            writer: stream,
            system: filler(payload.system).map(char::from).collect(),
            user: filler(payload.user).map(char::from).collect(),
            body: Vec::with_capacity(payload.system + payload.user + 64),
            out: Vec::with_capacity(payload.system + payload.user + 256),
            head: Vec::with_capacity(256),
            reply_body: Vec::with_capacity(payload.response + 64),
            response: payload.response,
        }
    }

    fn round_trip(&mut self, round: u64) -> io::Result<()> {
        let tags = tags(round);
        set_tags(&mut self.system, tags.0, b'a')?;
        set_tags(&mut self.user, b'a', tags.1)?;
        self.body.clear();
        let request = BTreeMap::from([("system", self.system.as_str()), ("user", self.user.as_str())]);
        serde_json::to_writer(&mut self.body, &request).map_err(io::Error::other)?;
        self.out.clear();
        write!(
            self.out,
            "POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.body.len()
        )?;
        self.out.extend_from_slice(&self.body);
        self.writer.write_all(&self.out)?;

        let head = read_response_head(&mut self.reader, &mut self.head)?;
        read_field(&mut self.reader, head.json_body_len()?, &mut self.reply_body)?;
        let reply = parse_json(&self.reply_body)?;
        verify_reply(json_str(&reply, "response")?.as_bytes(), self.response, tags)
    }
}

/// Measures HTTP round trips on the client's `stream` (see [`super::measure`]).
pub(super) fn measure(
    stream: &TcpStream,
    payload: Payload,
    cpu: usize,
    warmup: usize,
    iters: usize,
) -> io::Result<Vec<Duration>> {
    let mut client = HttpClient::new(stream, payload);
    super::measure(cpu, warmup, iters, |round| client.round_trip(round))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn request_head(text: &str) -> io::Result<Option<HttpHead>> {
        read_request_head(&mut Cursor::new(text.as_bytes().to_vec()), &mut Vec::new())
    }

    fn response_head(text: &str) -> io::Result<HttpHead> {
        read_response_head(&mut Cursor::new(text.as_bytes().to_vec()), &mut Vec::new())
    }

    const POST: &str = "POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n";

    #[test]
    fn parses_a_valid_request_head() {
        let head = request_head(&format!(
            "{POST}content-type: Application/JSON; charset=utf-8\r\nContent-Length:  42 \r\n\r\n{{}}"
        ))
        .expect("valid head")
        .expect("not at end of stream");
        assert_eq!(
            head,
            HttpHead {
                content_length: Some(42),
                json: true,
                close: false
            }
        );
        assert_eq!(head.json_body_len().expect("has a JSON body"), 42);
    }

    #[test]
    fn many_headers_are_fine_within_the_size_limit() {
        let many: String = (0..(INLINE_HEADERS * 10))
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let head = request_head(&format!("{POST}{many}Content-Length: 3\r\n\r\n"))
            .expect("valid head")
            .expect("not at end of stream");
        assert_eq!(head.content_length, Some(3));
        let bad = format!("{POST}{many}Content-Length: 3\r\nBad Name: x\r\n\r\n");
        assert!(request_head(&bad).is_err());
    }

    #[test]
    fn clean_end_of_stream_is_not_a_request() {
        assert!(request_head("").expect("clean EOF is fine").is_none());
    }

    #[test]
    fn connection_close_is_noticed() {
        let head = request_head(&format!("{POST}Connection: keep-alive, close\r\n\r\n"))
            .expect("valid head")
            .expect("not at end of stream");
        assert!(head.close);
    }

    #[test]
    fn rejects_malformed_requests() {
        let cases = [
            "GET /v1/echo HTTP/1.1\r\n\r\n".to_string(),
            "POST /v1/other HTTP/1.1\r\n\r\n".to_string(),
            "POST /v1/echo HTTP/1.0\r\n\r\n".to_string(),
            format!("{POST}NoColonHere\r\n\r\n"),
            format!("{POST}: empty name\r\n\r\n"),
            format!("{POST}Bad Name: x\r\n\r\n"),
            format!("{POST} folded: continuation\r\n\r\n"),
            format!("{POST}Content-Length: 12x\r\n\r\n"),
            format!("{POST}Content-Length: -1\r\n\r\n"),
            format!("{POST}Content-Length: \r\n\r\n"),
            format!("{POST}Content-Length: 1048577\r\n\r\n"),
            format!("{POST}Content-Length: 99999999999999999999999\r\n\r\n"),
            format!("{POST}Content-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n"),
            format!("{POST}Content-Length: 5\n\r\n"),
            format!("{POST}Content-Length: 5\r\n"),
            format!("{POST}X-Long: {}\r\n\r\n", "y".repeat(MAX_HTTP_HEAD)),
        ];
        for case in cases {
            assert!(request_head(&case).is_err(), "accepted {case:?}");
        }
    }

    #[test]
    fn a_body_needs_json_and_a_length() {
        let no_type = request_head(&format!("{POST}Content-Length: 2\r\n\r\n"))
            .unwrap()
            .unwrap();
        assert!(no_type.json_body_len().is_err());
        let text = request_head(&format!(
            "{POST}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n"
        ));
        assert!(text.unwrap().unwrap().json_body_len().is_err());
        let no_len = request_head(&format!("{POST}Content-Type: application/json\r\n\r\n"))
            .unwrap()
            .unwrap();
        assert!(no_len.json_body_len().is_err());
    }

    #[test]
    fn parses_and_rejects_response_heads() {
        let ok =
            response_head("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n")
                .expect("valid head");
        assert_eq!(ok.json_body_len().expect("JSON body"), 7);
        for bad in [
            "HTTP/1.1 500 Internal Server Error\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.0 200 OK\r\n\r\n",
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length 10\r\n\r\n",
            "",
        ] {
            assert!(response_head(bad).is_err(), "accepted {bad:?}");
        }
    }
}
