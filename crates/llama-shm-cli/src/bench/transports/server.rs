//! The server process of a comparison transport: this program again, re-executed with the hidden
//! `__bench-server` sub-command.
//!
//! ```text
//!  llama-shm bench                               llama-shm __bench-server <transport> --cpu N …
//!  ───────────────                               ──────────────────────────────────────────────
//!  socketpair / pipes / TCP pair
//!  spawn(/proc/self/exe)  ── server ends as ──▶  stdin  (socket, or the request pipe)
//!                              std streams       stdout (the reply pipe; sockets use stdin both ways)
//!  close its copies of the server ends           pin itself to CPU N
//!  round trips …                       ◀──────▶  serve until the client's end closes
//!  close the client ends                         exit 0 (1 I/O error, 3 pin failed, 4 panic)
//!  try_wait until 2 s, then SIGKILL
//! ```
//!
//! Every descriptor is created close-on-exec and the server's ends reach it only as standard
//! streams (`dup2` by `std::process::Command`), so a server holds no copy of a client end, nor of
//! another benchmark's, and the client sees EOF as soon as its server is gone. Unlike a `fork()`
//! of this process, nothing constrains the threads that exist when a server starts.
//!
//! The unit tests run the same server code in a child process too, but that child is the test
//! binary (see `tests`), whose harness prints on stdout: there, the reply pipe is the child's
//! stderr.

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::panic::AssertUnwindSafe;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{affinity, framed, http, Transport, MAX_FIELD};

/// The hidden sub-command that runs a server (see `main.rs`).
pub const SUBCOMMAND: &str = "__bench-server";

/// How long the server gets to exit on its own after the client closed its end.
const REAP_DEADLINE: Duration = Duration::from_secs(2);

/// Server exit codes, decoded by [`ServerChild::finish`] (2 is clap's, for bad arguments).
const EXIT_OK: i32 = 0;
const EXIT_IO: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_PIN: i32 = 3;
const EXIT_PANIC: i32 = 4;

/// Which standard stream carries the reply pipe: stdout, or stderr under the unit tests' harness.
const REPLY_FD: u8 = if cfg!(test) { 2 } else { 1 };

/// Arguments of `llama-shm __bench-server`: serve one benchmark client on the standard streams.
#[derive(Debug, clap::Parser)]
#[command(name = SUBCOMMAND)]
pub struct ServerArgs {
    /// The transport whose ends the standard streams are.
    #[arg(value_enum)]
    transport: Transport,
    /// The CPU to pin this process to.
    #[arg(long)]
    cpu: usize,
    /// The reply payload in bytes.
    #[arg(long)]
    response: usize,
    /// Where the pipe transport's reply end is: 1 (stdout) or 2 (stderr).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    reply_fd: u8,
}

impl ServerArgs {
    fn to_args(&self) -> Vec<String> {
        let transport = clap::ValueEnum::to_possible_value(&self.transport)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        vec![
            transport,
            format!("--cpu={}", self.cpu),
            format!("--response={}", self.response),
            format!("--reply-fd={}", self.reply_fd),
        ]
    }
}

/// The server's ends, handed to it as standard streams.
pub(super) enum ServerEnds {
    /// A connected stream socket (Unix or TCP), used in both directions: stdin.
    Socket(OwnedFd),
    /// The read end of the request pipe (stdin) and the write end of the reply pipe.
    Pipes { input: OwnedFd, output: OwnedFd },
}

/// Starts a server for `transport` pinned to `cpu`, answering `response` bytes, on `ends`.
///
/// The parent's copies of `ends` are closed when this returns, so only the server holds them.
pub(super) fn spawn(
    transport: Transport,
    cpu: usize,
    response: usize,
    ends: ServerEnds,
) -> io::Result<ServerChild> {
    let args = ServerArgs {
        transport,
        cpu,
        response,
        reply_fd: REPLY_FD,
    };
    let mut command = server_command(&args.to_args());
    command.stdout(Stdio::null());
    match ends {
        ServerEnds::Socket(socket) => {
            command.stdin(socket);
        }
        ServerEnds::Pipes { input, output } => {
            command.stdin(input);
            if REPLY_FD == 2 {
                command.stderr(output);
            } else {
                command.stdout(output);
            }
        }
    }
    let child = command.spawn()?;
    // `command` (and with it the parent's copies of the server ends) is dropped here.
    Ok(ServerChild { child: Some(child) })
}

/// This very program (`/proc/self/exe`, even if the file was replaced since it started), with
/// the server's arguments.
#[cfg(not(test))]
fn server_command(args: &[String]) -> Command {
    let mut command = Command::new("/proc/self/exe");
    command.arg0("llama-shm").arg(SUBCOMMAND).args(args);
    command
}

/// Under `cargo test`, this program is the test binary: run its [`tests::server_process`], which
/// serves when it finds the arguments in its environment.
#[cfg(test)]
fn server_command(args: &[String]) -> Command {
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("llama-shm-test-server")
        .args(["--exact", tests::entry(), "--quiet", "--test-threads=1"])
        .env(tests::ARGS_VAR, args.join(" "));
    command
}

/// Runs `llama-shm __bench-server`: pins this thread, serves the client on the standard streams
/// until it closes, and returns the exit code (never panics: a panic is exit code 4).
pub fn serve(args: &ServerArgs) -> u8 {
    if !(1..=MAX_FIELD).contains(&args.response) {
        return EXIT_USAGE as u8;
    }
    if affinity::pin_for_good(args.cpu).is_err() {
        return EXIT_PIN as u8;
    }
    let code = match std::panic::catch_unwind(AssertUnwindSafe(|| serve_streams(args))) {
        Ok(Ok(())) => EXIT_OK,
        Ok(Err(_)) => EXIT_IO,
        Err(_) => EXIT_PANIC,
    };
    code as u8
}

fn serve_streams(args: &ServerArgs) -> io::Result<()> {
    let input = own(io::stdin().as_fd(), args.transport != Transport::Pipe)?;
    match args.transport {
        Transport::UnixSocket => {
            let socket = UnixStream::from(input);
            framed::serve(&socket, &socket, args.response)
        }
        Transport::Tcp => {
            let socket = TcpStream::from(input);
            framed::serve(&socket, &socket, args.response)
        }
        Transport::Http => http::serve(&TcpStream::from(input), args.response),
        Transport::Pipe => {
            let output = if args.reply_fd == 2 {
                own(io::stderr().as_fd(), false)?
            } else {
                own(io::stdout().as_fd(), false)?
            };
            framed::serve(&File::from(input), &File::from(output), args.response)
        }
    }
}

/// A duplicate of the standard stream `fd`, which must be a socket (or else a pipe).
fn own(fd: BorrowedFd<'_>, socket: bool) -> io::Result<OwnedFd> {
    let file = File::from(fd.try_clone_to_owned()?);
    let kind = file.metadata()?.file_type();
    if (socket && !kind.is_socket()) || (!socket && !kind.is_fifo()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "standard stream is not a {}",
                if socket { "socket" } else { "pipe" }
            ),
        ));
    }
    Ok(file.into())
}

/// A server process that has not been reaped yet.
pub(super) struct ServerChild {
    child: Option<Child>,
}

/// How a server process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerExit {
    Code(i32),
    Signal(i32),
    /// Still running at the deadline, then killed.
    Killed,
}

impl ServerChild {
    /// Reaps the server (the client's ends must be closed already) and merges its fate with the
    /// client's result: a clean exit keeps `measured`, anything else becomes an error.
    pub(super) fn finish(mut self, measured: io::Result<Vec<Duration>>) -> io::Result<Vec<Duration>> {
        let Some(child) = self.child.take() else {
            return measured;
        };
        let problem = match reap(child)? {
            ServerExit::Code(EXIT_OK) => return measured,
            ServerExit::Code(EXIT_IO) => "the server failed (I/O or protocol error)".to_string(),
            ServerExit::Code(EXIT_USAGE) => "the server rejected its arguments".to_string(),
            ServerExit::Code(EXIT_PIN) => "the server could not pin itself to its CPU".to_string(),
            ServerExit::Code(EXIT_PANIC) => "the server panicked".to_string(),
            ServerExit::Code(code) => format!("the server exited with status {code}"),
            ServerExit::Signal(sig) => format!("the server was killed by signal {sig}"),
            ServerExit::Killed => {
                format!("the server did not exit within {REAP_DEADLINE:?} of the client closing; killed")
            }
        };
        Err(match measured {
            Ok(_) => io::Error::other(problem),
            Err(client) => io::Error::new(client.kind(), format!("{problem}; client: {client}")),
        })
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = reap(child);
        }
    }
}

/// Waits up to [`REAP_DEADLINE`] for `child` to exit, then kills it with `SIGKILL` and waits.
fn reap(mut child: Child) -> io::Result<ServerExit> {
    let deadline = Instant::now() + REAP_DEADLINE;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(decode(status));
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Our unreaped child: its pid cannot have been reused by another process.
    child.kill()?;
    child.wait()?;
    Ok(ServerExit::Killed)
}

fn decode(status: ExitStatus) -> ServerExit {
    match (status.code(), status.signal()) {
        (Some(code), _) => ServerExit::Code(code),
        (None, Some(sig)) => ServerExit::Signal(sig),
        (None, None) => ServerExit::Code(-1),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use clap::Parser;

    /// The environment variable that carries the server's arguments to [`server_process`].
    pub const ARGS_VAR: &str = "LLAMA_SHM_BENCH_SERVER_ARGS";

    /// The harness name of [`server_process`]: its path without the crate name.
    pub fn entry() -> &'static str {
        let path = concat!(module_path!(), "::server_process");
        path.split_once("::").map_or(path, |(_crate, rest)| rest)
    }

    /// A no-op in a normal test run; the server process of the other tests when the test binary
    /// is started by [`server_command`] with [`ARGS_VAR`] set.
    #[test]
    fn server_process() {
        let Ok(args) = std::env::var(ARGS_VAR) else {
            return;
        };
        let args = ServerArgs::try_parse_from(std::iter::once(SUBCOMMAND).chain(args.split(' ')));
        let code = args.map_or(EXIT_USAGE as u8, |args| serve(&args));
        std::process::exit(code.into());
    }

    #[test]
    fn arguments_survive_the_command_line() {
        for transport in Transport::ALL {
            let args = ServerArgs {
                transport,
                cpu: 1,
                response: 200,
                reply_fd: 2,
            };
            let text = args.to_args();
            let back = ServerArgs::try_parse_from(std::iter::once(SUBCOMMAND.to_string()).chain(text))
                .expect("parses");
            assert_eq!(
                (back.transport, back.cpu, back.response, back.reply_fd),
                (transport, 1, 200, 2)
            );
        }
        assert!(
            ServerArgs::try_parse_from([SUBCOMMAND, "pipe", "--cpu=0", "--response=1", "--reply-fd=0"])
                .is_err()
        );
    }

    #[test]
    fn entry_names_this_test() {
        assert_eq!(entry(), "bench::transports::server::tests::server_process");
    }

    #[test]
    fn a_server_that_is_not_handed_a_socket_fails_cleanly() {
        // stdin is /dev/null, not a socket: the server refuses it with the I/O exit code.
        let mut command = server_command(
            &ServerArgs {
                transport: Transport::UnixSocket,
                cpu: 0,
                response: 10,
                reply_fd: 2,
            }
            .to_args(),
        );
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let err = ServerChild { child: Some(child) }
            .finish(Ok(Vec::new()))
            .unwrap_err();
        assert!(err.to_string().contains("I/O or protocol error"), "{err}");
    }
}
