//! argon2id's working memory, mapped fresh from the kernel.
//!
//! argon2 allocates its blocks itself as 64-byte-aligned zeroed memory, and
//! Rust's system allocator serves an over-aligned zeroed request with an
//! aligned `malloc` followed by a `memset` of the whole region. For the
//! default 64 MiB that is about 16,000 page faults and a pass over the
//! memory on one thread before argon2 starts its lanes: 50-60 ms at the
//! start of every command that unlocks a repository (perf of `coffer
//! backup`, December). Anonymous pages from `mmap` are zero already; the
//! lanes fault them in as they first write them, on every core argon2 uses,
//! and `munmap` gives them back to the kernel, which clears them before
//! anyone else sees them.
//!
//! This is the one place in the crate that needs `unsafe`: a mapping is a
//! raw pointer until it is viewed as the blocks argon2 asks for.

use std::ptr::{null_mut, NonNull};

use argon2::Block;
use rustix::mm::{mmap_anonymous, munmap, MapFlags, ProtFlags};

/// `blocks` argon2 blocks in a private anonymous mapping, unmapped on drop.
pub(crate) struct KdfMemory {
    ptr: NonNull<Block>,
    blocks: usize,
}

impl KdfMemory {
    /// Maps room for `blocks` blocks; `None` if there is nothing to map or
    /// the kernel refuses (the caller then lets argon2 allocate).
    pub(crate) fn new(blocks: usize) -> Option<Self> {
        let len = blocks.checked_mul(size_of::<Block>())?;
        if len == 0 {
            return None;
        }
        // SAFETY: a new private anonymous mapping at an address the kernel
        // chooses: no memory this process uses is touched.
        #[allow(unsafe_code)]
        let p =
            unsafe { mmap_anonymous(null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE) }.ok()?;
        Some(KdfMemory { ptr: NonNull::new(p.cast())?, blocks })
    }

    fn len(&self) -> usize {
        self.blocks * size_of::<Block>()
    }
}

impl AsMut<[Block]> for KdfMemory {
    fn as_mut(&mut self) -> &mut [Block] {
        // SAFETY: the mapping holds exactly `blocks` blocks, is readable and
        // writable, and starts on a page boundary, which satisfies `Block`'s
        // 64-byte alignment. The kernel fills it with zero bytes, and zero
        // bytes are a valid `Block` (an array of integers). It lives until
        // `drop`, belongs to this value alone, and `&mut self` makes the
        // borrow unique.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.blocks)
        }
    }
}

impl Drop for KdfMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made, once; no borrow of
        // it outlives `self`.
        #[allow(unsafe_code)]
        unsafe {
            let _ = munmap(self.ptr.as_ptr().cast(), self.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use argon2::{Algorithm, Argon2, Params, Version};

    use super::*;

    #[test]
    fn mapped_memory_gives_the_same_hash_as_argon2s_own() {
        for (m, t, p) in [(8, 1, 1), (64, 2, 2), (1024, 3, 4)] {
            let params = Params::new(m, t, p, Some(32)).unwrap();
            let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
            let (mut own, mut mapped) = ([0u8; 32], [0u8; 32]);
            argon.hash_password_into(b"password", b"somesalt", &mut own).unwrap();
            let mut mem = KdfMemory::new(params.block_count()).unwrap();
            assert_eq!(mem.as_mut().len(), params.block_count());
            argon.hash_password_into_with_memory(b"password", b"somesalt", &mut mapped, &mut mem).unwrap();
            assert_eq!(own, mapped, "m={m} t={t} p={p}");
        }
    }

    #[test]
    fn nothing_to_map_is_none() {
        assert!(KdfMemory::new(0).is_none());
        assert!(KdfMemory::new(usize::MAX).is_none());
    }
}
