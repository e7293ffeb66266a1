//! What a cluster manager takes from anyone, before any certificate: join tokens, unlock keys,
//! certificate requests (issued only from the CA's own parameters), certificates (an identity,
//! an old certificate with its proof). Never a panic; a request the CA signs names the id and
//! role it was given, whatever it asked for.
#![no_main]
use std::sync::OnceLock;

use bulkhead_cluster::pki::{self, Ca, Role};
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::create("fuzz", 1_800_000_000, 10).unwrap())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = pki::JoinToken::parse(s);
        let _ = bulkhead_cluster::crypt::parse_unlock_key(s);
    }
    let _ = pki::identity(data);
    if let Ok(pem) = ca().issue(data, "n1", Role::Worker, "fuzz", 1_800_000_000, 60) {
        let id = pki::identity(pem.as_bytes()).unwrap();
        assert_eq!((id.node_id.as_str(), id.role, id.cluster_id.as_str()), ("n1", Role::Worker, "fuzz"));
    }
    let (a, b) = data.split_at(data.len() / 2);
    let _ = pki::old_identity(&[ca().cert_der()], a, b, b);
});
