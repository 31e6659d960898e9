//! Object names. A prefix `P` names the seed's four objects, `/P_shared_mem`, `/P_sem_ready`,
//! `/P_sem_prompts_written` and `/P_sem_response_written`, and the seed streaming service's
//! fifth, `/P_sem_chunk_ready` (only a standalone worker creates it). The seed's prefix is
//! `llama_cpp`.

use std::ffi::CString;
use std::fmt;

/// The seed's prefix: its objects are `/llama_cpp_shared_mem` and `/llama_cpp_sem_*`.
pub const SEED_PREFIX: &str = "llama_cpp";
/// What follows `P_` in the five names: the shared memory, the three semaphores of the
/// protocol in protocol order, then the seed streaming service's `chunk_ready`.
pub const OBJECT_SUFFIXES: [&str; 5] = [
    "shared_mem",
    "sem_ready",
    "sem_prompts_written",
    "sem_response_written",
    CHUNK_READY_SUFFIX,
];

/// What follows `P_` in the name of the seed streaming service's semaphore (the fourth
/// semaphore of that service, the fifth name of a prefix).
pub const CHUNK_READY_SUFFIX: &str = "sem_chunk_ready";

/// The index in [`OBJECT_SUFFIXES`] of `chunk_ready`: a prefix's names are complete without it
/// (spawned workers and seed-era workers never create it).
pub const CHUNK_READY_INDEX: usize = 4;

/// Longest prefix accepted (the longest name, `/P_sem_response_written`, stays well under
/// `NAME_MAX` once glibc adds `sem.`).
pub const MAX_PREFIX_LEN: usize = 200;

/// A prefix was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Empty, or longer than [`MAX_PREFIX_LEN`].
    #[error("prefix must be 1 to {MAX_PREFIX_LEN} characters, got {len}")]
    Length {
        /// Its length.
        len: usize,
    },
    /// Contains a character outside `[A-Za-z0-9_.-]` (a `/`, say).
    #[error("prefix {prefix:?} contains {ch:?}; allowed are ASCII letters, digits, '_', '-' and '.'")]
    BadChar {
        /// The prefix.
        prefix: String,
        /// The first offending character.
        ch: char,
    },
}

/// A validated object-name prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(String);

impl Prefix {
    /// Validates `s` as a prefix.
    ///
    /// # Errors
    /// [`PrefixError`] for an empty or over-long prefix or a character outside
    /// `[A-Za-z0-9_.-]`.
    pub fn new(s: &str) -> Result<Self, PrefixError> {
        if s.is_empty() || s.len() > MAX_PREFIX_LEN {
            return Err(PrefixError::Length { len: s.len() });
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(PrefixError::BadChar { prefix: s.into(), ch });
        }
        Ok(Self(s.into()))
    }

    /// The seed's prefix, `llama_cpp`.
    pub fn seed() -> Self {
        Self(SEED_PREFIX.into())
    }

    /// An unguessable prefix for a spawned worker: `llama_cpp_<pid>_<random>`, 30 characters,
    /// with at least 60 random bits.
    ///
    /// # Errors
    /// When the OS random source fails.
    pub fn random() -> Result<Self, getrandom::Error> {
        const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let head = format!("{SEED_PREFIX}_{}_", std::process::id());
        let n = 30usize.saturating_sub(head.len()).max(12);
        let mut bytes = vec![0u8; n];
        getrandom::getrandom(&mut bytes)?;
        let tail: String = bytes
            .iter()
            .map(|b| ALPHABET[(b & 31) as usize] as char)
            .collect();
        Ok(Self(head + &tail))
    }

    /// The prefix of slot `k` of a multi-slot worker on this prefix: `P.slotK` (slot 0 is `P`
    /// itself). `None` when the name would be too long.
    pub fn slot(&self, k: u32) -> Option<Prefix> {
        if k == 0 {
            return Some(self.clone());
        }
        Prefix::new(&format!("{}.slot{k}", self.0)).ok()
    }

    /// The prefix as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix whose object `index` (0 the shared memory, 1–3 the semaphores in protocol
    /// order, 4 `chunk_ready`, as [`OBJECT_SUFFIXES`]) is named `/{name}`; `None` for any other
    /// name.
    pub fn of_object_name(name: &str) -> Option<(Prefix, usize)> {
        OBJECT_SUFFIXES.iter().enumerate().find_map(|(i, suffix)| {
            let p = name.strip_suffix(suffix)?.strip_suffix('_')?;
            Some((Prefix::new(p).ok()?, i))
        })
    }

    fn name(&self, suffix: &str) -> CString {
        // Validation guarantees no NUL.
        CString::new(format!("/{}_{suffix}", self.0)).expect("validated prefix has no NUL")
    }

    /// `/P_shared_mem`.
    pub fn shm(&self) -> CString {
        self.name(OBJECT_SUFFIXES[0])
    }
    /// `/P_sem_ready`.
    pub fn sem_ready(&self) -> CString {
        self.name(OBJECT_SUFFIXES[1])
    }
    /// `/P_sem_prompts_written`.
    pub fn sem_prompts_written(&self) -> CString {
        self.name(OBJECT_SUFFIXES[2])
    }
    /// `/P_sem_response_written`.
    pub fn sem_response_written(&self) -> CString {
        self.name(OBJECT_SUFFIXES[3])
    }
    /// `/P_sem_chunk_ready`: the fourth semaphore of the seed's streaming service (posted per
    /// streamed update); only a standalone worker creates it.
    pub fn sem_chunk_ready(&self) -> CString {
        self.name(OBJECT_SUFFIXES[CHUNK_READY_INDEX])
    }
    /// The three semaphore names, in protocol order.
    pub fn sems(&self) -> [CString; 3] {
        [
            self.sem_ready(),
            self.sem_prompts_written(),
            self.sem_response_written(),
        ]
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Prefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_names_are_exactly_the_seeds() {
        let p = Prefix::seed();
        assert_eq!(p.shm().to_str().unwrap(), "/llama_cpp_shared_mem");
        assert_eq!(p.sem_ready().to_str().unwrap(), "/llama_cpp_sem_ready");
        assert_eq!(
            p.sem_prompts_written().to_str().unwrap(),
            "/llama_cpp_sem_prompts_written"
        );
        assert_eq!(
            p.sem_response_written().to_str().unwrap(),
            "/llama_cpp_sem_response_written"
        );
        // The name seed-streaming.md gives the streaming service's fourth semaphore.
        assert_eq!(
            p.sem_chunk_ready().to_str().unwrap(),
            "/llama_cpp_sem_chunk_ready"
        );
        assert_eq!(
            Prefix::of_object_name("llama_cpp_sem_chunk_ready"),
            Some((p.clone(), CHUNK_READY_INDEX))
        );
    }

    #[test]
    fn random_prefixes_are_short_unique_and_valid() {
        let a = Prefix::random().unwrap();
        let b = Prefix::random().unwrap();
        assert_ne!(a, b);
        assert!(a.as_str().len() <= 30 || a.as_str().len() == 11 + std::process::id().to_string().len() + 12);
        assert!(a
            .as_str()
            .starts_with(&format!("llama_cpp_{}_", std::process::id())));
        Prefix::new(a.as_str()).unwrap();
    }

    #[test]
    fn bad_prefixes_are_refused() {
        assert_eq!(Prefix::new(""), Err(PrefixError::Length { len: 0 }));
        assert!(matches!(
            Prefix::new("a/b"),
            Err(PrefixError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            Prefix::new("a\0b"),
            Err(PrefixError::BadChar { ch: '\0', .. })
        ));
        assert!(Prefix::new(&"x".repeat(201)).is_err());
        assert!(Prefix::new("ok_prefix-1.2").is_ok());
    }
}
