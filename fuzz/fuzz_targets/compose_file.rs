//! Compose files as anyone may write them (a project cloned from anywhere): parsing, aliases and
//! merge keys, interpolation, the key checks, the model, the start order and the derived policy
//! never panic and never run away (bounded nodes and depth); an error names a line of the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let lookup = |k: &str| (k == "SET").then(|| "value".to_owned());
    let _ = bulkhead_compose::interpolate::interpolate(s, &lookup);
    let _ = bulkhead_compose::parse_env_file(s);
    match bulkhead_compose::load_str(s, "/f/compose.yaml".as_ref(), "/f".as_ref(), Some("fuzz"), &lookup) {
        Ok(p) => {
            let _ = bulkhead_compose::policy::derive(&p);
        }
        Err(e) => assert!(!e.to_string().contains('\n') || e.line().is_none()),
    }
});
