//! One rpm header blob as rpmdb.sqlite stores it (entry count, data size, entries, data): never
//! panics, whatever offsets, counts and types the entries claim.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((p, files))) = bulkhead_scan::catalog::rpm::parse_header(data) {
        assert!(!p.name.is_empty() || !p.version.is_empty() || files.len() <= data.len());
    }
});
