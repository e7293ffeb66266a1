//! `push`: blobs the registry lacks (HEAD first; a cross-repository mount where this store saw the
//! blob in another repository of the same registry; else an upload streamed from the store), then
//! the manifest, byte for byte as stored.

use bulkhead_image::store::ImageRecord;
use bulkhead_image::{Digest, Reference, Store};
use futures_util::StreamExt as _;

use crate::{oci_reference, Error, Registries, Result};

/// The outcome of a push.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub digest: Digest,
    pub size: u64,
    /// Blobs sent, mounted from another repository, and already there.
    pub uploaded: usize,
    pub mounted: usize,
    pub present: usize,
    pub host: String,
}

/// Pushes the image `image` (from `store`) as `target`.
pub fn push(
    store: &Store,
    regs: &Registries,
    image: &ImageRecord,
    target: &Reference,
    progress: &(dyn Fn(String) + Send + Sync),
    warn: &dyn Fn(String),
) -> Result<Pushed> {
    let host = crate::config::api_host(target.domain()).to_owned();
    if let Some(d) = target.digest() {
        if d != &image.manifest {
            return Err(Error::Registry(format!(
                "{target}: the image's manifest is {}, not {d}",
                image.manifest
            )));
        }
    }
    let manifest = store.read_blob(&image.manifest)?;
    let rt = crate::runtime()?;
    rt.block_on(async {
        let client = regs.client(&host, warn)?;
        let authz = regs.authorizer(&host)?;
        let oref = oci_reference(&host, target);
        let fail = |e: oci_client::errors::OciDistributionError| regs.describe(&host, &e);
        authz.authorize(&client, &oref, oci_client::RegistryOperation::Push).await?;
        let mut blobs: Vec<(Digest, u64)> = image.layers.iter().map(|l| (l.blob.clone(), l.blob_size)).collect();
        let config_size = std::fs::metadata(store.blob_path(&image.config))
            .map_err(|e| Error::Registry(format!("config {}: {e}", image.config)))?
            .len();
        blobs.push((image.config.clone(), config_size));
        let (mut uploaded, mut mounted, mut present) = (0, 0, 0);
        for (d, size) in &blobs {
            let digest = d.to_string();
            // A token that is due is fetched again: a push may outlive it.
            authz.authorize(&client, &oref, oci_client::RegistryOperation::Push).await?;
            if client.blob_exists(&oref, &digest).await.map_err(fail)? {
                present += 1;
                progress(format!("{}: already there", d.short()));
                continue;
            }
            let mut done = false;
            for source in crate::seen_in(store, d).into_iter().filter(|s| s.0 == host && s.1 != target.path()) {
                let src = oci_client::Reference::with_digest(host.clone(), source.1.clone(), digest.clone());
                if client.mount_blob(&oref, &src, &digest).await.is_ok() && client.blob_exists(&oref, &digest).await.unwrap_or(false) {
                    mounted += 1;
                    progress(format!("{}: mounted from {}", d.short(), source.1));
                    done = true;
                    break;
                }
            }
            if done {
                continue;
            }
            let file = tokio::fs::File::open(store.blob_path(d))
                .await
                .map_err(|e| Error::Registry(format!("blob {d}: {e}")))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
                .map(|r| r.map_err(oci_client::errors::OciDistributionError::IoError));
            client
                .push_blob_stream(&oref, stream, &digest, Some(*size))
                .await
                .map_err(|e| Error::Registry(format!("blob {d}: {}", regs.describe(&host, &e))))?;
            uploaded += 1;
            progress(format!("{}: pushed ({size} bytes)", d.short()));
        }
        let content_type = reqwest::header::HeaderValue::from_str(&image.manifest_media_type)
            .map_err(|_| Error::Registry(format!("media type {:?} cannot be sent", image.manifest_media_type)))?;
        authz.authorize(&client, &oref, oci_client::RegistryOperation::Push).await?;
        client
            .push_manifest_raw(&oref, manifest.clone(), content_type)
            .await
            .map_err(fail)?;
        for (d, _) in &blobs {
            crate::remember(store, d, &host, target.path());
        }
        Ok(Pushed {
            digest: image.manifest.clone(),
            size: manifest.len() as u64,
            uploaded,
            mounted,
            present,
            host: host.clone(),
        })
    })
}
