//! Go build information (the `.go.buildinfo` contents: header, inline or pointer strings, module
//! lines), read against a real ELF file for pointer lookups: never panics.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static EXE: OnceLock<Vec<u8>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let exe = EXE.get_or_init(|| std::fs::read("/proc/self/exe").unwrap());
    let file = object::File::parse(&exe[..]).unwrap();
    let mut info = b"\xff Go buildinf:".to_vec();
    info.extend_from_slice(data);
    let _ = bulkhead_scan::catalog::binary::go_build_info(&file, &info);
});
