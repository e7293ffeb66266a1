//! Export of images: OCI image layouts (a directory or a tar archive, manifest digest unchanged) and
//! docker-archives in the layout `docker save` has always written (`manifest.json`, `repositories`,
//! `<config-hex>.json`, `<diff-id-hex>/layer.tar` uncompressed).

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, IoContext, Result};
use crate::reference::Reference;
use crate::spec;
use crate::store::{ImageRecord, Store};

/// The output formats of `image save`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An OCI image layout in a tar archive.
    OciArchive,
    /// An OCI image layout directory.
    OciDir,
    /// A `docker save` archive.
    DockerArchive,
}

/// Where the files of an export go.
trait Sink {
    fn add(&mut self, rel: &str, size: u64, data: &mut dyn Read) -> Result<()>;
    fn add_bytes(&mut self, rel: &str, data: &[u8]) -> Result<()> {
        self.add(rel, data.len() as u64, &mut { data })
    }
}

struct DirSink(PathBuf);

impl Sink for DirSink {
    fn add(&mut self, rel: &str, _size: u64, data: &mut dyn Read) -> Result<()> {
        let p = self.0.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).at(parent)?;
        }
        let mut f = File::create(&p).at(&p)?;
        io::copy(data, &mut f).at(&p)?;
        f.sync_all().at(&p)
    }
}

struct TarSink<W: Write>(tar::Builder<W>, std::collections::BTreeSet<String>);

/// A header with every numeric field set: some readers (the tar crate among them) refuse empty ones.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

impl<W: Write> Sink for TarSink<W> {
    fn add(&mut self, rel: &str, size: u64, data: &mut dyn Read) -> Result<()> {
        // Parent directories first, as `docker save` and skopeo write them.
        let mut acc = String::new();
        for part in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, d)| d.to_vec())
            .unwrap_or_default()
        {
            acc.push_str(part);
            acc.push('/');
            if self.1.insert(acc.clone()) {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                self.0.append_data(&mut h, &acc, io::empty()).at(&acc)?;
            }
        }
        let mut h = header(tar::EntryType::Regular, 0o644, size);
        self.0.append_data(&mut h, rel, data.take(size)).at(rel)
    }
}

/// Writes `images` (each with the reference it is saved under, if any) to `out`.
pub fn save(store: &Store, images: &[(ImageRecord, Option<Reference>)], out: &Path, format: Format) -> Result<()> {
    match format {
        Format::OciDir => {
            if out.exists() && fs::read_dir(out).at(out)?.next().is_some() {
                return Err(Error::Conflict(format!("{} exists and is not empty", out.display())));
            }
            fs::create_dir_all(out).at(out)?;
            write_oci(store, images, &mut DirSink(out.into()))
        }
        Format::OciArchive | Format::DockerArchive => {
            let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let tmp = tempfile::Builder::new().prefix(".bulkhead-save-").tempfile_in(dir).at(dir)?;
            let mut sink = TarSink(tar::Builder::new(io::BufWriter::new(tmp)), Default::default());
            if format == Format::OciArchive {
                write_oci(store, images, &mut sink)?;
            } else {
                write_docker(store, images, &mut sink)?;
            }
            let tmp = sink.0.into_inner().at(out)?.into_inner().map_err(|e| e.into_error()).at(out)?;
            tmp.as_file().sync_all().at(out)?;
            tmp.persist(out).map_err(|e| e.error).at(out)?;
            Ok(())
        }
    }
}

fn add_blob(store: &Store, sink: &mut dyn Sink, d: &Digest, seen: &mut std::collections::BTreeSet<Digest>) -> Result<()> {
    if !seen.insert(d.clone()) {
        return Ok(());
    }
    let mut f = store.open_blob(d)?;
    let size = f.metadata().at(store.blob_path(d))?.len();
    sink.add(&format!("blobs/{}/{}", d.algorithm().name(), d.hex()), size, &mut f)
}

fn write_oci(store: &Store, images: &[(ImageRecord, Option<Reference>)], sink: &mut dyn Sink) -> Result<()> {
    let mut seen = Default::default();
    let mut manifests = Vec::new();
    for (rec, reference) in images {
        for l in &rec.layers {
            add_blob(store, sink, &l.blob, &mut seen)?;
        }
        add_blob(store, sink, &rec.config, &mut seen)?;
        add_blob(store, sink, &rec.manifest, &mut seen)?;
        let size = fs::metadata(store.blob_path(&rec.manifest))
            .at(store.blob_path(&rec.manifest))?
            .len();
        let mut desc = serde_json::json!({"mediaType": rec.manifest_media_type, "digest": rec.manifest.to_string(), "size": size});
        if let Some(r) = reference {
            desc["annotations"] = serde_json::json!({
                spec::CONTAINERD_NAME: r.to_string(),
                spec::REF_NAME: r.tag().unwrap_or(crate::reference::DEFAULT_TAG),
            });
        }
        manifests.push(desc);
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": spec::OCI_INDEX, "manifests": manifests});
    sink.add_bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    sink.add_bytes(
        "index.json",
        &serde_json::to_vec(&index).map_err(|e| Error::invalid(e.to_string()))?,
    )
}

fn write_docker(store: &Store, images: &[(ImageRecord, Option<Reference>)], sink: &mut dyn Sink) -> Result<()> {
    let mut manifest = Vec::new();
    let mut repositories = serde_json::Map::new();
    let mut written = std::collections::BTreeSet::new();
    for (rec, reference) in images {
        let cfg = store.read_blob(&rec.config)?;
        let cfg_name = format!("{}.json", rec.config.hex());
        if written.insert(cfg_name.clone()) {
            sink.add_bytes(&cfg_name, &cfg)?;
        }
        let mut layers = Vec::new();
        for l in &rec.layers {
            let name = format!("{}/layer.tar", l.diff_id.hex());
            if written.insert(name.clone()) {
                // docker-archive layers are uncompressed: decompress into a temporary file, checking
                // the diff_id on the way, since a tar entry needs its size up front.
                let mut tmp = tempfile::tempfile_in(store.root().join("tmp")).at(store.root().join("tmp"))?;
                let reader =
                    crate::limits::decompress(io::BufReader::new(store.open_blob(&l.blob)?), store.limits()).at(store.blob_path(&l.blob))?;
                let mut h = HashingReader::new(reader, l.diff_id.algorithm());
                let size = io::copy(&mut h, &mut tmp).at(store.blob_path(&l.blob))?;
                if h.finish().0 != l.diff_id {
                    return Err(Error::Mismatch {
                        what: format!("diff_id of stored layer {}", l.blob),
                        expected: l.diff_id.to_string(),
                        actual: "another".into(),
                    });
                }
                tmp.rewind().at(&name)?;
                sink.add(&name, size, &mut tmp)?;
            }
            layers.push(name);
        }
        let mut tags = Vec::new();
        if let Some(r) = reference {
            let tag = r.tag().unwrap_or(crate::reference::DEFAULT_TAG);
            tags.push(format!("{}:{tag}", r.familiar_name()));
            let top = rec.layers.last().map(|l| l.diff_id.hex().to_owned()).unwrap_or_default();
            let entry = repositories.entry(r.familiar_name()).or_insert_with(|| serde_json::json!({}));
            entry[tag] = serde_json::Value::String(top);
        }
        manifest.push(serde_json::json!({"Config": cfg_name, "RepoTags": tags, "Layers": layers}));
    }
    sink.add_bytes(
        "manifest.json",
        &serde_json::to_vec(&manifest).map_err(|e| Error::invalid(e.to_string()))?,
    )?;
    sink.add_bytes(
        "repositories",
        &serde_json::to_vec(&repositories).map_err(|e| Error::invalid(e.to_string()))?,
    )
}
