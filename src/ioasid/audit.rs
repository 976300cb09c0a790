//! Auditing an IOASID: its record against every hardware domain behind it.
//!
//! The layer's promise after every call, successful or not, is that each domain behind an
//! IOASID translates exactly what the record holds (issue 14). [`IoasidCtx::audit`] checks it by
//! walking both through the engine (`Iommu::for_each_mapping` reads the unit's real table), so
//! that tests, fuzzing and an embedder recovering from an error can verify it.

use super::ctx::{Ioasid, IoasidCtx};
use super::map::domains;
use super::record::RECORD_IAS;
use super::{Error, IoasidId};
use crate::iommu::{DomainHandle, Iommu};
use crate::mem::{Iova, PageAllocator};
use crate::pgtable::{Leaf, Prot};

/// The permissions that decide what a device may do (formats differ in how they express the
/// others).
const ACCESS: Prot = Prot::READ.union(Prot::WRITE);

impl<A: PageAllocator> IoasidCtx<'_, '_, A> {
    /// Checks that every hardware domain behind `ioasid` maps exactly what the IOASID's record
    /// holds: the same IOVAs, to the same physical addresses, with the same read and write
    /// permissions (leaf sizes may differ).
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`]; [`Error::Mismatch`] naming the unit and an IOVA where they
    /// differ (a defect: please report it); unit errors.
    pub fn audit(&self, ioasid: IoasidId) -> Result<(), Error> {
        // The write lock: the walks cover the whole IOASID, whose record tables an unmap (read
        // lock, its own stripes) frees at once.
        let st = self.state.write();
        let io = st.ioasid(ioasid)?;
        if io.nested.is_some() {
            // The guest's tables: nothing of the crate's to compare.
            return Ok(());
        }
        for (_, d) in domains(io) {
            let unit = self.unit(d.unit)?;
            let (ias, _) = unit.domain_geometry(d.handle)?;
            let span = 1u64.checked_shl(ias.min(RECORD_IAS)).unwrap_or(u64::MAX);
            let mismatch = |iova| Error::Mismatch { unit: d.unit, iova };
            // What the domain maps, the record maps the same way...
            let mut bad = None;
            unit.for_each_mapping(d.handle, Iova::ZERO, span, &mut |l| {
                if bad.is_none() && !record_covers(io, l) {
                    bad = Some(l.iova);
                }
            })?;
            // ... and what the record maps, the domain does.
            io.record
                .for_each_mapping(Iova::ZERO, 1 << RECORD_IAS, |l| {
                    if bad.is_none() && !domain_covers(unit, d.handle, l) {
                        bad = Some(l.iova);
                    }
                })?;
            if let Some(iova) = bad {
                return Err(mismatch(iova));
            }
        }
        Ok(())
    }
}

/// Whether the leaves intersecting `l`'s range in `walk` cover it all with `l`'s translation.
fn covers(l: Leaf, walk: impl FnOnce(&mut dyn FnMut(Leaf)) -> bool) -> bool {
    let (start, end) = (l.iova.get(), l.iova.get() + (1u64 << l.size_log2));
    let shift = l.pa.get().wrapping_sub(start);
    let mut covered = 0u64;
    let mut same = true;
    let walked = walk(&mut |m: Leaf| {
        let (m_start, m_end) = (m.iova.get(), m.iova.get() + (1u64 << m.size_log2));
        covered += m_end.min(end) - m_start.max(start);
        same &= m.pa.get().wrapping_sub(m_start) == shift && m.prot & ACCESS == l.prot & ACCESS;
    });
    walked && same && covered == end - start
}

fn record_covers<A: PageAllocator>(io: &Ioasid<'_, A>, l: Leaf) -> bool {
    covers(l, |f| {
        io.record
            .for_each_mapping(l.iova, 1 << l.size_log2, f)
            .is_ok()
    })
}

fn domain_covers(unit: &dyn Iommu, handle: DomainHandle, l: Leaf) -> bool {
    covers(l, |f| {
        unit.for_each_mapping(handle, l.iova, 1 << l.size_log2, f)
            .is_ok()
    })
}
