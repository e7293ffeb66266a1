//! `docker save` archives: `manifest.json` lists, per image, a config file, the layer tars and the
//! tags. We turn each into an OCI manifest of our own and import that, so every later step (layers,
//! records, export) is the same as for an OCI layout.

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::import::{finish, import_descriptor, Confined, ImportOptions, Imported, Progress};
use crate::reference::Reference;
use crate::spec;
use crate::store::Store;

/// One image in a docker-archive's `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Entry {
    /// Path of the config file in the archive.
    pub config: String,
    /// Tags in Docker's familiar form (`busybox:latest`).
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars, bottom first.
    pub layers: Vec<String>,
}

/// Parses a docker-archive `manifest.json`.
pub fn parse_manifest_json(data: &[u8]) -> Result<Vec<Entry>> {
    let entries: Vec<Entry> =
        serde_json::from_slice(data).map_err(|e| Error::invalid(format!("malformed docker-archive manifest.json: {e}")))?;
    if entries.is_empty() {
        return Err(Error::invalid("docker-archive manifest.json lists no image"));
    }
    Ok(entries)
}

pub(crate) fn import(store: &Store, dir: &Confined, opts: &ImportOptions, progress: &dyn Fn(Progress)) -> Result<Vec<Imported>> {
    let max = store.limits().max_json_bytes;
    let entries = parse_manifest_json(&dir.read_small("manifest.json", max)?)?;
    if opts.tag.is_some() && entries.len() > 1 {
        return Err(Error::invalid(format!(
            "the archive holds {} images; --tag needs exactly one",
            entries.len()
        )));
    }
    let mut out = Vec::new();
    for Entry {
        config: config_path,
        repo_tags,
        layers: layer_paths,
    } in entries
    {
        let repo_tags = repo_tags.unwrap_or_default();
        let cfg_data = dir.read_small(&config_path, max)?;
        spec::parse_config(&cfg_data, layer_paths.len())?;
        let cfg_digest = store.write_blob(&cfg_data)?;
        let mut layers = Vec::new();
        for p in &layer_paths {
            let mut f = dir.open_file(p)?;
            let (digest, size) = store.write_blob_with(|w| {
                std::io::copy(&mut f, w)
                    .map(|_| ())
                    .map_err(|e| Error::invalid(format!("reading {p}: {e}")))
            })?;
            let media_type = store.sniff_compression(&digest)?.oci_media_type();
            layers.push(serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": spec::OCI_MANIFEST,
            "config": {"mediaType": spec::OCI_CONFIG, "digest": cfg_digest.to_string(), "size": cfg_data.len()},
            "layers": layers,
        });
        let mdata = serde_json::to_vec(&manifest).map_err(|e| Error::invalid(e.to_string()))?;
        let mdigest: Digest = store.write_blob(&mdata)?;
        let record = import_descriptor(store, store, &mdigest, spec::OCI_MANIFEST, mdata.len() as u64, opts, progress)?;
        let tags = match &opts.tag {
            Some(t) => vec![t.clone()],
            None => repo_tags
                .iter()
                .map(|t| Reference::parse(t).map_err(|e| Error::invalid(format!("docker-archive tag {t:?}: {e}"))))
                .collect::<Result<Vec<_>>>()?,
        };
        finish(store, record, tags, &mut out)?;
    }
    Ok(out)
}
