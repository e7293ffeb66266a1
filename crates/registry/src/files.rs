//! A set of small files kept in an image's own repository as one OCI artifact under a tag (a
//! manifest whose layers are the files, named by their `org.opencontainers.image.title`): how
//! signed trust metadata travels with the image, with no server besides the registry. Nothing here
//! trusts what comes back: names are checked, sizes bounded, digests verified, and the caller
//! verifies the content.

use bulkhead_image::{Digest, Reference};

use crate::{Error, Registries, Result};

const TITLE: &str = "org.opencontainers.image.title";

/// Files by name, with their content.
pub type Files = Vec<(String, Vec<u8>)>;
const EMPTY: &[u8] = b"{}";

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 128 && !n.starts_with('.') && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn repo_ref(repo: &Reference, tag: &str) -> (String, oci_client::Reference) {
    let host = crate::config::api_host(repo.domain()).to_owned();
    let r = oci_client::Reference::with_tag(host.clone(), repo.path().to_owned(), tag.to_owned());
    (host, r)
}

/// Publishes `files` in `repo` under `tag` as one artifact of `artifact_type`, each file a layer of
/// `media_type`. Returns the artifact manifest's digest.
pub fn push_files(
    regs: &Registries,
    repo: &Reference,
    tag: &str,
    artifact_type: &str,
    media_type: &str,
    files: &[(String, Vec<u8>)],
    warn: &dyn Fn(String),
) -> Result<Digest> {
    let (host, oref) = repo_ref(repo, tag);
    let client = regs.client(&host, warn)?;
    let authz = regs.authorizer(&host)?;
    let fail = |e: oci_client::errors::OciDistributionError| regs.describe(&host, &e);
    let empty = Digest::sha256_of(EMPTY);
    let mut layers = Vec::new();
    for (name, data) in files {
        if !valid_name(name) {
            return Err(Error::Registry(format!("{name:?} cannot be a file name in an artifact")));
        }
        layers.push(serde_json::json!({
            "mediaType": media_type, "digest": Digest::sha256_of(data).to_string(), "size": data.len(),
            "annotations": {TITLE: name},
        }));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": EMPTY.len()},
        "layers": layers,
    });
    let body = serde_json::to_vec(&manifest).map_err(|e| Error::Registry(e.to_string()))?;
    let digest = Digest::sha256_of(&body);
    crate::runtime()?.block_on(async {
        authz.authorize(&client, &oref, oci_client::RegistryOperation::Push).await?;
        let blobs = std::iter::once((empty.clone(), EMPTY.to_vec())).chain(files.iter().map(|(_, d)| (Digest::sha256_of(d), d.clone())));
        for (d, data) in blobs {
            if !client.blob_exists(&oref, &d.to_string()).await.map_err(fail)? {
                client.push_blob(&oref, data, &d.to_string()).await.map_err(fail)?;
            }
        }
        let ct = reqwest::header::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json");
        client.push_manifest_raw(&oref, body, ct).await.map_err(fail)?;
        Ok::<(), Error>(())
    })?;
    Ok(digest)
}

/// The files of the artifact `repo:tag` (None if there is no such tag), each at most `max_file`
/// bytes and `max_files` in number, of `artifact_type`.
pub fn fetch_files(
    regs: &Registries,
    repo: &Reference,
    tag: &str,
    artifact_type: &str,
    max_file: u64,
    max_files: usize,
    warn: &dyn Fn(String),
) -> Result<Option<Files>> {
    use oci_client::errors::OciDistributionError as E;
    let (host, oref) = repo_ref(repo, tag);
    let client = regs.client(&host, warn)?;
    let authz = regs.authorizer(&host)?;
    let fail = |e: E| regs.describe(&host, &e);
    crate::runtime()?.block_on(async {
        let max = bulkhead_image::limits::Limits::default().max_json_bytes;
        let data = match crate::manifest::get_bounded(
            regs,
            &host,
            &client,
            &oref,
            &authz,
            &["application/vnd.oci.image.manifest.v1+json"],
            max,
        )
        .await?
        {
            crate::manifest::Fetched::Found(d) => d,
            crate::manifest::Fetched::NotFound => return Ok(None),
        };
        let m: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| Error::Registry(format!("{repo}:{tag}: not a manifest: {e}")))?;
        if m["artifactType"].as_str() != Some(artifact_type) {
            return Err(Error::Registry(format!("{repo}:{tag} is not a {artifact_type} artifact")));
        }
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        if layers.len() > max_files {
            return Err(Error::Registry(format!(
                "{repo}:{tag}: {} files, over the limit of {max_files}",
                layers.len()
            )));
        }
        let mut out = Vec::new();
        for l in layers {
            let name = l["annotations"][TITLE].as_str().unwrap_or_default().to_owned();
            if !valid_name(&name) {
                return Err(Error::Registry(format!("{repo}:{tag}: a file named {name:?}")));
            }
            let size = l["size"].as_u64().unwrap_or(u64::MAX);
            if size > max_file {
                return Err(Error::Registry(format!(
                    "{repo}:{tag}: {name} is {size} bytes, over the {max_file}-byte limit"
                )));
            }
            let d: Digest = l["digest"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .map_err(|e| Error::Registry(format!("{repo}:{tag}: {name}: {e}")))?;
            let mut capped = Capped {
                buf: Vec::new(),
                max: size,
            };
            client
                .pull_blob(&oref, d.to_string().as_str(), &mut capped)
                .await
                .map_err(|e| match e {
                    E::IoError(io) if io.kind() == std::io::ErrorKind::FileTooLarge => Error::Registry(format!(
                        "{repo}:{tag}: {name}: the registry sent more than its {size} bytes; stopped reading there"
                    )),
                    e => fail(e),
                })?;
            let buf = capped.buf;
            if buf.len() as u64 != size {
                return Err(Error::Registry(format!("{repo}:{tag}: {name} is {} bytes, not {size}", buf.len())));
            }
            d.verify(&buf, &format!("{name} digest"))?;
            out.push((name, buf));
        }
        Ok(Some(out))
    })
}

/// An in-memory sink that refuses to grow past `max` bytes: oci-client's `pull_blob` writes
/// whatever the registry streams, so the bound has to be where the bytes land.
struct Capped {
    buf: Vec<u8>,
    max: u64,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.buf.len() as u64 + data.len() as u64 > self.max {
            return std::task::Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "over the declared size")));
        }
        self.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
