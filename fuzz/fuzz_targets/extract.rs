//! The layer extractor on arbitrary (possibly compressed) tar streams: it must never panic, and never
//! create anything outside its root, which is checked with a canary directory beside it.
#![no_main]
use bulkhead_image::limits::{decompress, Limits};
use bulkhead_image::unpack::{extract, ExtractOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let canary = dir.path().join("canary");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&canary).unwrap();
    let limits = Limits { max_layer_bytes: 16 << 20, ratio_floor: 1 << 20, ..Limits::default() };
    if let Ok(reader) = decompress(data, limits) {
        let opts = ExtractOptions { overlay_whiteouts: true, preserve_owner: true, lowers: vec![], max_bytes: Some(64 << 20) };
        let _ = extract(reader, &root, &opts, "fuzz");
    }
    let outside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(outside.len(), 2, "something was created beside the root: {outside:?}");
    assert_eq!(std::fs::read_dir(&canary).unwrap().count(), 0, "the canary was touched");
});
