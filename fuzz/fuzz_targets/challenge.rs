//! A registry's WWW-Authenticate challenge: never panics, and every key it yields is lower-case
//! and every value came from the header.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    for (k, v) in bulkhead_registry::challenge_params(&header) {
        assert_eq!(k, k.to_ascii_lowercase());
        assert!(header.contains(v.as_str()));
    }
});
