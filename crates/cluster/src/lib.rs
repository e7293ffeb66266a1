//! # bulkhead-cluster
//!
//! The cluster's foundations (issue 15, first slice):
//! - [`crypt`]: encryption at rest (XChaCha20-Poly1305), the data key and the unlock key;
//! - [`store`]: the Raft log and state machine (openraft 0.9.25, storage-v2) on redb, every
//!   record sealed;
//! - [`pki`]: the root CA, node certificates built from the CA's own parameters, join tokens
//!   that pin the CA.
//!
//! The transport (gRPC over mutual TLS), the node process and the commands come next; see
//! docs/cluster.md.

pub mod agent;
pub mod codec;
pub mod crypt;
pub mod dispatcher;
pub mod identity;
pub mod logs;
pub mod manager;
pub mod node;
pub mod orchestrator;
pub mod pki;
pub mod records;
pub mod recovery;
pub mod secrets;
pub mod services;
pub mod stacks;
pub mod store;
pub mod taskindex;
pub mod tls;
pub mod transport;
pub mod workload;

/// The generated gRPC services (proto/cluster.proto).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("bulkhead.cluster.v1");
}
