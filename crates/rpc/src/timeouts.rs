//! Every deadline of the cluster's gRPC traffic, in one table.
//!
//! A call without a deadline can wait for ever on a peer that accepts TCP
//! connections but never answers (a stopped process, a hung host); each
//! entry here bounds one kind of call so that the caller can route around
//! such a peer instead (fail over, re-place, reconstruct, retry on the next
//! tick).

use std::time::Duration;

/// Establishing a connection to any peer.
pub const CONNECT: Duration = Duration::from_secs(3);
/// Establishing a connection to another Raft member: openraft retries on its
/// own schedule, and a vote must not wait on a dead peer.
pub const RAFT_CONNECT: Duration = Duration::from_millis(500);
/// HTTP/2 keep-alive pings on open streams, and how long one may go
/// unanswered before the connection counts as dead.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One metadata call before it counts as unavailable and goes to the next
/// member.
pub const META_CALL: Duration = Duration::from_secs(5);
/// One metadata call of a storage node's heartbeat loop, retries included:
/// the loop tries again on its next tick anyway.
pub const HEARTBEAT_ROUND: Duration = Duration::from_secs(10);
/// A join of a new metadata node: the leader answers only once the learner
/// has caught up (by log or by snapshot) and has been promoted.
pub const JOIN_CALL: Duration = Duration::from_secs(300);
/// How long the metadata leader waits for the previous membership change
/// to commit before it starts the next one.
pub const MEMBERSHIP_COMMIT: Duration = Duration::from_secs(30);
/// A membership or introspection call of the CLI to one metadata member.
pub const ADMIN_CALL: Duration = Duration::from_secs(2);

/// One shard put, from the first frame to the acknowledgement (which
/// includes the node's fsync).
pub const SHARD_PUT: Duration = Duration::from_secs(120);
/// One shard read by an agent, whole shard or range.
pub const SHARD_GET: Duration = Duration::from_secs(60);
/// One whole-shard read of a rebuild, which may be slowed by the rebuild
/// bandwidth limit.
pub const SHARD_FETCH: Duration = Duration::from_secs(120);
/// Listing or deleting shards on a node.
pub const SHARD_ADMIN: Duration = Duration::from_secs(10);
/// One rebuild on its target node: k whole-shard reads under the rebuild
/// bandwidth limit, reconstruction and an fsync.
pub const REBUILD: Duration = Duration::from_secs(600);

/// A scrub pass of a whole node, started by `coffer scrub`.
pub const SCRUB: Duration = Duration::from_secs(3600);

/// Server side: the longest a metadata call (catalog, maintenance, Raft)
/// may run before the server gives up on it, whatever the caller asked.
pub const SERVER_CALL: Duration = Duration::from_secs(120);
/// Server side: a Raft write (propose, commit, apply) or a read barrier
/// that has not completed within this is answered UNAVAILABLE, so that a
/// request never waits on a stuck quorum for longer. Commands are
/// idempotent, so the caller's retry is safe even if the write lands later.
pub const SERVER_RAFT_WAIT: Duration = Duration::from_secs(30);
/// Server side: the longest a shard put may wait for its client's next
/// frame; a stream left idle longer is dropped with its temporary file.
pub const SERVER_FRAME_IDLE: Duration = Duration::from_secs(30);
