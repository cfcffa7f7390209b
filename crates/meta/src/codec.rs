//! The binary codec of the Raft log, the raft state and the Raft RPCs.
//!
//! bincode 1 with its default (fixed-width, little-endian) encoding, behind
//! two functions so that the codec is chosen in one place. Decoding is
//! bounded so that a hostile length prefix cannot make us allocate wildly.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The RPC codec version carried in `RaftMessage.codec_version`.
pub const RPC_CODEC_VERSION: u32 = 1;

/// Upper bound for one decoded value: a snapshot chunk or a batch of entries.
const DECODE_LIMIT: u64 = 1 << 30;

fn opts() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().allow_trailing_bytes().with_limit(DECODE_LIMIT)
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::DefaultOptions::new().with_fixint_encoding().serialize(v).map_err(|e| e.to_string())
}

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    opts().deserialize(bytes).map_err(|e| format!("decode {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::types::{Entry, TypeConfig};
    use coffer_types::{NodeId, NodeRecord, SiteId};
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use proptest::prelude::*;

    fn entry(i: u64) -> Entry {
        let node = NodeRecord {
            id: NodeId(i + 1),
            site: SiteId::new("site-a").unwrap(),
            addr: format!("127.0.0.1:{i}"),
            capacity_bytes: i,
            used_bytes: 0,
            last_heartbeat_ms: i,
        };
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
            payload: openraft::EntryPayload::Normal(Command::RegisterNode { node }),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn entries_round_trip_and_truncations_fail(i in 0u64..1000, cut in 0usize..200) {
            let e = entry(i);
            let bytes = encode(&e).unwrap();
            let back: Entry = decode("entry", &bytes).unwrap();
            prop_assert_eq!(back, e);
            if cut < bytes.len() {
                prop_assert!(decode::<Entry>("entry", &bytes[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Entry>("entry", &bytes);
            let _ = decode::<AppendEntriesRequest<TypeConfig>>("append", &bytes);
            let _ = decode::<VoteRequest<u64>>("vote", &bytes);
            let _ = decode::<Command>("command", &bytes);
        }
    }

    #[test]
    fn a_hostile_length_prefix_is_refused_without_allocating() {
        // A vector length of 2^60 elements must fail on the limit, not OOM.
        let mut bytes = vec![0u8; 16];
        bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Vec<u64>>("vec", &bytes).is_err());
    }
}
