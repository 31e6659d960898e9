//! Logging for the binaries (both workers and `llama-shm`): `tracing` to stderr, level
//! from `RUST_LOG` (default `warn`), colours only on a terminal, and a writer that never fails.

use std::io::{IsTerminal, Write};

/// Installs the process's `tracing` subscriber.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(|| QuietStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// stderr that never fails: a spawned worker's stderr is a pipe to its client, which may be
/// gone (then a write is EPIPE). A log line must not end the process — `eprintln!`, and the
/// error report of tracing's writer, panic on a failed write — least of all a worker on its
/// way out, removing the names of that very client.
struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
