//! Catalogers: which files prove which packages, and how to read them.
//!
//! Every parser here reads hostile input (an image is outside input): sizes are capped before
//! reading, nothing recurses without a depth limit, and anything unreadable becomes a warning.

pub mod apk;
pub mod binary;
pub mod dpkg;
pub mod java;
pub mod npm;
pub mod python;
pub mod rpm;

use crate::{Distro, Ecosystem, Package};

/// Package databases and metadata files larger than this are not read (the biggest real dpkg status
/// files are a few MiB).
pub const MAX_METADATA: u64 = 64 << 20;
/// Binaries larger than this are not examined.
pub const MAX_BINARY: u64 = 1 << 30;

/// What kind of evidence a file is, decided from its path (and, for binaries, its mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Claim {
    OsRelease,
    DpkgStatus,
    /// `var/lib/dpkg/status.d/NAME` (distroless images): one package per file.
    DpkgStatusD,
    /// `var/lib/dpkg/info/NAME.list`: the files a package owns.
    DpkgFiles,
    /// `var/lib/dpkg/status.d/NAME.md5sums`: checksum and path of each file a package owns.
    DpkgMd5sums,
    Apk,
    /// rpm's SQLite database.
    RpmDb,
    /// `*.dist-info/METADATA`, `*.egg-info/PKG-INFO`, or an `*.egg-info` file.
    Python,
    /// `node_modules/NAME/package.json` or `node_modules/@SCOPE/NAME/package.json`.
    NpmPackage,
    /// `package-lock.json` outside node_modules.
    NpmLock,
    /// `*.jar`, `*.war`, `*.ear`.
    Java,
    /// An executable or shared object: read for Go build info, cargo-auditable data and version strings.
    Elf,
}

impl Claim {
    /// Whether a file of this kind is read whole into memory (else it is mapped).
    pub fn is_metadata(self) -> bool {
        !matches!(self, Claim::Elf | Claim::Java)
    }
}

/// Decide what a regular file at `path` (relative to the root, no leading `/`) is evidence of.
pub fn claim(path: &str, mode: u32, size: u64) -> Option<Claim> {
    let name = path.rsplit('/').next().unwrap_or(path);
    match path {
        "etc/os-release" | "usr/lib/os-release" => return Some(Claim::OsRelease),
        "var/lib/dpkg/status" => return Some(Claim::DpkgStatus),
        "lib/apk/db/installed" => return Some(Claim::Apk),
        "var/lib/rpm/rpmdb.sqlite" | "usr/lib/sysimage/rpm/rpmdb.sqlite" => return Some(Claim::RpmDb),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("var/lib/dpkg/status.d/") {
        if rest.contains('/') {
            return None;
        }
        // Distroless images have no .list files: the checksum lists name the files instead.
        return Some(if rest.ends_with(".md5sums") {
            Claim::DpkgMd5sums
        } else {
            Claim::DpkgStatusD
        });
    }
    if let Some(rest) = path.strip_prefix("var/lib/dpkg/info/") {
        return (!rest.contains('/') && rest.ends_with(".list")).then_some(Claim::DpkgFiles);
    }
    if name == "METADATA" && parent_name(path).is_some_and(|p| p.ends_with(".dist-info")) {
        return Some(Claim::Python);
    }
    if (name == "PKG-INFO" && parent_name(path).is_some_and(|p| p.ends_with(".egg-info"))) || name.ends_with(".egg-info") {
        return Some(Claim::Python);
    }
    if name == "package.json" {
        let parent = path.strip_suffix("/package.json")?;
        let mut it = parent.rsplit('/');
        let last = it.next()?;
        let above = it.next();
        let in_modules = above == Some("node_modules") || (above.is_some_and(|a| a.starts_with('@')) && it.next() == Some("node_modules"));
        return (in_modules && !last.starts_with('.')).then_some(Claim::NpmPackage);
    }
    if name == "package-lock.json" && !path.contains("node_modules/") {
        return Some(Claim::NpmLock);
    }
    if name.ends_with(".jar") || name.ends_with(".war") || name.ends_with(".ear") {
        return Some(Claim::Java);
    }
    if (64..=MAX_BINARY).contains(&size) && (mode & 0o111 != 0 || name.contains(".so")) {
        return Some(Claim::Elf);
    }
    None
}

fn parent_name(path: &str) -> Option<&str> {
    let (parent, _) = path.rsplit_once('/')?;
    Some(parent.rsplit('/').next().unwrap_or(parent))
}

/// What one file says.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    /// Packages, with `path`, `layer`, `layer_digest` and `purl` still to be filled in.
    pub packages: Vec<Package>,
    /// Files (absolute) that an OS package owns, from dpkg's .list files and apk's database.
    pub owned: Vec<String>,
    pub distro: Option<Distro>,
    /// Problems that did not stop the parse (a bad nested archive, say).
    pub warnings: Vec<String>,
    /// What was left unread for a limit, so that packages may be missing: the scan gate refuses
    /// an image whose scan is incomplete.
    pub incomplete: Vec<String>,
}

/// A package with only what a cataloger knows filled in.
pub fn package(name: &str, version: &str, ecosystem: Ecosystem, found_by: &str) -> Package {
    Package {
        name: name.to_string(),
        version: version.to_string(),
        ecosystem,
        source_name: None,
        source_version: None,
        arch: None,
        license: None,
        found_by: found_by.to_string(),
        path: String::new(),
        layer: 0,
        layer_digest: String::new(),
        purl: String::new(),
    }
}

/// Read a file of the kind `claim` from its bytes. `path` is absolute in the image.
pub fn parse(claim: Claim, path: &str, data: &[u8]) -> Result<Parsed, String> {
    match claim {
        Claim::OsRelease => Ok(Parsed {
            distro: parse_os_release(data),
            ..Default::default()
        }),
        Claim::DpkgStatus | Claim::DpkgStatusD => dpkg::parse_status(data),
        Claim::DpkgFiles => Ok(Parsed {
            owned: dpkg::parse_list(data, crate::walk::MAX_OWNED_PER_FILE).0,
            ..Default::default()
        }),
        Claim::DpkgMd5sums => Ok(Parsed {
            owned: dpkg::parse_md5sums(data, crate::walk::MAX_OWNED_PER_FILE).0,
            ..Default::default()
        }),
        Claim::Apk => apk::parse_installed(data),
        Claim::RpmDb => rpm::parse_sqlite(data, None),
        Claim::Python => python::parse_metadata(data),
        Claim::NpmPackage => npm::parse_package_json(data),
        Claim::NpmLock => npm::parse_lock(data),
        Claim::Java => java::parse_archive(path, data),
        Claim::Elf => binary::parse_binary(path, data),
    }
}

/// `KEY=value` lines, values optionally quoted.
pub fn parse_os_release(data: &[u8]) -> Option<Distro> {
    let text = String::from_utf8_lossy(data);
    let mut d = Distro::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
        match k.trim() {
            "ID" => d.id = v,
            "VERSION_ID" => d.version_id = v,
            "PRETTY_NAME" => d.pretty_name = Some(v),
            _ => {}
        }
    }
    (!d.id.is_empty()).then_some(d)
}

/// Paragraphs of `Key: value` lines separated by blank lines, continuation lines starting with
/// a space or tab (dpkg status, apk's database uses single letters and no continuations).
pub fn paragraphs(text: &str) -> impl Iterator<Item = Vec<(&str, &str)>> {
    text.split("\n\n").filter_map(|para| {
        let mut fields = Vec::new();
        for line in para.lines() {
            if line.starts_with(' ') || line.starts_with('\t') || line.is_empty() {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim(), v.trim()));
            }
        }
        (!fields.is_empty()).then_some(fields)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_follow_the_paths_package_managers_use() {
        assert_eq!(claim("var/lib/dpkg/status", 0o644, 10), Some(Claim::DpkgStatus));
        assert_eq!(claim("var/lib/dpkg/status.d/base", 0o644, 10), Some(Claim::DpkgStatusD));
        assert_eq!(claim("var/lib/dpkg/status.d/base.md5sums", 0o644, 10), Some(Claim::DpkgMd5sums));
        assert_eq!(claim("var/lib/dpkg/info/bash.list", 0o644, 10), Some(Claim::DpkgFiles));
        assert_eq!(
            claim("usr/lib/python3/dist-packages/requests-2.19.1.dist-info/METADATA", 0o644, 10),
            Some(Claim::Python)
        );
        assert_eq!(
            claim("usr/lib/python3/dist-packages/six-1.16.0.egg-info", 0o644, 10),
            Some(Claim::Python)
        );
        assert_eq!(claim("app/node_modules/lodash/package.json", 0o644, 10), Some(Claim::NpmPackage));
        assert_eq!(
            claim("app/node_modules/@babel/core/package.json", 0o644, 10),
            Some(Claim::NpmPackage)
        );
        assert_eq!(claim("app/node_modules/lodash/fp/package.json", 0o644, 10), None);
        assert_eq!(claim("app/package.json", 0o644, 10), None);
        assert_eq!(claim("app/package-lock.json", 0o644, 10), Some(Claim::NpmLock));
        assert_eq!(claim("usr/bin/ls", 0o755, 100_000), Some(Claim::Elf));
        assert_eq!(claim("usr/lib/x86_64-linux-gnu/libssl.so.3", 0o644, 100_000), Some(Claim::Elf));
        assert_eq!(claim("etc/passwd", 0o644, 1000), None);
        assert_eq!(claim("var/lib/rpm/rpmdb.sqlite", 0o644, 1000), Some(Claim::RpmDb));
        assert_eq!(claim("opt/app.jar", 0o644, 1000), Some(Claim::Java));
    }

    #[test]
    fn os_release_values_may_be_quoted() {
        let d = parse_os_release(b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n").unwrap();
        assert_eq!((d.id.as_str(), d.version_id.as_str()), ("debian", "12"));
        assert_eq!(d.osv_release().as_deref(), Some("12"));
        let a = parse_os_release(b"ID=alpine\nVERSION_ID=3.19.1\n").unwrap();
        assert_eq!(a.osv_release().as_deref(), Some("v3.19"));
    }
}
