//! Manifests, indexes, configs and docker-archive manifest.json files from outside.
#![no_main]
use bulkhead_image::{docker_archive, spec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spec::parse_manifest(data, None);
    let _ = spec::parse_manifest(data, Some(spec::DOCKER_MANIFEST));
    if let Ok(idx) = spec::parse_index(data) {
        let _ = spec::select_platform(&idx, &spec::PlatformSpec::default());
    }
    let _ = spec::parse_config(data, 1);
    let _ = docker_archive::parse_manifest_json(data);
});
