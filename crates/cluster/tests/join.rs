//! A cluster made by joining, over real gRPC and mutual TLS on loopback: the first manager
//! initialises, two more join with the manager token and are added to Raft, two workers join
//! with the worker token; tokens that are wrong, rotated, used up, expired or pinned to another
//! CA are refused; a write on a follower reaches the leader; the leader's loss elects another;
//! without a majority, writes fail with a clear error instead of hanging.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_cluster::crypt::Key;
use bulkhead_cluster::manager::{self, Manager, NodeRecord};
use bulkhead_cluster::pki::{self, Ca, Role};
use bulkhead_cluster::store::{self, Op, Request};
use bulkhead_cluster::tls;
use bulkhead_cluster::transport::{self, Auth, Network};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Running {
    manager: Manager,
    addr: String,
    server: tokio::task::JoinHandle<()>,
    hub: Arc<bulkhead_cluster::dispatcher::Hub>,
}

/// A manager with these credentials, serving on a fresh loopback port (or `listener`).
async fn serve(dir: &std::path::Path, raft_id: u64, cert: &str, key: &str, ca: &str, listener: Option<tokio::net::TcpListener>) -> Running {
    let me = tls::Identity::new(cert, key).unwrap();
    let listener = match listener {
        Some(l) => l,
        None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let addr = listener.local_addr().unwrap().to_string();
    let (log, sm) = store::open(&dir.join(format!("{raft_id}.redb")), Key::generate().unwrap()).unwrap();
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
    let client_tls = tls::client_config(ca, Some(me.clone())).unwrap();
    let raft = transport::Raft::new(raft_id, config, Network { tls: client_tls.clone() }, log, sm.clone())
        .await
        .unwrap();
    let manager = Manager::new(raft.clone(), sm.clone(), Auth::new("c1").with_store(sm), client_tls);
    let hub = bulkhead_cluster::dispatcher::Hub::new();
    tokio::spawn(hub.clone().follow(manager.clone()));
    tokio::spawn(hub.clone().orchestrate(manager.clone()));
    let server = manager::serve_manager(&manager, listener, tls::server_config(ca, me).unwrap(), None, Some(hub.clone()));
    Running {
        manager,
        addr,
        server,
        hub,
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn put(k: &str, v: &str) -> Request {
    Request {
        checks: vec![],
        ops: vec![Op::Put {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_forms_by_joining_and_refuses_what_it_should() {
    let dir = tempfile::tempdir().unwrap();
    // Three managers (the third joins through a follower: its request to be added is redirected
    // to the leader, which must see the new manager's own certificate).
    let formed = form(dir.path(), 3).await;
    let (mut managers, ca, first, worker_token) = (formed.managers, formed.ca, formed.first, formed.worker_token);
    assert!(managers[0]
        .manager
        .init_state(&ca, &first)
        .await
        .unwrap_err()
        .to_string()
        .contains("initialised already"));
    let voters = managers[0]
        .manager
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    assert_eq!(voters, 3);
    // Two workers join.
    for _ in 0..2 {
        let j = manager::join_cluster(&managers[1].addr, &worker_token.text()).await.unwrap();
        assert_eq!(j.role, Role::Worker);
    }
    // Every manager sees the five nodes.
    for m in &managers {
        let mm = m.manager.clone();
        until("five nodes everywhere", || mm.nodes().len() == 5).await;
        let roles: Vec<Role> = mm.nodes().iter().map(|n| n.role).collect();
        assert_eq!(roles.iter().filter(|r| **r == Role::Manager).count(), 3);
    }
    // A write on a follower reaches the leader.
    let leader = managers[0].manager.raft.metrics().borrow().current_leader.unwrap();
    let follower = managers.iter().find(|m| m.manager.raft.metrics().borrow().id != leader).unwrap();
    assert!(follower.manager.write(put("from/follower", "1")).await.unwrap().applied);
    for m in &managers {
        let sm = m.manager.sm.clone();
        until("the forwarded write everywhere", || sm.get("from/follower").is_some()).await;
    }

    // Tokens: wrong, rotated, used up, expired, and a fake manager with another CA.
    let addr = managers[0].addr.clone();
    let wrong = pki::JoinToken::generate(&ca.digest()).unwrap();
    let e = manager::join_cluster(&addr, &wrong.text()).await.err().unwrap().to_string();
    assert!(e.contains("wrong or rotated"), "{e}");
    let rotated = managers[0].manager.rotate_token(Role::Worker, None, Some(1), now()).await.unwrap();
    let e = manager::join_cluster(&addr, &worker_token.text()).await.err().unwrap().to_string();
    assert!(e.contains("wrong or rotated"), "the old worker token still works: {e}");
    manager::join_cluster(&addr, &rotated.text()).await.unwrap();
    let e = manager::join_cluster(&addr, &rotated.text()).await.err().unwrap().to_string();
    assert!(e.contains("used up"), "{e}");
    let short = managers[0].manager.rotate_token(Role::Worker, Some(-1), None, now()).await.unwrap();
    let e = manager::join_cluster(&addr, &short.text()).await.err().unwrap().to_string();
    assert!(e.contains("expired"), "{e}");
    let other = Ca::create("c1", now(), 10).unwrap();
    let (fk, fcsr) = pki::key_and_request().unwrap();
    let fcert = other.issue(&fcsr, "fake", Role::Manager, "c1", now(), 3600).unwrap();
    // (A real manager of a cluster of its own, answering with its own CA.)
    let fake = serve(dir.path(), 424242, &fcert, &fk.serialize_pem(), other.cert_pem(), None).await;
    let mut fm = std::collections::BTreeMap::new();
    fm.insert(424242, openraft::BasicNode { addr: fake.addr.clone() });
    fake.manager.raft.initialize(fm).await.unwrap();
    until("the fake to lead", || {
        fake.manager.raft.metrics().borrow().current_leader == Some(424242)
    })
    .await;
    fake.manager
        .init_state(
            &other,
            &NodeRecord {
                id: "fake".into(),
                ..first.clone()
            },
        )
        .await
        .unwrap();
    let live = managers[0].manager.rotate_token(Role::Worker, None, None, now()).await.unwrap();
    let wj0 = manager::join_cluster(&addr, &live.text()).await.unwrap();
    let e = manager::join_cluster(&fake.addr, &live.text()).await.err().unwrap().to_string();
    assert!(e.contains("not the one the token names"), "{e}");
    fake.server.abort();
    // A renewed certificate supersedes the one before the last: that one renews nothing and is
    // refused on every call.
    let first_tls = tls::client_config(&wj0.ca_pem, Some(tls::Identity::new(&wj0.cert_pem, &wj0.key_pem).unwrap())).unwrap();
    let (c1, k1) = manager::renew_at(&addr, first_tls.clone()).await.unwrap();
    let second_tls = tls::client_config(&wj0.ca_pem, Some(tls::Identity::new(&c1, &k1).unwrap())).unwrap();
    let (c2, k2) = manager::renew_at(&addr, second_tls).await.unwrap();
    let e = manager::renew_at(&addr, first_tls).await.err().unwrap().to_string();
    assert!(e.contains("superseded"), "{e}");
    let third_tls = tls::client_config(&wj0.ca_pem, Some(tls::Identity::new(&c2, &k2).unwrap())).unwrap();
    manager::renew_at(&addr, third_tls).await.unwrap();
    // A worker's certificate may not write through the control API, nor add itself to Raft.
    let wj = manager::join_cluster(&addr, &live.text()).await.unwrap();
    let wid = tls::Identity::new(&wj.cert_pem, &wj.key_pem).unwrap();
    let ch = transport::connect(&addr, tls::client_config(&wj.ca_pem, Some(wid)).unwrap())
        .await
        .unwrap();
    let s = bulkhead_cluster::proto::control_client::ControlClient::new(ch)
        .add_manager(bulkhead_cluster::proto::AddManagerRequest {
            raft_id: 7,
            addr: "127.0.0.1:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");

    // The leader goes: another is elected, and no acknowledged write is lost.
    let li = managers
        .iter()
        .position(|m| m.manager.raft.metrics().borrow().id == leader)
        .unwrap();
    let gone = managers.remove(li);
    gone.server.abort();
    gone.manager.raft.shutdown().await.unwrap();
    let m0 = managers[0].manager.clone();
    until("a new leader", || {
        m0.raft.metrics().borrow().current_leader.is_some_and(|l| l != leader)
    })
    .await;
    assert!(managers[0].manager.write(put("after/leader", "1")).await.unwrap().applied);
    for m in &managers {
        assert!(m.manager.sm.get("from/follower").is_some());
    }
    // One of three left: no quorum, a clear error, no hang.
    let second = managers.remove(1);
    second.server.abort();
    second.manager.raft.shutdown().await.unwrap();
    let e = managers[0].manager.write(put("alone", "1")).await.unwrap_err();
    assert!(e.to_string().contains("no quorum"), "{e}");
    assert!(managers[0].manager.sm.get("alone").is_none());
    for m in managers {
        m.server.abort();
        m.manager.raft.shutdown().await.unwrap();
    }
}

/// A cluster formed over loopback.
struct Formed {
    managers: Vec<Running>,
    /// The managers that joined (all but the first), as they joined.
    joined: Vec<bulkhead_cluster::manager::Joined>,
    worker_token: pki::JoinToken,
    manager_token: pki::JoinToken,
    ca: Ca,
    first: NodeRecord,
}

/// A cluster of `n` managers over loopback: the first initialises Raft with itself and puts the
/// cluster's state; each other joins through the one before it (so the third goes through a
/// follower) and asks it to be added.
async fn form(dir: &std::path::Path, n: usize) -> Formed {
    let ca = Ca::create("c1", now(), 10).unwrap();
    let first_id = manager::new_node_id().unwrap();
    let (k, csr) = pki::key_and_request().unwrap();
    let cert = ca.issue(&csr, &first_id, Role::Manager, "c1", now(), 3600).unwrap();
    let raft1 = manager::new_raft_id().unwrap();
    let m1 = serve(dir, raft1, &cert, &k.serialize_pem(), ca.cert_pem(), None).await;
    let mut members = std::collections::BTreeMap::new();
    members.insert(raft1, openraft::BasicNode { addr: m1.addr.clone() });
    m1.manager.raft.initialize(members).await.unwrap();
    until("m1 to lead", || m1.manager.raft.metrics().borrow().current_leader == Some(raft1)).await;
    let ident = pki::identity(cert.as_bytes()).unwrap();
    let first = NodeRecord::new(&ident, Some(raft1), Some(m1.addr.clone()), now());
    let (worker_token, manager_token) = m1.manager.init_state(&ca, &first).await.unwrap();
    // Its dispatcher serves once it has caught up with its term's start.
    until("m1 to dispatch", || m1.hub.dispatching(&m1.manager)).await;
    let mut managers = vec![m1];
    let mut joined = Vec::new();
    for k in 0..n - 1 {
        let through = managers[k].addr.clone();
        let j = manager::join_cluster(&through, &manager_token.text()).await.unwrap();
        assert_eq!(j.role, Role::Manager);
        let m = serve(dir, j.raft_id.unwrap(), &j.cert_pem, &j.key_pem, &j.ca_pem, None).await;
        manager::request_membership(&through, m.manager.tls.clone(), j.raft_id.unwrap(), &m.addr)
            .await
            .unwrap_or_else(|e| panic!("add_manager: {e}"));
        managers.push(m);
        joined.push(j);
    }
    Formed {
        managers,
        joined,
        worker_token,
        manager_token,
        ca,
        first,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_manager_cannot_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let Formed {
        managers,
        joined,
        manager_token,
        ..
    } = form(dir.path(), 3).await;
    let gone = &joined[1];
    let rec = managers[0].manager.remove_node(&gone.node_id, true, now()).await.unwrap();
    assert_eq!(rec.id, gone.node_id);
    let m0 = managers[0].manager.clone();
    until("two voters", || {
        m0.raft.metrics().borrow().membership_config.membership().voter_ids().count() == 2
    })
    .await;
    // Its certificate is refused at once: adding itself back, renewing, writing.
    let its_tls = managers[2].manager.tls.clone();
    let e = manager::request_membership(&managers[0].addr, its_tls.clone(), gone.raft_id.unwrap(), &managers[2].addr)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("removed"), "{e}");
    let e = manager::renew_at(&managers[0].addr, its_tls).await.err().unwrap().to_string();
    assert!(e.contains("removed"), "{e}");
    // The manager token it knew works no more.
    let e = manager::join_cluster(&managers[0].addr, &manager_token.text())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("wrong or rotated"), "{e}");
    // The others go on.
    assert!(managers[1].manager.write(put("still", "1")).await.unwrap().applied);
    for m in managers {
        m.server.abort();
        m.manager.raft.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_its_certificate_expired_rejoins_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let f = form(dir.path(), 2).await;
    let (m, addr) = (f.managers[0].manager.clone(), f.managers[0].addr.clone());
    let w = manager::join_cluster(&addr, &f.worker_token.text()).await.unwrap();
    // Its certificate ran out while it was away (issued here already expired, for its own key,
    // and recorded as its current one).
    let key = rcgen::KeyPair::from_pem(&w.key_pem).unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec();
    let expired = f.ca.issue(&csr, &w.node_id, Role::Worker, "c1", now() - 7200, 60).unwrap();
    let ident = pki::identity(expired.as_bytes()).unwrap();
    assert!(ident.not_after < now());
    let rec: NodeRecord = m.get(&format!("nodes/{}", w.node_id)).unwrap();
    m.write(Request {
        checks: vec![],
        ops: vec![Op::Put {
            key: format!("nodes/{}", w.node_id),
            value: serde_json::to_vec(&NodeRecord {
                serial: ident.serial.clone(),
                previous_serial: None,
                not_after: ident.not_after,
                ..rec
            })
            .unwrap(),
        }],
    })
    .await
    .unwrap();
    let (wid, wkey) = (w.node_id.clone(), w.key_pem.to_string());
    let token = m.rotate_token(Role::Worker, None, None, now()).await.unwrap();
    // Someone else's key, or another node's id: refused.
    let other_key = pki::key_and_request().unwrap().0.serialize_pem();
    let e = manager::rejoin_cluster(&addr, &token.text(), prev(&wid, &expired, &other_key))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no proof"), "{e}");
    let e = manager::rejoin_cluster(&addr, &token.text(), prev(&f.first.id, &expired, &wkey))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another node's"), "{e}");
    // With a worker token and its own key: back, as itself.
    let back = manager::rejoin_cluster(&addr, &token.text(), prev(&wid, &expired, &wkey))
        .await
        .unwrap();
    assert_eq!((back.node_id.as_str(), back.role), (wid.as_str(), Role::Worker));
    let now_rec: NodeRecord = m.get(&format!("nodes/{}", w.node_id)).unwrap();
    assert_eq!(now_rec.serial, pki::identity(back.cert_pem.as_bytes()).unwrap().serial);
    assert_eq!(m.nodes().len(), 3, "a second record was made for it");
    // A worker token brings no manager back (the token must be for the node's own role).
    let jm = &f.joined[0];
    let e = manager::rejoin_cluster(&addr, &token.text(), prev(&jm.node_id, &jm.cert_pem, &jm.key_pem))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("wrong or rotated"), "{e}");
    // The original certificate (two back now) is superseded; after `node rm`, nothing rejoins.
    let e = manager::rejoin_cluster(&addr, &token.text(), prev(&wid, &w.cert_pem, &wkey))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("superseded"), "{e}");
    m.remove_node(&wid, false, now()).await.unwrap();
    let e = manager::rejoin_cluster(&addr, &token.text(), prev(&wid, &back.cert_pem, &back.key_pem))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not in the cluster"), "{e}");
    for r in f.managers {
        r.server.abort();
        r.manager.raft.shutdown().await.unwrap();
    }
}

fn prev<'a>(node_id: &'a str, cert_pem: &'a str, key_pem: &'a str) -> manager::Previous<'a> {
    manager::Previous {
        node_id,
        cert_pem,
        key_pem,
    }
}

/// A worker's dispatcher client, with its own certificate.
async fn dispatcher_as(
    addr: &str,
    j: &manager::Joined,
) -> bulkhead_cluster::proto::dispatcher_client::DispatcherClient<tonic::transport::Channel> {
    let me = tls::Identity::new(&j.cert_pem, &j.key_pem).unwrap();
    let ch = transport::connect(addr, tls::client_config(&j.ca_pem, Some(me)).unwrap())
        .await
        .unwrap();
    bulkhead_cluster::proto::dispatcher_client::DispatcherClient::new(ch)
}

fn payload<T: serde::Serialize>(v: &T) -> bulkhead_cluster::proto::Payload {
    bulkhead_cluster::proto::Payload {
        json: serde_json::to_vec(v).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gets_and_reports_only_its_own_tasks_and_secrets_go_only_where_they_are_needed() {
    use bulkhead_cluster::dispatcher::{Assignments, Report, ReportItem, SessionHello};
    use bulkhead_cluster::orchestrator::{Constraint, Mode, ServiceSpec, TaskState};
    use bulkhead_cluster::services::{FileRef, TaskTemplate};
    let dir = tempfile::tempdir().unwrap();
    let formed = form(dir.path(), 1).await;
    let m = formed.managers[0].manager.clone();
    let addr = formed.managers[0].addr.clone();
    let a = manager::join_cluster(&addr, &formed.worker_token.text()).await.unwrap();
    let b = manager::join_cluster(&addr, &formed.worker_token.text()).await.unwrap();
    m.create_secret(bulkhead_cluster::secrets::Kind::Secret, "pw", b"MARKER-pw", now())
        .await
        .unwrap();
    let spec = |name: &str, replicas, constraint: &str, secrets: Vec<FileRef>| ServiceSpec {
        name: name.into(),
        mode: Mode::Replicated { replicas },
        constraints: vec![Constraint::parse(constraint).unwrap()],
        reserve_memory: 0,
        reserve_cpu: 0,
        task: TaskTemplate {
            image: "x".into(),
            secrets,
            ..Default::default()
        },
        restart: Default::default(),
        update: Default::default(),
    };
    m.create_service(spec("web", 2, "node.role==worker", vec![]), now()).await.unwrap();
    let pw = FileRef {
        source: "pw".into(),
        target: "pw".into(),
        ..Default::default()
    };
    m.create_service(spec("db", 1, &format!("node.id=={}", a.node_id), vec![pw]), now())
        .await
        .unwrap();
    let mm = m.clone();
    until("three tasks placed", || {
        mm.tasks_of("web").iter().filter(|t| t.task.node.is_some()).count() == 2
            && mm.tasks_of("db").iter().all(|t| t.task.node.is_some())
            && mm.tasks_of("db").len() == 1
    })
    .await;
    let web = m.tasks_of("web");
    let of = |n: &str| web.iter().find(|t| t.task.node.as_deref() == Some(n)).unwrap().task.id.clone();
    let (task_a, task_b) = (of(&a.node_id), of(&b.node_id));

    // A asks for B's assignments: refused.
    let mut ca = dispatcher_as(&addr, &a).await;
    let hello_b = SessionHello {
        node: Some(b.node_id.clone()),
        hostname: "h".into(),
        ..Default::default()
    };
    let e = ca.session(payload(&hello_b)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // Its own: its two tasks, and the secret of db's.
    let mut sa = ca.session(payload(&SessionHello::default())).await.unwrap().into_inner();
    let first: Assignments = serde_json::from_slice(&sa.message().await.unwrap().unwrap().json).unwrap();
    let mut ids: Vec<&str> = first.tasks.iter().map(|t| t.service.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["db", "web"]);
    assert_eq!(first.secrets.len(), 1);
    assert_eq!(first.secrets[0].data, b"MARKER-pw");
    // B: its one task, no secret.
    let mut cb = dispatcher_as(&addr, &b).await;
    let mut sb = cb.session(payload(&SessionHello::default())).await.unwrap().into_inner();
    let bs: Assignments = serde_json::from_slice(&sb.message().await.unwrap().unwrap().json).unwrap();
    assert_eq!(bs.tasks.len(), 1);
    assert_eq!(bs.tasks[0].id, task_b);
    assert!(bs.secrets.is_empty());

    // A reports B's task: refused, and nothing is recorded.
    let item = |task: &str, state| ReportItem {
        task: task.into(),
        status: bulkhead_cluster::services::TaskStatus {
            state,
            message: String::new(),
            container: None,
            digest: None,
            exit_code: None,
            updated: 0,
        },
    };
    let forged = Report {
        statuses: vec![item(&task_a, TaskState::Running), item(&task_b, TaskState::Failed)],
    };
    let e = ca.report(payload(&forged)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(m.tasks_of("web").iter().all(|t| t.status.is_none()));
    // A state before accepted is not a node's to report.
    let e = ca
        .report(payload(&Report {
            statuses: vec![item(&task_a, TaskState::Pending)],
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // Nor is orphaned (the manager's word for a task whose node is gone).
    let e = ca
        .report(payload(&Report {
            statuses: vec![item(&task_a, TaskState::Orphaned)],
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // A report too big is refused before it is parsed, whatever it holds.
    let mut big = br#"{"statuses":[{"task":"x","state":"running","junk":""#.to_vec();
    big.resize(big.len() + (4 << 20), b'a');
    big.extend_from_slice(br#""}]}"#);
    let e = ca.report(bulkhead_cluster::proto::Payload { json: big }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("more than"), "{e}");
    // A report judged, then overtaken by another of the same task: the first no longer applies.
    let judged = m
        .judge_report(
            &a.node_id,
            &Report {
                statuses: vec![item(&task_a, TaskState::Starting)],
            },
            now(),
        )
        .unwrap();
    ca.report(payload(&Report {
        statuses: vec![item(&task_a, TaskState::Preparing)],
    }))
    .await
    .unwrap();
    assert_eq!(judged.len(), 1);
    assert!(!m.write(judged.into_iter().next().unwrap()).await.unwrap().applied);
    // Its own task: recorded; an older state afterwards changes nothing.
    ca.report(payload(&Report {
        statuses: vec![item(&task_a, TaskState::Running)],
    }))
    .await
    .unwrap();
    ca.report(payload(&Report {
        statuses: vec![item(&task_a, TaskState::Starting)],
    }))
    .await
    .unwrap();
    let mine = m.tasks_of("web").into_iter().find(|t| t.task.id == task_a).unwrap();
    assert_eq!(mine.state, TaskState::Running);

    // db removed: A's next message has no secret any more.
    m.remove_service("db").await.unwrap();
    let mut last = first;
    for _ in 0..50 {
        if last.secrets.is_empty() {
            break;
        }
        last = serde_json::from_slice(&sa.message().await.unwrap().unwrap().json).unwrap();
    }
    assert!(last.secrets.is_empty(), "{last:?}");

    // web removed and made again under its name in one write (no pass between): its old tasks
    // are shut down, not adopted by the new one (which would run the old template under it).
    use bulkhead_cluster::services::Desired;
    let old = m.service("web").unwrap();
    let again = bulkhead_cluster::services::ServiceRecord {
        id: "00000000000000aa".into(),
        version: 1,
        ..old.clone()
    };
    m.write(Request {
        checks: vec![],
        ops: vec![Op::Put {
            key: "services/web".into(),
            value: serde_json::to_vec(&again).unwrap(),
        }],
    })
    .await
    .unwrap();
    let mm = m.clone();
    until("web's old tasks shut down and two new ones made", || {
        let ts = mm.tasks_of("web");
        ts.iter()
            .filter(|t| t.task.service_id == old.id)
            .all(|t| t.task.desired == Desired::Shutdown)
            && ts
                .iter()
                .filter(|t| t.task.service_id == again.id && t.task.desired == Desired::Running)
                .count()
                == 2
    })
    .await;

    // A report of 40 tasks with 60 KiB templates (the checks hold each record: about 2.4 MiB)
    // is judged into several bounded writes, and every status lands.
    let mut fat = spec("fat", 40, &format!("node.id=={}", a.node_id), vec![]);
    fat.task.env = vec![format!("PAD={}", "p".repeat(60 << 10))];
    m.create_service(fat, now()).await.unwrap();
    let mm = m.clone();
    until("40 fat tasks placed", || {
        mm.tasks_of("fat").iter().filter(|t| t.task.node.is_some()).count() == 40
    })
    .await;
    let all = Report {
        statuses: m.tasks_of("fat").iter().map(|t| item(&t.task.id, TaskState::Running)).collect(),
    };
    let writes = m.judge_report(&a.node_id, &all, now()).unwrap();
    assert!(writes.len() >= 2, "one write of {} bytes", writes[0].size());
    assert!(writes
        .iter()
        .all(|w| w.size() <= bulkhead_cluster::dispatcher::MAX_REPORT_WRITE + (128 << 10)));
    ca.report(payload(&all)).await.unwrap();
    assert!(m
        .tasks_of("fat")
        .iter()
        .all(|t| t.status.as_ref().map(|s| s.state) == Some(TaskState::Running)));
    drop(sb);
}

/// An executor that only records, whose "containers" are named after their tasks; the process
/// this test runs in is taken for whichever container `caller` names (the kernel's cgroup
/// lookup, played by the test).
#[derive(Default)]
struct Recorder {
    started: std::sync::Mutex<Vec<(String, String, Option<std::path::PathBuf>)>>,
    caller: std::sync::Mutex<Option<String>>,
}

impl bulkhead_cluster::agent::Executor for Recorder {
    fn start(
        &self,
        _node: &str,
        t: &bulkhead_cluster::dispatcher::Assignment,
        _files: &[bulkhead_cluster::agent::TaskFile],
        identity: Option<&bulkhead_cluster::agent::IdentityMount>,
    ) -> Result<bulkhead_cluster::agent::Started, String> {
        let container = format!("c{}", t.id);
        self.started
            .lock()
            .unwrap()
            .push((t.service.clone(), container.clone(), identity.map(|i| i.files.clone())));
        Ok(bulkhead_cluster::agent::Started { container, digest: None })
    }
    fn observe(&self, _c: &str) -> bulkhead_cluster::agent::Observed {
        bulkhead_cluster::agent::Observed::Running
    }
    fn stop(&self, _c: &str) -> Result<(), String> {
        Ok(())
    }
    fn remove(&self, _c: &str) -> Result<(), String> {
        Ok(())
    }
    fn adopt(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn owner(&self, _c: &str) -> Option<(u32, u32)> {
        Some((0, 0))
    }
    fn container_of_pid(&self, pid: i32) -> Option<String> {
        (pid == std::process::id() as i32)
            .then(|| self.caller.lock().unwrap().clone())
            .flatten()
    }
}

/// Identities, end to end in one process: the leader issues SVIDs only for a node's own running
/// tasks; the agent writes each task's files and serves the Workload API, where a caller gets
/// its own task's SVID (checked by the `spiffe` crate's client, and against the bundle by
/// rustls's WebPKI verifier), never another's, nothing if it is no task, and a renewed one
/// before the first expires. An SVID is never taken for a node's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_get_their_own_svids_through_files_and_the_workload_api_and_nothing_else_does() {
    use bulkhead_cluster::identity::{IdentityReply, IdentityRequest};
    use bulkhead_cluster::orchestrator::{Constraint, Mode, ServiceSpec};
    use bulkhead_cluster::services::TaskTemplate;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let formed = form(dir.path(), 1).await;
    let m = formed.managers[0].manager.clone();
    let addr = formed.managers[0].addr.clone();
    m.put("config/svid_expiry", b"12".to_vec()).await.unwrap();
    let a = manager::join_cluster(&addr, &formed.worker_token.text()).await.unwrap();
    let b = manager::join_cluster(&addr, &formed.worker_token.text()).await.unwrap();
    let spec = |name: &str, node: &str| ServiceSpec {
        name: name.into(),
        mode: Mode::Replicated { replicas: 1 },
        constraints: vec![Constraint::parse(&format!("node.id=={node}")).unwrap()],
        reserve_memory: 0,
        reserve_cpu: 0,
        task: TaskTemplate {
            image: "x".into(),
            ..Default::default()
        },
        restart: Default::default(),
        update: Default::default(),
    };
    m.create_service(spec("web", &a.node_id), now()).await.unwrap();
    m.create_service(spec("api", &a.node_id), now()).await.unwrap();
    m.create_service(spec("other", &b.node_id), now()).await.unwrap();
    let mm = m.clone();
    until("tasks placed", || {
        ["web", "api", "other"]
            .iter()
            .all(|s| mm.tasks_of(s).iter().any(|t| t.task.node.is_some()))
    })
    .await;
    let task_of = |s: &str| m.tasks_of(s)[0].task.id.clone();

    // B asks for a task of A's: refused. A CSR for another curve: refused.
    let mut cb = dispatcher_as(&addr, &b).await;
    let (_, csr) = pki::key_and_request().unwrap();
    let e = cb
        .identity(payload(&IdentityRequest {
            task: task_of("web"),
            csr: csr.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // (The ration of task "other" starts with the request below: the refills are counted from
    // here.)
    let t0 = std::time::Instant::now();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let csr384 = rcgen::CertificateParams::default().serialize_request(&p384).unwrap().der().to_vec();
    let e = cb
        .identity(payload(&IdentityRequest {
            task: task_of("other"),
            csr: csr384,
        }))
        .await
        .unwrap_err();
    assert!(e.message().contains("P-256"), "{e}");
    // Its own: an SVID whose only name is the service's SPIFFE ID.
    let (k, csr) = pki::key_and_request().unwrap();
    let r: IdentityReply = serde_json::from_slice(
        &cb.identity(payload(&IdentityRequest {
            task: task_of("other"),
            csr,
        }))
        .await
        .unwrap()
        .get_ref()
        .json,
    )
    .unwrap();
    assert_eq!(r.spiffe_id, "spiffe://c1/ns/default/svc/other");
    // Asking again and again: a burst of five (the P-384 request above counted: it was the
    // caller's fault), then one per quarter lifetime, else refused. Another task's ration is
    // its own.
    let ask = |mut c: bulkhead_cluster::proto::dispatcher_client::DispatcherClient<tonic::transport::Channel>, task: String| async move {
        let (_, csr) = pki::key_and_request().unwrap();
        c.identity(payload(&IdentityRequest { task, csr })).await
    };
    let mut issued = 2;
    let refused = loop {
        match ask(cb.clone(), task_of("other")).await {
            Ok(_) => issued += 1,
            Err(e) => break e,
        }
        assert!(issued < 20, "never refused");
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    // Five, and one more for each refill period (a quarter of the 12 s lifetime) that passed.
    let refills = t0.elapsed().as_secs_f64() / 3.0;
    let refills = refills.ceil() as u64;
    assert!(issued >= 5 && issued <= 5 + refills, "{issued} SVIDs in {:?}", t0.elapsed());
    ask(dispatcher_as(&addr, &a).await, task_of("web")).await.unwrap();
    let chain = tls::certs(&r.chain).unwrap();
    assert_eq!(bulkhead_cluster::pki::uri_names(&chain[0]), std::slice::from_ref(&r.spiffe_id));
    // An SVID presented to a manager is not a node's certificate.
    let svid = tls::Identity::new(&r.chain, &k.serialize_pem()).unwrap();
    let ch = transport::connect(&addr, tls::client_config(&b.ca_pem, Some(svid)).unwrap()).await;
    if let Ok(ch) = ch {
        let e = bulkhead_cluster::proto::dispatcher_client::DispatcherClient::new(ch)
            .session(payload(&bulkhead_cluster::dispatcher::SessionHello::default()))
            .await
            .unwrap_err();
        assert!(
            matches!(e.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated),
            "{e}"
        );
    }

    // A's agent, with the Workload API; its tmpfs mounts go with the test, also when it fails.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            for m in info.lines().filter_map(|l| l.split(' ').nth(4)) {
                if std::path::Path::new(m).starts_with(&self.0) {
                    let _ = std::process::Command::new("umount").args(["-l", m]).status();
                }
            }
        }
    }
    let _unmount = Unmount(dir.path().to_owned());
    let exec = Arc::new(Recorder::default());
    let adir = dir.path().join("agent-a");
    std::fs::create_dir_all(&adir).unwrap();
    let agent = bulkhead_cluster::agent::Agent::new(&a.node_id, &adir, exec.clone());
    let me = tls::Identity::new(&a.cert_pem, &a.key_pem).unwrap();
    let targets = Arc::new(std::sync::RwLock::new(vec![addr.clone()]));
    let run = tokio::spawn(bulkhead_cluster::agent::run(
        agent.clone(),
        tls::client_config(&a.ca_pem, Some(me)).unwrap(),
        targets,
    ));
    let socket = bulkhead_cluster::workload::socket_path(&adir);
    let serve = tokio::spawn(bulkhead_cluster::workload::serve(agent.clone(), socket.clone()));
    let ex = exec.clone();
    until("A's two tasks started", || ex.started.lock().unwrap().len() == 2).await;
    let started = exec.started.lock().unwrap().clone();
    let container_of = |s: &str| started.iter().find(|t| t.0 == s).unwrap().1.clone();
    // The files: the SVID, its key (0400), the bundle.
    let files = started.iter().find(|t| t.0 == "web").unwrap().2.clone().unwrap();
    let pem = std::fs::read_to_string(files.join("svid.pem")).unwrap();
    assert_eq!(
        bulkhead_cluster::pki::uri_names(&tls::certs(&pem).unwrap()[0]),
        ["spiffe://c1/ns/default/svc/web"]
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(files.join("svid_key.pem")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o400);

    let endpoint = format!("unix:{}", socket.display());
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await.unwrap();
    // No task: nothing.
    let e = client.fetch_x509_svid().await.unwrap_err();
    assert!(e.to_string().contains("no identity"), "{e}");
    drop(client);
    // A caller holds at most 8 connections: past them, each is closed at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hog: Vec<std::os::unix::net::UnixStream> = (0..12).map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ninth = match spiffe::WorkloadApiClient::connect_to(&endpoint).await {
        Ok(c) => c.fetch_x509_svid().await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(ninth.as_ref().is_err_and(|e| !e.contains("no identity")), "{ninth:?}");
    drop(hog);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // web's caller: web's SVID, which verifies against the bundle.
    *exec.caller.lock().unwrap() = Some(container_of("web"));
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await.unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://c1/ns/default/svc/web");
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("c1").unwrap();
    let bundle = bundles.get(&td).expect("the trust domain's bundle");
    let mut roots = rustls::RootCertStore::empty();
    for c in bundle.authorities() {
        roots.add(rustls::pki_types::CertificateDer::from(c.as_bytes().to_vec())).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap();
    let chain: Vec<rustls::pki_types::CertificateDer> = svid
        .cert_chain()
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    verifier
        .verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now())
        .expect("the SVID verifies against the bundle");
    // The bundle is the workload CA's, not the cluster root: a node's certificate is no peer.
    assert!(bundle.authorities().iter().all(|c| c.as_bytes() != formed.ca.cert_der()));
    let node_cert = tls::certs(&a.cert_pem).unwrap();
    assert!(verifier
        .verify_client_cert(&node_cert[0], &node_cert[1..], rustls::pki_types::UnixTime::now())
        .is_err());
    // api's caller: api's, never web's.
    *exec.caller.lock().unwrap() = Some(container_of("api"));
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await.unwrap();
    assert_eq!(
        client.fetch_x509_svid().await.unwrap().spiffe_id().to_string(),
        "spiffe://c1/ns/default/svc/api"
    );
    // Renewed at half its life (12 s): the stream brings a new SVID, and the file changes.
    use futures_util::StreamExt;
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let second = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("a renewed SVID within 15 s")
        .unwrap()
        .unwrap();
    assert_ne!(first.leaf().as_bytes(), second.leaf().as_bytes());
    assert_eq!(second.spiffe_id().to_string(), "spiffe://c1/ns/default/svc/api");
    let f = files.clone();
    until("web's file renewed too", || {
        std::fs::read_to_string(f.join("svid.pem")).unwrap() != pem
    })
    .await;

    // web removed: its identity goes, from memory and from the node.
    m.remove_service("web").await.unwrap();
    let f = files.clone();
    until("web's identity files gone", || !f.join("svid.pem").exists()).await;
    *exec.caller.lock().unwrap() = Some(container_of("web"));
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await.unwrap();
    assert!(client.fetch_x509_svid().await.is_err());
    run.abort();
    serve.abort();
}

/// A node's reported resources bound what is reserved on it: a task that reserves more memory
/// than the node has waits pending; one that fits runs there; nothing else is placed past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_are_judged_against_what_a_node_reports() {
    use bulkhead_cluster::dispatcher::SessionHello;
    use bulkhead_cluster::orchestrator::{Constraint, Mode, ServiceSpec};
    use bulkhead_cluster::services::TaskTemplate;
    let dir = tempfile::tempdir().unwrap();
    let formed = form(dir.path(), 1).await;
    let m = formed.managers[0].manager.clone();
    let addr = formed.managers[0].addr.clone();
    let a = manager::join_cluster(&addr, &formed.worker_token.text()).await.unwrap();
    let mut ca = dispatcher_as(&addr, &a).await;
    let hello = SessionHello {
        node: None,
        hostname: "small".into(),
        resources: Some((1 << 30, 2000)),
    };
    let _session = ca.session(payload(&hello)).await.unwrap().into_inner();
    let mm = m.clone();
    let id = a.node_id.clone();
    until("the node's resources recorded", || {
        mm.nodes().iter().any(|n| n.id == id && n.resources == Some((1 << 30, 2000)))
    })
    .await;
    // Absurd figures are not recorded.
    let mut cb = dispatcher_as(&addr, &a).await;
    let absurd = SessionHello {
        resources: Some((u64::MAX, u64::MAX)),
        ..hello.clone()
    };
    let _other = cb.session(payload(&absurd)).await.unwrap().into_inner();
    let spec = |name: &str, replicas, memory: u64| ServiceSpec {
        name: name.into(),
        mode: Mode::Replicated { replicas },
        constraints: vec![Constraint::parse(&format!("node.id=={}", a.node_id)).unwrap()],
        reserve_memory: memory,
        reserve_cpu: 0,
        task: TaskTemplate {
            image: "x".into(),
            ..Default::default()
        },
        restart: Default::default(),
        update: Default::default(),
    };
    m.create_service(spec("big", 1, 2 << 30), now()).await.unwrap();
    m.create_service(spec("fits", 3, 300 << 20), now()).await.unwrap();
    let mm = m.clone();
    until("what fits placed", || {
        mm.tasks_of("fits").iter().filter(|t| t.task.node.is_some()).count() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        m.tasks_of("big").iter().all(|t| t.task.node.is_none()),
        "placed past the node's memory"
    );
    assert!(m.nodes().iter().any(|n| n.id == a.node_id && n.resources == Some((1 << 30, 2000))));
    // A fourth that fits alone does not fit beside the three (900 MiB of 1 GiB reserved).
    m.scale_service("fits", 4, now()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(m.tasks_of("fits").iter().filter(|t| t.task.node.is_some()).count(), 3);
}

/// A node holds at most two sessions: a third ends the oldest (a reconnect is never locked
/// out, and a node cannot multiply the leader's work); both live ones hear every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_session_of_a_node_ends_its_oldest_and_the_others_hear_every_change() {
    use bulkhead_cluster::dispatcher::{Assignments, SessionHello};
    use bulkhead_cluster::orchestrator::{Constraint, Mode, ServiceSpec};
    use bulkhead_cluster::services::TaskTemplate;
    let dir = tempfile::tempdir().unwrap();
    let formed = form(dir.path(), 1).await;
    let m = formed.managers[0].manager.clone();
    let addr = formed.managers[0].addr.clone();
    let a = manager::join_cluster(&addr, &formed.worker_token.text()).await.unwrap();
    let mut c = dispatcher_as(&addr, &a).await;
    let hello = payload(&SessionHello::default());
    let mut s1 = c.session(hello.clone()).await.unwrap().into_inner();
    s1.message().await.unwrap().unwrap();
    let mut s2 = c.session(hello.clone()).await.unwrap().into_inner();
    s2.message().await.unwrap().unwrap();
    let mut s3 = c.session(hello).await.unwrap().into_inner();
    s3.message().await.unwrap().unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), s1.message())
        .await
        .expect("the oldest session ends")
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    m.create_service(
        ServiceSpec {
            name: "web".into(),
            mode: Mode::Replicated { replicas: 1 },
            constraints: vec![Constraint::parse(&format!("node.id=={}", a.node_id)).unwrap()],
            reserve_memory: 0,
            reserve_cpu: 0,
            task: TaskTemplate {
                image: "x".into(),
                ..Default::default()
            },
            restart: Default::default(),
            update: Default::default(),
        },
        now(),
    )
    .await
    .unwrap();
    for s in [&mut s2, &mut s3] {
        let got: Assignments = serde_json::from_slice(
            &tokio::time::timeout(Duration::from_secs(3), s.message())
                .await
                .expect("woken by the change, before a heartbeat")
                .unwrap()
                .unwrap()
                .json,
        )
        .unwrap();
        assert_eq!(got.tasks.len(), 1);
    }
}

/// `service logs` over the dispatcher: a node is asked only for its own tasks' logs, may send
/// only lines of those, under a request that asked it; the lines reach the subscriber with the
/// node that sent them; the request ends when every node is done, and a node stops hearing of
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_streams_only_the_logs_it_was_asked_for() {
    use bulkhead_cluster::dispatcher::{Assignments, SessionHello};
    use bulkhead_cluster::logs::{LogHeader, LogLine};
    use bulkhead_cluster::orchestrator::{Constraint, Mode, ServiceSpec};
    use bulkhead_cluster::services::TaskTemplate;
    let dir = tempfile::tempdir().unwrap();
    let formed = form(dir.path(), 1).await;
    let m = formed.managers[0].manager.clone();
    let hub = formed.managers[0].hub.clone();
    let addr = formed.managers[0].addr.clone();
    let a = manager::join_cluster(&addr, &formed.worker_token.text()).await.unwrap();
    let b = manager::join_cluster(&addr, &formed.worker_token.text()).await.unwrap();
    let spec = ServiceSpec {
        name: "web".into(),
        mode: Mode::Replicated { replicas: 2 },
        constraints: vec![Constraint::parse("node.role==worker").unwrap()],
        reserve_memory: 0,
        reserve_cpu: 0,
        task: TaskTemplate {
            image: "x".into(),
            ..Default::default()
        },
        restart: Default::default(),
        update: Default::default(),
    };
    m.create_service(spec, now()).await.unwrap();
    let mm = m.clone();
    until("two tasks placed", || {
        mm.tasks_of("web").iter().filter(|t| t.task.node.is_some()).count() == 2
    })
    .await;
    let web = m.tasks_of("web");
    let of = |n: &str| web.iter().find(|t| t.task.node.as_deref() == Some(n)).unwrap().task.id.clone();
    let (task_a, task_b) = (of(&a.node_id), of(&b.node_id));
    let mut nodes = std::collections::BTreeMap::new();
    nodes.insert(a.node_id.clone(), [task_a.clone()].into_iter().collect());
    nodes.insert(b.node_id.clone(), [task_b.clone()].into_iter().collect());
    let (mut rx, guard) = hub.open_logs(nodes, false, Some(10)).unwrap();

    // A hears of the request, for its own task only.
    let mut ca = dispatcher_as(&addr, &a).await;
    let mut sa = ca.session(payload(&SessionHello::default())).await.unwrap().into_inner();
    let first: Assignments = serde_json::from_slice(&sa.message().await.unwrap().unwrap().json).unwrap();
    assert_eq!(first.logs.len(), 1, "{:?}", first.logs);
    let req = first.logs[0].clone();
    assert_eq!(req.tasks, vec![task_a.clone()]);
    assert_eq!(req.tail, Some(10));
    let line = |task: &str, text: &str| LogLine {
        task: task.into(),
        stream: "stdout".into(),
        line: text.into(),
        time: String::new(),
        node: "forged".into(),
    };
    let stream = |msgs: Vec<bulkhead_cluster::proto::Payload>| tokio_stream::iter(msgs);
    // B's task under A's name, another request's id: refused, and nothing arrives.
    let e = ca
        .logs(stream(vec![
            payload(&LogHeader { id: req.id }),
            payload(&vec![line(&task_b, "B's secret")]),
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let e = ca
        .logs(stream(vec![
            payload(&LogHeader { id: req.id ^ 1 }),
            payload(&vec![line(&task_a, "x")]),
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(rx.try_recv().is_err());
    // A message too large is refused before it is read as lines.
    let e = ca
        .logs(stream(vec![
            payload(&LogHeader { id: req.id }),
            bulkhead_cluster::proto::Payload {
                json: vec![b' '; bulkhead_cluster::logs::MAX_MESSAGE + 1],
            },
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // Its own task's lines arrive, with the node that sent them (not the one it claims), and
    // with what would drive a terminal or forge a line written out. A call without the empty
    // batch at its end is not the node's last.
    ca.logs(stream(vec![
        payload(&LogHeader { id: req.id }),
        payload(&vec![line(&task_a, "hello \x1b[2Jfrom a\nweb.1.x@h | forged\n")]),
    ]))
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(
        (got.task.as_str(), got.line.as_str(), got.node.as_str()),
        (task_a.as_str(), "hello \\x1b[2Jfrom a\\x0aweb.1.x@h | forged\n", a.node_id.as_str())
    );
    ca.logs(stream(vec![payload(&LogHeader { id: req.id }), payload(&Vec::<LogLine>::new())]))
        .await
        .unwrap();
    // Done: A may not send more under it.
    let e = ca
        .logs(stream(vec![
            payload(&LogHeader { id: req.id }),
            payload(&vec![line(&task_a, "late")]),
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    // B is done (nothing to say): every node is, and the subscriber's stream ends.
    let mut cb = dispatcher_as(&addr, &b).await;
    cb.logs(stream(vec![payload(&LogHeader { id: req.id }), payload(&Vec::<LogLine>::new())]))
        .await
        .unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().is_none());
    drop(guard);
    // A stops hearing of it.
    let mut none = false;
    for _ in 0..20 {
        let Ok(Ok(Some(p))) = tokio::time::timeout(Duration::from_secs(3), sa.message()).await else {
            break;
        };
        let next: Assignments = serde_json::from_slice(&p.json).unwrap();
        if next.logs.is_empty() {
            none = true;
            break;
        }
    }
    assert!(none, "the request is still sent to A");
}
