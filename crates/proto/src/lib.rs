//! The wire: code generated from `proto/coffer/v1` and the conversions
//! between its messages and `coffer-types`. Nothing else lives here.
//!
//! Conversions from the wire are fallible (`TryFrom`): every field that
//! arrives from the network is validated into a typed value, and a malformed
//! one becomes a `ProtoError` rather than a panic (invariant 8).

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("coffer.v1");

    /// Every coffer service's encoded file descriptors, which gRPC server
    /// reflection serves (so `grpcurl` can list and call the services).
    pub const DESCRIPTORS: &[u8] = tonic::include_file_descriptor_set!("coffer_descriptors");
}

mod convert;
pub mod fuzzing;

pub use convert::{
    ids_from_bytes, location_from_pb, location_to_pb, node_to_pb, params_from_pb, prices_from_pb, worker_to_pb,
    ProtoError,
};

/// The gRPC metadata key through which a follower names the leader.
pub const LEADER_HINT_KEY: &str = "coffer-leader";

/// The largest message any coffer service takes or sends: a list answer
/// (ListSnapshots, ListShards, ClusterStatus) of a large cluster. Every
/// service has tighter limits below, sized to what its calls carry; this one
/// bounds only the answers that are not paginated.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

pub mod limits;
