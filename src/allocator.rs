//! Gives the heap memory the service has freed back to the operating system.
//!
//! glibc's malloc keeps freed memory in its arenas (one per thread that
//! allocates, up to eight per core) for reuse, and hands pages back to the
//! system only from the top of a heap. Ingest allocates and frees a lot of
//! short-lived memory on many threads (a 10 000-event batch is some hundred
//! thousand allocations, freed on another thread than the one that made
//! them), so without help the resident size climbs in steps long after the
//! live heap stopped growing: 101 → 311 MiB over a 150 s soak whose live
//! heap stayed near 110 MiB (BENCHMARKS.md, session 10).
//!
//! [`start_trimming`] runs a thread that calls `malloc_trim(0)` every
//! [`TRIM_INTERVAL`]; that releases the free pages inside every arena, not
//! only at their tops. Limiting the number of arenas instead
//! (`M_ARENA_MAX` 2) kept the resident size down as well but cost a fifth
//! of the batch ingest rate (threads waiting for each other's arena).
//!
//! glibc also gives memory back by itself: a free that leaves more than
//! the trim threshold at the top of a heap shrinks it at once, and blocks
//! above the mmap threshold are mapped and unmapped one by one. Both
//! thresholds grow with the blocks freed, but only to a few MiB; a
//! 10 000-event batch frees more than that, so every batch handed pages
//! back and the next one took them again (growing a heap and faulting its
//! pages in was a tenth of the CPU of reading a batch body).
//! [`keep_freed_memory`] therefore fixes both thresholds high
//! ([`MMAP_THRESHOLD`], [`TRIM_THRESHOLD`]): memory freed is reused, and the
//! trimming thread alone hands it back, every [`TRIM_INTERVAL`]. The
//! service does both.
//!
//! On other C libraries these functions do nothing.

// The one module that calls into libc; the rest of the crate denies unsafe
// code.
#![allow(unsafe_code)]

use std::time::Duration;

/// How often the trimming thread releases freed memory. A trim takes 0.7 to
/// 3.4 ms under a 20 000 events/s soak (measured in session 10), holding
/// each arena's lock in turn, and released pages cost a fault when they are
/// used again: so not more often than this.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Blocks at least this large are mapped on their own (glibc's largest
/// dynamic value); smaller ones come from the heaps, whose pages are reused.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Free memory at the top of a heap that a free leaves in place.
pub const TRIM_THRESHOLD: usize = 64 << 20;

/// Releases the free memory of every malloc arena to the operating system.
/// Returns whether any was released (always `false` where the C library is
/// not glibc).
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim has no preconditions; it takes each arena's
        // lock itself, so it is safe beside allocations on other threads.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Fixes glibc's mmap and trim thresholds (see the module documentation);
/// `false` when glibc refused a value, or where the C library is not glibc.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |parameter, value: usize| {
            let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only sets allocator parameters; glibc takes
            // the arenas' locks itself.
            unsafe { libc::mallopt(parameter, value) == 1 }
        };
        set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) & set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Starts the thread that calls [`trim`] every `interval`, for the rest of
/// the process. Where the C library is not glibc no thread is started.
pub fn start_trimming(interval: Duration) -> std::io::Result<()> {
    if cfg!(not(all(target_os = "linux", target_env = "gnu"))) {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("analytics-trim".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                trim();
            }
        })
        .map(drop)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// The resident size of this process, in KiB.
    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    #[test]
    fn glibc_takes_the_thresholds() {
        assert!(keep_freed_memory());
    }

    #[test]
    fn trimming_hands_memory_freed_inside_a_heap_back_to_the_system() {
        // 256 MiB in small blocks, then one block after them that stays: the
        // freed blocks cannot merge into the top of the heap, so free()
        // alone keeps their pages (what ingest leaves behind).
        const BLOCKS: usize = 512 * 1024;
        let (freed_kib, trimmed_kib) = std::thread::spawn(|| {
            let blocks: Vec<Box<[u8; 512]>> = (0..BLOCKS)
                .map(|index| Box::new([u8::try_from(index % 251).unwrap_or(0); 512]))
                .collect();
            let pin = Box::new([1u8; 512]);
            drop(blocks);
            let freed = resident_kib();
            trim();
            let trimmed = resident_kib();
            assert_eq!(pin[0], 1);
            (freed, trimmed)
        })
        .join()
        .expect("the allocating thread");
        // Other tests of this binary run beside this one and allocate too;
        // the margin is far above what they hold.
        assert!(
            freed_kib >= trimmed_kib + 128 * 1024,
            "RSS {freed_kib} KiB after free, {trimmed_kib} KiB after trim: \
             less than 128 MiB released"
        );
    }
}
