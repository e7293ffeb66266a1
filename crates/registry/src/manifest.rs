//! Manifests (and the TUF files' manifests) read with a bound on their size *while* they arrive.
//!
//! oci-client's `pull_manifest_raw` buffers the whole body before anyone can look at its length, so
//! a registry that streams gigabytes as a "manifest" runs the process out of memory. Here oci-client
//! still does the authentication (its token dance, cached per repository), and this one GET is ours:
//! refused at once if `Content-Length` is over the limit, and cut off as soon as what arrived is.

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
    auth: &oci_client::secrets::RegistryAuth,
    accept: &[&str],
    max: u64,
) -> Result<Fetched> {
    let describe = |e: oci_client::errors::OciDistributionError| regs.describe(host, &e);
    // The token dance as a whole gets twice the idle timeout: a token service that answers a
    // byte at a time (each read under the idle timeout) is not waited for.
    let d0 = regs.deadlines();
    let token = tokio::time::timeout(d0.idle() * 2, client.auth(oref, auth, oci_client::RegistryOperation::Pull))
        .await
        .map_err(|_| Error::Registry(format!("{host}: authentication took more than {} s", (d0.idle() * 2).as_secs())))?
        .map_err(describe)?;
    let mut roots = Vec::new();
    for pem in regs.ca_certificates(host)? {
        roots.push(reqwest::Certificate::from_pem(&pem).map_err(|e| Error::Config(format!("a CA for {host}: {e}")))?);
    }
    let d = regs.deadlines();
    let http = crate::login::http_client(roots, &d).map_err(|e| Error::Registry(format!("{host}: {}", crate::login::error_chain(&e))))?;
    let registry = oref.resolve_registry();
    let scheme = if regs.is_insecure(host) { "http" } else { "https" };
    let target = oref.digest().unwrap_or_else(|| oref.tag().unwrap_or("latest"));
    let url = format!("{scheme}://{registry}/v2/{}/manifests/{target}", oref.repository());
    let mut req = http.get(&url).header(reqwest::header::ACCEPT, accept.join(", "));
    match (token, auth) {
        (Some(t), _) => req = req.bearer_auth(t),
        (None, oci_client::secrets::RegistryAuth::Basic(user, pass)) => req = req.basic_auth(user, Some(pass)),
        _ => {}
    }
    let fail = |e: reqwest::Error| Error::Registry(format!("{host}: {}", crate::login::error_chain(&e)));
    let what = format!("{host}: the manifest {target}");
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
                "{host}: the manifest {target} is {len} bytes, over the {max}-byte limit; nothing was read"
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
                "{host}: the manifest {target} is over the {max}-byte limit; stopped reading there"
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
