//! Secrets and configs (`run --secret`, `run --config`): files given to a container read-only,
//! owned by its user, at each start.
//!
//! A file is read from its source when the container starts (a regular file, at most
//! [`MAX_SIZE`], looked up without following any symlink: never a FIFO that would block the
//! start, never a device, and never what a link swapped in since the container was made points
//! to), written into a tmpfs made for that start and never attached anywhere on the host (a
//! detached mount, `noswap`), and each file of it is bind-mounted read-only, nosuid, nodev and
//! noexec at its target in the root filesystem. The content lives only in memory, reachable only
//! through the container's mounts, and goes with the root filesystem's mount when the container
//! stops; a start cut short leaves no mount behind. A secret never reaches the container's
//! environment, its layer, `inspect` or the disk; a config is the same mechanism, world-readable
//! by default.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountAttrFlags;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// At most this much per file (the bound Swarm puts on a secret).
pub const MAX_SIZE: u64 = 500 << 10;
/// At most this many files per container.
pub const MAX_FILES: usize = 100;
/// Where a secret goes when its target is a name.
pub const SECRETS_DIR: &str = "/run/secrets";

/// One secret or config of a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectedFile {
    /// The host file it is read from at each start.
    pub source: String,
    /// Its absolute path in the container.
    pub target: String,
    /// Its owner in the container (the container's user unless given).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
    pub secret: bool,
}

/// `--secret src=PATH,target=NAME|/PATH[,uid=N][,gid=N][,mode=0400]` (a secret), or the same
/// with `--config` (target absolute, mode 0444 unless given).
pub fn parse(s: &str, secret: bool) -> Result<InjectedFile> {
    let flag = if secret { "--secret" } else { "--config" };
    let bad = |why: String| Error::Invalid(format!("{flag} {s:?}: {why}"));
    let (mut source, mut target, mut uid, mut gid, mut mode) = (None, None, None, None, None);
    let id = |v: &str| -> Result<u32> {
        v.parse::<u32>()
            .ok()
            .filter(|&n| n < crate::profile::ID_RANGE)
            .ok_or_else(|| bad(format!("{v:?}: an id below {}", crate::profile::ID_RANGE)))
    };
    let mut keys = std::collections::BTreeSet::new();
    for kv in s.split(',') {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(bad(format!("{kv:?}: expected KEY=VALUE")));
        };
        // One value per key: a value that carried `,src=` must not replace the first.
        let key = match k {
            "source" => "src",
            "dst" => "target",
            k => k,
        };
        if !keys.insert(key) {
            return Err(bad(format!("{k} given twice")));
        }
        match k {
            "src" | "source" => source = Some(v.to_owned()),
            "target" | "dst" => target = Some(v.to_owned()),
            "uid" => uid = Some(id(v)?),
            "gid" => gid = Some(id(v)?),
            "mode" => mode = Some(parse_mode(v).map_err(bad)?),
            _ => return Err(bad(format!("unknown key {k:?} (src, target, uid, gid, mode)"))),
        }
    }
    let source = source.ok_or_else(|| bad("src= is required".into()))?;
    if !source.starts_with('/') {
        return Err(bad(format!("src {source:?}: an absolute host path")));
    }
    let target = target.ok_or_else(|| bad("target= is required".into()))?;
    let target = if secret && !target.starts_with('/') {
        // A name: one component under /run/secrets.
        if target.is_empty() || target.contains('/') || target == "." || target == ".." || target.contains('\0') {
            return Err(bad(format!("target {target:?}: a file name, or an absolute path")));
        }
        format!("{SECRETS_DIR}/{target}")
    } else {
        target
    };
    crate::mounts::check_target(&target)?;
    Ok(InjectedFile {
        source,
        target,
        uid,
        gid,
        mode: mode.unwrap_or(if secret { 0o400 } else { 0o444 }),
        secret,
    })
}

/// A file mode in octal (`0400`, `440`): permission bits only, never setuid, setgid or sticky.
pub fn parse_mode(v: &str) -> std::result::Result<u32, String> {
    let digits = v.strip_prefix("0o").unwrap_or(v);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("mode {v:?}: octal permission bits, at most 0777")),
    }
}

/// Reads a source: a regular file, at most [`MAX_SIZE`], found without following a symlink
/// anywhere on its path (the path was resolved when the container was made: a link swapped in
/// since is refused, not followed). It is looked at through an O_PATH descriptor first, and
/// opened for reading only if it is a regular file: a FIFO is never waited on, and a device is
/// never opened (opening some has effects: a watchdog, a tape).
pub fn read_source(p: &str) -> Result<Vec<u8>> {
    use rustix::fs::ResolveFlags;
    let err = |e: std::io::Error| Error::Invalid(format!("{p}: {e}"));
    let at = rustix::fs::openat2(
        rustix::fs::CWD,
        p,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => Error::Invalid(format!("{p}: a symlink on the way (the path must name the file itself)")),
        e => err(e.into()),
    })?;
    let st = rustix::fs::fstat(&at).map_err(|e| err(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Error::Invalid(format!("{p}: not a regular file")));
    }
    if st.st_size as u64 > MAX_SIZE {
        return Err(Error::Invalid(format!("{p}: larger than {} KiB", MAX_SIZE >> 10)));
    }
    // The very file looked at, opened for reading through its descriptor.
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&at)),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    let mut data = Vec::new();
    std::fs::File::from(fd).take(MAX_SIZE + 1).read_to_end(&mut data).map_err(err)?;
    if data.len() as u64 > MAX_SIZE {
        return Err(Error::Invalid(format!("{p}: larger than {} KiB", MAX_SIZE >> 10)));
    }
    Ok(data)
}

/// The source as `--secret src=` names it, resolved once (when the container is made): what
/// each start reads (see [`read_source`]).
pub fn resolve_source(f: &mut InjectedFile) -> Result<()> {
    let c = std::fs::canonicalize(&f.source).map_err(|e| Error::Invalid(format!("{}: {e}", f.source)))?;
    f.source = c.to_string_lossy().into_owned();
    Ok(())
}

/// Checks a container's set of files: bounded, and no two at one target.
pub fn check(files: &[InjectedFile]) -> Result<()> {
    if files.len() > MAX_FILES {
        return Err(Error::Invalid(format!("more than {MAX_FILES} secrets and configs")));
    }
    for (i, f) in files.iter().enumerate() {
        if files[..i].iter().any(|g| g.target == f.target) {
            return Err(Error::Invalid(format!("two secrets or configs at {}", f.target)));
        }
    }
    Ok(())
}

/// Reads every file and attaches it in the mounted root filesystem `rootfs`, through a tmpfs that
/// is never attached on the host. Owners are the container's ids, mapped into its range
/// (`host_id`); `user` is its user's (uid, gid), for files without an owner of their own.
pub fn attach_all(files: &[InjectedFile], rootfs: &Path, host_id: Option<u32>, user: (u32, u32)) -> Result<()> {
    use rustix::mount::{FsMountFlags, FsOpenFlags};
    if files.is_empty() {
        return Ok(());
    }
    check(files)?;
    let contents = files.iter().map(|f| read_source(&f.source)).collect::<Result<Vec<_>>>()?;
    let sys = |what: &str, e: rustix::io::Errno| Error::Invalid(format!("{what} (secrets and configs): {e}"));
    // Owners first: an id outside the container's range would belong to someone else.
    let mut owners = Vec::new();
    for f in files {
        let (uid, gid) = (f.uid.unwrap_or(user.0), f.gid.unwrap_or(user.1));
        let mapped = match host_id {
            Some(h) => {
                if uid >= crate::profile::ID_RANGE || gid >= crate::profile::ID_RANGE {
                    return Err(Error::Invalid(format!(
                        "{}: owner {uid}:{gid} is outside the container's {} ids",
                        f.target,
                        crate::profile::ID_RANGE
                    )));
                }
                (h.checked_add(uid), h.checked_add(gid))
            }
            None => (Some(uid), Some(gid)),
        };
        match mapped {
            (Some(u), Some(g)) => owners.push((u, g)),
            _ => return Err(Error::Invalid(format!("{}: owner {uid}:{gid} out of range", f.target))),
        }
    }
    let total: usize = contents.iter().map(|c| c.len().div_ceil(4096) * 4096 + 4096).sum();
    let fs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| sys("fsopen tmpfs", e))?;
    rustix::mount::fsconfig_set_string(&fs, "size", (total + 4096).to_string()).map_err(|e| sys("tmpfs size", e))?;
    rustix::mount::fsconfig_set_string(&fs, "nr_inodes", (files.len() + 8).to_string()).map_err(|e| sys("tmpfs nr_inodes", e))?;
    rustix::mount::fsconfig_set_string(&fs, "mode", "0700").map_err(|e| sys("tmpfs mode", e))?;
    // Never written to swap (Linux 6.4+; older kernels go without).
    let _ = rustix::mount::fsconfig_set_flag(&fs, "noswap");
    rustix::mount::fsconfig_create(&fs).map_err(|e| sys("creating a tmpfs", e))?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
    .map_err(|e| sys("fsmount", e))?;
    for (i, ((f, data), (uid, gid))) in files.iter().zip(&contents).zip(owners).enumerate() {
        let name = i.to_string();
        let fd = rustix::fs::openat(
            &mnt,
            &name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| sys("writing", e))?;
        let mut w = std::fs::File::from(fd);
        std::io::Write::write_all(&mut w, data).map_err(|e| Error::Invalid(format!("{}: {e}", f.target)))?;
        rustix::fs::fchown(
            w.as_fd(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| sys("chown", e))?;
        rustix::fs::fchmod(w.as_fd(), Mode::from_raw_mode(f.mode)).map_err(|e| sys("chmod", e))?;
        let attrs = MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC;
        let view = crate::idmap::clone_at(&mnt, Path::new(&name), None, attrs)?;
        crate::idmap::attach_at(&view, rootfs, &f.target, false, host_id.unwrap_or(0))?;
    }
    // The detached tmpfs goes with `mnt`; its files live on through their mounts only.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_secrets_and_configs() {
        let s = parse("src=/tmp/pw,target=db_password", true).unwrap();
        assert_eq!((s.target.as_str(), s.mode, s.uid), ("/run/secrets/db_password", 0o400, None));
        let s = parse("src=/tmp/pw,target=/etc/pw,uid=70,gid=70,mode=0440", true).unwrap();
        assert_eq!((s.target.as_str(), s.mode, s.uid, s.gid), ("/etc/pw", 0o440, Some(70), Some(70)));
        let c = parse("src=/tmp/c,target=/etc/app.conf", false).unwrap();
        assert_eq!(c.mode, 0o444);
        for bad in [
            "src=/tmp/pw,target=../x",
            "src=/tmp/pw,target=a/b",
            "src=relative,target=x",
            "src=/tmp/pw,target=x,mode=4755",
            "src=/tmp/pw,target=x,mode=999",
            "src=/tmp/pw,target=x,uid=70000",
            "src=/tmp/pw,target=x,uid=-1",
            "src=/tmp/pw,target=x,shell=1",
            "src=/tmp/pw,target=/proc/x",
            "src=/tmp/pw",
        ] {
            assert!(parse(bad, true).is_err(), "{bad}");
        }
        assert!(parse("src=/tmp/c,target=relative", false).is_err());
    }

    #[test]
    fn refuses_what_is_not_a_small_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let e = read_source(fifo.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'x'; (MAX_SIZE + 1) as usize]).unwrap();
        assert!(read_source(big.to_str().unwrap()).unwrap_err().to_string().contains("larger than"));
        assert!(read_source(d.path().to_str().unwrap()).is_err());
    }
}
