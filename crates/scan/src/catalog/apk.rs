//! apk: `lib/apk/db/installed`, one paragraph of single-letter fields per package.

use super::{package, Parsed};
use crate::Ecosystem;

pub fn parse_installed(data: &[u8]) -> Result<Parsed, String> {
    let text = std::str::from_utf8(data).map_err(|e| format!("apk database is not UTF-8: {e}"))?;
    let mut out = Parsed::default();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut origin, mut arch, mut license) = (None, None, None, None, None);
        let mut dir = String::new();
        for line in para.lines() {
            let Some((k, v)) = line.split_once(':') else { continue };
            match k {
                "P" => name = Some(v),
                "V" => version = Some(v),
                "o" => origin = Some(v),
                "A" => arch = Some(v),
                "L" => license = Some(v),
                "F" => {
                    dir = v.to_string();
                    if out.owned.len() < crate::walk::MAX_OWNED_PER_FILE {
                        out.owned.push(format!("/{v}"));
                    }
                }
                "R" if out.owned.len() < crate::walk::MAX_OWNED_PER_FILE => {
                    out.owned.push(if dir.is_empty() { format!("/{v}") } else { format!("/{dir}/{v}") })
                }
                _ => {}
            }
        }
        let (Some(name), Some(version)) = (name, version) else { continue };
        let mut p = package(name, version, Ecosystem::Alpine, "apk");
        p.arch = arch.map(str::to_string);
        p.license = license.map(str::to_string);
        p.source_name = Some(origin.unwrap_or(name).to_string());
        p.source_version = Some(version.to_string());
        out.packages.push(p);
        if out.packages.len() == crate::walk::MAX_PACKAGES_PER_FILE {
            out.incomplete.push(format!(
                "more than {} packages in one database; the rest is not read",
                crate::walk::MAX_PACKAGES_PER_FILE
            ));
            break;
        }
    }
    if out.owned.len() == crate::walk::MAX_OWNED_PER_FILE {
        out.warnings.push(format!(
            "more than {} owned files listed; the rest is not read",
            crate::walk::MAX_OWNED_PER_FILE
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn origin_and_files() {
        let db =
            b"C:Q1abc=\nP:libcrypto3\nV:3.1.4-r5\nA:x86_64\nL:Apache-2.0\no:openssl\nF:usr/lib\nR:libcrypto.so.3\n\nP:musl\nV:1.2.4-r2\n";
        let out = super::parse_installed(db).unwrap();
        assert_eq!(out.packages.len(), 2);
        assert_eq!(out.packages[0].source_name.as_deref(), Some("openssl"));
        assert_eq!(out.packages[1].source_name.as_deref(), Some("musl"));
        assert!(out.owned.contains(&"/usr/lib/libcrypto.so.3".to_string()));
    }
}
