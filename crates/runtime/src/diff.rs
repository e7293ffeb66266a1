//! `diff`: what a container changed, from its overlay upper directory, as `docker diff` shows it.
//!
//! An entry of the upper directory is `A` (added) if the image does not have that path, `C`
//! (changed) if it does; a whiteout (0:0 character device) is `D`; an opaque directory hides what
//! the image had below it, so those paths are `D` too. Lookups in the image's layers never follow a
//! symlink (an absolute link in a layer would otherwise point into the host).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use serde::Serialize;

use crate::error::{Error, Result};

/// One change, as `docker diff` prints it: `Kind` 0 = C, 1 = A, 2 = D.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Change {
    #[serde(rename = "Path")]
    pub path: String,
    #[serde(rename = "Kind")]
    pub kind: u8,
}

impl Change {
    pub fn letter(&self) -> char {
        match self.kind {
            0 => 'C',
            1 => 'A',
            _ => 'D',
        }
    }
}

/// What the image has at a path, across its layers (top-most first).
struct Image {
    layers: Vec<OwnedFd>,
}

#[derive(PartialEq, Eq)]
enum Found {
    Present,
    Absent,
}

impl Image {
    fn lookup(&self, rel: &Path) -> Found {
        let comps: Vec<&std::ffi::OsStr> = rel.iter().collect();
        for layer in &self.layers {
            // A whiteout or an opaque directory on the way hides everything below in this layer.
            for i in 0..comps.len() {
                let prefix: PathBuf = comps[..=i].iter().collect();
                match stat(layer, &prefix) {
                    Some((FileType::CharacterDevice, 0, _)) => return Found::Absent,
                    Some((FileType::Directory, _, true)) if i < comps.len() - 1 => {
                        // Opaque: lower layers do not contribute below it; this layer decides.
                        return if stat(layer, rel).is_some() {
                            Found::Present
                        } else {
                            Found::Absent
                        };
                    }
                    Some(_) if i == comps.len() - 1 => return Found::Present,
                    Some(_) => {}
                    None => break,
                }
            }
        }
        Found::Absent
    }

    /// The names the image has directly under `dir`.
    fn children(&self, dir: &Path) -> Vec<OsString> {
        let mut out = std::collections::BTreeSet::new();
        for layer in &self.layers {
            let Ok(fd) = rustix::fs::openat2(
                layer,
                dir_arg(dir),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                beneath(),
            ) else {
                continue;
            };
            if let Ok(d) = rustix::fs::Dir::read_from(&fd) {
                for e in d.flatten() {
                    let n = e.file_name().to_bytes();
                    if n != b"." && n != b".." {
                        out.insert(OsString::from(std::ffi::OsStr::from_bytes(n)));
                    }
                }
            }
        }
        out.into_iter().filter(|n| self.lookup(&dir.join(n)) == Found::Present).collect()
    }
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn dir_arg(p: &Path) -> PathBuf {
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p.to_path_buf()
    }
}

/// (type, rdev, opaque) of `rel` in `layer`, without following symlinks on the way.
fn stat(layer: &OwnedFd, rel: &Path) -> Option<(FileType, u64, bool)> {
    let fd = rustix::fs::openat2(
        layer,
        rel,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        beneath(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    let ft = FileType::from_raw_mode(st.st_mode);
    let opaque = ft == FileType::Directory && is_opaque(&fd);
    Some((ft, st.st_rdev, opaque))
}

fn is_opaque(fd: &OwnedFd) -> bool {
    // O_PATH descriptors cannot read xattrs; go through the /proc link (it names this very inode).
    let p = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    let mut buf = [0u8; 4];
    matches!(rustix::fs::getxattr(p.as_str(), bulkhead_image::unpack::OPAQUE_XATTR, &mut buf), Ok(1) if buf[0] == b'y')
}

/// The changes in `upper` against the image made of `lowers` (top-most first), sorted by path.
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let open = |p: &Path| {
        rustix::fs::open(p, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::Invalid(format!("{}: {}", p.display(), std::io::Error::from(e))))
    };
    let image = Image {
        layers: lowers.iter().map(|l| open(l)).collect::<Result<_>>()?,
    };
    let upper_fd = open(upper)?;
    let mut out = Vec::new();
    let walker = walkdir_upper(upper)?;
    for rel in walker {
        let (ft, rdev, opaque) = match stat(&upper_fd, &rel) {
            Some(s) => s,
            None => continue,
        };
        let shown = format!("/{}", rel.display());
        if ft == FileType::CharacterDevice && rdev == 0 {
            if image.lookup(&rel) == Found::Present {
                out.push(Change { path: shown, kind: 2 });
            }
            continue;
        }
        let in_image = image.lookup(&rel) == Found::Present;
        out.push(Change {
            path: shown,
            kind: if in_image { 0 } else { 1 },
        });
        if opaque && in_image {
            for child in image.children(&rel) {
                if stat(&upper_fd, &rel.join(&child)).is_none() {
                    out.push(Change {
                        path: format!("/{}", rel.join(&child).display()),
                        kind: 2,
                    });
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every path under `upper`, relative, parents before children. The upper directory of a running
/// container changes while it is read: the walk follows no symlink (a directory swapped for a link
/// to the host's /etc lists nothing of it) and passes over what vanishes under it.
fn walkdir_upper(upper: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    bulkhead_image::tree::walk(upper, |e| {
        if !e.rel.as_os_str().is_empty() {
            out.push(e.rel.clone());
        }
        Ok(())
    })?;
    Ok(out)
}
