//! Which protocol an object speaks — the seed's, or ours with the extension page — judged
//! from its size and the page's magic and version.

use super::layout::{EXT_MAGIC, EXT_VERSION, OBJECT_SIZE, SEED_SIZE};

/// Which protocol an object speaks, judged from its size and the extension page's magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// The seed's 40961 bytes (or more, without a valid extension page): pure seed mode.
    Seed,
    /// A full object with a valid extension page of a version this crate reads.
    Extended,
}

/// Why an object cannot be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// Smaller than the seed region: mapping it would fault on access.
    #[error("shared memory object is {size} bytes, smaller than the seed layout's {SEED_SIZE}")]
    TooSmall {
        /// Size found.
        size: u64,
    },
    /// The extension magic is present but the version is not one this crate reads.
    #[error("extension page version {found} is not supported (this build reads {EXT_VERSION})")]
    UnsupportedVersion {
        /// Version found.
        found: u32,
    },
}

impl ObjectKind {
    /// Classifies an object of `size` bytes whose extension page (if the object is large
    /// enough to hold one) starts with `magic` and carries `version`.
    ///
    /// # Errors
    /// [`ClassifyError`] when the object is too small for the seed layout or speaks an
    /// unknown extension version.
    pub fn classify(size: u64, magic: Option<[u8; 8]>, version: u32) -> Result<Self, ClassifyError> {
        if size < SEED_SIZE as u64 {
            return Err(ClassifyError::TooSmall { size });
        }
        match magic {
            Some(m) if size >= OBJECT_SIZE as u64 && m == EXT_MAGIC => {
                if version == EXT_VERSION {
                    Ok(ObjectKind::Extended)
                } else {
                    Err(ClassifyError::UnsupportedVersion { found: version })
                }
            }
            _ => Ok(ObjectKind::Seed),
        }
    }
}
