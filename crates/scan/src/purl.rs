//! Package URLs (<https://github.com/package-url/purl-spec>).

use crate::{Distro, Ecosystem, Package};

/// Percent-encode everything but the characters the purl spec leaves unencoded.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn for_package(p: &Package, distro: Option<&Distro>) -> String {
    let v = encode(&p.version);
    let distro_q = distro.map(|d| format!("distro={}-{}", encode(&d.id), encode(&d.version_id)));
    let mut quals: Vec<String> = Vec::new();
    let base = match p.ecosystem {
        Ecosystem::Debian | Ecosystem::Ubuntu | Ecosystem::Alpine | Ecosystem::Rpm => {
            let (ty, ns) = match p.ecosystem {
                Ecosystem::Debian => ("deb", "debian"),
                Ecosystem::Ubuntu => ("deb", "ubuntu"),
                Ecosystem::Alpine => ("apk", "alpine"),
                _ => ("rpm", distro.map(|d| d.id.as_str()).unwrap_or("redhat")),
            };
            if let Some(a) = &p.arch {
                quals.push(format!("arch={}", encode(a)));
            }
            quals.extend(distro_q);
            if let (Some(src), Some(sv)) = (&p.source_name, &p.source_version) {
                if src != &p.name || sv != &p.version {
                    let upstream = if sv == &p.version { src.clone() } else { format!("{src}@{sv}") };
                    quals.push(format!("upstream={}", encode(&upstream)));
                }
            }
            format!("pkg:{ty}/{}/{}@{v}", encode(ns), encode(&p.name))
        }
        Ecosystem::PyPI => format!("pkg:pypi/{}@{v}", encode(&crate::catalog::python::normalize(&p.name))),
        Ecosystem::Npm => match p.name.split_once('/') {
            Some((scope, name)) if scope.starts_with('@') => format!("pkg:npm/{}/{}@{v}", encode(scope), encode(name)),
            _ => format!("pkg:npm/{}@{v}", encode(&p.name)),
        },
        Ecosystem::Go => {
            let path: Vec<String> = p.name.split('/').map(encode).collect();
            format!("pkg:golang/{}@{v}", path.join("/"))
        }
        Ecosystem::CratesIo => format!("pkg:cargo/{}@{v}", encode(&p.name)),
        Ecosystem::Maven => match p.name.split_once(':') {
            Some((g, a)) => format!("pkg:maven/{}/{}@{v}", encode(g), encode(a)),
            None => format!("pkg:maven/{}@{v}", encode(&p.name)),
        },
        Ecosystem::Binary => format!("pkg:generic/{}@{v}", encode(&p.name)),
    };
    if quals.is_empty() {
        base
    } else {
        format!("{base}?{}", quals.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::package;

    #[test]
    fn purls() {
        let mut p = package("libssl3", "3.0.11-1~deb12u2+b1", Ecosystem::Debian, "dpkg");
        p.arch = Some("amd64".into());
        p.source_name = Some("openssl".into());
        p.source_version = Some("3.0.11-1~deb12u2".into());
        let d = Distro {
            id: "debian".into(),
            version_id: "12".into(),
            pretty_name: None,
        };
        assert_eq!(
            for_package(&p, Some(&d)),
            "pkg:deb/debian/libssl3@3.0.11-1~deb12u2%2Bb1?arch=amd64&distro=debian-12&upstream=openssl%403.0.11-1~deb12u2"
        );
        assert_eq!(
            for_package(&package("Zope.Interface", "5.0", Ecosystem::PyPI, "python"), None),
            "pkg:pypi/zope-interface@5.0"
        );
        assert_eq!(
            for_package(&package("@babel/core", "7.0.0", Ecosystem::Npm, "npm"), None),
            "pkg:npm/%40babel/core@7.0.0"
        );
        assert_eq!(
            for_package(&package("golang.org/x/net", "v0.7.0", Ecosystem::Go, "go-binary"), None),
            "pkg:golang/golang.org/x/net@v0.7.0"
        );
        assert_eq!(
            for_package(&package("bash", "1:5.2", Ecosystem::Debian, "dpkg"), None),
            "pkg:deb/debian/bash@1%3A5.2"
        );
    }
}
