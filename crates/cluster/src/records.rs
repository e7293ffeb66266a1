//! The records of the replicated store that more than one part reads: nodes (for joins,
//! renewals and every call's authorization) and the keys they live under.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pki::Role;
use crate::store::NodeId;

/// A node as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// Its role: what authorizes it, whatever its certificate says.
    pub role: Role,
    /// Its id in Raft (managers).
    #[serde(default)]
    pub raft_id: Option<NodeId>,
    /// Where other managers reach it (managers).
    #[serde(default)]
    pub addr: Option<String>,
    /// Its current certificate's serial and expiry.
    pub serial: String,
    /// The certificate it renewed from, still accepted until the next renewal (calls in flight,
    /// a reply lost); no older one is.
    #[serde(default)]
    pub previous_serial: Option<String>,
    pub not_after: i64,
    /// The key identifier of the root that issued its certificate (a CA rotation is done when
    /// every node's is the new root's).
    #[serde(default)]
    pub issuer: Option<String>,
    pub joined: i64,
    #[serde(default = "active")]
    pub availability: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The host's name, as its agent reports it (for `node.hostname` constraints).
    #[serde(default)]
    pub hostname: String,
    /// What the host has, as its agent reports it: memory in bytes, CPU in thousandths of a
    /// CPU (reservations are judged against it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<(u64, u64)>,
    /// A manager on its way to being a worker: it leaves Raft first (still a manager, so that
    /// its last messages as a leader are heard), then the store makes it a worker.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub demoting: bool,
}

impl NodeRecord {
    /// A node as it joins: its id, role and certificate from `cert` (the certificate the CA
    /// just issued it), active, without labels.
    pub fn new(cert: &crate::pki::Identity, raft_id: Option<NodeId>, addr: Option<String>, now: i64) -> NodeRecord {
        NodeRecord {
            id: cert.node_id.clone(),
            role: cert.role,
            raft_id,
            addr,
            serial: cert.serial.clone(),
            previous_serial: None,
            not_after: cert.not_after,
            issuer: cert.issuer_key.clone(),
            joined: now,
            availability: active(),
            labels: BTreeMap::new(),
            hostname: String::new(),
            resources: None,
            demoting: false,
        }
    }
}

fn active() -> String {
    "active".into()
}

/// Where a node's record lives.
pub fn node_key(id: &str) -> String {
    format!("nodes/{id}")
}

/// Where a role's join token lives.
pub fn token_key(role: Role) -> String {
    format!(
        "tokens/{}",
        match role {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    )
}

/// Where the root CA's certificate lives (during a rotation: the new root, which issues).
pub const CA_CERT: &str = "ca/cert";
/// Where its key lives (only ever in the sealed store and in memory).
pub const CA_KEY: &str = "ca/key";
/// A CA rotation in progress (a [`CaRotation`]).
pub const CA_ROTATION: &str = "ca/rotation";

/// A CA rotation in progress: the old root (still trusted, and what join tokens pin until the
/// end), the new root cross-signed by the old (sent with every certificate the new root issues,
/// so that nodes that trust only the old root accept it), and the nodes asked to renew now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    pub old_cert: String,
    pub cross: String,
    pub started: i64,
    #[serde(default)]
    pub batch: Vec<String>,
}

/// Where an admin certificate's record lives (its value: an [`AdminRecord`]).
pub fn admin_key(name: &str) -> String {
    format!("admins/{name}")
}

/// An admin certificate the CA issued (`cluster ca --issue-admin`): accepted only while its
/// record is here and its serial the record's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    pub name: String,
    pub serial: String,
    pub not_after: i64,
    pub created: i64,
}

/// Where a denied certificate serial lives (its value: the certificate's expiry).
pub fn denied_key(serial: &str) -> String {
    format!("denied/{serial}")
}
