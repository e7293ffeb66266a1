//! Java archives: `META-INF/maven/**/pom.properties`, `META-INF/MANIFEST.MF`, and nested archives
//! (Spring Boot's `BOOT-INF/lib`, `WEB-INF/lib`, shaded jars), read from memory with limits: a
//! nesting depth, a size cap per entry, and a budget of bytes inflated per outer archive, so a zip
//! bomb costs at most the budget and becomes a warning.

use std::io::{Cursor, Read};

use super::{package, Parsed};
use crate::{Ecosystem, Package};

const MAX_DEPTH: usize = 4;
const MAX_SMALL_ENTRY: u64 = 1 << 20;
const MAX_NESTED: u64 = 256 << 20;
/// Total bytes inflated for one outer archive, nested archives included.
pub const BUDGET: u64 = 512 << 20;
const MAX_ENTRIES: usize = 200_000;

pub fn parse_archive(path: &str, data: &[u8]) -> Result<Parsed, String> {
    parse_archive_within(path, data, BUDGET).0
}

/// [`parse_archive`] inflating at most `budget` bytes; also returns how many it inflated.
pub fn parse_archive_within(path: &str, data: &[u8], budget: u64) -> (Result<Parsed, String>, u64) {
    let mut out = Parsed::default();
    let mut left = budget;
    let r = walk(path, data, 0, &mut left, &mut out).map(|()| out);
    (r, budget - left)
}

fn walk(label: &str, data: &[u8], depth: usize, budget: &mut u64, out: &mut Parsed) -> Result<(), String> {
    let mut zip = crate::zipcheck::open(Cursor::new(data)).map_err(|e| format!("{label}: not a readable archive: {e}"))?;
    if zip.len() > MAX_ENTRIES {
        return Err(format!("{label}: {} entries, more than {MAX_ENTRIES}", zip.len()));
    }
    let mut poms = Vec::new();
    let mut manifest = None;
    let mut nested = Vec::new();
    for i in 0..zip.len() {
        let Ok(entry) = zip.by_index_raw(i) else { continue };
        let name = entry.name().to_string();
        let lower = name.to_ascii_lowercase();
        if name.starts_with("META-INF/maven/") && name.ends_with("/pom.properties") {
            poms.push(i);
        } else if lower == "meta-inf/manifest.mf" {
            manifest = Some(i);
        } else if lower.ends_with(".jar") || lower.ends_with(".war") || lower.ends_with(".ear") {
            nested.push(i);
        }
    }
    let mut found = Vec::new();
    // Whatever is not read is a package the scan may not know: each is an incomplete mark, and
    // the walk goes on (one oversized entry must not hide the rest of the archive).
    for i in poms {
        match read_entry(&mut zip, i, MAX_SMALL_ENTRY, budget) {
            Ok(text) => {
                if let Some(p) = from_pom_properties(&String::from_utf8_lossy(&text)) {
                    found.push(p);
                }
            }
            Err(e) => out.incomplete.push(format!("{label}: {e}")),
        }
    }
    if found.is_empty() {
        let mf = match manifest.map(|i| read_entry(&mut zip, i, MAX_SMALL_ENTRY, budget)) {
            Some(Ok(mf)) => mf,
            Some(Err(e)) => {
                out.incomplete.push(format!("{label}: {e}"));
                Vec::new()
            }
            None => Vec::new(),
        };
        if let Some(p) = from_manifest_or_name(label, &String::from_utf8_lossy(&mf)) {
            found.push(p);
        }
    }
    for mut p in found {
        p.path = label.to_string();
        out.packages.push(p);
    }
    for i in nested {
        let inner_name = zip.by_index_raw(i).map(|e| e.name().to_string()).unwrap_or_default();
        let inner_label = format!("{label}:{inner_name}");
        if depth + 1 > MAX_DEPTH {
            out.incomplete
                .push(format!("{inner_label}: nested deeper than {MAX_DEPTH} archives, not read"));
            continue;
        }
        match read_entry(&mut zip, i, MAX_NESTED, budget) {
            Ok(bytes) => {
                if let Err(e) = walk(&inner_label, &bytes, depth + 1, budget, out) {
                    out.incomplete.push(e);
                }
            }
            Err(e) => out.incomplete.push(format!("{inner_label}: {e}")),
        }
    }
    Ok(())
}

/// Why an entry was not read when the archive's (or the image's) budget is spent.
const OVER_BUDGET: &str = "inflates past the archive's budget (a zip bomb?)";

fn read_entry(
    zip: &mut zip::ZipArchive<crate::zipcheck::Budget<Cursor<&[u8]>>>,
    i: usize,
    cap: u64,
    budget: &mut u64,
) -> Result<Vec<u8>, String> {
    let entry = zip.by_index(i).map_err(|e| e.to_string())?;
    let limit = cap.min(*budget);
    let mut buf = Vec::new();
    // Never trust the declared size: read at most one byte past the limit to see if it is exceeded.
    entry.take(limit + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() as u64 > limit {
        return Err(if limit < cap {
            OVER_BUDGET.into()
        } else {
            format!("entry larger than {cap} bytes")
        });
    }
    *budget -= buf.len() as u64;
    Ok(buf)
}

fn properties(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter(|l| !l.trim_start().starts_with('#')).filter_map(|l| {
        let (k, v) = l.split_once('=').or_else(|| l.split_once(':'))?;
        Some((k.trim(), v.trim()))
    })
}

fn from_pom_properties(text: &str) -> Option<Package> {
    let (mut g, mut a, mut v) = (None, None, None);
    for (k, val) in properties(text) {
        match k {
            "groupId" => g = Some(val),
            "artifactId" => a = Some(val),
            "version" => v = Some(val),
            _ => {}
        }
    }
    let (g, a, v) = (g?, a?, v?);
    (!g.is_empty() && !a.is_empty() && !v.is_empty()).then(|| package(&format!("{g}:{a}"), v, Ecosystem::Maven, "java"))
}

/// Without pom.properties: the manifest's title and version, else `name-1.2.3.jar`. The group is
/// unknown then, so such a package is listed but matches Maven advisories only by its bare name.
fn from_manifest_or_name(label: &str, manifest: &str) -> Option<Package> {
    let (mut title, mut version) = (None, None);
    for line in manifest.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        match k.trim() {
            "Implementation-Version" | "Bundle-Version" if version.is_none() => version = Some(v.trim()),
            "Implementation-Title" | "Bundle-SymbolicName" if title.is_none() => title = Some(v.trim().split(';').next().unwrap_or("")),
            _ => {}
        }
    }
    let file = label.rsplit(['/', ':']).next().unwrap_or(label);
    let stem = file.rsplit_once('.').map(|(s, _)| s).unwrap_or(file);
    let (file_name, file_version) = match stem.rfind('-').filter(|&i| stem[i + 1..].starts_with(|c: char| c.is_ascii_digit())) {
        Some(i) => (&stem[..i], Some(&stem[i + 1..])),
        None => (stem, None),
    };
    let version = version.filter(|v| !v.is_empty()).or(file_version)?;
    let name = match title.filter(|t| !t.is_empty() && !t.contains(' ')) {
        Some(t) => t,
        None => file_name,
    };
    Some(package(name, version, Ecosystem::Maven, "java"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    fn jar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn an_oversized_entry_does_not_hide_the_nested_jars() {
        let log4j = jar(&[(
            "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties",
            b"groupId=org.apache.logging.log4j\nartifactId=log4j-core\nversion=2.14.1\n",
        )]);
        let big = vec![b'#'; (1 << 20) + 100];
        let fat = jar(&[
            ("META-INF/maven/com.example/app/pom.properties", &big),
            ("BOOT-INF/lib/log4j-core-2.14.1.jar", &log4j),
        ]);
        let out = super::parse_archive("/app.jar", &fat).unwrap();
        assert!(
            out.packages.iter().any(|p| p.name.ends_with("log4j-core") && p.version == "2.14.1"),
            "{:?}",
            out.packages
        );
        assert_eq!(out.incomplete.len(), 1, "{:?}", out.incomplete);
    }

    #[test]
    fn pom_properties_manifest_and_nesting() {
        let inner = jar(&[(
            "META-INF/maven/org.yaml/snakeyaml/pom.properties",
            b"groupId=org.yaml\nartifactId=snakeyaml\nversion=1.33\n",
        )]);
        let outer = jar(&[
            ("META-INF/MANIFEST.MF", b"Implementation-Title: app\nImplementation-Version: 2.0\n"),
            ("BOOT-INF/lib/snakeyaml-1.33.jar", &inner),
        ]);
        let out = super::parse_archive("/app.jar", &outer).unwrap();
        let got: Vec<_> = out
            .packages
            .iter()
            .map(|p| format!("{}@{} {}", p.name, p.version, p.path))
            .collect();
        assert_eq!(
            got,
            [
                "app@2.0 /app.jar",
                "org.yaml:snakeyaml@1.33 /app.jar:BOOT-INF/lib/snakeyaml-1.33.jar"
            ]
        );
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn nesting_stops_at_the_depth_limit() {
        let mut inner = jar(&[("META-INF/maven/g/a/pom.properties", b"groupId=g\nartifactId=a\nversion=1\n")]);
        for i in 0..8 {
            inner = jar(&[(&format!("lib/level{i}.jar"), &inner)]);
        }
        let out = super::parse_archive("/deep.jar", &inner).unwrap();
        assert!(out.packages.iter().all(|p| p.name != "g:a"), "{:?}", out.packages);
        assert_eq!(out.incomplete.len(), 1, "{:?}", out.incomplete);
        assert!(out.incomplete[0].contains("nested deeper"));
    }

    #[test]
    fn a_zip_bomb_costs_the_budget_and_warns() {
        // 600 MiB of zeros deflates to ~600 KiB: more than the budget allows to inflate.
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("lib/bomb.jar", zip::write::SimpleFileOptions::default().large_file(true))
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..300 {
            w.write_all(&zeros).unwrap();
        }
        let outer = w.finish().unwrap().into_inner();
        let out = super::parse_archive("/bomb.jar", &outer).unwrap();
        assert!(out.packages.is_empty());
        assert_eq!(out.incomplete.len(), 1, "{:?}", out.incomplete);
        assert!(super::parse_archive("/x.jar", b"PK\x03\x04garbage").is_err());
    }
}
