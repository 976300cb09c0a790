//! Exclusion of overlapping calls on one IOASID (no spec structure: the layer's own lock,
//! where iommufd serialises an IOAS's area changes under its own locks).
//!
//! `map`, `unmap`, `copy` (its source reads, its runs and its undo) and `read_dirty` take the
//! context's lock for reading only, so that calls on disjoint ranges run at once. Calls on
//! overlapping ranges must not: the page-table engine's walks assume it (two unmaps of a
//! table both unlink and release it; a map descends into a table an unmap releases; a dirty
//! read compare-and-swaps into one), and the API is safe, its callers possibly relaying
//! untrusted requests (a VMM). Each IOASID keeps a mask of 64 IOVA stripes of 1 GiB
//! ([`STRIPE_SHIFT`]; stripe `(iova >> 30) & 63`, a range over 64 GiB takes them all). A call
//! takes its range's stripes whole with one compare-and-swap when none is held, and waits
//! while one is; its [`StripeHold`] gives them back when dropped, on every path out (errors,
//! an unwinding unit call). Overlapping ranges always share a stripe, so they take turns;
//! disjoint ones sharing a stripe only wait.
//!
//! The wait is bounded by the holder's call: it takes no other lock that a waiter holds (a
//! waiter holds the context's read lock only, which the holder needs no more of) and waits on
//! hardware only for bounded times. Nothing holding stripes takes stripes again: a copy
//! takes its source's while it reads a run, then its destination's while it maps it, never
//! both at once. Calls under the context's write lock (attach's direct regions, detach,
//! reclaim, free) need none: no call holding stripes runs then.

use crate::sync::atomic::{AtomicU64, Ordering};

/// Each stripe covers 2^30 bytes of IOVA (1 GiB), the 64 of them 64 GiB, again and again.
pub(super) const STRIPE_SHIFT: u32 = 30;

/// An IOASID's held stripes, one bit each.
pub(super) struct Stripes(AtomicU64);

/// Stripes a call holds, given back when dropped.
pub(super) struct StripeHold<'s> {
    stripes: &'s AtomicU64,
    mask: u64,
}

/// The stripes of `[iova, iova + len)` (of `iova`'s alone when `len` is 0).
fn mask_of(iova: u64, len: u64) -> u64 {
    let first = iova >> STRIPE_SHIFT;
    let last = iova.saturating_add(len.saturating_sub(1)) >> STRIPE_SHIFT;
    if last - first >= 63 {
        return u64::MAX;
    }
    // At most 63 stripes, starting at `first`'s and wrapping around.
    ((1u64 << (last - first + 1)) - 1).rotate_left((first & 63) as u32)
}

impl Stripes {
    /// No stripe held.
    pub(super) fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Takes the stripes of `[iova, iova + len)`, waiting while another call holds any of
    /// them (see the module documentation for why the wait is bounded).
    #[inline(always)]
    pub(super) fn take(&self, iova: u64, len: u64) -> StripeHold<'_> {
        let mask = mask_of(iova, len);
        let mut seen = self.0.load(Ordering::Relaxed);
        loop {
            if seen & mask == 0 {
                match self.0.compare_exchange_weak(
                    seen,
                    seen | mask,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        return StripeHold {
                            stripes: &self.0,
                            mask,
                        }
                    }
                    Err(now) => {
                        seen = now;
                        continue;
                    }
                }
            }
            core::hint::spin_loop();
            // Under loom a spin that never yields holds the holder back.
            #[cfg(loom)]
            loom::thread::yield_now();
            seen = self.0.load(Ordering::Relaxed);
        }
    }
}

impl Drop for StripeHold<'_> {
    fn drop(&mut self) {
        // Release: what the call wrote to the record's tables is seen by the next holder.
        self.stripes.fetch_and(!self.mask, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << STRIPE_SHIFT;

    #[test]
    fn overlapping_ranges_share_a_stripe() {
        assert_eq!(mask_of(0, 1), 1);
        assert_eq!(mask_of(0x1000, 0), 1);
        assert_eq!(mask_of(G - 0x1000, 0x2000), 0b11);
        assert_eq!(mask_of(63 * G, 2 * G), 1 << 63 | 1);
        assert_eq!(mask_of(64 * G + 5 * G, G), 1 << 5);
        assert_eq!(mask_of(0, 63 * G), u64::MAX >> 1);
        assert_eq!(mask_of(G, 64 * G), u64::MAX);
        assert_eq!(mask_of(0, u64::MAX), u64::MAX);
        assert_eq!(mask_of(u64::MAX - 0xfff, 0x1000), 1 << 63);
    }

    #[test]
    fn a_hold_is_given_back_when_dropped() {
        let s = Stripes::new();
        let a = s.take(0, G);
        let b = s.take(G, G);
        assert_eq!(s.0.load(Ordering::Relaxed), 0b11);
        drop(a);
        assert_eq!(s.0.load(Ordering::Relaxed), 0b10);
        drop(b);
        assert_eq!(s.0.load(Ordering::Relaxed), 0);
    }
}
