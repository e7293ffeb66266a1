//! The layer extractor: turns a tar stream into a directory and cannot write outside it, whatever
//! the tar says.
//!
//! Every path is resolved relative to a directory file descriptor with `openat2(2)` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, so no entry can
//! climb out with `..`, start from `/`, or pass through a symlink that an earlier entry (or a lower
//! layer) made; the last component is always created with `O_EXCL`/`O_NOFOLLOW`. We do this by hand
//! with `rustix` rather than through `tar::Entry::unpack_in`, which checks paths as strings and follows
//! symlinks, and because we also need overlayfs whiteouts, lower-layer lookups and a report.
//!
//! What a layer may contain:
//! - regular files, directories, symlinks (stored verbatim, never followed), FIFOs;
//! - hard links, only to a regular file that this same layer already extracted;
//! - whiteouts (`.wh.NAME`) become overlayfs whiteouts (a 0:0 character device) and `.wh..wh..opq`
//!   sets `trusted.overlay.opaque=y` on its directory, whatever its place in the tar;
//! - character and block devices are dropped (and reported);
//! - extended attributes: only `user.*` and `security.capability` are kept, so a layer cannot plant
//!   `trusted.overlay.*` attributes that change how overlayfs reads the stack.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dev, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// The overlayfs xattr that makes a directory hide what lower layers have under it.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How to extract.
#[derive(Clone, Debug, Default)]
pub struct ExtractOptions {
    /// Convert `.wh.` entries to overlayfs whiteouts (image layers) or refuse them (plain archives).
    pub overlay_whiteouts: bool,
    /// Apply the uid and gid of each entry (image layers); otherwise everything belongs to the caller.
    pub preserve_owner: bool,
    /// Unpacked lower layers, top-most first: a missing parent directory takes its owner and mode
    /// from there, and a parent that is a symlink or file down there makes the layer unsafe.
    pub lowers: Vec<PathBuf>,
    /// The most bytes of file content the layer may write, counted as written: a GNU sparse
    /// entry's holes are made up by the tar reader after the inflating stream's own limit, so they
    /// count here, before anything is written (`--max-layer-size`).
    pub max_bytes: Option<u64>,
}

/// The most path components an entry may have. No real image comes near it; a deep tree is
/// only a way to make every later walk and removal of the layer expensive.
pub const MAX_DEPTH: usize = 256;

/// What an extraction found that a user should know about; kept in the layer record.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtractReport {
    /// Number of tar entries applied.
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Files with the setuid or setgid bit.
    #[serde(default)]
    pub setuid: Vec<String>,
    /// Files that carry file capabilities (`security.capability`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Device nodes that were dropped.
    #[serde(default)]
    pub dropped_devices: Vec<String>,
    /// Extended attributes that were dropped (`path: name`).
    #[serde(default)]
    pub dropped_xattrs: Vec<String>,
}

/// Extracts the tar stream `reader` into the existing, empty directory `dest`.
///
/// `label` names the layer in errors. On error, `dest` holds a partial tree that the caller must
/// throw away; nothing outside `dest` has been touched.
pub fn extract<R: Read>(reader: R, dest: &Path, opts: &ExtractOptions, label: &str) -> Result<ExtractReport> {
    let root = open_dir(dest)?;
    let lowers = opts.lowers.iter().map(|p| open_dir(p)).collect::<Result<Vec<_>>>()?;
    let mut x = Extractor {
        root,
        lowers,
        opts,
        label,
        report: ExtractReport::default(),
        dirs: Vec::new(),
        buf: vec![0; 1 << 20],
        umask: current_umask(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| x.tar_error(e))?;
    for entry in entries {
        let entry = entry.map_err(|e| x.tar_error(e))?;
        x.apply(entry)?;
    }
    x.finish_dirs()?;
    // What was dropped or kept is reported once per image by the command (ImageInfo::findings).
    Ok(x.report)
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| Error::Io {
        path: path.into(),
        source: e.into(),
    })
}

/// The resolution rules for every lookup below the root.
fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
}

/// Splits a tar path into normal components, refusing absolute paths and `..`.
pub fn sanitize(raw: &[u8]) -> std::result::Result<Vec<OsString>, String> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    if raw.first() == Some(&b'/') {
        return Err(format!("absolute path {:?}", String::from_utf8_lossy(raw)));
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(format!("path {:?} climbs out with '..'", String::from_utf8_lossy(raw))),
            _ => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

fn show(components: &[OsString]) -> String {
    let p: PathBuf = components.iter().collect();
    format!("/{}", p.display())
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Extractor<'a> {
    root: OwnedFd,
    lowers: Vec<OwnedFd>,
    opts: &'a ExtractOptions,
    label: &'a str,
    report: ExtractReport,
    /// Directories whose mtime is set at the end, when no more children will be added to them.
    dirs: Vec<(Vec<OsString>, i64)>,
    buf: Vec<u8>,
    /// The process umask, which applies to the modes we create files with.
    umask: u32,
}

impl Extractor<'_> {
    fn unsafe_layer(&self, reason: impl Into<String>) -> Error {
        Error::UnsafeLayer {
            layer: self.label.into(),
            reason: reason.into(),
        }
    }

    fn tar_error(&self, e: io::Error) -> Error {
        // A limit reader below us reports bombs through io errors; keep their words.
        match e.get_ref().and_then(|i| i.downcast_ref::<crate::limits::LimitExceeded>()) {
            Some(l) => self.unsafe_layer(l.to_string()),
            None => self.unsafe_layer(format!("malformed tar: {e}")),
        }
    }

    fn io(&self, what: &[OsString], e: impl Into<io::Error>) -> Error {
        let e: io::Error = e.into();
        if let Some(l) = e.get_ref().and_then(|i| i.downcast_ref::<crate::limits::LimitExceeded>()) {
            return self.unsafe_layer(l.to_string());
        }
        self.unsafe_layer(format!("{}: {e}", show(what)))
    }

    fn meta(&self, entry: &mut tar::Entry<'_, impl Read>, path: &[OsString]) -> Result<Meta> {
        let h = entry.header();
        let mut m = Meta {
            mode: h.mode().map_err(|e| self.io(path, e))?,
            uid: h.uid().map_err(|e| self.io(path, e))? as u32,
            gid: h.gid().map_err(|e| self.io(path, e))? as u32,
            mtime: h.mtime().map_err(|e| self.io(path, e))? as i64,
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(|e| self.io(path, e))? {
            for ext in pax {
                let ext = ext.map_err(|e| self.io(path, e))?;
                let Ok(key) = ext.key() else { continue };
                let num = || {
                    std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
                };
                match key {
                    "uid" => {
                        m.uid = num()
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or_else(|| self.unsafe_layer(format!("{}: bad PAX uid", show(path))))?
                    }
                    "gid" => {
                        m.gid = num()
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or_else(|| self.unsafe_layer(format!("{}: bad PAX gid", show(path))))?
                    }
                    "mtime" => m.mtime = num().unwrap_or(m.mtime),
                    k => {
                        if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                            m.xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    fn apply(&mut self, mut entry: tar::Entry<'_, impl Read>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let path = sanitize(&raw).map_err(|r| self.unsafe_layer(r))?;
        if path.len() > MAX_DEPTH {
            return Err(self.unsafe_layer(format!(
                "{}/... is {} directories deep, more than the {MAX_DEPTH} a layer may have",
                show(&path[..8]),
                path.len()
            )));
        }
        let kind = entry.header().entry_type();
        let meta = self.meta(&mut entry, &path)?;
        self.report.entries += 1;

        let Some((name, parent)) = path.split_last() else {
            // The root itself: only a directory entry makes sense, and only its metadata applies.
            if kind.is_dir() {
                let fd = rustix::fs::openat(&self.root, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| self.io(&path, e))?;
                self.set_meta(&fd, &path, &meta, true, None)?;
                self.dirs.push((path, meta.mtime));
                return Ok(());
            }
            return Err(self.unsafe_layer(format!("a {kind:?} entry names the root directory")));
        };

        if self.opts.overlay_whiteouts {
            let n = name.as_bytes();
            if n == WHITEOUT_OPAQUE.as_bytes() {
                let dir = self.parent(parent)?;
                let fd = rustix::fs::openat(&dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| self.io(parent, e))?;
                rustix::fs::fsetxattr(&fd, OPAQUE_XATTR, b"y", XattrFlags::empty()).map_err(|e| self.io(parent, e))?;
                return Ok(());
            }
            if n.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
                // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): meaningless for overlayfs.
                return Ok(());
            }
            if let Some(target) = n.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(self.unsafe_layer(format!("invalid whiteout {}", show(&path))));
                }
                let target = OsStr::from_bytes(target);
                let dir = self.parent(parent)?;
                self.remove_existing(&dir, target, &path)?;
                rustix::fs::mknodat(&dir, target, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0))
                    .map_err(|e| self.io(&path, e))?;
                return Ok(());
            }
        } else if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(self.unsafe_layer(format!("whiteout {} in an archive that is not a layer", show(&path))));
        }

        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                // What the entry will write: for a sparse entry, its real size (holes included).
                let size = if kind.is_gnu_sparse() {
                    entry.header().as_gnu().and_then(|g| g.real_size().ok()).unwrap_or(u64::MAX)
                } else {
                    entry.size()
                };
                if let Some(max) = self.opts.max_bytes {
                    if self.report.bytes.saturating_add(size) > max {
                        return Err(self.unsafe_layer(format!(
                            "expands to more than {max} bytes (the limit; raise it with --max-layer-size): {} would write {size} bytes{}",
                            show(&path),
                            if kind.is_gnu_sparse() {
                                " (a sparse file, holes included)"
                            } else {
                                ""
                            }
                        )));
                    }
                }
                let dir = self.parent(parent)?;
                // Created with its final permission bits (less the umask): usually no fchmod follows.
                let perm = meta.mode & 0o777;
                let file = self.create(&dir, name, &path, |d, n| {
                    rustix::fs::openat(
                        d,
                        n,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(perm),
                    )
                })?;
                let mut file = std::fs::File::from(file);
                self.copy(&mut entry, &mut file, &path)?;
                let created = perm & !self.umask;
                self.set_meta(&file, &path, &meta, false, Some(created))?;
            }
            T::Directory => {
                let dir = self.parent(parent)?;
                match rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        self.remove_existing(&dir, name, &path)?;
                        rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o700)).map_err(|e| self.io(&path, e))?;
                    }
                    Err(Errno::NOENT) => {
                        rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o700)).map_err(|e| self.io(&path, e))?;
                    }
                    Err(e) => return Err(self.io(&path, e)),
                }
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io(&path, e))?;
                self.set_meta(&fd, &path, &meta, true, None)?;
                self.dirs.push((path.clone(), meta.mtime));
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_layer(format!("symlink {} without target", show(&path))))?
                    .into_owned();
                if target.is_empty() || target.contains(&0) {
                    return Err(self.unsafe_layer(format!("symlink {} has an empty or NUL target", show(&path))));
                }
                let dir = self.parent(parent)?;
                self.create(&dir, name, &path, |d, n| rustix::fs::symlinkat(OsStr::from_bytes(&target), d, n))?;
                if self.opts.preserve_owner {
                    rustix::fs::chownat(
                        &dir,
                        name.as_os_str(),
                        Some(rustix::fs::Uid::from_raw(meta.uid)),
                        Some(rustix::fs::Gid::from_raw(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| self.io(&path, e))?;
                }
                let t = times(meta.mtime);
                rustix::fs::utimensat(&dir, name.as_os_str(), &t, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| self.io(&path, e))?;
            }
            T::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_layer(format!("hard link {} without target", show(&path))))?
                    .into_owned();
                let target = sanitize(&raw_target).map_err(|r| self.unsafe_layer(format!("hard link {}: target {r}", show(&path))))?;
                let Some((tname, tparent)) = target.split_last() else {
                    return Err(self.unsafe_layer(format!("hard link {} to the root directory", show(&path))));
                };
                // The target must already exist in this layer, reached without any symlink, and be a file.
                let tdir = rustix::fs::openat2(
                    &self.root,
                    dir_arg(tparent),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    beneath(),
                )
                .map_err(|e| {
                    self.unsafe_layer(format!(
                        "hard link {} to {} outside this layer: {}",
                        show(&path),
                        show(&target),
                        io::Error::from(e)
                    ))
                })?;
                match rustix::fs::statat(&tdir, tname.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
                    Ok(_) => {
                        return Err(self.unsafe_layer(format!(
                            "hard link {} to {}, which is not a regular file",
                            show(&path),
                            show(&target)
                        )))
                    }
                    Err(_) => {
                        return Err(self.unsafe_layer(format!(
                            "hard link {} to {}, which is not in this layer",
                            show(&path),
                            show(&target)
                        )))
                    }
                }
                if target == path {
                    return Ok(());
                }
                let dir = self.parent(parent)?;
                self.create(&dir, name, &path, |d, n| {
                    rustix::fs::linkat(&tdir, tname.as_os_str(), d, n, AtFlags::empty())
                })?;
            }
            T::Fifo => {
                let dir = self.parent(parent)?;
                self.create(&dir, name, &path, |d, n| {
                    rustix::fs::mknodat(d, n, FileType::Fifo, Mode::from_raw_mode(0o600), Dev::default())
                })?;
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io(&path, e))?;
                if self.opts.preserve_owner {
                    rustix::fs::chownat(
                        &fd,
                        "",
                        Some(rustix::fs::Uid::from_raw(meta.uid)),
                        Some(rustix::fs::Gid::from_raw(meta.gid)),
                        AtFlags::EMPTY_PATH,
                    )
                    .map_err(|e| self.io(&path, e))?;
                }
                rustix::fs::chmodat(&dir, name.as_os_str(), Mode::from_raw_mode(meta.mode & 0o777), AtFlags::empty())
                    .map_err(|e| self.io(&path, e))?;
            }
            T::Char | T::Block => {
                tracing::debug!(layer = self.label, path = %show(&path), "dropping device node");
                self.report.dropped_devices.push(show(&path));
            }
            T::XGlobalHeader => {}
            other => {
                return Err(self.unsafe_layer(format!("{}: unsupported tar entry type {other:?}", show(&path))));
            }
        }
        Ok(())
    }

    /// Creates `name` in `dir` with `make`; if something is there already (a later tar entry
    /// replaces an earlier one), removes it and tries once more.
    fn create<T>(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &[OsString],
        make: impl Fn(&OwnedFd, &OsStr) -> rustix::io::Result<T>,
    ) -> Result<T> {
        match make(dir, name) {
            Ok(t) => Ok(t),
            Err(Errno::EXIST) => {
                self.remove_existing(dir, name, path)?;
                make(dir, name).map_err(|e| self.io(path, e))
            }
            Err(e) => Err(self.io(path, e)),
        }
    }

    fn remove_existing(&self, dir: &OwnedFd, name: &OsStr, path: &[OsString]) -> Result<()> {
        remove_all_at(dir, name).map_err(|e| self.io(path, e))
    }

    fn copy(&mut self, from: &mut impl Read, to: &mut std::fs::File, path: &[OsString]) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(self.io(path, e)),
            };
            if let Err(e) = to.write_all(&buf[..n]) {
                break Err(self.io(path, e));
            }
            self.report.bytes += n as u64;
        };
        self.buf = buf;
        result
    }

    /// Applies owner, mode, xattrs and (for non-directories) mtime. `created_mode` is the mode the
    /// object has now, if known, so that an `fchmod` that would change nothing is skipped.
    fn set_meta(&mut self, fd: &impl AsFd, path: &[OsString], m: &Meta, is_dir: bool, created_mode: Option<u32>) -> Result<()> {
        if self.opts.preserve_owner {
            rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(m.uid)), Some(rustix::fs::Gid::from_raw(m.gid)))
                .map_err(|e| self.io(path, e))?;
        }
        // After chown, which clears the setuid and setgid bits.
        let mode = if self.opts.preserve_owner {
            m.mode & 0o7777
        } else {
            m.mode & 0o777
        };
        if created_mode != Some(mode) {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(|e| self.io(path, e))?;
        }
        if mode & 0o6000 != 0 && !is_dir {
            self.report.setuid.push(show(path));
        }
        for (name, value) in &m.xattrs {
            let allowed = self.opts.preserve_owner && (name.starts_with("user.") || name == "security.capability");
            if !allowed {
                self.report.dropped_xattrs.push(format!("{}: {name}", show(path)));
                continue;
            }
            rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()).map_err(|e| self.io(path, e))?;
            if name == "security.capability" {
                self.report.capabilities.push(show(path));
            }
        }
        if !is_dir {
            rustix::fs::futimens(fd, &times(m.mtime)).map_err(|e| self.io(path, e))?;
        }
        Ok(())
    }

    /// Opens the parent directory `parent` below the root, creating what is missing.
    fn parent(&self, parent: &[OsString]) -> Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match rustix::fs::openat2(&self.root, dir_arg(parent), flags, Mode::empty(), beneath()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(self.parent_error(parent, e)),
        }
        // Walk down, creating each missing directory with the owner and mode it has below us.
        let mut fd = rustix::fs::openat(&self.root, ".", flags, Mode::empty()).map_err(|e| self.io(parent, e))?;
        for i in 0..parent.len() {
            let name = parent[i].as_os_str();
            let next = match rustix::fs::openat2(&fd, name, flags, Mode::empty(), beneath()) {
                Ok(next) => next,
                Err(Errno::NOENT) => {
                    let (mode, uid, gid) = self.lower_dir(&parent[..=i])?;
                    rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o700)).map_err(|e| self.io(&parent[..=i], e))?;
                    let dir = rustix::fs::openat(
                        &fd,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| self.io(&parent[..=i], e))?;
                    if self.opts.preserve_owner {
                        rustix::fs::fchown(&dir, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))
                            .map_err(|e| self.io(&parent[..=i], e))?;
                    }
                    rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode)).map_err(|e| self.io(&parent[..=i], e))?;
                    rustix::fs::openat(&fd, name, flags | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| self.io(&parent[..=i], e))?
                }
                Err(e) => return Err(self.parent_error(&parent[..=i], e)),
            };
            fd = next;
        }
        Ok(fd)
    }

    fn parent_error(&self, parent: &[OsString], e: Errno) -> Error {
        match e {
            Errno::LOOP | Errno::XDEV => self.unsafe_layer(format!("{} passes through a symlink", show(parent))),
            Errno::NOTDIR => self.unsafe_layer(format!("{} is not a directory", show(parent))),
            e => self.io(parent, e),
        }
    }

    /// The owner and mode of `dir` in the highest lower layer that has it; refuses a lower layer
    /// that has a symlink or a file there (writing through it is what we never do).
    fn lower_dir(&self, dir: &[OsString]) -> Result<(u32, u32, u32)> {
        for lower in &self.lowers {
            match rustix::fs::openat2(
                lower,
                dir_arg(dir),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                beneath(),
            ) {
                Ok(fd) => {
                    let st = rustix::fs::fstat(&fd).map_err(|e| self.io(dir, e))?;
                    match FileType::from_raw_mode(st.st_mode) {
                        FileType::Directory => return Ok((st.st_mode & 0o7777, st.st_uid, st.st_gid)),
                        // A whiteout: the directory was deleted below; make a fresh one.
                        FileType::CharacterDevice if st.st_rdev == 0 => break,
                        _ => {
                            return Err(self.unsafe_layer(format!(
                                "{} is not a directory in a lower layer (writing through it would escape)",
                                show(dir)
                            )))
                        }
                    }
                }
                Err(Errno::NOENT) => continue,
                Err(Errno::LOOP | Errno::XDEV | Errno::NOTDIR) => {
                    return Err(self.unsafe_layer(format!("{} passes through a symlink or file in a lower layer", show(dir))));
                }
                Err(e) => return Err(self.io(dir, e)),
            }
        }
        Ok((0o755, 0, 0))
    }

    /// Sets directory mtimes last, deepest first, now that nothing more is added to them.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, mtime) in dirs.iter().rev() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            // The directory may have been replaced by a later entry; then its time does not matter.
            if let Ok(fd) = rustix::fs::openat2(&self.root, dir_arg(path), flags, Mode::empty(), beneath()) {
                rustix::fs::futimens(&fd, &times(*mtime)).map_err(|e| self.io(path, e))?;
            }
        }
        Ok(())
    }
}

/// The umask, read from /proc (calling umask(2) would change it for every thread meanwhile). When it
/// cannot be read, assume the strictest, so that every mode is set explicitly.
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:").and_then(|v| u32::from_str_radix(v.trim(), 8).ok()))
        })
        .unwrap_or(0o777)
}

fn dir_arg(components: &[OsString]) -> PathBuf {
    if components.is_empty() {
        PathBuf::from(".")
    } else {
        components.iter().collect()
    }
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec { tv_sec: mtime, tv_nsec: 0 };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Removes `name` under `dir` and everything below it, never following a symlink, with at most
/// three descriptors open and no recursion, however deep the tree: a layer (or a container's
/// `mkdir d; cd d` loop) 2,000 directories deep exhausted descriptors when each level held one, and
/// deeper trees would have overflowed the stack. It descends through one open directory at a time
/// and climbs back through `..`, checked to be the directory it came from (device and inode).
pub fn remove_all_at(dir: &impl AsFd, name: &OsStr) -> rustix::io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    let open_dir = |at: &OwnedFd, n: &OsStr| {
        rustix::fs::openat(
            at,
            n,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let mut cur = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Never into another filesystem (a mount left below): EXDEV rather than emptying it.
    let top_dev = rustix::fs::fstat(&cur)?.st_dev;
    // The way down: each directory's name in its parent, and the parent's (dev, ino).
    let mut path: Vec<(OsString, (u64, u64))> = Vec::new();
    loop {
        let mut subdir = None;
        for entry in rustix::fs::Dir::read_from(&cur)? {
            let entry = entry?;
            let n = entry.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            let n = OsString::from_vec(n.to_vec());
            match rustix::fs::statat(&cur, &n, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    if st.st_dev != top_dev {
                        return Err(Errno::XDEV);
                    }
                    subdir = Some(n);
                    break;
                }
                Ok(_) => match rustix::fs::unlinkat(&cur, &n, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                },
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(n) = subdir {
            let here = rustix::fs::fstat(&cur)?;
            let next = open_dir(&cur, &n)?;
            path.push((n, (here.st_dev, here.st_ino)));
            cur = next;
            continue;
        }
        // `cur` is empty: remove it from its parent and go on there.
        let Some((n, (dev, ino))) = path.pop() else {
            drop(cur);
            return rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR);
        };
        let parent = open_dir(&cur, OsStr::new(".."))?;
        let st = rustix::fs::fstat(&parent)?;
        if (st.st_dev, st.st_ino) != (dev, ino) {
            // Moved while we were below it: stop rather than remove somewhere else.
            return Err(Errno::STALE);
        }
        drop(cur);
        rustix::fs::unlinkat(&parent, &n, AtFlags::REMOVEDIR)?;
        cur = parent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_deeper_than_the_descriptor_limit_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let root = rustix::fs::open(d.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        rustix::fs::mkdirat(&root, "top", Mode::from_raw_mode(0o755)).unwrap();
        let mut cur = rustix::fs::openat(&root, "top", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        // 3,000 levels (the soft descriptor limit is 1,024 here), a file and a symlink on each tenth.
        for i in 0..3000 {
            rustix::fs::mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).unwrap();
            if i % 10 == 0 {
                drop(rustix::fs::openat(&cur, "f", OFlags::CREATE | OFlags::WRONLY, Mode::from_raw_mode(0o644)).unwrap());
                rustix::fs::symlinkat("/etc", &cur, "l").unwrap();
            }
            cur = rustix::fs::openat(&cur, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
        drop(cur);
        remove_all_at(&root, OsStr::new("top")).unwrap();
        assert!(!d.path().join("top").exists());
        assert!(std::path::Path::new("/etc/passwd").exists(), "a symlink was followed");
    }

    #[test]
    fn sanitize_refuses_escapes_and_keeps_normal_paths() {
        assert_eq!(sanitize(b"./a//b/./c").unwrap(), vec![OsString::from("a"), "b".into(), "c".into()]);
        assert!(sanitize(b"").unwrap().is_empty());
        assert!(sanitize(b"../x").is_err());
        assert!(sanitize(b"a/../../x").is_err());
        assert!(sanitize(b"/etc/passwd").is_err());
        assert!(sanitize(b"a\0b").is_err());
    }
}
