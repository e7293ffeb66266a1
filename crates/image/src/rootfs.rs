//! Images made from a plain root filesystem, a directory or a tarball, with a config from flags.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::FileType;

use crate::digest::{Algorithm, HashingReader, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::import::{finish, import_descriptor, ImportOptions, Imported, Progress};
use crate::reference::Reference;
use crate::spec::{self, PlatformSpec};
use crate::store::Store;

/// The config of an image made from a root filesystem.
#[derive(Clone, Debug, Default)]
pub struct RootfsConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub platform: PlatformSpec,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Imports the directory or tarball at `path` as a one-layer image.
pub fn import_rootfs(
    store: &Store,
    path: &Path,
    cfg: &RootfsConfig,
    tag: Option<Reference>,
    progress: &dyn Fn(Progress),
) -> Result<Imported> {
    let md = std::fs::metadata(path).at(path)?;
    let (blob, size, diff_id, media_type) = if md.is_dir() {
        let mut diff = None;
        let (blob, size) = store.write_blob_with(|w| {
            let gz = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
            let hashing = HashingWriter::new(gz, Algorithm::Sha256);
            let mut builder = tar::Builder::new(hashing);
            write_tree(&mut builder, path, &|id| id)?;
            let hashing = builder.into_inner().at(path)?;
            let (gz, d, _) = hashing.finish();
            gz.finish().at(path)?;
            diff = Some(d);
            Ok(())
        })?;
        (
            blob,
            size,
            diff.ok_or_else(|| Error::invalid("no layer written"))?,
            spec::OCI_LAYER_GZIP,
        )
    } else {
        let (blob, size) = store.write_blob_with(|w| {
            let mut f = crate::tree::open_regular_following(path).at(path)?;
            io::copy(&mut f, w).map(|_| ()).at(path)
        })?;
        let media_type = store.sniff_compression(&blob)?.oci_media_type();
        let reader = crate::limits::decompress(io::BufReader::new(store.open_blob(&blob)?), store.limits()).at(path)?;
        let mut h = HashingReader::new(reader, Algorithm::Sha256);
        h.drain()
            .map_err(|e| Error::invalid(format!("{}: not a readable tarball: {e}", path.display())))?;
        (blob, size, h.finish().0, media_type)
    };

    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut env = cfg.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.into());
    }
    let mut config = serde_json::json!({"Env": env});
    if let Some(e) = &cfg.entrypoint {
        config["Entrypoint"] = serde_json::json!(e);
    }
    if let Some(c) = &cfg.cmd {
        config["Cmd"] = serde_json::json!(c);
    }
    if let Some(u) = &cfg.user {
        config["User"] = serde_json::json!(u);
    }
    if let Some(w) = &cfg.workdir {
        config["WorkingDir"] = serde_json::json!(w);
    }
    let mut image_config = serde_json::json!({
        "created": now,
        "architecture": cfg.platform.arch,
        "os": cfg.platform.os,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "history": [{"created": now, "created_by": format!("bulkhead image import --rootfs {}", path.display())}],
    });
    if let Some(v) = &cfg.platform.variant {
        image_config["variant"] = serde_json::json!(v);
    }
    let cfg_data = serde_json::to_vec(&image_config).map_err(|e| Error::invalid(e.to_string()))?;
    let cfg_digest = store.write_blob(&cfg_data)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": spec::OCI_MANIFEST,
        "config": {"mediaType": spec::OCI_CONFIG, "digest": cfg_digest.to_string(), "size": cfg_data.len()},
        "layers": [{"mediaType": media_type, "digest": blob.to_string(), "size": size}],
    });
    let mdata = serde_json::to_vec(&manifest).map_err(|e| Error::invalid(e.to_string()))?;
    let mdigest = store.write_blob(&mdata)?;
    let opts = ImportOptions {
        platform: cfg.platform.clone(),
        ..Default::default()
    };
    let record = import_descriptor(store, store, &mdigest, spec::OCI_MANIFEST, mdata.len() as u64, &opts, progress)?;
    let mut out = Vec::new();
    finish(store, record, tag.into_iter().collect(), &mut out)?;
    out.pop().ok_or_else(|| Error::invalid("nothing imported"))
}

/// Writes the tree under `root` as a tar stream, in name order, never following symlinks, keeping
/// hard links, owners (passed through `map_id`), modes and times; sockets, FIFOs and device nodes
/// are left out (the runtime makes /dev). `tar::Builder::finish` is called at the end.
///
/// The tree may be changing while it is read (a running container's root filesystem): the walk is
/// [`crate::tree::walk`]'s, which follows no symlink and crosses no mount, every file's content is
/// the inode whose metadata went into its header, exactly as many bytes as the header says, and an
/// entry that changes under the walk is left out.
pub fn write_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path, map_id: &dyn Fn(u64) -> u64) -> Result<()> {
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut skipped = Vec::new();
    crate::tree::walk(root, |entry| {
        let rel = &entry.rel;
        let Some(rel_str) = rel.to_str() else {
            return Err(Error::invalid(format!(
                "{} is not valid UTF-8; not supported in a root filesystem export or import",
                root.join(rel).display()
            )));
        };
        let name = if rel_str.is_empty() { "./".to_string() } else { rel_str.to_owned() };
        let st = &entry.stat;
        let mut h = tar::Header::new_gnu();
        h.set_mode(st.st_mode & 0o7777);
        h.set_uid(map_id(u64::from(st.st_uid)));
        h.set_gid(map_id(u64::from(st.st_gid)));
        h.set_mtime(st.st_mtime.max(0) as u64);
        let at = root.join(rel);
        match entry.file_type() {
            FileType::Directory => {
                append_xattrs(b, entry.fd(), &at)?;
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                let dir_name = if name.ends_with('/') { name } else { format!("{name}/") };
                b.append_data(&mut h, &dir_name, io::empty()).at(&at)?;
            }
            FileType::Symlink => {
                let target = entry.read_link()?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &name, &target).at(&at)?;
            }
            FileType::RegularFile => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = links.get(&key) {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        b.append_link(&mut h, &name, first).at(&at)?;
                        return Ok(());
                    }
                }
                let Some(f) = entry.open()? else {
                    skipped.push(name);
                    return Ok(());
                };
                if st.st_nlink > 1 {
                    links.insert(key, name.clone());
                }
                append_xattrs(b, f.as_fd(), &at)?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(st.st_size as u64);
                b.append_data(&mut h, &name, crate::tree::ExactSize::new(f, st.st_size as u64))
                    .at(&at)?;
            }
            other => tracing::debug!(path = %at.display(), "leaving out {}", crate::tree::describe(other)),
        }
        Ok(())
    })?;
    if !skipped.is_empty() {
        tracing::debug!(count = skipped.len(), first = %skipped[0], "files changed while they were read; left out");
    }
    b.finish().at(root)
}

fn append_xattrs<W: Write>(b: &mut tar::Builder<W>, fd: BorrowedFd<'_>, at: &Path) -> Result<()> {
    let xattrs = kept_xattrs(fd, at)?;
    if !xattrs.is_empty() {
        b.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .at(at)?;
    }
    Ok(())
}

/// The extended attributes of `path` that a layer may carry (file capabilities and `user.*`), as PAX
/// `SCHILY.xattr.` records; the extractor keeps the same set.
fn kept_xattrs(fd: BorrowedFd<'_>, path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::flistxattr(fd, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Io {
                path: path.into(),
                source: e.into(),
            })
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else { continue };
        if name != "security.capability" && !name.starts_with("user.") {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::fgetxattr(fd, name, &mut value).at(path)?;
        value.truncate(len);
        out.push((format!("SCHILY.xattr.{name}"), value));
    }
    Ok(out)
}
