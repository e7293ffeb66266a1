//! What managers read from each other and from the CLI: Raft's messages (JSON in gRPC
//! payloads), store requests (forwarded writes), and control socket requests. Never a panic.
#![no_main]
use bulkhead_cluster::node::ControlRequest;
use bulkhead_cluster::store::{Request, TypeConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<openraft::raft::AppendEntriesRequest<TypeConfig>>(data);
    let _ = serde_json::from_slice::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(data);
    let _ = serde_json::from_slice::<openraft::raft::VoteRequest<u64>>(data);
    let _ = serde_json::from_slice::<Request>(data);
    let _ = serde_json::from_slice::<ControlRequest>(data);
});
