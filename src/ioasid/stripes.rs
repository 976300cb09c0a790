//! Exclusion of overlapping calls on one IOASID (no spec structure: the layer's own lock,
//! where iommufd serialises an IOAS's area changes under its own locks).
//!
//! `map`, `unmap`, `copy` (its source reads, its runs and its undo) and `read_dirty` take the
//! context's lock for reading only, so that calls on disjoint ranges run at once. Calls on
//! overlapping ranges must not: the page-table engine's walks assume it (two unmaps of a
//! table both unlink and release it; a map descends into a table an unmap releases; a dirty
//! read compare-and-swaps into one), and the API is safe, its callers possibly relaying
//! untrusted requests (a VMM). Each IOASID keeps one word: a mask of 32 IOVA stripes of 1 GiB
//! held ([`STRIPE_SHIFT`]; stripe `(iova >> 30) & 31`, a range over 32 GiB takes them all) in
//! its low half, and the stripes the waiter being served wants in its high half. A call takes
//! its range's stripes whole with one compare-and-swap when none is held or wanted; its
//! [`StripeHold`] gives them back with one `fetch_and` when dropped, on every path out
//! (errors, an unwinding unit call). Overlapping ranges always share a stripe, so they take
//! turns; disjoint ones sharing a stripe only wait.
//!
//! A call that cannot take them at once waits in turn: it draws a ticket, and when the
//! tickets before it have been served, it writes its stripes into the wanted half, then takes
//! them, clearing the wanted half in the same compare-and-swap, once no call holds any, and
//! ends its turn. Calls that come while a waiter is served and want any of its stripes do not
//! go in: they wait in turn behind it. Before, there were no turns, and an `UNMAP_ALL` (every
//! stripe at once) could wait for ever while narrow calls on other CPUs took and gave back
//! single stripes, never all clear together.
//!
//! The wait is bounded. A served waiter waits only for the calls that held its stripes when
//! it wrote them, each bounded by its call: a holder takes no other lock that a waiter holds
//! (a waiter holds the context's read lock only, which the holder needs no more of), takes no
//! stripes again and waits on hardware only for bounded times. A waiter waits for its turn
//! behind the waiters before it, served one after the other, each so bounded; so a call waits
//! at most for the waiters ahead of it and, once served, the calls then holding its stripes.
//! Nothing holding stripes takes stripes again: a copy takes its source's while it reads a
//! run, then its destination's while it maps it, never both at once. Calls under the
//! context's write lock (attach's direct regions, detach, reclaim, free) need none: no call
//! holding stripes runs then.

use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Each stripe covers 2^30 bytes of IOVA (1 GiB), the 32 of them 32 GiB, again and again.
pub(super) const STRIPE_SHIFT: u32 = 30;

/// The stripes (32) and, above them, the stripes the served waiter wants.
const WANTED_SHIFT: u32 = 32;

/// An IOASID's stripes: those held and wanted, and the turns of the calls waiting for some.
pub(super) struct Stripes {
    /// Bits 0-31: the stripes calls hold; bits 32-63: those the waiter being served waits
    /// for (none when nobody is served): new calls overlapping them wait behind it.
    word: AtomicU64,
    /// The next waiter's ticket.
    next: AtomicU32,
    /// The ticket of the waiter being served.
    serving: AtomicU32,
}

/// Stripes a call holds, given back when dropped.
pub(super) struct StripeHold<'s> {
    stripes: &'s AtomicU64,
    mask: u64,
}

/// A call waiting for its stripes, with its turn among the waiters.
struct Waiter<'s> {
    stripes: &'s Stripes,
    mask: u64,
    ticket: u32,
    /// Served: its stripes are in the wanted half.
    served: bool,
}

/// The stripes of `[iova, iova + len)` (of `iova`'s alone when `len` is 0), in bits 0-31.
fn mask_of(iova: u64, len: u64) -> u64 {
    let first = iova >> STRIPE_SHIFT;
    let last = iova.saturating_add(len.saturating_sub(1)) >> STRIPE_SHIFT;
    if last - first >= 31 {
        return u64::from(u32::MAX);
    }
    // At most 31 stripes, starting at `first`'s and wrapping around.
    let run = (1u32 << (last - first + 1)) - 1;
    u64::from(run.rotate_left((first & 31) as u32))
}

/// One turn of a wait for other calls (bounded by theirs: the module documentation).
fn relax() {
    core::hint::spin_loop();
    // Under loom a spin that never yields holds the holder back.
    #[cfg(loom)]
    loom::thread::yield_now();
}

impl Stripes {
    /// No stripe held, nobody waiting.
    pub(super) fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            next: AtomicU32::new(0),
            serving: AtomicU32::new(0),
        }
    }

    /// Takes the stripes of `[iova, iova + len)`, waiting while another call holds any of
    /// them or a waiter served before it wants any (see the module documentation for why
    /// the wait is bounded).
    #[inline(always)]
    pub(super) fn take(&self, iova: u64, len: u64) -> StripeHold<'_> {
        let mask = mask_of(iova, len);
        match self.try_take(mask) {
            Some(h) => h,
            None => self.take_in_turn(mask),
        }
    }

    /// The stripes of `mask` if no call holds any of them and no served waiter wants any:
    /// one compare-and-swap (more only when a call beside it takes or gives back others).
    #[inline(always)]
    fn try_take(&self, mask: u64) -> Option<StripeHold<'_>> {
        let busy = mask | mask << WANTED_SHIFT;
        let mut seen = self.word.load(Ordering::Relaxed);
        while seen & busy == 0 {
            match self.word.compare_exchange_weak(
                seen,
                seen | mask,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.hold(mask)),
                Err(now) => seen = now,
            }
        }
        None
    }

    fn hold(&self, mask: u64) -> StripeHold<'_> {
        StripeHold {
            stripes: &self.word,
            mask,
        }
    }

    /// The slow path: waits its turn among the waiters, then for its stripes.
    #[cold]
    #[inline(never)]
    fn take_in_turn(&self, mask: u64) -> StripeHold<'_> {
        let mut w = self.wait(mask);
        loop {
            if let Some(h) = w.poll() {
                return h;
            }
            relax();
        }
    }

    /// Joins the waiters for `mask`. The waiter must be polled until it takes its stripes:
    /// the waiters after it wait for its turn to end.
    fn wait(&self, mask: u64) -> Waiter<'_> {
        Waiter {
            stripes: self,
            mask,
            ticket: self.next.fetch_add(1, Ordering::Relaxed),
            served: false,
        }
    }
}

impl<'s> Waiter<'s> {
    /// The stripes once it is this waiter's turn and nobody holds them, else `None`.
    fn poll(&mut self) -> Option<StripeHold<'s>> {
        let s = self.stripes;
        if !self.served {
            // Acquire: the previous waiter's take, which cleared the wanted half, comes
            // before this write into it.
            if s.serving.load(Ordering::Acquire) != self.ticket {
                return None;
            }
            s.word
                .fetch_or(self.mask << WANTED_SHIFT, Ordering::Relaxed);
            self.served = true;
        }
        let mut seen = s.word.load(Ordering::Relaxed);
        while seen & self.mask == 0 {
            // Takes its stripes and clears the wanted half (only its own is there).
            let now = (seen | self.mask) & u64::from(u32::MAX);
            match s
                .word
                .compare_exchange_weak(seen, now, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => {
                    // Holding them, the waiter needs no more turns; the next one's begins.
                    s.serving
                        .store(self.ticket.wrapping_add(1), Ordering::Release);
                    return Some(s.hold(self.mask));
                }
                Err(x) => seen = x,
            }
        }
        None
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
        assert_eq!(mask_of(31 * G, 2 * G), 1 << 31 | 1);
        assert_eq!(mask_of(32 * G + 5 * G, G), 1 << 5);
        assert_eq!(mask_of(0, 31 * G), 0xffff_ffff >> 1);
        assert_eq!(mask_of(G, 32 * G), 0xffff_ffff);
        assert_eq!(mask_of(0, u64::MAX), 0xffff_ffff);
        assert_eq!(mask_of(u64::MAX - 0xfff, 0x1000), 1 << 31);
    }

    #[test]
    fn a_hold_is_given_back_when_dropped() {
        let s = Stripes::new();
        let a = s.take(0, G);
        let b = s.take(G, G);
        assert_eq!(s.word.load(Ordering::Relaxed), 0b11);
        drop(a);
        assert_eq!(s.word.load(Ordering::Relaxed), 0b10);
        drop(b);
        assert_eq!(s.word.load(Ordering::Relaxed), 0);
    }

    /// A wide call waiting (an `UNMAP_ALL` behind a narrow map) goes before narrow calls that
    /// come after it: before, a narrow take of a stripe given back went straight in, so narrow
    /// calls taking turns on one stripe could keep the wide one out for ever.
    #[test]
    fn a_waiting_wide_call_goes_before_later_narrow_ones() {
        let s = Stripes::new();
        let narrow = s.try_take(mask_of(0, G)).unwrap();
        let mut wide = s.wait(mask_of(0, u64::MAX));
        assert!(wide.poll().is_none(), "the wide call took a held stripe");
        drop(narrow);
        // Another narrow call comes while the wide one waits: it must wait, on the freed
        // stripe and on one nobody holds alike.
        assert!(
            s.try_take(mask_of(0, G)).is_none(),
            "a narrow call overlapping a waiting wide call went in before it"
        );
        assert!(
            s.try_take(mask_of(5 * G, G)).is_none(),
            "a narrow call overlapping a waiting wide call went in before it"
        );
        let held = wide.poll().expect("the wide call, nothing held");
        assert!(s.try_take(mask_of(0, G)).is_none());
        drop(held);
        // Gone: narrow calls take at once again.
        assert!(s.try_take(mask_of(0, G)).is_some());
    }

    /// Waiters are served in the order they came: a narrow call that had to wait goes after
    /// a wide call that waited before it, even once its own stripe is free.
    #[test]
    fn waiters_are_served_in_turn() {
        let s = Stripes::new();
        let a = s.try_take(mask_of(0, G)).unwrap();
        let b = s.try_take(mask_of(G, G)).unwrap();
        let mut wide = s.wait(mask_of(0, u64::MAX));
        let mut narrow = s.wait(mask_of(G, G));
        assert!(wide.poll().is_none());
        assert!(narrow.poll().is_none());
        drop(b);
        assert!(
            narrow.poll().is_none(),
            "a later waiter went before the wide one"
        );
        drop(a);
        assert!(
            narrow.poll().is_none(),
            "a later waiter went before the wide one"
        );
        let w = wide.poll().expect("the wide call, nothing held");
        assert!(narrow.poll().is_none());
        drop(w);
        let n = narrow.poll().expect("the narrow call, its turn");
        // A waiter disjoint from what is held is not held up once served.
        let mut other = s.wait(mask_of(2 * G, G));
        assert!(other.poll().is_some());
        drop(n);
        assert_eq!(s.word.load(Ordering::Relaxed), 0);
    }
}
