//! Match a bill of materials against OSV advisories.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::db::{Advisory, Affected, Db, Event};
use crate::severity::{rate, Rating, Severity};
use crate::version::{compare, equal, semver_compare};
use crate::{Bom, Ecosystem, Package, Result};

/// One vulnerability in one package (advisories that are aliases of each other are one finding).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finding {
    /// The advisory shown first: the ecosystem's own (PYSEC, RUSTSEC, DSA, ...), then GHSA, then CVE.
    pub id: String,
    /// Every other id of the same vulnerability.
    pub aliases: Vec<String>,
    /// Index of the package in the bill of materials.
    pub package: usize,
    pub name: String,
    pub ecosystem: Ecosystem,
    pub installed: String,
    /// The versions that fix it, lowest first; empty when no fix is known.
    pub fixed: Vec<String>,
    pub rating: Rating,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub layer: usize,
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// Set when an ignore rule applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

impl Finding {
    pub fn severity(&self) -> Severity {
        self.rating.severity
    }
}

/// The findings that count against a gate: not ignored, and at or above `fail_on` once an
/// unrated advisory is counted as `unknown_as`.
pub fn blocking(findings: &[Finding], fail_on: Severity, unknown_as: Severity) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|f| f.ignored.is_none())
        .filter(|f| {
            let s = if f.severity() == Severity::Unknown {
                unknown_as
            } else {
                f.severity()
            };
            s >= fail_on && s != Severity::Unknown
        })
        .collect()
}

/// The name and version advisories use for this package, and the ecosystem to look them up in.
fn lookup_key(p: &Package) -> Option<(Ecosystem, &str, &str)> {
    match p.ecosystem {
        Ecosystem::Binary => None,
        // RPM advisories name binary packages and full epoch:version-release strings.
        Ecosystem::Rpm => Some((Ecosystem::Rpm, &p.name, &p.version)),
        e if e.is_os() => Some((
            e,
            p.source_name.as_deref().unwrap_or(&p.name),
            p.source_version.as_deref().unwrap_or(&p.version),
        )),
        e => Some((e, &p.name, &p.version)),
    }
}

/// Whether an `affected` entry's ecosystem (`Debian`, `Debian:12`, `Rocky Linux:9`) applies to
/// this image's distribution: the same distribution (several share one version order), and the
/// same release when the entry names one. Unknown distribution: any.
fn release_matches(osv_ecosystem: &str, distro: Option<&crate::Distro>) -> bool {
    let Some(d) = distro else { return true };
    let (base, release) = match osv_ecosystem.split_once(':') {
        Some((b, r)) => (b, Some(r)),
        None => (osv_ecosystem, None),
    };
    if d.osv_ecosystem().is_some_and(|ours| ours != base) {
        return false;
    }
    match (release, d.osv_release()) {
        // "Red Hat:enterprise_linux:9::appstream" and the like: the release is the first field
        // that is a number.
        (Some(r), Some(ours)) => r == ours || r.split(':').any(|f| f == ours),
        _ => true,
    }
}

/// Is `version` affected by this entry, and which fixes are there above it?
pub fn affected_by(eco: Ecosystem, version: &str, a: &Affected) -> Option<Vec<String>> {
    let mut hit = a.versions.iter().any(|v| equal(eco, v, version));
    let mut fixes = Vec::new();
    for r in &a.ranges {
        let cmp: &dyn Fn(&str, &str) -> Option<Ordering> = match r.kind.as_str() {
            "ECOSYSTEM" => &|x, y| compare(eco, x, y),
            "SEMVER" => &|x, y| semver_compare(x.trim_start_matches('v'), y.trim_start_matches('v')),
            _ => continue,
        };
        if let Some(f) = in_range(version, &r.events, cmp) {
            hit = true;
            fixes.extend(f);
        }
    }
    hit.then_some(fixes)
}

/// OSV's evaluation of one range: events in version order, the last one at or below the version
/// decides; `limit` caps the range. Some(fixes above the version) when affected.
fn in_range(version: &str, events: &[Event], cmp: &dyn Fn(&str, &str) -> Option<Ordering>) -> Option<Vec<String>> {
    #[derive(PartialEq)]
    enum K {
        Introduced,
        Fixed,
        LastAffected,
        Limit,
    }
    let mut evs: Vec<(K, &str)> = Vec::new();
    for e in events {
        for (k, v) in [
            (K::Introduced, &e.introduced),
            (K::Fixed, &e.fixed),
            (K::LastAffected, &e.last_affected),
            (K::Limit, &e.limit),
        ] {
            if let Some(v) = v {
                evs.push((k, v.as_str()));
            }
        }
    }
    let key_cmp = |a: &str, b: &str| -> Option<Ordering> {
        match (a == "0", b == "0") {
            (true, true) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Less),
            (false, true) => Some(Ordering::Greater),
            _ => cmp(a, b),
        }
    };
    // Any version this ecosystem cannot order makes the range unusable: never guess.
    for (_, v) in &evs {
        key_cmp(v, v)?;
    }
    cmp(version, version)?;
    evs.sort_by(|a, b| key_cmp(a.1, b.1).unwrap_or(Ordering::Equal));
    let ge = |v: &str| v == "0" || cmp(version, v).is_some_and(|o| o != Ordering::Less);
    let mut vulnerable = false;
    for (k, v) in &evs {
        match k {
            K::Introduced if ge(v) => vulnerable = true,
            K::Fixed if ge(v) => vulnerable = false,
            K::LastAffected if cmp(version, v) == Some(Ordering::Greater) => vulnerable = false,
            _ => {}
        }
    }
    let limits: Vec<&str> = evs.iter().filter(|(k, _)| *k == K::Limit).map(|(_, v)| *v).collect();
    if !limits.is_empty() && !limits.iter().any(|l| *l == "*" || cmp(version, l) == Some(Ordering::Less)) {
        vulnerable = false;
    }
    vulnerable.then(|| {
        evs.iter()
            .filter(|(k, v)| *k == K::Fixed && !ge(v))
            .map(|(_, v)| v.to_string())
            .collect()
    })
}

fn id_rank(id: &str) -> u8 {
    if id.starts_with("CVE-") {
        2
    } else if id.starts_with("GHSA-") {
        1
    } else {
        0
    }
}

/// Match every package of the bill of materials.
pub fn match_bom(bom: &Bom, db: &Db) -> Result<Vec<Finding>> {
    let mut cache: HashMap<(Ecosystem, String), Vec<Advisory>> = HashMap::new();
    let mut findings = Vec::new();
    for (idx, p) in bom.packages.iter().enumerate() {
        let Some((eco, name, version)) = lookup_key(p) else { continue };
        let key = (eco, crate::db::name_key(eco, name));
        if !cache.contains_key(&key) {
            let advisories = db.advisories_for(eco, name)?;
            cache.insert(key.clone(), advisories);
        }
        let mut hits: Vec<(&Advisory, Rating, Vec<String>)> = Vec::new();
        for adv in &cache[&key] {
            if adv.withdrawn.is_some() {
                continue;
            }
            for a in &adv.affected {
                let Some(pkg) = &a.package else { continue };
                if Ecosystem::from_osv(&pkg.ecosystem) != Some(eco) || crate::db::name_key(eco, &pkg.name) != key.1 {
                    continue;
                }
                if eco.is_os() && !release_matches(&pkg.ecosystem, bom.distro.as_ref()) {
                    continue;
                }
                if let Some(fixes) = affected_by(eco, version, a) {
                    hits.push((adv, rate(adv, a, eco.is_os()), fixes));
                    break;
                }
            }
        }
        findings.extend(merge_aliases(idx, p, eco, version, hits));
    }
    findings.sort_by(|a, b| {
        b.severity()
            .cmp(&a.severity())
            .then(a.package.cmp(&b.package))
            .then(a.id.cmp(&b.id))
    });
    Ok(findings)
}

/// One finding per vulnerability: advisories whose ids or aliases overlap are merged.
fn merge_aliases(idx: usize, p: &Package, eco: Ecosystem, version: &str, hits: Vec<(&Advisory, Rating, Vec<String>)>) -> Vec<Finding> {
    let n = hits.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while parent[r] != r {
            r = parent[r];
        }
        parent[i] = r;
        r
    }
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (i, (adv, _, _)) in hits.iter().enumerate() {
        for id in std::iter::once(&adv.id).chain(&adv.aliases) {
            if let Some(&j) = owner.get(id.as_str()) {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a] = b;
            } else {
                owner.insert(id, i);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        let r = find(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    groups
        .into_values()
        .map(|members| {
            let mut ids: BTreeSet<&str> = BTreeSet::new();
            let mut fixed: Vec<String> = Vec::new();
            let mut rating: Option<Rating> = None;
            let mut refs = Vec::new();
            let mut summary = None;
            for &i in &members {
                let (adv, r, f) = &hits[i];
                ids.insert(&adv.id);
                ids.extend(adv.aliases.iter().map(String::as_str));
                fixed.extend(f.iter().cloned());
                if rating.as_ref().is_none_or(|x| better(r, x)) {
                    rating = Some(r.clone());
                }
                summary = summary.or_else(|| {
                    adv.summary
                        .clone()
                        .or_else(|| adv.details.as_ref().map(|d| d.lines().next().unwrap_or("").to_string()))
                });
                refs.extend(adv.references.iter().map(|r| r.url.clone()));
            }
            let primary_ids: Vec<&str> = members.iter().map(|&i| hits[i].0.id.as_str()).collect();
            let id = primary_ids.iter().min_by_key(|id| (id_rank(id), **id)).unwrap().to_string();
            fixed.sort_by(|a, b| compare(eco, a, b).unwrap_or(Ordering::Equal));
            fixed.dedup();
            refs.dedup();
            Finding {
                aliases: ids.into_iter().filter(|x| *x != id).map(str::to_string).collect(),
                id,
                package: idx,
                name: p.name.clone(),
                ecosystem: p.ecosystem,
                installed: version.to_string(),
                fixed,
                rating: rating.unwrap(),
                summary,
                layer: p.layer,
                path: p.path.clone(),
                references: refs,
                ignored: None,
            }
        })
        .collect()
}

/// A distribution rating beats a score, a score beats a bare word; within a kind, higher wins.
fn better(a: &Rating, b: &Rating) -> bool {
    let rank = |r: &Rating| match r.source.as_str() {
        "distro" => 3,
        "cvss" => 2,
        "database" => 1,
        _ => 0,
    };
    (rank(a), a.severity) > (rank(b), b.severity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{parse_advisory, Range};

    fn range(kind: &str, events: &[(&str, &str)]) -> Range {
        Range {
            kind: kind.into(),
            events: events
                .iter()
                .map(|(k, v)| {
                    let mut e = Event::default();
                    let v = Some(v.to_string());
                    match *k {
                        "introduced" => e.introduced = v,
                        "fixed" => e.fixed = v,
                        "last_affected" => e.last_affected = v,
                        _ => e.limit = v,
                    }
                    e
                })
                .collect(),
        }
    }

    fn affected(ranges: Vec<Range>, versions: &[&str]) -> Affected {
        Affected {
            package: None,
            severity: vec![],
            ranges,
            versions: versions.iter().map(|s| s.to_string()).collect(),
            ecosystem_specific: None,
            database_specific: None,
        }
    }

    #[test]
    fn osv_range_events() {
        let a = affected(vec![range("ECOSYSTEM", &[("introduced", "0"), ("fixed", "2.20.0")])], &[]);
        assert_eq!(affected_by(Ecosystem::PyPI, "2.19.1", &a), Some(vec!["2.20.0".to_string()]));
        assert_eq!(affected_by(Ecosystem::PyPI, "2.20.0", &a), None);
        // Two ranges of introduced/fixed pairs, unsorted in the record.
        let a = affected(
            vec![range(
                "SEMVER",
                &[
                    ("fixed", "1.2.5"),
                    ("introduced", "1.0.0"),
                    ("introduced", "2.0.0"),
                    ("fixed", "2.0.3"),
                ],
            )],
            &[],
        );
        assert!(affected_by(Ecosystem::CratesIo, "0.9.0", &a).is_none());
        assert_eq!(
            affected_by(Ecosystem::CratesIo, "1.2.4", &a),
            Some(vec!["1.2.5".into(), "2.0.3".into()])
        );
        assert!(affected_by(Ecosystem::CratesIo, "1.5.0", &a).is_none());
        assert_eq!(affected_by(Ecosystem::CratesIo, "2.0.1", &a), Some(vec!["2.0.3".into()]));
        let a = affected(vec![range("ECOSYSTEM", &[("introduced", "1.0"), ("last_affected", "1.4")])], &[]);
        assert!(affected_by(Ecosystem::PyPI, "1.4", &a).is_some());
        assert!(affected_by(Ecosystem::PyPI, "1.4.1", &a).is_none());
        let a = affected(vec![range("ECOSYSTEM", &[("introduced", "0"), ("limit", "3.0")])], &[]);
        assert!(affected_by(Ecosystem::PyPI, "2.0", &a).is_some());
        assert!(affected_by(Ecosystem::PyPI, "3.1", &a).is_none());
        // Explicit versions, compared in the ecosystem's order; unparsable versions match nothing.
        let a = affected(vec![], &["1.0"]);
        assert!(affected_by(Ecosystem::PyPI, "1.0.0", &a).is_some());
        let a = affected(vec![range("ECOSYSTEM", &[("introduced", "0"), ("fixed", "2.0")])], &[]);
        assert!(affected_by(Ecosystem::PyPI, "nonsense!", &a).is_none());
        // Go's +incompatible and the v prefix.
        let a = affected(vec![range("SEMVER", &[("introduced", "0"), ("fixed", "2.1.0")])], &[]);
        assert!(affected_by(Ecosystem::Go, "v2.0.0+incompatible", &a).is_some());
    }

    #[test]
    fn aliases_merge_into_one_finding() {
        let a = parse_advisory(br#"{"id":"PYSEC-1","aliases":["CVE-1"],"affected":[]}"#).unwrap();
        let b = parse_advisory(br#"{"id":"GHSA-x","aliases":["CVE-1"],"affected":[]}"#).unwrap();
        let c = parse_advisory(br#"{"id":"PYSEC-2","affected":[]}"#).unwrap();
        let r = Rating {
            severity: Severity::Unknown,
            score: None,
            vector: None,
            source: "none".into(),
        };
        let p = crate::catalog::package("x", "1", Ecosystem::PyPI, "python");
        let f = merge_aliases(
            0,
            &p,
            Ecosystem::PyPI,
            "1",
            vec![(&a, r.clone(), vec![]), (&b, r.clone(), vec![]), (&c, r, vec![])],
        );
        let got: Vec<_> = f.iter().map(|f| format!("{} {:?}", f.id, f.aliases)).collect();
        assert_eq!(got, [r#"PYSEC-1 ["CVE-1", "GHSA-x"]"#, "PYSEC-2 []"]);
    }
}

#[cfg(test)]
mod db_tests {
    use super::*;
    use crate::catalog::package;

    fn db_with(records: &[serde_json::Value]) -> (tempfile::TempDir, Db) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("osv");
        std::fs::create_dir(&dir).unwrap();
        for (i, r) in records.iter().enumerate() {
            std::fs::write(dir.join(format!("{i}.json")), r.to_string()).unwrap();
        }
        let mut db = Db::open_rw(&t.path().join("db.sqlite3")).unwrap();
        db.import(&dir, "test", &mut |_| {}).unwrap();
        (t, db)
    }

    fn affected(name: &str, fixed: &str) -> serde_json::Value {
        serde_json::json!([{"package": {"ecosystem": "PyPI", "name": name}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}]}])
    }

    #[test]
    fn withdrawn_aliases_severity_and_names() {
        let (_t, db) = db_with(&[
            serde_json::json!({"id": "PYSEC-1", "aliases": ["CVE-1"], "affected": affected("Some_Pkg", "2.0")}),
            serde_json::json!({"id": "GHSA-1", "aliases": ["CVE-1"], "affected": affected("some-pkg", "2.0.1"),
                               "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}),
            serde_json::json!({"id": "PYSEC-2", "withdrawn": "2024-01-01T00:00:00Z", "affected": affected("some-pkg", "9.0")}),
            serde_json::json!({"id": "PYSEC-3", "affected": affected("other", "9.0")}),
        ]);
        let mut bom = Bom::default();
        let mut p = package("some.pkg", "1.5", Ecosystem::PyPI, "python");
        p.path = "/x/METADATA".into();
        p.layer = 2;
        bom.packages.push(p);
        let f = match_bom(&bom, &db).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].id, "PYSEC-1");
        assert_eq!(f[0].aliases, ["CVE-1", "GHSA-1"]);
        assert_eq!(f[0].fixed, ["2.0", "2.0.1"]);
        assert_eq!((f[0].severity(), f[0].rating.score), (Severity::Critical, Some(9.8)));
        assert_eq!((f[0].layer, f[0].path.as_str()), (2, "/x/METADATA"));
        // Gate arithmetic: unknown counts as asked; ignored findings never count.
        assert_eq!(blocking(&f, Severity::Critical, Severity::Low).len(), 1);
        let mut ignored = f.clone();
        ignored[0].ignored = Some("accepted".into());
        assert!(blocking(&ignored, Severity::Low, Severity::High).is_empty());
    }
}
