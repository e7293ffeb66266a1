//! `login`: checks credentials against the registry's base endpoint (`GET /v2/`), following its
//! challenge (Basic, or a Bearer token service as Docker Hub's) the way `docker login` does, and
//! stores them only if the registry accepts them. oci-client has no call for this (it always
//! authenticates for a repository), so this one request uses the same reqwest directly.

use crate::{Error, Registries, Result};

/// Parses a `WWW-Authenticate` challenge (`Bearer realm="...",service="...",scope="..."`), as a
/// registry sends it, into its parameters (keys lower-cased).
pub fn challenge_params(header: &str) -> Vec<(String, String)> {
    let rest = header.split_once(' ').map_or("", |(_, r)| r);
    let mut out = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((key, after)) = s.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.push((key, value.to_owned()));
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// A client for single requests outside the registry API (login's ping, downloads).
pub(crate) fn http_client(extra_roots: Vec<reqwest::Certificate>, d: &crate::deadline::Deadlines) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_certs_merge(extra_roots)
        .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(d.connect())
        // A server that accepts and then says nothing is given up on.
        .read_timeout(d.idle())
        .build()
}

/// An error with all of its causes, on one line.
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

/// The most bytes a token service's answer may have.
pub(crate) const MAX_TOKEN_RESPONSE: usize = 64 << 10;

/// Whether credentials for registry `host` may be sent to the token service `realm` its Bearer
/// challenge names. Cross-host token services are normal (Docker Hub's is on another host), but
/// never over plain HTTP unless the registry itself is configured insecure, and never to another
/// host when the registry is reached without TLS (nothing proved the challenge came from it).
pub(crate) fn realm_allowed(regs: &Registries, host: &str, realm: &str) -> Result<()> {
    let (scheme, rest) = realm
        .split_once("://")
        .ok_or_else(|| Error::Registry(format!("{host}: token service {realm:?} is not a URL")))?;
    let realm_host = rest.split(['/', '?', '#']).next().unwrap_or("").to_ascii_lowercase();
    let insecure = regs.is_insecure(host);
    match scheme.to_ascii_lowercase().as_str() {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return Err(Error::Registry(format!(
                "{host} asks for its credentials to be sent to {realm} over plain HTTP: refused (only a registry listed as insecure may)"
            )))
        }
        other => return Err(Error::Registry(format!("{host}: token service scheme {other:?} refused"))),
    }
    // A registry must not point its clients at their own machine or its link-local neighbours
    // (a cloud's metadata service): the token answer comes back to the registry.
    if is_local(&realm_host) && !is_local(&host.to_ascii_lowercase()) {
        return Err(Error::Registry(format!(
            "{host} names a token service on this machine or its link ({realm_host}): refused"
        )));
    }
    if insecure && realm_host != host.to_ascii_lowercase() {
        return Err(Error::Registry(format!(
            "{host} is reached without TLS and asks for its credentials to be sent to another host, {realm_host}: refused"
        )));
    }
    tracing::debug!(registry = host, realm, "credentials go to this token service");
    Ok(())
}

/// Whether `host[:port]` is this machine (loopback) or a link-local address.
fn is_local(host_port: &str) -> bool {
    let h = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') {
                h
            } else {
                host_port
            }
        }),
    };
    let h = h.trim_end_matches('.');
    if h == "localhost" || h.ends_with(".localhost") {
        return true;
    }
    match h.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_loopback() || a.is_link_local() || a.is_unspecified(),
        Ok(std::net::IpAddr::V6(a)) => {
            a.is_loopback()
                || a.is_unspecified()
                || (a.segments()[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback() || v4.is_link_local())
        }
        Err(_) => false,
    }
}

/// Every `realm` value in a challenge header (several challenges, or a realm given twice, each
/// count: the registry client may follow a different one than a parser that stops at the first).
fn all_realms(header: &str) -> Vec<String> {
    let lower = header.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = lower[at..].find("realm=") {
        let start = at + i + "realm=".len();
        let rest = &header[start..];
        let value = match rest.strip_prefix('"') {
            Some(q) => q.split('"').next().unwrap_or(""),
            None => rest.split([',', ' ']).next().unwrap_or(""),
        };
        out.push(value.to_owned());
        at = start;
    }
    out
}

/// Checks every token service a challenge header names (see [`realm_allowed`]).
fn challenge_allowed(regs: &Registries, host: &str, header: &str) -> Result<()> {
    if !header.to_ascii_lowercase().contains("bearer") {
        tracing::debug!(registry = host, "credentials go to the registry itself (Basic)");
        return Ok(());
    }
    let realms = all_realms(header);
    if realms.is_empty() {
        return Err(Error::Registry(format!("{host}: a Bearer challenge without a realm")));
    }
    realms.iter().try_for_each(|r| realm_allowed(regs, host, r))
}

/// Checks `username`/`password` with `host`, then stores them.
pub fn login(regs: &Registries, host: &str, username: &str, password: &str, warn: &dyn Fn(String)) -> Result<()> {
    let scheme = if regs.is_insecure(host) {
        warn(format!("{host} is configured as insecure: sending credentials over plain HTTP"));
        "http"
    } else {
        "https"
    };
    let mut certs = Vec::new();
    for pem in regs.ca_certificates(host)? {
        certs.push(reqwest::Certificate::from_pem(&pem).map_err(|e| Error::Config(format!("a CA for {host}: {e}")))?);
    }
    let client = http_client(certs, &regs.deadlines()).map_err(|e| Error::Registry(format!("{host}: {e}")))?;
    let fail = |e: reqwest::Error| regs.describe(host, &oci_client::errors::OciDistributionError::GenericError(Some(error_chain(&e))));
    let denied = || Error::Registry(format!("{host}: login refused: wrong user name or password"));
    crate::runtime()?.block_on(async {
        let url = format!("{scheme}://{host}/v2/");
        let d = regs.deadlines();
        let first = d
            .chunk(client.get(&url).send(), &format!("{host}: GET /v2/"))
            .await
            .map_err(Error::Registry)?
            .map_err(fail)?;
        if first.status().is_success() {
            return Ok(());
        }
        if first.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Err(Error::Registry(format!("{host}: GET /v2/ answered {}", first.status())));
        }
        let challenge = first
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if challenge.to_ascii_lowercase().starts_with("bearer") {
            let params = challenge_params(&challenge);
            let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let realm = get("realm").ok_or_else(|| Error::Registry(format!("{host}: a Bearer challenge without a realm")))?;
            challenge_allowed(regs, host, &challenge)?;
            let mut query = vec![("account", username.to_owned())];
            if let Some(service) = get("service") {
                query.push(("service", service));
            }
            let what = format!("{host}: the token service {realm}");
            // The whole answer within twice the idle timeout, as for pulls: one that trickles is
            // not waited for.
            let within = d.idle() * 2;
            return tokio::time::timeout(within, async {
                let r = d
                    .chunk(client.get(&realm).query(&query).basic_auth(username, Some(password)).send(), &what)
                    .await
                    .map_err(Error::Registry)?
                    .map_err(fail)?;
                if !r.status().is_success() {
                    return Err(denied());
                }
                // The token answer is read no further than a token can be long.
                let mut r = r;
                let mut n = 0usize;
                while let Some(c) = d.chunk(r.chunk(), &what).await.map_err(Error::Registry)?.map_err(fail)? {
                    n += c.len();
                    if n > MAX_TOKEN_RESPONSE {
                        return Err(Error::Registry(format!("{what} answered more than {MAX_TOKEN_RESPONSE} bytes")));
                    }
                }
                Ok(())
            })
            .await
            .map_err(|_| Error::Registry(format!("{what}: no whole answer within {} s", within.as_secs())))?;
        }
        let r = client.get(&url).basic_auth(username, Some(password)).send().await.map_err(fail)?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(denied())
        }
    })?;
    regs.store_credentials(host, username, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_where_they_may() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("registries.json"), r#"{"insecure": ["plain.example:5000"]}"#).unwrap();
        let regs = Registries::load(d.path()).unwrap();
        // A TLS registry: any https token service (Docker Hub's is on another host), no http one.
        realm_allowed(&regs, "registry.example", "https://auth.example/token").unwrap();
        let e = realm_allowed(&regs, "registry.example", "http://registry.example/token")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain HTTP: refused"), "{e}");
        assert!(realm_allowed(&regs, "registry.example", "ftp://x/token").is_err());
        // A registry reached without TLS: its own host only.
        realm_allowed(&regs, "plain.example:5000", "http://plain.example:5000/token").unwrap();
        let e = realm_allowed(&regs, "plain.example:5000", "https://elsewhere.example/token")
            .unwrap_err()
            .to_string();
        assert!(e.contains("another host"), "{e}");
        // Nobody points a remote registry's clients at their own machine or its link.
        for realm in [
            "https://127.0.0.1:8080/token",
            "https://localhost/token",
            "https://[::1]:443/t",
            "https://169.254.169.254/latest/meta-data",
            "https://[fe80::1]/t",
            "https://[::ffff:127.0.0.1]/t",
            "https://0.0.0.0/t",
        ] {
            let e = realm_allowed(&regs, "registry.example", realm).unwrap_err().to_string();
            assert!(e.contains("on this machine or its link"), "{realm}: {e}");
        }
        // A registry on loopback may have its token service there too.
        realm_allowed(&regs, "127.0.0.1:5000", "https://127.0.0.1:5001/token").unwrap();
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = challenge_params(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(p[0], ("realm".into(), "https://auth.docker.io/token".into()));
        assert_eq!(p[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(p[2].1, "repository:library/alpine:pull");
        assert_eq!(
            challenge_params(r#"Basic realm="Registry Realm""#),
            vec![("realm".into(), "Registry Realm".into())]
        );
    }
}
