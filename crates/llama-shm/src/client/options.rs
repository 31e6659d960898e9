//! What a caller chooses: the protocol to speak, the restart policy, per-request options, and
//! what a request gives back.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{Constraint, Usage};
use crate::wire::status::Finish;

/// Which protocol the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Use the extension page when the worker has one, the seed's protocol otherwise.
    #[default]
    Auto,
    /// Speak only the seed's protocol, even to a worker with an extension page.
    Seed,
}

/// What a spawned worker of this project runs, as typed settings instead of its flags (each
/// unset setting keeps the worker's default). Raw flags from [`ClientBuilder::arg`] must not
/// repeat one of these: the worker refuses a flag given twice (exit 2).
///
/// [`ClientBuilder::arg`]: super::ClientBuilder::arg
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineSettings {
    /// Answer `{system}\n{user}` with no model (tests, benchmarks) instead of llama.cpp.
    pub echo: bool,
    /// The GGUF model to load (default: the worker's, see the README).
    pub model: Option<PathBuf>,
    /// Context size in tokens.
    pub context_tokens: Option<u32>,
    /// Threads for prompt processing and generation.
    pub threads: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Sampling seed (the same seed gives the same answer).
    pub seed: Option<u32>,
    /// Greedy (deterministic) sampling.
    pub greedy: bool,
}

impl EngineSettings {
    /// The worker's flags for these settings.
    pub fn worker_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: Option<OsString>| {
            args.push(name.into());
            args.extend(value);
        };
        if self.echo {
            flag("--engine", Some("echo".into()));
        }
        if let Some(m) = &self.model {
            flag("--model", Some(m.clone().into()));
        }
        if let Some(n) = self.context_tokens {
            flag("--ctx", Some(n.to_string().into()));
        }
        if let Some(n) = self.threads {
            flag("--threads", Some(n.to_string().into()));
        }
        if let Some(t) = self.temperature {
            flag("--temp", Some(t.to_string().into()));
        }
        if let Some(s) = self.seed {
            flag("--seed", Some(s.to_string().into()));
        }
        if self.greedy {
            flag("--greedy", None);
        }
        args
    }
}

/// When a spawned worker has died, whether and how the client starts a new one.
///
/// The request that met the death fails with [`RequestError::WorkerDied`](super::RequestError::WorkerDied); the next request
/// respawns the worker (same binary, arguments and options) and is sent to it. Consecutive
/// failed spawns wait `backoff`, doubling up to `max_backoff`, and give up after
/// `max_attempts` with [`RequestError::RestartFailed`](super::RequestError::RestartFailed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Spawn attempts per outage before giving up (0 disables restarts).
    pub max_attempts: u32,
    /// Wait before the second attempt of an outage (the first is immediate).
    pub backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl RestartPolicy {
    /// No restarts: a dead worker closes the client (the default).
    pub const NEVER: RestartPolicy = RestartPolicy {
        max_attempts: 0,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };
    /// Up to 5 attempts, 10 ms backoff doubling to 1 s.
    pub const DEFAULT: RestartPolicy = RestartPolicy {
        max_attempts: 5,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_secs(1),
    };
}

/// What a request asks beyond its prompts. Honoured by workers that advertise streaming
/// (this project's worker); a seed-mode worker answers in its own way and only the client's
/// request timeout applies.
///
/// ```
/// use std::time::Duration;
/// use llama_shm::RequestOptions;
/// let opts = RequestOptions::default().deadline(Duration::from_secs(5)).max_tokens(64);
/// assert_eq!(opts.max_tokens, Some(64));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// Generation budget, counted by the worker from when it takes the request: when it
    /// passes, generation stops within one token and the answer so far comes back with
    /// [`Finish::Deadline`]. The client's request timeout still bounds the whole wait.
    pub deadline: Option<Duration>,
    /// Most tokens to generate (the worker's own limit applies too).
    pub max_tokens: Option<u32>,
    /// What the answer must match: a JSON schema or a GBNF grammar. A worker that cannot
    /// compile it answers [`RequestError::InvalidConstraint`](super::RequestError::InvalidConstraint)
    /// before generating anything; an answer the token budget cut ends with
    /// [`Finish::Length`] and may not parse.
    pub constraint: Option<Constraint>,
    /// Sampling seed of this request (the same seed, prompt and worker give the same answer);
    /// `None`: the worker's own sampler goes on.
    pub seed: Option<u32>,
    /// A conversation over the context loses its oldest turns instead of failing with
    /// [`RequestError::PromptTooLong`](super::RequestError::PromptTooLong);
    /// [`Response::dropped_messages`] says how many messages went.
    pub drop_oldest: bool,
}

impl RequestOptions {
    /// Constrains the answer to JSON that `schema` (a JSON schema's text) accepts.
    pub fn json_schema(mut self, schema: impl Into<String>) -> Self {
        self.constraint = Some(Constraint::JsonSchema(schema.into()));
        self
    }
    /// Constrains the answer to the GBNF `grammar` (start rule `root`).
    pub fn grammar(mut self, grammar: impl Into<String>) -> Self {
        self.constraint = Some(Constraint::Grammar(grammar.into()));
        self
    }
    /// Sets the sampling seed.
    pub fn seed(mut self, seed: u32) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Drops the oldest turns of a conversation that does not fit.
    pub fn drop_oldest(mut self) -> Self {
        self.drop_oldest = true;
        self
    }
    /// Sets the deadline.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }
    /// Sets the token budget.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The answer text (valid UTF-8).
    pub text: String,
    /// The worker cut the answer at the 32 KiB response limit.
    pub truncated: bool,
    /// The client cut the system prompt to fit its field ([`Policy::Truncate`](crate::Policy::Truncate)).
    pub system_truncated: bool,
    /// The client cut the user prompt to fit its field.
    pub user_truncated: bool,
    /// The request's sequence number (0 in seed mode).
    pub seq: u64,
    /// Resource use reported by the worker (zeros in seed mode).
    pub usage: Usage,
    /// Why the answer ended (`Unknown` in seed mode).
    pub finish: Finish,
    /// Messages dropped from the front of the conversation to fit the context (with
    /// [`RequestOptions::drop_oldest`]).
    pub dropped_messages: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_settings_become_the_workers_flags() {
        assert!(EngineSettings::default().worker_args().is_empty());
        let s = EngineSettings {
            echo: true,
            model: Some("m.gguf".into()),
            context_tokens: Some(512),
            threads: Some(2),
            temperature: Some(0.5),
            seed: Some(7),
            greedy: true,
        };
        let args: Vec<String> = s
            .worker_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        // The flags of `llama-shm-worker --help`.
        assert_eq!(
            args,
            [
                "--engine",
                "echo",
                "--model",
                "m.gguf",
                "--ctx",
                "512",
                "--threads",
                "2",
                "--temp",
                "0.5",
                "--seed",
                "7",
                "--greedy"
            ]
        );
    }
}
