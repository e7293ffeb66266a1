//! `pull`: manifest (and platform from an index), then the config and layers concurrently, each
//! hashed while it streams into `downloads/` and moved under `blobs/` only when digest and size
//! match; then the layers are unpacked and the image is named.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bulkhead_image::import::{import_descriptor, ImportOptions, Progress};
use bulkhead_image::spec::{self, Kind, PlatformSpec};
use bulkhead_image::store::ImageRecord;
use bulkhead_image::{Digest, Reference, Store};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use crate::{oci_reference, Error, Registries, Result};

/// What happens during a pull, for a progress display.
#[derive(Clone, Debug)]
pub enum PullEvent {
    /// The registry (or mirror) the image comes from.
    Host(String),
    /// A blob the store has already: nothing is transferred.
    Present { digest: Digest, size: u64 },
    /// A download starts (at `offset` when it resumes an interrupted one).
    Started { digest: Digest, size: u64, offset: u64 },
    /// Bytes of a download arrived.
    Progress { digest: Digest, done: u64, size: u64 },
    /// A blob is verified and in the store.
    Verified { digest: Digest },
    /// Unpacking and recording, as the image store reports it.
    Import(Progress),
}

/// The outcome of a pull.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub record: ImageRecord,
    /// The manifest digest (of the platform's manifest when the reference names an index).
    pub manifest: Digest,
    /// Bytes of blobs that came over the network.
    pub transferred: u64,
    pub host: String,
}

/// Pulls `reference` into `store`: from its registry's mirrors first, then from the registry.
pub fn pull(
    store: &Store,
    regs: &Registries,
    reference: &Reference,
    platform: &PlatformSpec,
    progress: &(dyn Fn(PullEvent) + Send + Sync),
    warn: &dyn Fn(String),
) -> Result<Pulled> {
    let rt = crate::runtime()?;
    let hosts = regs.pull_hosts(reference.domain());
    let mut last = None;
    for (i, host) in hosts.iter().enumerate() {
        progress(PullEvent::Host(host.clone()));
        match rt.block_on(fetch(store, regs, host, reference, platform, progress, warn)) {
            Ok((manifest, media_type, size, transferred)) => {
                let opts = ImportOptions {
                    tag: reference.tag().map(|_| reference.clone()),
                    platform: platform.clone(),
                    layout_ref: None,
                };
                let _lock = store.lock_shared()?;
                let record = import_descriptor(store, store, &manifest, &media_type, size, &opts, &|p| {
                    progress(PullEvent::Import(p))
                })?;
                // The name last: only now is every blob of the image verified and unpacked.
                if reference.tag().is_some() {
                    store.tag(reference, &record.manifest)?;
                }
                return Ok(Pulled {
                    record,
                    manifest,
                    transferred,
                    host: host.clone(),
                });
            }
            Err(e) if i + 1 < hosts.len() => {
                warn(format!("mirror {host}: {e}; trying the next"));
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Registry("no registry to pull from".into())))
}

/// Fetches the manifest and every blob of `reference` from `host` into the store; returns the
/// manifest's digest, media type, size, and the bytes transferred.
#[allow(clippy::too_many_arguments)]
async fn fetch(
    store: &Store,
    regs: &Registries,
    host: &str,
    reference: &Reference,
    platform: &PlatformSpec,
    progress: &(dyn Fn(PullEvent) + Send + Sync),
    warn: &dyn Fn(String),
) -> Result<(Digest, String, u64, u64)> {
    let client = regs.client(host, warn)?;
    let authz = regs.authorizer(host)?;
    let oref = oci_reference(host, reference);
    let max = store.limits().max_json_bytes;

    let get = |oref: oci_client::Reference| {
        let (client, authz) = (&client, &authz);
        async move {
            match crate::manifest::get_bounded(regs, host, client, &oref, authz, crate::ACCEPTED_MANIFESTS, max).await? {
                crate::manifest::Fetched::Found(d) => Ok(d),
                crate::manifest::Fetched::NotFound => Err(Error::Registry(format!("{host}: {reference}: manifest unknown"))),
            }
        }
    };
    let data = get(oref.clone()).await?;
    if let Some(want) = reference.digest() {
        want.verify(&data, "manifest digest")?;
    }
    let (mut data, mut media_type) = (data.to_vec(), media_type_of(&data)?);
    let mut digest = Digest::sha256_of(&data);
    let mut index = None;
    if spec::kind_of(&media_type) == Some(Kind::Index) {
        let idx = spec::parse_index(&data)?;
        let d = spec::select_platform(&idx, platform)?;
        let child = Digest::try_from(d.digest())?;
        let cdata = get(oref.clone_with_digest(child.to_string())).await?;
        if cdata.len() as u64 != d.size() {
            return Err(Error::Registry(format!(
                "{reference}: manifest {child} is {} bytes, the index says {}",
                cdata.len(),
                d.size()
            )));
        }
        child.verify(&cdata, "manifest digest")?;
        index = Some((data, digest));
        (data, media_type, digest) = (cdata.to_vec(), d.media_type().to_string(), child);
    }
    let manifest = spec::parse_manifest(&data, Some(&media_type))?;
    // Declared sizes are checked against the limits before a byte is fetched: a registry that
    // declares an 8 GiB layer and hangs up after 200 MiB would otherwise leave it in downloads/.
    let limits = store.limits();
    if manifest.config.size() > limits.max_json_bytes {
        return Err(Error::Registry(format!(
            "{reference}: the config declares {} bytes, over the {}-byte limit; nothing was fetched",
            manifest.config.size(),
            limits.max_json_bytes
        )));
    }
    let mut blobs = vec![(manifest.config_digest.clone(), manifest.config.size())];
    for (desc, d) in &manifest.layers {
        if desc.size() > limits.max_layer_bytes {
            return Err(Error::Registry(format!(
                "{reference}: layer {d} declares {} bytes, over the {}-byte layer limit (--max-layer-size); nothing was fetched",
                desc.size(),
                limits.max_layer_bytes
            )));
        }
        blobs.push((d.clone(), desc.size()));
    }
    let blobs_seen = blobs.clone();
    let transferred = Arc::new(AtomicU64::new(0));
    let downloads = store.root().join("downloads");
    // Partial downloads are the store's business alone: 0700, files 0600 (an image may be private).
    std::fs::create_dir_all(&downloads).map_err(|e| Error::Registry(format!("{}: {e}", downloads.display())))?;
    std::fs::set_permissions(&downloads, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| Error::Registry(format!("{}: {e}", downloads.display())))?;
    let results: Vec<Result<()>> = futures_util::stream::iter(blobs)
        .map(|(d, size)| {
            let (client, oref, store, downloads, transferred, authz) = (
                client.clone(),
                oref.clone(),
                store.clone(),
                downloads.clone(),
                transferred.clone(),
                &authz,
            );
            async move {
                if store.has_blob(&d) {
                    progress(PullEvent::Present { digest: d.clone(), size });
                    return Ok(());
                }
                fetch_blob(regs, authz, &client, &oref, &store, &downloads, &d, size, &transferred, progress)
                    .await
                    .map_err(|e| match e {
                        Error::Registry(m) if !m.contains(&d.to_string()) => Error::Registry(format!("blob {d}: {m}")),
                        other => other,
                    })
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for r in results {
        r.map_err(|e| match e {
            Error::Image(bulkhead_image::Error::Mismatch { what, expected, actual }) => Error::Registry(format!(
                "{reference}: {what}: expected {expected}, got {actual}; nothing of it was stored"
            )),
            other => other,
        })?;
    }
    for (d, _) in &blobs_seen {
        crate::remember(store, d, host, reference.path());
    }
    // Every blob is verified and in the store: now the manifest, which import reads back.
    store.put_blob(&data[..], &digest, Some(data.len() as u64))?;
    // The index too (small, bounded like any manifest), so that the image is found again by the
    // digest it was pulled by: a cluster pins a service's image to its index digest.
    if let Some((idata, idigest)) = index {
        store.put_blob(&idata[..], &idigest, Some(idata.len() as u64))?;
    }
    let size = data.len() as u64;
    Ok((digest, media_type, size, transferred.load(Ordering::Relaxed)))
}

/// The media type a manifest or index declares (or that its shape shows, for old ones without).
pub(crate) fn media_type_of(data: &[u8]) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| Error::Registry(format!("the registry sent a manifest that is not JSON: {e}")))?;
    if let Some(m) = v.get("mediaType").and_then(|m| m.as_str()) {
        return Ok(m.to_owned());
    }
    Ok(if v.get("manifests").is_some() {
        "application/vnd.oci.image.index.v1+json".into()
    } else {
        "application/vnd.oci.image.manifest.v1+json".into()
    })
}

fn partial_path(downloads: &Path, d: &Digest) -> PathBuf {
    downloads.join(format!("{}-{}", d.algorithm().name(), d.hex()))
}

/// Downloads blob `d` into `downloads/` (resuming what a previous pull left there), then moves it
/// into the store, which checks digest and size. A blob that fails the check is deleted.
#[allow(clippy::too_many_arguments)]
async fn fetch_blob(
    regs: &Registries,
    authz: &crate::auth::Authorizer<'_>,
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    store: &Store,
    downloads: &Path,
    d: &Digest,
    size: u64,
    transferred: &AtomicU64,
    progress: &(dyn Fn(PullEvent) + Send + Sync),
) -> Result<()> {
    let path = partial_path(downloads, d);
    let io = |e: std::io::Error| Error::Registry(format!("{}: {e}", path.display()));
    // The partial file is locked for as long as this pull owns it: a second pull of the same blob
    // waits rather than writing into it too, and prune/repair leave it alone (they take it only
    // if they can lock it).
    // Waited for no longer than a stalled transfer is (the other pull's own deadline).
    let locked = lock_partial(&path, regs.deadlines().idle() * 2).await.map_err(io)?;
    if store.has_blob(d) {
        // Another pull finished it while this one waited (and the file just made is empty).
        let _ = std::fs::remove_file(&path);
        progress(PullEvent::Present { digest: d.clone(), size });
        return Ok(());
    }
    // Held to the end: a duplicate of the descriptor keeps the lock while `file` comes and goes.
    let _guard = locked.try_clone().map_err(io)?;
    let mut have = locked.metadata().map_err(io)?.len();
    if have >= size {
        // Complete (or too long): let the store judge it; a mismatch starts over below.
        have = 0;
    }
    let digest = d.to_string();
    // Until the body starts (token dance and headers included): twice the idle timeout.
    let headers_within = regs.deadlines().idle() * 2;
    let resp = tokio::time::timeout(headers_within, async {
        // A token that is due is fetched again here: a pull may outlive it.
        authz
            .authorize(client, oref, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|e| oci_client::errors::OciDistributionError::GenericError(Some(e.to_string())))?;
        if have > 0 {
            client.pull_blob_stream_partial(oref, digest.as_str(), have, None).await
        } else {
            client
                .pull_blob_stream(oref, digest.as_str())
                .await
                .map(oci_client::client::BlobResponse::Full)
        }
    })
    .await
    .map_err(|_| {
        Error::Registry(format!(
            "{}: blob {d}: no answer within {} s",
            oref.registry(),
            headers_within.as_secs()
        ))
    })?
    .map_err(|e| Error::Registry(format!("blob {d}: {}", regs.describe(oref.registry(), &e))))?;
    let (mut stream, append) = match resp {
        oci_client::client::BlobResponse::Full(s) => (s.stream, false),
        oci_client::client::BlobResponse::Partial(s) => (s.stream, true),
    };
    if !append {
        have = 0;
    }
    progress(PullEvent::Started {
        digest: d.clone(),
        size,
        offset: have,
    });
    {
        use std::io::Seek as _;
        let mut f = &locked;
        if append {
            f.seek(std::io::SeekFrom::Start(have)).map_err(io)?;
            // Anything past what is resumed (a longer file judged above) goes.
            locked.set_len(have).map_err(io)?;
        } else {
            locked.set_len(0).map_err(io)?;
            f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        }
        // A file an older version left readable to all.
        locked
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io)?;
    }
    let mut file = tokio::fs::File::from_std(locked);
    let dl = regs.deadlines();
    let what = format!("{}: blob {d}", oref.registry());
    let mut rate = dl.rate();
    loop {
        let next = match dl.chunk(stream.next(), &what).await {
            Ok(n) => n,
            Err(e) => {
                // What arrived stays, for the next pull to resume.
                let _ = file.flush().await;
                return Err(Error::Registry(format!("{e}; {have} of {size} bytes kept for the next pull")));
            }
        };
        let Some(chunk) = next else { break };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) if have >= size => {
                // Every byte arrived and oci-client's own check refused them: wrong content.
                drop(file);
                let _ = tokio::fs::remove_file(&path).await;
                return Err(Error::Registry(format!(
                    "blob {d}: the registry sent wrong content ({e}); nothing of it was stored"
                )));
            }
            Err(e) => {
                // What arrived stays, for the next pull to resume.
                let _ = file.flush().await;
                return Err(Error::Registry(format!(
                    "{}: blob {d}: the transfer broke off after {have} of {size} bytes: {}",
                    oref.registry(),
                    error_chain(&e)
                )));
            }
        };
        have += chunk.len() as u64;
        if let Err(e) = rate.on(chunk.len(), &what) {
            file.write_all(&chunk).await.map_err(io)?;
            let _ = file.flush().await;
            return Err(Error::Registry(format!("{e}; {have} of {size} bytes kept for the next pull")));
        }
        if have > size {
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Error::Registry(format!(
                "blob {d}: the registry sent more than its {size} bytes; nothing of it was stored"
            )));
        }
        file.write_all(&chunk).await.map_err(io)?;
        transferred.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        progress(PullEvent::Progress {
            digest: d.clone(),
            done: have,
            size,
        });
    }
    file.flush().await.map_err(io)?;
    drop(file);
    // Read back through the locked descriptor, never the path (something else may be there now).
    let mut f = _guard.try_clone().map_err(io)?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).map_err(io)?;
    let (store2, d2) = (store.clone(), d.clone());
    let verified = tokio::task::spawn_blocking(move || store2.put_blob(f, &d2, Some(size)).map_err(Error::from))
        .await
        .map_err(|e| Error::Registry(format!("blob {d}: {e}")))?;
    let _ = tokio::fs::remove_file(&path).await;
    verified?;
    progress(PullEvent::Verified { digest: d.clone() });
    Ok(())
}

/// Opens (creating) the partial download at `path` and locks it exclusively, waiting while another
/// pull holds it. A lock taken on a file that was removed or replaced meanwhile (the pull before
/// finished and removed it, or prune did) is let go and the path opened again.
async fn lock_partial(path: &Path, wait: std::time::Duration) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    loop {
        // O_NONBLOCK: a FIFO put there must not block the open.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
            .open(path)?;
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::other(
                "not a regular file (`bulkhead system check --repair` removes it)",
            ));
        }
        let started = std::time::Instant::now();
        loop {
            match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if started.elapsed() < wait => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(std::io::Error::other(format!(
                        "another pull has been downloading this blob for {} s and still holds it; try again later",
                        wait.as_secs()
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (held, now) = (f.metadata()?, std::fs::symlink_metadata(path));
        if matches!(now, Ok(m) if m.dev() == held.dev() && m.ino() == held.ino()) {
            return Ok(f);
        }
    }
}

/// An error with its causes, on one line ("error decoding response body: operation timed out").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        src = s.source();
    }
    msg
}
