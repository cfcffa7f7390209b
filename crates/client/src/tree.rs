//! Trees: the directory listings of a snapshot, and their on-wire format.
//!
//! A tree is a list of nodes sorted by name. It is serialised as one format
//! version byte followed by a bincode 1 encoding of the nodes, and stored as
//! an encrypted blob exactly like a chunk, under the id
//! `RepoKey::chunk_id(serialised bytes)`. Because the nodes are sorted and the
//! encoding is fixed, an unchanged directory serialises to the same bytes and
//! so dedups against the parent snapshot's tree.
//!
//! The invariant kept here: a decoded tree is safe to restore. Decoding
//! bounds every allocation, rejects unknown versions and trailing bytes, and
//! checks that names are single path components (non-empty, no `/`, no NUL,
//! not `.` or `..`) that are strictly increasing, so a tree can never direct
//! a restore outside its target or write one path twice.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use bincode::Options;
use coffer_types::ChunkId;
use serde::{Deserialize, Serialize};

use crate::ClientError;

/// The first byte of every serialised tree.
/// Version 2 added the plaintext length of every chunk of a file, so that a
/// restore knows where each chunk goes before it has read the ones before it.
pub const TREE_FORMAT_VERSION: u8 = 2;

/// The largest tree this build decodes. A directory with about a million
/// entries fits; anything larger is refused rather than allocated.
pub const MAX_TREE_BYTES: u64 = 256 << 20;

/// A point in time as the filesystem reports it: seconds since the Unix epoch
/// (negative before it) and nanoseconds within the second.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    /// From the `(seconds, nanoseconds)` pair of `MetadataExt`; an
    /// out-of-range nanosecond field (never seen from a sane kernel) is
    /// clamped rather than trusted.
    pub fn from_parts(secs: i64, nanos: i64) -> Self {
        Timestamp { secs, nanos: nanos.clamp(0, 999_999_999) as u32 }
    }

    pub fn now() -> Self {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(_) => Timestamp::default(),
        }
    }

    pub fn to_filetime(self) -> filetime::FileTime {
        filetime::FileTime::from_unix_time(self.secs, self.nanos.min(999_999_999))
    }
}

/// What a node is, with what only that kind carries.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum NodeKind {
    /// A regular file: its chunks in file order, and the plaintext length of
    /// each (`lens[i]` is the length of `content[i]`; they sum to the node's
    /// size, which decoding checks).
    File { content: Vec<ChunkId>, lens: Vec<u32> },
    /// A directory: the id of its own tree.
    Dir { subtree: ChunkId },
    /// A symbolic link: its target as raw bytes, never followed.
    Symlink { target: Vec<u8> },
}

/// One directory entry with its metadata. `inode`, `dev` and `ctime` are kept
/// only for change detection by the next incremental backup.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct Node {
    /// The entry's name as raw bytes (Unix names need not be UTF-8).
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// Permission bits and file type bits as `st_mode` reports them.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// Plaintext length for files; zero for directories and symlinks.
    pub size: u64,
    pub inode: u64,
    pub dev: u64,
    pub ctime: Timestamp,
}

impl Node {
    pub fn name_os(&self) -> &OsStr {
        OsStr::from_bytes(&self.name)
    }

    /// The name for messages: lossy where it is not UTF-8.
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// The permission bits (`chmod` form), without the file type.
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// A directory listing: nodes sorted by name, names unique.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug, Default)]
pub struct Tree {
    nodes: Vec<Node>,
}

/// bincode 1 with a fixed configuration. Changing any option changes the
/// format, so it lives in one place and is covered by the golden test below.
fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_TREE_BYTES)
        .reject_trailing_bytes()
}

/// Checks that `name` is one path component that a restore may create.
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty name")
    } else if name == b"." || name == b".." {
        Err("name is . or ..")
    } else if name.contains(&b'/') {
        Err("name contains '/'")
    } else if name.contains(&0) {
        Err("name contains NUL")
    } else {
        Ok(())
    }
}

/// Checks a file's chunk lengths against its chunk list and its size.
fn check_lens(content: &[ChunkId], lens: &[u32], size: u64) -> Result<(), String> {
    if content.len() != lens.len() {
        return Err(format!("{} chunks but {} lengths", content.len(), lens.len()));
    }
    if let Some(bad) = lens.iter().find(|&&l| l == 0 || l as usize > coffer_pack::MAX_CHUNK_LEN) {
        return Err(format!("a chunk length of {bad} bytes"));
    }
    let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
    if total != size {
        return Err(format!("chunk lengths sum to {total} bytes, the size is {size}"));
    }
    Ok(())
}

impl Tree {
    /// Builds a tree from nodes in any order. Two nodes with one name, or a
    /// name that is not a single path component, is an error.
    pub fn new(mut nodes: Vec<Node>) -> Result<Tree, ClientError> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let tree = Tree { nodes };
        tree.validate()?;
        Ok(tree)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn into_nodes(self) -> Vec<Node> {
        self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node named `name`, by binary search (nodes are sorted).
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().and_then(|i| self.nodes.get(i))
    }

    fn validate(&self) -> Result<(), ClientError> {
        for (i, node) in self.nodes.iter().enumerate() {
            check_name(&node.name)
                .map_err(|why| ClientError::bad_tree(None, format!("entry {:?}: {why}", node.name_lossy())))?;
            if let NodeKind::File { content, lens } = &node.kind {
                check_lens(content, lens, node.size)
                    .map_err(|why| ClientError::bad_tree(None, format!("entry {:?}: {why}", node.name_lossy())))?;
            }
            if i > 0 && self.nodes[i - 1].name >= node.name {
                return Err(ClientError::bad_tree(
                    None,
                    format!("entry {:?} is duplicated or out of order", node.name_lossy()),
                ));
            }
        }
        Ok(())
    }

    /// The serialised form: the version byte, then the nodes.
    pub fn encode(&self) -> Result<Vec<u8>, ClientError> {
        let mut out = vec![TREE_FORMAT_VERSION];
        codec()
            .serialize_into(&mut out, self)
            .map_err(|e| ClientError::bad_tree(None, format!("cannot serialise: {e}")))?;
        Ok(out)
    }

    /// Parses and validates a serialised tree. Never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Tree, ClientError> {
        let (&version, body) = bytes.split_first().ok_or_else(|| ClientError::bad_tree(None, "empty"))?;
        if version != TREE_FORMAT_VERSION {
            return Err(ClientError::bad_tree(None, format!("unsupported format version {version}")));
        }
        let tree: Tree = codec().deserialize(body).map_err(|e| ClientError::bad_tree(None, e.to_string()))?;
        tree.validate()?;
        Ok(tree)
    }

    /// Every chunk id this tree references directly: file contents and
    /// subtrees (not the subtrees' own contents).
    pub fn referenced_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.nodes.iter().flat_map(|n| match &n.kind {
            NodeKind::File { content, .. } => content.as_slice(),
            NodeKind::Dir { subtree } => std::slice::from_ref(subtree),
            NodeKind::Symlink { .. } => &[],
        })
    }
}

/// The entry point of the `tree` fuzz target in `fuzz/` and of the replay
/// of its corpus in `make test` (`tests/corpus.rs`): `Tree::decode` on
/// arbitrary bytes, which must never panic, and whatever it accepts must
/// encode back to the same bytes.
pub fn fuzz_decode(data: &[u8]) {
    if let Ok(tree) = Tree::decode(data) {
        let again = tree.encode().unwrap_or_else(|e| panic!("a decoded tree does not encode: {e}"));
        assert_eq!(again, data, "a decoded tree re-encodes to its bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, kind: NodeKind) -> Node {
        Node {
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o100644,
            uid: 1000,
            gid: 1000,
            mtime: Timestamp { secs: 1_700_000_000, nanos: 123 },
            size: 42,
            inode: 7,
            dev: 3,
            ctime: Timestamp { secs: 1_700_000_001, nanos: 456 },
        }
    }

    fn empty_file() -> NodeKind {
        NodeKind::File { content: vec![], lens: vec![] }
    }

    fn sample() -> Tree {
        Tree::new(vec![
            node("zeta", NodeKind::Symlink { target: b"../nowhere".to_vec() }),
            node("alpha", NodeKind::File { content: vec![ChunkId([1; 32]), ChunkId([2; 32])], lens: vec![40, 2] }),
            node("mid", NodeKind::Dir { subtree: ChunkId([9; 32]) }),
            Node { name: vec![0xff, 0xfe, b'x'], size: 0, ..node("", empty_file()) },
        ])
        .unwrap()
    }

    #[test]
    fn round_trip_and_sorted() {
        let tree = sample();
        let names: Vec<&[u8]> = tree.nodes().iter().map(|n| n.name.as_slice()).collect();
        assert_eq!(names, vec![&b"alpha"[..], b"mid", b"zeta", &[0xff, 0xfe, b'x']]);
        let bytes = tree.encode().unwrap();
        assert_eq!(bytes[0], TREE_FORMAT_VERSION);
        assert_eq!(Tree::decode(&bytes).unwrap(), tree);
        assert_eq!(tree.get(b"mid").map(|n| n.size), Some(42));
        assert!(tree.get(b"nope").is_none());
        assert_eq!(tree.referenced_ids().count(), 3);
    }

    #[test]
    fn encoding_is_deterministic_whatever_the_input_order() {
        let a = sample();
        let mut nodes = a.clone().into_nodes();
        nodes.reverse();
        let b = Tree::new(nodes).unwrap();
        assert_eq!(a.encode().unwrap(), b.encode().unwrap());
    }

    #[test]
    fn golden_bytes_of_a_tiny_tree() {
        // Pins the format: if this changes, old snapshots no longer decode.
        let tree = Tree::new(vec![Node {
            name: b"a".to_vec(),
            kind: NodeKind::Symlink { target: b"b".to_vec() },
            mode: 1,
            uid: 2,
            gid: 3,
            mtime: Timestamp { secs: 4, nanos: 5 },
            size: 6,
            inode: 7,
            dev: 8,
            ctime: Timestamp { secs: 9, nanos: 10 },
        }])
        .unwrap();
        let bytes = tree.encode().unwrap();
        let mut want = vec![2u8];
        want.extend(1u64.to_le_bytes()); // node count
        want.extend(1u64.to_le_bytes()); // name length
        want.push(b'a');
        want.extend(2u32.to_le_bytes()); // variant Symlink
        want.extend(1u64.to_le_bytes());
        want.push(b'b');
        want.extend(1u32.to_le_bytes());
        want.extend(2u32.to_le_bytes());
        want.extend(3u32.to_le_bytes());
        want.extend(4i64.to_le_bytes());
        want.extend(5u32.to_le_bytes());
        want.extend(6u64.to_le_bytes());
        want.extend(7u64.to_le_bytes());
        want.extend(8u64.to_le_bytes());
        want.extend(9i64.to_le_bytes());
        want.extend(10u32.to_le_bytes());
        assert_eq!(bytes, want);

        let file = Node {
            kind: NodeKind::File { content: vec![ChunkId([0xab; 32])], lens: vec![6] },
            ..tree.nodes()[0].clone()
        };
        let bytes = Tree::new(vec![file]).unwrap().encode().unwrap();
        let mut want = vec![2u8];
        want.extend(1u64.to_le_bytes()); // node count
        want.extend(1u64.to_le_bytes()); // name length
        want.push(b'a');
        want.extend(0u32.to_le_bytes()); // variant File
        want.extend(1u64.to_le_bytes()); // chunk count
        want.extend([0xab; 32]);
        want.extend(1u64.to_le_bytes()); // length count
        want.extend(6u32.to_le_bytes());
        assert_eq!(&bytes[..want.len()], want.as_slice());
    }

    #[test]
    fn chunk_lengths_must_match_the_chunks_and_the_size() {
        let ok = node("f", NodeKind::File { content: vec![ChunkId([1; 32]), ChunkId([2; 32])], lens: vec![40, 2] });
        assert!(Tree::new(vec![ok.clone()]).is_ok());
        let cases = [
            (vec![40], 42),    // one length missing
            (vec![40, 1], 42), // lengths do not sum to the size
            (vec![42, 0], 42), // an empty chunk
            (vec![40, 2], 43), // size disagrees
            (vec![u32::MAX, 2], u64::from(u32::MAX) + 2),
        ];
        for (lens, size) in cases {
            let bad = Node {
                kind: NodeKind::File { content: vec![ChunkId([1; 32]), ChunkId([2; 32])], lens },
                size,
                ..ok.clone()
            };
            // Through the constructor and, bypassing it, on the wire.
            assert!(Tree::new(vec![bad.clone()]).is_err(), "{bad:?}");
            let bytes = Tree { nodes: vec![bad] }.encode().unwrap();
            assert!(matches!(Tree::decode(&bytes), Err(ClientError::BadTree { .. })));
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", ".", "..", "a/b"] {
            assert!(Tree::new(vec![node(bad, NodeKind::Dir { subtree: ChunkId([0; 32]) })]).is_err(), "{bad:?}");
        }
        let nul = Node { name: b"a\0b".to_vec(), ..node("x", NodeKind::Symlink { target: vec![] }) };
        assert!(Tree::new(vec![nul]).is_err());
        let dup =
            vec![node("x", NodeKind::Symlink { target: vec![] }), node("x", NodeKind::Symlink { target: vec![] })];
        assert!(Tree::new(dup).is_err());
    }

    #[test]
    fn unsorted_or_hostile_names_on_the_wire_are_refused() {
        // Serialise nodes in the wrong order, bypassing `Tree::new`.
        let tree = Tree {
            nodes: vec![Node { size: 0, ..node("b", empty_file()) }, Node { size: 0, ..node("a", empty_file()) }],
        };
        let bytes = tree.encode().unwrap();
        assert!(matches!(Tree::decode(&bytes), Err(ClientError::BadTree { .. })));
        let traversal = Tree { nodes: vec![node("..", NodeKind::Dir { subtree: ChunkId([0; 32]) })] };
        assert!(Tree::decode(&traversal.encode().unwrap()).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = sample().encode().unwrap();
        assert!(Tree::decode(&[]).is_err());
        assert!(Tree::decode(&[2]).is_err());
        let mut other_version = good.clone();
        other_version[0] = 9;
        assert!(Tree::decode(&other_version).is_err());
        for cut in 1..good.len() {
            assert!(Tree::decode(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Tree::decode(&trailing).is_err());
        // A length prefix claiming an enormous vector must not allocate it.
        let mut huge = vec![TREE_FORMAT_VERSION];
        huge.extend(u64::MAX.to_le_bytes());
        assert!(Tree::decode(&huge).is_err());
        // Flip every byte in turn: any outcome but a panic is acceptable,
        // and whatever decodes must still be a valid tree.
        for i in 1..good.len() {
            let mut bent = good.clone();
            bent[i] ^= 0x5a;
            if let Ok(t) = Tree::decode(&bent) {
                assert!(t.validate().is_ok());
            }
        }
        // Pseudo-random garbage from a fixed seed.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..512 {
            let mut buf = vec![TREE_FORMAT_VERSION];
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.push(state as u8);
            }
            let _ = Tree::decode(&buf);
        }
    }
}
