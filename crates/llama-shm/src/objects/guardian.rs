//! The guardian of a standalone worker: a small process that removes the worker's names when
//! the worker dies without removing them itself (SIGKILL, the OOM killer) — as the seed's own
//! C# service ends its worker on every dispose.
//!
//! ```text
//!  worker                                   guardian (the worker binary, re-executed)
//!  spawn guardian, stdin = socket ────────► reads identities until EOF
//!  create each object; send "ino dev path" ─►   (records them)
//!  … serves …
//!  exits (any way: the kernel closes the socket)
//!                                           EOF: for each recorded path that still names the
//!                                           recorded object (same device and inode), unlink it;
//!                                           exit
//! ```
//!
//! The guardian never removes a successor's names: a successor's objects are new inodes, and
//! a successor does not reclaim a prefix whose recorded guardian is still alive (it waits for
//! it, see [`crate::objects::reclaim`]), so the names cannot change hands between the
//! guardian's identity check and its unlink. It lives as long as the worker plus the few
//! milliseconds of its clean-up. Residual window: a SIGKILL between the creation of an object
//! and the message that names it (a few microseconds) leaves that object to the next start's
//! reclaim.

use std::io::{self, BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::os::Identity;

/// The worker's handle on its guardian.
#[derive(Debug)]
pub struct Guardian {
    sock: UnixStream,
    child: Child,
}

impl Guardian {
    /// Starts a guardian: runs `program` with `args` (the worker binary in its guardian mode),
    /// its stdin a socket whose end of file tells it the worker is gone. It runs in its own
    /// process group, so a Ctrl-C meant for the worker's terminal leaves it be.
    ///
    /// # Errors
    /// The socket or the spawn failed.
    pub fn spawn(program: &Path, args: &[&str]) -> io::Result<Self> {
        let (sock, theirs) = UnixStream::pair()?;
        let child = Command::new(program)
            .arg0("llama-shm-guardian")
            .args(args)
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Self { sock, child })
    }

    /// The guardian's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the guardian about an object the worker is about to name (call it before the
    /// name appears: [`crate::objects::create_guarded`] does): when the worker dies, the name
    /// is removed if it still names that object then.
    ///
    /// # Errors
    /// The guardian is gone.
    pub fn guard(&mut self, object: &Identity) -> io::Result<()> {
        let line = format!("{} {} {}\n", object.ino, object.dev, object.path.display());
        self.sock.write_all(line.as_bytes())
    }
}

/// The guardian's side: reads the identities the worker sends on `input` until end of file
/// (the worker is gone), then unlinks every recorded path that still names the recorded
/// object. Returns the paths it removed.
pub fn watch(input: impl io::Read) -> Vec<PathBuf> {
    let mut guarded = Vec::new();
    for line in io::BufReader::new(input).lines() {
        let Ok(line) = line else { break };
        let mut f = line.splitn(3, ' ');
        let (Some(ino), Some(dev), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let (Ok(ino), Ok(dev)) = (ino.parse::<u64>(), dev.parse::<u64>()) {
            guarded.push((ino, dev, PathBuf::from(path)));
        }
    }
    guarded
        .into_iter()
        .filter(|(ino, dev, path)| {
            // Same object still there (the worker did not remove it, nobody replaced it).
            std::fs::symlink_metadata(path).is_ok_and(|md| md.ino() == *ino && md.dev() == *dev)
                && std::fs::remove_file(path).is_ok()
        })
        .map(|(_, _, path)| path)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded files that still are what was recorded are removed at end of input; a file
    /// replaced since (a successor's) and one already gone are left alone.
    #[test]
    fn removes_only_what_still_is_the_recorded_object() {
        let dir = std::env::temp_dir().join(format!("lshm-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let [kept, replaced, gone] = ["kept", "replaced", "gone"].map(|n| dir.join(n));
        let mut input = String::new();
        for p in [&kept, &replaced, &gone] {
            std::fs::write(p, b"x").unwrap();
            let md = std::fs::metadata(p).unwrap();
            input.push_str(&format!("{} {} {}\n", md.ino(), md.dev(), p.display()));
        }
        // A successor's object under the same name: a new inode (the old one kept open so
        // the number is not reused).
        let _old = std::fs::File::open(&replaced).unwrap();
        std::fs::remove_file(&replaced).unwrap();
        std::fs::write(&replaced, b"successor").unwrap();
        std::fs::remove_file(&gone).unwrap();
        input.push_str("garbage line\n");
        let removed = watch(input.as_bytes());
        assert_eq!(removed, vec![kept.clone()]);
        assert!(!kept.exists());
        assert_eq!(std::fs::read(&replaced).unwrap(), b"successor");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
