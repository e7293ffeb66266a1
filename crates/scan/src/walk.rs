//! Walk an image's unpacked layers bottom-up, as overlayfs stacks them, and catalog what each
//! layer adds, keeping for every package the layer that introduced it.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bulkhead_image::{ImageRecord, Store};

use crate::catalog::{self, Claim, Parsed};
use crate::{Bom, Distro, Ecosystem, LayerInfo, Package, Result, Warning};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The bill of materials of an image in the store.
pub fn catalog_image(store: &Store, rec: &ImageRecord, name: &str) -> Result<Bom> {
    let history = created_by(store, rec);
    let mut layers = Vec::new();
    for (i, l) in rec.layers.iter().enumerate() {
        let info = LayerInfo {
            index: i + 1,
            diff_id: l.diff_id.to_string(),
            blob: l.blob.to_string(),
            created_by: history.get(i).cloned().flatten(),
        };
        let dir = store.layer_diff(&l.chain_id);
        if !dir.is_dir() {
            return Err(crate::Error::Invalid(format!(
                "layer {} of {name} is not unpacked in the store (run `bulkhead system check`)",
                i + 1
            )));
        }
        layers.push((info, dir));
    }
    let (packages, distro, warnings) = catalog_layers(&layers)?;
    Ok(Bom {
        image: name.to_string(),
        manifest: rec.manifest.to_string(),
        config: rec.config.to_string(),
        platform: rec.platform.clone(),
        distro,
        layers: layers.into_iter().map(|(l, _)| l).collect(),
        packages,
        warnings,
    })
}

/// The `created_by` of each non-empty history entry, in layer order.
fn created_by(store: &Store, rec: &ImageRecord) -> Vec<Option<String>> {
    let Ok(config) = store.read_blob(&rec.config) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&config) else {
        return Vec::new();
    };
    let Some(history) = v.get("history").and_then(|h| h.as_array()) else {
        return Vec::new();
    };
    history
        .iter()
        .filter(|h| h.get("empty_layer").and_then(|e| e.as_bool()) != Some(true))
        .map(|h| h.get("created_by").and_then(|c| c.as_str()).map(str::to_string))
        .collect()
}

/// What one file in the stack currently says.
struct Entry {
    layer: usize,
    parsed: Parsed,
}

/// What one layer changes.
#[derive(Default)]
struct LayerChanges {
    /// Whiteouts: the path and everything under it is gone.
    removed: Vec<String>,
    /// Opaque directories and anything that is not a directory: what lay below under it is gone.
    hides_below: Vec<String>,
    /// Every entry of the layer: whatever a lower layer had at that very path is replaced (a file
    /// by a symlink, a file by a directory, one package database by another).
    replaced: Vec<String>,
    /// Files a cataloger claims.
    claimed: Vec<(String, Claim)>,
    /// Claimed files left out (a second name of an inode already claimed, the budget spent), with
    /// why.
    skipped: Vec<(String, String)>,
}

/// The most bytes of package metadata (databases, manifests, archives) read for one image, and
/// the most packages kept from one file and from one image. Real images are far below each; a
/// hostile one (an 8 MiB dpkg status of repeated stanzas, hard-linked three times, took `sbom` to
/// 3.3 GB) stops at them, and the warnings say what was left out.
pub const MAX_IMAGE_METADATA: u64 = 512 << 20;
pub const MAX_PACKAGES_PER_FILE: usize = 50_000;
pub const MAX_PACKAGES_PER_IMAGE: usize = 200_000;
/// The most owned-file paths one package database may list.
pub const MAX_OWNED_PER_FILE: usize = 2_000_000;

/// Catalog a stack of unpacked layer directories, bottom first.
pub fn catalog_layers(layers: &[(LayerInfo, PathBuf)]) -> Result<(Vec<Package>, Option<Distro>, Vec<Warning>)> {
    let mut state: BTreeMap<String, Entry> = BTreeMap::new();
    let mut budget = MAX_IMAGE_METADATA;
    let mut skipped = Vec::new();
    for (info, dir) in layers {
        let mut changes = scan_layer(dir, &mut budget)?;
        skipped.extend(changes.skipped.drain(..).map(|(path, message)| Warning {
            path: format!("/{path}"),
            layer: info.index,
            message,
        }));
        // What lower layers said at the paths this layer parses again, for attribution.
        let mut olds: std::collections::HashMap<&str, Entry> = std::collections::HashMap::new();
        for (path, _) in &changes.claimed {
            if let Some(e) = state.remove(path) {
                olds.insert(path, e);
            }
        }
        for p in &changes.removed {
            state.remove(p);
            remove_under(&mut state, p);
        }
        for p in &changes.hides_below {
            remove_under(&mut state, p);
        }
        for p in &changes.replaced {
            state.remove(p);
        }
        let parsed = parse_all(dir, &changes.claimed);
        for ((path, _), mut parsed) in changes.claimed.iter().zip(parsed) {
            if parsed.packages.len() > MAX_PACKAGES_PER_FILE {
                parsed.warnings.push(format!(
                    "{} packages in one file; only the first {MAX_PACKAGES_PER_FILE} are kept",
                    parsed.packages.len()
                ));
                parsed.packages.truncate(MAX_PACKAGES_PER_FILE);
            }
            let old = olds.remove(path.as_str());
            for p in &mut parsed.packages {
                if p.path.is_empty() {
                    p.path = format!("/{path}");
                }
                match old
                    .as_ref()
                    .and_then(|o| o.parsed.packages.iter().find(|q| q.same(p) && q.path == p.path))
                {
                    Some(q) => (p.layer, p.layer_digest) = (q.layer, q.layer_digest.clone()),
                    None => (p.layer, p.layer_digest) = (info.index, info.diff_id.clone()),
                }
            }
            state.insert(path.clone(), Entry { layer: info.index, parsed });
        }
    }
    let (mut packages, distro, mut warnings) = finish(state);
    if packages.len() > MAX_PACKAGES_PER_IMAGE {
        warnings.push(Warning {
            path: "/".into(),
            layer: 0,
            message: format!(
                "{} packages in the image; only the first {MAX_PACKAGES_PER_IMAGE} are kept",
                packages.len()
            ),
        });
        packages.truncate(MAX_PACKAGES_PER_IMAGE);
    }
    warnings.extend(skipped);
    Ok((packages, distro, warnings))
}

fn remove_under(state: &mut BTreeMap<String, Entry>, dir: &str) {
    let prefix = format!("{dir}/");
    let doomed: Vec<String> = state
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        state.remove(&k);
    }
}

fn scan_layer(dir: &Path, budget: &mut u64) -> Result<LayerChanges> {
    let mut c = LayerChanges::default();
    let mut inodes: std::collections::HashMap<(u64, u64), String> = std::collections::HashMap::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| crate::Error::Invalid(format!("{}: {e}", dir.display())))?;
        let Ok(rel) = entry.path().strip_prefix(dir) else { continue };
        let Some(rel) = rel.to_str() else { continue };
        let ft = entry.file_type();
        c.replaced.push(rel.to_string());
        if ft.is_dir() {
            if let Ok(n) = rustix::fs::lgetxattr(entry.path(), OPAQUE_XATTR, &mut [0u8; 4]) {
                if n >= 1 {
                    c.hides_below.push(rel.to_string());
                }
            }
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| crate::Error::Invalid(format!("{}: {e}", entry.path().display())))?;
        if ft.is_char_device() && meta.rdev() == 0 {
            c.removed.push(rel.to_string());
            continue;
        }
        c.hides_below.push(rel.to_string());
        if ft.is_file() {
            if let Some(claim) = catalog::claim(rel, meta.mode(), meta.size()) {
                // Each inode is read once: hard links to it name the same packages again.
                if let Some(first) = inodes.get(&(meta.dev(), meta.ino())) {
                    c.skipped
                        .push((rel.to_string(), format!("a hard link to /{first}, which is read instead")));
                    continue;
                }
                inodes.insert((meta.dev(), meta.ino()), rel.to_string());
                // Package metadata counts against the image's budget (binaries are only searched
                // for version strings, a bounded read each).
                let cost = if claim.is_metadata() { meta.size() } else { 0 };
                if cost > *budget {
                    c.skipped.push((
                        rel.to_string(),
                        format!("not read: the image's {MAX_IMAGE_METADATA}-byte budget of package metadata is spent"),
                    ));
                    continue;
                }
                *budget -= cost;
                c.claimed.push((rel.to_string(), claim));
            }
        }
    }
    Ok(c)
}

/// Parse the claimed files of one layer, on every core.
fn parse_all(dir: &Path, claimed: &[(String, Claim)]) -> Vec<Parsed> {
    let results: Vec<Mutex<Option<Parsed>>> = claimed.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
        .min(claimed.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, claim)) = claimed.get(i) else { break };
                let parsed = parse_one(&dir.join(path), &format!("/{path}"), *claim).unwrap_or_else(|e| Parsed {
                    warnings: vec![e],
                    ..Default::default()
                });
                *results[i].lock().unwrap() = Some(parsed);
            });
        }
    });
    results.into_iter().map(|m| m.into_inner().unwrap().unwrap_or_default()).collect()
}

/// A layer's file, never through a symlink, and only a regular file (a FIFO would block forever).
fn open_in_layer(file: &Path) -> std::io::Result<File> {
    bulkhead_image::tree::open_regular(file)
}

fn read_capped(f: File) -> std::result::Result<Vec<u8>, String> {
    let mut data = Vec::new();
    f.take(catalog::MAX_METADATA).read_to_end(&mut data).map_err(|e| e.to_string())?;
    Ok(data)
}

fn parse_one(file: &Path, path: &str, claim: Claim) -> std::result::Result<Parsed, String> {
    let f = open_in_layer(file).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    if claim.is_metadata() {
        if size > catalog::MAX_METADATA {
            return Err(format!(
                "{size} bytes, more than the {} a package database may have",
                catalog::MAX_METADATA
            ));
        }
        let data = read_capped(f)?;
        if claim == Claim::RpmDb {
            // What SQLite has not yet moved from its write-ahead log into the file is in the log
            // beside it (in the same layer: a later layer's copy of the file comes with its own).
            let mut wal_path = file.as_os_str().to_owned();
            wal_path.push("-wal");
            let wal = match open_in_layer(Path::new(&wal_path)) {
                Ok(w) => Some(read_capped(w)?),
                Err(_) => None,
            };
            return catalog::rpm::parse_sqlite(&data, wal.as_deref());
        }
        catalog::parse(claim, path, &data)
    } else {
        if size < 4 {
            return Ok(Parsed::default());
        }
        // SAFETY: the layer directories of the store are written once, when a layer is unpacked,
        // and never modified while an image uses them; the mapping is read-only and private.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| e.to_string())?;
        if claim == Claim::Elf && !map.starts_with(b"\x7fELF") {
            return Ok(Parsed::default());
        }
        catalog::parse(claim, path, &map)
    }
}

fn finish(state: BTreeMap<String, Entry>) -> (Vec<Package>, Option<Distro>, Vec<Warning>) {
    let distro = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|p| state.get(*p).and_then(|e| e.parsed.distro.clone()));
    let owned: HashSet<&str> = state.values().flat_map(|e| e.parsed.owned.iter().map(String::as_str)).collect();
    let installed_npm: HashSet<(&str, &str)> = state
        .values()
        .flat_map(|e| &e.parsed.packages)
        .filter(|p| p.found_by == "npm")
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    let mut packages = Vec::new();
    let mut warnings = Vec::new();
    for (path, e) in &state {
        for w in &e.parsed.warnings {
            warnings.push(Warning {
                path: format!("/{path}"),
                layer: e.layer,
                message: w.clone(),
            });
        }
        for p in &e.parsed.packages {
            // A version string in a file an OS package installed is that package's; the OS
            // package is what advisories name.
            // (dpkg's lists may name /lib/... for what merged-/usr systems hold at /usr/lib/...)
            let aliased = p.path.strip_prefix("/usr").is_some_and(|rest| owned.contains(rest));
            if p.found_by == "binary" && (owned.contains(p.path.as_str()) || aliased) {
                continue;
            }
            if p.found_by == "npm-lock" && installed_npm.contains(&(p.name.as_str(), p.version.as_str())) {
                continue;
            }
            if packages.len() == MAX_PACKAGES_PER_IMAGE {
                // Capped while collecting, not after everything was copied.
                break;
            }
            let mut p = p.clone();
            if p.ecosystem == Ecosystem::Debian && distro.as_ref().is_some_and(|d| d.id == "ubuntu") {
                p.ecosystem = Ecosystem::Ubuntu;
            }
            p.purl = crate::purl::for_package(&p, distro.as_ref());
            packages.push(p);
        }
    }
    (packages, distro, warnings)
}

/// Bumped whenever a cataloger changes what it reports, so cached bills of materials are redone.
pub const CATALOG_VERSION: u32 = 3;

/// The bill of materials of a stored image, from the cache beside the store when an earlier run of
/// this version made one (layers never change, so neither does what is in them).
pub fn catalog_image_cached(store: &Store, rec: &ImageRecord, name: &str) -> Result<Bom> {
    let dir = store.root().join("sbom");
    let path = dir.join(format!("{}.v{CATALOG_VERSION}.json", rec.manifest.hex()));
    if let Ok(data) = std::fs::read(&path) {
        if let Ok(mut bom) = serde_json::from_slice::<Bom>(&data) {
            if bom.manifest == rec.manifest.to_string() {
                bom.image = name.to_string();
                return Ok(bom);
            }
        }
    }
    let bom = catalog_image(store, rec, name)?;
    if std::fs::create_dir_all(&dir).is_ok() {
        if let Ok(data) = serde_json::to_vec(&bom) {
            // A cache: a failed write costs only the next scan's time.
            let _ = bulkhead_image::store::replace_file(&path, &data, false);
        }
    }
    Ok(bom)
}

/// Remove cached bills of materials of images the store no longer has (and leftovers of
/// interrupted writes). Returns how many files went.
pub fn prune_cache(store: &Store) -> Result<usize> {
    let dir = store.root().join("sbom");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(0) };
    let present: HashSet<String> = store.records()?.iter().map(|r| r.manifest.hex().to_string()).collect();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let keep = match name.split_once('.') {
            Some((hex, rest)) => present.contains(hex) && rest == format!("v{CATALOG_VERSION}.json"),
            None => false,
        };
        if !keep && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(dir: &Path, name: &str, version: &str) {
        let d = dir.join(format!("site/{name}-{version}.dist-info"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("METADATA"), format!("Name: {name}\nVersion: {version}\n")).unwrap();
    }

    fn info(i: usize) -> LayerInfo {
        LayerInfo {
            index: i,
            diff_id: format!("sha256:{i}"),
            blob: String::new(),
            created_by: None,
        }
    }

    fn names(layers: &[(LayerInfo, PathBuf)]) -> Vec<String> {
        let (pkgs, _, _) = catalog_layers(layers).unwrap();
        pkgs.iter().map(|p| format!("{}@{} L{}", p.name, p.version, p.layer)).collect()
    }

    #[test]
    fn layers_stack_as_overlayfs_does() {
        let t = tempfile::tempdir().unwrap();
        let l: Vec<PathBuf> = (1..=5).map(|i| t.path().join(format!("l{i}"))).collect();
        l.iter().for_each(|d| std::fs::create_dir_all(d).unwrap());
        metadata(&l[0], "a", "1");
        metadata(&l[0], "b", "1");
        metadata(&l[0], "c", "1");
        metadata(&l[0], "d", "1");
        // Layer 2 rewrites a's metadata unchanged (a chmod -R does that): a stays in layer 1.
        metadata(&l[1], "a", "1");
        // Layer 3 deletes b with a whiteout (a 0:0 character device) and turns c's metadata into a symlink.
        std::fs::create_dir_all(l[2].join("site")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            l[2].join("site/b-1.dist-info"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
        std::fs::create_dir_all(l[2].join("site/c-1.dist-info")).unwrap();
        std::os::unix::fs::symlink("/nowhere", l[2].join("site/c-1.dist-info/METADATA")).unwrap();
        // Layer 4 makes site opaque and puts only d back, at a new version, and e.
        std::fs::create_dir_all(l[3].join("site")).unwrap();
        rustix::fs::setxattr(l[3].join("site"), OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty()).unwrap();
        metadata(&l[3], "d", "2");
        metadata(&l[3], "e", "1");
        // Layer 5 replaces the directory of e by a file.
        std::fs::create_dir_all(l[4].join("site")).unwrap();
        std::fs::write(l[4].join("site/e-1.dist-info"), "not a directory").unwrap();
        let stack: Vec<(LayerInfo, PathBuf)> = l.iter().enumerate().map(|(i, d)| (info(i + 1), d.clone())).collect();
        assert_eq!(names(&stack[..2]), ["a@1 L1", "b@1 L1", "c@1 L1", "d@1 L1"]);
        assert_eq!(names(&stack[..3]), ["a@1 L1", "d@1 L1"]);
        assert_eq!(names(&stack[..4]), ["d@2 L4", "e@1 L4"]);
        assert_eq!(names(&stack), ["d@2 L4"]);
    }
}
