//! `llama-shm-echo-worker`: `llama-shm-worker` with the echo engine only. It links no
//! llama.cpp, so it starts in about half the time; the same arguments, protocol and
//! behaviour, with `--engine llama` refused. For tests, benchmarks and frontends under
//! development.

use std::process::ExitCode;

use llama_shm_serve::command::{self, EchoOnly};

fn main() -> ExitCode {
    command::main(
        "llama-shm-echo-worker",
        "Serve the echo engine (no model) over POSIX shared memory, wire-compatible with the \
         seed's chatbot: for tests, benchmarks and frontends under development.",
        &EchoOnly,
    )
}
