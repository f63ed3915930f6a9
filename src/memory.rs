//! Giving freed heap back to the system. Large transient allocations (a big
//! xDS file parsed, a config dump of 100k workloads rendered) leave glibc's
//! arenas full of free pages that would otherwise count as RSS for good.

/// Release free heap pages (glibc `malloc_trim`); a no-op elsewhere.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no
    // preconditions and does not touch live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Heap bytes in use and held free by the allocator (glibc `mallinfo2`),
/// for the logs: VmRSS alone does not tell live data from fragmentation.
pub fn heap_usage() -> Option<(usize, usize)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd, info.fordblks))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}
