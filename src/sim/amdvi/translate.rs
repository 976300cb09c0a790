//! Translation (§2.2.2.1 "Device Table Entry Format", §2.2.3 "I/O Page Tables for Host
//! Translations"): the device's DTE (cached until INVALIDATE_DEVTAB_ENTRY), then the IOTLB,
//! then a walk of the v1 table from the deepest cached page directory entry (cached until an
//! INVALIDATE_IOMMU_PAGES with `PDE` covers it).
//!
//! The model's own reading of the v1 format: a table at level L (1 = 4 KiB leaves) is indexed
//! by IOVA bits 12+9(L-1)+8 : 12+9(L-1); an entry with `PR` clear faults; `Next Level` 0 is a
//! leaf of the level's size, 7 a leaf whose size the address encodes (the lowest clear address
//! bit from 12 up, n, gives 2^(n+1) bytes), 1..L-1 a table at that level (the skipped levels'
//! index bits must be zero), anything else is an illegal level (a fault with `RZ`). IOVA bits
//! above what `Mode` levels translate must be zero. Read and write permission is the AND of
//! the DTE's `IR`/`IW` and every entry's on the walk; `FC` in the leaf forces snooping.
//!
//! Dirty tracking (EFR `HDSup`, DTE `HAD` = 11b, bits 8:7): a write the unit lets through sets
//! `D` (bit 6) in the leaf it was translated by, on the walk or, for an IOTLB entry cached
//! clean, on the first write through it; an entry cached dirty sets nothing again (software
//! that cleans `D` must invalidate). `A` is not modelled.
//!
//! Guest translation (§2.2.6 "I/O Page Tables for Guest Translations"), only while Control
//! `GTEn` is set (clear: `GV` and `GIoV` are taken as 0): a request with a PASID
//! is refused (INVALID_DEVICE_REQUEST) unless the DTE has `GV`; one without a PASID is
//! translated as PASID 0's when the DTE has `GV` and `GIoV` and EFR `GIoSup` (bit 48) is set:
//! a unit without guest I/O protection ignores `GIoV` (QEMU's `amd-iommu` reports `GTSup`
//! without `GIoSup` and knows no `GIoV`; Linux uses v2 tables only with both), so a guest
//! entry's `Mode` 0 with `IR`/`IW` passes requests without PASID untranslated. The PASID's
//! entry of the GCR3 table (`GLX` 0 only: one 4 KiB level of 512 eight-byte entries; bit 0
//! valid, bits 51:12 the guest CR3) names a v2 table, walked by the reference walker
//! [`crate::sim::walk::amdvi_v2`] (4 levels, NX) as user requests; with `Mode` 0 the output is a
//! system physical address (nested translation through a host table, `Mode` 1..=6 with `GV`, is not
//! modelled: such a DTE is refused as illegal). Guest translations are cached in the IOTLB tagged
//! with the DTE's `DomainID` and the PASID: only INVALIDATE_IOMMU_PAGES with `GN` and that PASID
//! (or INVALIDATE_IOMMU_ALL) removes them. GCR3 entries are not cached (read on every IOTLB miss).

use super::{regs, AmdViModel, State};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::PhysMem;
use crate::sim::walk::{self, Access};

const EVENT_ILLEGAL_DEV_TABLE_ENTRY: u64 = 0x1;
const EVENT_IO_PAGE_FAULT: u64 = 0x2;
const EVENT_PAGE_TAB_HARDWARE_ERROR: u64 = 0x4;
const EVENT_INVALID_DEVICE_REQUEST: u64 = 0x8;
const FLAG_GN: u64 = 1 << 0;
const DTE_GIOV: u64 = 1 << 54;
const DTE_GV: u64 = 1 << 55;
const FLAG_PR: u64 = 1 << 4;
const FLAG_RW: u64 = 1 << 5;
const FLAG_PE: u64 = 1 << 6;
const FLAG_RZ: u64 = 1 << 7;
/// `TR`: the request was an ATS translation request.
const FLAG_TR: u64 = 1 << 8;
/// DTE `I` (quadword 1 bit 32): the device's IOTLB (ATS) may cache translations.
const DTE_I: u64 = 1 << 32;
const PTE_PR: u64 = 1;
const PTE_D: u64 = 1 << 6;
const DTE_HAD: u64 = 3 << 7;
const PTE_FC: u64 = 1 << 60;
const PTE_IR: u64 = 1 << 61;
const PTE_IW: u64 = 1 << 62;
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// A cached translation.
#[derive(Clone, Copy, Debug)]
pub(super) struct IotlbEntry {
    pub domain: u16,
    /// The device whose request cached it (the key with `iotlb_by_device`).
    pub device: u16,
    /// The PASID of a guest translation (`None`: a host translation).
    pub pasid: Option<u32>,
    pub iova: u64,
    pub size_log2: u32,
    pub pa: u64,
    pub read: bool,
    pub write: bool,
    pub fc: bool,
    /// The leaf's address (host translations), for `D` updates.
    pub pte: u64,
    /// The leaf's `D` as cached.
    pub dirty: bool,
}

/// A translation a device holds in its own cache (its ATC), from an answered ATS translation
/// request: the unit's invalidations of its own caches do not reach it.
#[derive(Clone, Copy, Debug)]
pub(super) struct AtcEntry {
    pub device: u16,
    /// The PASID of the request (`None`: a request without PASID).
    pub pasid: Option<u32>,
    pub iova: u64,
    pub size_log2: u32,
    pub pa: u64,
}

/// A cached page directory entry: the table at `level` that translates the `2^span_log2`
/// bytes at `iova`, with the permissions of the walk down to it.
#[derive(Clone, Copy, Debug)]
pub(super) struct PdeEntry {
    pub domain: u16,
    pub iova: u64,
    pub span_log2: u32,
    pub level: u32,
    pub table: u64,
    pub read: bool,
    pub write: bool,
}

impl PdeEntry {
    pub fn last(&self) -> u64 {
        self.iova.saturating_add((1u64 << self.span_log2) - 1)
    }
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DmaOk {
    /// The output address.
    pub pa: u64,
    /// Log2 of the page that mapped it (12 when untranslated).
    pub page_size_log2: u32,
    /// The leaf's `FC`: snooped whatever the request's no-snoop attribute.
    pub force_coherent: bool,
    /// The domain ID (0 untranslated).
    pub domain: u16,
    /// Served from the IOTLB.
    pub from_iotlb: bool,
}

/// A refused request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DmaFault {
    /// The event code logged (or that would have been, had the log room).
    pub event_code: u8,
    /// The event's flags (bits 59:48 of its first quadword, shifted down).
    pub flags: u16,
}

fn level_shift(level: u32) -> u32 {
    12 + 9 * (level - 1)
}

/// Bits `[lo, hi)` of `v`, as a mask test: are they all zero.
fn zero_between(v: u64, lo: u32, hi: u32) -> bool {
    if lo >= 64 || lo >= hi {
        return true;
    }
    let width = hi.min(64) - lo;
    let mask = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    (v >> lo) & mask == 0
}

impl AmdViModel<'_> {
    /// A DMA read (`write` false) or write of `iova` by `device_id`. Faults are logged in the
    /// event log as the unit would.
    pub fn dma(&self, device_id: u16, iova: u64, write: bool) -> Result<DmaOk, DmaFault> {
        let mut st = self.lock();
        st.stats.translations += 1;
        st.translate(device_id, None, iova, write)
    }

    /// As [`dma`](Self::dma), for a request carrying `pasid` (a PASID TLP prefix, user
    /// privilege).
    pub fn dma_pasid(
        &self,
        device_id: u16,
        pasid: u32,
        iova: u64,
        write: bool,
    ) -> Result<DmaOk, DmaFault> {
        let mut st = self.lock();
        st.stats.translations += 1;
        st.translate(device_id, Some(pasid & 0xF_FFFF), iova, write)
    }

    /// An ATS translation request of `device_id` (with `pasid`, if any) for `iova`, asking
    /// for write permission when `write`: refused with INVALID_DEVICE_REQUEST (`TR`) unless the
    /// unit is on and the device's DTE has `I`; otherwise translated as a request would be
    /// (its faults logged as the request's) and the answer kept in the device's ATC until an
    /// INVALIDATE_IOTLB_PAGES of it (see the module).
    pub fn ats_translate(
        &self,
        device_id: u16,
        pasid: Option<u32>,
        iova: u64,
        write: bool,
    ) -> Result<DmaOk, DmaFault> {
        let mut st = self.lock();
        st.ats_request(device_id, pasid, iova, write)
    }

    /// What `device_id`'s ATC holds for `iova` of `pasid` (`None`: without PASID): the output
    /// address a translated request of the device would carry, whatever the tables say now.
    pub fn atc_translation(&self, device_id: u16, pasid: Option<u32>, iova: u64) -> Option<u64> {
        let st = self.lock();
        st.atc
            .iter()
            .rev()
            .find(|e| {
                e.device == device_id
                    && e.pasid == pasid
                    && iova >= e.iova
                    && iova - e.iova < 1u64 << e.size_log2
            })
            .map(|e| e.pa + (iova - e.iova))
    }
}

impl State<'_> {
    /// [`AmdViModel::ats_translate`].
    pub(super) fn ats_request(
        &mut self,
        device_id: u16,
        pasid: Option<u32>,
        iova: u64,
        write: bool,
    ) -> Result<DmaOk, DmaFault> {
        self.stats.translations += 1;
        let pasid = pasid.map(|p| p & 0xF_FFFF);
        let dte = if self.control & regs::CTRL_IOMMU_EN != 0 {
            self.dte(device_id)
        } else {
            None
        };
        if !dte.is_some_and(|d| d[0] & 3 == 3 && d[1] & DTE_I != 0) {
            self.stats.ats_refused += 1;
            let rw = if write { FLAG_RW } else { 0 };
            let domain = dte.map_or(0, |d| d[1] as u16);
            return self.fault(
                EVENT_INVALID_DEVICE_REQUEST,
                device_id,
                domain,
                rw | FLAG_TR,
                iova,
            );
        }
        match self.translate(device_id, pasid, iova, write) {
            Ok(t) => {
                let size_log2 = t.page_size_log2;
                let base = iova >> size_log2 << size_log2;
                self.atc.push(AtcEntry {
                    device: device_id,
                    pasid,
                    iova: base,
                    size_log2,
                    pa: t.pa - (iova - base),
                });
                self.stats.ats_translations += 1;
                Ok(t)
            }
            Err(f) => {
                self.stats.ats_refused += 1;
                Err(f)
            }
        }
    }

    fn untranslated(&mut self, iova: u64) -> Result<DmaOk, DmaFault> {
        self.stats.untranslated += 1;
        Ok(DmaOk {
            pa: iova,
            page_size_log2: 12,
            force_coherent: false,
            domain: 0,
            from_iotlb: false,
        })
    }

    /// ILLEGAL_DEV_TABLE_ENTRY for a DTE whose fields the unit cannot use (RZ: a reserved
    /// value), for a request of `rw`.
    fn illegal_dte(
        &mut self,
        device: u16,
        domain: u16,
        rw: u64,
        iova: u64,
    ) -> Result<DmaOk, DmaFault> {
        self.fault(
            EVENT_ILLEGAL_DEV_TABLE_ENTRY,
            device,
            domain,
            rw | FLAG_RZ,
            iova,
        )
    }

    fn fault(
        &mut self,
        code: u64,
        device: u16,
        domain: u16,
        flags: u64,
        address: u64,
    ) -> Result<DmaOk, DmaFault> {
        self.log_event([
            code << 60 | flags << 48 | u64::from(domain) << 32 | u64::from(device),
            address,
        ]);
        Err(DmaFault {
            event_code: code as u8,
            flags: flags as u16,
        })
    }

    fn dte(&mut self, device: u16) -> Option<[u64; 4]> {
        if let Some(d) = self.dte_cache.get(&device) {
            return Some(*d);
        }
        let entries = ((self.dev_tab_base & 0x1FF) + 1) * 4096 / 32;
        if u64::from(device) >= entries {
            return None;
        }
        let at = (self.dev_tab_base & ADDR) + u64::from(device) * 32;
        let mut d = [0u64; 4];
        for (i, w) in d.iter_mut().enumerate() {
            *w = self.mem.read_u64(at + 8 * i as u64)?;
        }
        self.dte_cache.insert(device, d);
        Some(d)
    }

    pub(super) fn translate(
        &mut self,
        device: u16,
        pasid: Option<u32>,
        iova: u64,
        write: bool,
    ) -> Result<DmaOk, DmaFault> {
        if self.control & regs::CTRL_IOMMU_EN == 0 {
            return self.untranslated(iova);
        }
        let rw = if write { FLAG_RW } else { 0 };
        let Some(dte) = self.dte(device) else {
            return self.fault(EVENT_ILLEGAL_DEV_TABLE_ENTRY, device, 0, rw, iova);
        };
        let q0 = dte[0];
        if q0 & 1 == 0 || q0 & 2 == 0 {
            // V or TV clear: the unit does not translate the device's requests.
            return self.untranslated(iova);
        }
        let domain = dte[1] as u16;
        let mode = ((q0 >> 9) & 7) as u32;
        let (dir, diw) = (q0 & PTE_IR != 0, q0 & PTE_IW != 0);
        let allowed = |r: bool, w: bool| if write { w } else { r };
        if mode == 7 {
            return self.illegal_dte(device, domain, rw, iova);
        }
        // §3.4 Control `GTEn`: guest translation is off while it is clear; the unit then takes
        // `GV` (and `GIoV`) as 0, the reading in which a guest entry's `Mode` 0 with `IR`/`IW`
        // lets requests without PASID through untranslated (the stricter for a driver).
        let q0 = if self.control & regs::CTRL_GT_EN == 0 {
            q0 & !(DTE_GV | DTE_GIOV)
        } else if self.cfg.efr & super::EFR_GIO_SUP == 0 {
            // No guest I/O protection: `GIoV` means nothing (see the module).
            q0 & !DTE_GIOV
        } else {
            q0
        };
        let pasid = match pasid {
            Some(_) if q0 & DTE_GV == 0 => {
                return self.fault(EVENT_INVALID_DEVICE_REQUEST, device, domain, rw, iova);
            }
            None if q0 & (DTE_GV | DTE_GIOV) == DTE_GV | DTE_GIOV => Some(0),
            p => p,
        };
        if let Some(p) = pasid {
            return self.translate_guest(dte, device, p, iova, write);
        }
        if mode == 0 {
            if allowed(dir, diw) {
                return Ok(DmaOk {
                    pa: iova,
                    page_size_log2: 12,
                    force_coherent: false,
                    domain,
                    from_iotlb: false,
                });
            }
            return self.fault(
                EVENT_IO_PAGE_FAULT,
                device,
                domain,
                rw | FLAG_PR | FLAG_PE,
                iova,
            );
        }
        let had = q0 & DTE_HAD == DTE_HAD;
        let by_device = self.cfg.iotlb_by_device;
        if let Some(i) = self.iotlb.iter().position(|e| {
            (if by_device {
                e.device == device
            } else {
                e.domain == domain
            }) && e.pasid.is_none()
                && iova >= e.iova
                && iova - e.iova < (1u64 << e.size_log2)
        }) {
            let e = self.iotlb[i];
            self.stats.iotlb_hits += 1;
            if !allowed(e.read && dir, e.write && diw) {
                return self.fault(
                    EVENT_IO_PAGE_FAULT,
                    device,
                    domain,
                    rw | FLAG_PR | FLAG_PE,
                    iova,
                );
            }
            if write && had && !e.dirty {
                self.set_dirty(e.pte);
                self.iotlb[i].dirty = true;
            }
            return Ok(DmaOk {
                pa: e.pa + (iova - e.iova),
                page_size_log2: e.size_log2,
                force_coherent: e.fc,
                domain,
                from_iotlb: true,
            });
        }
        if !zero_between(iova, level_shift(mode) + 9, 64) {
            return self.fault(EVENT_IO_PAGE_FAULT, device, domain, rw, iova);
        }
        self.stats.walks += 1;
        // Start from the deepest cached page directory entry that covers the IOVA.
        let start = self
            .pde_cache
            .iter()
            .filter(|p| p.domain == domain && iova >= p.iova && iova <= p.last())
            .min_by_key(|p| p.level)
            .copied();
        let (mut level, mut table, mut r, mut w) = match start {
            Some(p) => (p.level, p.table, p.read, p.write),
            None => (mode, q0 & ADDR, true, true),
        };
        loop {
            let shift = level_shift(level);
            let index = (iova >> shift) & 0x1FF;
            let Some(pte) = self.mem.read_u64(table + index * 8) else {
                return self.fault(EVENT_PAGE_TAB_HARDWARE_ERROR, device, domain, rw, iova);
            };
            if pte & PTE_PR == 0 {
                return self.fault(EVENT_IO_PAGE_FAULT, device, domain, rw, iova);
            }
            r &= pte & PTE_IR != 0;
            w &= pte & PTE_IW != 0;
            let next = ((pte >> 9) & 7) as u32;
            let size_log2 = match next {
                0 => Some(shift),
                7 => {
                    let addr = pte & ADDR;
                    let mut n = 12;
                    while n < 52 && addr & (1 << n) != 0 {
                        n += 1;
                    }
                    Some(n + 1)
                }
                n if n < level => {
                    // Skipped levels translate nothing: their index bits must be zero.
                    if !zero_between(iova, level_shift(n) + 9, shift) {
                        return self.fault(EVENT_IO_PAGE_FAULT, device, domain, rw, iova);
                    }
                    let child = pte & ADDR;
                    let span_log2 = (level_shift(n) + 9).min(63);
                    let entry = PdeEntry {
                        domain,
                        iova: iova >> span_log2 << span_log2,
                        span_log2,
                        level: n,
                        table: child,
                        read: r,
                        write: w,
                    };
                    if !self
                        .pde_cache
                        .iter()
                        .any(|p| p.domain == domain && p.level == n && p.iova == entry.iova)
                    {
                        self.pde_cache.push(entry);
                    }
                    level = n;
                    table = child;
                    continue;
                }
                _ => None,
            };
            let Some(size_log2) = size_log2.filter(|&s| s <= shift + 9 && s < 64) else {
                return self.fault(
                    EVENT_IO_PAGE_FAULT,
                    device,
                    domain,
                    rw | FLAG_PR | FLAG_RZ,
                    iova,
                );
            };
            let base = iova >> size_log2 << size_log2;
            let pa_base = (pte & ADDR) >> size_log2 << size_log2;
            let fc = pte & PTE_FC != 0;
            let at = table + index * 8;
            let granted = allowed(r && dir, w && diw);
            let dirty = pte & PTE_D != 0 || (write && had && granted);
            if dirty && pte & PTE_D == 0 {
                self.set_dirty(at);
            }
            self.iotlb.push(IotlbEntry {
                domain,
                device,
                pasid: None,
                iova: base,
                size_log2,
                pa: pa_base,
                read: r,
                write: w,
                fc,
                pte: at,
                dirty,
            });
            if !granted {
                return self.fault(
                    EVENT_IO_PAGE_FAULT,
                    device,
                    domain,
                    rw | FLAG_PR | FLAG_PE,
                    iova,
                );
            }
            return Ok(DmaOk {
                pa: pa_base + (iova - base),
                page_size_log2: size_log2,
                force_coherent: fc,
                domain,
                from_iotlb: false,
            });
        }
    }

    /// A request of `pasid` through the DTE's GCR3 table (see the module).
    fn translate_guest(
        &mut self,
        dte: [u64; 4],
        device: u16,
        pasid: u32,
        iova: u64,
        write: bool,
    ) -> Result<DmaOk, DmaFault> {
        let q0 = dte[0];
        let domain = dte[1] as u16;
        let rw = if write { FLAG_RW } else { 0 };
        let gn = FLAG_GN | rw;
        let (dir, diw) = (q0 & PTE_IR != 0, q0 & PTE_IW != 0);
        let mode = (q0 >> 9) & 7;
        let glx = (q0 >> 56) & 3;
        if mode != 0 || glx != 0 {
            return self.illegal_dte(device, domain, rw, iova);
        }
        let hit = self.iotlb.iter().copied().find(|e| {
            e.domain == domain
                && e.pasid == Some(pasid)
                && iova >= e.iova
                && iova - e.iova < (1u64 << e.size_log2)
        });
        let e = match hit {
            Some(e) => {
                self.stats.iotlb_hits += 1;
                e
            }
            None => {
                let gcr3 = ((q0 >> 58) & 0x7) << 12
                    | ((dte[1] >> 16) & 0xFFFF) << 15
                    | ((dte[1] >> 43) & 0x1F_FFFF) << 31;
                if pasid >= 512 {
                    return self.fault(EVENT_IO_PAGE_FAULT, device, pasid as u16, gn, iova);
                }
                let Some(entry) = self.mem.read_u64(gcr3 + u64::from(pasid) * 8) else {
                    return self.fault(EVENT_PAGE_TAB_HARDWARE_ERROR, device, domain, rw, iova);
                };
                if entry & 1 == 0 {
                    return self.fault_pasid(device, pasid, gn, iova);
                }
                self.stats.walks += 1;
                let cfg = walk::amdvi_v2::AmdV2Config {
                    root: PhysAddr::new(entry & ADDR),
                    levels: 4,
                    oas: 52,
                    no_execute: true,
                };
                let t = match walk::amdvi_v2::translate(
                    self.mem,
                    &cfg,
                    Iova::new(iova),
                    Access::READ,
                ) {
                    Ok(t) => t,
                    Err(_) => return self.fault_pasid(device, pasid, gn, iova),
                };
                let size = t.page_size_log2;
                let base = iova >> size << size;
                let e = IotlbEntry {
                    domain,
                    device,
                    pasid: Some(pasid),
                    iova: base,
                    size_log2: size,
                    pa: t.pa.get() - (iova - base),
                    read: t.read,
                    write: t.write,
                    fc: false,
                    pte: 0,
                    dirty: true,
                };
                self.iotlb.push(e);
                e
            }
        };
        let ok = if write { e.write && diw } else { e.read && dir };
        if !ok {
            return self.fault_pasid(device, pasid, gn | FLAG_PR | FLAG_PE, iova);
        }
        Ok(DmaOk {
            pa: e.pa + (iova - e.iova),
            page_size_log2: e.size_log2,
            force_coherent: false,
            domain,
            from_iotlb: hit.is_some(),
        })
    }

    /// Sets `D` in the leaf at `at` as the unit does (Host Dirty): an atomic read-modify-write,
    /// here a compare-and-swap loop, so that a driver's change of the leaf meanwhile (an unmap,
    /// a clearing dirty read) is never lost: a read then a plain write put an unmapped leaf
    /// back. A leaf no longer present is left alone (nothing to mark), a dirty one unchanged.
    fn set_dirty(&self, at: u64) {
        loop {
            let Some(v) = self.mem.read_u64(at) else {
                return;
            };
            if v & PTE_PR == 0 || v & PTE_D != 0 {
                return;
            }
            #[cfg(test)]
            crate::test_hooks::in_dirty_update();
            match self.mem.compare_exchange_u64(at, v, v | PTE_D) {
                Some(Err(_)) => continue,
                _ => return,
            }
        }
    }

    /// An IO_PAGE_FAULT of a guest request: `GN` set, the PASID in the domain/PASID field.
    fn fault_pasid(
        &mut self,
        device: u16,
        pasid: u32,
        flags: u64,
        address: u64,
    ) -> Result<DmaOk, DmaFault> {
        self.log_event([
            EVENT_IO_PAGE_FAULT << 60
                | flags << 48
                | u64::from(pasid & 0xFFFF) << 32
                | u64::from(pasid & 0xF_0000)
                | u64::from(device),
            address,
        ]);
        Err(DmaFault {
            event_code: EVENT_IO_PAGE_FAULT as u8,
            flags: flags as u16,
        })
    }
}
