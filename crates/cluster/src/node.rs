//! The node process (`bulkhead node serve`) and its files, and the local control socket the CLI
//! talks to.
//!
//! Files, in `<root>/cluster` (0700): `node.json` (what `init` or `join` decided), `ca.crt`,
//! `node.crt`, `node.key` (0600), `data.key` (0600; see [`crate::crypt`]), `raft.redb`
//! (managers), `control.sock` (0600, and the peer must be root), `node.log`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::crypt;
use crate::manager::{self, Manager, NodeRecord};
use crate::pki::{self, Ca, Role};
use crate::store;
use crate::tls;
use crate::transport::{self, Auth, Network};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Manager(#[from] manager::Error),
    #[error(transparent)]
    Pki(#[from] pki::Error),
    #[error(transparent)]
    Crypt(#[from] crypt::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn io(p: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("{}: {e}", p.display()))
}

/// Where a node keeps its files.
#[derive(Clone, Debug)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Paths {
        Paths { dir: root.join("cluster") }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("node.json")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("node.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    pub fn data_key(&self) -> PathBuf {
        self.dir.join("data.key")
    }
    pub fn raft(&self) -> PathBuf {
        self.dir.join("raft.redb")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("node.log")
    }
    /// The store a recovering manager starts from (sealed with its data key).
    pub fn seed(&self) -> PathBuf {
        self.dir.join("recover.sealed")
    }

    /// Makes the directory, 0700; one that is there already must be a directory of root's,
    /// not a link (someone who could write the root could have put it there).
    pub fn create(&self) -> Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        match std::fs::symlink_metadata(&self.dir) {
            Ok(m) if !m.is_dir() || m.uid() != 0 => {
                return Err(Error::Invalid(format!("{}: not a directory of root's", self.dir.display())));
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?,
        }
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&self.dir))
    }
}

/// What `init` or `join` decided, and what `node serve` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeConfig {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    #[serde(default)]
    pub raft_id: Option<u64>,
    /// Where this manager listens, and where the others reach it.
    pub listen: String,
    pub advertise: String,
    /// Managers it knows of (the one it joined through, first).
    #[serde(default)]
    pub managers: Vec<String>,
    /// The first start of `cluster init`: make the CA and the store.
    #[serde(default)]
    pub bootstrap: bool,
    /// A manager that joined and is not yet in Raft.
    #[serde(default)]
    pub needs_membership: bool,
    /// `cluster init --cert-expiry`, in seconds (read at the first start only).
    #[serde(default)]
    pub cert_expiry: Option<i64>,
    /// `cluster init --dispatcher-heartbeat`, in milliseconds (read at the first start only).
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    /// Start a new Raft of this manager alone from its store (`--force-new-cluster`) or from a
    /// backup (`cluster restore`: the seed file).
    #[serde(default)]
    pub recover: bool,
}

impl NodeConfig {
    pub fn load(p: &Paths) -> Result<NodeConfig> {
        let path = p.config();
        let data = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Invalid(format!(
                "this node is in no cluster ({} is missing): `cluster init` or `cluster join`",
                path.display()
            )),
            _ => io(&path)(e),
        })?;
        serde_json::from_slice(&data).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    pub fn save(&self, p: &Paths) -> Result<()> {
        Ok(crypt::write_private(
            &p.config(),
            &serde_json::to_vec_pretty(self).expect("serialisable"),
        )?)
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A request on the control socket (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Nodes,
    JoinToken {
        role: Role,
        #[serde(default)]
        rotate: bool,
        #[serde(default)]
        ttl: Option<i64>,
        #[serde(default)]
        uses: Option<u32>,
    },
    Inspect,
    NodeRm {
        node: String,
        #[serde(default)]
        force: bool,
    },
    /// A worker made a manager, or a manager a worker.
    NodeRole {
        node: String,
        role: Role,
    },
    /// One node's record (`self`: this node).
    NodeInspect {
        node: String,
    },
    /// A node's availability and labels.
    NodeUpdate {
        node: String,
        #[serde(default)]
        availability: Option<String>,
        #[serde(default)]
        label_add: Vec<(String, String)>,
        #[serde(default)]
        label_rm: Vec<String>,
    },
    /// Gives a locked node (autolock) its unlock key.
    Unlock {
        key: String,
    },
    /// The cluster's unlock key (autolock), or a new one.
    UnlockKey {
        #[serde(default)]
        rotate: bool,
    },
    /// The store's contents, for `cluster backup` (root only, as every request here).
    Backup,
    /// A new data key for this manager's store.
    RotateDataKey,
    /// A new secret or config (its data is never returned after this).
    SecretCreate {
        kind: crate::secrets::Kind,
        name: String,
        data: Vec<u8>,
    },
    /// A new version of one, under the same name.
    SecretRotate {
        kind: crate::secrets::Kind,
        name: String,
        data: Vec<u8>,
    },
    SecretLs {
        kind: crate::secrets::Kind,
    },
    /// Its record (and a config's data).
    SecretInspect {
        kind: crate::secrets::Kind,
        name: String,
    },
    SecretRm {
        kind: crate::secrets::Kind,
        name: String,
    },
    /// A new service.
    ServiceCreate {
        spec: crate::orchestrator::ServiceSpec,
    },
    ServiceLs,
    /// A service's record (`tasks`: with its tasks).
    ServiceInspect {
        name: String,
        #[serde(default)]
        tasks: bool,
    },
    /// A new spec for a service (its tasks roll to it).
    ServiceUpdate {
        spec: crate::orchestrator::ServiceSpec,
    },
    ServiceScale {
        name: String,
        replicas: u32,
    },
    ServiceRollback {
        name: String,
    },
    ServiceRm {
        name: String,
    },
    /// A service's task logs, as many JSON lines (`{"log": ...}`) and then the answer
    /// (on the leader's control socket only).
    ServiceLogs {
        name: String,
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        tail: Option<u32>,
    },
    /// A stack's record and its services (`stack deploy`).
    StackDeploy {
        stack: crate::stacks::StackRecord,
        services: Vec<crate::orchestrator::ServiceSpec>,
        #[serde(default)]
        prune: bool,
    },
    StackLs,
    StackRm {
        name: String,
    },
    /// The tasks of a node (`self`: this one).
    NodePs {
        node: String,
    },
    /// An admin certificate revoked: its record goes and its serial is denied.
    RevokeAdmin {
        name: String,
    },
    /// An admin certificate for the key of `csr` (DER), for remote administration.
    IssueAdmin {
        csr: Vec<u8>,
        #[serde(default)]
        lifetime: Option<i64>,
    },
    /// The root CA and where a rotation stands; a rotation started, or the certificates'
    /// lifetime changed.
    Ca {
        #[serde(default)]
        rotate: bool,
        #[serde(default)]
        cert_expiry: Option<i64>,
        #[serde(default)]
        svid_expiry: Option<i64>,
    },
}

impl ControlRequest {
    /// Whether an admin certificate may ask it from elsewhere. Not: the node's own status, its
    /// unlocking, and what hands out the cluster's secrets (the unlock key, a backup holding the
    /// CA's key, new admin certificates).
    pub fn remote(&self) -> bool {
        !matches!(
            self,
            ControlRequest::Status
                | ControlRequest::ServiceLogs { .. }
                | ControlRequest::Unlock { .. }
                | ControlRequest::UnlockKey { .. }
                | ControlRequest::Backup
                | ControlRequest::IssueAdmin { .. }
        )
    }
}

/// The node process: a manager serves Raft, the bootstrap calls and the control API on its
/// listen address; every node answers the CLI on its control socket. Returns when `stop`
/// resolves (SIGTERM).
pub async fn serve(root: &Path, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    serve_with(root, stop, None).await
}

/// [`serve`], with an agent running this node's tasks through `executor`.
pub async fn serve_with(
    root: &Path,
    stop: impl std::future::Future<Output = ()>,
    executor: Option<Arc<dyn crate::agent::Executor>>,
) -> Result<()> {
    let paths = Paths::new(root);
    let mut cfg = NodeConfig::load(&paths)?;
    let _ = SERVING.set(paths.clone());
    tokio::pin!(stop);
    // With autolock the data key (and the node's key) are sealed by the unlock key, which only a
    // user gives (`cluster unlock`): until then the node answers nothing but that.
    let unlock = if crypt::is_locked(&paths.data_key())? {
        match wait_for_unlock(&paths, &cfg, &mut stop).await? {
            Some(k) => Some(k),
            None => return Ok(()),
        }
    } else {
        None
    };
    finish_data_key_rotation(&paths, unlock.as_ref())?;
    let data_key = crypt::read_data_key(&paths.data_key(), unlock.as_ref())?;
    let mut recovering = if cfg.recover {
        Some(prepare_recovery(&paths, &cfg, &data_key, unlock.as_ref())?)
    } else {
        None
    };
    let mut bootstrap_ca = None;
    if cfg.bootstrap && paths.raft().exists() {
        // A first start cut short after its store was made: its CA may be in the store while
        // the files would get another. Nothing is guessed.
        return Err(Error::Invalid(format!(
            "an interrupted `cluster init` left {}: remove that directory and run `cluster init` again",
            paths.dir.display()
        )));
    }
    if cfg.bootstrap {
        // `cluster init`: the CA is made here, its key going only into the sealed store.
        let ca = Ca::create(&cfg.cluster_id, now(), 10)?;
        let (key, csr) = pki::key_and_request()?;
        let cert = ca.issue(
            &csr,
            &cfg.node_id,
            Role::Manager,
            &cfg.cluster_id,
            now(),
            cfg.cert_expiry.unwrap_or(manager::CERT_LIFETIME),
        )?;
        crypt::write_node_key(&paths.key(), &key.serialize_pem(), unlock.as_ref())?;
        crypt::write_private(&paths.cert(), cert.as_bytes())?;
        crypt::write_private(&paths.ca(), ca.cert_pem().as_bytes())?;
        bootstrap_ca = Some(ca);
    }
    finish_renewal(&paths);
    let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(io(&p));
    let (ca_pem, cert_pem) = (read(paths.ca())?, read(paths.cert())?);
    let key_pem = crypt::read_node_key(&paths.key(), unlock.as_ref())?;
    let me = tls::Identity::new(&cert_pem, &key_pem)?;
    // The roots this node trusts, replaced when a CA rotation starts or ends (check_in).
    let trust = tls::Trust::new(&ca_pem)?;
    let client_tls = tls::client_config_trusting(trust.clone(), Some(me.clone()))?;
    let mut mgr = None;
    if cfg.role == Role::Manager {
        let raft_id = cfg.raft_id.ok_or_else(|| Error::Invalid("a manager without a Raft id".into()))?;
        let (log, sm) = store::open(&paths.raft(), data_key).map_err(|e| Error::Invalid(e.to_string()))?;
        let config = store::raft_config(&cfg.cluster_id).map_err(|e| Error::Invalid(e.to_string()))?;
        let raft = transport::Raft::new(raft_id, config, Network { tls: client_tls.clone() }, log, sm.clone())
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let auth = Auth::new(&cfg.cluster_id).with_store(sm.clone());
        let m = Manager::new(raft.clone(), sm, auth, client_tls.clone());
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| Error::Invalid(format!("listening on {}: {e}", cfg.listen)))?;
        if bootstrap_ca.is_some() || recovering.is_some() {
            let mut members = std::collections::BTreeMap::new();
            members.insert(
                raft_id,
                openraft::BasicNode {
                    addr: cfg.advertise.clone(),
                },
            );
            m.raft.initialize(members).await.map_err(|e| Error::Invalid(e.to_string()))?;
            wait_leader(&m).await?;
        }
        if let Some(b) = recovering.take() {
            let ident = pki::identity(cert_pem.as_bytes())?;
            let fresh = NodeRecord::new(&ident, Some(raft_id), Some(cfg.advertise.clone()), now());
            let me = match b
                .data
                .get(&crate::records::node_key(&cfg.node_id))
                .and_then(|v| serde_json::from_slice::<NodeRecord>(v).ok())
            {
                // This manager as it was (its labels, its join time), at its address now.
                Some(old) => NodeRecord {
                    role: Role::Manager,
                    raft_id: Some(raft_id),
                    addr: Some(cfg.advertise.clone()),
                    serial: fresh.serial,
                    previous_serial: None,
                    not_after: fresh.not_after,
                    issuer: fresh.issuer,
                    demoting: false,
                    ..old
                },
                None => fresh,
            };
            let removed = m.recover_state(&b.data, &me, now()).await?;
            tracing::warn!(
                ?removed,
                "recovered: a new cluster of this one manager; the other managers were removed"
            );
            let _ = std::fs::remove_file(paths.seed());
            cfg.recover = false;
            cfg.save(&paths)?;
        }
        if let Some(ca) = bootstrap_ca.take() {
            let ident = pki::identity(cert_pem.as_bytes())?;
            let first = NodeRecord::new(&ident, Some(raft_id), Some(cfg.advertise.clone()), now());
            m.init_state(&ca, &first).await?;
            if let Some(u) = &unlock {
                // The cluster's unlock key, for `cluster unlock-key` and the other managers.
                m.put(UNLOCK_KEY, crypt::unlock_key_text(u).into_bytes()).await?;
            }
            if let Some(exp) = cfg.cert_expiry {
                m.put("config/cert_expiry", serde_json::to_vec(&exp).expect("serialisable")).await?;
            }
            if let Some(ms) = cfg.heartbeat_ms {
                m.put("config/heartbeat_ms", serde_json::to_vec(&ms).expect("serialisable")).await?;
            }
            cfg.bootstrap = false;
            cfg.save(&paths)?;
        }
        // Served only now: a new or recovered store is written before anyone can call (a
        // manager's certificate alone is judged only while a store is empty).
        let admin = AdminService {
            cfg: cfg.clone(),
            manager: m.clone(),
        };
        crate::transport::raise_open_files();
        let hub = crate::dispatcher::Hub::new();
        let _ = HUB.set(hub.clone());
        tokio::spawn(hub.clone().follow(m.clone()));
        tokio::spawn(hub.clone().orchestrate(m.clone()));
        manager::serve_manager(
            &m,
            listener,
            tls::server_config_trusting(trust.clone(), me.clone())?,
            Some(admin),
            Some(hub),
        );
        if cfg.needs_membership {
            let through = cfg
                .managers
                .first()
                .cloned()
                .ok_or_else(|| Error::Invalid("no manager to join through".into()))?;
            manager::request_membership(&through, client_tls.clone(), raft_id, &cfg.advertise).await?;
            cfg.needs_membership = false;
            cfg.save(&paths)?;
        }
        // A manager keeps its own files sealed by the cluster's unlock key, as the store has it
        // (set at init, rotated by `cluster unlock-key --rotate`, learnt by a manager that joins).
        let (mm, p2) = (m.clone(), paths.clone());
        tokio::spawn(async move {
            let mut current = unlock.as_ref().map(crypt::unlock_key_text);
            loop {
                let want = mm.sm.get(UNLOCK_KEY).and_then(|v| String::from_utf8(v).ok());
                if want.is_some() && want != current {
                    match reseal(&p2, want.as_deref()) {
                        Ok(()) => {
                            // A new unlock key brings a new data key (as in Swarm).
                            if current.is_some() {
                                if let Err(e) = rotate_data_key(&p2, &mm.sm) {
                                    tracing::error!(error = %e, "rotating the data key");
                                }
                            }
                            current = want;
                        }
                        Err(e) => tracing::error!(error = %e, "sealing this node's keys with the unlock key"),
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        // The leader drives a CA rotation along.
        let mm = m.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = mm.drive_ca_rotation(now()).await {
                    tracing::warn!(error = %e, "CA rotation");
                }
                if let Err(e) = mm.reconcile_membership().await {
                    tracing::warn!(error = %e, "Raft membership");
                }
            }
        });
        mgr = Some(m);
    }
    // Every node renews its own certificate, at a random point between 50 % and 80 % of its life
    // (or at once when a CA rotation asks), and checks in every heartbeat.
    let targets = Arc::new(std::sync::RwLock::new(manager_targets(&cfg, &cfg.managers)));
    let (renew_now, renew_asked) = tokio::sync::watch::channel(0u64);
    {
        let (paths, me, tls, targets, trust, id) = (
            paths.clone(),
            me.clone(),
            client_tls.clone(),
            targets.clone(),
            trust.clone(),
            (cfg.node_id.clone(), cfg.cluster_id.clone()),
        );
        tokio::spawn(async move { renewals(paths, me, tls, targets, trust, id, renew_asked).await });
    }
    if let Some(exec) = executor {
        let agent = crate::agent::Agent::new(&cfg.node_id, &paths.dir, exec);
        let socket = crate::workload::socket_path(&paths.dir);
        let a = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::workload::serve(a, socket).await {
                tracing::error!(error = %e, "the Workload API stopped");
            }
        });
        tokio::spawn(crate::agent::run(agent, client_tls.clone(), targets.clone()));
    }
    {
        let (paths, trust, tls, cfg) = (paths.clone(), trust.clone(), client_tls.clone(), cfg.clone());
        tokio::spawn(async move { check_in(paths, cfg, trust, tls, targets, renew_now).await });
    }

    let (socket, listener) = (paths.socket(), bind_control(&paths)?);
    let state = Arc::new((cfg, mgr));
    let accept = async {
        loop {
            let Ok((conn, _)) = listener.accept().await else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let _ = control(conn, &state.0, state.1.as_ref()).await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = &mut stop => {}
    }
    if let Some(m) = &state.1 {
        let _ = m.raft.shutdown().await;
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The store a recovering manager starts from: the seed if a recovery was cut short or this is
/// a restore, else everything its own Raft files hold (then written as the seed, before those
/// files go). A restored node gets its first certificate here, from the backup's CA.
fn prepare_recovery(
    paths: &Paths,
    cfg: &NodeConfig,
    data_key: &crypt::Key,
    unlock: Option<&crypt::Key>,
) -> Result<crate::recovery::Backup> {
    let seed = paths.seed();
    if !seed.exists() {
        let data = store::recover(&paths.raft(), data_key.clone()).map_err(|e| Error::Invalid(e.to_string()))?;
        crypt::write_private(&seed, &crate::recovery::seal(&cfg.cluster_id, now(), &data, data_key)?)?;
    }
    let bytes = std::fs::read(&seed).map_err(io(&seed))?;
    let b = crate::recovery::open(&bytes, data_key)?;
    if b.cluster_id != cfg.cluster_id {
        return Err(Error::Invalid(format!("{}: another cluster's store", seed.display())));
    }
    match std::fs::remove_file(paths.raft()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&paths.raft())(e)),
        _ => {}
    }
    if !paths.cert().exists() {
        let text = |k: &str| {
            b.data
                .get(k)
                .and_then(|v| String::from_utf8(v.clone()).ok())
                .ok_or_else(|| Error::Invalid(format!("the backup has no {k}")))
        };
        let ca = Ca::from_pem(
            &text(crate::records::CA_CERT)?,
            &zeroize::Zeroizing::new(text(crate::records::CA_KEY)?),
        )?;
        let lifetime = b
            .data
            .get("config/cert_expiry")
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or(manager::CERT_LIFETIME);
        let rotation: Option<crate::records::CaRotation> =
            b.data.get(crate::records::CA_ROTATION).and_then(|v| serde_json::from_slice(v).ok());
        let (key, csr) = pki::key_and_request()?;
        let mut cert = ca.issue(&csr, &cfg.node_id, Role::Manager, &cfg.cluster_id, now(), lifetime)?;
        let mut roots = ca.cert_pem().to_owned();
        if let Some(r) = rotation {
            cert.push_str(&r.cross);
            roots.push_str(&r.old_cert);
        }
        crypt::write_node_key(&paths.key(), &key.serialize_pem(), unlock)?;
        crypt::write_private(&paths.cert(), cert.as_bytes())?;
        crypt::write_private(&paths.ca(), roots.as_bytes())?;
    }
    Ok(b)
}

/// Completes a renewal cut short between its two renames (the key and the certificate are
/// written aside first, then put in place, the key first).
fn finish_renewal(paths: &Paths) {
    let (kn, cn) = (paths.key().with_extension("key.new"), paths.cert().with_extension("crt.new"));
    if kn.exists() && cn.exists() {
        let _ = std::fs::rename(&kn, paths.key());
    }
    if cn.exists() && !kn.exists() {
        let _ = std::fs::rename(&cn, paths.cert());
    }
    let _ = std::fs::remove_file(kn);
}

/// When to renew a certificate issued at `issued` (not-before is an hour back) that expires at
/// `not_after`: a random point between 50 % and 80 % of its life.
pub fn renewal_time(not_before: i64, not_after: i64) -> i64 {
    let issued = not_before + 3600;
    let life = (not_after - issued).max(1);
    let r = crypt::random::<2>().map(u16::from_be_bytes).unwrap_or(0) as i64;
    issued + life / 2 + (life * 3 / 10) * r / 65535
}

/// The managers a node asks, in order: itself first (a manager), then the others.
fn manager_targets(cfg: &NodeConfig, managers: &[String]) -> Vec<String> {
    let mut targets: Vec<String> = Vec::new();
    if cfg.role == Role::Manager {
        targets.push(cfg.advertise.clone());
    }
    targets.extend(managers.iter().filter(|m| **m != cfg.advertise && !m.is_empty()).cloned());
    targets
}

type Targets = Arc<std::sync::RwLock<Vec<String>>>;

/// Asks a manager every heartbeat what to trust (the roots change when a CA rotation starts
/// and ends), whether to renew now (a rotation's batch, a new role), where the managers are
/// now, and the node's role: a node promoted or demoted, once it has its new certificate,
/// starts again in its new role.
async fn check_in(
    paths: Paths,
    cfg: NodeConfig,
    trust: Arc<tls::Trust>,
    tls: Arc<rustls::ClientConfig>,
    targets: Targets,
    renew_now: tokio::sync::watch::Sender<u64>,
) {
    let mut every = Duration::from_secs(5);
    loop {
        let now_targets = targets.read().expect("not poisoned").clone();
        for t in &now_targets {
            match manager::status_at(t, tls.clone()).await {
                Ok(r) => {
                    trust.deny(r.denied.iter().cloned());
                    let own = std::fs::read_to_string(paths.cert()).unwrap_or_default();
                    match trust.replace_checked(&r.ca_pem, &r.cross_pem, &own) {
                        Ok(true) => {
                            tracing::info!(
                                roots = tls::certs(&r.ca_pem).map(|c| c.len()).unwrap_or(0),
                                "the cluster's roots changed"
                            );
                            if let Err(e) = crypt::write_private(&paths.ca(), r.ca_pem.as_bytes()) {
                                tracing::error!(error = %e, "writing the roots");
                            }
                        }
                        Ok(false) => {}
                        Err(e) => tracing::error!(manager = %t, error = %e, "the roots a manager sent: refused"),
                    }
                    if r.renew {
                        renew_now.send_modify(|n| *n += 1);
                    }
                    every = Duration::from_millis(r.heartbeat_ms.clamp(200, 60_000));
                    if !r.managers.is_empty() {
                        // Added to what the node knows, never narrowed to what one manager says
                        // (each must prove itself a manager at every call anyway).
                        let mut known: Vec<String> = r.managers.iter().take(16).cloned().collect();
                        known.sort();
                        for m in NodeConfig::load(&paths).map(|c| c.managers).unwrap_or_default() {
                            if !known.contains(&m) && known.len() < 32 {
                                known.push(m);
                            }
                        }
                        let new_targets = manager_targets(&cfg, &known);
                        if new_targets != now_targets {
                            *targets.write().expect("not poisoned") = new_targets;
                            if let Err(e) = remember_managers(&paths, known) {
                                tracing::warn!(error = %e, "saving where the managers are");
                            }
                        }
                    }
                    if let Some(role) = pki::Role::from_ou(&r.role).filter(|r| *r != cfg.role) {
                        let held = std::fs::read(paths.cert()).ok().and_then(|c| pki::identity(&c).ok());
                        if held.is_some_and(|h| h.role == role) {
                            if let Err(e) = change_role(&paths, role, r.raft_id, t) {
                                tracing::error!(error = %e, "starting again in the new role");
                            }
                        }
                    }
                    break;
                }
                // Said once all have failed: one manager down is no news.
                Err(e) if Some(t) == now_targets.last() => tracing::warn!(manager = %t, error = %e, "check-in: no manager answered"),
                Err(e) => tracing::debug!(manager = %t, error = %e, "check-in"),
            }
        }
        // A little jitter, so that nodes started together do not call together.
        let jitter = crypt::random::<1>().map(|b| b[0] as u64).unwrap_or(0) * every.as_millis() as u64 / 2550;
        tokio::time::sleep(every + Duration::from_millis(jitter)).await;
    }
}

/// Keeps where the managers are in node.json, for the next start.
fn remember_managers(paths: &Paths, managers: Vec<String>) -> Result<()> {
    let mut c = NodeConfig::load(paths)?;
    if c.managers != managers {
        c.managers = managers;
        c.save(paths)?;
    }
    Ok(())
}

/// A node the store has promoted or demoted, holding its new certificate: its configuration
/// says the new role, and the process starts again as it (same arguments, same log). A
/// promoted node asks to join Raft at that start (advertising the address it reaches `via`
/// from, unless it has one); a demoted one's Raft files go (they hold the CA's key).
fn change_role(paths: &Paths, role: Role, raft_id: u64, via: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut c = NodeConfig::load(paths)?;
    c.role = role;
    match role {
        Role::Admin => return Err(Error::Invalid("a node is a manager or a worker".into())),
        Role::Manager => {
            if raft_id == 0 {
                return Err(Error::Invalid("promoted without a Raft id".into()));
            }
            c.raft_id = Some(raft_id);
            c.needs_membership = true;
            if c.advertise.is_empty() {
                let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| Error::Invalid(e.to_string()))?;
                sock.connect(via).map_err(|e| Error::Invalid(format!("{via}: {e}")))?;
                let ip = sock.local_addr().map_err(|e| Error::Invalid(e.to_string()))?.ip();
                let port = c.listen.rsplit_once(':').map_or("2377", |(_, p)| p).to_owned();
                c.advertise = std::net::SocketAddr::new(ip, port.parse().unwrap_or(2377)).to_string();
            }
            // Joins Raft through a manager other than itself.
            c.managers.retain(|m| *m != c.advertise);
        }
        Role::Worker => {
            c.raft_id = None;
            c.needs_membership = false;
            if !c.managers.contains(&via.to_owned()) && via != c.advertise {
                c.managers.insert(0, via.to_owned());
            }
            c.managers.retain(|m| *m != c.advertise);
            // Saved first: a crash before the file goes must not start a manager without a
            // store.
            c.save(paths)?;
            match std::fs::remove_file(paths.raft()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&paths.raft())(e)),
                _ => {}
            }
        }
    }
    c.save(paths)?;
    tracing::warn!(?role, "this node's role changed: starting again as it");
    let err = std::process::Command::new("/proc/self/exe")
        .args(std::env::args_os().skip(1))
        .exec();
    Err(Error::Invalid(format!("starting again: {err}")))
}

async fn renewals(
    paths: Paths,
    me: Arc<tls::Identity>,
    tls: Arc<rustls::ClientConfig>,
    targets: Targets,
    trust: Arc<tls::Trust>,
    (node_id, cluster_id): (String, String),
    mut renew_now: tokio::sync::watch::Receiver<u64>,
) {
    loop {
        let cert = std::fs::read_to_string(paths.cert()).unwrap_or_default();
        let Ok(id) = pki::identity(cert.as_bytes()) else {
            tracing::error!("cannot read this node's certificate: no renewal");
            return;
        };
        let at = renewal_time(id.not_before, id.not_after);
        let wait = (at - now()).max(0) as u64;
        tracing::info!(at, wait, "next certificate renewal");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
            _ = renew_now.changed() => tracing::info!("renewing now (CA rotation, or a new role)"),
        }
        let mut done = false;
        let now_targets = targets.read().expect("not poisoned").clone();
        for t in &now_targets {
            match manager::renew_at(t, tls.clone()).await {
                Ok((cert, key)) => {
                    match check_renewal(&trust, &node_id, &cluster_id, &cert, &key).and_then(|()| store_renewal(&paths, &me, &cert, &key)) {
                        Ok(()) => {
                            // A check-in made with the old certificate while this renewal ran asked
                            // for what is done now.
                            renew_now.borrow_and_update();
                            tracing::info!(manager = %t, "certificate renewed");
                            done = true;
                            break;
                        }
                        Err(e) => tracing::error!(error = %e, "storing the renewed certificate"),
                    }
                }
                Err(e) => tracing::warn!(manager = %t, error = %e, "certificate renewal"),
            }
        }
        if !done {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }
}

/// What a manager sent as this node's renewed certificate, checked before anything is written:
/// for this node of this cluster, for the key just made, and verifying against the roots.
fn check_renewal(trust: &tls::Trust, node_id: &str, cluster_id: &str, cert: &str, key: &str) -> Result<()> {
    use rustls::server::danger::ClientCertVerifier;
    tls::Identity::new(cert, key)?;
    let id = pki::identity(cert.as_bytes())?;
    if id.node_id != node_id || id.cluster_id != cluster_id {
        return Err(Error::Invalid("the renewed certificate is another node's".into()));
    }
    let chain = tls::certs(cert)?;
    trust
        .verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now())
        .map_err(|e| Error::Invalid(format!("the renewed certificate does not verify: {e}")))?;
    Ok(())
}

/// Puts a renewed key and certificate in place (aside first, then renamed, the key first; see
/// [`finish_renewal`]) and uses them from now on.
fn store_renewal(paths: &Paths, me: &tls::Identity, cert: &str, key: &str) -> Result<()> {
    let (kn, cn) = (paths.key().with_extension("key.new"), paths.cert().with_extension("crt.new"));
    let unlock = UNLOCKED.lock().expect("not poisoned").clone();
    crypt::write_node_key(&kn, key, unlock.as_ref())?;
    crypt::write_private(&cn, cert.as_bytes())?;
    std::fs::rename(&kn, paths.key()).map_err(io(&kn))?;
    std::fs::rename(&cn, paths.cert()).map_err(io(&cn))?;
    me.replace(cert, key)?;
    Ok(())
}

/// Where the store keeps the cluster's unlock key (autolock).
const UNLOCK_KEY: &str = "config/unlock_key";

/// Seals this node's data key and TLS key with the unlock key `text` (re-reading them with
/// whatever seals them now, which this process knows from its start).
fn reseal(paths: &Paths, text: Option<&str>) -> Result<()> {
    let Some(t) = text else { return Ok(()) };
    let _one = KEYS.lock().expect("not poisoned");
    let new = crypt::parse_unlock_key(t)?;
    let old = UNLOCKED.lock().expect("not poisoned").clone();
    let data = crypt::read_data_key(&paths.data_key(), old.as_ref())?;
    let key = crypt::read_node_key(&paths.key(), old.as_ref())?;
    crypt::write_node_key(&paths.key(), &key, Some(&new))?;
    crypt::write_data_key(&paths.data_key(), &data, Some(&new))?;
    *UNLOCKED.lock().expect("not poisoned") = Some(new);
    Ok(())
}

/// The files of the node this process serves (one per process).
static SERVING: std::sync::OnceLock<Paths> = std::sync::OnceLock::new();

/// One change of this node's key files at a time.
static KEYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A new data key for this manager's store: written aside (sealed as the current one is), the
/// whole store sealed anew with it in one transaction, then put in place. A start finds a
/// rotation cut short in between ([`finish_data_key_rotation`]).
pub fn rotate_data_key(paths: &Paths, sm: &store::StateMachine) -> Result<()> {
    let _one = KEYS.lock().expect("not poisoned");
    let unlock = UNLOCKED.lock().expect("not poisoned").clone();
    let next = crypt::Key::generate()?;
    let aside = paths.data_key().with_extension("key.next");
    crypt::write_data_key(&aside, &next, unlock.as_ref())?;
    sm.rotate_key(next)
        .map_err(|e| Error::Invalid(format!("sealing the store anew: {e}")))?;
    std::fs::rename(&aside, paths.data_key()).map_err(io(&aside))?;
    tracing::info!("the store's data key rotated");
    Ok(())
}

/// A data key rotation cut short: the key set aside is the one if the store opens with it; it
/// goes only when the current key is known to open the store. When neither can be told, both
/// stay and the start fails with the reason.
fn finish_data_key_rotation(paths: &Paths, unlock: Option<&crypt::Key>) -> Result<()> {
    let aside = paths.data_key().with_extension("key.next");
    if !aside.exists() {
        return Ok(());
    }
    let fits = |p: &Path| -> std::result::Result<bool, String> {
        let k = crypt::read_data_key(p, unlock).map_err(|e| e.to_string())?;
        store::StateMachine::key_fits(&paths.raft(), &k)
    };
    if fits(&aside) == Ok(true) {
        std::fs::rename(&aside, paths.data_key()).map_err(io(&aside))?;
        return Ok(());
    }
    match fits(&paths.data_key()) {
        Ok(true) => std::fs::remove_file(&aside).map_err(io(&aside)),
        Ok(false) => Err(Error::Invalid(format!(
            "neither {} nor {} opens the store",
            paths.data_key().display(),
            aside.display()
        ))),
        Err(e) => Err(Error::Invalid(format!(
            "a data key rotation was cut short and which key the store uses cannot be told ({e}); both are kept"
        ))),
    }
}

/// The unlock key this process was given (or sealed its files with since).
static UNLOCKED: std::sync::Mutex<Option<crypt::Key>> = std::sync::Mutex::new(None);

/// A locked node: its control socket answers `status` (locked) and `unlock`, nothing else,
/// until the right unlock key comes (returned), or `stop` (None).
async fn wait_for_unlock(
    paths: &Paths,
    cfg: &NodeConfig,
    stop: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Result<Option<crypt::Key>> {
    let (socket, listener) = (paths.socket(), bind_control(paths)?);
    tracing::warn!("this node is locked (autolock): waiting for `bulkhead cluster unlock`");
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = &mut *stop => {
                let _ = std::fs::remove_file(&socket);
                return Ok(None);
            }
        };
        let Ok((conn, _)) = conn else { continue };
        let Some((req, mut w)) = read_request(conn).await else { continue };
        let (out, key) = match req {
            Ok(ControlRequest::Status) => (
                serde_json::json!({"ok": {"node_id": cfg.node_id, "role": cfg.role, "cluster_id": cfg.cluster_id, "locked": true}}),
                None,
            ),
            Ok(ControlRequest::Unlock { key }) => {
                match crypt::parse_unlock_key(&key).and_then(|k| crypt::read_data_key(&paths.data_key(), Some(&k)).map(|_| k)) {
                    Ok(k) => (serde_json::json!({"ok": {"unlocked": true}}), Some(k)),
                    Err(e) => (serde_json::json!({"error": e.to_string()}), None),
                }
            }
            Ok(_) => (
                serde_json::json!({"error": "this node is locked: give it its unlock key with `bulkhead cluster unlock`"}),
                None,
            ),
            Err(e) => (serde_json::json!({"error": e}), None),
        };
        let _ = send(&mut w, out).await;
        if let Some(k) = key {
            drop(listener);
            let _ = std::fs::remove_file(&socket);
            *UNLOCKED.lock().expect("not poisoned") = Some(k.clone());
            return Ok(Some(k));
        }
    }
}

async fn wait_leader(m: &Manager) -> Result<()> {
    for _ in 0..200 {
        let metrics = m.raft.metrics().borrow().clone();
        if metrics.current_leader == Some(metrics.id) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Invalid("this manager did not become the leader of its new cluster".into()))
}

/// The control socket, bound afresh, 0600 (in a 0700 directory).
fn bind_control(paths: &Paths) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let socket = paths.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).map_err(io(&socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(io(&socket))?;
    Ok(listener)
}

/// One JSON line to a client of the control socket.
async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, v: serde_json::Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&v).expect("serialisable");
    line.push(b'\n');
    w.write_all(&line).await
}

/// A request on the control socket: only root's (checked by the peer's credentials; anyone
/// else is answered with a refusal here), one JSON line of at most 4 MiB (a secret of 500 KiB,
/// as JSON) within 10 s. Returns
/// it (or why it is not one) and where to answer; None when nothing can be answered.
async fn read_request(
    conn: tokio::net::UnixStream,
) -> Option<(std::result::Result<ControlRequest, String>, tokio::net::unix::OwnedWriteHalf)> {
    let (r, mut w) = conn.into_split();
    if r.as_ref().peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX) != 0 {
        let _ = send(&mut w, serde_json::json!({"error": "only root may control this node"})).await;
        return None;
    }
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(r.take(4 << 20));
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .ok()?
        .ok()?;
    Some((serde_json::from_str(&line).map_err(|e| format!("bad request: {e}")), w))
}

/// One CLI request, one answer.
async fn control(conn: tokio::net::UnixStream, cfg: &NodeConfig, mgr: Option<&Manager>) -> std::io::Result<()> {
    let Some((req, mut w)) = read_request(conn).await else {
        return Ok(());
    };
    let out = match req {
        Err(e) => serde_json::json!({"error": e}),
        Ok(ControlRequest::ServiceLogs { name, follow, tail }) => return service_logs(&mut w, mgr, &name, follow, tail).await,
        Ok(req) => match tokio::time::timeout(Duration::from_secs(30), answer(req, cfg, mgr)).await {
            Ok(Ok(v)) => serde_json::json!({"ok": v}),
            Ok(Err(e)) => serde_json::json!({"error": e.to_string()}),
            Err(_) => serde_json::json!({"error": "no answer within 30 s"}),
        },
    };
    send_within(&mut w, out).await
}

/// A line to the CLI, which must read it within 30 s (a client that never reads holds
/// nothing of the node's for longer).
async fn send_within(w: &mut tokio::net::unix::OwnedWriteHalf, v: serde_json::Value) -> std::io::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), send(w, v))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read")))
}

/// The leader's dispatcher hub, for `service logs` on the control socket.
pub(crate) static HUB: std::sync::OnceLock<Arc<crate::dispatcher::Hub>> = std::sync::OnceLock::new();

/// `service logs`: a subscription to the service's tasks on their nodes; each line as it comes
/// (`{"log": ...}`), then `{"ok": null}`. Without `follow`, a node that does not answer within
/// 30 s ends it with an error.
async fn service_logs(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    mgr: Option<&Manager>,
    name: &str,
    follow: bool,
    tail: Option<u32>,
) -> std::io::Result<()> {
    let fail = |m: String| serde_json::json!({ "error": m });
    let Some(m) = mgr else {
        return send(w, fail("this node is a worker: ask the leader".into())).await;
    };
    if let Err(s) = m.leading() {
        let hint = crate::dispatcher::leader_hint(&s).map(|a| format!(" ({a})")).unwrap_or_default();
        return send(w, fail(format!("service logs are served by the leader{hint}: ask it"))).await;
    }
    let (Some(hub), Some(_)) = (HUB.get(), m.service(name)) else {
        return send(w, fail(format!("no service named {name:?}"))).await;
    };
    let mut nodes: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for t in m.tasks_of(name) {
        if let (Some(node), Some(_)) = (&t.task.node, t.status.as_ref().and_then(|s| s.container.as_ref())) {
            nodes.entry(node.clone()).or_default().insert(t.task.id.clone());
        }
    }
    if nodes.is_empty() {
        return send(w, serde_json::json!({"ok": null})).await;
    }
    let (mut rx, _guard) = match hub.open_logs(nodes, follow, tail) {
        Ok(x) => x,
        Err(e) => return send(w, fail(e)).await,
    };
    // Without `follow`, the whole answer within 2 minutes (a node cannot hold it open).
    let end = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        // Following, a line every 10 s of silence finds out whether the user is still there.
        let wait = if follow {
            tokio::time::Instant::now() + Duration::from_secs(10)
        } else {
            end.min(tokio::time::Instant::now() + Duration::from_secs(30))
        };
        match tokio::time::timeout_at(wait, rx.recv()).await {
            Ok(Some(line)) => send_within(w, serde_json::json!({ "log": line })).await?,
            Ok(None) => return send_within(w, serde_json::json!({"ok": null})).await,
            Err(_) if follow => send_within(w, serde_json::json!({"keepalive": true})).await?,
            Err(_) => return send_within(w, fail("a node did not answer in time".into())).await,
        }
    }
}

async fn answer(req: ControlRequest, cfg: &NodeConfig, mgr: Option<&Manager>) -> Result<serde_json::Value> {
    let need = || mgr.ok_or_else(|| Error::Invalid("this node is a worker: ask a manager".into()));
    Ok(match req {
        ControlRequest::Status => {
            let leader = mgr.and_then(|m| m.raft.metrics().borrow().current_leader);
            serde_json::json!({"node_id": cfg.node_id, "role": cfg.role, "cluster_id": cfg.cluster_id, "raft_id": cfg.raft_id, "leader": leader, "ready": true})
        }
        ControlRequest::Nodes => {
            let m = need()?;
            let metrics = m.raft.metrics().borrow().clone();
            let mut nodes = m.nodes();
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            let rows: Vec<serde_json::Value> = nodes
                .into_iter()
                .map(|n| {
                    let status = match (n.raft_id, metrics.current_leader) {
                        (Some(r), Some(l)) if r == l => "leader",
                        (Some(r), _) if metrics.membership_config.membership().voter_ids().any(|v| v == r) => "reachable",
                        (Some(_), _) => "joining",
                        (None, _) => "",
                    };
                    let mut v = serde_json::to_value(&n).expect("serialisable");
                    v["manager_status"] = serde_json::json!(status);
                    v
                })
                .collect();
            serde_json::Value::Array(rows)
        }
        ControlRequest::JoinToken { role, rotate, ttl, uses } => {
            let m = need()?;
            if role == Role::Admin {
                return Err(Error::Invalid("join tokens are for managers and workers".into()));
            }
            let t = if rotate || ttl.is_some() || uses.is_some() {
                m.rotate_token(role, ttl, uses, now()).await?.text().to_string()
            } else {
                m.token(role)
                    .and_then(|t| t.text)
                    .ok_or_else(|| Error::Invalid("no token in the store".into()))?
            };
            serde_json::json!({"token": t})
        }
        ControlRequest::Unlock { .. } => return Err(Error::Invalid("this node is not locked".into())),
        ControlRequest::UnlockKey { rotate } => {
            let m = need()?;
            if rotate {
                let k = crypt::Key::generate()?;
                m.put(UNLOCK_KEY, crypt::unlock_key_text(&k).into_bytes()).await?;
            }
            let k =
                m.sm.get(UNLOCK_KEY)
                    .and_then(|v| String::from_utf8(v).ok())
                    .ok_or_else(|| Error::Invalid("autolock is off: this cluster has no unlock key".into()))?;
            serde_json::json!({"key": k})
        }
        ControlRequest::NodeInspect { node } => {
            let m = need()?;
            let id = if node == "self" { cfg.node_id.clone() } else { node };
            let rec = m
                .get::<NodeRecord>(&crate::records::node_key(&id))
                .ok_or_else(|| Error::Invalid(format!("no such node: {id}")))?;
            serde_json::to_value(rec).expect("serialisable")
        }
        ControlRequest::NodeUpdate {
            node,
            availability,
            label_add,
            label_rm,
        } => {
            let m = need()?;
            let id = if node == "self" { cfg.node_id.clone() } else { node };
            if let Some(a) = &availability {
                if !matches!(a.as_str(), "active" | "pause" | "drain") {
                    return Err(Error::Invalid(format!("--availability {a:?}: active, pause or drain")));
                }
            }
            for (k, v) in &label_add {
                if k.is_empty() || k.len() > 128 || v.len() > 1024 || !k.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
                    return Err(Error::Invalid(format!(
                        "label {k:?}: letters, digits, '.', '_', '-', '/' (at most 128), a value of at most 1 KiB"
                    )));
                }
            }
            let key = crate::records::node_key(&id);
            let raw = m.sm.get(&key).ok_or_else(|| Error::Invalid(format!("no such node: {id}")))?;
            let mut rec: NodeRecord = serde_json::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
            if let Some(a) = availability {
                rec.availability = a;
            }
            for k in &label_rm {
                rec.labels.remove(k);
            }
            rec.labels.extend(label_add);
            if rec.labels.len() > 64 {
                return Err(Error::Invalid("at most 64 labels per node".into()));
            }
            let r = m
                .write(store::Request {
                    checks: vec![store::Check::Is {
                        key: key.clone(),
                        value: Some(raw),
                    }],
                    ops: vec![store::Op::Put {
                        key,
                        value: serde_json::to_vec(&rec).expect("serialisable"),
                    }],
                })
                .await?;
            if !r.applied {
                return Err(Error::Invalid(format!("node {id} changed meanwhile; try again")));
            }
            serde_json::to_value(rec).expect("serialisable")
        }
        ControlRequest::NodeRole { node, role } => {
            let m = need()?;
            if role == Role::Admin {
                return Err(Error::Invalid("a node is a manager or a worker".into()));
            }
            let id = if node == "self" { cfg.node_id.clone() } else { node };
            let rec = m.set_role(&id, role).await?;
            serde_json::json!({"node": rec.id, "role": rec.role, "demoting": rec.demoting})
        }
        ControlRequest::NodeRm { node, force } => {
            let m = need()?;
            let rec = m.remove_node(&node, force, now()).await?;
            serde_json::json!({"removed": rec.id, "role": rec.role})
        }
        ControlRequest::IssueAdmin { csr, lifetime } => {
            let m = need()?;
            let lifetime = lifetime.unwrap_or(ADMIN_LIFETIME);
            if !(60..=365 * 86400).contains(&lifetime) {
                return Err(Error::Invalid("an admin certificate lasts from 1 minute to 1 year".into()));
            }
            let (name, cert) = m.issue_admin(&csr, lifetime, now()).await?;
            serde_json::json!({"name": name, "cert": cert, "ca": m.trust_pem()?, "cluster_id": cfg.cluster_id})
        }
        ControlRequest::RevokeAdmin { name } => {
            let m = need()?;
            let key = crate::records::admin_key(&name);
            let rec: crate::records::AdminRecord = m
                .get(&key)
                .ok_or_else(|| Error::Invalid(format!("no admin certificate {name:?}")))?;
            m.write(store::Request {
                checks: vec![],
                ops: vec![
                    store::Op::Delete { key },
                    store::Op::Put {
                        key: crate::records::denied_key(&rec.serial),
                        value: serde_json::to_vec(&rec.not_after).expect("serialisable"),
                    },
                ],
            })
            .await?;
            serde_json::json!({"revoked": name})
        }
        ControlRequest::SecretCreate { kind, name, data } => {
            let data = zeroize::Zeroizing::new(data);
            serde_json::to_value(need()?.create_secret(kind, &name, &data, now()).await?).expect("serialisable")
        }
        ControlRequest::SecretRotate { kind, name, data } => {
            let data = zeroize::Zeroizing::new(data);
            serde_json::to_value(need()?.rotate_secret(kind, &name, &data, now()).await?).expect("serialisable")
        }
        ControlRequest::SecretLs { kind } => serde_json::to_value(need()?.secrets(kind)).expect("serialisable"),
        ControlRequest::SecretInspect { kind, name } => {
            let m = need()?;
            let rec = m
                .secret(kind, &name)
                .ok_or_else(|| Error::Invalid(format!("no such {kind:?}: {name}").to_lowercase()))?;
            let mut v = serde_json::to_value(rec).expect("serialisable");
            if kind == crate::secrets::Kind::Config {
                v["data"] = m.config_data(&name).map(|d| String::from_utf8_lossy(&d).into_owned()).into();
            }
            v
        }
        ControlRequest::ServiceCreate { spec } => serde_json::to_value(need()?.create_service(spec, now()).await?).expect("serialisable"),
        ControlRequest::ServiceLs => {
            let m = need()?;
            let list: Vec<serde_json::Value> = m
                .services()
                .into_iter()
                .map(|s| {
                    let running = m.running(&s.spec.name, None);
                    serde_json::json!({"service": s, "running": running})
                })
                .collect();
            serde_json::Value::Array(list)
        }
        ControlRequest::ServiceInspect { name, tasks } => {
            let m = need()?;
            let s = m
                .service(&name)
                .ok_or_else(|| Error::Invalid(format!("no service named {name:?}")))?;
            let mut v = serde_json::json!({"service": s});
            if tasks {
                let mut ts = m.tasks_of(&name);
                ts.sort_by_key(|t| (t.task.slot, t.task.node.clone(), std::cmp::Reverse(t.task.created)));
                v["tasks"] = serde_json::to_value(ts).expect("serialisable");
                let nodes: std::collections::BTreeMap<String, String> =
                    m.nodes().into_iter().map(|n| (n.id.clone(), n.hostname.clone())).collect();
                v["hostnames"] = serde_json::to_value(nodes).expect("serialisable");
            }
            v
        }
        ControlRequest::ServiceUpdate { spec } => {
            let name = spec.name.clone();
            serde_json::to_value(need()?.update_service(&name, spec, now()).await?).expect("serialisable")
        }
        ControlRequest::ServiceScale { name, replicas } => {
            serde_json::to_value(need()?.scale_service(&name, replicas, now()).await?).expect("serialisable")
        }
        ControlRequest::ServiceRollback { name } => {
            serde_json::to_value(need()?.rollback_service(&name, "rolled back by the user", now()).await?).expect("serialisable")
        }
        ControlRequest::ServiceRm { name } => serde_json::to_value(need()?.remove_service(&name).await?).expect("serialisable"),
        ControlRequest::ServiceLogs { .. } => {
            return Err(Error::Invalid("service logs are served on a control socket, in many lines".into()))
        }
        ControlRequest::StackDeploy { stack, services, prune } => {
            serde_json::to_value(need()?.deploy_stack(stack, services, prune, now()).await?).expect("serialisable")
        }
        ControlRequest::StackLs => serde_json::to_value(need()?.stacks()).expect("serialisable"),
        ControlRequest::StackRm { name } => serde_json::to_value(need()?.remove_stack(&name).await?).expect("serialisable"),
        ControlRequest::NodePs { node } => {
            let m = need()?;
            let id = if node == "self" { cfg.node_id.clone() } else { node };
            serde_json::to_value(m.node_tasks(&id)).expect("serialisable")
        }
        ControlRequest::SecretRm { kind, name } => serde_json::to_value(need()?.remove_secret(kind, &name).await?).expect("serialisable"),
        ControlRequest::RotateDataKey => {
            let m = need()?;
            let sm = m.sm.clone();
            let paths = SERVING.get().cloned().ok_or_else(|| Error::Invalid("no node served here".into()))?;
            tokio::task::spawn_blocking(move || rotate_data_key(&paths, &sm))
                .await
                .map_err(|e| Error::Invalid(e.to_string()))??;
            serde_json::json!({"rotated": true})
        }
        ControlRequest::Backup => {
            // Sealed here: the store's contents never cross the socket in clear. With autolock
            // by the cluster's unlock key, else by a new key the user is shown once.
            let m = need()?;
            let data: std::collections::BTreeMap<String, Vec<u8>> = m.sm.scan("").into_iter().collect();
            // A key of its own: not the unlock key, which every manager knows (a removed one
            // could seal a backup of its making with it).
            let key = crypt::Key::generate()?;
            let sealed = crate::recovery::seal(&cfg.cluster_id, now(), &data, &key)?;
            serde_json::json!({
                "sealed": String::from_utf8(sealed).expect("JSON"),
                "key": crypt::unlock_key_text(&key),
            })
        }
        ControlRequest::Ca {
            rotate,
            cert_expiry,
            svid_expiry,
        } => {
            let m = need()?;
            if let Some(exp) = svid_expiry {
                if !crate::identity::SVID_LIFETIME_RANGE.contains(&exp) {
                    return Err(Error::Invalid("--svid-expiry: from 10 seconds to 7 days".into()));
                }
                m.put("config/svid_expiry", serde_json::to_vec(&exp).expect("serialisable")).await?;
            }
            if let Some(exp) = cert_expiry {
                if !(60..=10 * 365 * 86400).contains(&exp) {
                    return Err(Error::Invalid("--cert-expiry: from 1 minute to 10 years".into()));
                }
                m.put("config/cert_expiry", serde_json::to_vec(&exp).expect("serialisable")).await?;
            }
            if rotate {
                m.start_ca_rotation(now()).await?;
            }
            let rotation = m.rotation();
            let pending: Vec<String> = if rotation.is_some() {
                m.ca_pending(now())?.into_iter().map(|n| n.id).collect()
            } else {
                Vec::new()
            };
            serde_json::json!({
                "roots": m.trust_pem()?,
                "ca_digest": m.ca()?.digest(),
                "rotating": rotation.is_some(),
                "pending": pending,
                "batch": rotation.map(|r| r.batch).unwrap_or_default(),
                "cert_expiry": m.cert_lifetime(),
                "svid_expiry": m.svid_lifetime(),
            })
        }
        ControlRequest::Inspect => {
            let m = need()?;
            let metrics = m.raft.metrics().borrow().clone();
            let ca = m.sm.get(crate::records::CA_CERT).map(|c| String::from_utf8_lossy(&c).into_owned());
            let digest = ca.as_deref().and_then(|c| tls::certs(c).ok()).map(|d| pki::digest(&d[0]));
            serde_json::json!({
                "cluster_id": cfg.cluster_id,
                "ca_digest": digest,
                "leader": metrics.current_leader,
                "term": metrics.current_term,
                "last_applied": metrics.last_applied.map(|l| l.index),
                "voters": metrics.membership_config.membership().voter_ids().collect::<Vec<_>>(),
            })
        }
    })
}

/// How long an admin certificate lasts unless asked (7 days).
const ADMIN_LIFETIME: i64 = 7 * 86400;

/// Remote administration: a manager answers a request of the control socket from a caller with
/// an admin certificate of the cluster (checked by [`transport::Auth::require_admin`] before the
/// body is read). Giving a locked node its key and issuing admin certificates stay local.
pub struct AdminService {
    pub cfg: NodeConfig,
    pub manager: Manager,
}

#[tonic::async_trait]
impl crate::proto::admin_server::Admin for AdminService {
    async fn call(
        &self,
        req: tonic::Request<crate::proto::Payload>,
    ) -> std::result::Result<tonic::Response<crate::proto::Payload>, tonic::Status> {
        let who = self.manager.auth.require_admin(&req)?;
        let r: ControlRequest =
            serde_json::from_slice(&req.get_ref().json).map_err(|e| tonic::Status::invalid_argument(format!("bad request: {e}")))?;
        if !r.remote() {
            return Err(tonic::Status::permission_denied("only on the manager's own machine"));
        }
        // Judged against a store known to be current: a manager cut off, or out of Raft, would
        // still honour an admin certificate revoked since.
        self.manager.voting()?;
        tokio::time::timeout(Duration::from_secs(5), self.manager.raft.ensure_linearizable())
            .await
            .map_err(|_| tonic::Status::unavailable(manager::Error::NoQuorum.to_string()))?
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        self.manager.auth.require_admin(&req)?;
        tracing::info!(admin = %who.node_id, request = ?std::mem::discriminant(&r), "remote administration");
        let v = answer(r, &self.cfg, Some(&self.manager))
            .await
            .map_err(|e| tonic::Status::failed_precondition(e.to_string()))?;
        Ok(tonic::Response::new(crate::proto::Payload {
            json: serde_json::to_vec(&v).map_err(|e| tonic::Status::internal(e.to_string()))?,
        }))
    }
}

/// What `cluster ca --issue-admin` writes (0600): the certificate, its key and the roots.
#[derive(Serialize, Deserialize)]
pub struct AdminFile {
    pub cluster_id: String,
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// The CLI's side of remote administration: `req` to the manager at `addr`, with the admin
/// certificate in `file`.
pub async fn call_remote(addr: &str, file: &Path, req: &ControlRequest) -> Result<serde_json::Value> {
    let mut bytes = Vec::new();
    tokio::fs::File::open(file)
        .await
        .map_err(io(file))?
        .take(64 << 10)
        .read_to_end(&mut bytes)
        .await
        .map_err(io(file))?;
    let f: AdminFile =
        serde_json::from_slice(&bytes).map_err(|e| Error::Invalid(format!("{}: not an admin certificate file: {e}", file.display())))?;
    let id = tls::Identity::new(&f.cert, &f.key)?;
    let ch = transport::connect(addr, tls::client_config(&f.ca, Some(id))?)
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let r = crate::proto::admin_client::AdminClient::new(ch)
        .call(crate::proto::Payload {
            json: serde_json::to_vec(req).expect("serialisable"),
        })
        .await
        .map_err(|s| Error::Invalid(format!("{addr}: {}", s.message())))?;
    serde_json::from_slice(&r.get_ref().json).map_err(|e| Error::Invalid(format!("{addr}: {e}")))
}

/// Sends `req` on the control socket of the node at `root`; where the answer comes.
async fn ask(root: &Path, req: &ControlRequest) -> Result<(PathBuf, tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf)> {
    let p = Paths::new(root).socket();
    let conn = tokio::net::UnixStream::connect(&p)
        .await
        .map_err(|e| Error::Invalid(format!("{}: {e} (is `bulkhead node serve` running for this --root?)", p.display())))?;
    let (r, mut w) = conn.into_split();
    let mut line = serde_json::to_vec(req).expect("serialisable");
    line.push(b'\n');
    w.write_all(&line).await.map_err(io(&p))?;
    Ok((p, r, w))
}

/// The CLI's side of the control socket: one request, its answer (an error is one line).
pub async fn call(root: &Path, req: &ControlRequest) -> Result<serde_json::Value> {
    let (p, r, _w) = ask(root, req).await?;
    let mut out = String::new();
    tokio::io::BufReader::new(r.take(16 << 20))
        .read_line(&mut out)
        .await
        .map_err(io(&p))?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
    match (v.get("ok"), v.get("error")) {
        (Some(ok), _) => Ok(ok.clone()),
        (_, Some(e)) => Err(Error::Invalid(e.as_str().unwrap_or("error").to_owned())),
        _ => Err(Error::Invalid("an answer without ok or error".into())),
    }
}

/// The CLI's side of a request answered in many lines (`service logs`): `each` gets every
/// `{"log": ...}` line's value; the last line is the answer.
pub async fn call_stream(root: &Path, req: &ControlRequest, mut each: impl FnMut(serde_json::Value)) -> Result<serde_json::Value> {
    let (p, r, _w) = ask(root, req).await?;
    let mut lines = tokio::io::BufReader::new(r).lines();
    while let Some(l) = lines.next_line().await.map_err(io(&p))? {
        if l.len() > 1 << 20 {
            return Err(Error::Invalid(format!("{}: a line of more than 1 MiB", p.display())));
        }
        let v: serde_json::Value = serde_json::from_str(&l).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
        if let Some(x) = v.get("log") {
            each(x.clone());
            continue;
        }
        if v.get("keepalive").is_some() {
            continue;
        }
        return match (v.get("ok"), v.get("error")) {
            (Some(ok), _) => Ok(ok.clone()),
            (_, Some(e)) => Err(Error::Invalid(e.as_str().unwrap_or("error").to_owned())),
            _ => Err(Error::Invalid("an answer without ok or error".into())),
        };
    }
    Err(Error::Invalid(format!("{}: the node ended the answer", p.display())))
}
