//! Image references from users and from archives: parsing never panics, and what parses prints
//! back to something that parses to the same reference.
#![no_main]
use bulkhead_image::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = Reference::parse(s) {
            let again = Reference::parse(&r.to_string()).expect("a printed reference parses");
            assert_eq!(r, again);
        }
        let _ = s.parse::<bulkhead_image::Digest>();
    }
});
