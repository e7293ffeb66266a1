//! File helpers shared by the containers' and the volumes' records.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};

/// One record per entry of `dir` (entries starting with `.` are not records); one that `load`
/// cannot read is skipped with a warning naming the `what`.
pub(crate) fn read_records<T>(dir: &Path, what: &str, load: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        match load(&name) {
            Ok(r) => out.push(r),
            Err(err) => tracing::warn!(path = %e.path().display(), %err, "skipping an unreadable {what}"),
        }
    }
    Ok(out)
}

/// Opens (creating) `p` and holds an exclusive flock on it until the file is dropped.
pub(crate) fn lock_file(p: &Path) -> Result<fs::File> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map_err(|e| io(p, e))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| io(p, e))?;
    Ok(f)
}

/// An I/O error, naming the path.
pub(crate) fn io(p: &Path, e: impl Into<std::io::Error>) -> Error {
    Error::Invalid(format!("{}: {}", p.display(), e.into()))
}

/// 32 random bytes in hex: a container's or a temporary name's id.
pub fn random_id() -> Result<String> {
    let mut b = [0u8; 32];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).map_err(|e| io(Path::new("getrandom"), e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
