//! Three managers over real gRPC and mutual TLS on loopback: they form a cluster and replicate,
//! and every caller that is not a manager of this cluster is refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_cluster::crypt::Key;
use bulkhead_cluster::pki::{self, Ca, Role};
use bulkhead_cluster::proto::raft_client::RaftClient;
use bulkhead_cluster::proto::raft_server::RaftServer;
use bulkhead_cluster::store::{self, Op, Request};
use bulkhead_cluster::tls;
use bulkhead_cluster::transport::{self, Auth, Network, RaftService};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A certificate of `ca` for node `id` with `role`, and its key (PEM).
fn creds(ca: &Ca, id: &str, role: Role, cluster: &str) -> (String, String) {
    let (key, csr) = pki::key_and_request().unwrap();
    (ca.issue(&csr, id, role, cluster, now(), 3600).unwrap(), key.serialize_pem())
}

struct Node {
    raft: transport::Raft,
    sm: store::StateMachine,
    addr: String,
    auth: Auth,
}

async fn manager(dir: &std::path::Path, ca: &Ca, id: u64) -> Node {
    let (cert, key) = creds(ca, &id.to_string(), Role::Manager, "c1");
    let me = tls::Identity::new(&cert, &key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (log, sm) = store::open(&dir.join(format!("m{id}.redb")), Key::generate().unwrap()).unwrap();
    let config = Arc::new(
        openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    );
    let net = Network {
        tls: tls::client_config(ca.cert_pem(), Some(me.clone())).unwrap(),
    };
    let raft = transport::Raft::new(id, config, net, log, sm.clone()).await.unwrap();
    let auth = Auth::new("c1");
    let svc = RaftServer::new(RaftService {
        raft: raft.clone(),
        auth: auth.clone(),
    })
    .max_decoding_message_size(transport::MAX_MESSAGE);
    let incoming = transport::incoming(listener, tls::server_config(ca.cert_pem(), me).unwrap());
    tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming));
    Node { raft, sm, addr, auth }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A vote request sent with `client` TLS settings to `addr`: the gRPC status, or the
/// connection's failure.
async fn vote_as(addr: &str, client: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let ch = transport::connect(addr, client).await.map_err(|e| format!("connect: {e}"))?;
    let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(1, 99), None);
    let payload = bulkhead_cluster::proto::Payload {
        json: serde_json::to_vec(&vote).unwrap(),
    };
    RaftClient::new(ch)
        .vote(payload)
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_replicate_over_mutual_tls_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create("c1", now(), 10).unwrap();
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(id, manager(dir.path(), &ca, id).await);
    }
    let members: BTreeMap<u64, openraft::BasicNode> = nodes
        .iter()
        .map(|(i, n)| (*i, openraft::BasicNode { addr: n.addr.clone() }))
        .collect();
    nodes[&1].raft.initialize(members).await.unwrap();
    until("a leader", || nodes[&1].raft.metrics().borrow().current_leader.is_some()).await;
    let leader = nodes[&1].raft.metrics().borrow().current_leader.unwrap();
    nodes[&leader]
        .raft
        .client_write(Request {
            checks: vec![],
            ops: vec![Op::Put {
                key: "k".into(),
                value: b"v".to_vec(),
            }],
        })
        .await
        .unwrap();
    for n in nodes.values() {
        let sm = n.sm.clone();
        until("replication", || sm.get("k").is_some()).await;
    }
    let addr = nodes[&1].addr.clone();
    // No client certificate: only the bootstrap calls take that.
    let e = vote_as(&addr, tls::client_config(ca.cert_pem(), None).unwrap()).await.unwrap_err();
    assert!(e.contains("Unauthenticated") && e.contains("client certificate"), "{e}");
    // A worker of this cluster: not Raft's.
    let (wc, wk) = creds(&ca, "w1", Role::Worker, "c1");
    let worker = tls::Identity::new(&wc, &wk).unwrap();
    let e = vote_as(&addr, tls::client_config(ca.cert_pem(), Some(worker)).unwrap())
        .await
        .unwrap_err();
    assert!(e.contains("PermissionDenied") && e.contains("bulkhead-manager only"), "{e}");
    // A manager certificate of another CA: the handshake fails.
    let other = Ca::create("c1", now(), 10).unwrap();
    let (oc, ok) = creds(&other, "9", Role::Manager, "c1");
    let stranger = tls::Identity::new(&oc, &ok).unwrap();
    let e = vote_as(&addr, tls::client_config(ca.cert_pem(), Some(stranger.clone())).unwrap())
        .await
        .unwrap_err();
    // (TLS 1.3: the server refuses the certificate after the client's side of the handshake, and
    // the connection goes before any call is answered.)
    assert!(
        e.starts_with("Cancelled") || e.starts_with("Unavailable") || e.starts_with("Unknown"),
        "{e}"
    );
    // A server of another CA: our client refuses it (a fake manager).
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    let incoming = transport::incoming(fake, tls::server_config(other.cert_pem(), stranger).unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServer::new(RaftService {
                raft: nodes[&1].raft.clone(),
                auth: Auth::new("c1"),
            }))
            .serve_with_incoming(incoming),
    );
    let (mc, mk) = creds(&ca, "8", Role::Manager, "c1");
    let honest = tls::Identity::new(&mc, &mk).unwrap();
    let e = vote_as(&fake_addr, tls::client_config(ca.cert_pem(), Some(honest.clone())).unwrap())
        .await
        .unwrap_err();
    assert!(e.starts_with("connect:"), "{e}");
    // A manager certificate of this CA but another cluster id.
    let (xc, xk) = creds(&ca, "7", Role::Manager, "c2");
    let e = vote_as(
        &addr,
        tls::client_config(ca.cert_pem(), Some(tls::Identity::new(&xc, &xk).unwrap())).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(e.contains("another cluster"), "{e}");
    // A removed node: refused at once, on its next call.
    let serial = pki::identity(mc.as_bytes()).unwrap().serial;
    vote_as(&addr, tls::client_config(ca.cert_pem(), Some(honest.clone())).unwrap())
        .await
        .unwrap();
    nodes[&1].auth.denied.write().unwrap().insert(serial);
    let e = vote_as(&addr, tls::client_config(ca.cert_pem(), Some(honest)).unwrap())
        .await
        .unwrap_err();
    assert!(e.contains("removed"), "{e}");
    // A client that connects and never speaks does not hold the server up.
    let _idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (c2, k2) = creds(&ca, "6", Role::Manager, "c1");
    vote_as(
        &addr,
        tls::client_config(ca.cert_pem(), Some(tls::Identity::new(&c2, &k2).unwrap())).unwrap(),
    )
    .await
    .unwrap();
    for n in nodes.values() {
        n.raft.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_certificate_holds_at_most_sixteen_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create("c1", now(), 10).unwrap();
    let node = manager(dir.path(), &ca, 1).await;
    let worker = |id: &str| {
        let (c, k) = creds(&ca, id, Role::Worker, "c1");
        tls::client_config(ca.cert_pem(), Some(tls::Identity::new(&c, &k).unwrap())).unwrap()
    };
    // A call over a connection of its own, kept open: the server answers it (a worker may not
    // vote), or drops the connection unanswered.
    let call = |client: Arc<rustls::ClientConfig>| {
        let addr = node.addr.clone();
        async move {
            let ch = transport::connect(&addr, client).await.map_err(|e| format!("connect: {e}"))?;
            let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(1, 99), None);
            let payload = bulkhead_cluster::proto::Payload {
                json: serde_json::to_vec(&vote).unwrap(),
            };
            let e = RaftClient::new(ch.clone()).vote(payload).await.unwrap_err();
            Ok::<_, String>((ch, e))
        }
    };
    let w1 = worker("w1");
    let mut held = Vec::new();
    for i in 0..16 {
        let (ch, e) = call(w1.clone()).await.unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "connection {i}: {e}");
        held.push(ch);
    }
    // The seventeenth is dropped once its certificate is known, unanswered.
    match call(w1.clone()).await {
        Ok((_, e)) => assert_ne!(e.code(), tonic::Code::PermissionDenied, "a 17th connection was served: {e}"),
        Err(e) => assert!(e.starts_with("connect:"), "{e}"),
    }
    // Another certificate has slots of its own.
    let (_, e) = call(worker("w2")).await.unwrap();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // Closed connections give their slots back.
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        if let Ok((_, e)) = call(w1.clone()).await {
            if e.code() == tonic::Code::PermissionDenied {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "w1's slots did not come back");
    node.raft.shutdown().await.unwrap();
}
