//! Workload identities on a node (issue 16): each running task's X509-SVID, as files in the task
//! and through the SPIFFE Workload API.
//!
//! - **The key is made here** for each task (ECDSA P-256), sent nowhere: the leader gets a
//!   certificate request and answers with the SVID (see [`crate::identity`]).
//! - **Files**: a tmpfs per task (root-only, nodev, nosuid, noexec, noswap) under the node's
//!   `identity/` directory holds `svid.pem` (the SVID and the workload CA), `svid_key.pem` (0400)
//!   and `bundle.pem`, owned by the task's user; the executor bind-mounts it read-only at
//!   `/run/secrets/identity` ([`base`] says where, and why not under the cluster directory).
//!   Renewal writes each file beside the old one and renames it over,
//!   so a reader sees the old file or the new one. The tmpfs goes with the task.
//! - **The Workload API** (the `workload.proto` the `spiffe` crate ships) is served on one unix
//!   socket, `identity/api/api.sock`, whose directory each task gets read-only at
//!   `/run/spiffe/workload` (and `SPIFFE_ENDPOINT_SOCKET` naming it). A caller is told apart by
//!   the kernel, not by anything it says: its pid from `SO_PEERCRED`, its cgroup from
//!   `/proc/<pid>/cgroup` (the executor maps that to a container, and the agent the container to
//!   a task), and a pidfd from `SO_PEERPIDFD` taken at connect time that must still name that
//!   pid after the cgroup was read (a caller that exits and whose pid is reused is not taken for
//!   the new process). A caller that is no task of this node gets `PermissionDenied`; a task
//!   gets its own SVID, never another's. JWT-SVIDs are not offered (`Unimplemented`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::agent::Agent;
use crate::identity::{IdentityReply, IdentityRequest};
use crate::proto;

/// The Workload API's generated server (from the `spiffe` crate's workload.proto).
#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("_");
}

/// Where a task finds its identity files.
pub const IDENTITY_TARGET: &str = "/run/secrets/identity";
/// Where a task finds the Workload API's socket.
pub const SOCKET_TARGET_DIR: &str = "/run/spiffe/workload";
pub const SOCKET_NAME: &str = "api.sock";
/// What each task's environment says (the SPIFFE convention).
pub fn endpoint_env() -> String {
    format!("SPIFFE_ENDPOINT_SOCKET=unix://{SOCKET_TARGET_DIR}/{SOCKET_NAME}")
}

/// Where a node keeps its tasks' identities: beside its cluster directory (`<root>/identity`),
/// because the runtime mounts them into containers as the container's unprivileged user, who
/// must be able to reach them (`<root>/cluster`, with the node's keys, is root's alone). The
/// directories on the way are searchable, not listable (0711).
pub fn base(cluster_dir: &Path) -> PathBuf {
    cluster_dir.parent().unwrap_or(cluster_dir).join("identity")
}
/// Each task's identity tmpfs is here, named by its task id.
pub fn tasks_dir(cluster_dir: &Path) -> PathBuf {
    base(cluster_dir).join("tasks")
}
/// The Workload API's socket.
pub fn socket_path(cluster_dir: &Path) -> PathBuf {
    base(cluster_dir).join("api").join(SOCKET_NAME)
}

/// The header every Workload API call must carry (SPIFFE Workload API, "Transport").
const SECURITY_HEADER: &str = "workload.spiffe.io";

/// A task's identity, in the agent's memory.
pub struct TaskIdentity {
    pub spiffe_id: String,
    /// DER: the SVID, then the workload CA.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    pub key: zeroize::Zeroizing<Vec<u8>>,
    /// DER: the roots.
    pub bundle: Vec<Vec<u8>>,
    pub issued: i64,
    pub not_after: i64,
    /// When it is renewed: at half its life, less up to a tenth of it at random (so that tasks
    /// started together do not all renew at once).
    pub renew_at: i64,
    /// Which identity of the agent's this is (Workload API streams send a new one on change).
    pub serial: u64,
}

static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What the leader gave, with the key made here, ready for files and the API.
pub struct Fetched {
    pub identity: TaskIdentity,
    pub chain_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
    pub bundle_pem: String,
}

fn now() -> i64 {
    crate::services::now_ms() / 1000
}

/// Asks the leader for task `task`'s SVID, for a key made here.
pub async fn fetch(
    client: &mut proto::dispatcher_client::DispatcherClient<tonic::transport::Channel>,
    task: &str,
) -> Result<Fetched, String> {
    let (key, csr) = crate::pki::key_and_request().map_err(|e| e.to_string())?;
    let req = IdentityRequest {
        task: task.to_owned(),
        csr,
    };
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        client.identity(proto::Payload {
            json: serde_json::to_vec(&req).expect("serialisable"),
        }),
    )
    .await
    .map_err(|_| "the leader did not answer for the task's identity within 15 s".to_owned())?
    .map_err(|s| format!("the task's identity: {}", s.message()))?;
    let r: IdentityReply = serde_json::from_slice(&reply.get_ref().json).map_err(|e| format!("the task's identity: {e}"))?;
    let chain: Vec<Vec<u8>> = crate::tls::certs(&r.chain)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    let bundle: Vec<Vec<u8>> = crate::tls::certs(&r.bundle)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    // What comes back must be for the key made here and say what the reply says.
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| format!("the SVID: {e}"))?;
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err("the SVID is not for the key made here".into());
    }
    let uris = crate::pki::uri_names(&chain[0]);
    if uris != [r.spiffe_id.clone()] {
        return Err(format!("the SVID names {uris:?}, not {}", r.spiffe_id));
    }
    let not_after = leaf.validity().not_after.timestamp();
    let issued = now();
    let life = (not_after - issued).max(2);
    let jitter = u16::from_le_bytes(crate::crypt::random::<2>().map_err(|e| e.to_string())?) as i64 % (life / 10).max(1);
    Ok(Fetched {
        identity: TaskIdentity {
            spiffe_id: r.spiffe_id,
            chain,
            key: zeroize::Zeroizing::new(key.serialize_der()),
            bundle,
            issued,
            not_after,
            renew_at: issued + life / 2 - jitter,
            serial: SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        },
        chain_pem: r.chain,
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        bundle_pem: r.bundle,
    })
}

/// Writes the identity files into `dir` (the task's tmpfs) all at once: a new directory
/// `..<serial>` holds the three files, the symlink `..data` is renamed over to point at it, and
/// `svid.pem`, `svid_key.pem` and `bundle.pem` are symlinks through `..data` (as Kubernetes
/// updates projected volumes): a reader sees the old set or the new one, never a certificate
/// with another's key. Owned by `owner` (host ids) if given; the old directory goes.
pub fn write_files(dir: &Path, f: &Fetched, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let chown = |fd: &std::fs::File| -> std::io::Result<()> {
        if let Some((u, g)) = owner {
            rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(u)), Some(rustix::fs::Gid::from_raw(g)))?;
        }
        Ok(())
    };
    let name = format!("..{}", f.identity.serial);
    let set = dir.join(&name);
    let _ = std::fs::remove_dir_all(&set);
    std::fs::create_dir(&set)?;
    for (file, data, mode) in [
        ("svid.pem", f.chain_pem.as_bytes(), 0o444),
        ("svid_key.pem", f.key_pem.as_bytes(), 0o400),
        ("bundle.pem", f.bundle_pem.as_bytes(), 0o444),
    ] {
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(set.join(file))?;
        w.write_all(data)?;
        chown(&w)?;
    }
    std::fs::set_permissions(&set, std::fs::Permissions::from_mode(0o500))?;
    chown(&std::fs::File::open(&set)?)?;
    let tmp = dir.join("..data.new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp)?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data"))?;
    for file in ["svid.pem", "svid_key.pem", "bundle.pem"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link)?;
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != name.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// The caller at the other end of a Workload API connection: the container its process is in,
/// if any (read when it connected).
#[derive(Clone, Debug)]
pub struct Caller {
    pub container: Option<String>,
}

/// A Workload API connection, with its caller, and its place among the connections.
pub struct CallerStream {
    inner: tokio::net::UnixStream,
    caller: Caller,
    _slot: Slot,
}

/// Connections at most, all callers together.
const MAX_CONNECTIONS: usize = 512;
/// Connections at most from one container (or from all callers that are no task, together).
const MAX_PER_CALLER: usize = 8;

/// A connection's place: among all connections, and among its caller's (both given back when
/// the connection closes).
struct Slot {
    _held: crate::transport::Held,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for CallerStream {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl tokio::io::AsyncRead for CallerStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CallerStream {
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

/// The pid the pidfd `fd` names now (-1 once it has exited), from /proc/self/fdinfo.
fn pidfd_pid(fd: &std::os::fd::OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines().find_map(|l| l.strip_prefix("Pid:")?.trim().parse().ok())
}

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd for the process that connected. rustix has no wrapper
/// for it yet, hence libc.
fn peer_pidfd(sock: &tokio::net::UnixStream) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) on a socket we own, into an int of the size given.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Who is at the other end of `sock`: its container, judged by the kernel's word only.
fn identify(agent: &Agent, sock: &tokio::net::UnixStream) -> Caller {
    let none = Caller { container: None };
    let Ok(cred) = rustix::net::sockopt::socket_peercred(sock) else {
        return none;
    };
    let pid = cred.pid.as_raw_nonzero().get();
    // Without a pidfd (Linux before 6.5) a caller that exits could have its pid reused by
    // another container's process between the connect and the cgroup read: no answer then (the
    // files still work).
    let Ok(pidfd) = peer_pidfd(sock) else { return none };
    let container = agent.executor().container_of_pid(pid);
    if pidfd_pid(&pidfd) != Some(pid) {
        return none;
    }
    Caller { container }
}

/// Serves the Workload API on `socket` until the process ends.
pub async fn serve(agent: Arc<Agent>, socket: PathBuf) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = socket.parent().unwrap_or(Path::new("/")).to_owned();
    std::fs::create_dir_all(&dir)?;
    if let Some(base) = dir.parent() {
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o711))?;
    }
    // Tasks run as unprivileged host users: they must reach the socket (and only it).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<CallerStream>>(16);
    let a = agent.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let counts = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, usize>::new()));
    tokio::spawn(async move {
        loop {
            // Past the bound, connections wait in the kernel's backlog, not in our memory.
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let sock = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Workload API accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let caller = identify(&a, &sock);
            let key = caller.container.clone().unwrap_or_default();
            let Some(held) = crate::transport::Held::take(&counts, key, MAX_PER_CALLER) else {
                continue;
            };
            let slot = Slot {
                _held: held,
                _permit: permit,
            };
            if tx
                .send(Ok(CallerStream {
                    inner: sock,
                    caller,
                    _slot: slot,
                }))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(4))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(api::spiffe_workload_api_server::SpiffeWorkloadApiServer::new(WorkloadApi { agent }))
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(std::io::Error::other)
}

struct WorkloadApi {
    agent: Arc<Agent>,
}

type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

impl WorkloadApi {
    /// The task of the caller of `req`, after checking the security header.
    async fn task_of<T>(&self, req: &Request<T>) -> Result<String, Status> {
        if req.metadata().get(SECURITY_HEADER).and_then(|v| v.to_str().ok()) != Some("true") {
            return Err(Status::invalid_argument("security header missing from request"));
        }
        let container = req
            .extensions()
            .get::<Caller>()
            .and_then(|c| c.container.clone())
            .ok_or_else(|| Status::permission_denied("no identity for this caller: it is no task of this node"))?;
        // A task's first process may call before its start has been recorded: a few seconds.
        for _ in 0..50 {
            if let Some(t) = self.agent.task_of_container(&container) {
                return Ok(t);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Err(Status::permission_denied("no identity for this caller: it is no task of this node"))
    }

    /// Sends `make(identity)` now and at every change of the task's identity, until the caller
    /// goes; the stream ends when the task has no identity any more.
    fn watch<T: Send + 'static>(&self, task: String, make: fn(&TaskIdentity) -> T) -> Stream<T> {
        let agent = self.agent.clone();
        let mut changes = agent.identity_changes();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let current = agent.identity_of(&task, |i| (i.serial, make(i)));
                match current {
                    None => {
                        let _ = tx.send(Err(Status::permission_denied("the task has no identity (any more)"))).await;
                        return;
                    }
                    Some((serial, msg)) => {
                        if last != Some(serial) {
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                            last = Some(serial);
                        }
                    }
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

fn concat(certs: &[Vec<u8>]) -> Vec<u8> {
    certs.concat()
}

fn svid_response(i: &TaskIdentity) -> api::X509svidResponse {
    api::X509svidResponse {
        svids: vec![api::X509svid {
            spiffe_id: i.spiffe_id.clone(),
            x509_svid: concat(&i.chain),
            x509_svid_key: i.key.to_vec(),
            bundle: concat(&i.bundle),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: Default::default(),
    }
}

fn bundles_response(i: &TaskIdentity) -> api::X509BundlesResponse {
    let td = i.spiffe_id.split('/').take(3).collect::<Vec<_>>().join("/");
    api::X509BundlesResponse {
        crl: Vec::new(),
        bundles: [(td, concat(&i.bundle))].into(),
    }
}

#[tonic::async_trait]
impl api::spiffe_workload_api_server::SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Stream<api::X509svidResponse>;
    type FetchX509BundlesStream = Stream<api::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<api::JwtBundlesResponse>;

    async fn fetch_x509svid(&self, req: Request<api::X509svidRequest>) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let task = self.task_of(&req).await?;
        Ok(Response::new(self.watch(task, svid_response)))
    }

    async fn fetch_x509_bundles(&self, req: Request<api::X509BundlesRequest>) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let task = self.task_of(&req).await?;
        Ok(Response::new(self.watch(task, bundles_response)))
    }

    async fn fetch_jwtsvid(&self, _req: Request<api::JwtsvidRequest>) -> Result<Response<api::JwtsvidResponse>, Status> {
        Err(Status::unimplemented("bulkhead issues X509-SVIDs only"))
    }

    async fn fetch_jwt_bundles(&self, _req: Request<api::JwtBundlesRequest>) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("bulkhead issues X509-SVIDs only"))
    }

    async fn validate_jwtsvid(&self, _req: Request<api::ValidateJwtsvidRequest>) -> Result<Response<api::ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("bulkhead issues X509-SVIDs only"))
    }
}
