//! TUF metadata as a registry hands it over: parsing (and a root's self-check) never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bulkhead_trust::parse_metadata(data);
});
