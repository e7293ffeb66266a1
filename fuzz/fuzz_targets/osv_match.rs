//! An OSV record, matched against a version in every ecosystem: never panics (version orders are
//! total on what they parse; ranges with versions an ecosystem cannot order match nothing).
#![no_main]
use bulkhead_scan::db::parse_advisory;
use bulkhead_scan::matcher::affected_by;
use bulkhead_scan::Ecosystem;
use libfuzzer_sys::fuzz_target;

const ECOSYSTEMS: [Ecosystem; 9] = [
    Ecosystem::Debian,
    Ecosystem::Alpine,
    Ecosystem::Rpm,
    Ecosystem::PyPI,
    Ecosystem::Npm,
    Ecosystem::Go,
    Ecosystem::CratesIo,
    Ecosystem::Maven,
    Ecosystem::Binary,
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (version, record) = text.split_once('\n').unwrap_or(("1.0", &text));
    let Ok(adv) = parse_advisory(record.as_bytes()) else { return };
    for a in &adv.affected {
        for eco in ECOSYSTEMS {
            let _ = affected_by(eco, version, a);
            for v in &a.versions {
                let _ = bulkhead_scan::version::compare(eco, v, version);
            }
        }
    }
    for s in adv.severity.iter() {
        let _ = bulkhead_scan::severity::cvss_score(&s.score);
    }
});
