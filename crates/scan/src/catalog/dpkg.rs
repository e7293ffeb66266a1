//! dpkg: `var/lib/dpkg/status`, `status.d/` (distroless), and the `.list` files of owned paths.

use super::{package, paragraphs, Parsed};
use crate::Ecosystem;

/// Every package dpkg considers present (any state but `not-installed` and `config-files`, the
/// same set `dpkg-query -W` lists), with its source package and version.
pub fn parse_status(data: &[u8]) -> Result<Parsed, String> {
    // One stray byte must not hide every package: read what is not UTF-8 as U+FFFD.
    let text = String::from_utf8_lossy(data);
    let mut out = Parsed::default();
    if std::str::from_utf8(data).is_err() {
        out.warnings
            .push("dpkg status is not UTF-8; read with the bad bytes replaced".into());
    }
    let mut nameless = 0usize;
    for fields in paragraphs(&text) {
        if out.packages.len() == crate::walk::MAX_PACKAGES_PER_FILE {
            out.incomplete.push(format!(
                "more than {} packages in one status file; the rest is not read",
                crate::walk::MAX_PACKAGES_PER_FILE
            ));
            break;
        }
        let get = |k: &str| fields.iter().find(|(f, _)| f.eq_ignore_ascii_case(k)).map(|(_, v)| *v);
        if let Some(status) = get("Status") {
            if matches!(status.split_whitespace().last(), Some("not-installed" | "config-files")) {
                continue;
            }
        }
        let (Some(name), Some(version)) = (get("Package"), get("Version")) else {
            nameless += 1;
            continue;
        };
        let mut p = package(name, version, Ecosystem::Debian, "dpkg");
        p.arch = get("Architecture").map(str::to_string);
        let (src, src_version) = match get("Source") {
            Some(s) => match s.split_once('(') {
                Some((n, v)) => (n.trim(), v.trim().trim_end_matches(')').trim()),
                None => (s.trim(), version),
            },
            None => (name, version),
        };
        p.source_name = Some(src.to_string());
        p.source_version = Some(src_version.to_string());
        out.packages.push(p);
    }
    if nameless > 0 {
        // dpkg writes both fields in every stanza: one without is a package not known.
        out.incomplete
            .push(format!("{nameless} stanzas without a Package or Version field"));
    }
    Ok(out)
}

/// One absolute path per line; at most `max` of them, and whether there were more.
pub fn parse_list(data: &[u8], max: usize) -> (Vec<String>, bool) {
    capped(
        String::from_utf8_lossy(data)
            .lines()
            .filter(|l| l.starts_with('/'))
            .map(str::to_string),
        max,
    )
}

/// `md5sum  relative/path` per line; at most `max` paths, and whether there were more.
pub fn parse_md5sums(data: &[u8], max: usize) -> (Vec<String>, bool) {
    capped(
        String::from_utf8_lossy(data)
            .lines()
            .filter_map(|l| l.split_once("  ").map(|(_, p)| format!("/{}", p.trim_start_matches('/')))),
        max,
    )
}

fn capped(mut it: impl Iterator<Item = String>, max: usize) -> (Vec<String>, bool) {
    let out: Vec<String> = it.by_ref().take(max).collect();
    let more = it.next().is_some();
    (out, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_and_state_are_read() {
        let status = b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u4\nDescription: GNU C\n Library\n\n\
Package: libssl3\nStatus: install ok installed\nSource: openssl (3.0.11-1~deb12u2)\nVersion: 3.0.11-1~deb12u2+b1\n\n\
Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\n";
        let p = parse_status(status).unwrap().packages;
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].source_name.as_deref(), p[0].source_version.as_deref()),
            (Some("glibc"), Some("2.36-9+deb12u4"))
        );
        assert_eq!(
            (p[1].source_name.as_deref(), p[1].source_version.as_deref()),
            (Some("openssl"), Some("3.0.11-1~deb12u2"))
        );
        assert_eq!(
            (p[2].source_name.as_deref(), p[2].source_version.as_deref()),
            (Some("bash"), Some("5.2.15-2+b2"))
        );
    }

    #[test]
    fn md5sums_name_owned_files() {
        assert_eq!(
            parse_md5sums(b"0123abcd  usr/lib/x86_64-linux-gnu/libssl.so.3\nbad line\n", 10).0,
            ["/usr/lib/x86_64-linux-gnu/libssl.so.3"]
        );
    }

    #[test]
    fn a_status_file_over_the_cap_is_incomplete() {
        let mut data = "Package: junk\nVersion: 1\n\n".repeat(crate::walk::MAX_PACKAGES_PER_FILE);
        data.push_str("Package: libssl3\nVersion: 3.0.0\n");
        let out = parse_status(data.as_bytes()).unwrap();
        assert_eq!(out.packages.len(), crate::walk::MAX_PACKAGES_PER_FILE);
        assert_eq!(out.incomplete.len(), 1, "{:?}", out.incomplete);
    }

    #[test]
    fn garbage_is_no_package() {
        assert!(parse_status(b"\xff\xfe").unwrap().packages.is_empty());
        // One stray byte does not hide the packages around it.
        let one = parse_status(b"Package: a\nVersion: 1\nDescription: \xff\n\nPackage: libssl3\nVersion: 3.0\n").unwrap();
        assert_eq!(one.packages.len(), 2);
        assert!(parse_status(b"Package: x\n\nVersion\n: :\n").unwrap().packages.is_empty());
    }
}
