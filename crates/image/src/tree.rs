//! Reading files and trees that somebody else controls: an image's files, a container's live root
//! filesystem while its processes run, a directory a user names for `import --rootfs`.
//!
//! Two attacks shape this module:
//! - **A symlink swapped in mid-walk** (the class of CVE-2018-15664): a walk that lists a directory
//!   by path and then opens `dir/name` by path follows whatever `dir` has become in between. A
//!   container that swaps a directory for a symlink to `/etc` while `export` runs gets the host's
//!   `/etc/shadow` into the tar. Here every open is `openat2` from the root's descriptor with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, so no symlink
//!   is followed on the way and no mount is crossed; the final component is opened `O_NOFOLLOW`, and
//!   what is read is the inode that was stat'ed (device and inode compared), or nothing. An entry
//!   that changes under the walk is passed over, as tar says "file changed as we read it".
//! - **A special file where a regular one is expected**: opening a FIFO for reading blocks until a
//!   writer comes, which is forever, while the caller holds the store's lock. Files are opened
//!   `O_NONBLOCK | O_NOFOLLOW`, their type checked on the descriptor, and anything but a regular
//!   file refused with one line that names what it is.
//!
//! walkdir and std::fs::read_dir work by path and cannot do either, hence this module.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, Stat};

use crate::error::{Error, Result};

/// Resolution that follows no symlink, magic link or mount on the way, and stays beneath its root.
pub fn strict() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
}

/// What a file type is called in an error message.
pub fn describe(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "not a regular file",
    }
}

/// Opens `rel` under `dir` for reading as a regular file, resolved with `resolve`; a FIFO, device
/// or socket is refused without blocking (`InvalidInput`, naming the type), and so is a final
/// symlink unless `resolve` lets symlinks resolve inside a root (`RESOLVE_IN_ROOT`).
pub fn open_regular_at(dir: BorrowedFd<'_>, rel: &Path, resolve: ResolveFlags) -> io::Result<File> {
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    if !resolve.contains(ResolveFlags::IN_ROOT) {
        flags |= OFlags::NOFOLLOW;
    }
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let fd = rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve)?;
    regular(fd)
}

/// Opens `path` for reading as a regular file, never through a final symlink, never blocking on a
/// FIFO; anything but a regular file is refused (`InvalidInput`, naming the type).
pub fn open_regular(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    regular(fd)
}

/// Opens `path` for reading as a regular file following symlinks (a path a user named), never
/// blocking on a FIFO; anything but a regular file is refused (`InvalidInput`, naming the type).
pub fn open_regular_following(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    regular(fd)
}

fn regular(fd: OwnedFd) -> io::Result<File> {
    let st = rustix::fs::fstat(&fd)?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}, not a regular file", describe(ft)),
        ));
    }
    // Back to blocking reads (a regular file never blocks, but a later reader may expect it).
    let fl = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

/// One entry of a [`walk`]: its path relative to the root (empty for the root itself) and the
/// metadata of the very inode that was opened.
pub struct Entry<'a> {
    root: BorrowedFd<'a>,
    pub rel: PathBuf,
    pub stat: Stat,
    /// The directory itself (read-only) for a directory; an `O_PATH` descriptor otherwise.
    fd: OwnedFd,
}

impl Entry<'_> {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    /// The descriptor the walk holds: the open directory, or an `O_PATH` one for anything else.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens a regular file's content: the same inode the walk stat'ed, or `None` if the path now
    /// names something else (it changed under the walk).
    pub fn open(&self) -> Result<Option<File>> {
        match open_regular_at(self.root, &self.rel, strict()) {
            Ok(f) => {
                let st = rustix::fs::fstat(&f).map_err(|e| self.io(e.into()))?;
                Ok((st.st_dev == self.stat.st_dev && st.st_ino == self.stat.st_ino).then_some(f))
            }
            Err(e) if vanished(&e) || e.kind() == io::ErrorKind::InvalidInput => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// A symlink's target.
    pub fn read_link(&self) -> Result<PathBuf> {
        let t = rustix::fs::readlinkat(&self.fd, "", Vec::new()).map_err(|e| self.io(e.into()))?;
        Ok(PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
            t.into_bytes(),
        )))
    }

    fn io(&self, source: io::Error) -> Error {
        Error::Io {
            path: self.rel.clone(),
            source,
        }
    }
}

/// Whether an error means that the entry is gone or became something the walk does not follow
/// (a symlink or a mount on the way): passed over, not a failure.
fn vanished(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::NOENT, Errno::LOOP, Errno::NOTDIR, Errno::XDEV, Errno::AGAIN]
        .iter()
        .any(|x| e.raw_os_error() == Some(x.raw_os_error()))
}

/// Walks the tree under `root` depth-first in name order (a directory before what it holds), never
/// following a symlink and never crossing a mount, and calls `visit` for the root and every entry
/// below it. At most two descriptors are open at any time, whatever the depth; an entry that
/// vanishes or changes type while the walk runs is passed over.
pub fn walk(root: &Path, mut visit: impl FnMut(&Entry<'_>) -> Result<()>) -> Result<()> {
    let at = |e: io::Error| Error::Io {
        path: root.to_path_buf(),
        source: e,
    };
    let root_fd = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| at(e.into()))?;
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let arg = if rel.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            rel.clone()
        };
        let opened = rustix::fs::openat2(
            &root_fd,
            &arg,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            strict(),
        );
        let path_fd = match opened {
            Ok(fd) => fd,
            Err(e) if vanished(&e.into()) => continue,
            Err(rustix::io::Errno::NAMETOOLONG) => {
                return Err(Error::invalid(format!(
                    "{}: a path under it is longer than the system allows ({} bytes)",
                    root.display(),
                    rel.as_os_str().len()
                )))
            }
            Err(e) => {
                return Err(Error::Io {
                    path: root.join(&rel),
                    source: e.into(),
                })
            }
        };
        let stat = rustix::fs::fstat(&path_fd).map_err(|e| at(e.into()))?;
        let mut entry = Entry {
            root: root_fd.as_fd(),
            rel,
            stat,
            fd: path_fd,
        };
        if entry.file_type() == FileType::Directory {
            let dir = match rustix::fs::openat2(
                &root_fd,
                &arg,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                strict(),
            ) {
                Ok(d) => d,
                Err(e) if vanished(&e.into()) => continue,
                Err(e) => return Err(entry.io(e.into())),
            };
            let st = rustix::fs::fstat(&dir).map_err(|e| entry.io(e.into()))?;
            if st.st_dev != entry.stat.st_dev || st.st_ino != entry.stat.st_ino {
                continue;
            }
            entry.fd = dir;
            visit(&entry)?;
            let mut names = Vec::new();
            for e in rustix::fs::Dir::read_from(&entry.fd).map_err(|e| entry.io(e.into()))? {
                let e = e.map_err(|e| entry.io(e.into()))?;
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(std::ffi::OsStr::from_bytes(n).to_os_string());
                }
            }
            names.sort();
            pending.extend(names.into_iter().rev().map(|n| entry.rel.join(n)));
        } else {
            visit(&entry)?;
        }
    }
    Ok(())
}

/// A reader that yields exactly `size` bytes: what `inner` has, cut at `size`, or padded with
/// zeros if it ends early. A file that grows or shrinks while it is copied into a tar entry whose
/// header already says its size must not make the archive lie about where the next header starts.
pub struct ExactSize<R> {
    inner: io::Take<R>,
    left: u64,
}

impl<R: Read> ExactSize<R> {
    pub fn new(inner: R, size: u64) -> Self {
        ExactSize {
            inner: inner.take(size),
            left: size,
        }
    }
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = match self.inner.read(buf)? {
            0 => {
                let n = buf.len().min(self.left as usize);
                buf[..n].fill(0);
                n
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_size_cuts_and_pads() {
        let mut out = Vec::new();
        ExactSize::new(&b"abcdef"[..], 3).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
        out.clear();
        ExactSize::new(&b"ab"[..], 5).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab\0\0\0");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let e = open_regular_following(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let d = rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let e = open_regular_at(d.as_fd(), Path::new("f"), ResolveFlags::IN_ROOT).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        assert!(open_regular(&dir.path().join("l")).is_err(), "a final symlink is not followed");
    }

    #[test]
    fn walk_is_in_name_order_and_follows_no_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("b/c")).unwrap();
        std::fs::create_dir_all(r.join("a")).unwrap();
        std::fs::write(r.join("a/x"), "x").unwrap();
        std::fs::write(r.join("b/c/y"), "y").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("b/link")).unwrap();
        let mut seen = Vec::new();
        walk(r, |e| {
            seen.push((e.rel.display().to_string(), e.file_type()));
            if e.file_type() == FileType::RegularFile {
                let mut s = String::new();
                e.open()?.unwrap().read_to_string(&mut s).unwrap();
                assert_eq!(s.len(), 1);
            }
            Ok(())
        })
        .unwrap();
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["", "a", "a/x", "b", "b/c", "b/c/y", "b/link"]);
        assert_eq!(seen[6].1, FileType::Symlink);
    }
}
