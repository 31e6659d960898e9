//! `llama-shm ls` and `llama-shm clean`: the project's named objects in `/dev/shm`, grouped per
//! prefix, with who created them and whether anyone still uses them; and removal of the sets
//! whose users are gone.
//!
//! Liveness is decided by the library ([`objects::presence`]): a recorded creator pid that is
//! alive, or any process mapping one of the objects, means in use. `clean` re-checks it right
//! before removing a set and never removes one in use.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use llama_shm::internals::objects::{self, Presence, CHUNK_READY_INDEX, OBJECT_SUFFIXES};
use llama_shm::internals::os::process::{pid_alive, processes_mapping};
use llama_shm::{ObjectKind, Prefix};

use llama_shm::internals::os::DEV_SHM;

/// Options of `llama-shm ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Print one JSON array (one object per prefix) instead of a table.
    #[arg(long)]
    json: bool,
    /// Only this prefix.
    #[arg(long)]
    prefix: Option<Prefix>,
}

/// Options of `llama-shm clean`.
#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Print what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only this prefix.
    #[arg(long)]
    prefix: Option<Prefix>,
    /// Also remove seed-era sets (no extension page, so no recorded creator) that no process
    /// maps. Off by default: without a creator pid, "nobody maps it" is the only evidence.
    #[arg(long)]
    include_seed: bool,
}

/// One `/dev/shm` entry of a set.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    uid: u32,
    mode: u32,
    size: u64,
}

/// What the shared-memory object of a set is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Has the llama-shm extension page (`LLSHMEXT`): a creator pid is recorded.
    Extended,
    /// A seed-era object: no extension page (or too small for one).
    Seed,
    /// The set has no shared-memory object, only semaphores.
    NoObject,
    /// The object could not be read (another user's, say).
    Unreadable,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Extended => "extended",
            Kind::Seed => "seed",
            Kind::NoObject => "none",
            Kind::Unreadable => "unreadable",
        }
    }
}

/// The verdict on a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its creator is alive, or some process maps it.
    Live,
    /// Leftovers: the recorded creator is gone and nobody maps them.
    Dead,
    /// A seed-era object (no extension page): see `mapped_by`.
    Seed,
    /// Cannot tell (unreadable object nobody visibly maps).
    Unknown,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Live => "live",
            State::Dead => "dead",
            State::Seed => "seed",
            State::Unknown => "unknown",
        }
    }
    fn colour(self) -> &'static str {
        match self {
            State::Live => "\x1b[32m",
            State::Dead => "\x1b[31m",
            State::Seed => "\x1b[33m",
            State::Unknown => "\x1b[2m",
        }
    }
}

/// One prefix's objects and the verdict on them.
#[derive(Debug, Clone)]
struct Set {
    prefix: Prefix,
    entries: [Option<Entry>; OBJECT_SUFFIXES.len()],
    kind: Kind,
    creator: Option<u32>,
    mapped_by: Vec<u32>,
    state: State,
}

impl Set {
    fn main_entry(&self) -> Option<&Entry> {
        self.entries.iter().flatten().next()
    }

    fn detail(&self) -> String {
        let mapped = || {
            let pids: Vec<String> = self.mapped_by.iter().map(u32::to_string).collect();
            pids.join(",")
        };
        match (self.state, self.creator) {
            (State::Live, Some(pid)) if pid_alive(pid) => format!("creator pid {pid} is running"),
            (State::Live, _) => format!("mapped by pid {}", mapped()),
            (State::Dead, Some(pid)) => format!("creator pid {pid} is gone and nobody maps it"),
            (State::Dead, None) => "no shared-memory object, and nobody maps the semaphores".into(),
            (State::Seed, _) if self.mapped_by.is_empty() => {
                "seed-era object (no extension page), not mapped by any process".into()
            }
            (State::Seed, _) => format!("seed-era object (no extension page), mapped by pid {}", mapped()),
            (State::Unknown, _) => "object unreadable (another user's?) and nobody visibly maps it".into(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let objects: serde_json::Map<String, serde_json::Value> = OBJECT_SUFFIXES
            .iter()
            .zip(&self.entries)
            .map(|(label, e)| {
                let v = match e {
                    Some(e) => serde_json::json!({
                        "exists": true,
                        "path": e.path.display().to_string(),
                        "uid": e.uid,
                        "mode": format!("{:04o}", e.mode),
                        "size": e.size,
                    }),
                    None => serde_json::json!({ "exists": false }),
                };
                ((*label).to_string(), v)
            })
            .collect();
        let main = self.main_entry();
        serde_json::json!({
            "prefix": self.prefix.as_str(),
            "state": self.state.as_str(),
            "kind": self.kind.as_str(),
            "creator_pid": self.creator,
            "creator_alive": self.creator.map(pid_alive),
            "mapped_by": self.mapped_by,
            "owner_uid": main.map(|e| e.uid),
            "mode": main.map(|e| format!("{:04o}", e.mode)),
            "size": self.entries[0].as_ref().map(|e| e.size),
            "complete": objects::complete(&self.entries.each_ref().map(Option::is_some)),
            "objects": objects,
            "detail": self.detail(),
        })
    }
}

/// Which object of which prefix a `/dev/shm` entry name is, if it follows the naming scheme.
fn parse_entry(name: &str) -> Option<(Prefix, usize)> {
    objects::object_of_file(name)
}

/// The prefixes present in `/dev/shm` (optionally only `only`).
fn scan(only: Option<&Prefix>) -> std::io::Result<Vec<Prefix>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(DEV_SHM)?.flatten() {
        let name = entry.file_name();
        let Some((prefix, _)) = name.to_str().and_then(parse_entry) else {
            continue;
        };
        if only.is_none_or(|o| *o == prefix) {
            found.insert(prefix.as_str().to_string(), prefix);
        }
    }
    Ok(found.into_values().collect())
}

fn classify_object(path: &Path) -> Kind {
    match objects::file_kind(path) {
        Some(ObjectKind::Extended) => Kind::Extended,
        Some(ObjectKind::Seed) => Kind::Seed,
        None => Kind::Unreadable,
    }
}

/// Inspects one prefix; `None` if none of its names exists (any more).
fn inspect(prefix: &Prefix) -> Option<Set> {
    let paths = objects::paths(prefix);
    let entries: [Option<Entry>; OBJECT_SUFFIXES.len()] = std::array::from_fn(|i| {
        let path = paths[i].clone();
        let md = std::fs::metadata(&path).ok()?;
        Some(Entry {
            uid: md.uid(),
            mode: md.mode() & 0o7777,
            size: md.size(),
            path,
        })
    });
    if entries.iter().all(Option::is_none) {
        return None;
    }
    let kind = match &entries[0] {
        None => Kind::NoObject,
        Some(e) => classify_object(&e.path),
    };
    let creator = match kind {
        Kind::Extended => objects::creator_pid(prefix),
        _ => None,
    };
    let mut mapped_by: Vec<u32> = entries
        .iter()
        .flatten()
        .flat_map(|e| processes_mapping(&e.path))
        .collect();
    mapped_by.sort_unstable();
    mapped_by.dedup();
    let in_use = match objects::presence(prefix) {
        Presence::Absent => return None,
        Presence::InUse { .. } => true,
        Presence::Stale { .. } => false,
    };
    let state = match kind {
        _ if in_use && kind != Kind::Seed => State::Live,
        Kind::Seed => State::Seed,
        Kind::Unreadable => State::Unknown,
        Kind::Extended | Kind::NoObject => State::Dead,
    };
    Some(Set {
        prefix: prefix.clone(),
        entries,
        kind,
        creator,
        mapped_by,
        state,
    })
}

fn colourize(text: &str, state: State, colour: bool) -> String {
    if colour {
        format!("{}{text}\x1b[0m", state.colour())
    } else {
        text.to_string()
    }
}

fn use_colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `llama-shm ls`.
///
/// # Errors
/// `/dev/shm` unreadable, or stdout closed.
pub fn ls(args: &LsArgs) -> Result<(), String> {
    let sets: Vec<Set> = scan(args.prefix.as_ref())
        .map_err(|e| format!("cannot read {DEV_SHM}: {e}"))?
        .iter()
        .filter_map(inspect)
        .collect();
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let v = serde_json::Value::Array(sets.iter().map(Set::to_json).collect());
        writeln!(out, "{v:#}")
    } else {
        print_table(&mut out, &sets)
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing the listing: {e}"))
}

fn print_table(out: &mut impl Write, sets: &[Set]) -> std::io::Result<()> {
    if sets.is_empty() {
        return writeln!(out, "no llama-shm objects in {DEV_SHM}");
    }
    let colour = use_colour();
    let width = sets
        .iter()
        .map(|s| s.prefix.as_str().len())
        .max()
        .unwrap_or(0)
        .max(6);
    writeln!(
        out,
        "{:<width$}  {:<7}  {:<8}  {:>5}  {:<4}  {:>6}  {:<32}  DETAIL",
        "PREFIX", "STATE", "CREATOR", "OWNER", "MODE", "SIZE", "OBJECTS"
    )?;
    for s in sets {
        let state = colourize(&format!("{:<7}", s.state.as_str()), s.state, colour);
        let creator = s.creator.map_or_else(|| "-".to_string(), |p| p.to_string());
        let main = s.main_entry();
        let owner = main.map_or_else(|| "-".to_string(), |e| e.uid.to_string());
        let mode = main.map_or_else(|| "-".to_string(), |e| format!("{:04o}", e.mode));
        let size = s.entries[0]
            .as_ref()
            .map_or_else(|| "-".to_string(), |e| e.size.to_string());
        // The seed streaming service's `chunk_ready` is listed when present (only standalone
        // workers make it); a missing one is no gap in the set.
        let objects: Vec<&str> = ["shm", "ready", "prompts", "response", "chunk"]
            .iter()
            .zip(&s.entries)
            .enumerate()
            .filter_map(|(i, (label, e))| match e {
                Some(_) => Some(*label),
                None if i == CHUNK_READY_INDEX => None,
                None => Some("-"),
            })
            .collect();
        writeln!(
            out,
            "{:<width$}  {state}  {creator:<8}  {owner:>5}  {mode:<4}  {size:>6}  {:<32}  {}",
            s.prefix.as_str(),
            objects.join(" "),
            s.detail()
        )?;
    }
    Ok(())
}

/// `llama-shm clean`: removes the names of dead sets (and, with `--include-seed`, of seed-era
/// sets nobody maps); never of a set in use. Returns whether every removal succeeded.
///
/// # Errors
/// `/dev/shm` unreadable.
pub fn clean(args: &CleanArgs) -> Result<bool, String> {
    let sets: Vec<Set> = scan(args.prefix.as_ref())
        .map_err(|e| format!("cannot read {DEV_SHM}: {e}"))?
        .iter()
        .filter_map(inspect)
        .collect();
    let verb = if args.dry_run { "would remove" } else { "removed" };
    let mut ok = true;
    let mut removed = 0usize;
    for set in &sets {
        let eligible = match set.state {
            State::Dead => true,
            State::Seed => args.include_seed && set.mapped_by.is_empty(),
            State::Live | State::Unknown => false,
        };
        if !eligible {
            let why = match set.state {
                State::Seed if set.mapped_by.is_empty() => "seed-era set, not removed without --include-seed",
                State::Live => "in use",
                State::Seed => "seed-era set in use",
                _ => "cannot tell whether it is in use",
            };
            println!("kept {}: {why} ({})", set.prefix, set.detail());
            continue;
        }
        let existing: Vec<&Path> = set.entries.iter().flatten().map(|e| e.path.as_path()).collect();
        if args.dry_run {
            for p in &existing {
                println!("{verb} {}", p.display());
            }
            removed += existing.len();
            continue;
        }
        // Re-check right before removing: the verdict above may be stale by now.
        match objects::presence(&set.prefix) {
            Presence::Stale { .. } => {}
            Presence::Absent => continue,
            Presence::InUse { pid } => {
                println!(
                    "kept {}: in use by pid {pid} (it changed since the scan)",
                    set.prefix
                );
                continue;
            }
        }
        let result = objects::unlink_prefix(&set.prefix);
        for p in existing.iter().filter(|p| !p.exists()) {
            println!("{verb} {}", p.display());
            removed += 1;
        }
        if let Err(e) = result {
            eprintln!("llama-shm: removing {}: {e}", set.prefix);
            ok = false;
        }
    }
    if removed == 0 {
        println!("nothing to remove");
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_map_to_prefix_and_object() {
        let p = |s: &str| parse_entry(s).map(|(p, i)| (p.as_str().to_string(), i));
        assert_eq!(p("llama_cpp_shared_mem"), Some(("llama_cpp".into(), 0)));
        assert_eq!(p("sem.llama_cpp_sem_ready"), Some(("llama_cpp".into(), 1)));
        assert_eq!(p("sem.a_b_sem_prompts_written"), Some(("a_b".into(), 2)));
        assert_eq!(p("sem.x_sem_response_written"), Some(("x".into(), 3)));
        assert_eq!(p("sem.x_sem_chunk_ready"), Some(("x".into(), 4)));
        assert_eq!(p("x_sem_chunk_ready"), None);
        // A semaphore named like the object, or an object named like a semaphore: not ours.
        assert_eq!(p("sem.x_shared_mem"), None);
        assert_eq!(p("x_sem_ready"), None);
        assert_eq!(p("_shared_mem"), None);
        assert_eq!(p("pulse-shm-1234"), None);
    }

    #[test]
    fn paths_follow_glibc_naming() {
        let p = Prefix::new("abc").unwrap();
        let paths = objects::paths(&p);
        assert_eq!(paths[0], Path::new("/dev/shm/abc_shared_mem"));
        assert_eq!(paths[3], Path::new("/dev/shm/sem.abc_sem_response_written"));
        assert_eq!(paths[4], Path::new("/dev/shm/sem.abc_sem_chunk_ready"));
    }
}
