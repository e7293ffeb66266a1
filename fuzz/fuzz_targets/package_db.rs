//! Package databases and metadata from an image (dpkg status and lists, apk's database, Python
//! METADATA, npm package.json and lock files, os-release): never panic, and whatever is reported
//! has a name and a version.
#![no_main]
use bulkhead_scan::catalog::{parse, Claim};
use libfuzzer_sys::fuzz_target;

const CLAIMS: [Claim; 9] = [
    Claim::DpkgStatus,
    Claim::DpkgMd5sums,
    Claim::DpkgStatusD,
    Claim::DpkgFiles,
    Claim::Apk,
    Claim::Python,
    Claim::NpmPackage,
    Claim::NpmLock,
    Claim::OsRelease,
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let claim = CLAIMS[which as usize % CLAIMS.len()];
    if let Ok(parsed) = parse(claim, "/fuzz", rest) {
        for p in parsed.packages {
            assert!(!p.name.is_empty() || claim == Claim::NpmLock || claim == Claim::DpkgStatus || claim == Claim::DpkgStatusD || claim == Claim::Apk);
            let _ = bulkhead_scan::purl::for_package(&p, parsed.distro.as_ref());
        }
    }
});
