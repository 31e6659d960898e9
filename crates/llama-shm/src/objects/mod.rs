//! The named objects of one prefix, on POSIX: create, open (vetted), inspect for staleness,
//! unlink. Four are the seed's; a standalone worker adds the seed streaming service's
//! `chunk_ready`. This is where [`protocol`](crate::protocol) meets [`os`](crate::os).

use std::io;
use std::time::Instant;

pub mod channel;
pub mod clients;
pub mod guardian;
pub mod queue;
pub mod status;
pub mod turn;

pub use crate::wire::names::{CHUNK_READY_INDEX, OBJECT_SUFFIXES};
pub use channel::{PosixChannel, ShmRegion};

use crate::os::process::{pid_alive, processes_mapping};
use crate::os::sem::{self, SemError};
use crate::os::shm::{self, OpenCheck, ShmError};
use crate::os::{dev_shm_path, NamedSemaphore, SharedMemory};
use crate::protocol::Channel;
use crate::wire::layout::{
    ClassifyError, Field, ObjectKind, Word32, Word64, AREA_LEN, AREA_OBJECT_SIZE, EXT_MAGIC, EXT_SIZE,
    EXT_VERSION, FEATURE_SEED_STREAMING, OBJECT_SIZE, SEED_SIZE,
};
use crate::wire::names::Prefix;

/// Why the objects of a prefix could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// The shared-memory object failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// A semaphore failed.
    #[error(transparent)]
    Sem(#[from] SemError),
    /// The object's layout is unusable.
    #[error(transparent)]
    Layout(#[from] ClassifyError),
    /// The permission bits let other users write the objects — and so crash every process
    /// that maps them (a `ftruncate` of a mapped object is `SIGBUS` at the next access) — and
    /// the caller did not accept that in so many words.
    #[error(
        "mode {mode:04o} lets other users write the objects, and so crash every process that maps \
         them; accept that explicitly (worker: --others-may-crash-this-worker; \
         ClientBuilder::others_may_crash_this_client) or keep the default 0600"
    )]
    WritableByOthers {
        /// The mode asked for.
        mode: u32,
    },
    /// A slot of a multi-slot worker is not what slot 0 says (another worker's objects under
    /// the slot's name, or a worker that changed under us).
    #[error("slot {slot} of {prefix} does not belong to its worker: {reason}")]
    SlotMismatch {
        /// Slot 0's prefix.
        prefix: String,
        /// The slot.
        slot: u32,
        /// What differs.
        reason: String,
    },
    /// The prefix is served by a live process.
    #[error(
        "objects with prefix {prefix} are in use by pid {pid}; stop it first or choose another --prefix"
    )]
    InUse {
        /// The prefix.
        prefix: String,
        /// A process using them.
        pid: u32,
    },
}

/// Permission bits that let other users (group or others) write an object.
pub const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Refuses `mode` if it lets other users write the objects (see
/// [`ObjectsError::WritableByOthers`]) unless `accepted`.
///
/// # Errors
/// [`ObjectsError::WritableByOthers`].
pub fn check_mode(mode: u32, accepted: bool) -> Result<(), ObjectsError> {
    if mode & WRITABLE_BY_OTHERS != 0 && !accepted {
        return Err(ObjectsError::WritableByOthers { mode });
    }
    Ok(())
}

/// Who may open a prefix's objects: their owner must be us, and their mode within `max_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trust {
    /// Widest permission bits accepted (default `0o600`).
    pub max_mode: u32,
}

impl Default for Trust {
    fn default() -> Self {
        Self { max_mode: 0o600 }
    }
}

/// What the creator writes into a fresh extension page.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtInit {
    /// The creator's pid.
    pub creator_pid: u32,
    /// `FEATURE_*` bits.
    pub features: u32,
    /// The creator's guardian (0: none), which removes the names if the creator dies without
    /// removing them.
    pub guardian_pid: u32,
    /// Slots of the worker (0 or 1: one), and which one this set is.
    pub slot_count: u32,
    /// See `slot_count`.
    pub slot_index: u32,
    /// Most clients the admission queue holds (with `FEATURE_QUEUE`; slot 0).
    pub queue_max: u32,
}

/// Creates the four objects of `prefix` with permission bits `mode` (`O_EXCL`: nothing
/// existing is adopted), initialises the extension page, and returns the channel; with
/// [`FEATURE_SEED_STREAMING`] in `init.features` also `chunk_ready`, the seed streaming
/// service's semaphore, last. On failure everything created so far is removed again.
///
/// # Errors
/// [`ObjectsError`] naming the object that failed (`AlreadyExists` if any name is taken).
pub fn create(prefix: &Prefix, mode: u32, init: ExtInit) -> Result<PosixChannel, ObjectsError> {
    create_guarded(prefix, mode, init, &mut |_| Ok(()))
}

/// [`create`] that tells `guard` the [`Identity`](crate::os::Identity) of each object before
/// its name appears (each is made unnamed, initialised, then linked to its name), so that a
/// guardian can remove exactly these names should the creator die at any point, and nothing
/// else.
///
/// # Errors
/// As [`create`]; `guard`'s error fails the creation.
pub fn create_guarded(
    prefix: &Prefix,
    mode: u32,
    init: ExtInit,
    guard: &mut dyn FnMut(&crate::os::Identity) -> io::Result<()>,
) -> Result<PosixChannel, ObjectsError> {
    let shm = SharedMemory::create_with(&prefix.shm(), AREA_OBJECT_SIZE, mode, |shm, identity| {
        use std::sync::atomic::Ordering::Release;
        let word = |w: Word32, v: u32| {
            if let Some(a) = shm.atomic_u32(w.offset()) {
                a.store(v, Release);
            }
        };
        word(Word32::Version, EXT_VERSION);
        word(Word32::PageSize, EXT_SIZE as u32);
        word(Word32::CreatorPid, init.creator_pid);
        word(Word32::Features, init.features);
        // The worker says it takes area requests (FEATURE_REQUEST_AREA) when it attaches.
        word(Word32::AreaSize, AREA_LEN as u32);
        word(Word32::GuardianPid, init.guardian_pid);
        word(Word32::SlotCount, init.slot_count);
        word(Word32::SlotIndex, init.slot_index);
        word(Word32::QueueMax, init.queue_max);
        if let Some(a) = shm.atomic_u64(Word64::ResponseSeq.offset()) {
            a.store(0, Release);
        }
        // Magic last: a reader that sees it sees an initialised page (and where the name
        // appears only after this, nobody can look earlier).
        std::sync::atomic::fence(Release);
        shm.write(Field::Magic.span().offset, &EXT_MAGIC);
        guard(identity)
    })?;
    let region = ShmRegion {
        shm,
        kind: ObjectKind::Extended,
    };
    let [r, p, w] = prefix.sems();
    let ready = NamedSemaphore::create_with(&r, mode, 0, &mut *guard)?;
    let prompts_written = NamedSemaphore::create_with(&p, mode, 0, &mut *guard)?;
    let response_written = NamedSemaphore::create_with(&w, mode, 0, &mut *guard)?;
    let channel = Channel::new(ready, prompts_written, response_written, region);
    Ok(if init.features & FEATURE_SEED_STREAMING != 0 {
        let chunk_ready = NamedSemaphore::create_with(&prefix.sem_chunk_ready(), mode, 0, &mut *guard)?;
        channel.with_chunk_ready(chunk_ready)
    } else {
        channel
    })
}

/// Opens the four objects of `prefix` after vetting owner and mode (see [`Trust`]) and size,
/// and classifies the object as seed or extended. (`chunk_ready` is not opened: only the
/// seed's streaming service uses it, and none of our clients speak that.)
///
/// # Errors
/// [`ObjectsError`] naming the object that is missing, untrusted or malformed.
pub fn open(prefix: &Prefix, trust: Trust) -> Result<PosixChannel, ObjectsError> {
    let shm = SharedMemory::open(
        &prefix.shm(),
        OpenCheck {
            same_owner: true,
            max_mode: trust.max_mode,
            min_size: SEED_SIZE,
            map_at_most: AREA_OBJECT_SIZE,
        },
    )?;
    let mut magic = [0u8; 8];
    shm.read(Field::Magic.span().offset, &mut magic);
    let version = shm
        .atomic_u32(Word32::Version.offset())
        .map_or(0, |a| a.load(std::sync::atomic::Ordering::Acquire));
    let has_page = shm.mapped_len() >= OBJECT_SIZE;
    let kind = ObjectKind::classify(shm.object_size(), has_page.then_some(magic), version)?;
    let region = ShmRegion { shm, kind };
    let [r, p, w] = prefix.sems();
    Ok(Channel::new(
        NamedSemaphore::open(&r, trust.max_mode)?,
        NamedSemaphore::open(&p, trust.max_mode)?,
        NamedSemaphore::open(&w, trust.max_mode)?,
        region,
    ))
}

/// Opens the other slots of the multi-slot worker whose slot 0 is `first` (on `prefix`; see
/// [`FEATURE_SLOTS`](crate::wire::layout::FEATURE_SLOTS)), vetted as [`open`] vets, each
/// checked to name the same worker and its own index. Empty for a worker of one slot.
///
/// # Errors
/// [`open`]'s, and [`ObjectsError::SlotMismatch`].
pub fn open_slots(
    prefix: &Prefix,
    first: &PosixChannel,
    trust: Trust,
) -> Result<Vec<PosixChannel>, ObjectsError> {
    use crate::protocol::Region;
    let r = &first.region;
    if r.kind() != ObjectKind::Extended
        || r.load32(Word32::Features) & crate::wire::layout::FEATURE_SLOTS == 0
    {
        return Ok(Vec::new());
    }
    let count = r.load32(Word32::SlotCount);
    let creator = r.load32(Word32::CreatorPid);
    let mismatch = |slot: u32, reason: String| ObjectsError::SlotMismatch {
        prefix: prefix.to_string(),
        slot,
        reason,
    };
    (1..count)
        .map(|k| {
            let p = prefix.slot(k).ok_or_else(|| mismatch(k, "the name would be too long".into()))?;
            let ch = open(&p, trust)?;
            let got = (
                ch.region.kind(),
                ch.region.load32(Word32::SlotIndex),
                ch.region.load32(Word32::SlotCount),
                ch.region.load32(Word32::CreatorPid),
            );
            if got != (ObjectKind::Extended, k, count, creator) {
                return Err(mismatch(
                    k,
                    format!(
                        "it says {:?}, slot {} of {}, creator {}; slot 0 says {count} slots of creator {creator}",
                        got.0, got.1, got.2, got.3
                    ),
                ));
            }
            Ok(ch)
        })
        .collect()
}

/// Removes the names of `channel` (the objects live on while handles exist).
///
/// # Errors
/// The first unlink that failed for another reason than "already gone".
pub fn unlink(channel: &PosixChannel) -> Result<(), ObjectsError> {
    channel.region.shm().unlink()?;
    channel.ready.unlink()?;
    channel.prompts_written.unlink()?;
    channel.response_written.unlink()?;
    if let Some(chunk_ready) = &channel.chunk_ready {
        chunk_ready.unlink()?;
    }
    Ok(())
}

/// The semaphore names of `prefix`: the protocol's three, then `chunk_ready`.
fn all_sems(prefix: &Prefix) -> [std::ffi::CString; 4] {
    let [r, p, w] = prefix.sems();
    [r, p, w, prefix.sem_chunk_ready()]
}

/// The five files under `/dev/shm` that may back `prefix`'s names (object, then semaphores
/// as [`OBJECT_SUFFIXES`]; the last, `chunk_ready`, exists only for a standalone worker).
pub fn paths(prefix: &Prefix) -> Vec<std::path::PathBuf> {
    std::iter::once(dev_shm_path(&prefix.shm(), false))
        .chain(all_sems(prefix).iter().map(|n| dev_shm_path(n, true)))
        .collect()
}

/// Whether the names present for `prefix` (by [`paths`]' order) are a whole set: the four
/// the protocol needs (`chunk_ready` is optional).
pub fn complete(present: &[bool]) -> bool {
    present
        .iter()
        .enumerate()
        .all(|(i, &there)| there || i == CHUNK_READY_INDEX)
}

/// Which object of which prefix the `/dev/shm` file `file` is (0: the shared memory, 1–4
/// the semaphores), if it follows the naming scheme: a semaphore's file for a semaphore's
/// name, the object's for the object's.
pub fn object_of_file(file: &str) -> Option<(Prefix, usize)> {
    let (name, semaphore) = crate::os::ipc_name_of_file(file);
    Prefix::of_object_name(name).filter(|(_, i)| (*i != 0) == semaphore)
}

/// Removes whatever names of `prefix` exist. Returns how many were removed.
///
/// # Errors
/// The first unlink that failed for another reason than "already gone".
pub fn unlink_prefix(prefix: &Prefix) -> Result<usize, ObjectsError> {
    let mut n = usize::from(shm::unlink(&prefix.shm())?);
    for name in all_sems(prefix) {
        n += usize::from(sem::unlink(&name)?);
    }
    Ok(n)
}

/// The state of a prefix's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// None of the names exists.
    Absent,
    /// Some names exist but nobody uses them: a crashed run's leftovers.
    Stale {
        /// The recorded creator, if the extension page names one.
        creator: Option<u32>,
    },
    /// A live process created or maps them.
    InUse {
        /// That process.
        pid: u32,
    },
}

/// Decides whether the names of `prefix` are absent, stale or in use: a recorded creator
/// pid that is alive means in use, and so does a recorded guardian that is alive (it is about
/// to remove them); otherwise any process mapping the object or a semaphore (seen in
/// `/proc/*/maps`) means in use; otherwise stale.
pub fn presence(prefix: &Prefix) -> Presence {
    let paths = paths(prefix);
    if !paths.iter().any(|p| p.exists()) {
        return Presence::Absent;
    }
    let (creator, guardian) = page_pids(prefix).map_or((None, None), |(c, g)| (Some(c), g));
    if let Some(pid) = creator
        .filter(|&p| pid_alive(p))
        .or(guardian.filter(|&p| pid_alive(p)))
    {
        return Presence::InUse { pid };
    }
    for path in &paths {
        if let Some(&pid) = processes_mapping(path).first() {
            return Presence::InUse { pid };
        }
    }
    Presence::Stale { creator }
}

/// The creator pid recorded in the extension page of `prefix`'s object, if readable.
pub fn creator_pid(prefix: &Prefix) -> Option<u32> {
    page_pids(prefix).map(|(creator, _)| creator)
}

/// The creator pid and the guardian pid (if any) recorded in the extension page of
/// `prefix`'s object, read with `pread` (never mapped: the object may be anyone's, and a
/// squatter toggling its size cannot fault a read of a file).
pub fn page_pids(prefix: &Prefix) -> Option<(u32, Option<u32>)> {
    let mut page = [0u8; 256];
    let n = shm::read_unmapped(&prefix.shm(), crate::wire::layout::EXT_OFFSET as u64, &mut page).ok()?;
    let at = |word: Word32| word.offset() - crate::wire::layout::EXT_OFFSET;
    let u32_at = |off: usize| u32::from_ne_bytes(page[off..off + 4].try_into().expect("4 bytes"));
    let magic = &page[Field::Magic.span().offset - crate::wire::layout::EXT_OFFSET..][..8];
    (n == page.len() && magic == EXT_MAGIC).then(|| {
        let guardian = u32_at(at(Word32::GuardianPid));
        (
            u32_at(at(Word32::CreatorPid)),
            (guardian != 0).then_some(guardian),
        )
    })
}

/// Makes `prefix` free for a new owner: absent names are fine, stale ones are removed, names
/// in use are refused.
///
/// # Errors
/// [`ObjectsError::InUse`] naming the live process; unlink failures.
pub fn reclaim(prefix: &Prefix) -> Result<Presence, ObjectsError> {
    let mut presence = presence(prefix);
    // A dead worker's guardian removes its names within milliseconds: wait for it (bounded)
    // rather than call the prefix in use.
    let guardian = page_pids(prefix).and_then(|(_, g)| g);
    let until = Instant::now() + std::time::Duration::from_secs(2);
    while matches!(presence, Presence::InUse { pid } if Some(pid) == guardian) && Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(2));
        presence = self::presence(prefix);
    }
    match presence {
        Presence::Absent => {}
        Presence::Stale { creator } => {
            tracing::warn!(
                prefix = %prefix,
                creator = creator.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
                "removing stale objects left by a dead process"
            );
            unlink_prefix(prefix)?;
        }
        Presence::InUse { pid } => {
            return Err(ObjectsError::InUse {
                prefix: prefix.to_string(),
                pid,
            });
        }
    }
    Ok(presence)
}

/// Which protocol the object at `path` speaks, read with `pread` (never mapped: another user's
/// object may shrink under us); `None` when it cannot be read.
pub fn file_kind(path: &std::path::Path) -> Option<ObjectKind> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    if size < OBJECT_SIZE as u64 {
        return Some(ObjectKind::Seed);
    }
    let mut magic = [0u8; 8];
    f.read_exact_at(&mut magic, Field::Magic.span().offset as u64)
        .ok()?;
    Some(if magic == EXT_MAGIC {
        ObjectKind::Extended
    } else {
        ObjectKind::Seed
    })
}
