//! Images made from a plain root filesystem, a directory or a tarball, with a config from flags.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
            let mut f = File::open(path).at(path)?;
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
/// hard links, owners (passed through `map_id`), modes and times; sockets and device nodes are left
/// out (the runtime makes /dev). `tar::Builder::finish` is called at the end.
pub fn write_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path, map_id: &dyn Fn(u64) -> u64) -> Result<()> {
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let walker = walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name();
    for entry in walker {
        let entry = entry.map_err(|e| Error::invalid(format!("reading {}: {e}", root.display())))?;
        let rel = entry.path().strip_prefix(root).map_err(|e| Error::invalid(e.to_string()))?;
        let name = if rel.as_os_str().is_empty() {
            "./".to_string()
        } else {
            rel.to_string_lossy().into_owned()
        };
        if rel.to_str().is_none() {
            return Err(Error::invalid(format!(
                "{} is not valid UTF-8; not supported in a root filesystem import",
                entry.path().display()
            )));
        }
        let md = entry.path().symlink_metadata().at(entry.path())?;
        let ft = md.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
        h.set_uid(map_id(md.uid() as u64));
        h.set_gid(map_id(md.gid() as u64));
        if ft.is_file() || ft.is_dir() {
            let xattrs = kept_xattrs(entry.path())?;
            if !xattrs.is_empty() {
                b.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                    .at(entry.path())?;
            }
        }
        if ft.is_dir() {
            h.set_size(0);
            let dir_name = if name.ends_with('/') { name.clone() } else { format!("{name}/") };
            b.append_data(&mut h, &dir_name, io::empty()).at(entry.path())?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(entry.path()).at(entry.path())?;
            h.set_size(0);
            b.append_link(&mut h, &name, &target).at(entry.path())?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, &name, first).at(entry.path())?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), name.clone());
            }
            let f = File::open(entry.path()).at(entry.path())?;
            b.append_data(&mut h, &name, f).at(entry.path())?;
        } else {
            tracing::warn!(path = %entry.path().display(), "leaving out a device node, socket or FIFO");
        }
    }
    b.finish().at(root)
}

/// The extended attributes of `path` that a layer may carry (file capabilities and `user.*`), as PAX
/// `SCHILY.xattr.` records; the extractor keeps the same set.
fn kept_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(path, &mut names) {
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
        let len = rustix::fs::lgetxattr(path, name, &mut value).at(path)?;
        value.truncate(len);
        out.push((format!("SCHILY.xattr.{name}"), value));
    }
    Ok(out)
}
