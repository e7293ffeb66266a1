//! Mounts a user asks for: `-v HOST:CTR[:ro]`, `--mount type=bind|tmpfs,...`, `--tmpfs CTR[:opts]`.
//!
//! Bind mounts are always nosuid and nodev. A target must be absolute, without `..`, not `/` and
//! not under /proc or /sys (procfs and sysfs are the kernel's interfaces, not places for data).
//! Before the container starts, each target is looked up in its root filesystem, with symlinks
//! resolved inside it; a target whose last component is a symlink is refused: that is how an
//! image redirects a mount (CVE-2021-30465 class). The executor resolves the target inside the
//! root again when it mounts.

use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// One mount a user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserMount {
    /// `idmap`: the host directory's owner appears as the container's root (see
    /// [`crate::idmap::attach_idmapped_volume`]); attached by bulkhead, not by the runtime.
    Bind {
        source: String,
        target: String,
        readonly: bool,
        idmap: bool,
    },
    Tmpfs {
        target: String,
        options: Vec<String>,
    },
    /// A named volume (see [`crate::volumes`]); attached by bulkhead, not by the runtime.
    Volume {
        name: String,
        target: String,
        readonly: bool,
    },
}

impl UserMount {
    pub fn target(&self) -> &str {
        match self {
            UserMount::Bind { target, .. } | UserMount::Tmpfs { target, .. } | UserMount::Volume { target, .. } => target,
        }
    }

    /// The mount in the OCI runtime spec's shape.
    pub fn to_spec(&self) -> Value {
        match self {
            UserMount::Bind {
                source, target, readonly, ..
            } => {
                let mut opts = vec!["rbind", "nosuid", "nodev"];
                if *readonly {
                    opts.push("ro");
                }
                json!({"destination": target, "type": "bind", "source": source, "options": opts})
            }
            UserMount::Tmpfs { target, options } => {
                let mut opts: Vec<String> = vec!["nosuid".into(), "nodev".into()];
                opts.extend(options.iter().cloned());
                json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts})
            }
            // Never handed to the runtime: bulkhead attaches it (idmapped) before the start.
            UserMount::Volume { name, target, readonly } => {
                json!({"destination": target, "type": "volume", "source": name, "options": if *readonly { vec!["ro"] } else { vec![] }})
            }
        }
    }
}

pub(crate) fn check_target(t: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Invalid(format!("mount target {t:?}: {why}")));
    if !t.starts_with('/') {
        return bad("not an absolute path");
    }
    let parts: Vec<&str> = t.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.contains(&"..") {
        return bad("contains '..'");
    }
    match parts.first() {
        None => bad("the root directory cannot be a mount target"),
        Some(&"proc") | Some(&"sys") => bad("mounts under /proc and /sys are refused"),
        _ => Ok(()),
    }
}

/// `-v HOST:CTR[:OPTIONS]`, options `ro`, `rw`, `idmap`, comma-separated; `-v NAME:CTR[:ro|rw]`
/// (a source that is not a path) is a named volume.
pub fn parse_volume(v: &str) -> Result<UserMount> {
    let parts: Vec<&str> = v.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [s, t] => (*s, *t, ""),
        [s, t, m] => (*s, *t, *m),
        _ => return Err(Error::Invalid(format!("-v {v:?}: expected HOST:CONTAINER[:ro|rw][,idmap]"))),
    };
    let (mut readonly, mut idmap) = (false, false);
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "rw" => readonly = false,
            "ro" => readonly = true,
            "idmap" => idmap = true,
            m => return Err(Error::Invalid(format!("-v {v:?}: unknown option {m:?} (ro, rw, idmap)"))),
        }
    }
    if !source.starts_with('/') && !source.starts_with('.') {
        if idmap {
            return Err(Error::Invalid(format!(
                "-v {v:?}: a named volume is always idmapped into the container's range; idmap is for host directories"
            )));
        }
        return volume(source, target, readonly);
    }
    bind(source, target, readonly, idmap)
}

fn volume(name: &str, target: &str, readonly: bool) -> Result<UserMount> {
    if !crate::volumes::valid_name(name) {
        return Err(Error::Invalid(format!(
            "volume name {name:?}: letters, digits, '_', '.', '-', starting with a letter or digit (a host path must be absolute)"
        )));
    }
    check_target(target)?;
    Ok(UserMount::Volume {
        name: name.into(),
        target: target.into(),
        readonly,
    })
}

fn bind(source: &str, target: &str, readonly: bool, idmap: bool) -> Result<UserMount> {
    if !source.starts_with('/') {
        return Err(Error::Invalid(format!("bind source {source:?}: must be an absolute host path")));
    }
    if std::fs::symlink_metadata(source).is_err() {
        return Err(Error::Invalid(format!(
            "bind source {source:?} does not exist (bulkhead does not create host directories)"
        )));
    }
    check_target(target)?;
    Ok(UserMount::Bind {
        source: source.into(),
        target: target.into(),
        readonly,
        idmap,
    })
}

/// `--mount type=bind,source=S,target=T[,readonly]` or `type=tmpfs,target=T[,tmpfs-size=N][,tmpfs-mode=M]`.
pub fn parse_mount(m: &str) -> Result<UserMount> {
    let mut kind = None;
    let (mut source, mut target, mut readonly, mut idmap, mut options) = (None, None, false, false, Vec::new());
    for kv in m.split(',') {
        let (k, v) = kv.split_once('=').map_or((kv, None), |(k, v)| (k, Some(v)));
        match (k, v) {
            ("type", Some(t)) => kind = Some(t.to_owned()),
            ("source" | "src", Some(s)) => source = Some(s.to_owned()),
            ("target" | "destination" | "dst", Some(t)) => target = Some(t.to_owned()),
            ("readonly" | "ro", None | Some("true") | Some("1")) => readonly = true,
            ("readonly" | "ro", Some("false") | Some("0")) => readonly = false,
            ("idmap", None | Some("true") | Some("1")) => idmap = true,
            ("tmpfs-size", Some(s)) => options.push(format!("size={s}")),
            ("tmpfs-mode", Some(s)) => options.push(format!("mode={s}")),
            _ => return Err(Error::Invalid(format!("--mount {m:?}: unknown option {kv:?}"))),
        }
    }
    let target = target.ok_or_else(|| Error::Invalid(format!("--mount {m:?}: target is required")))?;
    match kind.as_deref() {
        Some("bind") => bind(
            &source.ok_or_else(|| Error::Invalid(format!("--mount {m:?}: source is required")))?,
            &target,
            readonly,
            idmap,
        ),
        Some("volume") => {
            if idmap {
                return Err(Error::Invalid(format!("--mount {m:?}: idmap applies to bind mounts")));
            }
            volume(
                &source.ok_or_else(|| Error::Invalid(format!("--mount {m:?}: source (the volume's name) is required")))?,
                &target,
                readonly,
            )
        }
        Some("tmpfs") => {
            check_target(&target)?;
            if idmap {
                return Err(Error::Invalid(format!("--mount {m:?}: idmap applies to bind mounts")));
            }
            if readonly {
                options.push("ro".into());
            }
            Ok(UserMount::Tmpfs { target, options })
        }
        _ => Err(Error::Invalid(format!("--mount {m:?}: type must be bind, volume or tmpfs"))),
    }
}

/// `--tmpfs CTR[:opt,opt]`.
pub fn parse_tmpfs(t: &str) -> Result<UserMount> {
    let (target, opts) = t.split_once(':').map_or((t, ""), |(a, b)| (a, b));
    check_target(target)?;
    let options = opts.split(',').filter(|o| !o.is_empty()).map(str::to_owned).collect::<Vec<_>>();
    for o in &options {
        let key = o.split('=').next().unwrap_or("");
        if !matches!(key, "size" | "mode" | "ro" | "rw" | "noexec" | "exec" | "nr_inodes") {
            return Err(Error::Invalid(format!("--tmpfs {t:?}: option {o:?} is not allowed")));
        }
    }
    Ok(UserMount::Tmpfs {
        target: target.into(),
        options,
    })
}

/// Refuses targets that the image turned into symlinks (looked up inside `rootfs`).
pub fn check_targets_in(rootfs: &Path, mounts: &[UserMount]) -> Result<()> {
    let root = rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::Invalid(format!("{}: {}", rootfs.display(), std::io::Error::from(e))))?;
    for m in mounts {
        let t = m.target().trim_start_matches('/');
        match rustix::fs::openat2(
            &root,
            t,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).map_err(|e| Error::Invalid(format!("{}: {}", m.target(), std::io::Error::from(e))))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                    return Err(Error::Invalid(format!(
                        "mount target {} is a symlink in the image; refused (a mount must not be redirected by the image)",
                        m.target()
                    )));
                }
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(Error::Invalid(format!("mount target {}: {}", m.target(), std::io::Error::from(e)))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_docker_and_refuses_bad_targets() {
        assert_eq!(
            parse_volume("/tmp:/data:ro").unwrap(),
            UserMount::Bind {
                source: "/tmp".into(),
                target: "/data".into(),
                readonly: true,
                idmap: false
            }
        );
        assert!(matches!(
            parse_volume("/tmp:/data:ro,idmap").unwrap(),
            UserMount::Bind {
                readonly: true,
                idmap: true,
                ..
            }
        ));
        assert!(matches!(
            parse_mount("type=bind,src=/tmp,dst=/d,idmap").unwrap(),
            UserMount::Bind { idmap: true, .. }
        ));
        assert!(parse_mount("type=tmpfs,dst=/d,idmap").is_err());
        assert!(parse_volume("/tmp:/data:zz").is_err());
        assert!(parse_volume("./relative:/data").is_err());
        assert_eq!(
            parse_volume("data:/data:ro").unwrap(),
            UserMount::Volume {
                name: "data".into(),
                target: "/data".into(),
                readonly: true
            }
        );
        for bad in ["data:/data:idmap", "-x:/data", "a/b:/data", "data:/proc/x", "data:rel"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_mount("type=volume,source=v,target=/x,readonly").unwrap(),
            UserMount::Volume { readonly: true, .. }
        ));
        assert!(parse_volume("/does/not/exist/x:/data").is_err());
        for t in ["/", "data", "/a/../b", "/proc/x", "/sys"] {
            assert!(parse_volume(&format!("/tmp:{t}")).is_err(), "{t}");
        }
        assert!(matches!(
            parse_mount("type=tmpfs,target=/cache,tmpfs-size=1m").unwrap(),
            UserMount::Tmpfs { .. }
        ));
        assert!(parse_mount("type=volume,target=/x").is_err());
        assert!(parse_mount("type=volume,source=v,target=/x,idmap").is_err());
        assert!(parse_tmpfs("/run/x:size=1m,mode=700").is_ok());
        assert!(parse_tmpfs("/run/x:suid").is_err());
        let spec = parse_volume("/tmp:/data").unwrap().to_spec();
        assert!(spec["options"].as_array().unwrap().contains(&json!("nosuid")));
    }
}
