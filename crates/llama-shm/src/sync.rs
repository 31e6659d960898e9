//! The loom façade: the crate's shared-state types come from here, from `std` normally and
//! from `loom` under `--cfg loom`, so the verification models run the shipped code on loom's
//! checked primitives.
//!
//! The multi-slot worker's threads and channels come from here too ([`thread`], [`mpsc`]), so
//! the models run `serve_slots` itself on loom threads.
//!
//! It also holds the *mutants*: defects the verification models must go on catching, kept in
//! the shipped code at the line they would break (today's behaviour before a fix, say). Under
//! `--cfg loom` one of them is switched on per process by `LLAMA_SHM_MUTANT=<name>`; in every
//! other build [`mutant`] is a constant `false` and the branch is compiled away.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;

/// The channels between the multi-slot worker's threads: `std::sync::mpsc`, and under
/// `--cfg loom` a channel of the same shape on loom's `Mutex` + `Condvar` (loom's own mpsc
/// knows nothing of dropped senders, and has no `recv_timeout`).
#[cfg(not(loom))]
pub(crate) use std::sync::mpsc;

/// Scoped threads: `std::thread::scope`, and under `--cfg loom` a scope of loom threads.
#[cfg(not(loom))]
pub(crate) mod thread {
    pub(crate) use std::thread::{scope, Scope};

    /// Spawns the thread `name` running `f` in `scope` (joined when the scope ends).
    pub(crate) fn spawn_named<'scope, F>(
        scope: &'scope Scope<'scope, '_>,
        name: String,
        f: F,
    ) -> std::io::Result<()>
    where
        F: FnOnce() + Send + 'scope,
    {
        std::thread::Builder::new()
            .name(name)
            .spawn_scoped(scope, f)
            .map(drop)
    }
}

#[cfg(loom)]
#[path = "sync/loom_mpsc.rs"]
pub(crate) mod mpsc;

#[cfg(loom)]
#[path = "sync/loom_thread.rs"]
pub(crate) mod thread;

/// A defect a model must catch (see the module docs). The names are what
/// `LLAMA_SHM_MUTANT` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // Each variant is only named at its site and in the models.
pub(crate) enum Mutant {
    /// `deadline-unchecked`: a wait takes a post whatever its deadline says, and the receive
    /// loop goes round on stale posts without looking at the clock (before issue 12).
    DeadlineUnchecked,
    /// `turn-not-recovered`: a worker waiting for `prompts_written` never notices that the
    /// client holding its turn is gone (before issue 12).
    TurnNotRecovered,
    /// `refusal-not-aborted`: the multi-slot worker leaves a request whose sink refuses more
    /// (cancelled, its client gone, the worker stopping) in the batch until the engine pushes
    /// again, which an engine reading a long prompt does not (before 5bae406).
    RefusalNotAborted,
}

impl Mutant {
    #[cfg(loom)]
    fn name(self) -> &'static str {
        match self {
            Mutant::DeadlineUnchecked => "deadline-unchecked",
            Mutant::TurnNotRecovered => "turn-not-recovered",
            Mutant::RefusalNotAborted => "refusal-not-aborted",
        }
    }
}

/// Whether `m` is switched on (only ever under `--cfg loom`).
#[cfg(loom)]
pub(crate) fn mutant(m: Mutant) -> bool {
    static ON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ON.get_or_init(|| std::env::var("LLAMA_SHM_MUTANT").ok())
        .as_deref()
        == Some(m.name())
}

/// Whether `m` is switched on: never, outside the models.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) const fn mutant(_: Mutant) -> bool {
    false
}
