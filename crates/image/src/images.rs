//! Operations on recorded images: finding one by what a user typed, describing it (`inspect`,
//! `history`), removing it, and collecting the content nothing refers to any more.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use serde_json::{json, Value};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::layer::LayerRecord;
use crate::reference::Reference;
use crate::store::{ImageRecord, Store};

/// After this long an unfinished download is stale: `image prune` removes it, `system check`
/// reports it.
pub const STALE_DOWNLOAD: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// An image with everything needed to show it.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub record: ImageRecord,
    /// Tags pointing at it, sorted.
    pub tags: Vec<Reference>,
    /// The config as JSON.
    pub config: Value,
    /// Unpacked layer records, bottom first.
    pub layers: Vec<LayerRecord>,
}

impl ImageInfo {
    /// Bytes of file content across all layers.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.report.bytes).sum()
    }

    /// The image id, as Docker shows it: the config digest.
    pub fn id(&self) -> &Digest {
        &self.record.config
    }

    pub fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.config
            .get("created")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&chrono::Utc))
    }

    /// One line each for what a user should know before running the image: files that can raise
    /// privilege (setuid/setgid, file capabilities) that were kept, and device nodes that were
    /// dropped; up to five names each, and how many in all (`image inspect` lists every one).
    pub fn findings(&self) -> Vec<String> {
        let collect = |f: fn(&LayerRecord) -> &Vec<String>| self.layers.iter().flat_map(f).cloned().collect::<Vec<_>>();
        let name = |v: &[String]| {
            let mut s = v.iter().take(5).map(String::as_str).collect::<Vec<_>>().join(", ");
            if v.len() > 5 {
                s.push_str(&format!(" and {} more", v.len() - 5));
            }
            s
        };
        let id = self.record.config.short();
        let mut out = Vec::new();
        let setuid = collect(|l| &l.report.setuid);
        if !setuid.is_empty() {
            out.push(format!(
                "image {id} has {} setuid/setgid file(s): {} (no_new_privs keeps them from raising privilege unless it is turned off; `image inspect` lists all)",
                setuid.len(),
                name(&setuid)
            ));
        }
        let caps = collect(|l| &l.report.capabilities);
        if !caps.is_empty() {
            out.push(format!(
                "image {id} has {} file(s) with file capabilities: {} (`image inspect` lists all)",
                caps.len(),
                name(&caps)
            ));
        }
        let devices = collect(|l| &l.report.dropped_devices);
        if !devices.is_empty() {
            out.push(format!(
                "image {id}: {} device node(s) left out: {} (containers get only the default devices; add others with --device)",
                devices.len(),
                name(&devices)
            ));
        }
        out
    }

    /// `docker image inspect` shape, plus a `Bulkhead` section with what the store found.
    pub fn inspect_json(&self) -> Value {
        let c = &self.config;
        let repo_digests: BTreeSet<String> = self
            .tags
            .iter()
            .map(|t| format!("{}@{}", t.familiar_name(), self.record.manifest))
            .collect();
        let collect = |f: fn(&LayerRecord) -> &Vec<String>| self.layers.iter().flat_map(f).cloned().collect::<Vec<_>>();
        json!({
            "Id": self.record.config.to_string(),
            "RepoTags": self.tags.iter().map(|t| format!("{}:{}", t.familiar_name(), t.tag().unwrap_or("latest"))).collect::<Vec<_>>(),
            "RepoDigests": repo_digests,
            "Created": c.get("created").cloned().unwrap_or(Value::Null),
            "Author": c.get("author").cloned().unwrap_or(Value::String(String::new())),
            "Config": c.get("config").cloned().unwrap_or(json!({})),
            "Architecture": c.get("architecture").cloned().unwrap_or(Value::Null),
            "Variant": c.get("variant").cloned().unwrap_or(Value::Null),
            "Os": c.get("os").cloned().unwrap_or(Value::Null),
            "Size": self.size(),
            "RootFS": {"Type": "layers", "Layers": self.record.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
            "Metadata": {"LastTagTime": self.record.recorded_at.to_rfc3339()},
            "Bulkhead": {
                "ManifestDigest": self.record.manifest.to_string(),
                "ManifestMediaType": self.record.manifest_media_type,
                "Platform": self.record.platform,
                "SetuidFiles": collect(|l| &l.report.setuid),
                "FileCapabilities": collect(|l| &l.report.capabilities),
                "DroppedDevices": collect(|l| &l.report.dropped_devices),
                "DroppedXattrs": collect(|l| &l.report.dropped_xattrs),
                "Layers": self.record.layers.iter().zip(&self.layers).map(|(r, l)| json!({
                    "Blob": r.blob.to_string(), "MediaType": r.media_type, "BlobSize": r.blob_size,
                    "DiffID": r.diff_id.to_string(), "ChainID": r.chain_id.to_string(),
                    "Entries": l.report.entries, "Bytes": l.report.bytes,
                })).collect::<Vec<_>>(),
            },
        })
    }

    /// `docker history` rows, newest first: created, created_by, size, comment.
    pub fn history(&self) -> Vec<(Option<String>, String, u64, String)> {
        let mut rows = Vec::new();
        let mut layer = self.layers.iter();
        if let Some(h) = self.config.get("history").and_then(Value::as_array) {
            for e in h {
                let empty = e.get("empty_layer").and_then(Value::as_bool).unwrap_or(false);
                let size = if empty { 0 } else { layer.next().map_or(0, |l| l.report.bytes) };
                let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                rows.push((
                    e.get("created").and_then(Value::as_str).map(str::to_owned),
                    s("created_by"),
                    size,
                    s("comment"),
                ));
            }
        }
        // Layers the history does not account for still take space.
        for l in layer {
            rows.push((None, String::new(), l.report.bytes, String::new()));
        }
        rows.reverse();
        rows
    }
}

impl Store {
    /// Finds an image by name[:tag], name@digest, image id (config digest) or a unique id prefix.
    pub fn resolve(&self, input: &str) -> Result<ImageRecord> {
        let hexish = input.strip_prefix("sha256:").unwrap_or(input);
        if hexish.len() >= 4 && hexish.len() <= 64 && hexish.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            let records = self.records()?;
            let mut found: Vec<&ImageRecord> = records
                .iter()
                .filter(|r| r.config.hex().starts_with(hexish) || r.manifest.hex().starts_with(hexish))
                .collect();
            found.dedup_by(|a, b| a.config == b.config);
            match found.len() {
                1 => return Ok(found[0].clone()),
                0 if input.starts_with("sha256:") => return Err(Error::NotFound(format!("no such image: {input}"))),
                0 => {}
                _ => {
                    return Err(Error::Conflict(format!(
                        "{input} matches {} images; give more of the id",
                        found.len()
                    )))
                }
            }
        }
        let r = Reference::parse(input)?;
        let manifest = match (r.digest(), r.tag()) {
            (Some(d), _) => d.clone(),
            (None, _) => self
                .refs()?
                .get(&crate::store::tag_key(&r)?)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("no such image: {input}")))?,
        };
        if let Some(rec) = self.get_image(&manifest)? {
            return Ok(rec);
        }
        // A digest that names an index the store keeps (pulled by it): this platform's image.
        let small = |d: &Digest| fs::metadata(self.blob_path(d)).is_ok_and(|m| m.len() <= self.limits().max_json_bytes);
        if r.digest().is_some() && small(&manifest) {
            let data = self.read_blob(&manifest)?;
            if let Ok(idx) = crate::spec::parse_index(&data) {
                if let Ok(d) = crate::spec::select_platform(&idx, &crate::spec::PlatformSpec::default()) {
                    if let Some(rec) = self.get_image(&Digest::try_from(d.digest())?)? {
                        return Ok(rec);
                    }
                }
            }
        }
        Err(Error::NotFound(format!("no such image: {input}")))
    }

    /// All readable image records.
    pub fn records(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.list_images()?.into_iter().filter_map(|r| r.ok()).collect())
    }

    /// Everything about one image.
    pub fn info(&self, rec: &ImageRecord) -> Result<ImageInfo> {
        let config: Value = serde_json::from_slice(&self.read_blob(&rec.config)?)
            .map_err(|e| Error::invalid(format!("stored config {}: {e}", rec.config)))?;
        let layers = rec
            .layers
            .iter()
            .map(|l| {
                self.get_layer(&l.chain_id)?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "layer {} of image {} is not unpacked (run `bulkhead system check --repair`)",
                        l.chain_id,
                        rec.config.short()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tags = self.tags_of(&rec.manifest)?;
        Ok(ImageInfo {
            record: rec.clone(),
            tags,
            config,
            layers,
        })
    }

    /// The tags that point at a manifest.
    pub fn tags_of(&self, manifest: &Digest) -> Result<Vec<Reference>> {
        Ok(self
            .refs()?
            .iter()
            .filter(|(_, d)| *d == manifest)
            .filter_map(|(k, _)| Reference::parse(k).ok())
            .collect())
    }

    /// Removes an image as `docker rmi` does: by tag, only that tag (and the image when it was the
    /// last); by id, the image and all its tags (`force` is needed when it has several).
    /// Returns the lines to print (`Untagged: ...`, `Deleted: ...`).
    pub fn remove_image(&self, input: &str, force: bool) -> Result<Vec<String>> {
        let _lock = self.lock_exclusive()?;
        let rec = self.resolve(input)?;
        self.refuse_if_mounted(&rec)?;
        let tags = self.tags_of(&rec.manifest)?;
        let users: Vec<String> = self
            .leases()?
            .into_iter()
            .filter(|(_, d)| *d == rec.manifest)
            .map(|(h, _)| h[..12.min(h.len())].to_owned())
            .collect();
        let by_tag = Reference::parse(input).ok().filter(|r| r.tag().is_some() && tags.contains(r));
        let mut out = Vec::new();
        let untag: Vec<Reference> = match &by_tag {
            Some(r) => vec![r.clone()],
            None if tags.len() > 1 && !force => {
                return Err(Error::Conflict(format!(
                    "image {} is tagged {} times; remove it by tag, or use --force",
                    rec.config.short(),
                    tags.len()
                )));
            }
            None => tags.clone(),
        };
        self.update_refs(|refs| {
            for t in &untag {
                refs.remove(&crate::store::tag_key(t)?);
            }
            Ok(())
        })?;
        for t in &untag {
            out.push(format!("Untagged: {}:{}", t.familiar_name(), t.tag().unwrap_or("latest")));
        }
        if self.tags_of(&rec.manifest)?.is_empty() {
            if !users.is_empty() {
                // Untagged but kept: containers still run from it (docker rmi without -f refuses;
                // we keep the content instead, so removing the tag never breaks a container).
                out.push(format!("Kept: {} (used by container {})", rec.config, users.join(", ")));
                return Ok(out);
            }
            self.remove_image_record(&rec.manifest)?;
            out.push(format!("Deleted: {}", rec.config));
            self.collect_garbage()?;
        }
        Ok(out)
    }

    /// `image prune`: removes untagged images, then every blob, layer and staging file that no image
    /// refers to. Returns what was removed and the bytes freed.
    pub fn prune(&self) -> Result<(Vec<String>, u64)> {
        let _lock = self.lock_exclusive()?;
        let mut tagged: BTreeSet<Digest> = self.refs()?.into_values().collect();
        // Images that containers use count as tagged: prune never breaks a container.
        tagged.extend(self.leases()?.into_values());
        let mut removed = Vec::new();
        for rec in self.records()? {
            if !tagged.contains(&rec.manifest) && !self.is_mounted(&rec)? {
                self.remove_image_record(&rec.manifest)?;
                removed.push(format!("deleted: {}", rec.config));
            }
        }
        let (more, freed) = self.collect_garbage()?;
        removed.extend(more);
        Ok((removed, freed))
    }

    /// Removes unreferenced blobs, layers and staging files. The caller holds the exclusive lock.
    fn collect_garbage(&self) -> Result<(Vec<String>, u64)> {
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = BTreeSet::new();
        for rec in self.records()? {
            keep_blobs.insert(rec.manifest.clone());
            keep_blobs.insert(rec.config.clone());
            for l in &rec.layers {
                keep_blobs.insert(l.blob.clone());
                keep_layers.insert(l.chain_id.clone());
            }
        }
        let mut removed = Vec::new();
        let mut freed = 0;
        for b in self.list_blobs()? {
            if !keep_blobs.contains(&b) {
                let p = self.blob_path(&b);
                freed += fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&p).at(&p)?;
                removed.push(format!("deleted blob: {b}"));
            }
        }
        let (layers, incomplete) = self.list_layers()?;
        for l in layers {
            if !keep_layers.contains(&l) {
                freed += self.get_layer(&l)?.map_or(0, |r| r.report.bytes);
                remove_tree(&self.layer_dir(&l))?;
                removed.push(format!("deleted layer: {l}"));
            }
        }
        for p in incomplete {
            remove_tree(&p)?;
        }
        let tmp = self.root().join("tmp");
        for e in fs::read_dir(&tmp).at(&tmp)? {
            remove_tree(&e.at(&tmp)?.path())?;
        }
        for p in self.stray_downloads()? {
            fs::remove_file(&p).at(&p)?;
            removed.push(format!("deleted {}: not a regular file", p.display()));
        }
        for (p, size, age) in self.partial_downloads()? {
            if age >= STALE_DOWNLOAD && remove_unused_partial(&p)? {
                freed += size;
                removed.push(format!("deleted partial download: {} ({size} bytes)", p.display()));
            }
        }
        Ok((removed, freed))
    }

    /// Downloads a pull left unfinished in `downloads/` (kept so the next pull resumes them):
    /// path, size and age.
    fn partial_downloads(&self) -> Result<Vec<(std::path::PathBuf, u64, std::time::Duration)>> {
        let dir = self.root().join("downloads");
        let Ok(rd) = fs::read_dir(&dir) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for e in rd {
            let e = e.at(&dir)?;
            let Ok(md) = e.path().symlink_metadata() else { continue };
            if md.is_file() {
                let age = md.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
                out.push((e.path(), md.len(), age));
            }
        }
        Ok(out)
    }

    /// What in `downloads/` is neither a file nor a directory (a FIFO or a link put there, which
    /// a pull refuses to use): removed by prune and repair.
    fn stray_downloads(&self) -> Result<Vec<std::path::PathBuf>> {
        let dir = self.root().join("downloads");
        let Ok(rd) = fs::read_dir(&dir) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for e in rd {
            let e = e.at(&dir)?;
            if e.file_type().is_ok_and(|t| !t.is_file() && !t.is_dir()) {
                out.push(e.path());
            }
        }
        Ok(out)
    }

    /// Verifies the whole store; with `repair`, fixes what it can. Returns one line per problem.
    pub fn check(&self, repair: bool) -> Result<Vec<String>> {
        let _lock = self.lock_exclusive()?;
        let mut problems = Vec::new();
        let fixed = |s: String| if repair { format!("{s} (repaired)") } else { s };

        // Partial downloads: stale ones are a problem; --repair removes every one (a pull resumes
        // a fresh one, but repair means back to a store with nothing half-done).
        for p in self.stray_downloads()? {
            problems.push(fixed(format!("{}: not a regular file", p.display())));
            if repair {
                fs::remove_file(&p).at(&p)?;
            }
        }
        for (p, size, age) in self.partial_downloads()? {
            if age >= STALE_DOWNLOAD || repair {
                // One a pull is writing now is not a problem (and not removed): it holds its lock.
                if repair {
                    if !remove_unused_partial(&p)? {
                        continue;
                    }
                } else if partial_in_use(&p) {
                    continue;
                }
                problems.push(fixed(format!(
                    "partial download {}: {size} bytes, {} h old",
                    p.display(),
                    age.as_secs() / 3600
                )));
            }
        }

        let mut bad_blobs = BTreeSet::new();
        for b in self.list_blobs()? {
            let ok = self.open_blob(&b).and_then(|f| {
                let mut h = crate::digest::HashingReader::new(std::io::BufReader::with_capacity(1 << 20, f), b.algorithm());
                h.drain().at(self.blob_path(&b))?;
                Ok(h.finish().0 == b)
            })?;
            if !ok {
                problems.push(fixed(format!("blob {b}: content does not match its digest")));
                bad_blobs.insert(b.clone());
                if repair {
                    let p = self.blob_path(&b);
                    fs::remove_file(&p).at(&p)?;
                }
            }
        }
        let (layers, incomplete) = self.list_layers()?;
        for p in incomplete {
            problems.push(fixed(format!("layer directory {}: incomplete or unknown", p.display())));
            if repair {
                remove_tree(&p)?;
            }
        }
        let mut good_layers = BTreeSet::new();
        for l in layers {
            match self.get_layer(&l) {
                Ok(Some(r)) if r.chain_id == l && self.layer_diff(&l).is_dir() => {
                    good_layers.insert(l);
                }
                _ => {
                    problems.push(fixed(format!("layer {l}: record or tree damaged")));
                    if repair {
                        remove_tree(&self.layer_dir(&l))?;
                    }
                }
            }
        }
        let mut good_images = BTreeSet::new();
        for rec in self.list_images()? {
            let rec = match rec {
                Ok(r) => r,
                Err((p, e)) => {
                    problems.push(fixed(format!("image record {}: {e}", p.display())));
                    if repair {
                        fs::remove_file(&p).at(&p)?;
                    }
                    continue;
                }
            };
            let mut missing = Vec::new();
            for d in [&rec.manifest, &rec.config].into_iter().chain(rec.layers.iter().map(|l| &l.blob)) {
                if !self.has_blob(d) || bad_blobs.contains(d) {
                    missing.push(format!("blob {d}"));
                }
            }
            if missing.is_empty() {
                // Blobs are all there: a missing layer can be unpacked again.
                for (i, l) in rec.layers.iter().enumerate() {
                    if good_layers.contains(&l.chain_id) {
                        continue;
                    }
                    problems.push(fixed(format!("image {}: layer {} is not unpacked", rec.config.short(), l.chain_id)));
                    if repair {
                        let parent = if i == 0 { None } else { Some(&rec.layers[i - 1].chain_id) };
                        self.unpack_layer(&l.blob, &l.diff_id, &l.chain_id, parent)?;
                        good_layers.insert(l.chain_id.clone());
                    }
                }
                good_images.insert(rec.manifest.clone());
            } else {
                problems.push(fixed(format!("image {}: missing {}", rec.config.short(), missing.join(", "))));
                if repair {
                    self.remove_image_record(&rec.manifest)?;
                }
            }
        }
        match self.refs() {
            Ok(refs) => {
                let dangling: BTreeMap<String, Digest> = refs.into_iter().filter(|(_, d)| !good_images.contains(d)).collect();
                for (k, d) in &dangling {
                    problems.push(fixed(format!("reference {k}: points at {d}, which is not a complete image")));
                }
                if repair && !dangling.is_empty() {
                    self.update_refs(|r| {
                        r.retain(|k, _| !dangling.contains_key(k));
                        Ok(())
                    })?;
                }
            }
            Err(e) => {
                problems.push(fixed(format!("{e}")));
                if repair {
                    let p = self.root().join("refs.json");
                    fs::rename(&p, self.root().join("refs.json.corrupt")).at(&p)?;
                }
            }
        }
        let tmp = self.root().join("tmp");
        for e in fs::read_dir(&tmp).at(&tmp)? {
            let p = e.at(&tmp)?.path();
            problems.push(fixed(format!("leftover from an interrupted command: {}", p.display())));
            if repair {
                remove_tree(&p)?;
            }
        }
        // Temporary files of atomic replacements (records, leases, the reference table) that a
        // killed command left beside their target. Writers hold the store lock shared; we hold it
        // exclusive, so none is in flight.
        for dir in [
            self.root().to_path_buf(),
            self.root().join("leases"),
            self.root().join("images/sha256"),
        ] {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd {
                let e = e.at(&dir)?;
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    problems.push(fixed(format!("leftover from an interrupted command: {}", e.path().display())));
                    if repair {
                        fs::remove_file(e.path()).at(e.path())?;
                    }
                }
            }
        }
        Ok(problems)
    }
}

/// Removes a tree of the store without following symlinks in it.
pub(crate) fn remove_tree(p: &std::path::Path) -> Result<()> {
    crate::unpack::remove_all_at(&rustix::fs::CWD, p.as_os_str()).at(p)
}

/// Opens a partial download without following a link or blocking on a FIFO.
fn open_partial(p: &std::path::Path) -> Result<Option<fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(p)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).at(p),
    }
}

/// Whether a pull holds the partial download `p` (it keeps it locked while it writes).
fn partial_in_use(p: &std::path::Path) -> bool {
    let Ok(Some(f)) = open_partial(p) else { return false };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) == Err(rustix::io::Errno::WOULDBLOCK)
}

/// Removes the partial download `p` unless a pull holds it; whether it was removed. The lock is
/// held across the unlink, so a pull that opens the file meanwhile sees it replaced and starts a
/// new one.
fn remove_unused_partial(p: &std::path::Path) -> Result<bool> {
    let Some(f) = open_partial(p)? else { return Ok(false) };
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
        Err(e) => return Err(std::io::Error::from(e)).at(p),
    }
    // Still the file locked (a pull may have finished and a new one started since the open).
    let (held, now) = (f.metadata().at(p)?, fs::symlink_metadata(p));
    {
        use std::os::unix::fs::MetadataExt;
        if !matches!(now, Ok(m) if m.dev() == held.dev() && m.ino() == held.ino()) {
            return Ok(false);
        }
    }
    match fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at(p),
    }
}
