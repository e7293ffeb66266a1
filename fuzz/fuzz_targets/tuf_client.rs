//! Metadata as the client workflow parses it (bulkhead_trust::client): every role's parser, a
//! root's self-check, delegation path matching and target entries never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bulkhead_trust::client::parse_any(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some((pattern, target)) = s.split_once('\n') {
            let _ = bulkhead_trust::client::path_matches(pattern, target);
        }
    }
});
