//! Java archives (zip, nested): never panic, and never inflate past the budget.
#![no_main]
use bulkhead_scan::catalog::{parse, Claim};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(Claim::Java, "/app.jar", data);
});
