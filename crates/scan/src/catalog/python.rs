//! Python: the core metadata of installed distributions (`METADATA`, `PKG-INFO`).

use super::{package, Parsed};
use crate::Ecosystem;

/// `Name:` and `Version:` from the header block (RFC 822 style, ends at the first blank line).
pub fn parse_metadata(data: &[u8]) -> Result<Parsed, String> {
    let text = String::from_utf8_lossy(data);
    let (mut name, mut version, mut license) = (None, None, None);
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "name" if name.is_none() => name = Some(v.trim().to_string()),
            "version" if version.is_none() => version = Some(v.trim().to_string()),
            "license" if license.is_none() && !v.trim().is_empty() && v.trim() != "UNKNOWN" => license = Some(v.trim().to_string()),
            "license-expression" => license = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let (Some(name), Some(version)) = (name, version) else {
        return Err("no Name or Version in the metadata".into());
    };
    if name.is_empty() || version.is_empty() {
        return Err("empty Name or Version in the metadata".into());
    }
    let mut p = package(&name, &version, Ecosystem::PyPI, "python");
    p.license = license.filter(|l| l.len() < 200);
    Ok(Parsed {
        packages: vec![p],
        ..Default::default()
    })
}

/// The name PyPI and OSV compare (PEP 503): lower case, runs of `-`, `_` and `.` become one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_only() {
        let p = super::parse_metadata(b"Metadata-Version: 2.1\nName: requests\nVersion: 2.19.1\nLicense: Apache 2.0\n\nName: not-this\n")
            .unwrap();
        assert_eq!(
            (p.packages[0].name.as_str(), p.packages[0].version.as_str()),
            ("requests", "2.19.1")
        );
        assert!(super::parse_metadata(b"Metadata-Version: 2.1\n").is_err());
        assert_eq!(super::normalize("Zope.Interface__x"), "zope-interface-x");
    }
}
