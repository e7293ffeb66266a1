//! # bulkhead-shim
//!
//! What stays resident beside a running container: the monitor that copies the container's output
//! into its log and waits for it to exit ([`output::copy_output`]), and the log format itself
//! ([`logs`]: Docker's json-file lines, rotated, each record chained to the one before by its hash).
//!
//! The crate is deliberately small (no libcontainer, no image store) because its binary,
//! `bulkhead-shim`, is what every detached container keeps in memory for its whole life; the
//! work before the start and after the exit is done by the full `bulkhead` binary.

pub mod logs;
pub mod output;

use std::io::Write as _;
use std::path::Path;

/// What went wrong, as one line for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Replaces `path` with `data` so that readers see the old file or the new one, and the new one
/// survives a crash once this returns (temporary file, fsync, rename, fsync of the directory).
pub fn durable_write(path: &Path, data: &[u8]) -> Result<()> {
    let fail = |e: std::io::Error| Error(format!("{}: {e}", path.display()));
    let dir = path.parent().ok_or_else(|| Error(format!("{} has no parent", path.display())))?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(fail)?;
    tmp.write_all(data).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
}
