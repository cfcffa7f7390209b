//! Identifiers. Every id is a newtype with a short `Display`, so that a
//! `PackId` can never be passed where a `ChunkId` is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::TypesError;

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            /// Parses the raw bytes of this id, as they travel on the wire.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, TypesError> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| TypesError::BadLength {
                    what: $what,
                    expected: $len,
                    got: bytes.len(),
                })?;
                Ok(Self(arr))
            }

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Debug output is for logs: a prefix is enough to tell ids apart.
                write!(f, "{}({})", stringify!($name), &hex::encode(&self.0[..6]))
            }
        }

        impl FromStr for $name {
            type Err = TypesError;
            fn from_str(s: &str) -> Result<Self, TypesError> {
                let bytes = hex::decode(s).map_err(|_| TypesError::BadHex { what: $what, input: s.to_string() })?;
                Self::from_slice(&bytes)
            }
        }
    };
}

byte_id!(
    /// A keyed BLAKE3 hash of a chunk's plaintext under the repository's id key.
    ChunkId, 32, "chunk id"
);
byte_id!(
    /// A plain BLAKE3 digest (shard bodies, reference lists).
    Hash32, 32, "hash"
);
byte_id!(
    /// A pack: the unit of erasure coding. Drawn at random by the writer.
    PackId, 16, "pack id"
);
byte_id!(
    /// One backup run. Drawn at random by the agent.
    SnapshotId, 16, "snapshot id"
);
byte_id!(
    /// An open backup session (a lease on the catalog for garbage collection).
    SessionId, 16, "session id"
);

byte_id!(
    /// An access token of a repository: the public half of the token
    /// string, by which the catalog finds its record. Drawn by the leader.
    TokenId, 8, "token id"
);

impl TokenId {
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl PackId {
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl SnapshotId {
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The first eight hex digits, the form people type.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl SessionId {
    pub fn random() -> Self {
        Self(rand::random())
    }
}

/// A storage node, stable across restarts (kept in its data directory).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct NodeId(pub u64);

impl NodeId {
    /// No node: the placement of a shard that a short pack has not written
    /// yet (see `ShardRecord::is_placed`). Storage nodes never register as 0.
    pub const UNPLACED: NodeId = NodeId(0);

    pub fn random() -> Self {
        // Zero is reserved to mean "no node" on the wire.
        Self(rand::random::<u64>().max(1))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:08x})", self.0 >> 32)
    }
}

impl FromStr for NodeId {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, TypesError> {
        u64::from_str_radix(s, 16).map(NodeId).map_err(|_| TypesError::BadHex { what: "node id", input: s.to_string() })
    }
}

/// A metadata (Raft) node. Chosen by the operator (`coffer meta --id N`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default, Debug)]
pub struct MetaId(pub u64);

impl fmt::Display for MetaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The index of a shard within its pack: `0..k` data, `k..k+m` parity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default, Debug)]
pub struct ShardIndex(pub u8);

impl fmt::Display for ShardIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A failure domain: a zone, a data centre, a region.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct SiteId(String);

impl SiteId {
    pub fn new(name: impl Into<String>) -> Result<Self, TypesError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > 64 {
            Some("longer than 64 bytes")
        } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
            Some("only letters, digits, '-', '_' and '.' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(TypesError::BadSiteName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A repository: a tenant's namespace, such as `orders-db`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct RepoName(String);

impl RepoName {
    pub fn new(name: impl Into<String>) -> Result<Self, TypesError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > 128 {
            Some("longer than 128 bytes")
        } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
            Some("only letters, digits, '-', '_' and '.' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(TypesError::BadRepoName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex() {
        let id = PackId::random();
        assert_eq!(id.to_string().parse::<PackId>().unwrap(), id);
        let node = NodeId::random();
        assert_eq!(node.to_string().parse::<NodeId>().unwrap(), node);
    }

    #[test]
    fn bad_ids_are_errors() {
        assert!(matches!(PackId::from_slice(&[1, 2, 3]), Err(TypesError::BadLength { got: 3, .. })));
        assert!("zz".parse::<ChunkId>().is_err());
        assert!(RepoName::new("a/b").is_err());
        assert!(RepoName::new("").is_err());
        assert!(SiteId::new("eu-west-1a").is_ok());
    }
}
