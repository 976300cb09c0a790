//! The formats under test: how an arbitrary configuration is drawn, and how the fuzzer checks a
//! table of that format through its reference walker.
//!
//! What a format means (which permissions it can express, what hardware does to a leaf on a
//! write, which leaves start dirty) is written here from the specs, independently of the
//! encoders in `pgtable/`: VT-d rev 4.1 §9.8 (second stage: D is bit 9), §9.9 (first stage: D is
//! bit 6); Arm ARM D8.4.6 (hardware dirty state: with DBM set, a write clears AP\[2\] at stage 1
//! and sets S2AP\[1\] at stage 2); AMD IOMMU 48882 rev 3.10 §2.2.3 (v1: IW is bit 62, the
//! IOMMU sets A, bit 5, and D, bit 6, with the DTE's HAD) and §2.2.6 (v2: the x86-64 layout).

use std::vec::Vec;

use arbitrary::{Result, Unstructured};

use crate::mem::{Iova, PhysAddr};
use crate::pgtable::amdvi_v1::{AmdV1, AmdV1Config};
use crate::pgtable::amdvi_v2::{AmdV2, AmdV2Config};
use crate::pgtable::arm_s1::{self, ArmS1, ArmS1Config};
use crate::pgtable::arm_s2::{ArmS2, ArmS2Config, S2Attributes};
use crate::pgtable::vtd_fs::{VtdFs, VtdFsConfig};
use crate::pgtable::vtd_ss::{VtdSs, VtdSsConfig};
use crate::pgtable::{Format, Prot};
use crate::sim::walk::{self, Access, Fault, Translation};
use crate::sim::Arena;

/// What a reference walker reports for one leaf, reduced to what every format has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    /// Output address (of the translated byte, or of the leaf base for `walk_all`).
    pub pa: u64,
    /// Log2 of the leaf size.
    pub size_log2: u32,
    /// Reads allowed to the request.
    pub read: bool,
    /// Writes allowed to the request.
    pub write: bool,
}

fn seen<A>(t: &Translation<A>) -> Seen {
    Seen {
        pa: t.pa.get(),
        size_log2: t.page_size_log2,
        read: t.read,
        write: t.write,
    }
}

/// A privileged request that asks for nothing: the walk reports the rights without faulting.
const PROBE: Access = Access {
    read: false,
    write: false,
    exec: false,
    privileged: true,
};

/// One format configuration and the walker that checks it.
pub(super) trait Subject: Sized {
    /// The engine's format.
    type F: Format;
    /// An arbitrary configuration; `None` if the engine rejected it (checked not to panic).
    fn draw(u: &mut Unstructured<'_>) -> Result<Option<Self>>;
    /// The engine's format for it.
    fn format(&self) -> Self::F;
    /// Whether the format can express `prot` (the engine must refuse exactly the others).
    fn prot_ok(&self, prot: Prot) -> bool;
    /// (read, write) a privileged request gets from a leaf mapped with `prot`.
    fn rights(&self, prot: Prot) -> (bool, bool);
    /// Whether a leaf mapped with `prot` reads back as dirty before any device write.
    fn starts_dirty(&self, prot: Prot) -> bool;
    /// Whether the configuration enables hardware dirty tracking.
    fn dirty_tracking(&self) -> bool;
    /// The leaf `raw` after the device wrote through it, if hardware may write it (`None`: the
    /// write would fault or would not be recorded).
    fn device_write(&self, raw: u64) -> Option<u64>;
    /// One privileged lookup of `iova` in the table at `root`.
    fn translate(
        &self,
        mem: &Arena,
        root: PhysAddr,
        iova: u64,
    ) -> core::result::Result<Seen, Fault>;
    /// Every leaf: (base IOVA, leaf as an unprivileged request sees it).
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)>;
    /// How many table pages the walker reaches from `root`.
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize;
}

fn pick<T: Copy>(u: &mut Unstructured<'_>, from: &[T]) -> Result<T> {
    u.choose(from).copied()
}

// ---------------------------------------------------------------------------------------------
// VT-d second stage

pub(super) struct VtdSsSubject(VtdSsConfig);

impl VtdSsSubject {
    fn walker(&self, root: PhysAddr) -> walk::vtd_ss::VtdSsConfig {
        walk::vtd_ss::VtdSsConfig {
            root,
            levels: ((self.0.agaw - 12) / 9) as u8,
            haw: self.0.haw,
            large_2m: self.0.page_2m,
            large_1g: self.0.page_1g,
            snoop_control: self.0.snoop,
        }
    }
}

impl Subject for VtdSsSubject {
    type F = VtdSs;
    fn draw(u: &mut Unstructured<'_>) -> Result<Option<Self>> {
        let cfg = VtdSsConfig {
            agaw: pick(u, &[39, 48, 57, 30])?,
            haw: u.int_in_range(30..=53)?,
            page_2m: u.arbitrary()?,
            page_1g: u.arbitrary()?,
            snoop: u.arbitrary()?,
            dirty_tracking: u.arbitrary()?,
        };
        Ok(VtdSs::new(cfg).ok().map(|_| Self(cfg)))
    }
    fn format(&self) -> VtdSs {
        VtdSs::new(self.0).expect("accepted in draw")
    }
    fn prot_ok(&self, prot: Prot) -> bool {
        prot.intersects(Prot::READ | Prot::WRITE) && !prot.intersects(Prot::EXEC | Prot::PRIV)
    }
    fn rights(&self, prot: Prot) -> (bool, bool) {
        (prot.contains(Prot::READ), prot.contains(Prot::WRITE))
    }
    fn starts_dirty(&self, _prot: Prot) -> bool {
        false
    }
    fn dirty_tracking(&self) -> bool {
        self.0.dirty_tracking
    }
    fn device_write(&self, raw: u64) -> Option<u64> {
        // §9.8: W (bit 1) allows the write; with SSADE the unit sets A (8) and D (9).
        (raw & 2 != 0).then_some(raw | 1 << 8 | 1 << 9)
    }
    fn translate(
        &self,
        mem: &Arena,
        root: PhysAddr,
        iova: u64,
    ) -> core::result::Result<Seen, Fault> {
        walk::vtd_ss::translate(mem, &self.walker(root), Iova::new(iova), PROBE).map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::vtd_ss::walk_all(mem, &self.walker(root)).expect("walker: walk_all");
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::vtd_ss::table_pages(mem, &self.walker(root))
            .expect("walker: table_pages")
            .len()
    }
}

// ---------------------------------------------------------------------------------------------
// VT-d first stage

pub(super) struct VtdFsSubject(VtdFsConfig);

impl VtdFsSubject {
    fn walker(&self, root: PhysAddr) -> walk::vtd_fs::VtdFsConfig {
        walk::vtd_fs::VtdFsConfig {
            root,
            levels: self.0.levels as u8,
            haw: self.0.haw,
            large_1g: self.0.page_1g,
            execute_disable: self.0.execute_disable,
            write_protect: true,
            smep: false,
        }
    }
}

impl Subject for VtdFsSubject {
    type F = VtdFs;
    fn draw(u: &mut Unstructured<'_>) -> Result<Option<Self>> {
        let cfg = VtdFsConfig {
            levels: pick(u, &[4, 5, 3])?,
            haw: u.int_in_range(30..=53)?,
            page_1g: u.arbitrary()?,
            execute_disable: u.arbitrary()?,
            dirty_tracking: u.arbitrary()?,
        };
        Ok(VtdFs::new(cfg).ok().map(|_| Self(cfg)))
    }
    fn format(&self) -> VtdFs {
        VtdFs::new(self.0).expect("accepted in draw")
    }
    fn prot_ok(&self, prot: Prot) -> bool {
        // A present x86 entry always allows reads.
        prot.contains(Prot::READ)
    }
    fn rights(&self, prot: Prot) -> (bool, bool) {
        // Supervisor with CR0.WP: writes need R/W in every entry.
        (true, prot.contains(Prot::WRITE))
    }
    fn starts_dirty(&self, _prot: Prot) -> bool {
        false
    }
    fn dirty_tracking(&self) -> bool {
        self.0.dirty_tracking
    }
    fn device_write(&self, raw: u64) -> Option<u64> {
        // §9.9: R/W (bit 1) allows the write; the unit sets A (5) and D (6).
        (raw & 2 != 0).then_some(raw | 1 << 5 | 1 << 6)
    }
    fn translate(
        &self,
        mem: &Arena,
        root: PhysAddr,
        iova: u64,
    ) -> core::result::Result<Seen, Fault> {
        walk::vtd_fs::translate(mem, &self.walker(root), Iova::new(iova), PROBE).map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::vtd_fs::walk_all(mem, &self.walker(root)).expect("walker: walk_all");
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::vtd_fs::table_pages(mem, &self.walker(root))
            .expect("walker: table_pages")
            .len()
    }
}

// ---------------------------------------------------------------------------------------------
// AMD-Vi v1 and v2

pub(super) struct AmdV1Subject(AmdV1Config);

impl Subject for AmdV1Subject {
    type F = AmdV1;
    fn draw(u: &mut Unstructured<'_>) -> Result<Option<Self>> {
        // Below 23 bits the fuzzer's 4 MiB window does not fit; 64 and 12 are refused.
        let ias = if u.arbitrary()? {
            pick(u, &[30, 39, 48, 57, 63, 64, 12])?
        } else {
            u.int_in_range(23..=64)?
        };
        let cfg = AmdV1Config {
            ias,
            oas: u.int_in_range(30..=53)?,
            large_pages: u.arbitrary()?,
            force_coherent: u.arbitrary()?,
            dirty_tracking: u.arbitrary()?,
        };
        Ok(AmdV1::new(cfg).ok().map(|_| Self(cfg)))
    }
    fn format(&self) -> AmdV1 {
        AmdV1::new(self.0).expect("accepted in draw")
    }
    fn prot_ok(&self, prot: Prot) -> bool {
        // IR and IW only: no execute or privilege permission in a v1 PTE.
        prot.intersects(Prot::READ | Prot::WRITE) && !prot.intersects(Prot::EXEC | Prot::PRIV)
    }
    fn rights(&self, prot: Prot) -> (bool, bool) {
        (prot.contains(Prot::READ), prot.contains(Prot::WRITE))
    }
    fn starts_dirty(&self, _prot: Prot) -> bool {
        false
    }
    fn dirty_tracking(&self) -> bool {
        self.0.dirty_tracking
    }
    fn device_write(&self, raw: u64) -> Option<u64> {
        // IW (bit 62) allows the write; with HAD the IOMMU sets A (5) and D (6).
        (raw & 1 << 62 != 0).then_some(raw | 1 << 5 | 1 << 6)
    }
    fn translate(
        &self,
        mem: &Arena,
        root: PhysAddr,
        iova: u64,
    ) -> core::result::Result<Seen, Fault> {
        walk::amdvi_v1::translate(mem, &self.walker(root), Iova::new(iova), PROBE).map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::amdvi_v1::walk_all(mem, &self.walker(root)).expect("walker: walk_all");
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::amdvi_v1::table_pages(mem, &self.walker(root))
            .expect("walker: table_pages")
            .len()
    }
}

impl AmdV1Subject {
    fn walker(&self, root: PhysAddr) -> walk::amdvi_v1::AmdV1Config {
        walk::amdvi_v1::AmdV1Config {
            root,
            mode: self.format().mode() as u8,
            oas: self.0.oas,
        }
    }
}

pub(super) struct AmdV2Subject(AmdV2Config);

impl AmdV2Subject {
    fn walker(&self, root: PhysAddr) -> walk::amdvi_v2::AmdV2Config {
        walk::amdvi_v2::AmdV2Config {
            root,
            levels: self.0.levels as u8,
            oas: self.0.oas,
            no_execute: self.0.execute_disable,
        }
    }
}

impl Subject for AmdV2Subject {
    type F = AmdV2;
    fn draw(u: &mut Unstructured<'_>) -> Result<Option<Self>> {
        let cfg = AmdV2Config {
            levels: pick(u, &[4, 5, 3])?,
            oas: u.int_in_range(30..=53)?,
            execute_disable: u.arbitrary()?,
            dirty_tracking: u.arbitrary()?,
        };
        Ok(AmdV2::new(cfg).ok().map(|_| Self(cfg)))
    }
    fn format(&self) -> AmdV2 {
        AmdV2::new(self.0).expect("accepted in draw")
    }
    fn prot_ok(&self, prot: Prot) -> bool {
        // A present x86 entry always allows reads.
        prot.contains(Prot::READ)
    }
    fn rights(&self, prot: Prot) -> (bool, bool) {
        // Supervisor requests, writes checked against R/W in every entry.
        (true, prot.contains(Prot::WRITE))
    }
    fn starts_dirty(&self, _prot: Prot) -> bool {
        false
    }
    fn dirty_tracking(&self) -> bool {
        self.0.dirty_tracking
    }
    fn device_write(&self, raw: u64) -> Option<u64> {
        // R/W (bit 1) allows the write; the IOMMU sets A (5) and D (6).
        (raw & 2 != 0).then_some(raw | 1 << 5 | 1 << 6)
    }
    fn translate(
        &self,
        mem: &Arena,
        root: PhysAddr,
        iova: u64,
    ) -> core::result::Result<Seen, Fault> {
        walk::amdvi_v2::translate(mem, &self.walker(root), Iova::new(iova), PROBE).map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::amdvi_v2::walk_all(mem, &self.walker(root)).expect("walker: walk_all");
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::amdvi_v2::table_pages(mem, &self.walker(root))
            .expect("walker: table_pages")
            .len()
    }
}

// ---------------------------------------------------------------------------------------------
// Arm stage 2 and stage 1

fn granule(log2: u32) -> walk::arm::Granule {
    match log2 {
        12 => walk::arm::Granule::K4,
        14 => walk::arm::Granule::K16,
        _ => walk::arm::Granule::K64,
    }
}

/// DBM (bit 51): the descriptor's write permission is managed by hardware dirty tracking.
const DBM: u64 = 1 << 51;
/// Bit 7: S2AP\[1\] (write) at stage 2, AP\[2\] (read-only) at stage 1.
const AP_BIT7: u64 = 1 << 7;

pub(super) struct ArmS2Subject(ArmS2Config);

impl ArmS2Subject {
    /// A configuration with the given granule.
    pub(super) fn draw_granule(
        u: &mut Unstructured<'_>,
        granule_log2: u32,
    ) -> Result<Option<Self>> {
        let attributes = pick(
            u,
            &[
                S2Attributes::NonCoherent,
                S2Attributes::WriteBack,
                S2Attributes::ForcedWriteBack,
            ],
        )?;
        let cfg = ArmS2Config {
            granule_log2,
            ias: u.int_in_range(31..=53)?,
            oas: pick(u, &[32, 36, 40, 42, 44, 48, 52, 46])?,
            blocks: u.arbitrary()?,
            attributes,
            dirty_tracking: u.arbitrary()?,
            bbml2: u.arbitrary()?,
        };
        Ok(ArmS2::new(cfg).ok().map(|_| Self(cfg)))
    }

    fn walker(&self, root: PhysAddr) -> walk::arm_s2::ArmS2Config {
        let f = self.format();
        walk::arm_s2::ArmS2Config {
            ttb: root,
            granule: granule(self.0.granule_log2),
            t0sz: f.t0sz() as u8,
            sl0: f.sl0() as u8,
            oas: self.0.oas,
            fwb: self.0.attributes == S2Attributes::ForcedWriteBack,
            xnx: false,
            hardware_access_flag: false,
            hardware_dirty: self.0.dirty_tracking,
            strict_res0: true,
        }
    }
}

impl Subject for ArmS2Subject {
    type F = ArmS2;
    fn draw(u: &mut Unstructured<'_>) -> Result<Option<Self>> {
        let granule_log2 = pick(u, &[12, 14, 16])?;
        Self::draw_granule(u, granule_log2)
    }
    fn format(&self) -> ArmS2 {
        ArmS2::new(self.0).expect("accepted in draw")
    }
    fn prot_ok(&self, prot: Prot) -> bool {
        prot.intersects(Prot::READ | Prot::WRITE) && !prot.contains(Prot::PRIV)
    }
    fn rights(&self, prot: Prot) -> (bool, bool) {
        (prot.contains(Prot::READ), prot.contains(Prot::WRITE))
    }
    fn starts_dirty(&self, prot: Prot) -> bool {
        // A writable leaf is mapped with S2AP[1] set: writable, hence dirty, from the start.
        self.0.dirty_tracking && prot.contains(Prot::WRITE)
    }
    fn dirty_tracking(&self) -> bool {
        self.0.dirty_tracking
    }
    fn device_write(&self, raw: u64) -> Option<u64> {
        // D8.4.6: writable, or DBM lets hardware make it writable by setting S2AP[1].
        (raw & (AP_BIT7 | DBM) != 0).then_some(raw | AP_BIT7)
    }
    fn translate(
        &self,
        mem: &Arena,
        root: PhysAddr,
        iova: u64,
    ) -> core::result::Result<Seen, Fault> {
        walk::arm_s2::translate(mem, &self.walker(root), Iova::new(iova), PROBE).map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::arm_s2::walk_all(mem, &self.walker(root)).expect("walker: walk_all");
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::arm_s2::table_pages(mem, &self.walker(root))
            .expect("walker: table_pages")
            .len()
    }
}

pub(super) struct ArmS1Subject(ArmS1Config);

impl ArmS1Subject {
    fn walker(&self, root: PhysAddr) -> walk::arm_s1::ArmS1Config {
        walk::arm_s1::ArmS1Config {
            ttb: root,
            granule: granule(self.0.granule_log2),
            t0sz: (64 - self.0.ias) as u8,
            oas: self.0.oas,
            mair: arm_s1::MAIR,
            hierarchical_permissions: true,
            wxn: false,
            hardware_access_flag: false,
            hardware_dirty: self.0.dirty_tracking,
            strict_res0: true,
        }
    }
}

impl ArmS1Subject {
    /// A configuration with the given granule.
    pub(super) fn draw_granule(
        u: &mut Unstructured<'_>,
        granule_log2: u32,
    ) -> Result<Option<Self>> {
        let cfg = ArmS1Config {
            granule_log2,
            ias: u.int_in_range(31..=53)?,
            oas: pick(u, &[32, 36, 40, 42, 44, 48, 52, 46])?,
            blocks: u.arbitrary()?,
            coherent: u.arbitrary()?,
            dirty_tracking: u.arbitrary()?,
            bbml2: u.arbitrary()?,
        };
        Ok(ArmS1::new(cfg).ok().map(|_| Self(cfg)))
    }
}

impl Subject for ArmS1Subject {
    type F = ArmS1;
    fn draw(u: &mut Unstructured<'_>) -> Result<Option<Self>> {
        let granule_log2 = pick(u, &[12, 14, 16, 13])?;
        Self::draw_granule(u, granule_log2)
    }
    fn format(&self) -> ArmS1 {
        ArmS1::new(self.0).expect("accepted in draw")
    }
    fn prot_ok(&self, prot: Prot) -> bool {
        // AP[2:1] has no write-only or no-access encoding for a valid descriptor.
        prot.contains(Prot::READ)
    }
    fn rights(&self, prot: Prot) -> (bool, bool) {
        // EL1 can always read a valid page; it writes where AP[2] is clear (or DBM with HD).
        (true, prot.contains(Prot::WRITE))
    }
    fn starts_dirty(&self, prot: Prot) -> bool {
        // A writable leaf is mapped with AP[2] clear: writable, hence dirty, from the start.
        self.0.dirty_tracking && prot.contains(Prot::WRITE)
    }
    fn dirty_tracking(&self) -> bool {
        self.0.dirty_tracking
    }
    fn device_write(&self, raw: u64) -> Option<u64> {
        // D8.4.6: writable (AP[2] clear), or DBM lets hardware clear AP[2].
        (raw & AP_BIT7 == 0 || raw & DBM != 0).then_some(raw & !AP_BIT7)
    }
    fn translate(
        &self,
        mem: &Arena,
        root: PhysAddr,
        iova: u64,
    ) -> core::result::Result<Seen, Fault> {
        walk::arm_s1::translate(mem, &self.walker(root), Iova::new(iova), PROBE).map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::arm_s1::walk_all(mem, &self.walker(root)).expect("walker: walk_all");
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::arm_s1::table_pages(mem, &self.walker(root))
            .expect("walker: table_pages")
            .len()
    }
}
