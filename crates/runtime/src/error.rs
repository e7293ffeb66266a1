//! Errors of the runtime crate.

/// Everything that can go wrong turning a request into a container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request that cannot be honoured as given (an unknown capability, no command, ...).
    #[error("{0}")]
    Invalid(String),
    /// A container or other object that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The executor (libcontainer or an OCI runtime) failed.
    #[error("{0}")]
    Executor(String),
    /// The log or the monitor failed.
    #[error(transparent)]
    Log(#[from] bulkhead_shim::Error),
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] bulkhead_image::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
