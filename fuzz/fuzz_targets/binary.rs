//! ELF files from an image (Go build information, cargo-auditable data, version strings): never
//! panic, whatever the section headers, pointers and lengths claim.
#![no_main]
use bulkhead_scan::catalog::{parse, Claim};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = b"\x7fELF".to_vec();
    file.extend_from_slice(data);
    let _ = parse(Claim::Elf, "/usr/bin/python3.11", &file);
});
