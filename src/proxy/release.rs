//! Gives the system back the memory a burst of connections left behind.
//!
//! Every connection holds buffers (its read buffer, h2's frame buffers and HPACK tables, its
//! task). When a burst ends they are freed, but glibc's allocator keeps freed memory in its
//! arenas and returns it only from the top of a heap, so the sidecar stays resident at the
//! burst's peak; the next burst of another shape (h2c after HTTP/1.1, say) allocates on top of
//! it. In a pod that counts against the memory limit next to the application. Measured with
//! the benchmark's config (`python3 bench/rss_runs.py --pause 2`): 12.0 MB anonymous memory
//! resident after 256 HTTP/1.1 connections, 3.9 MB two seconds after they closed; 256 h2c
//! connections after that peak at 27.9–28.1 MiB instead of 32.1–32.4. When the next burst
//! arrives as the last one leaves, the open count never falls and nothing is released
//! (BENCHMARKS.md, "Session 14").
//!
//! [`after_bursts`] looks at the proxy's open connections once a second and trims when they
//! have fallen to half or less of the most open at once since the last trim (and by at least
//! [`MIN_DROP`]): after a burst, not during one. `malloc_trim` locks each arena while it walks
//! it, so a worker allocating at that moment waits for it (not measured here); a steady load
//! never triggers it. OpenResty's lua-nginx-module calls
//! `malloc_trim` for the same reason, every N requests (`lua_malloc_trim`).

use std::sync::Arc;

use super::workers::Balance;
use crate::telemetry::names;

/// Fewer connections than this closing is not a burst ending.
pub const MIN_DROP: usize = 32;

/// Whether to trim, given the most connections open since the last trim and those open now.
pub fn burst_ended(peak: usize, open: usize) -> bool {
    peak >= open.saturating_mul(2) && peak - open >= MIN_DROP
}

/// Runs until dropped: checks `balance` every second and releases freed memory after a burst.
pub async fn after_bursts(balance: Arc<Balance>) {
    let mut tick = crate::beat::interval(crate::beat::SECOND);
    let mut peak = 0;
    loop {
        tick.tick().await;
        // The workers record the high-water mark as they accept, so a burst shorter than a
        // tick counts too.
        peak = peak.max(balance.take_peak());
        let open = balance.open();
        if burst_ended(peak, open) {
            let released = release();
            metrics::counter!(names::MEMORY_RELEASES_TOTAL).increment(1);
            tracing::debug!(peak, open, released, "connections fell after a burst; freed memory released");
            peak = open;
        }
    }
}

/// Asks glibc to return the free pages of every arena to the system. Returns whether it gave
/// anything back. Elsewhere (musl, other systems) it does nothing: those allocators return
/// large blocks themselves or have no such call.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and touches only the allocator's own free lists,
    // under the same locks every malloc and free take. The crate's one unsafe block.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_ends_when_connections_fall_to_half_and_by_enough() {
        assert!(burst_ended(256, 0));
        assert!(burst_ended(256, 128));
        assert!(!burst_ended(256, 129), "still more than half open");
        assert!(!burst_ended(40, 10), "30 closed is not a burst");
        assert!(burst_ended(42, 10));
        assert!(!burst_ended(0, 0));
        assert!(!burst_ended(64, 64), "a steady load never trims");
    }
}
