//! # bulkhead-registry
//!
//! Images from and to registries, over the OCI distribution API (and the Docker Registry HTTP API v2
//! it grew from), with `oci-client` doing the HTTP: bearer-token challenges, basic auth, anonymous
//! access, ranged blob requests, monolithic and chunked uploads, cross-repository mounts.
//!
//! The invariant of [`pull()`]: no byte reaches `blobs/` before its digest and size are checked,
//! and the image's name is written only after every blob is. A download is kept in `downloads/`
//! while it is incomplete, so the next pull of the same blob resumes it with a Range request.
//! [`push()`] sends only what the registry lacks (HEAD, else a mount from another repository of the
//! same registry where the store saw the blob), and the manifest last, byte for byte as stored, so
//! its digest is the image's.
//!
//! TLS always, with the system's roots plus the per-registry CAs of
//! `<config>/certs.d/HOST[:PORT]/*.crt`; plain HTTP only for registries listed as insecure.

mod auth;
pub mod config;
pub mod deadline;
pub mod download;
mod files;
mod login;
mod manifest;
pub(crate) mod pull;
mod push;
mod referrers;

pub use config::{Credentials, Registries};
pub use files::{fetch_files, push_files, Files};
pub use login::{challenge_params, login};
pub use pull::{pull, PullEvent, Pulled};
pub use push::{push, Pushed};
pub use referrers::{attach, referrers, Referrer};

use bulkhead_image::{Digest, Store};

/// What can go wrong talking to a registry, as one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local registry configuration (registries.json, certs.d, auth.json, a helper).
    #[error("{0}")]
    Config(String),
    /// The registry refused, failed, or sent something we do not accept.
    #[error("{0}")]
    Registry(String),
    /// The image store.
    #[error(transparent)]
    Image(#[from] bulkhead_image::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Media types we ask registries for, most specific first.
pub(crate) const ACCEPTED_MANIFESTS: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

impl Registries {
    /// An oci-client for `host`, with this host's CAs and protocol. Warns (once, through `warn`)
    /// about plain HTTP and about client certificates, which oci-client cannot present.
    pub(crate) fn client(&self, host: &str, warn: &dyn Fn(String)) -> Result<oci_client::Client> {
        use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
        let protocol = if self.is_insecure(host) {
            warn(format!("{host} is configured as insecure: talking plain HTTP to it, without TLS"));
            ClientProtocol::HttpsExcept(vec![host.to_owned()])
        } else {
            ClientProtocol::Https
        };
        let extra_root_certificates = self
            .ca_certificates(host)?
            .into_iter()
            .map(|data| Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            })
            .collect();
        if let Some(c) = self.client_certificates(host)?.first() {
            warn(format!(
                "{host}: client certificate {c} is not presented (oci-client has no client identity yet)"
            ));
        }
        Ok(oci_client::Client::new(ClientConfig {
            protocol,
            extra_root_certificates,
            platform_resolver: None,
            max_concurrent_download: 4,
            max_concurrent_upload: 4,
            connect_timeout: Some(self.deadlines().connect()),
            read_timeout: Some(self.deadlines().idle()),
            user_agent: concat!("bulkhead/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        }))
    }
}

/// The oci-client reference for `r` at `host`.
pub(crate) fn oci_reference(host: &str, r: &bulkhead_image::Reference) -> oci_client::Reference {
    match (r.digest(), r.tag()) {
        (Some(d), _) => oci_client::Reference::with_digest(host.to_owned(), r.path().to_owned(), d.to_string()),
        (None, t) => oci_client::Reference::with_tag(host.to_owned(), r.path().to_owned(), t.unwrap_or("latest").to_owned()),
    }
}

impl Registries {
    /// One line for a failure of oci-client talking to `host`: the cause, and what to do about the
    /// common ones (a TLS problem, wrong credentials, a registry that speaks no TLS).
    pub(crate) fn describe(&self, host: &str, e: &oci_client::errors::OciDistributionError) -> Error {
        let config_dir = self.dir();
        use oci_client::errors::OciDistributionError as E;
        let mut chain = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            let t = s.to_string();
            if !chain.contains(&t) {
                chain = format!("{chain}: {t}");
            }
            src = s.source();
        }
        let chain = chain.replace('\n', " ");
        let hint = if chain.contains("UnknownIssuer") || chain.contains("unknown issuer") {
            format!(
                "the certificate of {host} is signed by an unknown authority (trust its CA with {}/certs.d/{host}/ca.crt)",
                config_dir.display()
            )
        } else if chain.contains("Expired") || chain.contains("expired") {
            format!("the certificate of {host} has expired")
        } else if chain.contains("NotValidForName") {
            format!("the certificate of {host} is not valid for that name")
        } else if matches!(e, E::AuthenticationFailure(_) | E::UnauthorizedError { .. })
            || chain.contains("401 Unauthorized")
            || chain.contains("code: 401")
        {
            format!("{host}: authentication failed (wrong user name or password, or none given: bulkhead login {host})")
        } else if chain.contains("InvalidContentType") || chain.contains("corrupt message") || chain.contains("wrong version number") {
            format!(
                "{host} does not speak TLS (if it is a plain-HTTP registry, list it under \"insecure\" in {}/registries.json)",
                config_dir.display()
            )
        } else {
            return Error::Registry(format!("{host}: {chain}"));
        };
        Error::Registry(hint)
    }
}

/// A runtime for one command: two workers (downloads are I/O-bound; hashing and unpacking run on
/// the blocking pool).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Registry(format!("starting the network runtime: {e}")))
}

/// Where the store has seen blob `d` (registry host, repository): what lets a push mount it from
/// another repository of the same registry instead of uploading it again. Best effort.
pub(crate) fn seen_in(store: &Store, d: &Digest) -> Vec<(String, String)> {
    std::fs::read_to_string(seen_path(store, d))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(h, r)| (h.to_owned(), r.to_owned())))
        .collect()
}

/// Records that blob `d` is in `repo` at `host` (best effort: only an optimisation depends on it).
pub(crate) fn remember(store: &Store, d: &Digest, host: &str, repo: &str) {
    let mut seen = seen_in(store, d);
    let entry = (host.to_owned(), repo.to_owned());
    if seen.contains(&entry) {
        return;
    }
    seen.insert(0, entry);
    seen.truncate(16);
    let text: String = seen.iter().map(|(h, r)| format!("{h} {r}\n")).collect();
    let _ = bulkhead_image::store::replace_file(&seen_path(store, d), text.as_bytes(), false);
}

fn seen_path(store: &Store, d: &Digest) -> std::path::PathBuf {
    store
        .root()
        .join("distribution")
        .join(format!("{}-{}", d.algorithm().name(), d.hex()))
}

/// The tags of `reference`'s repository (`pull --all-tags`).
pub fn list_tags(regs: &Registries, reference: &bulkhead_image::Reference, warn: &dyn Fn(String)) -> Result<Vec<String>> {
    let host = regs.pull_hosts(reference.domain()).pop().unwrap_or_default();
    let client = regs.client(&host, warn)?;
    let authz = regs.authorizer(&host)?;
    let oref = oci_reference(&host, reference);
    let max = bulkhead_image::limits::Limits::default().max_json_bytes;
    let data = match runtime()?.block_on(manifest::get_bounded_at(
        regs,
        &host,
        &client,
        &oref,
        &authz,
        "tags/list",
        &["application/json"],
        max,
    ))? {
        manifest::Fetched::Found(d) => d,
        manifest::Fetched::NotFound => return Err(Error::Registry(format!("{host}: {}: repository unknown", reference.path()))),
    };
    #[derive(serde::Deserialize)]
    struct Tags {
        #[serde(default)]
        tags: Option<Vec<String>>,
    }
    let t: Tags = serde_json::from_slice(&data).map_err(|e| Error::Registry(format!("{host}: the tag list is not JSON: {e}")))?;
    Ok(t.tags.unwrap_or_default())
}

/// The manifest (or index) `reference` names, as the registry sends it, checked against the
/// reference's digest if it has one; with its digest.
pub fn fetch_manifest(regs: &Registries, reference: &bulkhead_image::Reference, warn: &dyn Fn(String)) -> Result<(Vec<u8>, Digest)> {
    let host = regs.pull_hosts(reference.domain()).pop().unwrap_or_default();
    let client = regs.client(&host, warn)?;
    let authz = regs.authorizer(&host)?;
    let oref = oci_reference(&host, reference);
    let max = bulkhead_image::limits::Limits::default().max_json_bytes;
    let data = match runtime()?.block_on(manifest::get_bounded(regs, &host, &client, &oref, &authz, ACCEPTED_MANIFESTS, max))? {
        manifest::Fetched::Found(d) => d,
        manifest::Fetched::NotFound => return Err(Error::Registry(format!("{host}: {reference}: manifest unknown"))),
    };
    if let Some(want) = reference.digest() {
        want.verify(&data, "manifest digest")?;
    }
    let digest = Digest::sha256_of(&data);
    Ok((data, digest))
}
