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
//! share one framing: every field is preceded by its length as 4 little-endian bytes, so a request
//! is `[len_a][a][len_b][b]` and a reply is `[len][payload]`. [`Transport::Http`] sends a
//! keep-alive `POST /v1/echo` with a JSON body `{"system":…,"user":…}` and gets back
//! `{"response":…}`; both ends parse the head (request or status line, headers, `Content-Length`)
//! and the JSON with `serde_json`, because that cost is what the comparison is about.
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
//! The server always runs in a separate process, created with `fork()` after both ends of the
//! socket or pipes exist; the child closes every inherited descriptor except its own ends, pins
//! itself, serves until the client closes its end, and leaves with `_exit`. The parent reaps it
//! with `waitpid` and kills it with `SIGKILL` if it has not exited 2 s after the client closed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// Largest field length (framed transports) or HTTP body a server or client accepts: 1 MiB.
pub const MAX_FIELD: usize = 1 << 20;

/// Longest HTTP head (start line and headers together) either end accepts.
const MAX_HTTP_HEAD: usize = 8 * 1024;

/// Read buffer of every stream reader.
const READ_BUFFER: usize = 64 * 1024;

/// Client-side receive timeout on sockets, so that a live but stuck server cannot hang the
/// benchmark. Pipes have none; they rely on the server's death closing its end.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server gets to exit on its own after the client closed its end.
const REAP_DEADLINE: Duration = Duration::from_secs(2);

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

    /// The CPUs of the client and the server.
    fn cpus(self) -> (usize, usize) {
        match self {
            Placement::TwoCores => (0, 1),
            Placement::OneCore => (0, 0),
        }
    }
}

/// The IPC mechanism being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
/// Returns one sample per measured round trip, in order. The server runs in a forked child
/// process pinned according to `placement`; the calling thread is pinned for the duration of the
/// call and gets its previous CPU mask back before this returns.
///
/// # Errors
///
/// - [`io::ErrorKind::InvalidInput`] if a payload field is 0 or larger than [`MAX_FIELD`].
/// - [`io::ErrorKind::Unsupported`] for [`Placement::TwoCores`] when this thread may not run on
///   both CPU 0 and CPU 1 (a one-CPU machine, or a narrower cpuset), and any error of
///   [`pin_current_thread`].
/// - Any error creating the socket or pipes, forking, or exchanging data, including a reply that
///   fails verification ([`io::ErrorKind::InvalidData`]).
/// - [`io::ErrorKind::Other`] if the server did not exit cleanly (an error, a failed pin, or a
///   kill after the 2 s deadline), even when every round trip succeeded.
///
/// # Safety
///
/// This forks, and the child keeps running Rust code that allocates (and, for HTTP, runs
/// `serde_json`). After `fork()` only the calling thread exists in the child, so any lock held
/// by another thread at that instant stays locked forever there. The caller must therefore
/// ensure that the process is single-threaded (call it before spawning threads, e.g. progress
/// bars or thread pools), or at least that no other thread can be holding a lock the child takes:
/// the memory allocator's (glibc's `malloc` is made fork-safe by glibc itself; other allocators
/// may not be) and the standard error lock (used only if the child panics).
pub unsafe fn run(
    transport: Transport,
    payload: Payload,
    placement: Placement,
    warmup: usize,
    iters: usize,
) -> io::Result<Vec<Duration>> {
    payload.validate(transport)?;
    check_placement(placement)?;
    let (client_cpu, server_cpu) = placement.cpus();
    match transport {
        Transport::UnixSocket => {
            let (client, server) = UnixStream::pair()?;
            client.set_read_timeout(Some(CLIENT_READ_TIMEOUT))?;
            let keep = [server.as_raw_fd()];
            let serve = move || serve_framed(&server, &server, payload.response);
            // SAFETY: this function's own contract is the one `spawn_server` requires.
            let child = unsafe { spawn_server(server_cpu, &keep, serve) }?;
            let measured = measure_framed(&client, &client, payload, client_cpu, warmup, iters);
            drop(client);
            child.finish(measured)
        }
        Transport::Pipe => {
            let (request_read, request_write) = pipe()?;
            let (reply_read, reply_write) = pipe()?;
            let keep = [request_read.as_raw_fd(), reply_write.as_raw_fd()];
            let serve = move || serve_framed(&request_read, &reply_write, payload.response);
            // SAFETY: this function's own contract is the one `spawn_server` requires.
            let child = unsafe { spawn_server(server_cpu, &keep, serve) }?;
            let measured = measure_framed(&reply_read, &request_write, payload, client_cpu, warmup, iters);
            drop((reply_read, request_write));
            child.finish(measured)
        }
        Transport::Tcp | Transport::Http => {
            let (client, server) = tcp_pair()?;
            let keep = [server.as_raw_fd()];
            if transport == Transport::Tcp {
                let serve = move || serve_framed(&server, &server, payload.response);
                // SAFETY: this function's own contract is the one `spawn_server` requires.
                let child = unsafe { spawn_server(server_cpu, &keep, serve) }?;
                let measured = measure_framed(&client, &client, payload, client_cpu, warmup, iters);
                drop(client);
                child.finish(measured)
            } else {
                let serve = move || serve_http(&server, payload.response);
                // SAFETY: this function's own contract is the one `spawn_server` requires.
                let child = unsafe { spawn_server(server_cpu, &keep, serve) }?;
                let measured = measure_http(&client, payload, client_cpu, warmup, iters);
                drop(client);
                child.finish(measured)
            }
        }
    }
}

/// Pins the calling thread to `cpu` until the returned guard is dropped.
///
/// The guard restores the thread's previous CPU mask on drop. It is neither `Send` nor `Sync`:
/// the mask belongs to the thread that was pinned, so the guard must be dropped there.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] if `cpu` is not below `CPU_SETSIZE`; the OS error of
/// `sched_getaffinity` or `sched_setaffinity` otherwise (`EINVAL` when `cpu` does not exist or is
/// outside this process's cpuset).
pub fn pin_current_thread(cpu: usize) -> io::Result<AffinityGuard> {
    let previous = current_affinity()?;
    set_affinity(&single_cpu_set(cpu)?)?;
    Ok(AffinityGuard {
        previous,
        _not_send: PhantomData,
    })
}

/// Restores the CPU mask a thread had before [`pin_current_thread`], when dropped.
#[must_use = "dropping the guard unpins the thread immediately"]
pub struct AffinityGuard {
    previous: libc::cpu_set_t,
    /// The mask is the pinned thread's: keep the guard on that thread.
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for AffinityGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AffinityGuard").finish_non_exhaustive()
    }
}

impl Drop for AffinityGuard {
    fn drop(&mut self) {
        // Nothing useful to do on failure: the old mask was valid when we read it.
        let _ = set_affinity(&self.previous);
    }
}

// ---------------------------------------------------------------------------------------------
// CPU affinity

/// The calling thread's CPU mask.
fn current_affinity() -> io::Result<libc::cpu_set_t> {
    // SAFETY: `cpu_set_t` is a plain bit array, for which all-zero bytes are a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable `cpu_set_t` of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

/// Sets the calling thread's CPU mask.
fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A mask holding only `cpu`.
fn single_cpu_set(cpu: usize) -> io::Result<libc::cpu_set_t> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(invalid_input(format!("CPU {cpu} is beyond CPU_SETSIZE")));
    }
    // SAFETY: `cpu_set_t` is a plain bit array, for which all-zero bytes are a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu < CPU_SETSIZE` (checked above), so the bit index is inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    Ok(set)
}

/// Fails with `Unsupported` if this thread may not run on every CPU `placement` uses.
fn check_placement(placement: Placement) -> io::Result<()> {
    let allowed = current_affinity()?;
    let (client, server) = placement.cpus();
    for cpu in [client, server] {
        // SAFETY: `cpu` is 0 or 1, far below `CPU_SETSIZE`, so the bit index is inside `allowed`.
        if !unsafe { libc::CPU_ISSET(cpu, &allowed) } {
            // SAFETY: `allowed` is a valid, initialized `cpu_set_t`.
            let count = unsafe { libc::CPU_COUNT(&allowed) };
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "placement \"{}\" needs CPU {cpu}, but this thread may run on {count} CPU(s) without it",
                    placement.name()
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Server process

/// Child exit codes, decoded by [`ServerChild::finish`].
const EXIT_OK: libc::c_int = 0;
const EXIT_IO: libc::c_int = 1;
const EXIT_PANIC: libc::c_int = 2;
const EXIT_PIN: libc::c_int = 3;

/// Forks a server process that pins itself to `cpu`, closes every inherited descriptor above 2
/// except `keep`, runs `serve` and exits. In the parent, `serve` (and the server ends it owns)
/// is dropped, so only the child holds them.
///
/// # Safety
///
/// No other thread may hold a lock the child needs: see the `# Safety` section of [`run`].
unsafe fn spawn_server<F>(cpu: usize, keep: &[RawFd], serve: F) -> io::Result<ServerChild>
where
    F: FnOnce() -> io::Result<()>,
{
    // SAFETY: `fork` itself has no memory-safety requirements in the parent. In the child only
    // this thread survives; the caller guarantees no other thread held a lock the child will
    // take, and the child never returns into the caller's frames (it leaves through `_exit`).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = server_main(cpu, keep, serve);
            // SAFETY: `_exit` never returns. Skipping destructors and atexit handlers is the point:
            // the parent's state copied into the child (buffers, guards) must not be finalized here.
            unsafe { libc::_exit(code) }
        }
        pid => {
            drop(serve);
            Ok(ServerChild { pid: Some(pid) })
        }
    }
}

/// Body of the forked child; returns its exit code.
fn server_main<F>(cpu: usize, keep: &[RawFd], serve: F) -> libc::c_int
where
    F: FnOnce() -> io::Result<()>,
{
    // Without this, the child would hold copies of the client's ends (no EOF when the client
    // closes) and of every other descriptor of the parent, such as another benchmark's sockets.
    close_inherited_fds(keep);
    let pinned = single_cpu_set(cpu).and_then(|set| set_affinity(&set));
    if pinned.is_err() {
        return EXIT_PIN;
    }
    match std::panic::catch_unwind(AssertUnwindSafe(serve)) {
        Ok(Ok(())) => EXIT_OK,
        Ok(Err(_)) => EXIT_IO,
        Err(_) => EXIT_PANIC,
    }
}

/// Closes every descriptor above 2 that is not in `keep` (at most 4 entries are honoured).
fn close_inherited_fds(keep: &[RawFd]) {
    let mut sorted = [RawFd::MAX; 4];
    let n = keep.len().min(sorted.len());
    sorted[..n].copy_from_slice(&keep[..n]);
    sorted[..n].sort_unstable();
    let mut next: libc::c_uint = 3;
    for &fd in &sorted[..n] {
        let Ok(fd) = libc::c_uint::try_from(fd) else {
            continue;
        };
        if fd < next {
            continue;
        }
        if fd > next {
            close_range(next, fd - 1);
        }
        next = fd + 1;
    }
    close_range(next, libc::c_uint::MAX);
}

/// Closes descriptors `first..=last`, with `close_range(2)` or, on kernels before 5.9, one by one
/// up to the descriptor limit.
fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: close_range only closes descriptors; the child owns no Rust object that will use
    // the closed ones (everything it uses is in `keep`).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
    if rc == 0 {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let limit = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let limit = libc::c_uint::try_from(limit).unwrap_or(1024).min(1 << 20);
    for fd in first..=last.min(limit.saturating_sub(1)) {
        // SAFETY: as above; closing a descriptor that is not open just fails with EBADF.
        unsafe { libc::close(fd as libc::c_int) };
    }
}

/// A forked server process that has not been reaped yet.
struct ServerChild {
    pid: Option<libc::pid_t>,
}

/// How a server process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerExit {
    Code(libc::c_int),
    Signal(libc::c_int),
    /// Still running at the deadline, then killed.
    Killed,
}

impl ServerChild {
    /// Reaps the server (the client's ends must be closed already) and merges its fate with the
    /// client's result: a clean exit keeps `measured`, anything else becomes an error.
    fn finish(mut self, measured: io::Result<Vec<Duration>>) -> io::Result<Vec<Duration>> {
        let Some(pid) = self.pid.take() else {
            return measured;
        };
        let exit = reap(pid)?;
        let problem = match exit {
            ServerExit::Code(EXIT_OK) => return measured,
            ServerExit::Code(EXIT_IO) => "the server failed (I/O or protocol error)".to_string(),
            ServerExit::Code(EXIT_PANIC) => "the server panicked".to_string(),
            ServerExit::Code(EXIT_PIN) => "the server could not pin itself to its CPU".to_string(),
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
        if let Some(pid) = self.pid.take() {
            let _ = reap(pid);
        }
    }
}

/// Waits up to [`REAP_DEADLINE`] for `pid` to exit, then kills it with `SIGKILL` and waits.
fn reap(pid: libc::pid_t) -> io::Result<ServerExit> {
    let deadline = Instant::now() + REAP_DEADLINE;
    loop {
        if let Some(status) = wait_pid(pid, libc::WNOHANG)? {
            return Ok(decode_status(status));
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: `pid` is our unreaped child, so the pid cannot have been reused by another process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    match wait_pid(pid, 0)? {
        Some(_) => Ok(ServerExit::Killed),
        None => Err(io::Error::other("waitpid returned without a status")),
    }
}

/// `waitpid(pid, flags)`, retried on `EINTR`; `None` when `WNOHANG` found it still running.
fn wait_pid(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<libc::c_int>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable int; `pid` is our child.
        let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
        if rc == pid {
            return Ok(Some(status));
        }
        if rc == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn decode_status(status: libc::c_int) -> ServerExit {
    if libc::WIFEXITED(status) {
        ServerExit::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ServerExit::Signal(libc::WTERMSIG(status))
    } else {
        ServerExit::Code(-1)
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints

/// A pipe as (read end, write end), both close-on-exec.
fn pipe() -> io::Result<(File, File)> {
    let mut fds: [libc::c_int; 2] = [-1; 2];
    // SAFETY: `fds` is a valid, writable array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
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
// Measurement

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

// ---------------------------------------------------------------------------------------------
// Length-prefixed framing

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

/// Reads one length-prefixed field into `buf`, reusing its capacity.
fn read_field<R: Read>(reader: &mut R, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
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
fn serve_framed<R: Read, W: Write>(input: R, mut output: W, response: usize) -> io::Result<()> {
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

fn measure_framed<R: Read, W: Write>(
    input: R,
    output: W,
    payload: Payload,
    cpu: usize,
    warmup: usize,
    iters: usize,
) -> io::Result<Vec<Duration>> {
    let mut client = FramedClient::new(input, output, payload)?;
    measure(cpu, warmup, iters, |round| client.round_trip(round))
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 + JSON

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
}

/// Reads one CRLF-terminated line into `line` (without the CRLF), charging it to `budget`.
/// Returns `false` if the stream ended cleanly before the first byte.
fn read_crlf_line<R: BufRead>(reader: &mut R, line: &mut Vec<u8>, budget: &mut usize) -> io::Result<bool> {
    line.clear();
    let n = reader.by_ref().take(*budget as u64).read_until(b'\n', line)?;
    if n == 0 && *budget > 0 {
        return Ok(false);
    }
    *budget -= n;
    if line.last() != Some(&b'\n') {
        return Err(if *budget == 0 {
            invalid_data(format!("HTTP head longer than {MAX_HTTP_HEAD} bytes"))
        } else {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside an HTTP head",
            )
        });
    }
    line.pop();
    if line.pop() != Some(b'\r') {
        return Err(invalid_data("HTTP line not terminated by CRLF".to_string()));
    }
    Ok(true)
}

/// Reads header lines up to the empty line that ends the head.
fn read_headers<R: BufRead>(reader: &mut R, line: &mut Vec<u8>, budget: &mut usize) -> io::Result<HttpHead> {
    let mut head = HttpHead::default();
    loop {
        if !read_crlf_line(reader, line, budget)? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside an HTTP head",
            ));
        }
        if line.is_empty() {
            return Ok(head);
        }
        let text =
            std::str::from_utf8(line).map_err(|_| invalid_data("non-UTF-8 HTTP header".to_string()))?;
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| invalid_data(format!("malformed HTTP header {text:?}")))?;
        let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(is_token) {
            return Err(invalid_data(format!("malformed HTTP header name {name:?}")));
        }
        let value = value.trim_matches([' ', '\t']);
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
}

/// Reads a request head (`POST /v1/echo HTTP/1.1` and headers); `None` on a clean end of stream
/// before it, as when a keep-alive client hangs up.
fn read_request_head<R: BufRead>(reader: &mut R, line: &mut Vec<u8>) -> io::Result<Option<HttpHead>> {
    let mut budget = MAX_HTTP_HEAD;
    if !read_crlf_line(reader, line, &mut budget)? {
        return Ok(None);
    }
    if line.as_slice() != b"POST /v1/echo HTTP/1.1" {
        return Err(invalid_data(format!(
            "unexpected request line {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    read_headers(reader, line, &mut budget).map(Some)
}

/// Reads a response head; anything but `HTTP/1.1 200` is an error.
fn read_response_head<R: BufRead>(reader: &mut R, line: &mut Vec<u8>) -> io::Result<HttpHead> {
    let mut budget = MAX_HTTP_HEAD;
    if !read_crlf_line(reader, line, &mut budget)? {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = line.strip_prefix(b"HTTP/1.1 ").and_then(|rest| {
        let (code, reason) = rest.split_at_checked(3)?;
        let ok = code.iter().all(u8::is_ascii_digit) && (reason.is_empty() || reason[0] == b' ');
        ok.then_some(code)
    });
    match status {
        Some(b"200") => read_headers(reader, line, &mut budget),
        Some(code) => Err(invalid_data(format!(
            "HTTP status {}",
            String::from_utf8_lossy(code)
        ))),
        None => Err(invalid_data(format!(
            "malformed status line {:?}",
            String::from_utf8_lossy(line)
        ))),
    }
}

/// Parses `body` as a JSON object and returns its string member `key`.
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
fn serve_http(stream: &TcpStream, response: usize) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
    let mut writer = stream;
    let mut line = Vec::with_capacity(256);
    let mut body = Vec::with_capacity(READ_BUFFER);
    let mut reply_body = Vec::with_capacity(response + 64);
    let mut out = Vec::with_capacity(response + 256);
    let mut text: String = filler(response).map(char::from).collect();
    loop {
        let Some(head) = read_request_head(&mut reader, &mut line)? else {
            return Ok(());
        };
        read_field(&mut reader, head.json_body_len()?, &mut body)?;
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
        if head.close {
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
    line: Vec<u8>,
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
            line: Vec::with_capacity(256),
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

        let head = read_response_head(&mut self.reader, &mut self.line)?;
        read_field(&mut self.reader, head.json_body_len()?, &mut self.reply_body)?;
        let reply = parse_json(&self.reply_body)?;
        verify_reply(json_str(&reply, "response")?.as_bytes(), self.response, tags)
    }
}

fn measure_http(
    stream: &TcpStream,
    payload: Payload,
    cpu: usize,
    warmup: usize,
    iters: usize,
) -> io::Result<Vec<Duration>> {
    let mut client = HttpClient::new(stream, payload);
    measure(cpu, warmup, iters, |round| client.round_trip(round))
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
        assert!(serve_framed(Cursor::new(request), io::sink(), 10).is_err());
    }

    #[test]
    fn framed_server_echoes_tags_and_stops_at_clean_eof() {
        let mut client_request = Vec::new();
        push_field(&mut client_request, b"Xbc".iter().copied()).unwrap();
        push_field(&mut client_request, b"deY".iter().copied()).unwrap();
        let mut out = Vec::new();
        serve_framed(Cursor::new(client_request), &mut out, 5).expect("one request, then EOF");
        assert_eq!(out, [&5u32.to_le_bytes()[..], b"XbcdY"].concat());
        // A request cut in the middle is an error, not a clean end.
        let mut cut = Vec::new();
        push_field(&mut cut, b"abc".iter().copied()).unwrap();
        cut.truncate(5);
        assert!(serve_framed(Cursor::new(cut), io::sink(), 5).is_err());
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
            // SAFETY: the payload is rejected before anything forks.
            let err = unsafe { run(Transport::Pipe, payload, Placement::OneCore, 0, 1) }.unwrap_err();
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

    #[test]
    fn pinning_restores_the_previous_mask() {
        let before = current_affinity().unwrap();
        // SAFETY: `before` is a valid, initialized `cpu_set_t`.
        let count_before = unsafe { libc::CPU_COUNT(&before) };
        {
            let _guard = pin_current_thread(0).expect("CPU 0 exists");
            let pinned = current_affinity().unwrap();
            // SAFETY: `pinned` is a valid, initialized `cpu_set_t`.
            assert_eq!(unsafe { libc::CPU_COUNT(&pinned) }, 1);
        }
        let after = current_affinity().unwrap();
        // SAFETY: `after` is a valid, initialized `cpu_set_t`.
        assert_eq!(unsafe { libc::CPU_COUNT(&after) }, count_before);
        assert!(pin_current_thread(libc::CPU_SETSIZE as usize).is_err());
    }

    /// Runs 50 small round trips on one core and checks the sample count.
    fn smoke(transport: Transport) {
        // SAFETY: other test threads may exist, but none holds the allocator lock across the
        // fork in a way glibc does not handle, and the child only writes to stderr if it panics.
        let samples = unsafe { run(transport, Payload::SMALL, Placement::OneCore, 5, 50) }
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
        // SAFETY: as in `smoke`.
        let result = unsafe { run(Transport::Http, Payload::LARGE, Placement::TwoCores, 2, 20) };
        let allowed = current_affinity().unwrap();
        // SAFETY: 0 and 1 are below CPU_SETSIZE; `allowed` is initialized.
        let two = unsafe { libc::CPU_ISSET(0, &allowed) && libc::CPU_ISSET(1, &allowed) };
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
