//! Comparison transports for the IPC benchmark: the same request/response round trip over a Unix
//! stream socket, a pipe pair, TCP loopback and HTTP/1.1 + JSON over TCP loopback.
//!
//! # What one round trip is
//!
//! The client writes a request made of two prompt fields (`system`, `user`), the server reads the
//! whole request and replies with a `response`-byte payload, the client reads the whole reply and
//! checks it. One sample is the wall time of write-request → full-reply-read, measured with
//! [`Instant`] around each round trip.
//!
//! The byte-stream transports ([`Transport::UnixSocket`], [`Transport::Pipe`], [`Transport::Tcp`])
//! share one framing ([`framed`]): every field is preceded by its length as 4 little-endian bytes,
//! so a request is `[len_a][a][len_b][b]` and a reply is `[len][payload]`. [`Transport::Http`]
//! ([`http`]) sends a keep-alive `POST /v1/echo` with a JSON body `{"system":…,"user":…}` and gets
//! back `{"response":…}`; both ends parse the head with `httparse` and the JSON with `serde_json`,
//! because that cost is what the comparison is about.
//!
//! Servers validate every length (nothing above [`MAX_FIELD`] is accepted), read with buffered
//! exact reads, and reuse their buffers, so no request allocates on the framed transports.
//!
//! # Verification
//!
//! A fast but broken transport must not report a fast time. Each request carries a tag that
//! changes every round trip (the first byte of `system` and the last byte of `user`); the server
//! copies them to the first and last byte of its reply, and the client checks the reply length
//! and both bytes. A stale, truncated or made-up reply is an error.
//!
//! # Processes
//!
//! The server always runs in a separate process ([`server`]): this program again, started with
//! the hidden `__bench-server` sub-command once both ends of the socket or pipes exist, with its
//! ends as standard input and output. It pins itself, serves until the client closes its end and
//! exits; the parent waits for it and kills it if it has not exited 2 s after the client closed.

mod affinity;
mod framed;
mod http;
mod server;

pub use affinity::{pin_current_thread, pin_for_good};
pub use server::{serve, ServerArgs};

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use server::ServerEnds;

/// Largest field length (framed transports) or HTTP body a server or client accepts: 1 MiB.
pub const MAX_FIELD: usize = 1 << 20;

/// Read buffer of every stream reader.
const READ_BUFFER: usize = 64 * 1024;

/// Client-side receive timeout on sockets, so that a live but stuck server cannot hang the
/// benchmark. Pipes have none; they rely on the server's death closing its end.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The sizes of one exchange, in bytes: two request fields and the reply payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Length of the first request field (the system prompt).
    pub system: usize,
    /// Length of the second request field (the user prompt).
    pub user: usize,
    /// Length of the reply payload.
    pub response: usize,
}

impl Payload {
    /// A short chat turn: 100-byte system and user prompts, a 200-byte answer.
    pub const SMALL: Payload = Payload {
        system: 100,
        user: 100,
        response: 200,
    };
    /// A long turn: 4000-byte prompts, a 32000-byte answer.
    pub const LARGE: Payload = Payload {
        system: 4000,
        user: 4000,
        response: 32000,
    };

    /// Checks that every field is between 1 byte and [`MAX_FIELD`], and, for HTTP, that the JSON
    /// bodies fit [`MAX_FIELD`] too (the tags need at least one byte per field).
    fn validate(self, transport: Transport) -> io::Result<()> {
        for (name, len) in [
            ("system", self.system),
            ("user", self.user),
            ("response", self.response),
        ] {
            if len == 0 || len > MAX_FIELD {
                return Err(invalid_input(format!(
                    "payload {name} is {len} bytes; it must be 1..={MAX_FIELD}"
                )));
            }
        }
        // `{"system":"","user":""}` is 23 bytes, `{"response":""}` 15.
        if transport == Transport::Http
            && (self.system + self.user + 23 > MAX_FIELD || self.response + 15 > MAX_FIELD)
        {
            return Err(invalid_input(format!(
                "payload {self:?} does not fit a {MAX_FIELD}-byte HTTP body"
            )));
        }
        Ok(())
    }
}

/// Where the client and the server run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Client on CPU 0, server on CPU 1: every round trip crosses cores (wake-up IPIs, cache
    /// line transfers). Unavailable when the process may not use both CPU 0 and CPU 1.
    TwoCores,
    /// Client and server both on CPU 0: every round trip is two context switches.
    OneCore,
}

impl Placement {
    /// Both placements, in table order.
    pub const ALL: [Placement; 2] = [Placement::TwoCores, Placement::OneCore];

    /// A short label for tables.
    pub fn name(self) -> &'static str {
        match self {
            Placement::TwoCores => "2 cores",
            Placement::OneCore => "1 core",
        }
    }

    /// The CPUs of the client and the server (or worker).
    pub fn cpus(self) -> (usize, usize) {
        match self {
            Placement::TwoCores => (0, 1),
            Placement::OneCore => (0, 0),
        }
    }
}

/// The IPC mechanism being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// `socketpair(AF_UNIX, SOCK_STREAM)`, length-prefixed framing.
    UnixSocket,
    /// Two pipes, one per direction, length-prefixed framing.
    Pipe,
    /// TCP over 127.0.0.1 with `TCP_NODELAY` on both ends, length-prefixed framing.
    Tcp,
    /// HTTP/1.1 keep-alive + JSON bodies over TCP loopback with `TCP_NODELAY`.
    Http,
}

impl Transport {
    /// Every transport, in table order.
    pub const ALL: [Transport; 4] = [
        Transport::UnixSocket,
        Transport::Pipe,
        Transport::Tcp,
        Transport::Http,
    ];

    /// A short label for tables.
    pub fn name(self) -> &'static str {
        match self {
            Transport::UnixSocket => "unix socket",
            Transport::Pipe => "pipe pair",
            Transport::Tcp => "tcp loopback",
            Transport::Http => "http+json",
        }
    }
}

/// Measures `iters` round trips of `payload` over `transport`, after `warmup` unrecorded ones.
///
/// Returns one sample per measured round trip, in order. The server runs in a child process
/// (this program's hidden `__bench-server` sub-command) pinned according to `placement`; the
/// calling thread is pinned for the duration of the call and gets its previous CPU mask back
/// before this returns. Other threads may exist: nothing here forks.
///
/// # Errors
///
/// - [`io::ErrorKind::InvalidInput`] if a payload field is 0 or larger than [`MAX_FIELD`].
/// - [`io::ErrorKind::Unsupported`] for [`Placement::TwoCores`] when this thread may not run on
///   both CPU 0 and CPU 1 (a one-CPU machine, or a narrower cpuset), and any error of
///   [`pin_current_thread`].
/// - Any error creating the socket or pipes, starting the server, or exchanging data, including
///   a reply that fails verification ([`io::ErrorKind::InvalidData`]).
/// - [`io::ErrorKind::Other`] if the server did not exit cleanly (an error, a failed pin, or a
///   kill after the 2 s deadline), even when every round trip succeeded.
pub fn run(
    transport: Transport,
    payload: Payload,
    placement: Placement,
    warmup: usize,
    iters: usize,
) -> io::Result<Vec<Duration>> {
    payload.validate(transport)?;
    affinity::check_placement(placement)?;
    let (client_cpu, server_cpu) = placement.cpus();
    let spawn = |ends| server::spawn(transport, server_cpu, payload.response, ends);
    match transport {
        Transport::UnixSocket => {
            let (client, server) = UnixStream::pair()?;
            client.set_read_timeout(Some(CLIENT_READ_TIMEOUT))?;
            let child = spawn(ServerEnds::Socket(server.into()))?;
            let measured = framed::measure(&client, &client, payload, client_cpu, warmup, iters);
            drop(client);
            child.finish(measured)
        }
        Transport::Pipe => {
            let (request_read, request_write) = pipe()?;
            let (reply_read, reply_write) = pipe()?;
            let child = spawn(ServerEnds::Pipes {
                input: request_read.into(),
                output: reply_write.into(),
            })?;
            let measured = framed::measure(&reply_read, &request_write, payload, client_cpu, warmup, iters);
            drop((reply_read, request_write));
            child.finish(measured)
        }
        Transport::Tcp | Transport::Http => {
            let (client, server) = tcp_pair()?;
            let child = spawn(ServerEnds::Socket(server.into()))?;
            let measured = if transport == Transport::Tcp {
                framed::measure(&client, &client, payload, client_cpu, warmup, iters)
            } else {
                http::measure(&client, payload, client_cpu, warmup, iters)
            };
            drop(client);
            child.finish(measured)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints

/// A pipe as (read end, write end), both close-on-exec (the server gets its end as a standard
/// stream, never by inheritance of the descriptor itself).
fn pipe() -> io::Result<(File, File)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((File::from(read), File::from(write)))
}

/// A connected TCP loopback pair (client, server) with `TCP_NODELAY` on both ends.
fn tcp_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    for stream in [&client, &server] {
        stream.set_nodelay(true)?;
    }
    client.set_read_timeout(Some(CLIENT_READ_TIMEOUT))?;
    Ok((client, server))
}

// ---------------------------------------------------------------------------------------------
// Measurement and verification, shared by the framed and the HTTP clients

/// Pins the calling thread to `cpu`, runs `warmup` unrecorded then `iters` timed round trips.
fn measure<F>(cpu: usize, warmup: usize, iters: usize, mut round_trip: F) -> io::Result<Vec<Duration>>
where
    F: FnMut(u64) -> io::Result<()>,
{
    let _pinned = pin_current_thread(cpu)?;
    let mut round = 0u64;
    for _ in 0..warmup {
        round_trip(round)?;
        round += 1;
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        round_trip(round)?;
        samples.push(start.elapsed());
        round += 1;
    }
    Ok(samples)
}

/// The tags of round `round`: the first byte of `system` and the last byte of `user`, which the
/// server copies into the first and last byte of its reply. Upper case, unlike the filler.
fn tags(round: u64) -> (u8, u8) {
    (b'A' + (round % 26) as u8, b'A' + ((round * 7 + 3) % 26) as u8)
}

/// `len` bytes of lower-case filler.
fn filler(len: usize) -> impl ExactSizeIterator<Item = u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8)
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Checks a reply payload against the expected length and tags.
fn verify_reply(reply: &[u8], expected_len: usize, (first, last): (u8, u8)) -> io::Result<()> {
    if reply.len() != expected_len {
        return Err(invalid_data(format!(
            "reply is {} bytes, expected {expected_len}",
            reply.len()
        )));
    }
    if reply.first() != Some(&first) || reply.last() != Some(&last) {
        return Err(invalid_data(format!(
            "reply tags {:?}/{:?} do not match the request's {:?}/{:?}",
            reply.first().map(|&b| b as char),
            reply.last().map(|&b| b as char),
            first as char,
            last as char
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_payloads_are_rejected() {
        for payload in [
            Payload {
                system: 0,
                user: 1,
                response: 1,
            },
            Payload {
                system: 1,
                user: 1,
                response: 0,
            },
            Payload {
                system: 1,
                user: MAX_FIELD + 1,
                response: 1,
            },
        ] {
            // The payload is rejected before any server process starts.
            let err = run(Transport::Pipe, payload, Placement::OneCore, 0, 1).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        let too_big_for_http = Payload {
            system: MAX_FIELD / 2,
            user: MAX_FIELD / 2,
            response: 1,
        };
        assert!(too_big_for_http.validate(Transport::Tcp).is_ok());
        assert!(too_big_for_http.validate(Transport::Http).is_err());
    }

    /// Runs 50 small round trips on one core and checks the sample count.
    fn smoke(transport: Transport) {
        let samples = run(transport, Payload::SMALL, Placement::OneCore, 5, 50)
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        assert_eq!(samples.len(), 50);
        assert!(samples.iter().all(|d| *d > Duration::ZERO));
    }

    #[test]
    fn smoke_unix_socket() {
        smoke(Transport::UnixSocket);
    }

    #[test]
    fn smoke_pipe() {
        smoke(Transport::Pipe);
    }

    #[test]
    fn smoke_tcp() {
        smoke(Transport::Tcp);
    }

    #[test]
    fn smoke_http() {
        smoke(Transport::Http);
    }

    #[test]
    fn large_payload_over_http_on_two_cores_or_a_clear_refusal() {
        let result = run(Transport::Http, Payload::LARGE, Placement::TwoCores, 2, 20);
        let two = affinity::allows(0).unwrap() && affinity::allows(1).unwrap();
        match result {
            Ok(samples) => {
                assert!(two, "TwoCores succeeded without CPUs 0 and 1");
                assert_eq!(samples.len(), 20);
            }
            Err(e) => {
                assert!(!two, "TwoCores failed although CPUs 0 and 1 are available: {e}");
                assert_eq!(e.kind(), io::ErrorKind::Unsupported);
            }
        }
    }
}
