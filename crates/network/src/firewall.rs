//! The policy table: one nftables table of bulkhead's own per store (`inet bulkhead`), written
//! whole in one transaction from the networks and the running containers, so it can never
//! disagree with them for longer than a command takes. Nobody else's tables or chains are
//! touched; removing ours removes every rule bulkhead ever made.
//!
//! Between containers (on one bridge or across bridges) everything is dropped unless the
//! `allow4` set holds (source, destination, protocol, port); replies to what was allowed pass
//! (conntrack). From outside, a container is reached only through a published port (DNAT).
//! Out of a container: allowed (masqueraded) unless its network is internal. Denied attempts are
//! counted and logged (rate-limited) with a prefix `network events` reads back.

use serde_json::{json, Value};

use crate::{Error, Result};

/// What the table is made from.
#[derive(Debug, Default)]
pub struct Policy {
    pub table: String,
    /// Every bridge of the store's networks.
    pub bridges: Vec<String>,
    /// Bridges of `--internal` networks.
    pub internal: Vec<String>,
    /// IPv4 subnets of networks that may go out (masqueraded).
    pub masquerade4: Vec<String>,
    /// (source, destination, protocol, port) allowed between containers.
    pub allow4: Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr, String, u16)>,
    /// Forwarding was off before bulkhead turned it on: forwarding that is not ours stays off.
    pub forwarding_is_ours: bool,
}

/// The prefix of a denial logged by `table` (one line in the kernel log per denied packet).
pub fn log_prefix(table: &str) -> String {
    format!("bulkhead-deny:{table} ")
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}
fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}
fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn rule(table: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": table, "chain": chain, "expr": expr}}})
}

/// The commands that make the table what `p` says (as nft's JSON).
pub fn commands(p: &Policy) -> Value {
    let t = p.table.as_str();
    let mut cmds = vec![
        json!({"add": {"table": {"family": "inet", "name": t}}}),
        json!({"flush": {"table": {"family": "inet", "name": t}}}),
    ];
    let set = |name: &str, ty: Value, flags: &[&str], elems: Vec<Value>| -> Vec<Value> {
        let mut s = json!({"family": "inet", "table": t, "name": name, "type": ty});
        if !flags.is_empty() {
            s["flags"] = json!(flags);
        }
        let mut out = vec![json!({"add": {"set": s}})];
        if !elems.is_empty() {
            out.push(json!({"add": {"element": {"family": "inet", "table": t, "name": name, "elem": elems}}}));
        }
        out
    };
    cmds.extend(set("bridges", json!("ifname"), &[], p.bridges.iter().map(|b| json!(b)).collect()));
    cmds.extend(set("internal", json!("ifname"), &[], p.internal.iter().map(|b| json!(b)).collect()));
    cmds.extend(set(
        "subnets4",
        json!("ipv4_addr"),
        &["interval"],
        p.masquerade4.iter().map(|s| prefix_elem(s)).collect(),
    ));
    cmds.extend(set(
        "allow4",
        json!(["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"]),
        &[],
        p.allow4
            .iter()
            .map(|(s, d, proto, port)| json!({"concat": [s.to_string(), d.to_string(), proto, port]}))
            .collect(),
    ));
    let chain = |name: &str, base: Option<(&str, &str, i32)>| {
        let mut c = json!({"family": "inet", "table": t, "name": name});
        if let Some((ty, hook, prio)) = base {
            c["type"] = json!(ty);
            c["hook"] = json!(hook);
            c["prio"] = json!(prio);
            c["policy"] = json!("accept");
        }
        json!({"add": {"chain": c}})
    };
    cmds.push(chain("forward", Some(("filter", "forward", 0))));
    cmds.push(chain("between", None));
    cmds.push(chain("postrouting", Some(("nat", "postrouting", 100))));

    let ours_in = matches("==", meta("iifname"), json!("@bridges"));
    let ours_out = matches("==", meta("oifname"), json!("@bridges"));
    // forward
    cmds.push(rule(
        t,
        "forward",
        vec![
            matches("in", json!({"ct": {"key": "state"}}), json!(["established", "related"])),
            json!({"accept": null}),
        ],
    ));
    cmds.push(rule(
        t,
        "forward",
        vec![ours_in.clone(), ours_out.clone(), json!({"jump": {"target": "between"}})],
    ));
    cmds.push(rule(
        t,
        "forward",
        vec![
            ours_out.clone(),
            matches("in", json!({"ct": {"key": "status"}}), json!("dnat")),
            json!({"accept": null}),
        ],
    ));
    // Nothing else reaches a container from outside.
    cmds.push(rule(
        t,
        "forward",
        vec![ours_out.clone(), json!({"counter": null}), json!({"drop": null})],
    ));
    // An internal network has no way out.
    cmds.push(rule(
        t,
        "forward",
        vec![
            matches("==", meta("iifname"), json!("@internal")),
            json!({"counter": null}),
            json!({"drop": null}),
        ],
    ));
    if p.forwarding_is_ours {
        // bulkhead turned forwarding on for its bridges: the host routes nothing else. By name
        // pattern, not this store's set: another store's bridges are bulkhead's too.
        let mut e = Vec::new();
        for dir in ["iifname", "oifname"] {
            for pat in ["bh*", "bulkhead*"] {
                e.push(matches("!=", meta(dir), json!(pat)));
            }
        }
        e.push(json!({"drop": null}));
        cmds.push(rule(t, "forward", e));
    }
    // between: only what a rule allows.
    cmds.push(rule(
        t,
        "between",
        vec![
            matches(
                "==",
                json!({"concat": [payload("ip", "saddr"), payload("ip", "daddr"), meta("l4proto"), payload("th", "dport")]}),
                json!("@allow4"),
            ),
            json!({"accept": null}),
        ],
    ));
    cmds.push(rule(
        t,
        "between",
        vec![
            matches("==", meta("nfproto"), json!("ipv4")),
            json!({"limit": {"rate": 50, "per": "second", "burst": 100}}),
            json!({"log": {"prefix": log_prefix(t)}}),
        ],
    ));
    cmds.push(rule(t, "between", vec![json!({"counter": null}), json!({"drop": null})]));
    // postrouting: out of the host, a container's address is the host's.
    cmds.push(rule(
        t,
        "postrouting",
        vec![
            matches("==", payload("ip", "saddr"), json!("@subnets4")),
            matches("!=", meta("oifname"), json!("@bridges")),
            json!({"masquerade": null}),
        ],
    ));
    json!({ "nftables": cmds })
}

fn prefix_elem(cidr: &str) -> Value {
    match cidr.split_once('/') {
        Some((a, l)) => json!({"prefix": {"addr": a, "len": l.parse::<u32>().unwrap_or(32)}}),
        None => json!(cidr),
    }
}

/// Applies `p` in one transaction.
pub fn apply(p: &Policy) -> Result<()> {
    let doc = commands(p);
    let parsed: nftables::schema::Nftables =
        serde_json::from_value(doc).map_err(|e| Error::Firewall(format!("building the ruleset: {e}")))?;
    nftables::helper::apply_ruleset(&parsed).map_err(|e| Error::Firewall(format!("nft: {e}")))
}

/// Removes table `table` if it exists.
pub fn remove(table: &str) -> Result<()> {
    let doc = json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": table}}},
        {"delete": {"table": {"family": "inet", "name": table}}},
    ]});
    let parsed: nftables::schema::Nftables =
        serde_json::from_value(doc).map_err(|e| Error::Firewall(format!("building the ruleset: {e}")))?;
    nftables::helper::apply_ruleset(&parsed).map_err(|e| Error::Firewall(format!("nft: {e}")))
}
