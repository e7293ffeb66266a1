//! Image references, parsed and normalised the way Docker does (`alpine` is
//! `docker.io/library/alpine:latest`), following the grammar of distribution/reference.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry that short names refer to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag a reference without tag or digest gets.
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A fully normalised image reference: registry domain, repository path, and a tag, a digest, or both.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses `input`, normalising short names; a reference with neither tag nor digest gets `latest`.
    pub fn parse(input: &str) -> Result<Self> {
        let mut r = Self::parse_name_only(input)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.into());
        }
        Ok(r)
    }

    /// Parses `input` without adding a default tag.
    pub fn parse_name_only(input: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidReference {
            input: input.into(),
            reason: reason.into(),
        };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?)),
            None => (input, None),
        };
        // The tag is after the last ':' that comes after the last '/', so `host:5000/a` has no tag.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(bad("invalid tag (allowed: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127})"));
            }
        }
        if name.is_empty() {
            return Err(bad("missing repository name"));
        }
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("a 64-character hex string is an image id, not a repository name"));
        }
        let (domain, path) = split_domain(name);
        if !valid_domain(&domain) {
            return Err(bad("invalid registry host"));
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(bad("invalid repository name"));
        }
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(bad("repository name longer than 255 characters"));
        }
        Ok(Reference {
            domain,
            path,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry, e.g. `library/alpine`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `domain/path` spelled one way for every spelling that reaches the same repository: the host
    /// lower-cased (DNS names are case-insensitive), the default HTTPS port dropped, and Docker
    /// Hub's aliases (`index.docker.io`, `registry-1.docker.io`, `registry.hub.docker.com`) folded
    /// into `docker.io`, whose one-component names live under `library/`. Policies and trust state
    /// are keyed by this, so that no spelling reaches a covered repository unverified.
    pub fn canonical_repository(&self) -> String {
        canonical_repository(&self.domain, &self.path)
    }

    /// `domain/path`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The name as Docker shows it: `alpine` for `docker.io/library/alpine`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path.strip_prefix(OFFICIAL_REPO_PREFIX).unwrap_or(&self.path).to_owned()
        } else {
            self.name()
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Self> {
        if !valid_tag(tag) {
            return Err(Error::InvalidReference {
                input: tag.into(),
                reason: "invalid tag".into(),
            });
        }
        Ok(Reference {
            tag: Some(tag.into()),
            digest: None,
            ..self.clone()
        })
    }

    /// The same repository pinned to a digest, without tag.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase()) => {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN.to_owned()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path
    };
    (domain, path)
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*` where separator is `.`, `_`, `__` or one or more `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        // [IPv6] or [IPv6]:port
        let Some((ip, after)) = rest.split_once(']') else { return false };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        (None, port)
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    match host {
        None => true,
        Some(h) => {
            !h.is_empty()
                && h.split('.').all(|c| {
                    let b = c.as_bytes();
                    !b.is_empty()
                        && b[0].is_ascii_alphanumeric()
                        && b[b.len() - 1].is_ascii_alphanumeric()
                        && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
                })
        }
    }
}

/// A registry host as one spelling: lower case, an IP literal in its standard form, the port as a
/// number (`0443` is 443) and dropped when it is 443 or 80. Folding both default ports only ever
/// makes a rule cover more: metadata is still fetched from, and verified against, the registry
/// that the reference names.
fn canonical_host(domain: &str) -> String {
    let lower = domain.to_ascii_lowercase();
    let (host, port) = match lower.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) => {
            (h.to_owned(), p.trim_start_matches('0').parse::<u32>().ok().or(Some(0)))
        }
        _ => (lower.clone(), None),
    };
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().map_or(host.clone(), |a| format!("[{a}]")),
        None => host.parse::<std::net::Ipv4Addr>().map_or(host.clone(), |a| a.to_string()),
    };
    match port {
        None | Some(443) | Some(80) => host,
        Some(p) => format!("{host}:{p}"),
    }
}

/// See [`Reference::canonical_repository`]; also for a repository written in a policy by hand
/// (`host[:port]/path`, or a host alone).
pub fn canonical_repository(domain: &str, path: &str) -> String {
    let mut host = canonical_host(domain);
    if matches!(
        host.as_str(),
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
    ) {
        host = DEFAULT_DOMAIN.to_owned();
    }
    if path.is_empty() {
        return host;
    }
    if host == DEFAULT_DOMAIN && !path.contains('/') {
        return format!("{host}/library/{path}");
    }
    format!("{host}/{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(norm("index.docker.io/library/busybox"), "docker.io/library/busybox:latest");
        let canon = |s: &str| Reference::parse(s).unwrap().canonical_repository();
        for spelling in [
            "registry.example/app",
            "REGISTRY.EXAMPLE/app",
            "Registry.Example:443/app:1",
            "registry.example:443/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(canon(spelling), "registry.example/app", "{spelling}");
        }
        assert_eq!(canon("registry.example:5000/app"), "registry.example:5000/app");
        for spelling in ["registry.example:0443/app", "REGISTRY.example:00443/app", "registry.example:80/app"] {
            assert_eq!(canon(spelling), "registry.example/app", "{spelling}");
        }
        assert_eq!(canon("registry.example:05000/app"), "registry.example:5000/app");
        assert_eq!(canonical_repository("[0:0::1]:5000", "app"), "[::1]:5000/app");
        assert_eq!(canonical_repository("[::1]", "app"), "[::1]/app");
        for spelling in [
            "x",
            "docker.io/library/x",
            "registry-1.docker.io/library/x",
            "index.docker.io/x",
            "REGISTRY.HUB.DOCKER.COM/library/x",
        ] {
            assert_eq!(canon(spelling), "docker.io/library/x", "{spelling}");
        }
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("host:5000/a/b:v1"), "host:5000/a/b:v1");
        assert_eq!(norm("[::1]:5000/a"), "[::1]:5000/a:latest");
        assert_eq!(norm("[::1]/a"), "[::1]/a:latest");
        assert!(Reference::parse("[::1]x/a").is_err());
        assert!(Reference::parse("[zz]:5000/a").is_err());
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(norm(&format!("host:5000/a/b@{d}")), format!("host:5000/a/b@{d}"));
        assert_eq!(norm(&format!("a:t@{d}")), format!("docker.io/library/a:t@{d}"));
    }

    #[test]
    fn familiar_names() {
        assert_eq!(Reference::parse("alpine").unwrap().familiar_name(), "alpine");
        assert_eq!(Reference::parse("u/app").unwrap().familiar_name(), "u/app");
        assert_eq!(Reference::parse("q.io/app").unwrap().familiar_name(), "q.io/app");
    }

    #[test]
    fn refuses_invalid_references() {
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "alpine:-x",
            "a//b",
            "a/b/",
            "-a",
            "a@sha256:xyz",
            "host:port/a",
            "a:b:c",
            &"a".repeat(300),
            &"f".repeat(64),
            "a..b",
            "a/-b",
            "a:t@md5:abc",
            "ho_st.io/a",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn separators() {
        assert!(Reference::parse("a__b.c-d---e").is_ok());
        assert!(Reference::parse("a___b").is_err());
    }
}
