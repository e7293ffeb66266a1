//! Artifacts attached to an image (OCI 1.1 referrers): an artifact manifest whose `subject` is the
//! image, listed through the referrers API, or, where the registry has none (distribution 2.8,
//! Docker Hub for a long time), through the referrers tag schema: an index tagged
//! `<alg>-<hex of the subject>` that the client that attaches keeps up to date. Signed trust
//! metadata and SBOMs are attached this way.

use bulkhead_image::{Digest, Reference};

use crate::{oci_reference, Error, Registries, Result};

/// The empty config of an artifact manifest (OCI 1.1: `application/vnd.oci.empty.v1+json`, `{}`).
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One artifact that refers to an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referrer {
    pub digest: String,
    pub artifact_type: Option<String>,
    pub size: i64,
    pub annotations: std::collections::BTreeMap<String, String>,
}

fn subject_of(regs: &Registries, subject: &Reference, warn: &dyn Fn(String)) -> Result<(Reference, Digest, String, u64)> {
    let (data, digest) = crate::fetch_manifest(regs, subject, warn)?;
    let media_type = crate::pull::media_type_of(&data)?;
    let pinned = subject.with_digest(digest.clone());
    Ok((pinned, digest, media_type, data.len() as u64))
}

/// Attaches `data` (of media type `media_type`) to the image `subject` as an artifact of type
/// `artifact_type`; returns the artifact manifest's digest.
pub fn attach(
    regs: &Registries,
    subject: &Reference,
    artifact_type: &str,
    media_type: &str,
    data: &[u8],
    annotations: &std::collections::BTreeMap<String, String>,
    warn: &dyn Fn(String),
) -> Result<Digest> {
    let (pinned, subject_digest, subject_type, subject_size) = subject_of(regs, subject, warn)?;
    let host = crate::config::api_host(subject.domain()).to_owned();
    let client = regs.client(&host, warn)?;
    let authz = regs.authorizer(&host)?;
    let oref = oci_reference(&host, &pinned);
    let fail = |e: oci_client::errors::OciDistributionError| regs.describe(&host, &e);
    let blob = Digest::sha256_of(data);
    let empty = Digest::sha256_of(EMPTY);
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty.to_string(), "size": EMPTY.len()},
        "layers": [{"mediaType": media_type, "digest": blob.to_string(), "size": data.len()}],
        "subject": {"mediaType": subject_type, "digest": subject_digest.to_string(), "size": subject_size},
    });
    if !annotations.is_empty() {
        manifest["annotations"] = serde_json::to_value(annotations).map_err(|e| Error::Registry(e.to_string()))?;
    }
    let manifest = serde_json::to_vec(&manifest).map_err(|e| Error::Registry(e.to_string()))?;
    let manifest_digest = Digest::sha256_of(&manifest);
    crate::runtime()?.block_on(async {
        authz.authorize(&client, &oref, oci_client::RegistryOperation::Push).await?;
        for (d, bytes) in [(&empty, EMPTY), (&blob, data)] {
            if !client.blob_exists(&oref, &d.to_string()).await.map_err(fail)? {
                client.push_blob(&oref, bytes.to_vec(), &d.to_string()).await.map_err(fail)?;
            }
        }
        let at = oref.clone_with_digest(manifest_digest.to_string());
        let ct = reqwest::header::HeaderValue::from_static(MANIFEST);
        client.push_manifest_raw(&at, manifest.clone(), ct).await.map_err(fail)?;
        // A registry with the referrers API lists it now. One without it lists what the tag
        // schema's index holds: add ours there.
        let listed = client.pull_referrers(&oref, None).await.map_err(fail)?;
        if listed.manifests.iter().any(|m| m.digest == manifest_digest.to_string()) {
            return Ok(());
        }
        let mut index = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": []});
        let entries: Vec<serde_json::Value> = listed
            .manifests
            .iter()
            .map(|m| serde_json::to_value(m).unwrap_or_default())
            .chain(std::iter::once(serde_json::json!({
                "mediaType": MANIFEST,
                "digest": manifest_digest.to_string(),
                "size": manifest.len(),
                "artifactType": artifact_type,
            })))
            .collect();
        index["manifests"] = serde_json::Value::Array(entries);
        let tag = format!("{}-{}", subject_digest.algorithm().name(), subject_digest.hex());
        let tagged = oci_client::Reference::with_tag(host.clone(), subject.path().to_owned(), tag);
        let body = serde_json::to_vec(&index).map_err(|e| Error::Registry(e.to_string()))?;
        client
            .push_manifest_raw(&tagged, body, reqwest::header::HeaderValue::from_static(INDEX))
            .await
            .map_err(fail)?;
        Ok::<(), Error>(())
    })?;
    Ok(manifest_digest)
}

/// The artifacts that refer to `subject` (of `artifact_type` only, if given).
pub fn referrers(regs: &Registries, subject: &Reference, artifact_type: Option<&str>, warn: &dyn Fn(String)) -> Result<Vec<Referrer>> {
    let (pinned, ..) = subject_of(regs, subject, warn)?;
    let host = crate::config::api_host(subject.domain()).to_owned();
    let client = regs.client(&host, warn)?;
    let authz = regs.authorizer(&host)?;
    let oref = oci_reference(&host, &pinned);
    let index = crate::runtime()?.block_on(async {
        authz.authorize(&client, &oref, oci_client::RegistryOperation::Pull).await?;
        client
            .pull_referrers(&oref, artifact_type)
            .await
            .map_err(|e| regs.describe(&host, &e))
    })?;
    Ok(index
        .manifests
        .into_iter()
        .filter(|m| artifact_type.is_none() || m.artifact_type.as_deref() == artifact_type)
        .map(|m| Referrer {
            digest: m.digest,
            artifact_type: m.artifact_type,
            size: m.size,
            annotations: m.annotations.unwrap_or_default(),
        })
        .collect())
}
