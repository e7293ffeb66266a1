//! A manager: the cluster's state in the replicated store, and the calls that change it (writes
//! forwarded to the leader, joins, adding a manager to Raft).
//!
//! Keys of the store: `cluster/id`, `ca/cert`, `ca/key` (only ever in the sealed store and in
//! memory), `tokens/<role>` (a [`TokenRecord`]: the secret's hash and its limits), and
//! `nodes/<id>` (a [`NodeRecord`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::pki::{self, Ca, JoinToken, Role, TokenRecord};
use crate::proto;
use crate::store::{Check, NodeId, Op, Request, Response, StateMachine};
use crate::transport::{self, Auth, Raft};

/// The header a manager that is not the leader names the leader in.
const LEADER_HEADER: &str = "bulkhead-leader";

/// How long a write may wait for a quorum before the cluster is said to be read-only.
const WRITE: Duration = Duration::from_secs(10);
/// Default lifetime of node certificates (24 h).
pub const CERT_LIFETIME: i64 = 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("the cluster has no quorum: it is read-only until a majority of its managers is back (or run `cluster init --force-new-cluster` on a survivor)")]
    NoQuorum,
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// Asked for more than a caller needs, or more than this manager takes at once; later.
    #[error("{0}")]
    Busy(String),
    /// Only the leader does this; here is where it is (if known).
    #[error("not the leader{}", .0.as_ref().map(|a| format!(": ask {a}")).unwrap_or_default())]
    NotLeader(Option<String>),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::NoQuorum => Status::unavailable(e.to_string()),
            Error::Busy(_) => Status::resource_exhausted(e.to_string()),
            Error::NotLeader(Some(ref a)) => {
                let mut s = Status::failed_precondition(e.to_string());
                if let Ok(v) = a.parse() {
                    s.metadata_mut().insert(LEADER_HEADER, v);
                }
                s
            }
            Error::Pki(pki::Error::Token(_)) => Status::permission_denied(e.to_string()),
            e => Status::invalid_argument(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub use crate::records::{token_key, CaRotation, NodeRecord};
use crate::records::{CA_CERT, CA_KEY, CA_ROTATION};

/// Nodes asked to renew at once during a CA rotation.
const ROTATION_BATCH: usize = 32;

/// A fresh node id: 16 hex digits.
pub fn new_node_id() -> Result<String> {
    Ok(hex::encode(crate::crypt::random::<8>().map_err(|e| Error::Invalid(e.to_string()))?))
}

/// A fresh Raft id (never 0).
pub fn new_raft_id() -> Result<NodeId> {
    let b = crate::crypt::random::<8>().map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(u64::from_be_bytes(b) | 1)
}

/// One manager's view of the cluster.
#[derive(Clone)]
pub struct Manager {
    pub raft: Raft,
    pub sm: StateMachine,
    pub auth: Auth,
    /// This manager's client side (to forward writes to the leader).
    pub tls: Arc<rustls::ClientConfig>,
    /// Writes proposed here, several to an entry of the log.
    pub writes: Proposer,
    /// SVIDs signed here, rationed by node and task.
    pub(crate) identity_budget: Arc<std::sync::Mutex<crate::identity::IdentityBudget>>,
}

/// A write waiting for its entry: the request, its size, who waits, until when.
struct Proposal {
    req: Request,
    size: usize,
    tx: tokio::sync::oneshot::Sender<ProposeResult>,
    deadline: tokio::time::Instant,
}

impl Proposal {
    /// Its caller has given up: proposing it now could land it after the caller's retry.
    fn abandoned(&self) -> bool {
        self.tx.is_closed() || tokio::time::Instant::now() >= self.deadline
    }
}

pub type ProposeResult = std::result::Result<Response, RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>>;

/// Requests in one entry of the log, and their bytes.
const BATCH_REQUESTS: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;
/// The largest request proposed: an entry goes to a follower alone however big it is, and must
/// be taken in within openraft's AppendEntries timeout (the 500 ms heartbeat). No write of the
/// cluster's comes near (a secret is at most 500 KiB, a report's write 2 MiB).
pub const MAX_WRITE_BYTES: usize = 4 << 20;
/// Entries of batched writes in flight at once: while they are, new writes gather.
const BATCHES_IN_FLIGHT: usize = 2;

/// Group commit: writes proposed at once share one entry of the log (one append and fsync on
/// each manager, one round of replication), each applied or not on its own checks, as if it
/// had its own entry. openraft 0.9 appends, fsyncs and replicates each `client_write` as an
/// entry of its own; at 5,000 nodes reporting, one entry per report held the log to the disk's
/// fsync rate and a user's write waited behind thousands of them.
///
/// Entries are proposed from one loop, in the order their writes came; only the waits for
/// their commits run beside it. A write whose caller has given up is dropped unproposed.
#[derive(Clone)]
pub struct Proposer {
    tx: tokio::sync::mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Starts the loop that gathers writes for `raft` (it ends when the last handle goes).
    pub fn start(raft: Raft) -> Proposer {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Proposal>(4 * BATCH_REQUESTS);
        tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
            // A write that would have taken its entry past BATCH_BYTES: the next entry's first.
            let mut held: Option<Proposal> = None;
            loop {
                let first = match held.take() {
                    Some(p) => p,
                    None => match rx.recv().await {
                        Some(p) => p,
                        None => return,
                    },
                };
                // Waiting for a slot is when writes gather.
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let mut batch: Vec<Proposal> = Vec::new();
                let mut bytes = 0;
                let mut next = Some(first);
                while let Some(p) = next.take() {
                    if !p.abandoned() {
                        if !batch.is_empty() && (batch.len() >= BATCH_REQUESTS || bytes + p.size > BATCH_BYTES) {
                            held = Some(p);
                            break;
                        }
                        bytes += p.size;
                        batch.push(p);
                    }
                    next = rx.try_recv().ok();
                }
                if batch.is_empty() {
                    continue;
                }
                let answer = Proposer::propose_entry(&raft, batch).await;
                tokio::spawn(async move {
                    answer.await;
                    drop(slot);
                });
            }
        });
        Proposer { tx }
    }

    /// Proposes one entry for `batch` (here, so that entries keep the writes' order), and
    /// returns what answers its callers once it is committed. An entry not committed within
    /// [`WRITE`] answers nobody (its callers have given up by then), and frees its slot.
    async fn propose_entry(raft: &Raft, batch: Vec<Proposal>) -> impl std::future::Future<Output = ()> {
        let single = batch.len() == 1;
        let (reqs, txs): (Vec<Request>, Vec<_>) = batch.into_iter().map(|p| (p.req, p.tx)).unzip();
        let req = if single {
            reqs.into_iter().next().expect("one")
        } else {
            // Callers are refused parts of their own in `propose`: a batch always forms.
            Request::batch(reqs).expect("no parts")
        };
        let proposed = raft.client_write_ff(req).await;
        async move {
            let written: ProposeResult = match proposed {
                Err(fatal) => Err(RaftError::Fatal(fatal)),
                Ok(rx) => match tokio::time::timeout(WRITE, rx).await {
                    Err(_) => return,
                    Ok(Err(_)) => Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
                    Ok(Ok(r)) => r.map(|r| r.data).map_err(RaftError::APIError),
                },
            };
            match written {
                Ok(r) if single => {
                    let _ = txs.into_iter().next().expect("one").send(Ok(r));
                }
                Ok(r) if r.parts.len() == txs.len() => {
                    for (tx, applied) in txs.into_iter().zip(r.parts) {
                        let _ = tx.send(Ok(Response { applied, parts: vec![] }));
                    }
                }
                // Not what was proposed: none of these is known to have applied or not.
                Ok(_) => {}
                Err(e) => {
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Proposes `req` here, with others that come at the same time, unless `deadline` passes
    /// first; as `Raft::client_write`.
    pub async fn propose(&self, req: Request, deadline: tokio::time::Instant) -> Result<ProposeResult> {
        if req.has_parts() {
            return Err(Error::Invalid("a write of parts is made here, not asked for".into()));
        }
        let size = req.size();
        if size > MAX_WRITE_BYTES {
            return Err(Error::Invalid(format!(
                "a write of {size} bytes: at most {MAX_WRITE_BYTES} go into the log at once"
            )));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let p = Proposal { req, size, tx, deadline };
        match tokio::time::timeout_at(deadline, self.tx.send(p)).await {
            Err(_) => return Err(Error::NoQuorum),
            Ok(Err(_)) => return Err(Error::Busy("this manager is stopping".into())),
            Ok(Ok(())) => {}
        }
        // No answer: its entry was not committed in time, or this manager is stopping.
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => Ok(r),
            _ => Err(Error::NoQuorum),
        }
    }
}

impl Manager {
    /// A manager over `raft` and its state machine (it starts the loop that gathers writes:
    /// call inside a runtime).
    pub fn new(raft: Raft, sm: StateMachine, auth: Auth, tls: Arc<rustls::ClientConfig>) -> Manager {
        Manager {
            writes: Proposer::start(raft.clone()),
            identity_budget: Default::default(),
            raft,
            sm,
            auth,
            tls,
        }
    }

    /// A value of the store as JSON.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.sm.get(key).and_then(|v| serde_json::from_slice(&v).ok())
    }

    /// Writes here, as the leader of `term`, within [`WRITE`]; refused if this manager no
    /// longer leads in that term (what a leader decided is not written by the next one's hand).
    pub async fn write_as_leader(&self, req: Request, term: u64) -> Result<Response> {
        if self.raft.metrics().borrow().current_term != term {
            return Err(Error::Invalid("no longer the leader of the term this was decided in".into()));
        }
        match tokio::time::timeout(WRITE, self.raft.client_write(req)).await {
            Err(_) => Err(Error::NoQuorum),
            Ok(Ok(r)) => Ok(r.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(Error::Invalid("no longer the leader of the term this was decided in".into()))
            }
            Ok(Err(e)) => Err(Error::Invalid(e.to_string())),
        }
    }

    /// Writes through the leader (here, or forwarded to it), within [`WRITE`]; a quorum that
    /// does not answer is [`Error::NoQuorum`], never a hang.
    pub async fn write(&self, req: Request) -> Result<Response> {
        let deadline = tokio::time::Instant::now() + WRITE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = match self.writes.propose(req.clone(), deadline).await {
                Err(e) => return Err(e),
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader {
                    leader_node: Some(leader), ..
                })))) => tokio::time::timeout(left, self.forward(&leader.addr, &req))
                    .await
                    .unwrap_or(Err(Error::NoQuorum)),
                // No leader known: an election is on, or there is no majority.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(Error::NoQuorum),
                Ok(Err(e)) => return Err(Error::Invalid(e.to_string())),
            };
            match attempt {
                Ok(r) => return Ok(r),
                // The leader known here is unreachable or has none of its own: wait for an
                // election to settle, within the deadline.
                Err(Error::NoQuorum) | Err(Error::Invalid(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(Error::Invalid(_)) => return Err(Error::NoQuorum),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a write to the leader at `addr` (a refusal by the leader is final, not retried).
    async fn forward(&self, addr: &str, req: &Request) -> Result<Response> {
        let ch = transport::connect(addr, self.tls.clone())
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let payload = crate::codec::encode(req).map_err(Error::Invalid)?;
        let r = proto::control_client::ControlClient::new(ch)
            .write(proto::Payload { json: payload })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable | tonic::Code::FailedPrecondition | tonic::Code::Unknown | tonic::Code::Cancelled => {
                    Error::Invalid(format!("the leader at {addr}: {}", s.message()))
                }
                _ => Error::Pki(pki::Error::Invalid(format!("the leader refused the write: {}", s.message()))),
            })?;
        crate::codec::decode(&r.get_ref().json).map_err(Error::Invalid)
    }

    /// One unconditional put, through the leader.
    pub async fn put(&self, key: impl Into<String>, value: Vec<u8>) -> Result<()> {
        self.write(Request {
            checks: vec![],
            ops: vec![Op::Put { key: key.into(), value }],
        })
        .await?;
        Ok(())
    }

    /// Writes `ops` into a store that has no cluster yet: whether it had none.
    async fn write_if_new(&self, ops: Vec<Op>) -> Result<bool> {
        let r = self
            .write(Request {
                checks: vec![Check::Is {
                    key: "cluster/id".into(),
                    value: None,
                }],
                ops,
            })
            .await?;
        Ok(r.applied)
    }

    /// Puts the first state of a new cluster (after Raft's initialisation): its id, the CA, and
    /// the two join tokens, which it returns (worker, manager).
    pub async fn init_state(&self, ca: &Ca, first: &NodeRecord) -> Result<(JoinToken, JoinToken)> {
        let worker = JoinToken::generate(&ca.digest())?;
        let manager = JoinToken::generate(&ca.digest())?;
        let rec = |t: &JoinToken, role| TokenRecord::new(t, role, None, None);
        let ops = vec![
            Op::Put {
                key: "cluster/id".into(),
                value: self.auth.cluster_id.clone().into_bytes(),
            },
            Op::Put {
                key: CA_CERT.into(),
                value: ca.cert_pem().as_bytes().to_vec(),
            },
            Op::Put {
                key: CA_KEY.into(),
                value: ca.key_pem().as_bytes().to_vec(),
            },
            Op::Put {
                key: token_key(Role::Worker),
                value: json(&rec(&worker, Role::Worker)),
            },
            Op::Put {
                key: token_key(Role::Manager),
                value: json(&rec(&manager, Role::Manager)),
            },
            Op::Put {
                key: format!("nodes/{}", first.id),
                value: json(first),
            },
        ];
        if !self.write_if_new(ops).await? {
            return Err(Error::Invalid("the cluster is initialised already".into()));
        }
        Ok((worker, manager))
    }

    /// The cluster's CA (certificate and key), from the store.
    pub fn ca(&self) -> Result<Ca> {
        let cert = self
            .sm
            .get(CA_CERT)
            .ok_or_else(|| Error::Invalid("no CA in the store yet".into()))?;
        let key = zeroize::Zeroizing::new(self.sm.get(CA_KEY).ok_or_else(|| Error::Invalid("no CA key in the store".into()))?);
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| Error::Invalid("the CA in the store is not text".into()));
        Ok(Ca::from_pem(&text(&cert)?, &zeroize::Zeroizing::new(text(&key)?))?)
    }

    /// A new join token for `role` (the old one stops working at once), with an expiry and a
    /// number of uses if given.
    pub async fn rotate_token(&self, role: Role, ttl: Option<i64>, uses: Option<u32>, now: i64) -> Result<JoinToken> {
        let t = JoinToken::generate(&self.token_digest()?)?;
        let rec = TokenRecord::new(&t, role, ttl.map(|s| now + s), uses);
        self.write(Request {
            checks: vec![],
            ops: vec![Op::Put {
                key: token_key(role),
                value: json(&rec),
            }],
        })
        .await?;
        Ok(t)
    }

    /// Admits a node with a join token: its certificate for the key of `csr`, with the role the
    /// token is for, a fresh id, and the token's use counted, in one write that applies only if
    /// the token did not change meanwhile.
    pub async fn join(&self, token: &str, csr: &[u8], addr: Option<String>, now: i64) -> Result<(NodeRecord, String)> {
        let presented = JoinToken::parse(token)?;
        let ca = self.ca()?;
        for _ in 0..5 {
            let mut refusal = pki::Error::Token("wrong or rotated token");
            let mut found = None;
            for role in [Role::Worker, Role::Manager] {
                let Some(raw) = self.sm.get(&token_key(role)) else { continue };
                let rec: TokenRecord =
                    serde_json::from_slice(&raw).map_err(|e| Error::Invalid(format!("the {role:?} token record: {e}")))?;
                match rec.admits(&presented, &self.token_digest()?, now) {
                    Ok(()) => found = Some((role, raw, rec)),
                    Err(pki::Error::Token("wrong or rotated token")) => {}
                    Err(e) => refusal = e,
                }
            }
            let Some((role, raw, rec)) = found else {
                return Err(refusal.into());
            };
            let id = new_node_id()?;
            let cert = self.chain(ca.issue(csr, &id, role, &self.auth.cluster_id, now, self.cert_lifetime())?);
            let ident = pki::identity(cert.as_bytes())?;
            let raft_id = (role == Role::Manager).then(new_raft_id).transpose()?;
            let addr = if role == Role::Manager { addr.clone() } else { None };
            let node = NodeRecord::new(&ident, raft_id, addr, now);
            let mut ops = vec![Op::Put {
                key: format!("nodes/{id}"),
                value: json(&node),
            }];
            if let Some(n) = rec.uses_left {
                let used = TokenRecord {
                    uses_left: Some(n - 1),
                    ..rec.clone()
                };
                ops.push(Op::Put {
                    key: token_key(role),
                    value: json(&used),
                });
            }
            let r = self
                .write(Request {
                    checks: vec![Check::Is {
                        key: token_key(role),
                        value: Some(raw),
                    }],
                    ops,
                })
                .await?;
            if r.applied {
                return Ok((node, cert));
            }
            // The token changed (used, rotated) meanwhile: judge it again.
        }
        Err(Error::Invalid("the join token keeps changing; try again".into()))
    }

    /// Writes that replace both join tokens with new ones pinning the root of digest `pin`,
    /// each keeping its expiry (if still ahead) and uses left: for when the old ones must stop
    /// working (a manager that knew them is gone, a CA rotation ends, a recovery).
    fn new_tokens(&self, pin: &str, now: i64) -> Result<Vec<Op>> {
        let mut ops = Vec::new();
        for role in [Role::Worker, Role::Manager] {
            let t = JoinToken::generate(pin)?;
            let old: Option<TokenRecord> = self.get(&token_key(role));
            ops.push(Op::Put {
                key: token_key(role),
                value: json(&TokenRecord::new(
                    &t,
                    role,
                    old.as_ref().and_then(|o| o.expires).filter(|e| *e > now),
                    old.and_then(|o| o.uses_left),
                )),
            });
        }
        Ok(ops)
    }

    /// Puts a recovered store (`--force-new-cluster`, `cluster restore`) into this new Raft of
    /// one manager, `me`: every key, except that the other managers are removed (their
    /// certificates denied, as `node rm` does: they are not in this Raft, and a copy of the old
    /// one must not come back); then both join tokens are replaced. Returns the removed ids.
    pub async fn recover_state(
        &self,
        data: &std::collections::BTreeMap<String, Vec<u8>>,
        me: &NodeRecord,
        now: i64,
    ) -> Result<Vec<String>> {
        if !self.sm.scan("").is_empty() {
            return Err(Error::Invalid("this manager's new store is not empty".into()));
        }
        let mut ops = Vec::new();
        let mut removed = Vec::new();
        for (k, v) in data {
            // Admin certificates are issued again: one revoked after the backup was taken must
            // not come back with it.
            if k.starts_with("admins/") {
                continue;
            }
            if let Some(id) = k.strip_prefix("nodes/") {
                if id == me.id {
                    continue;
                }
                if let Ok(rec) = serde_json::from_slice::<NodeRecord>(v) {
                    if rec.role == Role::Manager {
                        for serial in std::iter::once(&rec.serial).chain(rec.previous_serial.as_ref()) {
                            ops.push(Op::Put {
                                key: crate::records::denied_key(serial),
                                value: json(&rec.not_after),
                            });
                        }
                        removed.push(rec.id);
                        continue;
                    }
                }
            }
            ops.push(Op::Put {
                key: k.clone(),
                value: v.clone(),
            });
        }
        ops.push(Op::Put {
            key: crate::records::node_key(&me.id),
            value: json(me),
        });
        if !self.write_if_new(ops).await? {
            return Err(Error::Invalid("this manager's new store is not empty".into()));
        }
        let tokens = self.new_tokens(&self.token_digest()?, now)?;
        self.write(Request {
            checks: vec![],
            ops: tokens,
        })
        .await?;
        Ok(removed)
    }

    /// Promotes a worker or demotes a manager, in one write that applies only if its record did
    /// not change meanwhile. A promoted node gets a Raft id here, and asks to join Raft once it
    /// has renewed into a manager's certificate; a demoted one leaves Raft by the leader's hand
    /// ([`Manager::reconcile_membership`]). The last manager cannot be demoted.
    pub async fn set_role(&self, id: &str, role: Role) -> Result<NodeRecord> {
        let key = crate::records::node_key(id);
        let raw = self.sm.get(&key).ok_or_else(|| Error::Invalid(format!("no such node: {id}")))?;
        let mut rec: NodeRecord = serde_json::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
        if rec.role == role {
            return Ok(rec);
        }
        match role {
            Role::Admin => return Err(Error::Invalid("a node is a manager or a worker".into())),
            Role::Worker => {
                if self.nodes().iter().filter(|n| n.role == Role::Manager && !n.demoting).count() <= 1 {
                    return Err(Error::Invalid("the last manager cannot be demoted".into()));
                }
                if rec.demoting {
                    return Ok(rec);
                }
                // Out of Raft first (reconcile_membership), as a manager; then a worker.
                rec.demoting = true;
            }
            Role::Manager => {
                rec.role = role;
                rec.raft_id = Some(new_raft_id()?);
                rec.addr = None;
                // Only the current certificate renews into the new role.
                rec.previous_serial = None;
            }
        }
        let r = self
            .write(Request {
                checks: vec![Check::Is {
                    key: key.clone(),
                    value: Some(raw),
                }],
                ops: vec![Op::Put { key, value: json(&rec) }],
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid(format!("node {id} changed meanwhile; try again")));
        }
        Ok(rec)
    }

    /// On the leader: Raft's voters that the store does not keep as managers (being demoted,
    /// removed) leave Raft, and a manager being demoted that has left becomes a worker. Never
    /// the last voter, and nothing before the store is there.
    pub async fn reconcile_membership(&self) -> Result<()> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) || self.sm.get("cluster/id").is_none() {
            return Ok(());
        }
        // On a store that has applied all it must have (a new leader's may lag its log).
        tokio::time::timeout(WRITE, self.raft.ensure_linearizable())
            .await
            .map_err(|_| Error::NoQuorum)?
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let m = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let members: BTreeSet<NodeId> = m.membership_config.membership().nodes().map(|(n, _)| *n).collect();
        for n in self.nodes().into_iter().filter(|n| n.demoting) {
            if n.raft_id.is_some_and(|r| members.contains(&r)) {
                continue;
            }
            let key = crate::records::node_key(&n.id);
            let raw = self.sm.get(&key);
            let worker = NodeRecord {
                role: Role::Worker,
                raft_id: None,
                addr: None,
                demoting: false,
                ..n
            };
            self.write(Request {
                checks: vec![Check::Is {
                    key: key.clone(),
                    value: raw,
                }],
                ops: vec![Op::Put { key, value: json(&worker) }],
            })
            .await?;
            tracing::info!(node = %worker.id, "demoted: out of Raft, now a worker");
        }
        let managers: BTreeSet<NodeId> = self
            .nodes()
            .into_iter()
            .filter(|n| n.role == Role::Manager && !n.demoting)
            .filter_map(|n| n.raft_id)
            .collect();
        let keep: BTreeSet<NodeId> = voters.intersection(&managers).copied().collect();
        if keep.len() == voters.len() || keep.is_empty() {
            return Ok(());
        }
        tracing::info!(?keep, "Raft's voters: the store's managers only");
        tokio::time::timeout(WRITE, self.raft.change_membership(keep, false))
            .await
            .map_err(|_| Error::NoQuorum)?
            .map_err(|e| Error::Invalid(e.to_string()))?;
        // Those being demoted are workers at once (not a tick later, when one could have asked
        // to be added back).
        Box::pin(self.reconcile_membership()).await
    }

    /// Whether this manager is a voter in Raft: one that is not (demoted or removed, or still
    /// catching up) has a store that may lag for ever, and tells nodes to ask another.
    pub fn voting(&self) -> std::result::Result<(), Status> {
        let m = self.raft.metrics().borrow().clone();
        if m.membership_config.membership().voter_ids().any(|v| v == m.id) {
            Ok(())
        } else {
            Err(Status::unavailable("this manager is not a voter in Raft: ask another"))
        }
    }

    /// An admin certificate for the key of `csr`, valid `lifetime` seconds, recorded in the store
    /// (so that removing the record revokes it). Returns its name and the certificate.
    pub async fn issue_admin(&self, csr: &[u8], lifetime: i64, now: i64) -> Result<(String, String)> {
        let name = format!("admin{}", new_node_id()?);
        let cert = self.chain(self.ca()?.issue(csr, &name, Role::Admin, &self.auth.cluster_id, now, lifetime)?);
        let ident = pki::identity(cert.as_bytes())?;
        let rec = crate::records::AdminRecord {
            name: name.clone(),
            serial: ident.serial,
            not_after: ident.not_after,
            created: now,
        };
        self.write(Request {
            checks: vec![],
            ops: vec![Op::Put {
                key: crate::records::admin_key(&name),
                value: json(&rec),
            }],
        })
        .await?;
        Ok((name, cert))
    }

    /// A CA rotation in progress, if any.
    pub fn rotation(&self) -> Option<CaRotation> {
        self.get(CA_ROTATION)
    }

    /// The roots every node trusts: the CA, and during a rotation the old root too (PEM).
    pub fn trust_pem(&self) -> Result<String> {
        let ca = self
            .sm
            .get(CA_CERT)
            .ok_or_else(|| Error::Invalid("no CA in the store yet".into()))?;
        let mut pem = String::from_utf8(ca).map_err(|_| Error::Invalid("the CA in the store is not text".into()))?;
        if let Some(r) = self.rotation() {
            pem.push_str(&r.old_cert);
        }
        Ok(pem)
    }

    /// The digest of the root join tokens pin: the old root until a rotation is done.
    pub fn token_digest(&self) -> Result<String> {
        match self.rotation() {
            Some(r) => Ok(pki::digest(&crate::tls::certs(&r.old_cert)?[0])),
            None => Ok(self.ca()?.digest()),
        }
    }

    /// A certificate the CA just issued, with the cross-signed new root after it during a
    /// rotation (so that it verifies against either root).
    fn chain(&self, cert: String) -> String {
        match self.rotation() {
            Some(r) => cert + &r.cross,
            None => cert,
        }
    }

    /// How often nodes check in (`cluster init --dispatcher-heartbeat`), 5 s unless set.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.get::<u64>("config/heartbeat_ms").unwrap_or(5000).clamp(200, 60_000))
    }

    /// Starts a CA rotation: a new root (a new key) cross-signed by the old, which issues every
    /// certificate from now on; the old one stays trusted until every node has a certificate of
    /// the new one ([`Manager::drive_ca_rotation`] asks them in batches), then goes, and the join
    /// tokens change.
    pub async fn start_ca_rotation(&self, now: i64) -> Result<()> {
        if self.rotation().is_some() {
            return Err(Error::Invalid("a CA rotation is in progress already".into()));
        }
        let old = self.ca()?;
        let (new, cross) = old.successor(&self.auth.cluster_id, now, 10)?;
        let rotation = CaRotation {
            old_cert: old.cert_pem().to_owned(),
            cross,
            started: now,
            batch: Vec::new(),
        };
        let r = self
            .write(Request {
                checks: vec![
                    Check::Is {
                        key: CA_CERT.into(),
                        value: Some(old.cert_pem().as_bytes().to_vec()),
                    },
                    Check::Is {
                        key: CA_ROTATION.into(),
                        value: None,
                    },
                ],
                ops: vec![
                    Op::Put {
                        key: CA_CERT.into(),
                        value: new.cert_pem().as_bytes().to_vec(),
                    },
                    Op::Put {
                        key: CA_KEY.into(),
                        value: new.key_pem().as_bytes().to_vec(),
                    },
                    Op::Put {
                        key: CA_ROTATION.into(),
                        value: json(&rotation),
                    },
                ],
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid("the CA changed meanwhile; try again".into()));
        }
        Ok(())
    }

    /// Where a CA rotation stands: the nodes whose certificate is not yet the new root's (a
    /// node whose certificate has expired is not waited for: it can only come back with a join
    /// token, after the rotation).
    pub fn ca_pending(&self, now: i64) -> Result<Vec<NodeRecord>> {
        let key_id = self.ca()?.key_id()?;
        Ok(self
            .nodes()
            .into_iter()
            .filter(|n| n.issuer.as_deref() != Some(key_id.as_str()) && n.not_after > now)
            .collect())
    }

    /// One step of a CA rotation, on the leader: the next batch of nodes to renew when the last
    /// one is done, and the end when no node is left (the old root goes, and both join tokens
    /// change, keeping their limits). Nothing without a rotation or on a follower.
    pub async fn drive_ca_rotation(&self, now: i64) -> Result<()> {
        let Some(raw) = self.sm.get(CA_ROTATION) else { return Ok(()) };
        {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader != Some(m.id) {
                return Ok(());
            }
        }
        let mut rotation: CaRotation = serde_json::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
        let pending: Vec<String> = self.ca_pending(now)?.into_iter().map(|n| n.id).collect();
        let ops = if pending.is_empty() {
            let mut ops = vec![Op::Delete { key: CA_ROTATION.into() }];
            ops.extend(self.new_tokens(&self.ca()?.digest(), now)?);
            tracing::info!("CA rotation done: the old root is no longer trusted, and the join tokens changed");
            ops
        } else if rotation.batch.iter().any(|n| pending.contains(n)) {
            return Ok(());
        } else {
            rotation.batch = pending.into_iter().take(ROTATION_BATCH).collect();
            tracing::info!(batch = ?rotation.batch, "CA rotation: the next nodes renew");
            vec![Op::Put {
                key: CA_ROTATION.into(),
                value: json(&rotation),
            }]
        };
        self.write(Request {
            checks: vec![Check::Is {
                key: CA_ROTATION.into(),
                value: Some(raw),
            }],
            ops,
        })
        .await?;
        Ok(())
    }

    /// How long node certificates last (`cluster init --cert-expiry`), 24 h unless set.
    pub fn cert_lifetime(&self) -> i64 {
        self.get::<i64>("config/cert_expiry").unwrap_or(CERT_LIFETIME)
    }

    /// A new certificate for a node that holds a valid one (`caller`, from its TLS
    /// certificate), for the key of `csr`: same id, the role the store says, and the store's
    /// record of its serial updated. A removed node has no record, and gets nothing.
    pub async fn renew(&self, caller: &pki::Identity, csr: &[u8], now: i64) -> Result<String> {
        let key = format!("nodes/{}", caller.node_id);
        let raw = self
            .sm
            .get(&key)
            .ok_or_else(|| Error::Invalid("this node is not in the cluster".into()))?;
        let rec: NodeRecord = serde_json::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
        // Only from the certificate the store knows as the node's (or the one it just renewed
        // from): a stale copy of an older one renews nothing.
        if rec.serial != caller.serial && rec.previous_serial.as_deref() != Some(caller.serial.as_str()) {
            return Err(Error::Invalid("a superseded certificate cannot be renewed".into()));
        }
        if rec.role != caller.role && rec.serial != caller.serial {
            return Err(Error::Invalid("only the current certificate renews into a new role".into()));
        }
        let cert = self.chain(
            self.ca()?
                .issue(csr, &rec.id, rec.role, &self.auth.cluster_id, now, self.cert_lifetime())?,
        );
        let ident = pki::identity(cert.as_bytes())?;
        let updated = NodeRecord {
            previous_serial: Some(rec.serial.clone()),
            serial: ident.serial,
            not_after: ident.not_after,
            issuer: ident.issuer_key,
            ..rec
        };
        let r = self
            .write(Request {
                checks: vec![Check::Is {
                    key: key.clone(),
                    value: Some(raw),
                }],
                ops: vec![Op::Put {
                    key,
                    value: json(&updated),
                }],
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid("the node's record changed meanwhile; try again".into()));
        }
        Ok(cert)
    }

    /// Removes a node: its record goes, and its certificate's serial goes on the deny list that
    /// every manager checks on every call, until the certificate expires. A manager leaves Raft
    /// first.
    pub async fn remove_node(&self, id: &str, force: bool, now: i64) -> Result<NodeRecord> {
        let key = crate::records::node_key(id);
        let raw = self.sm.get(&key).ok_or_else(|| Error::Invalid(format!("no such node: {id}")))?;
        let rec: NodeRecord = serde_json::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
        if rec.role == Role::Manager {
            // As in Swarm: a manager leaves Raft by demotion. A manager that is gone for good
            // can be forced out, but not the leader (its own removal would cut it off before it
            // could commit it).
            if !force {
                return Err(Error::Invalid(format!(
                    "node {id} is a manager: `node demote` it first (`node rm --force` one that is gone for good)"
                )));
            }
            let m = self.raft.metrics().borrow().clone();
            if rec.raft_id.is_some() && rec.raft_id == m.current_leader {
                return Err(Error::Invalid(format!(
                    "node {id} is the leader: demote it, or stop it and wait for another leader"
                )));
            }
        }
        let voters_after: Option<BTreeSet<NodeId>> = rec.raft_id.map(|r| {
            self.raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != r)
                .collect()
        });
        if voters_after.as_ref().is_some_and(|v| v.is_empty()) {
            return Err(Error::Invalid("the last manager cannot be removed".into()));
        }
        // First, in one write: the record goes and its certificates (current and previous) are
        // denied, so that nothing of it is accepted from here on, not even a call to add itself
        // back. A manager knew the join tokens: both are replaced.
        let mut ops = vec![Op::Delete { key: key.clone() }];
        for serial in std::iter::once(&rec.serial).chain(rec.previous_serial.as_ref()) {
            ops.push(Op::Put {
                key: crate::records::denied_key(serial),
                value: json(&rec.not_after),
            });
        }
        if rec.role == Role::Manager {
            ops.extend(self.new_tokens(&self.token_digest()?, now)?);
        }
        let r = self
            .write(Request {
                checks: vec![Check::Is { key, value: Some(raw) }],
                ops,
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid(format!("node {id} changed meanwhile; try again")));
        }
        // Then out of Raft (its calls are refused already).
        if let Some(voters) = voters_after {
            tokio::time::timeout(WRITE, self.raft.change_membership(voters, false))
                .await
                .map_err(|_| Error::NoQuorum)?
                .map_err(|e| Error::Invalid(e.to_string()))?;
        }
        Ok(rec)
    }

    /// The deny list as the store has it (serials whose certificates have not expired yet).
    pub fn denied(&self, now: i64) -> BTreeSet<String> {
        self.sm
            .scan("denied/")
            .into_iter()
            .filter(|(_, v)| serde_json::from_slice::<i64>(v).is_ok_and(|exp| exp > now))
            .map(|(k, _)| k["denied/".len()..].to_owned())
            .collect()
    }

    /// The current join token for `role`, as the store keeps it (with its limits).
    pub fn token(&self, role: Role) -> Option<TokenRecord> {
        self.get(&token_key(role))
    }

    /// A node back after its certificate expired: a valid token for the role the store gives it,
    /// and proof that it holds the key of its last certificate (issued by this CA, for this id,
    /// its current or previous serial, not denied). It gets a certificate for its new key, same id
    /// and role; the token's use and the record's new serial go in one conditional write.
    pub async fn rejoin(
        &self,
        token: &str,
        csr: &[u8],
        node_id: &str,
        old_cert: &[u8],
        proof: &[u8],
        now: i64,
    ) -> Result<(NodeRecord, String)> {
        let presented = JoinToken::parse(token)?;
        let ca = self.ca()?;
        let key = crate::records::node_key(node_id);
        let raw = self
            .sm
            .get(&key)
            .ok_or_else(|| Error::Invalid(format!("node {node_id} is not in the cluster (removed?): join as a new node")))?;
        let rec: NodeRecord = serde_json::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
        let rotation = self.rotation();
        let old_root = rotation.as_ref().map(|r| crate::tls::certs(&r.old_cert)).transpose()?;
        let mut roots: Vec<&[u8]> = vec![ca.cert_der()];
        roots.extend(old_root.iter().flatten().map(|c| c.as_ref()));
        let old = pki::old_identity(&roots, old_cert, csr, proof)?;
        if old.node_id != rec.id || old.cluster_id != self.auth.cluster_id {
            return Err(Error::Invalid("the old certificate is another node's".into()));
        }
        if old.serial != rec.serial && rec.previous_serial.as_deref() != Some(old.serial.as_str()) {
            return Err(Error::Invalid("a superseded certificate cannot rejoin".into()));
        }
        if self.sm.get(&crate::records::denied_key(&old.serial)).is_some() {
            return Err(Error::Invalid("this node was removed from the cluster".into()));
        }
        let token_raw = self
            .sm
            .get(&token_key(rec.role))
            .ok_or_else(|| Error::Invalid("no join token in the store".into()))?;
        let trec: TokenRecord = serde_json::from_slice(&token_raw).map_err(|e| Error::Invalid(e.to_string()))?;
        // The token must be for the node's own role: a worker token brings no manager back.
        trec.admits(&presented, &self.token_digest()?, now)?;
        let cert = self.chain(ca.issue(csr, &rec.id, rec.role, &self.auth.cluster_id, now, self.cert_lifetime())?);
        let ident = pki::identity(cert.as_bytes())?;
        let updated = NodeRecord {
            previous_serial: Some(rec.serial.clone()),
            serial: ident.serial,
            not_after: ident.not_after,
            issuer: ident.issuer_key,
            ..rec
        };
        let mut ops = vec![Op::Put {
            key: key.clone(),
            value: json(&updated),
        }];
        if let Some(n) = trec.uses_left {
            ops.push(Op::Put {
                key: token_key(updated.role),
                value: json(&TokenRecord {
                    uses_left: Some(n - 1),
                    ..trec.clone()
                }),
            });
        }
        let r = self
            .write(Request {
                checks: vec![
                    Check::Is { key, value: Some(raw) },
                    Check::Is {
                        key: token_key(updated.role),
                        value: Some(token_raw),
                    },
                ],
                ops,
            })
            .await?;
        if !r.applied {
            return Err(Error::Invalid("the node or the token changed meanwhile; try again".into()));
        }
        Ok((updated, cert))
    }

    /// Every node record.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.sm
            .scan("nodes/")
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// Adds a manager that joined to Raft: as a learner until it has caught up, then as a
    /// voter (leader only; a follower forwards).
    pub async fn add_manager(&self, raft_id: NodeId, addr: &str) -> Result<()> {
        let leading = {
            let m = self.raft.metrics().borrow().clone();
            m.current_leader == Some(m.id)
        };
        if !leading {
            return Err(Error::NotLeader(self.leader_addr()));
        }
        let node = openraft::BasicNode { addr: addr.to_owned() };
        tokio::time::timeout(Duration::from_secs(60), self.raft.add_learner(raft_id, node, true))
            .await
            .map_err(|_| Error::Invalid("the new manager did not catch up within 60 s".into()))?
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let voters: BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .chain(std::iter::once(raft_id))
            .collect();
        tokio::time::timeout(WRITE, self.raft.change_membership(voters, false))
            .await
            .map_err(|_| Error::NoQuorum)?
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(())
    }

    fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialisable")
}

/// The bootstrap calls: the CA for anyone, a certificate for a valid token.
pub struct BootstrapService {
    pub manager: Manager,
    pub now: fn() -> i64,
}

#[tonic::async_trait]
impl proto::bootstrap_server::Bootstrap for BootstrapService {
    async fn get_ca(&self, _req: GrpcRequest<proto::Empty>) -> std::result::Result<GrpcResponse<proto::CaReply>, Status> {
        let ca_pem = self
            .manager
            .trust_pem()
            .map_err(|_| Status::unavailable("the cluster is not initialised"))?;
        Ok(GrpcResponse::new(proto::CaReply { ca_pem }))
    }

    async fn join(&self, req: GrpcRequest<proto::JoinRequest>) -> std::result::Result<GrpcResponse<proto::JoinReply>, Status> {
        let r = req.get_ref();
        if r.csr.len() > 16 << 10 || r.token.len() > 256 || r.old_cert.len() > 16 << 10 || r.proof.len() > 1024 {
            return Err(Status::invalid_argument("request too large"));
        }
        let (node, cert) = if r.node_id.is_empty() {
            self.manager.join(&r.token, &r.csr, None, (self.now)()).await?
        } else {
            self.manager
                .rejoin(&r.token, &r.csr, &r.node_id, &r.old_cert, &r.proof, (self.now)())
                .await?
        };
        let node_id = node.id.clone();
        Ok(GrpcResponse::new(proto::JoinReply {
            node_id,
            role: node.role.ou().to_owned(),
            cert_pem: cert,
            ca_pem: self.manager.trust_pem()?,
            raft_id: node.raft_id.unwrap_or(0),
        }))
    }
}

/// Managers among themselves: forwarded writes, and new managers asking to join Raft.
pub struct ControlService {
    pub manager: Manager,
}

#[tonic::async_trait]
impl proto::control_server::Control for ControlService {
    async fn write(&self, req: GrpcRequest<proto::Payload>) -> std::result::Result<GrpcResponse<proto::Payload>, Status> {
        self.manager.auth.require(&req, Some(Role::Manager))?;
        let w: Request = crate::codec::decode(&req.get_ref().json).map_err(Status::invalid_argument)?;
        // Applied here, or refused: never forwarded twice.
        // Refused here (too big, parts of its own) is final for the follower; not taken in
        // time, or this manager stopping, is not.
        let r = match self.manager.writes.propose(w, tokio::time::Instant::now() + WRITE).await {
            Err(e @ Error::Invalid(_)) => return Err(Status::invalid_argument(e.to_string())),
            Err(e) => return Err(Status::unavailable(e.to_string())),
            Ok(r) => r.map_err(|e| Status::failed_precondition(e.to_string()))?,
        };
        Ok(GrpcResponse::new(proto::Payload {
            json: serde_json::to_vec(&r).map_err(|e| Status::internal(e.to_string()))?,
        }))
    }

    async fn add_manager(&self, req: GrpcRequest<proto::AddManagerRequest>) -> std::result::Result<GrpcResponse<proto::Empty>, Status> {
        let caller = self.manager.auth.require(&req, Some(Role::Manager))?;
        let r = req.get_ref();
        // A manager adds itself, as the store knows it: its Raft id and nothing else.
        let rec: NodeRecord = self
            .manager
            .get(&format!("nodes/{}", caller.node_id))
            .ok_or_else(|| Status::permission_denied("no such node in the store"))?;
        if rec.role != Role::Manager || rec.raft_id != Some(r.raft_id) {
            return Err(Status::permission_denied("a manager may add only itself, with its own Raft id"));
        }
        if rec.demoting {
            return Err(Status::permission_denied("this manager is being demoted"));
        }
        let members = self
            .manager
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == r.raft_id);
        if members {
            return Err(Status::already_exists("this manager is in Raft already"));
        }
        self.manager.add_manager(r.raft_id, &r.addr).await?;
        // Its address, into its record, only if the record is still the one judged above (a
        // node removed meanwhile stays removed).
        let key = crate::records::node_key(&rec.id);
        let current = self.manager.sm.get(&key);
        if current.is_none() {
            return Err(Status::aborted("the node was removed meanwhile"));
        }
        let rec = NodeRecord {
            addr: Some(r.addr.clone()),
            ..rec
        };
        let done = self
            .manager
            .write(Request {
                checks: vec![Check::Is {
                    key: key.clone(),
                    value: current,
                }],
                ops: vec![Op::Put { key, value: json(&rec) }],
            })
            .await?;
        if !done.applied {
            return Err(Status::aborted("the node's record changed meanwhile"));
        }
        Ok(GrpcResponse::new(proto::Empty {}))
    }
}

/// What a node gets by joining.
pub struct Joined {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    /// A manager's id in Raft.
    pub raft_id: Option<NodeId>,
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
    pub ca_pem: String,
}

/// Joins the cluster of the manager at `addr` with `token`, as a node does:
/// 1. fetch the CA (the server cannot be verified yet) and refuse it unless its digest is the
///    token's: a fake manager with a CA of its own is refused here, before anything is sent;
/// 2. make a fresh key and a request for it, and send it with the token over a connection that
///    verifies the server against that CA.
pub async fn join_cluster(addr: &str, token: &str) -> Result<Joined> {
    join_as(addr, token, None).await
}

/// A node's last certificate and key, to come back as itself after the certificate expired.
pub struct Previous<'a> {
    pub node_id: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// Joins with a new token as the node it was (its id, its record, its tasks), after its
/// certificate expired while it was away: it proves it holds the key of its last certificate.
pub async fn rejoin_cluster(addr: &str, token: &str, previous: Previous<'_>) -> Result<Joined> {
    join_as(addr, token, Some(previous)).await
}

async fn join_as(addr: &str, token: &str, previous: Option<Previous<'_>>) -> Result<Joined> {
    let t = JoinToken::parse(token)?;
    let ch = transport::connect(addr, crate::tls::fetch_ca_config()?)
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let ca_pem = proto::bootstrap_client::BootstrapClient::new(ch)
        .get_ca(proto::Empty {})
        .await
        .map_err(|s| Error::Invalid(format!("{addr}: {}", s.message())))?
        .into_inner()
        .ca_pem;
    // The root the token names, among the ones the manager trusts (two during a CA rotation).
    let (pinned_pem, pinned) = crate::tls::pem_blocks(&ca_pem)
        .into_iter()
        .filter_map(|b| Some((b.clone(), crate::tls::certs(&b).ok()?.remove(0))))
        .find(|(_, d)| pki::digest(d) == t.ca_digest)
        .ok_or(pki::Error::Token(
            "the manager's CA is not the one the token names (a fake manager, or another cluster)",
        ))?;
    let (key, csr) = pki::key_and_request()?;
    let (node_id, old_cert, proof) = match &previous {
        Some(p) => (
            p.node_id.to_owned(),
            crate::tls::certs(p.cert_pem)?[0].to_vec(),
            pki::prove(p.key_pem, &csr)?,
        ),
        None => (String::new(), Vec::new(), Vec::new()),
    };
    let ch = transport::connect(addr, crate::tls::client_config(&pinned_pem, None)?)
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let r = proto::bootstrap_client::BootstrapClient::new(ch)
        .join(proto::JoinRequest {
            token: token.trim().to_owned(),
            csr,
            node_id: node_id.clone(),
            old_cert,
            proof,
        })
        .await
        .map_err(|s| Error::Invalid(s.message().to_owned()))?
        .into_inner();
    let ident = pki::identity(r.cert_pem.as_bytes())?;
    if ident.node_id != r.node_id || (!node_id.is_empty() && r.node_id != node_id) {
        return Err(Error::Invalid("the manager sent a certificate for another node".into()));
    }
    // The roots to trust from now on (a verified manager's word), which must hold the pinned one.
    if !crate::tls::certs(&r.ca_pem)?.iter().any(|d| d.as_ref() == pinned.as_ref()) {
        return Err(Error::Invalid("the manager's roots do not include the one the token names".into()));
    }
    Ok(Joined {
        node_id: r.node_id,
        role: ident.role,
        cluster_id: ident.cluster_id,
        raft_id: (ident.role == Role::Manager && r.raft_id != 0).then_some(r.raft_id),
        cert_pem: r.cert_pem,
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        // Only the root the token names: a new root (a CA rotation) is trusted at a check-in,
        // with its cross-signature checked.
        ca_pem: pinned_pem,
    })
}

/// A manager that just joined asks the manager at `addr` (with its new certificate, in `tls`) to
/// add it to Raft; the call is forwarded to the leader, which adds it once it has caught up.
pub async fn request_membership(addr: &str, tls: Arc<rustls::ClientConfig>, raft_id: NodeId, my_addr: &str) -> Result<()> {
    let mut target = addr.to_owned();
    for _ in 0..3 {
        let ch = transport::connect(&target, tls.clone())
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let r = proto::control_client::ControlClient::new(ch)
            .add_manager(proto::AddManagerRequest {
                raft_id,
                addr: my_addr.to_owned(),
            })
            .await;
        match r {
            Ok(_) => return Ok(()),
            // A reply lost the first time.
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
            // Not the leader: ask the one it names (the leader must see this node's own
            // certificate, so the call is redirected, not forwarded).
            Err(s) if s.code() == tonic::Code::FailedPrecondition => match s.metadata().get(LEADER_HEADER).and_then(|v| v.to_str().ok()) {
                Some(l) => target = l.to_owned(),
                None => return Err(Error::NoQuorum),
            },
            Err(s) => return Err(Error::Invalid(format!("{target}: {}", s.message()))),
        }
    }
    Err(Error::Invalid("no leader to add this manager".into()))
}

/// Certificate renewal, for any node with a valid certificate of this cluster.
pub struct CertsService {
    pub manager: Manager,
    pub now: fn() -> i64,
}

#[tonic::async_trait]
impl proto::certs_server::Certs for CertsService {
    async fn renew(&self, req: GrpcRequest<proto::RenewRequest>) -> std::result::Result<GrpcResponse<proto::RenewReply>, Status> {
        let caller = self.manager.auth.require_changing_role(&req)?;
        self.manager.voting()?;
        if req.get_ref().csr.len() > 16 << 10 {
            return Err(Status::invalid_argument("request too large"));
        }
        let cert = self.manager.renew(&caller, &req.get_ref().csr, (self.now)()).await?;
        Ok(GrpcResponse::new(proto::RenewReply {
            cert_pem: cert,
            ca_pem: self.manager.trust_pem()?,
        }))
    }

    async fn status(&self, req: GrpcRequest<proto::Empty>) -> std::result::Result<GrpcResponse<proto::StatusReply>, Status> {
        let caller = self.manager.auth.require_changing_role(&req)?;
        self.manager.voting()?;
        let rec: Option<NodeRecord> = self.manager.get(&crate::records::node_key(&caller.node_id));
        let rec = rec.ok_or_else(|| Status::permission_denied("this node was removed from the cluster"))?;
        let key_id = self.manager.ca()?.key_id().map_err(Error::from)?;
        // Renew now: in a CA rotation's current batch, and not yet from the new root.
        let renew = self
            .manager
            .rotation()
            .is_some_and(|r| r.batch.contains(&rec.id) && caller.issuer_key.as_deref() != Some(key_id.as_str()));
        // Renew now too when the store gives the node another role (promoted, demoted).
        let renew = renew || rec.role != caller.role;
        let managers = self
            .manager
            .nodes()
            .into_iter()
            .filter(|n| n.role == Role::Manager)
            .filter_map(|n| n.addr)
            .collect();
        Ok(GrpcResponse::new(proto::StatusReply {
            ca_pem: self.manager.trust_pem()?,
            renew,
            heartbeat_ms: self.manager.heartbeat().as_millis() as u64,
            role: rec.role.ou().to_owned(),
            raft_id: rec.raft_id.unwrap_or(0),
            managers,
            cross_pem: self.manager.rotation().map(|r| r.cross).unwrap_or_default(),
            denied: self.manager.denied((self.now)()).into_iter().collect(),
        }))
    }
}

/// A node's renewal: a fresh key, a certificate for it from the manager at `addr` (the node's
/// current certificate, in `tls`, says who it is). Returns the certificate and the key (PEM).
pub async fn renew_at(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<(String, zeroize::Zeroizing<String>)> {
    let (key, csr) = pki::key_and_request()?;
    let ch = transport::connect(addr, tls).await.map_err(|e| Error::Invalid(e.to_string()))?;
    let r = proto::certs_client::CertsClient::new(ch)
        .renew(proto::RenewRequest { csr })
        .await
        .map_err(|s| Error::Invalid(format!("{addr}: {}", s.message())))?
        .into_inner();
    Ok((r.cert_pem, zeroize::Zeroizing::new(key.serialize_pem())))
}

/// A node's check-in with the manager at `addr`: what to trust, whether to renew now, when to
/// ask again.
pub async fn status_at(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<proto::StatusReply> {
    let ch = transport::connect(addr, tls).await.map_err(|e| Error::Invalid(e.to_string()))?;
    proto::certs_client::CertsClient::new(ch)
        .status(proto::Empty {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| Error::Invalid(format!("{addr}: {}", s.message())))
}

/// Serves a manager's gRPC services on `listener` (TLS with `server_tls`), each call checked
/// before its body is read: Raft and Control for managers, renewal for any node of the
/// cluster, the bootstrap calls for anyone (with small messages). Connections are bounded in
/// number, streams, idle time and age.
pub fn serve_manager(
    m: &Manager,
    listener: tokio::net::TcpListener,
    server_tls: Arc<rustls::ServerConfig>,
    admin: Option<crate::node::AdminService>,
    hub: Option<Arc<crate::dispatcher::Hub>>,
) -> tokio::task::JoinHandle<()> {
    use crate::proto::{
        bootstrap_server::BootstrapServer, certs_server::CertsServer, control_server::ControlServer, raft_server::RaftServer,
    };
    let auth = &m.auth;
    use tonic::service::interceptor::InterceptedService;
    let raft = InterceptedService::new(
        RaftServer::new(transport::RaftService {
            raft: m.raft.clone(),
            auth: auth.clone(),
        })
        .max_decoding_message_size(transport::MAX_MESSAGE),
        auth.interceptor_raft(),
    );
    let control = InterceptedService::new(
        ControlServer::new(ControlService { manager: m.clone() }).max_decoding_message_size(transport::MAX_MESSAGE),
        auth.interceptor(Some(Role::Manager)),
    );
    let certs = InterceptedService::new(
        CertsServer::new(CertsService {
            manager: m.clone(),
            now: crate::node::now,
        })
        .max_decoding_message_size(64 << 10),
        auth.interceptor_changing_role(),
    );
    let bootstrap = BootstrapServer::new(BootstrapService {
        manager: m.clone(),
        now: crate::node::now,
    })
    .max_decoding_message_size(64 << 10);
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(32)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .timeout(Duration::from_secs(60))
        .max_connection_age(Duration::from_secs(3600))
        .add_service(raft)
        .add_service(control)
        .add_service(certs)
        .add_service(bootstrap)
        .add_optional_service(hub.map(|hub| {
            InterceptedService::new(
                crate::proto::dispatcher_server::DispatcherServer::new(crate::dispatcher::DispatcherService { manager: m.clone(), hub })
                    .max_decoding_message_size(16 << 20)
                    .max_encoding_message_size(64 << 20),
                auth.interceptor(None),
            )
        }))
        .add_optional_service(admin.map(|a| {
            InterceptedService::new(
                crate::proto::admin_server::AdminServer::new(a).max_decoding_message_size(4 << 20),
                auth.interceptor_admin(),
            )
        }));
    let incoming = transport::incoming(listener, server_tls);
    tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "gRPC server");
        }
    })
}
