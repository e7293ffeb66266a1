//! Import of images from outside: OCI image layouts (directories or tar archives), docker-archives
//! (`docker save`), and plain root filesystems (see `rootfs`).
//!
//! The order of writes is what makes an import crash-safe: layer blobs, then unpacked layers, then the
//! config and manifest blobs, then the image record, and the reference last. Each write is atomic and
//! verified, so a `kill -9` anywhere leaves only complete, verified pieces (or garbage under tmp/).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::layer::chain_ids;
use crate::reference::Reference;
use crate::spec::{self, Kind, PlatformSpec};
use crate::store::{ImageRecord, LayerRef, Store};
use crate::unpack::{extract, ExtractOptions};

/// Progress events for a user interface.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A blob is being copied in (`size` bytes).
    Copying { digest: Digest, size: u64 },
    /// A layer is being unpacked.
    Unpacking { digest: Digest },
    /// A layer is unpacked (or was already).
    Unpacked { digest: Digest, bytes: u64 },
}

/// What to import and how.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Name the imported image (only one image may be selected then).
    pub tag: Option<Reference>,
    /// Which platform to take from a multi-platform index.
    pub platform: PlatformSpec,
    /// In an OCI layout with several images, the `org.opencontainers.image.ref.name` to take.
    pub layout_ref: Option<String>,
}

/// One image that an import recorded, with the names it got.
#[derive(Clone, Debug)]
pub struct Imported {
    pub record: ImageRecord,
    pub tags: Vec<Reference>,
}

/// Where blobs of an image come from while importing it.
pub trait BlobSource {
    /// Opens the blob `d`; its content is verified by the caller.
    fn open(&self, d: &Digest) -> Result<Box<dyn Read + '_>>;
}

impl BlobSource for Store {
    fn open(&self, d: &Digest) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.open_blob(d)?))
    }
}

/// A directory from outside, every path in it resolved as if it were the root (symlinks cannot
/// reach outside it).
pub struct Confined {
    root: OwnedFd,
    path: PathBuf,
}

impl Confined {
    pub fn new(path: &Path) -> Result<Self> {
        let root = rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).at(path)?;
        Ok(Confined { root, path: path.into() })
    }

    /// Opens a regular file by a relative path from the outside input.
    pub fn open_file(&self, rel: &str) -> Result<File> {
        let comps = crate::unpack::sanitize(rel.as_bytes()).map_err(Error::invalid)?;
        let p: PathBuf = comps.iter().collect();
        crate::tree::open_regular_at(self.root.as_fd(), &p, ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS).map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::NotFound => Error::NotFound(format!("{rel} is missing from {}", self.path.display())),
                std::io::ErrorKind::InvalidInput => Error::invalid(format!("{rel} in {}: {e}", self.path.display())),
                _ => Error::Io {
                    path: self.path.join(&p),
                    source: e,
                },
            }
        })
    }

    /// Reads a small JSON file whole, refusing one larger than `max`.
    pub fn read_small(&self, rel: &str, max: u64) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open_file(rel)?.take(max + 1).read_to_end(&mut data).at(self.path.join(rel))?;
        if data.len() as u64 > max {
            return Err(Error::invalid(format!("{rel} is larger than {max} bytes")));
        }
        Ok(data)
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.open_file(rel).is_ok()
    }
}

impl BlobSource for Confined {
    fn open(&self, d: &Digest) -> Result<Box<dyn Read + '_>> {
        let rel = format!("blobs/{}/{}", d.algorithm().name(), d.hex());
        Ok(Box::new(self.open_file(&rel).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("blob {d} is missing from {}", self.path.display())),
            e => e,
        })?))
    }
}

/// Imports an OCI layout directory, OCI archive or docker-archive at `path`.
pub fn import_path(store: &Store, path: &Path, opts: &ImportOptions, progress: &dyn Fn(Progress)) -> Result<Vec<Imported>> {
    let md = std::fs::metadata(path).at(path)?;
    if md.is_dir() {
        let dir = Confined::new(path)?;
        return import_dir(store, &dir, opts, progress);
    }
    // An archive: unpack it (files only, confined, no owners) into staging, then read it as a directory.
    let stage = store.staging()?;
    let f = crate::tree::open_regular_following(path).at(path)?;
    let reader = crate::limits::decompress(io::BufReader::new(f), store.limits()).at(path)?;
    // The archive's content is written out whole before it is read: it gets the layer limit, holes
    // of sparse entries included.
    let unpacking = ExtractOptions {
        max_bytes: Some(store.limits().max_layer_bytes),
        ..Default::default()
    };
    extract(reader, stage.path(), &unpacking, &path.display().to_string())
        .map_err(|e| Error::invalid(format!("{} is not a readable image archive: {e}", path.display())))?;
    let dir = Confined::new(stage.path())?;
    import_dir(store, &dir, opts, progress)
}

fn import_dir(store: &Store, dir: &Confined, opts: &ImportOptions, progress: &dyn Fn(Progress)) -> Result<Vec<Imported>> {
    if dir.exists("oci-layout") {
        import_layout(store, dir, opts, progress)
    } else if dir.exists("manifest.json") {
        crate::docker_archive::import(store, dir, opts, progress)
    } else {
        Err(Error::invalid(format!(
            "{} is neither an OCI image layout (no oci-layout file) nor a docker-archive (no manifest.json); for a root filesystem use --rootfs",
            dir.path.display()
        )))
    }
}

fn import_layout(store: &Store, dir: &Confined, opts: &ImportOptions, progress: &dyn Fn(Progress)) -> Result<Vec<Imported>> {
    let max = store.limits().max_json_bytes;
    let layout: serde_json::Value =
        serde_json::from_slice(&dir.read_small("oci-layout", max)?).map_err(|e| Error::invalid(format!("malformed oci-layout: {e}")))?;
    if layout.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(Error::invalid("oci-layout: imageLayoutVersion is not 1.0.0"));
    }
    let index = spec::parse_index(&dir.read_small("index.json", max)?)?;
    let mut chosen = Vec::new();
    for d in index.manifests() {
        let ann = d.annotations().as_ref();
        let ref_name = ann.and_then(|a| a.get(spec::REF_NAME)).cloned();
        if let Some(want) = &opts.layout_ref {
            if ref_name.as_deref() != Some(want.as_str()) {
                continue;
            }
        }
        let name = ann
            .and_then(|a| a.get(spec::CONTAINERD_NAME))
            .cloned()
            .or(ref_name.clone().filter(|r| r.contains('/') || r.contains(':')));
        chosen.push((d.clone(), name));
    }
    if chosen.is_empty() {
        return Err(match &opts.layout_ref {
            Some(r) => Error::NotFound(format!("no image named {r:?} in the layout")),
            None => Error::invalid("the layout's index.json lists no image"),
        });
    }
    // Several entries of one multi-platform image without their own index: pick by platform.
    if chosen.len() > 1 && chosen.iter().all(|(d, _)| d.platform().is_some()) {
        let keep = chosen
            .iter()
            .position(|(d, _)| opts.platform.matches(d))
            .ok_or_else(|| Error::NotFound(format!("no image for platform {} in the layout", opts.platform)))?;
        chosen = vec![chosen.swap_remove(keep)];
    }
    if opts.tag.is_some() && chosen.len() > 1 {
        return Err(Error::invalid(format!(
            "the layout holds {} images: choose one with --ref to tag it",
            chosen.len()
        )));
    }
    let mut out = Vec::new();
    for (desc, name) in chosen {
        let digest = Digest::try_from(desc.digest())?;
        let media_type = desc.media_type().to_string();
        let record = import_descriptor(store, dir, &digest, &media_type, desc.size(), opts, progress)?;
        let tags = match (&opts.tag, name) {
            (Some(t), _) => vec![t.clone()],
            (None, Some(n)) => vec![Reference::parse(&n).map_err(|e| Error::invalid(format!("layout names an image {n:?}: {e}")))?],
            (None, None) => vec![],
        };
        finish(store, record, tags, &mut out)?;
    }
    Ok(out)
}

/// Records `tags` for an imported image, last of all.
pub(crate) fn finish(store: &Store, record: ImageRecord, tags: Vec<Reference>, out: &mut Vec<Imported>) -> Result<()> {
    let mut named = Vec::new();
    for t in tags {
        let t = if t.tag().is_none() {
            t.with_tag(crate::reference::DEFAULT_TAG)?
        } else {
            t
        };
        store.tag(&t, &record.manifest)?;
        named.push(t);
    }
    out.push(Imported { record, tags: named });
    Ok(())
}

/// Imports the manifest or index `digest` from `src`, choosing a platform from an index.
pub fn import_descriptor(
    store: &Store,
    src: &dyn BlobSource,
    digest: &Digest,
    media_type: &str,
    size: u64,
    opts: &ImportOptions,
    progress: &dyn Fn(Progress),
) -> Result<ImageRecord> {
    let max = store.limits().max_json_bytes;
    if size > max {
        return Err(Error::invalid(format!(
            "manifest {digest} is {size} bytes, over the {max}-byte limit"
        )));
    }
    let data = read_verified(src, digest, size)?;
    match spec::kind_of(media_type) {
        Some(Kind::Index) => {
            let idx = spec::parse_index(&data)?;
            let d = spec::select_platform(&idx, &opts.platform)?;
            let child = Digest::try_from(d.digest())?;
            // The index itself is not kept: the store records single-platform images.
            import_descriptor(store, src, &child, d.media_type().as_ref(), d.size(), opts, progress)
        }
        Some(Kind::Manifest) => import_manifest(store, src, digest, &data, media_type, progress),
        None => Err(Error::invalid(format!(
            "{digest} has media type {media_type}, not an image manifest or index"
        ))),
    }
}

/// Reads a small blob whole from `src` and checks its digest and size.
fn read_verified(src: &dyn BlobSource, digest: &Digest, size: u64) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    src.open(digest)?
        .take(size + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::invalid(format!("reading {digest}: {e}")))?;
    if data.len() as u64 != size {
        return Err(Error::Mismatch {
            what: format!("size of blob {digest}"),
            expected: size.to_string(),
            actual: data.len().to_string(),
        });
    }
    digest.verify(&data, "blob digest")?;
    Ok(data)
}

fn import_manifest(
    store: &Store,
    src: &dyn BlobSource,
    digest: &Digest,
    data: &[u8],
    media_type: &str,
    progress: &dyn Fn(Progress),
) -> Result<ImageRecord> {
    let m = spec::parse_manifest(data, Some(media_type))?;
    let max = store.limits().max_json_bytes;
    if m.config.size() > max {
        return Err(Error::invalid(format!(
            "config {} is {} bytes, over the {max}-byte limit",
            m.config_digest,
            m.config.size()
        )));
    }
    let cfg_data = read_verified(src, &m.config_digest, m.config.size())?;
    let cfg = spec::parse_config(&cfg_data, m.layers.len())?;
    let chains = chain_ids(&cfg.diff_ids);
    // Layers this import unpacked itself: if the import is refused, they go again (bad input
    // changes nothing), unless an image has come to use them meanwhile.
    let mut fresh = Vec::new();
    let result = (|| {
        let mut layers = Vec::new();
        for (i, (desc, blob)) in m.layers.iter().enumerate() {
            progress(Progress::Copying {
                digest: blob.clone(),
                size: desc.size(),
            });
            if !store.has_blob(blob) {
                store.put_blob(src.open(blob)?, blob, Some(desc.size()))?;
            } else {
                store.put_blob(io::empty(), blob, Some(desc.size()))?;
            }
            progress(Progress::Unpacking { digest: blob.clone() });
            let parent = if i == 0 { None } else { Some(&chains[i - 1]) };
            let existed = store.get_layer(&chains[i])?.is_some();
            let rec = store.unpack_layer(blob, &cfg.diff_ids[i], &chains[i], parent)?;
            if !existed {
                fresh.push(chains[i].clone());
            }
            progress(Progress::Unpacked {
                digest: blob.clone(),
                bytes: rec.report.bytes,
            });
            layers.push(LayerRef {
                blob: blob.clone(),
                blob_size: desc.size(),
                media_type: desc.media_type().to_string(),
                diff_id: cfg.diff_ids[i].clone(),
                chain_id: chains[i].clone(),
            });
        }
        store.put_blob(&cfg_data[..], &m.config_digest, Some(m.config.size()))?;
        store.put_blob(data, digest, Some(data.len() as u64))?;
        let record = match store.get_image(digest)? {
            Some(existing) => existing,
            None => {
                let rec = ImageRecord {
                    manifest: digest.clone(),
                    manifest_media_type: m.media_type.clone(),
                    config: m.config_digest.clone(),
                    layers,
                    platform: cfg.platform.clone(),
                    recorded_at: chrono::Utc::now(),
                };
                store.put_image(&rec)?;
                rec
            }
        };
        // A refused import elsewhere may have taken away a layer this one found unpacked, before
        // this record said it is used: put it back.
        for (i, l) in record.layers.iter().enumerate() {
            if store.get_layer(&l.chain_id)?.is_none() {
                let parent = if i == 0 { None } else { Some(&record.layers[i - 1].chain_id) };
                store.unpack_layer(&l.blob, &l.diff_id, &l.chain_id, parent)?;
            }
        }
        Ok(record)
    })();
    if result.is_err() {
        store.discard_unused_layers(&fresh);
    }
    result
}
