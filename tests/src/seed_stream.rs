//! A client of the seed's streaming service written from `seed-streaming.md` alone, the way
//! the seed's C# `LocalLLMService` does it (P/Invoke: `shm_open`, `mmap` of 45000 bytes,
//! `sem_open(name, 0)` of four semaphores, `sem_wait`/`sem_post`). Like [`crate::seed`] it
//! shares no code with llama-shm's wire or protocol modules: it is the independent peer that
//! proves the worker serves that class. Its one liberty: every wait is timed (the class's are
//! not), so a failing test cannot hang and a dead worker is reported.

use std::ffi::CString;
use std::time::{Duration, Instant};

/// What the class maps (its `SharedMemorySize`).
pub const MAPPED: usize = 45000;
/// The fields of seed-streaming.md's table (packed, after `shutdown_requested` at 40960).
pub const STREAM_MODE_OFF: usize = 40961;
/// `update_counter`, int32, unaligned.
pub const UPDATE_COUNTER_OFF: usize = 40962;
/// `generation_complete`, one byte.
pub const GENERATION_COMPLETE_OFF: usize = 40966;
/// `tokens_generated`, int32, unaligned.
pub const TOKENS_GENERATED_OFF: usize = 40967;
const SYSTEM_OFF: usize = 0;
const USER_OFF: usize = 4096;
const RESPONSE_OFF: usize = 8192;
const RESPONSE_SIZE: usize = 32768;
const SHUTDOWN_OFF: usize = 40960;

/// The semaphores in the order the class opens them.
const READY: usize = 0;
const PROMPTS_WRITTEN: usize = 1;
const RESPONSE_WRITTEN: usize = 2;
const CHUNK_READY: usize = 3;

/// Most `chunk_ready` wake-ups one streamed answer may take (a bound on the loop over the
/// worker's posts; an honest answer takes one per piece, at most 32 767).
pub const MAX_WAKEUPS: usize = 100_000;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceError {
    /// `Initialize`: an object is missing (the class says "Failed to open semaphores").
    Open(String),
    /// A timed wait ran out: `step` names the semaphore.
    TimedOut {
        /// The wait that ran out.
        step: &'static str,
    },
    /// The worker posted more than [`MAX_WAKEUPS`] times without completing.
    Endless,
}

/// One update as the class's `OnStreamUpdate` event reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The whole answer so far.
    pub text: String,
    /// `tokens_generated`.
    pub tokens: i32,
    /// `generation_complete`.
    pub complete: bool,
    /// `update_counter` when read.
    pub counter: i32,
}

/// The class's objects, opened as `Initialize` opens them.
pub struct StreamingService {
    base: *mut u8,
    sems: [*mut libc::sem_t; 4],
}

impl StreamingService {
    /// `Initialize()` after its fixed delay: `shm_open(O_RDWR)`, `mmap` 45000 bytes, then the
    /// four semaphores with `sem_open(name, 0)`; an error names what is missing. (The class
    /// maps without looking at the size; this checks it first, so a test cannot SIGBUS.)
    ///
    /// # Errors
    /// [`ServiceError::Open`].
    pub fn initialize(prefix: &str) -> Result<Self, ServiceError> {
        let shm = CString::new(format!("/{prefix}_shared_mem")).unwrap();
        // SAFETY: a valid C string; opening an existing object.
        let fd = unsafe { libc::shm_open(shm.as_ptr(), libc::O_RDWR, 0) };
        if fd < 0 {
            return Err(ServiceError::Open(format!(
                "Failed to open shared memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: a plain struct of integers, filled by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and out-pointer.
        let sized = unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_size as usize >= MAPPED;
        let base = if sized {
            // SAFETY: mapping MAPPED bytes of an object at least that large (checked above).
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    MAPPED,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            }
        } else {
            libc::MAP_FAILED
        };
        // SAFETY: our own fd, closed once; the mapping keeps the object.
        unsafe { libc::close(fd) };
        if base == libc::MAP_FAILED {
            return Err(ServiceError::Open(format!(
                "Failed to map shared memory ({} bytes)",
                st.st_size
            )));
        }
        let mut sems = [std::ptr::null_mut(); 4];
        for (i, suffix) in [
            "sem_ready",
            "sem_prompts_written",
            "sem_response_written",
            "sem_chunk_ready",
        ]
        .iter()
        .enumerate()
        {
            let name = CString::new(format!("/{prefix}_{suffix}")).unwrap();
            // SAFETY: a valid C string; no O_CREAT.
            let s = unsafe { libc::sem_open(name.as_ptr(), 0) };
            if s == libc::SEM_FAILED {
                let me = Self {
                    base: base.cast(),
                    sems,
                };
                drop(me);
                return Err(ServiceError::Open(format!(
                    "Failed to open semaphores ({suffix})"
                )));
            }
            sems[i] = s;
        }
        Ok(Self {
            base: base.cast(),
            sems,
        })
    }

    fn write_at(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= MAPPED);
        // SAFETY: in bounds of our mapping; `bytes` is private memory. (Byte copies of a
        // region the worker writes too, as the class's Marshal.Copy does.)
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(offset), bytes.len()) }
    }

    fn read_at(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= MAPPED);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds of our mapping; `v` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(offset), v.as_mut_ptr(), len) };
        v
    }

    fn i32_at(&self, offset: usize) -> i32 {
        i32::from_ne_bytes(self.read_at(offset, 4).try_into().unwrap())
    }

    /// The response field up to its NUL, decoded as `Encoding.UTF8.GetString` does.
    fn response(&self) -> String {
        let raw = self.read_at(RESPONSE_OFF, RESPONSE_SIZE);
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).into_owned()
    }

    fn wait(&self, i: usize, until: Instant, step: &'static str) -> Result<(), ServiceError> {
        let left = until.saturating_duration_since(Instant::now());
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer; sem_timedwait measures CLOCK_REALTIME.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
        ts.tv_sec += left.as_secs() as libc::time_t;
        ts.tv_nsec += left.subsec_nanos() as libc::c_long;
        if ts.tv_nsec >= 1_000_000_000 {
            ts.tv_sec += 1;
            ts.tv_nsec -= 1_000_000_000;
        }
        loop {
            // SAFETY: a live semaphore from sem_open; a valid timespec.
            if unsafe { libc::sem_timedwait(self.sems[i], &ts) } == 0 {
                return Ok(());
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return Err(ServiceError::TimedOut { step });
            }
        }
    }

    fn post(&self, i: usize) {
        // SAFETY: a live semaphore from sem_open.
        assert_eq!(unsafe { libc::sem_post(self.sems[i]) }, 0);
    }

    /// The class's request: wait `ready`; system and user prompts (UTF-8, cut at 4095 bytes,
    /// zero-padded to 4096); the response zeroed; shutdown 0, `stream_mode`, counter, complete
    /// and tokens zeroed; post `prompts_written`.
    fn send(&self, user: &str, system: &str, stream: bool, until: Instant) -> Result<(), ServiceError> {
        self.wait(READY, until, "ready")?;
        for (off, text) in [(SYSTEM_OFF, system), (USER_OFF, user)] {
            let bytes = text.as_bytes();
            let n = bytes.len().min(4095);
            let mut field = vec![0u8; 4096];
            field[..n].copy_from_slice(&bytes[..n]);
            self.write_at(off, &field);
        }
        self.write_at(RESPONSE_OFF, &vec![0u8; RESPONSE_SIZE]);
        self.write_at(SHUTDOWN_OFF, &[0, u8::from(stream)]);
        self.write_at(UPDATE_COUNTER_OFF, &0i32.to_ne_bytes());
        self.write_at(GENERATION_COMPLETE_OFF, &[0]);
        self.write_at(TOKENS_GENERATED_OFF, &0i32.to_ne_bytes());
        self.post(PROMPTS_WRITTEN);
        Ok(())
    }

    /// `GetResponse(user, system)`: `stream_mode` 0, one answer.
    ///
    /// # Errors
    /// [`ServiceError::TimedOut`] when a wait runs past `timeout`.
    pub fn get_response(&self, user: &str, system: &str, timeout: Duration) -> Result<String, ServiceError> {
        let until = Instant::now() + timeout;
        self.send(user, system, false, until)?;
        self.wait(RESPONSE_WRITTEN, until, "response_written")?;
        Ok(self.response())
    }

    /// `GetResponseStreaming(user, system)`: waits on `chunk_ready`, reads, reports an update
    /// to `on_update` only if `update_counter` grew, stops at `generation_complete`, then waits
    /// for `response_written`. Returns the final answer. Each wait is bounded by `timeout`
    /// from the call.
    ///
    /// # Errors
    /// [`ServiceError::TimedOut`] naming the wait; [`ServiceError::Endless`].
    pub fn get_response_streaming(
        &self,
        user: &str,
        system: &str,
        timeout: Duration,
        mut on_update: impl FnMut(&Update),
    ) -> Result<String, ServiceError> {
        let until = Instant::now() + timeout;
        self.send(user, system, true, until)?;
        let mut last = 0;
        for _ in 0..MAX_WAKEUPS {
            self.wait(CHUNK_READY, until, "chunk_ready")?;
            let counter = self.i32_at(UPDATE_COUNTER_OFF);
            if counter <= last {
                continue;
            }
            last = counter;
            // The flag before the text: the worker writes the text first, so a complete flag
            // seen means the final text is in place (read the other way round, a text read
            // just before the worker finished would be taken for the final one).
            let complete = self.read_at(GENERATION_COMPLETE_OFF, 1)[0] != 0;
            let update = Update {
                tokens: self.i32_at(TOKENS_GENERATED_OFF),
                text: self.response(),
                complete,
                counter,
            };
            on_update(&update);
            if update.complete {
                self.wait(RESPONSE_WRITTEN, until, "response_written")?;
                return Ok(self.response());
            }
        }
        Err(ServiceError::Endless)
    }

    /// The byte at `offset` (tests look at `stream_mode` after a request).
    pub fn byte_at(&self, offset: usize) -> u8 {
        self.read_at(offset, 1)[0]
    }
}

impl Drop for StreamingService {
    /// `Dispose()`: unmaps and closes the semaphores (the class then kills the worker; the
    /// tests do that themselves).
    fn drop(&mut self) {
        // SAFETY: our own mapping and semaphores, released once.
        unsafe {
            libc::munmap(self.base.cast(), MAPPED);
            for s in self.sems.iter().filter(|s| !s.is_null()) {
                libc::sem_close(*s);
            }
        }
    }
}

// SAFETY: the service owns its mapping and semaphores; it is moved into one thread at a time.
unsafe impl Send for StreamingService {}
