//! gRPC (tonic 0.14) over the TLS of [`crate::tls`]: a server that hands tonic its own TLS
//! streams, each carrying what the client's certificate says; clients that connect through
//! rustls; openraft's network over it; and the checks every call makes.
//!
//! - **Authorization comes from the caller's certificate** (chained to the cluster's CA by the
//!   handshake): its cluster (O) must be ours, its serial not on the deny list, and its role (OU)
//!   the one the call needs. Raft is for managers only. Only the bootstrap calls accept a client
//!   without a certificate.
//! - **Handshakes are bounded** (10 s each, done off the accept loop), so a client that connects
//!   and says nothing holds no one up.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use crate::pki::{self, Role};
use crate::proto;
use crate::store::{NodeId, TypeConfig};

/// How long a TLS handshake may take, on either side.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Calls between nodes: a connection within 5 s, an answer within 15 s.
const CONNECT: Duration = Duration::from_secs(5);
const CALL: Duration = Duration::from_secs(15);
/// Connections a server holds at once (handshakes included): a leader holds a session of each
/// node (5,000 is the scale Kubernetes documents). A node process raises its open-file limit
/// to match (`raise_open_files`).
pub const MAX_CONNECTIONS: usize = 16_384;
/// Connections without a certificate (joins, bootstrap calls) held at once.
const MAX_BOOTSTRAP_CONNECTIONS: usize = 512;
/// Connections one worker or admin certificate holds at once (an agent needs one or two): one
/// node cannot take the slots every other node needs. Managers are not counted: they open one
/// per forwarded write.
const MAX_CONNECTIONS_PER_NODE: usize = 16;
/// How long a connection without a client certificate lives.
const BOOTSTRAP_LIFE: Duration = Duration::from_secs(30);
/// The largest message (a snapshot chunk is 1 MiB; entries are batched below this).
pub const MAX_MESSAGE: usize = 16 << 20;

/// The most an AppendEntries of more than one entry carries (see `Conn::call`).
const APPEND_BYTES: usize = 2 << 20;

pub type Raft = openraft::Raft<TypeConfig>;

/// Who is calling: what its certificate says (none for a bootstrap caller), and from where.
#[derive(Clone, Debug)]
pub struct Peer {
    pub identity: Option<pki::Identity>,
    pub addr: SocketAddr,
}

/// A server-side TLS stream that tells tonic who is at the other end.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
    /// Its place among the connections a server takes (given back when it closes).
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// Its place among its certificate's (or the certificate-less) connections.
    _held: Option<Held>,
    /// A connection without a certificate (bootstrap calls only) is cut after this.
    deadline: Option<tokio::time::Instant>,
}

impl Connected for PeerStream {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl tokio::io::AsyncRead for PeerStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.deadline.is_some_and(|d| tokio::time::Instant::now() > d) {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "a bootstrap connection lives 30 s",
            )));
        }
        std::pin::Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PeerStream {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One of something (a connection, a report being written) counted against its key's bound.
pub(crate) struct Held {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Held {
    pub(crate) fn take(counts: &Arc<Mutex<HashMap<String, usize>>>, key: String, limit: usize) -> Option<Held> {
        let mut c = counts.lock().expect("not poisoned");
        let n = c.entry(key.clone()).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Held {
            counts: counts.clone(),
            key,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("not poisoned");
        if let Some(n) = c.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit (at most
/// [`MAX_CONNECTIONS`] and some): a leader holds a connection of each node, and Debian's default
/// soft limit is 1,024.
pub fn raise_open_files() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    let want = (MAX_CONNECTIONS as u64 + 4096).min(l.maximum.unwrap_or(u64::MAX));
    if l.current.is_some_and(|c| c < want) {
        l.current = Some(want);
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "raising the open-file limit");
        }
    }
}

/// Accepts TCP connections on `listener` and hands tonic the ones whose TLS handshake completes
/// in time, each with the caller's identity (from its certificate, already verified against the
/// cluster's CA by the handshake).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<PeerStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let held: Arc<Mutex<HashMap<String, usize>>> = Default::default();
    tokio::spawn(async move {
        loop {
            // A connection past the bound waits in the kernel's backlog, not in our memory.
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            // Replies go out at once (Nagle's algorithm against a delayed ACK costs 40 ms).
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, held) = (acceptor.clone(), tx.clone(), held.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%addr, "TLS handshake timed out");
                        return;
                    }
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| pki::identity(c).ok());
                let deadline = identity.is_none().then(|| tokio::time::Instant::now() + BOOTSTRAP_LIFE);
                let (key, limit) = match &identity {
                    None => (String::new(), Some(MAX_BOOTSTRAP_CONNECTIONS)),
                    Some(i) if i.role == Role::Manager => (String::new(), None),
                    Some(i) => (i.node_id.clone(), Some(MAX_CONNECTIONS_PER_NODE)),
                };
                let held = match limit {
                    None => None,
                    Some(limit) => match Held::take(&held, key, limit) {
                        Some(h) => Some(h),
                        None => {
                            tracing::debug!(%addr, "too many connections of one certificate (or of none)");
                            return;
                        }
                    },
                };
                let _ = tx
                    .send(Ok(PeerStream {
                        inner: tls,
                        peer: Peer { identity, addr },
                        _permit: permit,
                        _held: held,
                        deadline,
                    }))
                    .await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Who may call: this cluster's certificates, and, once the store is there, only a node the
/// store knows, with its current (or just superseded) certificate, in the role the store gives
/// it, and no serial on the deny list. Looked up live in the state machine on every call.
#[derive(Clone)]
pub struct Auth {
    pub cluster_id: String,
    /// Serials refused besides the store's deny list.
    pub denied: Arc<RwLock<BTreeSet<String>>>,
    /// The store (a manager's); None for a transport without one.
    pub store: Option<crate::store::StateMachine>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({})", self.cluster_id)
    }
}

impl Auth {
    pub fn new(cluster_id: &str) -> Self {
        Auth {
            cluster_id: cluster_id.to_owned(),
            denied: Default::default(),
            store: None,
        }
    }

    /// Authorization from the store's records too.
    pub fn with_store(mut self, sm: crate::store::StateMachine) -> Self {
        self.store = Some(sm);
        self
    }

    /// The store's record of the caller (None without a store).
    pub fn record(&self, id: &pki::Identity) -> Result<Option<crate::records::NodeRecord>, Status> {
        self.record_as(id, true, false)
    }

    /// [`Auth::record`], the role left unjudged when `same_role` is false (see
    /// [`Auth::require_changing_role`]).
    fn record_as(&self, id: &pki::Identity, same_role: bool, raft: bool) -> Result<Option<crate::records::NodeRecord>, Status> {
        let Some(sm) = &self.store else { return Ok(None) };
        // A manager that just joined has an empty store until the leader's log reaches it: for
        // Raft's calls (the leader's), its certificate is all it can judge by until then. Every
        // other call waits for the store.
        if sm.get("cluster/id").is_none() {
            return if raft {
                Ok(None)
            } else {
                Err(Status::unavailable("this manager's store is not there yet: ask another"))
            };
        }
        if sm.get(&crate::records::denied_key(&id.serial)).is_some() {
            return Err(Status::permission_denied("this node was removed from the cluster"));
        }
        let raw = sm
            .get(&crate::records::node_key(&id.node_id))
            .ok_or_else(|| Status::permission_denied("this node was removed from the cluster"))?;
        let rec: crate::records::NodeRecord = serde_json::from_slice(&raw).map_err(|e| Status::internal(e.to_string()))?;
        if rec.serial != id.serial && rec.previous_serial.as_deref() != Some(id.serial.as_str()) {
            return Err(Status::permission_denied("a superseded certificate of this node"));
        }
        if same_role && rec.role != id.role {
            return Err(Status::permission_denied(
                "the certificate's role is not the one the store gives this node",
            ));
        }
        Ok(Some(rec))
    }

    /// A tonic interceptor doing [`Auth::require`] before the request's body is read (so a
    /// caller without the right certificate cannot make the server take in a large message).
    pub fn interceptor(&self, role: Option<Role>) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        let auth = self.clone();
        move |req: Request<()>| {
            auth.require(&req, role)?;
            Ok(req)
        }
    }

    /// The interceptor of Raft's calls: a manager's certificate, judged by the store once there
    /// is one (see [`Auth::record`]).
    pub fn interceptor_raft(&self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        let auth = self.clone();
        move |req: Request<()>| {
            let id = auth.require_certificate(&req, Some(Role::Manager))?;
            auth.record_as(&id, true, true)?;
            Ok(req)
        }
    }

    /// The interceptor of [`Auth::require_admin`].
    pub fn interceptor_admin(&self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        let auth = self.clone();
        move |req: Request<()>| {
            auth.require_admin(&req)?;
            Ok(req)
        }
    }

    /// An admin certificate of this cluster, whose record the store has (with its serial), not
    /// denied. Nodes' certificates are not admins'.
    pub fn require_admin<T>(&self, req: &Request<T>) -> Result<pki::Identity, Status> {
        let id = self.require_certificate(req, Some(Role::Admin))?;
        let Some(sm) = &self.store else {
            return Err(Status::permission_denied("no store to check an admin against"));
        };
        if sm.get(&crate::records::denied_key(&id.serial)).is_some() {
            return Err(Status::permission_denied("this admin certificate was revoked"));
        }
        let rec: Option<crate::records::AdminRecord> = sm
            .get(&crate::records::admin_key(&id.node_id))
            .and_then(|v| serde_json::from_slice(&v).ok());
        match rec {
            Some(r) if r.serial == id.serial => Ok(id),
            _ => Err(Status::permission_denied("this admin certificate was revoked")),
        }
    }

    /// The interceptor of [`Auth::require_changing_role`].
    pub fn interceptor_changing_role(&self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        let auth = self.clone();
        move |req: Request<()>| {
            auth.require_changing_role(&req)?;
            Ok(req)
        }
    }

    /// As [`Auth::require`] for any role, where the certificate's role may be one the store no
    /// longer gives the node: a node promoted or demoted calls with the certificate of its old
    /// role to learn of the change and renew into the new one. Only the calls of the `Certs`
    /// service take this, and they grant nothing of either role.
    pub fn require_changing_role<T>(&self, req: &Request<T>) -> Result<pki::Identity, Status> {
        let id = self.require_certificate(req, None)?;
        self.record_as(&id, false, false)?;
        Ok(id)
    }

    /// The caller's identity, if it may make a call that needs `role` (any role: None).
    pub fn require<T>(&self, req: &Request<T>, role: Option<Role>) -> Result<pki::Identity, Status> {
        let id = self.require_certificate(req, role)?;
        self.record(&id)?;
        Ok(id)
    }

    /// What the certificate alone says: this cluster's, not denied, of `role` if given.
    fn require_certificate<T>(&self, req: &Request<T>, role: Option<Role>) -> Result<pki::Identity, Status> {
        let peer = req
            .extensions()
            .get::<Peer>()
            .ok_or_else(|| Status::unauthenticated("no TLS peer"))?;
        let id = peer
            .identity
            .clone()
            .ok_or_else(|| Status::unauthenticated("a client certificate of this cluster is required"))?;
        if id.cluster_id != self.cluster_id {
            return Err(Status::permission_denied("a certificate of another cluster"));
        }
        if self.denied.read().expect("not poisoned").contains(&id.serial) {
            return Err(Status::permission_denied("this node was removed from the cluster"));
        }
        if let Some(r) = role {
            if id.role != r {
                return Err(Status::permission_denied(format!("{} only", r.ou())));
            }
        }
        Ok(id)
    }
}

/// A Raft reply: JSON, whose parser stops at 128 levels of nesting. A reply may carry
/// openraft's errors, whose sources nest without bound, and postcard has no depth limit: a
/// peer's reply nested a million deep would overflow the stack of the manager reading it.
fn reply_payload<T: Serialize>(v: &T) -> Result<proto::Payload, Status> {
    serde_json::to_vec(v)
        .map(|json| proto::Payload { json })
        .map_err(|e| Status::internal(e.to_string()))
}

fn from_payload<T: DeserializeOwned>(p: &proto::Payload) -> Result<T, Status> {
    crate::codec::decode(&p.json).map_err(|e| Status::invalid_argument(format!("payload: {e}")))
}

/// Raft's calls, served to the other managers.
pub struct RaftService {
    pub raft: Raft,
    pub auth: Auth,
}

impl RaftService {
    /// The caller may speak for `claimed` (the leader or candidate its message names): it is
    /// that Raft node, and a member of the current membership. Without a store (a bare
    /// transport), the certificate's role is all there is to check.
    fn speaks_for<T>(&self, req: &Request<T>, claimed: NodeId) -> Result<(), Status> {
        let id = self.auth.require_certificate(req, Some(Role::Manager))?;
        let Some(rec) = self.auth.record_as(&id, true, true)? else {
            return Ok(());
        };
        if rec.raft_id != Some(claimed) {
            return Err(Status::permission_denied("a manager speaks only for itself in Raft"));
        }
        let members = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(n, _)| *n == claimed);
        if !members {
            return Err(Status::permission_denied("not a member of this cluster's Raft"));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl proto::raft_server::Raft for RaftService {
    async fn append_entries(&self, req: Request<proto::Payload>) -> Result<Response<proto::Payload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = from_payload(req.get_ref())?;
        self.speaks_for(&req, rpc.vote.leader_id.node_id)?;
        let r = self.raft.append_entries(rpc).await;
        Ok(Response::new(reply_payload(&r)?))
    }

    async fn vote(&self, req: Request<proto::Payload>) -> Result<Response<proto::Payload>, Status> {
        let rpc: VoteRequest<NodeId> = from_payload(req.get_ref())?;
        self.speaks_for(&req, rpc.vote.leader_id.node_id)?;
        let r = self.raft.vote(rpc).await;
        Ok(Response::new(reply_payload(&r)?))
    }

    async fn install_snapshot(&self, req: Request<proto::Payload>) -> Result<Response<proto::Payload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = from_payload(req.get_ref())?;
        self.speaks_for(&req, rpc.vote.leader_id.node_id)?;
        let r = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(reply_payload(&r)?))
    }
}

/// A gRPC channel to `addr` over rustls with `tls`, asking for a manager's certificate.
pub async fn connect(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<tonic::transport::Channel, std::io::Error> {
    let target = addr.to_owned();
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let (target, tls) = (target.clone(), tls.clone());
        async move {
            let tcp = tokio::time::timeout(CONNECT, TcpStream::connect(&target))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{target}: connecting timed out")))??;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(crate::tls::MANAGER_NAME).expect("a DNS name");
            let s = tokio::time::timeout(HANDSHAKE, tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{target}: TLS handshake timed out")))??;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    });
    tonic::transport::Endpoint::from_static("https://bulkhead-manager")
        .connect_timeout(CONNECT)
        .timeout(CALL)
        .connect_with_connector(connector)
        .await
        .map_err(|e| std::io::Error::other(format!("{addr}: {e}")))
}

/// openraft's network over gRPC: a connection per target, made when first needed and again
/// after a failure.
#[derive(Clone)]
pub struct Network {
    pub tls: Arc<rustls::ClientConfig>,
}

pub struct Conn {
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    client: Option<proto::raft_client::RaftClient<tonic::transport::Channel>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;
    async fn new_client(&mut self, _target: NodeId, node: &BasicNode) -> Conn {
        Conn {
            addr: node.addr.clone(),
            tls: self.tls.clone(),
            client: None,
        }
    }
}

type Rpc<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl Conn {
    /// `entries`: how many log entries an AppendEntries carries (0 for other calls).
    async fn call<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &mut self,
        which: &'static str,
        req: &Req,
        entries: usize,
    ) -> Rpc<Resp, E> {
        let unreachable = |e: &dyn std::fmt::Display| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.to_string())));
        if self.client.is_none() {
            let ch = connect(&self.addr, self.tls.clone()).await.map_err(|e| unreachable(&e))?;
            self.client = Some(
                proto::raft_client::RaftClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            );
        }
        let client = self.client.as_mut().expect("connected");
        let payload = crate::codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        // A follower refuses a message over MAX_MESSAGE, and one it cannot take in within
        // openraft's AppendEntries timeout (the heartbeat interval, 500 ms) times out: either way
        // openraft would send the same batch again for ever. Tell it to send fewer entries (a
        // lagging follower is sent up to 300 at once, and an orchestration pass's are up to
        // 1 MiB each).
        if entries > 1 && payload.len() > APPEND_BYTES {
            let fit = (entries as u64 * APPEND_BYTES as u64 / payload.len() as u64).max(1);
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
        }
        if payload.len() > MAX_MESSAGE - 64 * 1024 {
            return Err(unreachable(&format!(
                "{}: a message of {} bytes is over the limit of {MAX_MESSAGE}",
                self.addr,
                payload.len()
            )));
        }
        let msg = proto::Payload { json: payload };
        let r = match which {
            "append" => client.append_entries(msg).await,
            "vote" => client.vote(msg).await,
            _ => client.install_snapshot(msg).await,
        };
        let r = match r {
            Ok(r) => r.into_inner(),
            Err(s) => {
                // Refused by the other side (certificate, role): not a network blip, but Raft
                // treats both alike; a new connection next time.
                self.client = None;
                return Err(unreachable(&format!("{}: {}", self.addr, s.message())));
            }
        };
        // JSON only (see `reply_payload`).
        let r: Result<Resp, E> = serde_json::from_slice(&r.json).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(0, e)))
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let n = rpc.entries.len();
        self.call("append", &rpc, n).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call("snapshot", &rpc, 0).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, _o: RPCOption) -> Rpc<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call("vote", &rpc, 0).await
    }
}
