//! Keeps glibc's malloc from handing big freed buffers back to the kernel.
//!
//! A training step allocates and frees the same few-megabyte activations hundreds of times.
//! glibc serves blocks above its mmap threshold with fresh `mmap`s and returns them on free, so
//! every step page-faults and the kernel zeroes every page again: 17% of a step's CPU time on
//! the benchmark shape (`perf`: `clear_page_erms`, `exc_page_fault`). Raising the mmap and trim
//! thresholds makes freed blocks stay in the heap for reuse (PyTorch's CPU caching allocator
//! exists for the same reason). Peak RSS is unchanged: the memory was live at the peak anyway.

/// Tunes this process's allocator for training; call once at start-up (the `mm-train` binary
/// does). A no-op where the C library is not glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; these values are within range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
