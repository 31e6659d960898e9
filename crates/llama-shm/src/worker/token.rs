//! A standalone worker's auth token, from a file of 64 hex digits (never from argv, where
//! `ps` would show it).

use std::io;
use std::path::{Path, PathBuf};

use crate::wire::layout::TOKEN_LEN;

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// It does not hold exactly 64 hex digits (surrounding white space aside).
    #[error("token file {path} must hold {} hex digits", TOKEN_LEN * 2)]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// Reads an auth token from a file of 64 hex digits.
///
/// # Errors
/// [`TokenFileError`].
pub fn read_token_file(path: &Path) -> Result<[u8; TOKEN_LEN], TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let malformed = || TokenFileError::Malformed {
        path: path.to_owned(),
    };
    let hex = text.trim();
    if hex.len() != TOKEN_LEN * 2 || !hex.is_ascii() {
        return Err(malformed());
    }
    let mut token = [0u8; TOKEN_LEN];
    for (i, b) in token.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| malformed())?;
    }
    Ok(token)
}
