//! What managers read from each other and from the CLI: Raft's messages (codec.rs's encoding
//! or JSON, in gRPC payloads), snapshots' maps, store requests (forwarded writes), control
//! socket requests, and backup files (`cluster restore`, a recovery's seed); the dispatcher's
//! messages both ways (a session's hello, a node's report, the assignments an agent receives, a
//! task's identity asked and given, its certificate request signed, its log stream), service
//! specs and stacks with their checks. Never a panic.
#![no_main]
use bulkhead_cluster::node::ControlRequest;
use bulkhead_cluster::store::{Request, TypeConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Raft's messages and forwarded writes: the managers' encoding (codec.rs), or JSON.
    use bulkhead_cluster::codec::decode;
    let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(data);
    let _ = decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(data);
    let _ = decode::<openraft::raft::VoteRequest<u64>>(data);
    let _ = decode::<Request>(data);
    let _ = decode::<std::collections::BTreeMap<String, serde_bytes::ByteBuf>>(data);
    if let Ok(ControlRequest::ServiceCreate { spec } | ControlRequest::ServiceUpdate { spec }) =
        serde_json::from_slice::<ControlRequest>(data)
    {
        let _ = bulkhead_cluster::services::validate(&spec);
    }
    let _ = serde_json::from_slice::<bulkhead_cluster::dispatcher::SessionHello>(data);
    let _ = serde_json::from_slice::<bulkhead_cluster::dispatcher::Report>(data);
    if let Ok(a) = serde_json::from_slice::<bulkhead_cluster::dispatcher::Assignments>(data) {
        for s in &a.stacks {
            let _ = s.validate();
        }
    }
    if let Ok(ControlRequest::StackDeploy { stack, services, .. }) = serde_json::from_slice::<ControlRequest>(data) {
        let _ = stack.validate().and_then(|()| stack.check_services(&services));
    }
    let _ = serde_json::from_slice::<bulkhead_cluster::identity::IdentityReply>(data);
    // A node's log stream: its header, then batches of lines.
    let _ = serde_json::from_slice::<bulkhead_cluster::logs::LogHeader>(data);
    let _ = serde_json::from_slice::<Vec<bulkhead_cluster::logs::LogLine>>(data);
    // A node's request for a task's identity: its CSR goes to the workload CA.
    if let Ok(req) = serde_json::from_slice::<bulkhead_cluster::identity::IdentityRequest>(data) {
        static CA: std::sync::OnceLock<bulkhead_cluster::pki::Ca> = std::sync::OnceLock::new();
        let ca = CA.get_or_init(|| {
            let root = bulkhead_cluster::pki::Ca::create("c", 1_700_000_000, 10).unwrap();
            root.workload_ca("c", 1_700_000_000).unwrap().0
        });
        let _ = ca.issue_svid(&req.csr, "spiffe://c/ns/default/svc/x", 1_700_000_000, 60);
    }
    static KEY: std::sync::OnceLock<bulkhead_cluster::crypt::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| bulkhead_cluster::crypt::Key::generate().unwrap());
    let _ = bulkhead_cluster::recovery::open(data, key);
});
