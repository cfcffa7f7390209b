//! glibc malloc settings for coffer's buffer sizes, set once at start.
//!
//! The data path allocates and frees buffers of 64 KiB to a few MiB all the
//! time (chunks, sealed blobs, ranged shard reads, restored plaintexts) and
//! a 16 MiB buffer per pack. By default glibc serves the large ones with
//! `mmap` (until its adaptive threshold catches up) and hands freed memory
//! at the top of a heap back to the kernel past 128 KiB (twice the adaptive
//! threshold later), so the next buffer of the same size faults its pages in
//! again and the kernel zeroes them: about one page fault per 4 KiB of data
//! that passed through. Fixed thresholds above those sizes keep freed
//! buffers in the process for the next one. Measured on the bench's first
//! backup of 256 MiB: 83k page faults of the agent became 64-68k (what is
//! left is mostly argon2's 64 MiB, touched once, and buffers that another
//! thread's arena frees).
//!
//! The cost is memory kept after a peak: at most the trim threshold of free
//! heap per arena. Only glibc has `mallopt`; on other C libraries this does
//! nothing.

/// Allocations at least this large are served by `mmap`: above a pack
/// buffer plus a blob, so every data-path buffer comes from the heap.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the top of a heap kept instead of returned to the kernel.
const TRIM_THRESHOLD: i32 = 64 << 20;

/// Applies the settings; a value glibc refuses leaves its default, which is
/// only slower.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() {
    // SAFETY: `mallopt` only changes allocator parameters, takes plain
    // integers, and is called before the runtime starts any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}
