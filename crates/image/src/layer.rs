//! Unpacked layers: `layers/<chain-hex>/diff/` (the tree, an overlayfs lower directory) and
//! `layers/<chain-hex>/layer.json` (the record). A layer is extracted in a staging directory, checked
//! against its diff_id, flushed to disk with `syncfs`, and only then renamed into place, so a layer
//! directory either is complete or does not exist.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, IoContext, Result};
use crate::store::{atomic_write, fsync_dir, Store};
use crate::unpack::{extract, ExtractOptions, ExtractReport};

/// The record of an unpacked layer; its presence marks the layer complete.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    #[serde(flatten)]
    pub report: ExtractReport,
}

/// The chain ids of a stack of layers (OCI image spec, config.md): the first is the first diff_id,
/// each next one `sha256(parent_chain_id + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::sha256_of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

const RECORD: &str = "layer.json";

impl Store {
    pub fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root().join("layers").join(chain_id.hex())
    }

    /// The directory to use as an overlayfs lower layer.
    pub fn layer_diff(&self, chain_id: &Digest) -> PathBuf {
        self.layer_dir(chain_id).join("diff")
    }

    /// The record of a complete layer, or None if it is not unpacked.
    pub fn get_layer(&self, chain_id: &Digest) -> Result<Option<LayerRecord>> {
        let p = self.layer_dir(chain_id).join(RECORD);
        crate::store::read_json_optional(&p, "layer record")
    }

    /// Unpacks blob `blob` as the layer `chain_id` on top of `parent`, unless it is unpacked already.
    pub fn unpack_layer(&self, blob: &Digest, diff_id: &Digest, chain_id: &Digest, parent: Option<&Digest>) -> Result<LayerRecord> {
        if let Some(rec) = self.get_layer(chain_id)? {
            return Ok(rec);
        }
        let label = blob.to_string();
        // Lower layers, top-most first, for the owner and mode of directories the tar leaves implicit.
        let mut lowers = Vec::new();
        let mut cur = parent.cloned();
        while let Some(c) = cur {
            let rec = self
                .get_layer(&c)?
                .ok_or_else(|| Error::NotFound(format!("parent layer {c} is not unpacked")))?;
            lowers.push(self.layer_diff(&c));
            cur = rec.parent;
        }

        let stage = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.root().join("tmp"))
            .at(self.root().join("tmp"))?;
        let diff = stage.path().join("diff");
        fs::create_dir(&diff).at(&diff)?;
        let blob_file = self.open_blob(blob)?;
        let reader =
            crate::limits::decompress(io::BufReader::with_capacity(1 << 20, blob_file), self.limits()).map_err(|e| Error::UnsafeLayer {
                layer: label.clone(),
                reason: format!("cannot decompress: {e}"),
            })?;
        let hashing = HashingReader::new(reader, diff_id.algorithm());
        let opts = ExtractOptions {
            overlay_whiteouts: true,
            preserve_owner: true,
            lowers,
            max_bytes: Some(self.limits().max_layer_bytes),
        };
        // Inflate and hash on one thread, create files on this one.
        let (report, hashing) = crate::pipe::pipeline(hashing, |r| {
            let report = extract(&mut *r, &diff, &opts, &label)?;
            // The tar end marker may be followed by padding: the diff_id covers the whole stream.
            io::copy(r, &mut io::sink()).map_err(|e| Error::UnsafeLayer {
                layer: label.clone(),
                reason: format!("reading past the tar end: {e}"),
            })?;
            Ok::<_, Error>(report)
        });
        let report = report?;
        let (actual, _) = hashing.finish();
        if &actual != diff_id {
            return Err(Error::Mismatch {
                what: format!("uncompressed digest (diff_id) of layer {blob}"),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        let rec = LayerRecord {
            chain_id: chain_id.clone(),
            diff_id: diff_id.clone(),
            parent: parent.cloned(),
            report,
        };
        let data = serde_json::to_vec_pretty(&rec).map_err(|e| Error::invalid(e.to_string()))?;
        // One syncfs makes every extracted file durable, much cheaper than an fsync per file.
        let dirfd = fs::File::open(stage.path()).at(stage.path())?;
        rustix::fs::syncfs(&dirfd).at(stage.path())?;
        atomic_write(&stage.path().join(RECORD), &data)?;
        let dest = self.layer_dir(chain_id);
        let stage_path = stage.keep();
        match fs::rename(&stage_path, &dest) {
            Ok(()) => {}
            // Another import finished the same layer first: theirs is as good as ours.
            Err(e) if dest.join(RECORD).exists() => {
                tracing::debug!(layer = %chain_id, error = %e, "layer appeared concurrently");
                let _ = crate::unpack::remove_all_at(&rustix::fs::CWD, stage_path.as_os_str());
            }
            Err(e) => {
                let _ = crate::unpack::remove_all_at(&rustix::fs::CWD, stage_path.as_os_str());
                return Err(Error::Io { path: dest, source: e });
            }
        }
        fsync_dir(&self.root().join("layers"))?;
        self.get_layer(chain_id)?
            .ok_or_else(|| Error::NotFound(format!("layer {chain_id} vanished")))
    }

    /// Removes the layers `chains` (unpacked by an import that was then refused) that no image
    /// record uses. Each is first renamed away and then checked again, so that an import that
    /// recorded it meanwhile either finds it back in place or unpacks it again (see
    /// `import_descriptor`).
    pub(crate) fn discard_unused_layers(&self, chains: &[Digest]) {
        let used = |c: &Digest| match self.list_images() {
            Ok(recs) => recs
                .iter()
                .any(|r| r.as_ref().map_or(true, |r| r.layers.iter().any(|l| &l.chain_id == c))),
            Err(_) => true,
        };
        for c in chains.iter().rev() {
            if used(c) {
                continue;
            }
            let dir = self.layer_dir(c);
            let away = self.root().join("tmp").join(format!("discard-{}-{}", c.hex(), std::process::id()));
            if fs::rename(&dir, &away).is_err() {
                continue;
            }
            if used(c) && fs::rename(&away, &dir).is_ok() {
                continue;
            }
            if let Err(e) = crate::unpack::remove_all_at(&rustix::fs::CWD, away.as_os_str()) {
                tracing::warn!(layer = %c, error = %e, "could not remove a layer of a refused import");
            }
        }
    }

    /// Every complete layer's chain id, and the names of directories under layers/ that are not.
    pub fn list_layers(&self) -> Result<(Vec<Digest>, Vec<PathBuf>)> {
        let dir = self.root().join("layers");
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let name = e.file_name();
            match name.to_str().and_then(|n| Digest::new(crate::digest::Algorithm::Sha256, n).ok()) {
                Some(d) if e.path().join(RECORD).is_file() => ok.push(d),
                _ => bad.push(e.path()),
            }
        }
        Ok((ok, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_follows_the_spec() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::sha256_of(format!("{a} {b}").as_bytes()));
    }
}
