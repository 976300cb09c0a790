//! Event records collected from the SMMU's event queue, and the checks scenarios make on them.
//!
//! Records are decoded by the crate (`iommu_engine::smmuv3::event::Event`); this module only
//! keeps them (no allocator: a fixed array) and compares them with what a scenario expects.
//! QEMU splits a faulting transfer into 4-byte accesses and records one event per access, so a
//! faulting DMA of `n` bytes yields up to `n / 4` records: scenarios keep such DMAs short.

use iommu_engine::smmuv3::event::{Event, EventFlags, EventType};
use iommu_engine::smmuv3::StreamId;

use crate::scenario::Fail;
use crate::{bail, ensure, println};

/// Records kept per collection (more are counted, not kept).
const KEEP: usize = 64;

/// The records one drain returned.
pub struct EventLog {
    events: [Option<Event>; KEEP],
    len: usize,
    /// Records beyond [`KEEP`].
    pub dropped: usize,
    /// The queue reported an overflow (the unit dropped records).
    pub overflowed: bool,
}

impl EventLog {
    /// An empty log.
    pub const fn new() -> Self {
        Self {
            events: [None; KEEP],
            len: 0,
            dropped: 0,
            overflowed: false,
        }
    }

    /// Adds one record.
    pub fn push(&mut self, e: Event) {
        match self.events.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(e);
                self.len += 1;
            }
            None => self.dropped += 1,
        }
    }

    /// Every record kept.
    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().flatten()
    }

    /// Number of records seen.
    pub fn count(&self) -> usize {
        self.len + self.dropped
    }

    /// Prints every record kept (diagnostics).
    pub fn print(&self, what: &str) {
        println!(
            "{what}: {} event(s){}",
            self.count(),
            if self.overflowed {
                ", queue overflowed"
            } else {
                ""
            }
        );
        for (i, e) in self.iter().enumerate().take(4) {
            println!(
                "  [{i}] {:?} sid {:#x} addr {:x?} ipa {:x?} flags {:?} class {:?}",
                e.event_type, e.stream_id.0, e.input_address, e.ipa, e.flags, e.class
            );
        }
    }

    /// Fails unless the log is empty.
    pub fn expect_none(&self, what: &str) -> Result<(), Fail> {
        if let Some(e) = self.iter().next() {
            bail!(
                "{what}: unexpected event {:?} sid {:#x} addr {:x?} ({} in all)",
                e.event_type,
                e.stream_id.0,
                e.input_address,
                self.count()
            );
        }
        ensure!(!self.overflowed, "{what}: event queue overflowed");
        Ok(())
    }

    /// Checks that there is at least one record and that every one is a `kind` fault of
    /// `sid`, for an input address inside `[addr, addr + len)`, in direction `read` (RnW), and
    /// for stage-2 faults that the S2 flag and IPA say so. Returns the number of records.
    pub fn expect_faults(&self, want: &Expect) -> Result<usize, Fail> {
        ensure!(
            self.count() > 0,
            "{}: no event recorded (expected {:?} at {:#x})",
            want.what,
            want.kind,
            want.addr
        );
        ensure!(!self.overflowed, "{}: event queue overflowed", want.what);
        for e in self.iter() {
            check_one(e, want)?;
        }
        Ok(self.count())
    }
}

/// What a fault record must say.
pub struct Expect {
    /// Label for failure messages.
    pub what: &'static str,
    /// Event type.
    pub kind: EventType,
    /// StreamID of the device.
    pub sid: StreamId,
    /// First input address of the faulting transfer.
    pub addr: u64,
    /// Length of the faulting transfer.
    pub len: u64,
    /// The access was a read (device reads memory: `RnW = 1`).
    pub read: bool,
    /// `Some(s2)`: the `S2` flag must equal `s2`.
    pub stage2: Option<bool>,
    /// Stage 1 is bypassed: a stage-2 fault's IPA is the input address.
    pub ipa_is_input: bool,
}

fn check_one(e: &Event, w: &Expect) -> Result<(), Fail> {
    ensure!(
        e.event_type == Ok(w.kind),
        "{}: event type {:?}, expected {:?} (raw {:#x?})",
        w.what,
        e.event_type,
        w.kind,
        e.raw
    );
    ensure!(
        e.stream_id == w.sid,
        "{}: event StreamID {:#x}, expected {:#x}",
        w.what,
        e.stream_id.0,
        w.sid.0
    );
    let Some(addr) = e.input_address else {
        bail!("{}: {:?} record without an input address", w.what, w.kind);
    };
    ensure!(
        (w.addr..w.addr + w.len).contains(&addr),
        "{}: event input address {addr:#x} outside the transfer {:#x}+{:#x}",
        w.what,
        w.addr,
        w.len
    );
    let read = e.flags.contains(EventFlags::RNW);
    ensure!(
        read == w.read,
        "{}: event RnW {read}, expected {} (flags {:?})",
        w.what,
        w.read,
        e.flags
    );
    if let Some(s2) = w.stage2 {
        let got = e.flags.contains(EventFlags::S2);
        ensure!(got == s2, "{}: event S2 flag {got}, expected {s2}", w.what);
        // A stage-1 fault has no IPA (the crate decodes none).
        ensure!(
            s2 || e.ipa.is_none(),
            "{}: stage-1 fault decoded with an IPA {:x?}",
            w.what,
            e.ipa
        );
        // A stage-2 fault names the IPA (bits 51:12); without stage 1 it is the input address.
        if s2 && w.ipa_is_input {
            ensure!(
                e.ipa == Some(addr & !0xfff),
                "{}: event IPA {:x?}, expected {:#x}",
                w.what,
                e.ipa,
                addr & !0xfff
            );
        }
    }
    ensure!(
        e.substream_id.is_none(),
        "{}: event has a SubstreamID {:x?} (edu has none)",
        w.what,
        e.substream_id
    );
    Ok(())
}
