//! A seed-style client and worker written against raw offsets with libc, the way the seed's
//! C# client (P/Invoke: shm_open, mmap, sem_open, sem_wait, sem_post) and C++ chatbot do it.
//! They deliberately share no code with llama-shm's wire or protocol modules: they are the
//! independent peer that proves wire compatibility. Waits are timed so a failing test cannot
//! hang, which is the only liberty taken with the seed's steps.

use std::ffi::CString;
use std::time::Duration;

/// Seed offsets, written out by hand from the seed's documentation.
pub const SYSTEM_OFF: usize = 0;
/// `user_prompt` offset.
pub const USER_OFF: usize = 4096;
/// `response` offset.
pub const RESPONSE_OFF: usize = 8192;
/// `response` size.
pub const RESPONSE_SIZE: usize = 32768;
/// `shutdown_requested` offset.
pub const SHUTDOWN_OFF: usize = 40960;
/// Total seed size.
pub const SEED_TOTAL: usize = 40961;

/// The seed's objects, opened or created by raw calls.
pub struct SeedPeer {
    base: *mut u8,
    len: usize,
    sems: [*mut libc::sem_t; 3],
    names: Option<(CString, [CString; 3])>,
}

fn names(prefix: &str) -> (CString, [CString; 3]) {
    (
        CString::new(format!("/{prefix}_shared_mem")).unwrap(),
        [
            CString::new(format!("/{prefix}_sem_ready")).unwrap(),
            CString::new(format!("/{prefix}_sem_prompts_written")).unwrap(),
            CString::new(format!("/{prefix}_sem_response_written")).unwrap(),
        ],
    )
}

/// Maps the first [`SEED_TOTAL`] bytes of the shared-memory object `fd` (at least that large,
/// checked by the caller) read-write, then closes `fd` (the mapping keeps the object).
fn map_and_close(fd: libc::c_int) -> *mut libc::c_void {
    // SAFETY: mapping SEED_TOTAL bytes of an object at least that large (the caller's check).
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SEED_TOTAL,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    // SAFETY: the mapping keeps the object alive; the fd is ours to close, once.
    unsafe { libc::close(fd) };
    assert_ne!(base, libc::MAP_FAILED);
    base
}

impl SeedPeer {
    /// Client side: opens existing objects and maps all 40961 bytes, as the seed's C# does
    /// (with its defect fixed: the whole region, not less). `None` if they do not exist yet.
    pub fn open(prefix: &str) -> Option<Self> {
        let (shm, sems) = names(prefix);
        // SAFETY: valid C string; plain shm_open of an existing object.
        let fd = unsafe { libc::shm_open(shm.as_ptr(), libc::O_RDWR, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a valid shm fd; the object is at least SEED_TOTAL bytes (the worker
        // created it before the name became visible? No: ftruncate may not have run yet, so
        // check the size first).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out-pointer.
        if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_size as usize) < SEED_TOTAL {
            // SAFETY: closing our own fd.
            unsafe { libc::close(fd) };
            return None;
        }
        let base = map_and_close(fd);
        let mut handles: [*mut libc::sem_t; 3] = [std::ptr::null_mut(); 3];
        for (h, n) in handles.iter_mut().zip(&sems) {
            // SAFETY: valid C string, no O_CREAT.
            let s = unsafe { libc::sem_open(n.as_ptr(), 0) };
            if s == libc::SEM_FAILED {
                // SAFETY: unmapping what we mapped above (and closing opened sems).
                unsafe { libc::munmap(base, SEED_TOTAL) };
                for h in handles.iter().filter(|h| !h.is_null()) {
                    // SAFETY: each came from sem_open.
                    unsafe { libc::sem_close(*h) };
                }
                return None;
            }
            *h = s;
        }
        Some(Self {
            base: base.cast(),
            len: SEED_TOTAL,
            sems: handles,
            names: None,
        })
    }

    /// Worker side: creates the seed's 40961-byte object (mode 0600 here) and semaphores,
    /// as the seed's C++ chatbot does; they are unlinked on drop.
    pub fn create(prefix: &str) -> Self {
        let (shm, sems) = names(prefix);
        // SAFETY: valid C string.
        let fd = unsafe { libc::shm_open(shm.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600) };
        assert!(fd >= 0, "shm_open: {}", std::io::Error::last_os_error());
        // SAFETY: valid fd.
        assert_eq!(unsafe { libc::ftruncate(fd, SEED_TOTAL as libc::off_t) }, 0);
        let base = map_and_close(fd);
        let mut handles: [*mut libc::sem_t; 3] = [std::ptr::null_mut(); 3];
        for (h, n) in handles.iter_mut().zip(&sems) {
            // SAFETY: valid C string; O_CREAT reads mode and value.
            let s = unsafe {
                libc::sem_open(
                    n.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL,
                    0o600 as libc::c_uint,
                    0 as libc::c_uint,
                )
            };
            assert_ne!(
                s,
                libc::SEM_FAILED,
                "sem_open: {}",
                std::io::Error::last_os_error()
            );
            *h = s;
        }
        Self {
            base: base.cast(),
            len: SEED_TOTAL,
            sems: handles,
            names: Some((shm, sems)),
        }
    }

    fn wait(&self, i: usize, timeout: Duration) -> bool {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer; sem_timedwait uses CLOCK_REALTIME.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
        ts.tv_sec += timeout.as_secs() as libc::time_t;
        ts.tv_nsec += timeout.subsec_nanos() as libc::c_long;
        if ts.tv_nsec >= 1_000_000_000 {
            ts.tv_sec += 1;
            ts.tv_nsec -= 1_000_000_000;
        }
        loop {
            // SAFETY: live semaphore from sem_open; valid timespec.
            if unsafe { libc::sem_timedwait(self.sems[i], &ts) } == 0 {
                return true;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return false;
            }
        }
    }

    fn post(&self, i: usize) {
        // SAFETY: live semaphore from sem_open.
        assert_eq!(unsafe { libc::sem_post(self.sems[i]) }, 0);
    }

    /// Copies `bytes` to `offset` (bounds-checked against the mapping).
    pub fn write_at(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len);
        // SAFETY: in bounds of our mapping; `bytes` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(offset), bytes.len()) }
    }

    /// Copies `len` bytes from `offset`.
    pub fn read_at(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.len);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds of our mapping; `v` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(offset), v.as_mut_ptr(), len) };
        v
    }

    /// The seed C# client's field write: UTF-8 bytes, cut at 4095 bytes by count (the seed's
    /// defect: this can split a character), NUL-terminated, into a zeroed 4096-byte buffer.
    pub fn write_prompt(&self, offset: usize, text: &str) {
        let bytes = text.as_bytes();
        let n = bytes.len().min(4095);
        let mut field = vec![0u8; 4096];
        field[..n].copy_from_slice(&bytes[..n]);
        self.write_at(offset, &field);
    }

    /// One cycle the seed's way: wait `ready`, let `write` fill the fields, post
    /// `prompts_written`, wait `response_written`, read the response up to its NUL and decode
    /// it lossily, as `Encoding.UTF8.GetString` does. `None` if a wait timed out.
    fn cycle(&self, timeout: Duration, write: impl FnOnce(&Self)) -> Option<String> {
        if !self.wait(0, timeout) {
            return None;
        }
        write(self);
        self.post(1);
        if !self.wait(2, timeout) {
            return None;
        }
        let raw = self.read_at(RESPONSE_OFF, RESPONSE_SIZE);
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Some(String::from_utf8_lossy(&raw[..end]).into_owned())
    }

    /// One request the seed's way (prompts cut by byte count at 4095, see `write_prompt`).
    pub fn request(&self, user: &str, system: &str, timeout: Duration) -> Option<String> {
        self.cycle(timeout, |p| {
            p.write_prompt(SYSTEM_OFF, system);
            p.write_prompt(USER_OFF, user);
        })
    }

    /// One request with both fields given as raw bytes (4096 each), e.g. invalid UTF-8.
    pub fn request_with_fields(&self, system: &[u8], user: &[u8], timeout: Duration) -> Option<String> {
        self.cycle(timeout, |p| {
            p.write_at(SYSTEM_OFF, system);
            p.write_at(USER_OFF, user);
        })
    }

    /// One request with the shutdown byte set to `byte` (the seed's `bool` read as a byte).
    pub fn request_with_shutdown_byte(&self, user: &str, byte: u8, timeout: Duration) -> Option<String> {
        self.cycle(timeout, |p| {
            p.write_prompt(SYSTEM_OFF, "");
            p.write_prompt(USER_OFF, user);
            p.write_at(SHUTDOWN_OFF, &[byte]);
        })
    }

    /// Takes `ready` (waits at most `timeout`), as a client does before it writes; `false`
    /// if it timed out. For tests of clients that die holding the turn.
    pub fn take_ready(&self, timeout: Duration) -> bool {
        self.wait(0, timeout)
    }

    /// Posts `prompts_written`, as a client does after it wrote the prompts.
    pub fn post_prompts_written(&self) {
        self.post(1);
    }

    /// The seed's shutdown: set the flag, post prompts_written.
    pub fn request_shutdown(&self) {
        self.write_at(SHUTDOWN_OFF, &[1]);
        self.post(1);
    }

    /// Worker side: serve requests with `answer` until the shutdown flag, the seed's loop
    /// (post ready, wait prompts, check shutdown, read, answer, post response). Gives up
    /// after `idle` without a request.
    pub fn serve(&self, idle: Duration, answer: impl Fn(&str, &str) -> String) -> usize {
        let mut served = 0;
        loop {
            self.post(0);
            if !self.wait(1, idle) {
                return served;
            }
            if self.read_at(SHUTDOWN_OFF, 1)[0] != 0 {
                return served;
            }
            let field = |off| {
                let raw = self.read_at(off, 4096);
                let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                String::from_utf8_lossy(&raw[..end]).into_owned()
            };
            let text = answer(&field(USER_OFF), &field(SYSTEM_OFF));
            let bytes = text.as_bytes();
            let n = bytes.len().min(RESPONSE_SIZE - 1);
            let mut resp = vec![0u8; RESPONSE_SIZE];
            resp[..n].copy_from_slice(&bytes[..n]);
            self.write_at(RESPONSE_OFF, &resp);
            self.post(2);
            served += 1;
        }
    }
}

impl SeedPeer {
    /// Unmaps and closes everything but leaves the names, as a crashed seed-era process
    /// leaves its objects behind.
    pub fn leave(mut self) {
        self.names = None;
    }
}

impl Drop for SeedPeer {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping and closing our own semaphores, once.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
            for s in self.sems {
                libc::sem_close(s);
            }
        }
        if let Some((shm, sems)) = &self.names {
            // SAFETY: valid C strings; unlinking names this peer created.
            unsafe {
                libc::shm_unlink(shm.as_ptr());
                for n in sems {
                    libc::sem_unlink(n.as_ptr());
                }
            }
        }
    }
}

// SAFETY: the peer owns its mapping and semaphores; it is moved into one thread at a time.
unsafe impl Send for SeedPeer {}
