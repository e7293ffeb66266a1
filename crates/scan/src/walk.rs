//! Walk an image's unpacked layers bottom-up, as overlayfs stacks them, and catalog what each
//! layer adds, keeping for every package the layer that introduced it.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    claim: Claim,
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
    /// Files a cataloger claims, with their sizes.
    claimed: Vec<(String, Claim, u64)>,
    /// Claimed files left out (a second name of an inode already claimed), with why.
    skipped: Vec<(String, String)>,
}

/// What one layer does to the stack, without its full listing: the claimed files, and the claimed
/// files of lower layers it removes, hides or replaces.
struct LayerPlan {
    claimed: Vec<(String, Claim, u64)>,
    /// Whether each claimed file is read (the image's budget, spent from the top layer down).
    admitted: Vec<bool>,
    drops: Vec<String>,
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
/// The most owned-file paths all of dpkg's `.list` and `md5sums` files of an image may list
/// together (a full Debian desktop has about 300,000).
pub const MAX_OWNED_PER_IMAGE: usize = 4_000_000;
/// The most bytes inflated from all the Java archives of one image (each archive has its own
/// budget of 512 MiB besides).
pub const MAX_IMAGE_ARCHIVE_BYTES: u64 = 4 << 30;

/// What all the files of one image may still cost, shared by the threads that parse them.
pub struct Budget {
    archive_bytes: AtomicU64,
    owned: AtomicUsize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            archive_bytes: AtomicU64::new(MAX_IMAGE_ARCHIVE_BYTES),
            owned: AtomicUsize::new(MAX_OWNED_PER_IMAGE),
        }
    }
}

/// An atomic amount that can be reserved from and given back to.
trait Pool<T> {
    fn take(&self, want: T) -> T;
    fn give(&self, back: T);
}

impl Pool<u64> for AtomicU64 {
    fn take(&self, want: u64) -> u64 {
        let prev = self
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v - v.min(want)))
            .unwrap_or(0);
        prev.min(want)
    }
    fn give(&self, back: u64) {
        self.fetch_add(back, Ordering::Relaxed);
    }
}

impl Pool<usize> for AtomicUsize {
    fn take(&self, want: usize) -> usize {
        let prev = self
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v - v.min(want)))
            .unwrap_or(0);
        prev.min(want)
    }
    fn give(&self, back: usize) {
        self.fetch_add(back, Ordering::Relaxed);
    }
}

/// Catalog a stack of unpacked layer directories, bottom first.
///
/// Two passes. The first walks every layer and works out which claimed files the merged view
/// (what a container sees) still shows; the image's metadata budget is then spent on those first,
/// from the top layer down, and only then on the lower copies that serve to say which layer
/// brought a package in. A base layer full of metadata can therefore not crowd out what the
/// layers above it install, and whatever is left out is reported as incomplete, which the scan
/// gate refuses. The second pass parses what was admitted, bottom first, as overlayfs stacks.
pub fn catalog_layers(layers: &[(LayerInfo, PathBuf)]) -> Result<(Vec<Package>, Option<Distro>, Vec<Warning>)> {
    let mut skipped = Vec::new();
    let mut visible: BTreeMap<String, usize> = BTreeMap::new();
    let mut plans = Vec::with_capacity(layers.len());
    for (i, (info, dir)) in layers.iter().enumerate() {
        let changes = scan_layer(dir)?;
        skipped.extend(changes.skipped.into_iter().map(|(path, message)| Warning {
            path: format!("/{path}"),
            layer: info.index,
            message,
            incomplete: false,
        }));
        let mut drops = Vec::new();
        for p in &changes.removed {
            if visible.remove(p).is_some() {
                drops.push(p.clone());
            }
            remove_under(&mut visible, p, &mut drops);
        }
        for p in &changes.hides_below {
            remove_under(&mut visible, p, &mut drops);
        }
        for p in &changes.replaced {
            if visible.remove(p).is_some() {
                drops.push(p.clone());
            }
        }
        for (path, _, _) in &changes.claimed {
            visible.insert(path.clone(), i);
        }
        plans.push(LayerPlan {
            admitted: vec![false; changes.claimed.len()],
            claimed: changes.claimed,
            drops,
        });
    }
    // The budget: what the merged view shows first, top layer first; then the copies below.
    let mut order: Vec<(bool, usize, usize)> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        for (j, (path, _, _)) in plan.claimed.iter().enumerate() {
            order.push((visible.get(path) != Some(&i), i, j));
        }
    }
    order.sort_by_key(|&(hidden, i, j)| (hidden, std::cmp::Reverse(i), j));
    let mut budget = MAX_IMAGE_METADATA;
    for (hidden, i, j) in order {
        let (path, claim, size) = &plans[i].claimed[j];
        let cost = if claim.is_metadata() { *size } else { 0 };
        if cost <= budget {
            budget -= cost;
            plans[i].admitted[j] = true;
            continue;
        }
        skipped.push(Warning {
            path: format!("/{path}"),
            layer: layers[i].0.index,
            message: if hidden {
                format!("not read: the image's {MAX_IMAGE_METADATA}-byte budget of package metadata is spent (a later layer replaces this file; the layer a package came from may be named wrongly)")
            } else {
                format!("not read: the image's {MAX_IMAGE_METADATA}-byte budget of package metadata is spent")
            },
            incomplete: !hidden,
        });
    }
    drop(visible);
    let shared = Budget::default();
    let mut state: BTreeMap<String, Entry> = BTreeMap::new();
    for ((info, dir), plan) in layers.iter().zip(plans) {
        let admitted: Vec<(String, Claim)> = plan
            .claimed
            .iter()
            .zip(&plan.admitted)
            .filter(|(_, a)| **a)
            .map(|((p, c, _), _)| (p.clone(), *c))
            .collect();
        // What lower layers said at the paths this layer parses again, for attribution.
        let mut olds: std::collections::HashMap<&str, Entry> = std::collections::HashMap::new();
        for (path, _) in &admitted {
            if let Some(e) = state.remove(path) {
                olds.insert(path, e);
            }
        }
        for p in &plan.drops {
            state.remove(p);
        }
        let parsed = parse_all(dir, &admitted, &shared);
        for ((path, claim), mut parsed) in admitted.iter().zip(parsed) {
            if parsed.packages.len() > MAX_PACKAGES_PER_FILE {
                parsed.incomplete.push(format!(
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
            state.insert(
                path.clone(),
                Entry {
                    layer: info.index,
                    claim: *claim,
                    parsed,
                },
            );
        }
    }
    let (mut packages, distro, mut warnings, dropped) = finish(state);
    if dropped > 0 {
        warnings.push(Warning {
            path: "/".into(),
            layer: 0,
            message: format!(
                "{} packages in the image; only the first {MAX_PACKAGES_PER_IMAGE} are kept (OS packages first)",
                MAX_PACKAGES_PER_IMAGE + dropped
            ),
            incomplete: true,
        });
    }
    packages.shrink_to_fit();
    warnings.extend(skipped);
    Ok((packages, distro, warnings))
}

/// Removes every key under directory `dir` from `state`, noting each in `out`.
fn remove_under<V>(state: &mut BTreeMap<String, V>, dir: &str, out: &mut Vec<String>) {
    let prefix = format!("{dir}/");
    let doomed: Vec<String> = state
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        state.remove(&k);
        out.push(k);
    }
}

fn scan_layer(dir: &Path) -> Result<LayerChanges> {
    let mut c = LayerChanges::default();
    let mut inodes: std::collections::HashMap<(u64, u64, Claim), String> = std::collections::HashMap::new();
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
                // Each inode is read once per kind of claim: hard links to it name the same packages
                // again. (Keyed by the claim too: a decoy link walked first, claimed as something
                // else, must not make the real database be skipped.)
                if let Some(first) = inodes.get(&(meta.dev(), meta.ino(), claim)) {
                    c.skipped
                        .push((rel.to_string(), format!("a hard link to /{first}, which is read instead")));
                    continue;
                }
                inodes.insert((meta.dev(), meta.ino(), claim), rel.to_string());
                c.claimed.push((rel.to_string(), claim, meta.size()));
            }
        }
    }
    Ok(c)
}

/// Parse the claimed files of one layer, on every core.
fn parse_all(dir: &Path, claimed: &[(String, Claim)], budget: &Budget) -> Vec<Parsed> {
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
                let parsed = parse_one(&dir.join(path), &format!("/{path}"), *claim, budget).unwrap_or_else(|e| {
                    // A package database or metadata file that could not be read hides packages:
                    // the scan is incomplete. A binary that could not be read is only a warning
                    // (what binaries reveal is a bonus, not an inventory).
                    if declares_packages(*claim) {
                        Parsed {
                            incomplete: vec![e],
                            ..Default::default()
                        }
                    } else {
                        Parsed {
                            warnings: vec![e],
                            ..Default::default()
                        }
                    }
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

fn parse_one(file: &Path, path: &str, claim: Claim, budget: &Budget) -> std::result::Result<Parsed, String> {
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
        if matches!(claim, Claim::DpkgFiles | Claim::DpkgMd5sums) {
            // Owned paths count against the image's total of them.
            let grant = budget.owned.take(MAX_OWNED_PER_FILE);
            let (owned, more) = if claim == Claim::DpkgFiles {
                catalog::dpkg::parse_list(&data, grant)
            } else {
                catalog::dpkg::parse_md5sums(&data, grant)
            };
            budget.owned.give(grant - owned.len());
            let mut out = Parsed {
                owned,
                ..Default::default()
            };
            if more {
                // Only the owned-file check of binaries is weaker for it (a version string in a
                // file a package owns may be reported twice): not an incomplete scan.
                out.warnings.push(format!(
                    "more owned files than the {grant} still allowed ({MAX_OWNED_PER_FILE} per file, {MAX_OWNED_PER_IMAGE} per image); the rest is not read"
                ));
            }
            return Ok(out);
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
        if claim == Claim::Java {
            let grant = budget.archive_bytes.take(catalog::java::BUDGET);
            if grant == 0 {
                return Ok(Parsed {
                    incomplete: vec![format!(
                        "not read: the image's {MAX_IMAGE_ARCHIVE_BYTES}-byte budget for Java archives is spent"
                    )],
                    ..Default::default()
                });
            }
            let (parsed, used) = catalog::java::parse_archive_within(path, &map, grant);
            budget.archive_bytes.give(grant - used.min(grant));
            return parsed;
        }
        catalog::parse(claim, path, &map)
    }
}

/// Whether a file of this kind is where packages are declared (so not reading it hides them).
fn declares_packages(c: Claim) -> bool {
    rank(c) <= 1
}

/// Which files' packages are kept first when an image has more than [`MAX_PACKAGES_PER_IMAGE`]:
/// the OS package databases, then language packages, then what binaries reveal.
fn rank(c: Claim) -> u8 {
    match c {
        Claim::DpkgStatus | Claim::DpkgStatusD | Claim::Apk | Claim::RpmDb => 0,
        Claim::Python | Claim::NpmPackage | Claim::NpmLock | Claim::Java => 1,
        Claim::Elf => 2,
        _ => 3,
    }
}

/// The packages (in path order), the distribution, the warnings, and how many packages were
/// left out over [`MAX_PACKAGES_PER_IMAGE`].
fn finish(state: BTreeMap<String, Entry>) -> (Vec<Package>, Option<Distro>, Vec<Warning>, usize) {
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
    let mut warnings = Vec::new();
    for (path, e) in &state {
        for (w, incomplete) in e
            .parsed
            .warnings
            .iter()
            .map(|w| (w, false))
            .chain(e.parsed.incomplete.iter().map(|w| (w, true)))
        {
            warnings.push(Warning {
                path: format!("/{path}"),
                layer: e.layer,
                message: w.clone(),
                incomplete,
            });
        }
    }
    let mut entries: Vec<(usize, &Entry)> = state.values().enumerate().collect();
    entries.sort_by_key(|(i, e)| (rank(e.claim), *i));
    let mut kept: Vec<(usize, Package)> = Vec::new();
    let mut dropped = 0;
    for (i, e) in entries {
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
            if kept.len() == MAX_PACKAGES_PER_IMAGE {
                // Capped while collecting, not after everything was copied.
                dropped += 1;
                continue;
            }
            let mut p = p.clone();
            if p.ecosystem == Ecosystem::Debian && distro.as_ref().is_some_and(|d| d.id == "ubuntu") {
                p.ecosystem = Ecosystem::Ubuntu;
            }
            p.purl = crate::purl::for_package(&p, distro.as_ref());
            kept.push((i, p));
        }
    }
    kept.sort_by_key(|(i, _)| *i);
    (kept.into_iter().map(|(_, p)| p).collect(), distro, warnings, dropped)
}

/// Bumped whenever a cataloger changes what it reports, so cached bills of materials are redone.
pub const CATALOG_VERSION: u32 = 5;

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
