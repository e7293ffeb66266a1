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

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
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
/// The largest message (a snapshot chunk is 1 MiB; entries are batched below this).
pub const MAX_MESSAGE: usize = 16 << 20;

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
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
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

/// Accepts TCP connections on `listener` and hands tonic the ones whose TLS handshake completes
/// in time, each with the caller's identity (from its certificate, already verified against the
/// cluster's CA by the handshake).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<PeerStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
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
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
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
                let _ = tx
                    .send(Ok(PeerStream {
                        inner: tls,
                        peer: Peer { identity, addr },
                    }))
                    .await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Who may call: this cluster's certificates, not on the deny list (removed nodes).
#[derive(Clone, Debug)]
pub struct Auth {
    pub cluster_id: String,
    pub denied: Arc<RwLock<BTreeSet<String>>>,
}

impl Auth {
    pub fn new(cluster_id: &str) -> Self {
        Auth {
            cluster_id: cluster_id.to_owned(),
            denied: Default::default(),
        }
    }

    /// The caller's identity, if it may make a call that needs `role` (any role: None).
    pub fn require<T>(&self, req: &Request<T>, role: Option<Role>) -> Result<pki::Identity, Status> {
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

fn to_json<T: Serialize>(v: &T) -> Result<proto::Payload, Status> {
    serde_json::to_vec(v)
        .map(|json| proto::Payload { json })
        .map_err(|e| Status::internal(e.to_string()))
}

fn from_json<T: DeserializeOwned>(p: &proto::Payload) -> Result<T, Status> {
    serde_json::from_slice(&p.json).map_err(|e| Status::invalid_argument(format!("payload: {e}")))
}

/// Raft's calls, served to the other managers.
pub struct RaftService {
    pub raft: Raft,
    pub auth: Auth,
}

#[tonic::async_trait]
impl proto::raft_server::Raft for RaftService {
    async fn append_entries(&self, req: Request<proto::Payload>) -> Result<Response<proto::Payload>, Status> {
        self.auth.require(&req, Some(Role::Manager))?;
        let rpc: AppendEntriesRequest<TypeConfig> = from_json(req.get_ref())?;
        let r = self.raft.append_entries(rpc).await;
        Ok(Response::new(to_json(&r)?))
    }

    async fn vote(&self, req: Request<proto::Payload>) -> Result<Response<proto::Payload>, Status> {
        self.auth.require(&req, Some(Role::Manager))?;
        let rpc: VoteRequest<NodeId> = from_json(req.get_ref())?;
        let r = self.raft.vote(rpc).await;
        Ok(Response::new(to_json(&r)?))
    }

    async fn install_snapshot(&self, req: Request<proto::Payload>) -> Result<Response<proto::Payload>, Status> {
        self.auth.require(&req, Some(Role::Manager))?;
        let rpc: InstallSnapshotRequest<TypeConfig> = from_json(req.get_ref())?;
        let r = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(to_json(&r)?))
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
    async fn call<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &mut self,
        which: &'static str,
        req: &Req,
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
        let payload = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
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
        self.call("append", &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call("snapshot", &rpc).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, _o: RPCOption) -> Rpc<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call("vote", &rpc).await
    }
}
