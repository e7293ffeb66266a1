//! What users and compose files give the network commands: `-p` specs, rule targets
//! (`NAME[:PORT[/PROTO]]`), selectors, network names. Never panic; what parses prints back as a
//! rule that parses to the same thing.
#![no_main]
use bulkhead_network::ports::PortSpec;
use bulkhead_network::rules::{Rule, Selector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = PortSpec::parse(s);
    let _ = bulkhead_network::valid_name(s);
    if let Ok(sel) = Selector::parse(s) {
        assert_eq!(Selector::parse(&sel.to_string()).ok(), Some(sel));
    }
    if let Ok((to, port, proto)) = Rule::parse_target(s) {
        let again = match (port, &proto) {
            (Some(p), Some(pr)) => format!("{to}:{p}/{pr}"),
            _ => to.to_string(),
        };
        assert_eq!(Rule::parse_target(&again).ok(), Some((to, port, proto)));
    }
});
