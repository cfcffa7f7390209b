//! The decoders a metadata node runs on bytes from its Raft peers and its
//! own log, as entry points for the `cargo fuzz` targets in `fuzz/` and
//! for the replay of their corpora in `make test` (`tests/corpus.rs`):
//! both call exactly this function, so a crash the fuzzer found stays a
//! regression test.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::codec::{decode, encode};
use crate::command::Command;
use crate::impl_state_machine::SnapshotBody;
use crate::types::{Entry, NodeId, TypeConfig};

/// Every payload type of the Raft codec (RPC requests and replies, log
/// entries, the vote, commands, snapshot bodies of format 1, snapshot files) on the same bytes; what
/// decodes must encode and decode to the same value.
pub fn raft_codec(data: &[u8]) {
    if let Ok(e) = decode::<Entry>("entry", data) {
        let again: Entry = decode("entry", &encode(&e).unwrap_or_default()).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(again, e);
    }
    if let Ok(c) = decode::<Command>("command", data) {
        let again: Command = decode("command", &encode(&c).unwrap_or_default()).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(again, c);
    }
    let _ = decode::<AppendEntriesRequest<TypeConfig>>("append", data);
    let _ = decode::<VoteRequest<NodeId>>("vote", data);
    let _ = decode::<InstallSnapshotRequest<TypeConfig>>("install snapshot", data);
    let _ = decode::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>("append reply", data);
    let _ = decode::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>("vote reply", data);
    let _ = decode::<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>(
        "install snapshot reply",
        data,
    );
    let _ = decode::<openraft::Vote<NodeId>>("raft state", data);
    let _ = decode::<SnapshotBody>("snapshot", data);
    let _ = crate::snapshot_file::verify(data);
}
