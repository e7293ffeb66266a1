//! Log files that someone may have tampered with: reading and verifying them never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, head) = data.split_at(data.len() / 2);
    std::fs::write(dir.path().join("container.log"), log).unwrap();
    std::fs::write(dir.path().join("head"), head).unwrap();
    let _ = bulkhead_runtime::logs::read(dir.path());
    let _ = bulkhead_runtime::logs::verify(dir.path());
});
