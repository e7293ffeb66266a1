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
//!   URI name is never taken for a node's ([`crate::pki::identity`]). The bundle workloads get
//!   holds the workload CAs, not the root, so a node's certificate never passes for a workload.
//!   A new CA is made when the root changes (a CA rotation), and ahead of the current one's end
//!   (see [`Manager::workload_cas`]).
//! - SVIDs last an hour (`cluster ca --svid-expiry`); the agent renews them at half their life.
//! - **Signing is rationed per task** ([`IdentityBudget`]): a node that asks again and again for
//!   its tasks' SVIDs gets a few, then one a quarter-lifetime, not the leader's CPU.

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

/// SVIDs one task may get at once (its start, its agent's restart, a retry or two).
const IDENTITY_BURST: f64 = 5.0;

/// The leader's ration of SVIDs, by node and task: [`IDENTITY_BURST`] at once, then one more
/// every quarter of an SVID's lifetime (an agent renews at half), between 1 s and 15 min. Only
/// tasks the store gives the node are counted, so it holds at most one entry per task; entries
/// back to a full ration are dropped as it grows.
#[derive(Default)]
pub struct IdentityBudget {
    /// (node, task) → (SVIDs left, when counted). On the monotonic clock: a wall clock set
    /// back, or forward and back, neither credits nor withholds a ration.
    left: std::collections::HashMap<(String, String), (f64, std::time::Instant)>,
    /// Entries after the last pruning.
    pruned_to: usize,
}

impl IdentityBudget {
    fn every(lifetime: i64) -> i64 {
        (lifetime / 4).clamp(1, 900)
    }

    /// Takes one SVID of the ration, if any is left.
    fn take(&mut self, node: &str, task: &str, lifetime: i64) -> bool {
        let every = Self::every(lifetime) as f64;
        let now = std::time::Instant::now();
        let credit = |n: f64, at: std::time::Instant| n + now.saturating_duration_since(at).as_secs_f64() / every;
        if self.left.len() >= 1024 && self.left.len() >= 2 * self.pruned_to {
            self.left.retain(|_, (n, at)| credit(*n, *at) < IDENTITY_BURST);
            self.pruned_to = self.left.len();
        }
        let (n, at) = self.left.entry((node.to_owned(), task.to_owned())).or_insert((IDENTITY_BURST, now));
        *n = credit(*n, *at).min(IDENTITY_BURST);
        *at = now;
        if *n < 1.0 {
            return false;
        }
        *n -= 1.0;
        true
    }

    /// Gives back what [`IdentityBudget::take`] took, for an SVID not issued through no fault
    /// of the caller's.
    fn give_back(&mut self, node: &str, task: &str) {
        if let Some((n, _)) = self.left.get_mut(&(node.to_owned(), task.to_owned())) {
            *n = (*n + 1.0).min(IDENTITY_BURST);
        }
    }
}

/// One workload CA as the store keeps it.
#[derive(Clone, Serialize, Deserialize)]
struct CaEntry {
    cert: String,
    key: String,
    not_after: i64,
}

impl Drop for CaEntry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// The workload CAs: the one that issues; the next, made 60 days before the current one ends and
/// in every bundle from then on, which issues from 30 days before; the previous, still in the
/// bundles while SVIDs it issued may live.
#[derive(Clone, Serialize, Deserialize)]
struct WorkloadCas {
    current: CaEntry,
    #[serde(default)]
    next: Option<CaEntry>,
    /// The previous CA's certificate, and until when bundles carry it.
    #[serde(default)]
    previous: Option<(String, i64)>,
    /// The digest of the root that issued `current` and `next`.
    root: String,
}

impl WorkloadCas {
    /// What workloads trust: the workload CAs, never the cluster root (which also issues the
    /// nodes' certificates: a workload that checks only the chain must not take a node for a
    /// peer).
    fn bundle(&self, now: i64) -> String {
        let mut pem = self.current.cert.clone();
        if let Some(n) = &self.next {
            pem.push_str(&n.cert);
        }
        if let Some((c, until)) = &self.previous {
            if *until > now {
                pem.push_str(c);
            }
        }
        pem
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

    fn new_workload_ca(&self, root: &Ca, now: i64) -> Result<CaEntry> {
        let (ca, cert) = root.workload_ca(&self.auth.cluster_id, now)?;
        let not_after = x509_parser::parse_x509_certificate(ca.cert_der())
            .map_err(|e| Error::Invalid(format!("the workload CA: {e}")))?
            .1
            .validity()
            .not_after
            .timestamp();
        Ok(CaEntry {
            cert,
            key: ca.key_pem().to_string(),
            not_after,
        })
    }

    /// The workload CAs, brought up to date and written if they changed:
    /// - none yet, or the root changed (a CA rotation, after which the old key may be known): a
    ///   new one issues at once; the old stays in bundles for one SVID lifetime;
    /// - 60 days before the current one ends: a next one, in bundles from now on;
    /// - 30 days before: the next one issues, the current one stays in bundles until its end.
    ///
    /// A CA near the root's own end is kept (a new one would end no later).
    async fn workload_cas(&self, now: i64) -> Result<WorkloadCas> {
        const DAY: i64 = 86400;
        let root = self.ca()?;
        let root_digest = root.digest();
        let root_end = x509_parser::parse_x509_certificate(root.cert_der())
            .map_err(|e| Error::Invalid(format!("the CA: {e}")))?
            .1
            .validity()
            .not_after
            .timestamp();
        for _ in 0..3 {
            let raw = self.sm.get(WORKLOAD_CA);
            let old = raw.as_ref().and_then(|r| serde_json::from_slice::<WorkloadCas>(r).ok());
            let new = match &old {
                None => WorkloadCas {
                    current: self.new_workload_ca(&root, now)?,
                    next: None,
                    previous: None,
                    root: root_digest.clone(),
                },
                Some(o) if o.root != root_digest => WorkloadCas {
                    current: self.new_workload_ca(&root, now)?,
                    next: None,
                    previous: Some((o.current.cert.clone(), now + self.svid_lifetime())),
                    root: root_digest.clone(),
                },
                Some(o) if o.current.not_after - now < 30 * DAY && o.next.is_some() => WorkloadCas {
                    current: o.next.clone().expect("checked"),
                    next: None,
                    previous: Some((o.current.cert.clone(), o.current.not_after)),
                    root: o.root.clone(),
                },
                Some(o) if o.next.is_none() && o.current.not_after - now < 60 * DAY && root_end > o.current.not_after => WorkloadCas {
                    next: Some(self.new_workload_ca(&root, now)?),
                    ..o.clone()
                },
                Some(o) => return Ok(o.clone()),
            };
            let mut value = serde_json::to_vec(&new).expect("serialisable");
            // Only over what was read: two managers changing it at once keep the first.
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
                return Ok(new);
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
        let lifetime = self.svid_lifetime();
        let budget = || self.identity_budget.lock().expect("not poisoned");
        if !budget().take(node, &req.task, lifetime) {
            return Err(Error::Busy(format!(
                "task {:?} asked for more SVIDs than it needs: one more in {} s at most",
                req.task,
                IdentityBudget::every(lifetime)
            )));
        }
        // The workload CA failing (no quorum to write a new one) is the cluster's fault: the
        // ration is given back. A request that does not sign (a bad CSR, another curve) is
        // the caller's, and costs what a good one does: parsing it is most of the work.
        let cas = match self.workload_cas(now).await {
            Ok(c) => c,
            Err(e) => {
                budget().give_back(node, &req.task);
                return Err(e);
            }
        };
        let ca = Ca::from_pem(&cas.current.cert, &cas.current.key)?;
        let leaf = ca.issue_svid(&req.csr, &spiffe_id, now, lifetime)?;
        Ok(IdentityReply {
            spiffe_id,
            chain: leaf + ca.cert_pem(),
            bundle: cas.bundle(now),
            not_after: now + lifetime,
        })
    }
}
