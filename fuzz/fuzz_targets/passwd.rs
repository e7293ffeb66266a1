//! An image's /etc/passwd and /etc/group, resolved against a user spec: never panics, and a
//! resolved user is consistent with what was asked for.
#![no_main]
use bulkhead_runtime::user::resolve_in;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{0}');
    let passwd = parts.next().unwrap_or("");
    let group = parts.next().unwrap_or("");
    let spec = parts.next().unwrap_or("");
    if let Ok(u) = resolve_in(passwd, group, spec) {
        if let Ok(n) = spec.split(':').next().unwrap_or("").parse::<u32>() {
            assert_eq!(u.uid, n, "a numeric user resolves to itself");
        }
    }
});
