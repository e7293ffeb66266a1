//! Manifests (and the TUF files' manifests) read with a bound on their size *while* they arrive.
//!
//! oci-client's `pull_manifest_raw` buffers the whole body before anyone can look at its length, so
//! a registry that streams gigabytes as a "manifest" runs the process out of memory. This GET is
//! ours (authorized by [`crate::auth`]): refused at once if `Content-Length` is over the limit, and
//! cut off as soon as what arrived is.

use futures_util::StreamExt;

use crate::{Error, Registries, Result};

/// A manifest as the registry sent it, or the registry's word that there is none.
pub(crate) enum Fetched {
    Found(Vec<u8>),
    NotFound,
}

/// GETs the manifest `oref` names (by digest if it has one), accepting `accept`, reading at most
/// `max` bytes of body.
pub(crate) async fn get_bounded(
    regs: &Registries,
    host: &str,
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    authz: &crate::auth::Authorizer<'_>,
    accept: &[&str],
    max: u64,
) -> Result<Fetched> {
    let target = oref.digest().unwrap_or_else(|| oref.tag().unwrap_or("latest"));
    get_bounded_at(regs, host, client, oref, authz, &format!("manifests/{target}"), accept, max).await
}

/// GETs `/v2/<repository>/<path>` of `oref`'s repository, reading at most `max` bytes of body.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn get_bounded_at(
    regs: &Registries,
    host: &str,
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    authz: &crate::auth::Authorizer<'_>,
    path: &str,
    accept: &[&str],
    max: u64,
) -> Result<Fetched> {
    let describe = |e: oci_client::errors::OciDistributionError| regs.describe(host, &e);
    let header = authz.authorize(client, oref, oci_client::RegistryOperation::Pull).await?;
    let d = regs.deadlines();
    let http = authz.http();
    let registry = oref.resolve_registry();
    let scheme = if regs.is_insecure(host) { "http" } else { "https" };
    let noun = match path.strip_prefix("manifests/") {
        Some(t) => format!("the manifest {t}"),
        None => path.to_owned(),
    };
    let url = format!("{scheme}://{registry}/v2/{}/{path}", oref.repository());
    let req = header.apply(http.get(&url).header(reqwest::header::ACCEPT, accept.join(", ")));
    let fail = |e: reqwest::Error| Error::Registry(format!("{host}: {}", crate::login::error_chain(&e)));
    let what = format!("{host}: {noun}");
    let resp = d.chunk(req.send(), &what).await.map_err(Error::Registry)?.map_err(fail)?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(Fetched::NotFound);
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(describe(oci_client::errors::OciDistributionError::UnauthorizedError {
            url: url.clone(),
        }));
    }
    if let Some(len) = resp.content_length() {
        if len > max {
            return Err(Error::Registry(format!(
                "{host}: {noun} is {len} bytes, over the {max}-byte limit; nothing was read"
            )));
        }
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    let mut rate = d.rate();
    while let Some(chunk) = d.chunk(stream.next(), &what).await.map_err(Error::Registry)? {
        let chunk = chunk.map_err(fail)?;
        rate.on(chunk.len(), &what).map_err(Error::Registry)?;
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(Error::Registry(format!(
                "{host}: {noun} is over the {max}-byte limit; stopped reading there"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        if text.contains("MANIFEST_UNKNOWN") || text.contains("NAME_UNKNOWN") {
            return Ok(Fetched::NotFound);
        }
        return Err(Error::Registry(format!("{host}: {url}: {status}: {}", text.trim())));
    }
    Ok(Fetched::Found(body))
}
