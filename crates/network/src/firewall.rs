//! The policy table: one nftables table of bulkhead's own per store (`inet bulkhead`), written
//! whole in one transaction from the networks and the running containers, so it can never
//! disagree with them for longer than a command takes. Nobody else's tables or chains are
//! touched; removing ours removes every rule bulkhead ever made.
//!
//! Between containers (on one bridge or across bridges) everything is dropped unless a rule
//! allows the pair (and port); replies to what was allowed pass
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
    /// What the rules allow and deny now (each entry tagged with its rule's id, for counting).
    pub rules: crate::rules::Resolved,
    /// Published ports and the address each goes to.
    pub published: Vec<(crate::ports::Published, std::net::Ipv4Addr)>,
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
    cmds.push(chain("prerouting", Some(("nat", "prerouting", -100))));
    cmds.push(chain("output", Some(("nat", "output", -100))));
    cmds.push(chain("input", Some(("filter", "input", 0))));

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
    // A container whose way out a rule denies.
    for (ip, id) in &p.rules.no_egress {
        cmds.push(counted(
            t,
            "forward",
            vec![
                ours_in.clone(),
                matches("==", payload("ip", "saddr"), json!(ip.to_string())),
                matches("!=", meta("oifname"), json!("@bridges")),
            ],
            *id,
            "drop",
        ));
    }
    // A published port is open to everyone, other containers included.
    cmds.push(rule(
        t,
        "forward",
        vec![
            ours_out.clone(),
            matches("in", json!({"ct": {"key": "status"}}), json!("dnat")),
            json!({"accept": null}),
        ],
    ));
    cmds.push(rule(
        t,
        "forward",
        vec![ours_in.clone(), ours_out.clone(), json!({"jump": {"target": "between"}})],
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
    // between: only what a rule allows; one counted entry per pair, tagged with its rule.
    for (s, d, proto, port, id) in &p.rules.ports {
        cmds.push(counted(
            t,
            "between",
            vec![
                matches("==", payload("ip", "saddr"), json!(s.to_string())),
                matches("==", payload("ip", "daddr"), json!(d.to_string())),
                matches("==", payload(proto, "dport"), json!(port)),
            ],
            *id,
            "accept",
        ));
    }
    for (s, d, id) in &p.rules.any {
        cmds.push(counted(
            t,
            "between",
            vec![
                matches("==", payload("ip", "saddr"), json!(s.to_string())),
                matches("==", payload("ip", "daddr"), json!(d.to_string())),
            ],
            *id,
            "accept",
        ));
    }
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
    // Published ports: DNAT for what arrives (prerouting) and what the host itself sends
    // (output), to any local address or the one given.
    for (p, ip) in &p.published {
        let mut e = vec![matches(
            "==",
            json!({"fib": {"result": "type", "flags": ["daddr"]}}),
            json!("local"),
        )];
        if let Some(h) = p.host_ip {
            e.push(matches("==", payload("ip", "daddr"), json!(h.to_string())));
        }
        e.push(matches("==", payload(&p.proto, "dport"), json!(p.host_port)));
        e.push(json!({"dnat": {"family": "ip", "addr": ip.to_string(), "port": p.container_port}}));
        cmds.push(rule(t, "prerouting", e.clone()));
        cmds.push(rule(t, "output", e));
    }
    // From the host's own 127.0.0.1 to a container (route_localnet on the bridges): the source
    // becomes the bridge's address, or the reply would go to the container's own loopback. And a
    // container must never reach the host's loopback through it (CVE-2020-8558).
    cmds.push(rule(
        t,
        "postrouting",
        vec![
            matches("==", payload("ip", "saddr"), json!({"prefix": {"addr": "127.0.0.0", "len": 8}})),
            ours_out.clone(),
            json!({"masquerade": null}),
        ],
    ));
    // A container reaching a published port of a container on its own bridge: the reply must
    // come back through the host.
    cmds.push(rule(
        t,
        "postrouting",
        vec![
            matches("==", payload("ip", "saddr"), json!("@subnets4")),
            ours_out.clone(),
            matches("in", json!({"ct": {"key": "status"}}), json!("dnat")),
            json!({"masquerade": null}),
        ],
    ));
    cmds.push(rule(
        t,
        "input",
        vec![
            ours_in.clone(),
            matches("==", payload("ip", "daddr"), json!({"prefix": {"addr": "127.0.0.0", "len": 8}})),
            // Replies to the host's own connections to a published port come back this way.
            matches("==", json!({"ct": {"key": "direction"}}), json!("original")),
            json!({"counter": null}),
            json!({"drop": null}),
        ],
    ));
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
    // Last, a rule that does nothing but carry a digest of all the above: what is in the kernel
    // can be compared with what should be without rewriting it (see [`is_current`]).
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(Value::Array(cmds.clone()).to_string().as_bytes()))
    };
    cmds.push(chain("state", None));
    cmds.push(json!({"add": {"rule": {"family": "inet", "table": t, "chain": "state", "expr": [{"counter": null}], "comment": format!("policy:{digest}")}}}));
    json!({ "nftables": cmds })
}

/// The digest the table's marker rule carries in `doc` (made by [`commands`]).
fn digest_of(doc: &Value) -> Option<String> {
    doc["nftables"].as_array()?.iter().rev().find_map(|c| {
        c["add"]["rule"]["comment"]
            .as_str()
            .and_then(|s| s.strip_prefix("policy:"))
            .map(str::to_owned)
    })
}

/// Whether the kernel holds the table exactly as `p` would write it (one `nft list` of a small
/// chain, ~3 ms, against ~16 ms to write the table). False if it is gone (a host firewall reload
/// that flushed every table, say).
pub fn is_current(p: &Policy) -> bool {
    let Some(want) = digest_of(&commands(p)) else { return false };
    let Ok(text) = nftables::helper::get_current_ruleset_raw(None::<&str>, ["list", "chain", "inet", &p.table, "state"]) else {
        return false;
    };
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v["nftables"].as_array().and_then(|a| {
                a.iter().find_map(|o| {
                    o["rule"]["comment"]
                        .as_str()
                        .and_then(|s| s.strip_prefix("policy:"))
                        .map(str::to_owned)
                })
            })
        })
        .is_some_and(|have| have == want)
}

/// A rule entry that counts what it matches, tagged `rule:<id>` (read back by [`hits`]).
fn counted(table: &str, chain: &str, mut expr: Vec<Value>, id: u64, verdict: &str) -> Value {
    expr.push(json!({"counter": null}));
    let mut v = serde_json::Map::new();
    v.insert(verdict.to_owned(), Value::Null);
    expr.push(Value::Object(v));
    json!({"add": {"rule": {"family": "inet", "table": table, "chain": chain, "expr": expr, "comment": format!("rule:{id}")}}})
}

/// Packets counted per rule id in `table` now (nothing if it does not exist).
pub fn hits(table: &str) -> std::collections::BTreeMap<u64, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(text) = nftables::helper::get_current_ruleset_raw(None::<&str>, ["list", "table", "inet", table]) else {
        return out;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else { return out };
    for obj in v["nftables"].as_array().into_iter().flatten() {
        let r = &obj["rule"];
        let Some(id) = r["comment"]
            .as_str()
            .and_then(|c| c.strip_prefix("rule:"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let packets: u64 = r["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["counter"]["packets"].as_u64())
            .sum();
        *out.entry(id).or_default() += packets;
    }
    out
}

/// Packets the `between` chain dropped since the table was last written.
pub fn denied_count(table: &str) -> u64 {
    let Ok(text) = nftables::helper::get_current_ruleset_raw(None::<&str>, ["list", "chain", "inet", table, "between"]) else {
        return 0;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else { return 0 };
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["rule"]["comment"].is_null())
        .flat_map(|o| o["rule"]["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
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
