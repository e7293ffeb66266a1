//! Workload identity (issue 16): an X509-SVID for every running task, from a workload CA under
//! the cluster root.
//!
//! - **The key is made on the node** and never leaves it: the agent sends a certificate request
//!   for a task over its own mutually authenticated connection, and the leader answers with the
//!   SVID and the bundle.
//! - **A node gets identities only for its own live tasks**: the task must be under
//!   `nodetasks/<the caller's id>/`, the store's record must name that node, and the task must be
//!   meant to run. The SPIFFE ID comes from the store (the task's service and stack), never from
//!   the request.
//! - **The workload CA** (`ca/workload` in the sealed store, made by the first manager that needs
//!   it) issues SVIDs only. Node certificates come from the root alone, and a certificate with a
//!   URI name is never taken for a node's ([`crate::pki::identity`]). It is made again when the
//!   root changes (a CA rotation) or within 30 days of its end.
//! - SVIDs last an hour (`cluster ca --svid-expiry`); the agent renews them at half their life.

use serde::{Deserialize, Serialize};

use crate::manager::{Error, Manager, Result};
use crate::pki::{self, Ca};
use crate::services::Desired;
use crate::store::{Check, Op, Request};

/// Where the workload CA lives in the store.
pub const WORKLOAD_CA: &str = "ca/workload";
/// The SVIDs' lifetime unless `cluster ca --svid-expiry` says otherwise.
pub const SVID_LIFETIME: i64 = 3600;
/// The shortest and longest lifetimes allowed.
pub const SVID_LIFETIME_RANGE: std::ops::RangeInclusive<i64> = 10..=7 * 86400;
/// A certificate request is small: at most this many bytes.
const MAX_CSR: usize = 4096;

#[derive(Clone, Serialize, Deserialize)]
struct WorkloadCaRecord {
    cert: String,
    key: String,
    /// The digest of the root that issued it.
    root: String,
    not_after: i64,
}

impl Drop for WorkloadCaRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// A node's request for one of its tasks' identity.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdentityRequest {
    pub task: String,
    /// A PKCS#10 request (DER) for an ECDSA P-256 key made on the node.
    pub csr: Vec<u8>,
}

/// The answer: the SVID with the workload CA after it (PEM), the bundle (the roots, PEM).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdentityReply {
    pub spiffe_id: String,
    pub chain: String,
    pub bundle: String,
    pub not_after: i64,
}

impl Manager {
    /// How long SVIDs last.
    pub fn svid_lifetime(&self) -> i64 {
        self.get::<i64>("config/svid_expiry")
            .filter(|s| SVID_LIFETIME_RANGE.contains(s))
            .unwrap_or(SVID_LIFETIME)
    }

    /// The workload CA: the store's, or a new one under the current root.
    async fn workload_ca(&self, now: i64) -> Result<Ca> {
        let root = self.ca()?;
        for _ in 0..3 {
            let raw = self.sm.get(WORKLOAD_CA);
            let rec = raw.as_ref().and_then(|r| serde_json::from_slice::<WorkloadCaRecord>(r).ok());
            if let Some(rec) = rec.as_ref().filter(|r| r.root == root.digest() && r.not_after > now + 30 * 86400) {
                return Ok(Ca::from_pem(&rec.cert, &rec.key)?);
            }
            let (ca, cert) = root.workload_ca(&self.auth.cluster_id, now)?;
            let not_after = x509_parser::parse_x509_certificate(ca.cert_der())
                .map_err(|e| Error::Invalid(format!("the workload CA: {e}")))?
                .1
                .validity()
                .not_after
                .timestamp();
            let new = WorkloadCaRecord {
                cert,
                key: ca.key_pem().to_string(),
                root: root.digest(),
                not_after,
            };
            let mut value = serde_json::to_vec(&new).expect("serialisable");
            // Only over what was read: two managers making one at once keep the first.
            let applied = self
                .write(Request {
                    checks: vec![Check::Is {
                        key: WORKLOAD_CA.into(),
                        value: raw,
                    }],
                    ops: vec![Op::Put {
                        key: WORKLOAD_CA.into(),
                        value: value.clone(),
                    }],
                })
                .await?
                .applied;
            zeroize::Zeroize::zeroize(&mut value);
            if applied {
                return Ok(ca);
            }
        }
        Err(Error::Invalid("the workload CA changed under three attempts to make it".into()))
    }

    /// An SVID for task `req.task` of node `node` (the caller's certificate's id).
    pub async fn issue_identity(&self, node: &str, req: &IdentityRequest, now: i64) -> Result<IdentityReply> {
        if req.csr.len() > MAX_CSR {
            return Err(Error::Invalid(format!("a certificate request is at most {MAX_CSR} bytes")));
        }
        let refused = || Error::Invalid(format!("task {:?} is not a running task of this node", req.task));
        let key: String = self
            .sm
            .get(&crate::services::node_task_key(node, &req.task))
            .and_then(|k| String::from_utf8(k).ok())
            .ok_or_else(refused)?;
        let task: crate::services::TaskRecord = self.get(&key).ok_or_else(refused)?;
        if task.id != req.task || task.node.as_deref() != Some(node) || task.desired != Desired::Running {
            return Err(refused());
        }
        let spiffe_id = pki::spiffe_id(&self.auth.cluster_id, task.template.stack.as_deref(), &task.service)?;
        let ca = self.workload_ca(now).await?;
        let lifetime = self.svid_lifetime();
        let leaf = ca.issue_svid(&req.csr, &spiffe_id, now, lifetime)?;
        Ok(IdentityReply {
            spiffe_id,
            chain: leaf + ca.cert_pem(),
            bundle: self.trust_pem()?,
            not_after: now + lifetime,
        })
    }
}
