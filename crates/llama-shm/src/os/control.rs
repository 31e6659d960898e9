//! The out-of-band control channel between a client and the worker it spawned: a Unix
//! socket that is the worker's stdin.
//!
//! ```text
//! client → worker   32 bytes   the auth token (never on argv, where `ps` would show it)
//! worker → client   "attached\n"         objects opened: the client may unlink the names
//! worker → client   "error <text>\n"     start-up failed (missing model, …); exit follows
//! ```
//! The socket also tells each side that the other is gone: the worker watches for hang-up.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::wire::layout::TOKEN_LEN;

/// A message from the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMsg {
    /// The worker has opened the objects.
    Attached,
    /// Start-up failed; the text says why.
    Error(String),
}

/// Sends the token (client side).
///
/// # Errors
/// The socket's write error.
pub fn send_token(sock: &mut UnixStream, token: &[u8; TOKEN_LEN]) -> io::Result<()> {
    sock.write_all(token)
}

/// Receives the token (worker side), waiting until `deadline`.
///
/// # Errors
/// `TimedOut`, `UnexpectedEof`, or the socket's error.
pub fn recv_token(sock: &mut UnixStream, deadline: Instant) -> io::Result<[u8; TOKEN_LEN]> {
    let mut token = [0u8; TOKEN_LEN];
    let mut got = 0;
    while got < TOKEN_LEN {
        wait_readable(sock, deadline)?;
        match sock.read(&mut token[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(token)
}

/// Sends a message (worker side). Newlines in an error text become " | ".
///
/// # Errors
/// The socket's write error.
pub fn send(sock: &mut UnixStream, msg: &ControlMsg) -> io::Result<()> {
    let line = match msg {
        ControlMsg::Attached => "attached\n".to_string(),
        ControlMsg::Error(text) => format!("error {}\n", text.trim().replace('\n', " | ")),
    };
    sock.write_all(line.as_bytes())
}

/// The longest control line a client accepts (an error message is far shorter).
const MAX_LINE: usize = 64 * 1024;

/// Reads control messages (client side), keeping partial lines between calls.
#[derive(Debug, Default)]
pub struct Receiver {
    pending: Vec<u8>,
    eof: bool,
}

impl Receiver {
    /// Waits until `deadline` for the next message. `Ok(None)` means the worker closed the
    /// socket (it exited) with no further message.
    ///
    /// # Errors
    /// `TimedOut`, or the socket's error.
    pub fn recv(&mut self, sock: &mut UnixStream, deadline: Instant) -> io::Result<Option<ControlMsg>> {
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if line == "attached" {
                    return Ok(Some(ControlMsg::Attached));
                }
                if let Some(text) = line.strip_prefix("error ") {
                    return Ok(Some(ControlMsg::Error(text.to_string())));
                }
                tracing::debug!("ignoring unknown control line {line:?}");
                continue;
            }
            if self.eof {
                return Ok(None);
            }
            if self.pending.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("control line longer than {MAX_LINE} bytes"),
                ));
            }
            wait_readable(sock, deadline)?;
            let mut buf = [0u8; 1024];
            match sock.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => self.eof = true,
                Err(e) => return Err(e),
            }
        }
    }
}

fn wait_readable(sock: &UnixStream, deadline: Instant) -> io::Result<()> {
    if super::process::wait_readable(sock.as_fd(), deadline)? {
        Ok(())
    } else {
        Err(io::ErrorKind::TimedOut.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn messages_round_trip_and_eof_is_none() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        send_token(&mut a, &[7; TOKEN_LEN]).unwrap();
        assert_eq!(recv_token(&mut b, deadline).unwrap(), [7; TOKEN_LEN]);
        send(&mut b, &ControlMsg::Attached).unwrap();
        send(&mut b, &ControlMsg::Error("no model\nat /x".into())).unwrap();
        drop(b);
        let mut rx = Receiver::default();
        assert_eq!(rx.recv(&mut a, deadline).unwrap(), Some(ControlMsg::Attached));
        assert_eq!(
            rx.recv(&mut a, deadline).unwrap(),
            Some(ControlMsg::Error("no model | at /x".into()))
        );
        assert_eq!(rx.recv(&mut a, deadline).unwrap(), None);
    }

    #[test]
    fn a_recv_past_its_deadline_reads_nothing_however_much_is_waiting() {
        // A worker that keeps writing lines the client does not know must not hold the
        // client's recv past its deadline: once the deadline has passed, recv reads nothing
        // more, even with the socket full.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let lines = b"noise\n".repeat(1000);
        b.write_all(&lines).unwrap();
        let err = Receiver::default().recv(&mut a, Instant::now()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        a.set_nonblocking(true).unwrap();
        let mut left = Vec::new();
        let _ = a.read_to_end(&mut left);
        assert_eq!(left.len(), lines.len(), "recv read past its deadline");
    }

    #[test]
    fn an_endless_line_is_refused_not_kept() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = [b'x'; 4096];
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) && b.write_all(&chunk).is_ok() {}
        });
        let err = Receiver::default()
            .recv(&mut a, Instant::now() + Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        drop(a);
        writer.join().unwrap();
    }

    #[test]
    fn recv_times_out() {
        let (mut a, _b) = UnixStream::pair().unwrap();
        let err = Receiver::default()
            .recv(&mut a, Instant::now() + Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
