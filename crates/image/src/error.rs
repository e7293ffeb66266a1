//! The one error type of this crate: every failure a caller can act on, each with a message that
//! fits on one line and never contains secret material.

use std::path::PathBuf;

/// Everything that can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reference (`name:tag`, `name@digest`) that is not valid.
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    /// A digest string that is malformed or uses an algorithm we do not support.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },
    /// Content whose digest or size is not what its descriptor promised.
    #[error("{what}: expected {expected}, got {actual}")]
    Mismatch { what: String, expected: String, actual: String },
    /// Outside input (a manifest, config, index, archive) that is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A layer that tried to do something the extractor refuses (escape its root, a bomb, ...).
    #[error("layer {layer}: {reason}")]
    UnsafeLayer { layer: String, reason: String },
    /// Something that was asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the store's state (an image in use, an ambiguous id, ...).
    #[error("{0}")]
    Conflict(String),
    /// An operating system error, with the path it concerns.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.into(), source })
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::Io {
            path: path.into(),
            source: e.into(),
        })
    }
}
