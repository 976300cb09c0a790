//! Mapping into an IOASID: the record, then every hardware domain behind it, all or nothing.

use super::ctx::{align_up, iova, Ioasid, IoasidCtx, UnitDomain};
use super::record::RECORD_IAS;
use super::{Error, IoasidId};
use crate::iommu::Iommu;
use crate::mem::{Iova, PageAllocator, PhysAddr};
use crate::pgtable::{Gather, InvalidationComplete, IovaRange, Mapping, Prot};

/// Lowest IOVA [`IoasidCtx::alloc_iova`] hands out: page 0 stays unmapped so that a device
/// using a null DMA address faults.
const IOVA_ALLOC_BASE: u64 = 1 << 12;

impl<'a, A: PageAllocator> IoasidCtx<'_, 'a, A> {
    /// Maps `[iova, iova + len)` to `[pa, pa + len)` in the IOASID and in every hardware domain
    /// behind it. If any domain refuses, what was done is undone and nothing is mapped.
    ///
    /// # Errors
    /// [`Error::Reserved`] for a range touching a reserved region; [`Error::PageTable`]
    /// (overlap, alignment, width, memory); unit errors.
    pub fn map(
        &self,
        ioasid: IoasidId,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        let end = iova.get().saturating_add(len);
        if let Some(r) = self.reserved_overlap(&st, io, iova.get(), end) {
            return Err(Error::Reserved(r));
        }
        io.record.map(iova, pa, len, prot)?;
        for (k, d) in io.domains.iter().flatten().enumerate() {
            let r = self
                .unit(d.unit)
                .and_then(|u| u.map(d.handle, iova, pa, len, prot).map_err(Error::from));
            if let Err(e) = r {
                for done in io.domains.iter().flatten().take(k) {
                    // The mapping was briefly visible: remove it and invalidate.
                    let _ = self.unmap_domain(done, iova, len);
                }
                self.unmap_record(io, iova, len);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unmaps `[iova, iova + len)` from the IOASID and every domain behind it, with one flush
    /// (one completion wait) per unit. Returns the bytes that were mapped. If a domain refuses
    /// (a split it cannot make), the domains already changed get the range back from the record
    /// and nothing is unmapped.
    ///
    /// # Errors
    /// [`Error::PageTable`] (range errors, a refused split, memory); unit errors.
    pub fn unmap(&self, ioasid: IoasidId, iova: Iova, len: u64) -> Result<u64, Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        let domains = || io.domains.iter().flatten();
        for (k, d) in domains().enumerate() {
            if let Err(e) = self.unmap_domain(d, iova, len) {
                for done in domains().take(k) {
                    let _ = self.remap_from_record(io, done, iova, len);
                }
                return Err(e);
            }
        }
        let mut gather = Gather::new();
        let bytes = match io.record.unmap(iova, len, &mut gather) {
            Ok(bytes) => bytes,
            Err(e) => {
                for d in domains() {
                    let _ = self.remap_from_record(io, d, iova, len);
                }
                return Err(e.into());
            }
        };
        // SAFETY: the record is a software table: no hardware walks it.
        gather.release(self.alloc, unsafe { InvalidationComplete::assume() })?;
        Ok(bytes)
    }

    /// What the IOASID's owner mapped at `iova`.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    pub fn translate(&self, ioasid: IoasidId, iova: Iova) -> Result<Option<Mapping>, Error> {
        Ok(self.state.read().ioasid(ioasid)?.record.query(iova))
    }

    /// Reports (to `sink`) and cleans the dirty pages of `[iova, iova + len)` in every domain of
    /// an IOASID allocated with dirty tracking, flushing each unit once. A page written through
    /// two units is reported by each.
    ///
    /// # Errors
    /// [`Error::PageTable`] (`NoDirtyTracking`); unit errors.
    pub fn read_and_clear_dirty(
        &self,
        ioasid: IoasidId,
        iova: Iova,
        len: u64,
        sink: &mut dyn FnMut(Iova, u32),
    ) -> Result<(), Error> {
        let st = self.state.read();
        for d in st.ioasid(ioasid)?.domains.iter().flatten() {
            let unit = self.unit(d.unit)?;
            let mut gather = Gather::new();
            let r = unit.read_and_clear_dirty(d.handle, iova, len, sink, &mut gather);
            unit.flush(d.handle, &mut gather)?;
            r?;
        }
        Ok(())
    }

    /// Finds and reserves `size` bytes (rounded up to whole 4 KiB pages) of IOVA aligned to
    /// `align` (a power of two; at least 4 KiB is used) that nothing maps or reserves, below
    /// every domain's input limit. The caller maps
    /// into it and returns it with [`IoasidCtx::free_iova`].
    ///
    /// # Errors
    /// [`Error::NoIovaSpace`]; [`Error::Capacity`] with too many outstanding reservations.
    pub fn alloc_iova(&self, ioasid: IoasidId, size: u64, align: u64) -> Result<Iova, Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        let align = align.max(1 << 12);
        if size == 0 || !align.is_power_of_two() {
            return Err(Error::NoIovaSpace { size });
        }
        // Whole pages: what is reserved is what can be mapped.
        let asked = size;
        let size = align_up(size, 1 << 12).ok_or(Error::NoIovaSpace { size: asked })?;
        let mut limit = 1u64 << RECORD_IAS;
        for d in io.domains.iter().flatten() {
            let (ias, _) = self.unit(d.unit)?.domain_geometry(d.handle)?;
            limit = limit.min(1u64.checked_shl(ias).unwrap_or(u64::MAX));
        }
        let mut reservations = io.reservations.lock();
        let slot = reservations
            .iter()
            .position(Option::is_none)
            .ok_or(Error::Capacity("IOVA reservations"))?;
        let mut at = align_up(IOVA_ALLOC_BASE, align).ok_or(Error::NoIovaSpace { size: asked })?;
        loop {
            let end = at
                .checked_add(size)
                .filter(|&e| e <= limit)
                .ok_or(Error::NoIovaSpace { size: asked })?;
            let mut busy_until = reservations
                .iter()
                .flatten()
                .filter(|r| super::overlaps(r, at, end))
                .map(|r| r.end.get())
                .max();
            if let Some(r) = self.reserved_overlap(&st, io, at, end) {
                busy_until = busy_until.max(Some(r.end.get()));
            }
            io.record.for_each_mapping(iova(at), size, |l| {
                busy_until = busy_until.max(Some(l.iova.get() + (1u64 << l.size_log2)));
            })?;
            match busy_until {
                None => break,
                Some(next) => {
                    at = align_up(next, align).ok_or(Error::NoIovaSpace { size: asked })?
                }
            }
        }
        reservations[slot] = Some(IovaRange {
            start: iova(at),
            end: iova(at + size),
        });
        Ok(iova(at))
    }

    /// Returns a reservation made by [`IoasidCtx::alloc_iova`] starting at `start`; `false` if
    /// there is none.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    pub fn free_iova(&self, ioasid: IoasidId, start: Iova) -> Result<bool, Error> {
        let st = self.state.read();
        let mut reservations = st.ioasid(ioasid)?.reservations.lock();
        let found = reservations
            .iter_mut()
            .find(|r| r.is_some_and(|r| r.start == start));
        Ok(found.map(|r| r.take()).is_some())
    }

    /// Unmaps a range from one domain and flushes its unit.
    fn unmap_domain(&self, d: &UnitDomain, iova: Iova, len: u64) -> Result<u64, Error> {
        let unit = self.unit(d.unit)?;
        let mut gather = Gather::new();
        let r = unit.unmap(d.handle, iova, len, &mut gather);
        // Flush even after a failure: the gather holds what did change.
        unit.flush(d.handle, &mut gather)?;
        Ok(r?)
    }

    fn unmap_record(&self, io: &Ioasid<'a, A>, iova: Iova, len: u64) {
        let mut gather = Gather::new();
        if io.record.unmap(iova, len, &mut gather).is_ok() {
            // SAFETY: the record is a software table: no hardware walks it.
            let _ = gather.release(self.alloc, unsafe { InvalidationComplete::assume() });
        }
    }

    /// Maps back into a domain what the record holds in `[iova, iova + len)`.
    fn remap_from_record(
        &self,
        io: &Ioasid<'a, A>,
        d: &UnitDomain,
        iova: Iova,
        len: u64,
    ) -> Result<(), Error> {
        let unit: &dyn Iommu = self.unit(d.unit)?;
        let (start, end) = (iova.get(), iova.get().saturating_add(len));
        let mut result = Ok(());
        io.record.for_each_mapping(iova, len, |l| {
            let from = l.iova.get().max(start);
            let to = (l.iova.get() + (1u64 << l.size_log2)).min(end);
            let pa = PhysAddr::new(l.pa.get() + (from - l.iova.get()));
            if result.is_ok() {
                result = unit
                    .map(d.handle, Iova::new(from), pa, to - from, l.prot)
                    .map_err(Error::from);
            }
        })?;
        result
    }
}
