//! Conformance of the page-table engine: every format x configuration, checked through the
//! independent reference walkers of `sim::walk` over the `sim::Arena`.
//!
//! For each configuration: every page size maps and translates at IOVA 0 and at the top of the
//! input range with the output address at the top of the output range; every argument error is
//! typed and leaves memory untouched; a partial superpage unmap splits or refuses; unmapping
//! everything leaves only the root, with pages held until the gather is released and no bad
//! free; random sequences match a `BTreeMap` model; a non-coherent walker was told about every
//! word written.

use std::collections::BTreeMap;

use iommu_engine::mem::{Iova, PhysAddr, WalkerCoherency};
use iommu_engine::pgtable::amdvi_v1::{AmdV1, AmdV1Config};
use iommu_engine::pgtable::amdvi_v2::{AmdV2, AmdV2Config};
use iommu_engine::pgtable::arm_s1::{self, ArmS1, ArmS1Config};
use iommu_engine::pgtable::arm_s2::{ArmS2, ArmS2Config, S2Attributes};
use iommu_engine::pgtable::vtd_fs::{VtdFs, VtdFsConfig};
use iommu_engine::pgtable::vtd_ss::{VtdSs, VtdSsConfig};
use iommu_engine::pgtable::{
    Error, Format, Gather, InvalidationComplete, IovaRange, PageTable, Prot, SplitPolicy,
};
use iommu_engine::sim::arena::{Arena, ArenaConfig, Snapshot};
use iommu_engine::sim::walk::arm::Shareability;
use iommu_engine::sim::walk::{self, Access, Fault};

/// What a reference walker reports for one leaf, reduced to what every format has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    pa: u64,
    size_log2: u32,
    read: bool,
    write: bool,
}

/// One format configuration under test, with the walker that checks it.
trait Case {
    type F: Format + Copy;
    fn name(&self) -> String;
    fn format(&self) -> Self::F;
    /// Translates a read of `iova`; `Err` carries the walker's fault.
    fn translate(&self, mem: &Arena, root: PhysAddr, iova: u64) -> Result<Seen, Fault>;
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)>;
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize;
    /// Checks the format-specific attributes of the leaf at `iova` (snoop, memory type).
    fn check_attributes(&self, mem: &Arena, root: PhysAddr, iova: u64);
    /// The walker's view of the leaf at `iova`: (unprivileged read, privileged read,
    /// unprivileged execute).
    fn views(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool, bool);
    /// The walker's view of the leaf at `iova`: (carries the contiguous hint, is dirty).
    fn hint_and_dirty(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool);
    /// The memory type the walker reports for the leaf at `iova`.
    fn memory_type(&self, mem: &Arena, root: PhysAddr, iova: u64) -> MemView;
    /// What a [`Prot::MMIO`] leaf must look like to the walker (and a leaf without it).
    fn mmio_view(&self) -> (MemView, MemView) {
        (MemView::Device, MemView::Normal)
    }
    /// Permissions the format can express for a read-write mapping.
    fn rw(&self) -> Prot {
        Prot::READ | Prot::WRITE
    }
}

/// A leaf's memory type as the walker reports it, reduced to what the formats tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemView {
    /// Arm Device-nGnRE; x86 UC (PAT index 3).
    Device,
    /// Normal memory (Arm), write-back (x86 PAT index 0).
    Normal,
    /// VT-d second stage: `EMT` = UC, `IPAT` clear, which the unit uses only with `EMTE`: the
    /// platform's address decoding gives the access its type.
    Platform,
}

fn seen<A>(t: &walk::Translation<A>) -> Seen {
    Seen {
        pa: t.pa.get(),
        size_log2: t.page_size_log2,
        read: t.read,
        write: t.write,
    }
}

// ---------------------------------------------------------------------------------------------
// the formats

struct VtdSsCase(VtdSsConfig);

impl VtdSsCase {
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

impl Case for VtdSsCase {
    fn hint_and_dirty(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool) {
        let t = walk::vtd_ss::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        (false, t.attrs.dirty)
    }
    type F = VtdSs;
    fn name(&self) -> String {
        format!(
            "vtd-ss agaw{} snoop={} sllps=({},{})",
            self.0.agaw, self.0.snoop, self.0.page_2m, self.0.page_1g
        )
    }
    fn format(&self) -> VtdSs {
        VtdSs::new(self.0).unwrap()
    }
    fn translate(&self, mem: &Arena, root: PhysAddr, iova: u64) -> Result<Seen, Fault> {
        walk::vtd_ss::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::vtd_ss::walk_all(mem, &self.walker(root)).unwrap();
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::vtd_ss::table_pages(mem, &self.walker(root))
            .unwrap()
            .len()
    }
    fn check_attributes(&self, mem: &Arena, root: PhysAddr, iova: u64) {
        let t = walk::vtd_ss::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        assert_eq!(t.attrs.snoop, self.0.snoop, "{}: SNP in leaf", self.name());
        assert!(!t.exec, "{}: no execute", self.name());
    }
    fn views(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool, bool) {
        let t = walk::vtd_ss::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        (t.read, t.read, t.exec)
    }
    fn memory_type(&self, mem: &Arena, root: PhysAddr, iova: u64) -> MemView {
        let t = walk::vtd_ss::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        assert_eq!((t.attrs.emt, t.attrs.ipat), (0, false), "{}", self.name());
        MemView::Platform
    }
    fn mmio_view(&self) -> (MemView, MemView) {
        (MemView::Platform, MemView::Platform)
    }
}

struct VtdFsCase(VtdFsConfig);

impl VtdFsCase {
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

impl Case for VtdFsCase {
    fn hint_and_dirty(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool) {
        let t = walk::vtd_fs::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        (false, t.attrs.dirty)
    }
    type F = VtdFs;
    fn name(&self) -> String {
        format!("vtd-fs levels{} 1g={}", self.0.levels, self.0.page_1g)
    }
    fn format(&self) -> VtdFs {
        VtdFs::new(self.0).unwrap()
    }
    fn translate(&self, mem: &Arena, root: PhysAddr, iova: u64) -> Result<Seen, Fault> {
        walk::vtd_fs::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::vtd_fs::walk_all(mem, &self.walker(root)).unwrap();
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::vtd_fs::table_pages(mem, &self.walker(root))
            .unwrap()
            .len()
    }
    fn check_attributes(&self, mem: &Arena, root: PhysAddr, iova: u64) {
        let t = walk::vtd_fs::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        let name = self.name();
        assert!(
            t.attrs.user.read && t.attrs.user.write,
            "{name}: U/S and R/W"
        );
        assert!(t.attrs.supervisor.write, "{name}: supervisor R/W");
        assert_eq!(t.attrs.user.exec, !self.0.execute_disable, "{name}: XD");
        assert!(t.attrs.accessed, "{name}: A set by the engine");
        // D is preset on writable leaves unless the walker is to report writes.
        assert_eq!(t.attrs.dirty, !self.0.dirty_tracking, "{name}: D");
    }
    fn views(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool, bool) {
        // A privileged read reaches every leaf; the attributes tell both privileges apart.
        let read = Access::READ.privileged();
        let t = walk::vtd_fs::translate(mem, &self.walker(root), Iova::new(iova), read).unwrap();
        (
            t.attrs.user.read,
            t.attrs.supervisor.read,
            t.attrs.user.exec,
        )
    }
    fn memory_type(&self, mem: &Arena, root: PhysAddr, iova: u64) -> MemView {
        let read = Access::READ.privileged();
        let t = walk::vtd_fs::translate(mem, &self.walker(root), Iova::new(iova), read).unwrap();
        match t.attrs.pat_index {
            0 => MemView::Normal,
            3 => MemView::Device,
            other => panic!("{}: PAT index {other}", self.name()),
        }
    }
}

struct AmdV1Case(AmdV1Config);

impl AmdV1Case {
    fn walker(&self, root: PhysAddr) -> walk::amdvi_v1::AmdV1Config {
        walk::amdvi_v1::AmdV1Config {
            root,
            mode: AmdV1::new(self.0).unwrap().mode() as u8,
            oas: self.0.oas,
        }
    }

    fn read(
        &self,
        mem: &Arena,
        root: PhysAddr,
        iova: u64,
    ) -> walk::Translation<walk::amdvi_v1::AmdV1Attrs> {
        walk::amdvi_v1::translate(mem, &self.walker(root), Iova::new(iova), Access::READ).unwrap()
    }
}

impl Case for AmdV1Case {
    type F = AmdV1;
    fn name(&self) -> String {
        let c = &self.0;
        format!(
            "amdvi-v1 ias{} oas{} large={} fc={} dirty={}",
            c.ias, c.oas, c.large_pages, c.force_coherent, c.dirty_tracking
        )
    }
    fn format(&self) -> AmdV1 {
        AmdV1::new(self.0).unwrap()
    }
    fn translate(&self, mem: &Arena, root: PhysAddr, iova: u64) -> Result<Seen, Fault> {
        walk::amdvi_v1::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::amdvi_v1::walk_all(mem, &self.walker(root)).unwrap();
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::amdvi_v1::table_pages(mem, &self.walker(root))
            .unwrap()
            .len()
    }
    fn check_attributes(&self, mem: &Arena, root: PhysAddr, iova: u64) {
        let t = self.read(mem, root, iova);
        let name = self.name();
        assert_eq!(t.attrs.force_coherent, self.0.force_coherent, "{name}: FC");
        assert!(!t.attrs.u && !t.exec, "{name}: U clear, no execute");
    }
    fn views(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool, bool) {
        let t = self.read(mem, root, iova);
        (t.read, t.read, t.exec)
    }
    fn hint_and_dirty(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool) {
        let t = self.read(mem, root, iova);
        (t.attrs.size_encoded, t.attrs.dirty)
    }
    fn memory_type(&self, _mem: &Arena, _root: PhysAddr, _iova: u64) -> MemView {
        // A v1 PTE carries no memory type.
        MemView::Platform
    }
    fn mmio_view(&self) -> (MemView, MemView) {
        (MemView::Platform, MemView::Platform)
    }
}

struct AmdV2Case(AmdV2Config);

impl AmdV2Case {
    fn walker(&self, root: PhysAddr) -> walk::amdvi_v2::AmdV2Config {
        walk::amdvi_v2::AmdV2Config {
            root,
            levels: self.0.levels as u8,
            oas: self.0.oas,
            no_execute: self.0.execute_disable,
        }
    }

    fn read(
        &self,
        mem: &Arena,
        root: PhysAddr,
        iova: u64,
    ) -> walk::Translation<walk::amdvi_v2::AmdV2Attrs> {
        // A privileged read reaches every leaf; the attributes tell both privileges apart.
        let read = Access::READ.privileged();
        walk::amdvi_v2::translate(mem, &self.walker(root), Iova::new(iova), read).unwrap()
    }
}

impl Case for AmdV2Case {
    type F = AmdV2;
    fn name(&self) -> String {
        let c = &self.0;
        format!(
            "amdvi-v2 levels{} oas{} nx={} dirty={}",
            c.levels, c.oas, c.execute_disable, c.dirty_tracking
        )
    }
    fn format(&self) -> AmdV2 {
        AmdV2::new(self.0).unwrap()
    }
    fn translate(&self, mem: &Arena, root: PhysAddr, iova: u64) -> Result<Seen, Fault> {
        walk::amdvi_v2::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::amdvi_v2::walk_all(mem, &self.walker(root)).unwrap();
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::amdvi_v2::table_pages(mem, &self.walker(root))
            .unwrap()
            .len()
    }
    fn check_attributes(&self, mem: &Arena, root: PhysAddr, iova: u64) {
        let t = self.read(mem, root, iova);
        let name = self.name();
        assert!(
            t.attrs.user.read && t.attrs.user.write,
            "{name}: U/S and R/W"
        );
        assert_eq!(t.attrs.user.exec, !self.0.execute_disable, "{name}: NX");
        assert!(t.attrs.accessed, "{name}: A set by the engine");
        assert_eq!(t.attrs.dirty, !self.0.dirty_tracking, "{name}: D");
    }
    fn views(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool, bool) {
        let t = self.read(mem, root, iova);
        (
            t.attrs.user.read,
            t.attrs.supervisor.read,
            t.attrs.user.exec,
        )
    }
    fn hint_and_dirty(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool) {
        (false, self.read(mem, root, iova).attrs.dirty)
    }
    fn memory_type(&self, mem: &Arena, root: PhysAddr, iova: u64) -> MemView {
        match self.read(mem, root, iova).attrs.pat_index {
            0 => MemView::Normal,
            3 => MemView::Device,
            other => panic!("{}: PAT index {other}", self.name()),
        }
    }
}

fn granule(log2: u32) -> walk::arm::Granule {
    match log2 {
        12 => walk::arm::Granule::K4,
        14 => walk::arm::Granule::K16,
        _ => walk::arm::Granule::K64,
    }
}

struct ArmS2Case(ArmS2Config);

impl ArmS2Case {
    fn walker(&self, root: PhysAddr) -> walk::arm_s2::ArmS2Config {
        let f = ArmS2::new(self.0).unwrap();
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

impl Case for ArmS2Case {
    fn hint_and_dirty(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool) {
        let t = walk::arm_s2::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        (t.attrs.contiguous, t.attrs.dbm && t.attrs.s2ap_write)
    }
    type F = ArmS2;
    fn name(&self) -> String {
        let f = ArmS2::new(self.0).unwrap();
        format!(
            "arm-s2 {}K ias{} oas{} {:?} start{} x{}",
            1 << (self.0.granule_log2 - 10),
            self.0.ias,
            self.0.oas,
            self.0.attributes,
            f.start_level(),
            f.concatenated()
        )
    }
    fn format(&self) -> ArmS2 {
        ArmS2::new(self.0).unwrap()
    }
    fn translate(&self, mem: &Arena, root: PhysAddr, iova: u64) -> Result<Seen, Fault> {
        walk::arm_s2::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::arm_s2::walk_all(mem, &self.walker(root)).unwrap();
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::arm_s2::table_pages(mem, &self.walker(root))
            .unwrap()
            .len()
    }
    fn check_attributes(&self, mem: &Arena, root: PhysAddr, iova: u64) {
        use walk::arm::{Cacheability, MemType};
        let t = walk::arm_s2::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        let wb = MemType::Normal {
            inner: Cacheability::WriteBack,
            outer: Cacheability::WriteBack,
        };
        let nc = MemType::Normal {
            inner: Cacheability::NonCacheable,
            outer: Cacheability::NonCacheable,
        };
        let want = match self.0.attributes {
            S2Attributes::NonCoherent => nc,
            S2Attributes::WriteBack | S2Attributes::ForcedWriteBack => wb,
        };
        let name = self.name();
        assert_eq!(t.attrs.mem_type, want, "{name}: memory type");
        let (memattr, sh) = match self.0.attributes {
            S2Attributes::NonCoherent => (0b0101, Shareability::Outer),
            S2Attributes::WriteBack => (0b1111, Shareability::Inner),
            S2Attributes::ForcedWriteBack => (0b0110, Shareability::Inner),
        };
        assert_eq!(
            (t.attrs.memattr, t.attrs.shareability),
            (memattr, sh),
            "{name}"
        );
        assert!(t.attrs.accessed, "{name}: AF");
        assert!(!t.exec && !t.attrs.privileged_exec, "{name}: XN");
        assert_eq!(t.attrs.dbm, self.0.dirty_tracking, "{name}: DBM");
    }
    fn views(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool, bool) {
        let t = walk::arm_s2::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        (t.read, t.read, t.exec)
    }
    fn memory_type(&self, mem: &Arena, root: PhysAddr, iova: u64) -> MemView {
        let t = walk::arm_s2::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        arm_view(t.attrs.mem_type, t.attrs.shareability, &self.name())
    }
}

struct ArmS1Case(ArmS1Config);

impl ArmS1Case {
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

impl Case for ArmS1Case {
    fn hint_and_dirty(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool) {
        let t = walk::arm_s1::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        (t.attrs.contiguous, t.attrs.dbm && !t.attrs.read_only)
    }
    type F = ArmS1;
    fn name(&self) -> String {
        format!(
            "arm-s1 {}K ias{} oas{}",
            1 << (self.0.granule_log2 - 10),
            self.0.ias,
            self.0.oas
        )
    }
    fn format(&self) -> ArmS1 {
        ArmS1::new(self.0).unwrap()
    }
    fn translate(&self, mem: &Arena, root: PhysAddr, iova: u64) -> Result<Seen, Fault> {
        walk::arm_s1::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .map(|t| seen(&t))
    }
    fn walk_all(&self, mem: &Arena, root: PhysAddr) -> Vec<(u64, Seen)> {
        let all = walk::arm_s1::walk_all(mem, &self.walker(root)).unwrap();
        all.iter().map(|(i, t)| (i.get(), seen(t))).collect()
    }
    fn table_pages(&self, mem: &Arena, root: PhysAddr) -> usize {
        walk::arm_s1::table_pages(mem, &self.walker(root))
            .unwrap()
            .len()
    }
    fn check_attributes(&self, mem: &Arena, root: PhysAddr, iova: u64) {
        use walk::arm::{Cacheability, MemType};
        let t = walk::arm_s1::translate(mem, &self.walker(root), Iova::new(iova), Access::READ)
            .unwrap();
        let want = if self.0.coherent {
            MemType::Normal {
                inner: Cacheability::WriteBack,
                outer: Cacheability::WriteBack,
            }
        } else {
            MemType::Normal {
                inner: Cacheability::NonCacheable,
                outer: Cacheability::NonCacheable,
            }
        };
        let name = self.name();
        assert_eq!(t.attrs.mem_type, want, "{name}: memory type");
        let sh = if self.0.coherent {
            Shareability::Inner
        } else {
            Shareability::Outer
        };
        assert_eq!(t.attrs.shareability, sh, "{name}: SH");
        assert!(t.attrs.accessed && t.attrs.not_global, "{name}: AF, nG");
        assert!(
            t.attrs.unprivileged.write && t.attrs.privileged.write,
            "{name}: AP"
        );
        assert!(
            !t.attrs.unprivileged.exec && !t.attrs.privileged.exec,
            "{name}: XN"
        );
        assert_eq!(t.attrs.dbm, self.0.dirty_tracking, "{name}: DBM");
    }
    fn views(&self, mem: &Arena, root: PhysAddr, iova: u64) -> (bool, bool, bool) {
        // A privileged read reaches every leaf; the attributes tell both privileges apart.
        let read = Access::READ.privileged();
        let t = walk::arm_s1::translate(mem, &self.walker(root), Iova::new(iova), read).unwrap();
        let a = t.attrs;
        (a.unprivileged.read, a.privileged.read, a.unprivileged.exec)
    }
    fn memory_type(&self, mem: &Arena, root: PhysAddr, iova: u64) -> MemView {
        let read = Access::READ.privileged();
        let t = walk::arm_s1::translate(mem, &self.walker(root), Iova::new(iova), read).unwrap();
        arm_view(t.attrs.mem_type, t.attrs.shareability, &self.name())
    }
}

/// Device-nGnRE (Outer Shareable, as Device memory always is) or Normal.
fn arm_view(m: walk::arm::MemType, sh: Shareability, name: &str) -> MemView {
    use walk::arm::{DeviceType, MemType};
    match m {
        MemType::Device(DeviceType::NGnRE) => {
            assert_eq!(sh, Shareability::Outer, "{name}: SH of a Device leaf");
            MemView::Device
        }
        MemType::Normal { .. } => MemView::Normal,
        other => panic!("{name}: memory type {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// the conformance checks, written once

fn arena(oas: u32) -> Arena {
    // Table pages live high in the output range, so PA != VA and wide addresses are exercised.
    let base = (1u64 << oas.min(48)) - (1 << 30);
    Arena::new(ArenaConfig {
        base_pa: base,
        capacity: 64 << 20,
    })
    .unwrap()
}

fn done() -> InvalidationComplete {
    // SAFETY: no hardware walks these tables.
    unsafe { InvalidationComplete::assume() }
}

fn run<C: Case>(case: &C) {
    every_page_size_at_the_edges(case);
    errors_are_typed_and_change_nothing(case);
    partial_superpage_unmap(case);
    unmap_everything_leaves_the_root(case);
    random_sequences_match_a_model(case);
    block_sequences_match_a_model(case);
    non_coherent_walker_sees_every_write(case);
    contiguous_runs(case);
    dirty_state(case);
    maps_under_tracking_write_clean_leaves(case);
    privilege_and_execute(case);
    device_memory(case);
    leaf_templates(case);
    present_mask(case);
    table_masks_and_run_bits(case);
    unmaps_with_holes_gather_exactly(case);
    maps_over_one_mapped_entry_change_nothing(case);
    whole_runs_name_their_page_size(case);
}

/// Where a format decodes table entries with a mask (`Format::table_address_mask`, with which
/// the fast paths' descent decodes each level), the mask gives `table_address`, and the table
/// address, for every table entry the engine writes: low and high table addresses below the
/// output size, with and without the split mark. Where a hint bit makes the runs
/// (`Format::contiguous_bit`, which the unmap paths clear with an atomic AND to break a run),
/// no table entry carries it and a run's leaf stands alone once it is cleared
/// (`leaf_out_of_run`).
fn table_masks_and_run_bits<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let granule = 1u64 << g.granule_log2;
    let top = ((1u64 << g.oas) - granule) & !(granule - 1);
    let tables = [granule, (top / 3) & !(granule - 1), top];
    let bit = f.contiguous_bit();
    for level in 1..g.levels {
        for pa in tables {
            for mark in [0, f.split_table_bit()] {
                let raw = f.encode_table(level, PhysAddr::new(pa)) | mark;
                assert_eq!(
                    f.table_address(raw).get(),
                    pa,
                    "{}: table at {pa:#x}",
                    case.name()
                );
                if let Some(mask) = f.table_address_mask() {
                    assert_eq!(
                        raw & mask,
                        pa,
                        "{}: table at {pa:#x} by the mask {mask:#x}",
                        case.name()
                    );
                }
                assert_eq!(
                    raw & bit,
                    0,
                    "{}: table entry {raw:#x} carries the run bit",
                    case.name()
                );
            }
        }
    }
    if bit == 0 {
        return;
    }
    for level in (0..g.levels).filter(|&l| g.leaf_allowed(l)) {
        let n_log2 = f.contiguous_log2(level);
        if n_log2 == 0 {
            continue;
        }
        let shift = g.level_shift(level);
        let run_pa = PhysAddr::new(1u64 << (shift + n_log2));
        for index in [0, (1usize << n_log2) - 1] {
            let leaf = f.encode_run_leaf(level, run_pa, n_log2, index, case.rw());
            let pa = PhysAddr::new(run_pa.get() + ((index as u64) << shift));
            assert_ne!(leaf & bit, 0, "{}: a run leaf without the bit", case.name());
            assert_eq!(
                f.leaf_out_of_run(level, leaf, pa),
                leaf & !bit,
                "{}: level {level}, leaf {index} of a run",
                case.name()
            );
            assert_eq!(
                f.leaf_run_log2(level, leaf & !bit),
                0,
                "{}: level {level}",
                case.name()
            );
        }
    }
}

/// The permissions of `f`'s leaves the stretch tests try (VT-d's read-only and write-only
/// leaves are present by different bits), and its granule and next larger page size.
fn leaf_prots_and_sizes<F: Format>(f: &F) -> (Vec<Prot>, Vec<u32>) {
    let g = *f.geometry();
    let prots = [Prot::READ, Prot::WRITE, Prot::READ | Prot::WRITE]
        .into_iter()
        .filter(|&p| f.check_prot(p).is_ok())
        .collect();
    let mut sizes = vec![g.granule_log2];
    sizes.extend((g.granule_log2 + 1..64).find(|s| g.page_sizes >> s & 1 != 0));
    (prots, sizes)
}

/// An unmap of a stretch of leaves with holes in it (the leaf-table and level-1 fast paths
/// clear whole fours of present leaves at once and the rest entry by entry): for no hole, every
/// hole and every pair of holes among 14 granule pages or 14 blocks, leaves of every permission
/// the format accepts (VT-d's read-only and write-only leaves are present by different bits),
/// and at block size also a leaf table in place of the second hole, the call returns the bytes
/// mapped, its gather names exactly the runs it cleared (the table's block when it unlinks
/// one), the page size and whether a table changed, the walker finds nothing left in the range
/// and the leaves beside it untouched.
fn unmaps_with_holes_gather_exactly<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let gran_log2 = g.granule_log2;
    let (prots, sizes) = leaf_prots_and_sizes(&f);
    let n = 14u64;
    let mut holes: Vec<Vec<u64>> = vec![vec![]];
    for a in 0..n {
        holes.push(vec![a]);
        holes.extend((a + 2..n).map(|b| vec![a, b]));
    }
    let base_pa = 1u64 << (g.oas - 2);
    let mem = arena(g.oas);
    let t = table(case, &mem);
    for size_log2 in sizes {
        let size = 1u64 << size_log2;
        // Entries 3 .. 3 + n of one table, with a leaf on either side.
        if (n + 4) << size_log2 > 1u64 << g.ias.min(63) {
            continue;
        }
        let start = 3 * size;
        // Entry `start + i` (`i` = u64::MAX: the one before `start`).
        let at = |i: u64| start.wrapping_add(i.wrapping_mul(size));
        let map = |i: u64, prot: Prot| {
            t.map(Iova::new(at(i)), PhysAddr::new(base_pa + at(i)), size, prot)
                .unwrap();
        };
        for hole in &holes {
            let table_at = (size_log2 > gran_log2 && hole.len() == 2).then(|| hole[1]);
            map(u64::MAX, case.rw());
            map(n, case.rw());
            let mut leaves = 0;
            for i in (0..n).filter(|i| !hole.contains(i)) {
                map(i, prots[(i as usize) % prots.len()]);
                leaves += 1;
            }
            if let Some(i) = table_at {
                // One granule page where the block would be: a leaf table there.
                let iova = Iova::new(start + i * size);
                t.map(iova, PhysAddr::new(base_pa), 1 << gran_log2, case.rw())
                    .unwrap();
            }
            // The runs the unmap clears (a linked table's block with its neighbours).
            let mut want: Vec<IovaRange> = Vec::new();
            for i in (0..n).filter(|i| !hole.contains(i) || table_at == Some(*i)) {
                match want.last_mut() {
                    Some(r) if r.end.get() == at(i) => r.end = Iova::new(at(i) + size),
                    _ => want.push(IovaRange {
                        start: Iova::new(at(i)),
                        end: Iova::new(at(i) + size),
                    }),
                }
            }
            let mut gather = Gather::new();
            let bytes = t.unmap(Iova::new(start), n * size, &mut gather).unwrap();
            let name = format!("{} size 2^{size_log2} holes {hole:?}", case.name());
            let table_bytes = if table_at.is_some() {
                1 << gran_log2
            } else {
                0
            };
            assert_eq!(bytes, leaves * size + table_bytes, "{name}: bytes");
            assert_eq!(gather.ranges(), &want[..], "{name}: gather ranges");
            assert_ne!(gather.page_sizes() & size, 0, "{name}: page size");
            assert_eq!(gather.leaf_only(), table_at.is_none(), "{name}: leaf only");
            let left: Vec<u64> = case
                .walk_all(&mem, t.root())
                .into_iter()
                .map(|(iova, _)| iova)
                .collect();
            assert_eq!(
                left,
                [start - size, start + n * size],
                "{name}: left mapped"
            );
            gather.release(&mem, done()).unwrap();
            let mut gather = Gather::new();
            for i in [u64::MAX, n] {
                assert_eq!(
                    t.unmap(Iova::new(at(i)), size, &mut gather),
                    Ok(size),
                    "{name}"
                );
            }
            gather.release(&mem, done()).unwrap();
        }
    }
    assert!(mem.bad_frees().is_empty());
}

/// A map of a stretch of pages or blocks inside one table over one mapped entry (the fast
/// paths test the stretch as a whole, by the OR of its entries, eight at a time and the rest
/// four and one at a time, before they write any): for every position of that entry in
/// stretches of 1 to 19 entries from entry 0 and entry 3, with each permission the format
/// accepts (VT-d's read-only and write-only leaves are present by different bits), the map
/// fails naming that entry's IOVA and the walker finds what it found before the call.
fn maps_over_one_mapped_entry_change_nothing<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let (prots, sizes) = leaf_prots_and_sizes(&f);
    let base_pa = 1u64 << (g.oas - 2);
    let mem = arena(g.oas);
    let t = table(case, &mem);
    let mut tried = 0;
    for size_log2 in sizes {
        let size = 1u64 << size_log2;
        for start_entry in [0u64, 3] {
            for n in [1u64, 4, 7, 8, 9, 12, 15, 16, 17, 19] {
                if (start_entry + n) << size_log2 > 1u64 << g.ias.min(63) {
                    continue;
                }
                let start = start_entry * size;
                for k in 0..n {
                    let name = format!(
                        "{} size 2^{size_log2} entries {start_entry}+{n}, mapped {k}",
                        case.name()
                    );
                    let at = start + k * size;
                    let prot = prots[(k as usize) % prots.len()];
                    t.map(Iova::new(at), PhysAddr::new(base_pa + at), size, prot)
                        .unwrap();
                    let before = case.walk_all(&mem, t.root());
                    assert_eq!(
                        t.map(
                            Iova::new(start),
                            PhysAddr::new(base_pa + start),
                            n * size,
                            case.rw()
                        ),
                        Err(Error::Overlap {
                            iova: Iova::new(at)
                        }),
                        "{name}"
                    );
                    let after = case.walk_all(&mem, t.root());
                    assert!(after == before, "{name}: mapped {after:?}");
                    let mut gather = Gather::new();
                    assert_eq!(
                        t.unmap(Iova::new(at), size, &mut gather),
                        Ok(size),
                        "{name}"
                    );
                    gather.release(&mem, done()).unwrap();
                    tried += 1;
                }
            }
        }
    }
    assert!(tried > 0, "{}", case.name());
    assert!(mem.bad_frees().is_empty());
}

/// An unmap of whole runs of leaves that are pages of the run's size (a format without a hint
/// bit whose leaves form runs: AMD-Vi v1's Next Level 7 pages) names each run's page size in
/// its gather, also where the leaf-table fast path clears whole fours of leaves at once: for
/// every run size, one run alone and one beside a page on either side.
fn whole_runs_name_their_page_size<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let runs = f.contiguous_runs(0);
    if f.contiguous_bit() != 0 || runs == 0 {
        return;
    }
    let gran_log2 = g.granule_log2;
    let gran = 1u64 << gran_log2;
    let base_pa = 1u64 << (g.oas - 2);
    let mem = arena(g.oas);
    let t = table(case, &mem);
    for r in (1..32).filter(|r| runs >> r & 1 != 0) {
        let run_bytes = gran << r;
        // A run at the start of its leaf table and one a run further.
        for start in [0, run_bytes] {
            if start + run_bytes + gran > 1u64 << g.level_shift(1) {
                continue;
            }
            let name = format!("{} run of 2^{r} pages at {start:#x}", case.name());
            let map = |iova: u64, len: u64| {
                t.map(
                    Iova::new(iova),
                    PhysAddr::new(base_pa + iova),
                    len,
                    case.rw(),
                )
                .unwrap()
            };
            // A page after the run: the leaf table exists before the run is mapped.
            map(start + run_bytes, gran);
            for len in [run_bytes, run_bytes + gran] {
                map(start, run_bytes);
                let mut gather = Gather::new();
                assert_eq!(
                    t.unmap(Iova::new(start), len, &mut gather),
                    Ok(len),
                    "{name}, unmap {len:#x}"
                );
                assert_ne!(
                    gather.page_sizes() & run_bytes,
                    0,
                    "{name}, unmap {len:#x}: the run's page size in the gather"
                );
                gather.release(&mem, done()).unwrap();
            }
        }
    }
    assert!(mem.bad_frees().is_empty());
}

/// Where a format gives a presence mask (`Format::present_mask`, with which the map paths test
/// a stretch of entries by the OR of their values), `is_present` is exactly a test of it: on
/// every single bit, every entry the format encodes and mixed values.
fn present_mask<C: Case>(case: &C) {
    let f = case.format();
    let Some(mask) = f.present_mask() else {
        return;
    };
    let g = *f.geometry();
    let mut raws: Vec<u64> = (0..64).map(|b| 1u64 << b).collect();
    raws.extend([0, u64::MAX, 0x5555_5555_5555_5555, 0xaaaa_aaaa_aaaa_aaaa]);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..256 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        raws.push(x);
    }
    for level in 0..g.levels {
        if g.leaf_allowed(level) {
            raws.push(f.encode_leaf(level, PhysAddr::new(0), case.rw()));
        }
        if level > 0 {
            raws.push(f.encode_table(level, PhysAddr::new(1 << g.granule_log2)));
        }
    }
    for raw in raws {
        assert_eq!(
            f.is_present(raw),
            raw & mask != 0,
            "{}: {raw:#x} against the presence mask {mask:#x}",
            case.name()
        );
    }
}

/// The two-step leaf encoding of the map loops (`Format::leaf_template` once per stretch,
/// `Format::leaf_from_template` per leaf, or `template | pa` where
/// `Format::leaf_address_in_place` says so) gives exactly `encode_leaf`, and `encode_run_leaf`
/// for every leaf of every run size, at every level that holds leaves, for every
/// permission set the format accepts, at output addresses low and high in the output range.
fn leaf_templates<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let extra = [
        Prot::empty(),
        Prot::EXEC,
        Prot::PRIV,
        Prot::MMIO,
        Prot::EXEC | Prot::PRIV,
    ];
    let bases = [Prot::READ, Prot::WRITE, Prot::READ | Prot::WRITE];
    let prots = bases
        .iter()
        .flat_map(|&b| extra.iter().map(move |&e| b | e))
        .filter(|&p| f.check_prot(p).is_ok());
    for prot in prots {
        for level in (0..g.levels).filter(|&l| g.leaf_allowed(l)) {
            let shift = g.level_shift(level);
            let mut runs = f.contiguous_runs(level) | 1;
            while runs != 0 {
                let n_log2 = runs.trailing_zeros();
                runs &= runs - 1;
                let run = 1u64 << (shift + n_log2);
                if shift + n_log2 >= g.oas {
                    continue;
                }
                let template = f.leaf_template(level, n_log2, prot);
                let top = ((1u64 << g.oas) - run) & !(run - 1);
                for run_pa in [0, run, (top / 2) & !(run - 1), top] {
                    for index in [0usize, (1 << n_log2) - 1, (1 << n_log2) / 2] {
                        let pa = PhysAddr::new(run_pa + ((index as u64) << shift));
                        let want = if n_log2 == 0 {
                            f.encode_leaf(level, pa, prot)
                        } else {
                            f.encode_run_leaf(level, PhysAddr::new(run_pa), n_log2, index, prot)
                        };
                        assert_eq!(
                            f.leaf_from_template(template, level, n_log2, pa),
                            want,
                            "{}: level {level}, run 2^{n_log2}, {prot:?}, leaf {index} of the run at {run_pa:#x}",
                            case.name()
                        );
                        if f.leaf_address_in_place(level, n_log2) {
                            assert_eq!(
                                template | pa.get(),
                                want,
                                "{}: in place at level {level}, run 2^{n_log2}, {prot:?}, leaf {index} of the run at {run_pa:#x}",
                                case.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// [`Prot::MMIO`] leaves, pages and blocks, next to memory: the walker sees the format's device
/// type on them and nothing else changes; query reports it back; a split keeps it on every
/// piece.
fn device_memory<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let gran = 1u64 << g.granule_log2;
    let (device, normal) = case.mmio_view();
    let mem = arena(g.oas);
    let mut t = table(case, &mem);
    // A page of MMIO and a page of memory after it.
    t.map(
        Iova::new(0),
        PhysAddr::new(0x10_0000),
        gran,
        case.rw() | Prot::MMIO,
    )
    .unwrap();
    t.map(Iova::new(gran), PhysAddr::new(0x20_0000), gran, case.rw())
        .unwrap();
    let name = case.name();
    assert_eq!(case.memory_type(&mem, t.root(), 0), device, "{name}");
    assert_eq!(case.memory_type(&mem, t.root(), gran), normal, "{name}");
    assert_eq!(
        case.translate(&mem, t.root(), 8).unwrap().pa,
        0x10_0008,
        "{name}"
    );
    // Query gives back what the format keeps of `rw` (x86 without XD reads executable), plus
    // MMIO where asked.
    let plain = t.query(Iova::new(gran)).unwrap().prot;
    assert!(
        plain.contains(case.rw()) && !plain.contains(Prot::MMIO),
        "{name}"
    );
    let mmio = plain | Prot::MMIO;
    assert_eq!(t.query(Iova::new(0)).unwrap().prot, mmio, "{name}");
    // A block of MMIO, split by a partial unmap: every remaining piece stays device memory.
    if let Some(big_log2) = (g.granule_log2 + 1..g.ias).find(|s| g.page_sizes >> s & 1 != 0) {
        let big = 1u64 << big_log2;
        t.map(
            Iova::new(big),
            PhysAddr::new(big),
            big,
            case.rw() | Prot::MMIO,
        )
        .unwrap();
        assert_eq!(
            case.translate(&mem, t.root(), big).unwrap().size_log2,
            big_log2
        );
        assert_eq!(case.memory_type(&mem, t.root(), big), device, "{name}");
        let mut gather = Gather::new();
        t.set_split_policy(SplitPolicy::Split);
        let pieces: &[u64] = match t.unmap(Iova::new(big + gran), gran, &mut gather) {
            Ok(n) => {
                assert_eq!(n, gran);
                &[big, big + 2 * gran, 2 * big - gran]
            }
            // Configurations that cannot split a live block (no BBML2) keep it whole.
            Err(Error::SplitUnsupported { .. }) => &[big, big + gran, 2 * big - gran],
            Err(e) => panic!("{name}: {e:?}"),
        };
        for &at in pieces {
            assert_eq!(
                case.memory_type(&mem, t.root(), at),
                device,
                "{name} at {at:#x}"
            );
            assert_eq!(t.query(Iova::new(at)).unwrap().prot, mmio, "{name}");
        }
        gather.release(&&mem, done()).unwrap();
    }
}

/// Privileged-only and executable leaves, where the format can express them (U/S, AP\[1\],
/// XD, XN); elsewhere the map is refused with `UnsupportedProt` and changes nothing.
fn privilege_and_execute<C: Case>(case: &C) {
    let f = case.format();
    let gran = 1u64 << f.geometry().granule_log2;
    let mem = arena(f.geometry().oas);
    let t = table(case, &mem);
    let cases = [
        (Prot::READ | Prot::PRIV, (false, true, false)),
        (Prot::READ | Prot::EXEC, (true, true, true)),
    ];
    for (i, (prot, want)) in cases.into_iter().enumerate() {
        let iova = i as u64 * gran;
        match f.check_prot(prot) {
            Ok(()) => {
                t.map(Iova::new(iova), PhysAddr::new(0), gran, prot)
                    .unwrap();
                let seen = case.views(&mem, t.root(), iova);
                assert_eq!(seen, want, "{}: {prot:?}", case.name());
            }
            Err(e) => {
                let live = mem.stats().live_pages;
                assert_eq!(t.map(Iova::new(iova), PhysAddr::new(0), gran, prot), Err(e));
                assert_eq!(mem.stats().live_pages, live);
            }
        }
    }
}

/// Physical addresses of the words of live table memory that differ from `before` (no sync
/// recording is running, so every changed word counts).
fn changed_words(mem: &Arena, before: &Snapshot) -> Vec<u64> {
    mem.unsynced_words(before)
}

fn table<'a, C: Case>(case: &C, mem: &'a Arena) -> PageTable<C::F, &'a Arena> {
    PageTable::new(case.format(), mem, WalkerCoherency::Coherent).unwrap()
}

fn every_page_size_at_the_edges<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let mem = arena(g.oas);
    for size_log2 in (0..64).filter(|s| g.page_sizes >> s & 1 != 0) {
        // A fresh table per size: a smaller page's emptied table stays linked and would make
        // the larger size descend into it (documented engine behaviour).
        let t = table(case, &mem);
        let size = 1u64 << size_log2;
        let top_iova = (1u64 << g.ias) - size;
        let top_pa = (1u64 << g.oas) - size;
        for (iova, pa) in [(0, top_pa), (top_iova, top_pa), (top_iova, 0)] {
            t.map(Iova::new(iova), PhysAddr::new(pa), size, case.rw())
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: map 2^{size_log2} at {iova:#x} -> {pa:#x}: {e}",
                        case.name()
                    )
                });
            let probe = iova + size / 2 + 8;
            let s = case.translate(&mem, t.root(), probe).unwrap_or_else(|e| {
                panic!(
                    "{}: walker on 2^{size_log2} at {probe:#x}: {e:?}",
                    case.name()
                )
            });
            assert_eq!(
                s.pa,
                pa + size / 2 + 8,
                "{}: 2^{size_log2} at {iova:#x}",
                case.name()
            );
            assert_eq!(
                s.size_log2,
                size_log2,
                "{}: leaf size at {iova:#x}",
                case.name()
            );
            assert!(s.read && s.write, "{}: permissions", case.name());
            case.check_attributes(&mem, t.root(), probe);
            let m = t.query(Iova::new(probe)).unwrap();
            assert_eq!(
                (m.pa.get(), m.size_log2),
                (s.pa, s.size_log2),
                "{}: query",
                case.name()
            );
            let mut gather = Gather::new();
            assert_eq!(t.unmap(Iova::new(iova), size, &mut gather).unwrap(), size);
            gather.release(&mem, done()).unwrap();
            assert!(
                case.translate(&mem, t.root(), probe).is_err(),
                "{}: still mapped",
                case.name()
            );
        }
    }
}

/// A predicate on the error one bad call must return.
type ErrorCheck = fn(&Error) -> bool;

fn errors_are_typed_and_change_nothing<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let gran = 1u64 << g.granule_log2;
    let mem = arena(g.oas);
    let t = table(case, &mem);
    t.map(Iova::new(4 * gran), PhysAddr::new(0), gran, case.rw())
        .unwrap();
    let before = (mem.stats().live_pages, case.walk_all(&mem, t.root()));
    let bytes_before = mem.snapshot();
    let rw = case.rw();
    let io = Iova::new;
    let pa = PhysAddr::new;
    let cases: Vec<(Result<(), Error>, ErrorCheck)> = vec![
        (t.map(io(0), pa(0), 0, rw), |e| *e == Error::ZeroLength),
        (t.map(io(gran / 2), pa(0), gran, rw), |e| {
            matches!(e, Error::MisalignedIova { .. })
        }),
        (t.map(io(0), pa(gran / 2), gran, rw), |e| {
            matches!(e, Error::MisalignedPa { .. })
        }),
        (t.map(io(0), pa(0), gran + 8, rw), |e| {
            matches!(e, Error::MisalignedLength { .. })
        }),
        (t.map(io(u64::MAX - gran + 1), pa(0), 2 * gran, rw), |e| {
            matches!(e, Error::Overflow { .. })
        }),
        (t.map(io(0), pa(u64::MAX - gran + 1), 2 * gran, rw), |e| {
            matches!(e, Error::Overflow { .. })
        }),
        (t.map(io(1 << g.ias), pa(0), gran, rw), |e| {
            matches!(e, Error::IovaOutOfRange { .. })
        }),
        (t.map(io((1 << g.ias) - gran), pa(0), 2 * gran, rw), |e| {
            matches!(e, Error::IovaOutOfRange { .. })
        }),
        (t.map(io(0), pa(1 << g.oas), gran, rw), |e| {
            matches!(e, Error::PaOutOfRange { .. })
        }),
        (t.map(io(0), pa(0), gran, Prot::empty()), |e| {
            matches!(e, Error::UnsupportedProt { .. })
        }),
        (t.map(io(0), pa(0), 8 * gran, rw), |e| {
            matches!(e, Error::Overlap { .. })
        }),
        (t.map(io(4 * gran), pa(0), gran, rw), |e| {
            matches!(e, Error::Overlap { .. })
        }),
    ];
    let overlap = Err(Error::Overlap {
        iova: Iova::new(4 * gran),
    });
    assert_eq!(
        t.map(io(0), pa(0), 8 * gran, rw),
        overlap,
        "{}",
        case.name()
    );
    for (i, (r, ok)) in cases.iter().enumerate() {
        let e = r.expect_err(&format!("{}: case {i} succeeded", case.name()));
        assert!(ok(&e), "{}: case {i} gave {e:?}", case.name());
    }
    let mut gather = Gather::new();
    assert_eq!(
        t.unmap(Iova::new(0), 0, &mut gather),
        Err(Error::ZeroLength)
    );
    assert!(matches!(
        t.unmap(Iova::new(1 << g.ias), gran, &mut gather),
        Err(Error::IovaOutOfRange { .. })
    ));
    assert!(gather.is_empty());
    assert_eq!(
        (mem.stats().live_pages, case.walk_all(&mem, t.root())),
        before,
        "{}",
        case.name()
    );
    let changed = changed_words(&mem, &bytes_before);
    assert!(changed.is_empty(), "{}: wrote {changed:x?}", case.name());
}

fn partial_superpage_unmap<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    // The smallest size above the granule, if the configuration has one.
    let Some(big_log2) = (g.granule_log2 + 1..64).find(|s| g.page_sizes >> s & 1 != 0) else {
        return;
    };
    let (big, gran) = (1u64 << big_log2, 1u64 << g.granule_log2);
    if big_log2 >= g.ias {
        return;
    }
    let mem = arena(g.oas);
    let mut t = table(case, &mem);
    t.map(Iova::new(big), PhysAddr::new(big), big, case.rw())
        .unwrap();
    let before = (mem.stats().live_pages, case.walk_all(&mem, t.root()));
    let bytes_before = mem.snapshot();
    let cut = Iova::new(big + gran);
    let mut gather = Gather::new();
    t.set_split_policy(SplitPolicy::Refuse);
    assert_eq!(
        t.unmap(cut, gran, &mut gather),
        Err(Error::SplitRefused { iova: cut }),
        "{}",
        case.name()
    );
    assert!(gather.is_empty());
    assert_eq!(
        (mem.stats().live_pages, case.walk_all(&mem, t.root())),
        before
    );
    assert!(changed_words(&mem, &bytes_before).is_empty());
    t.set_split_policy(SplitPolicy::Split);
    match t.unmap(cut, gran, &mut gather) {
        Ok(bytes) => {
            assert_eq!(bytes, gran);
            assert!(case.translate(&mem, t.root(), cut.get()).is_err());
            let s = case.translate(&mem, t.root(), big).unwrap();
            assert_eq!(
                (s.pa, s.size_log2),
                (big, g.granule_log2),
                "{}: split pieces",
                case.name()
            );
            let s = case.translate(&mem, t.root(), 2 * big - 8).unwrap();
            assert_eq!(s.pa, 2 * big - 8);
            assert!(!gather.leaf_only());
            // Every byte but the hole is still mapped.
            let total: u64 = case
                .walk_all(&mem, t.root())
                .iter()
                .map(|(_, s)| 1u64 << s.size_log2)
                .sum();
            assert_eq!(total, big - gran, "{}", case.name());
        }
        Err(Error::SplitUnsupported { iova }) => {
            // Arm without FEAT_BBM level 2: refused, nothing changed.
            assert_eq!(iova, cut);
            assert!(!f.hitless_split(), "{}: split refused", case.name());
            assert_eq!(
                (mem.stats().live_pages, case.walk_all(&mem, t.root())),
                before
            );
        }
        Err(e) => panic!("{}: split gave {e:?}", case.name()),
    }
    gather.release(&mem, done()).unwrap();
}

fn unmap_everything_leaves_the_root<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let gran = 1u64 << g.granule_log2;
    let mem = arena(g.oas);
    let t = table(case, &mem);
    let top = 1u64 << g.ias;
    let mut mapped = 0;
    for (iova, len) in [
        (0, 3 * gran),
        (top / 2 + 5 * gran, 40 * gran),
        (top - 2 * gran, 2 * gran),
    ] {
        t.map(
            Iova::new(iova),
            PhysAddr::new(iova % (1 << 30)),
            len,
            case.rw(),
        )
        .unwrap();
        mapped += len;
    }
    let tables = case.table_pages(&mem, t.root());
    assert_eq!(
        tables,
        mem.stats().live_pages,
        "{}: live pages are the tables",
        case.name()
    );
    let mut gather = Gather::new();
    assert_eq!(t.unmap(Iova::new(0), top, &mut gather).unwrap(), mapped);
    // Held, not yet freed: the hardware has not been told.
    assert_eq!(mem.stats().live_pages, tables);
    assert_eq!(gather.freed_pages(), tables - 1);
    assert!(case.walk_all(&mem, t.root()).is_empty());
    gather.release(&mem, done()).unwrap();
    assert_eq!(
        mem.stats().live_pages,
        1,
        "{}: only the root remains",
        case.name()
    );
    assert!(
        mem.bad_frees().is_empty(),
        "{}: {:?}",
        case.name(),
        mem.bad_frees()
    );
    let mut gather = Gather::new();
    t.destroy(&mut gather).unwrap();
    gather.release(&mem, done()).unwrap();
    assert_eq!(mem.stats().live_pages, 0);
    assert!(mem.bad_frees().is_empty());
}

fn random_sequences_match_a_model<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let gran_log2 = g.granule_log2;
    let gran = 1u64 << gran_log2;
    let mem = arena(g.oas);
    let mut t = table(case, &mem);
    // A window of four of the smallest superpages (or 2048 granules).
    let big_log2 = (gran_log2 + 1..64)
        .find(|s| g.page_sizes >> s & 1 != 0)
        .unwrap_or(gran_log2 + 9);
    let window = (4u64 << big_log2 >> gran_log2).min(1 << (g.ias - gran_log2));
    let base_pa = 1u64 << (g.oas - 2);
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(g.ias) << 32 ^ u64::from(gran_log2);
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    for step in 0..400 {
        let page = rnd(window);
        let big = rnd(4) == 0;
        let pages = (1 + rnd(if big { window / 2 } else { 8 })).min(window - page);
        let (start, len) = (page * gran, pages * gran);
        if rnd(3) != 0 {
            let aligned = rnd(2) == 0;
            let pa = base_pa
                + if aligned {
                    page * gran
                } else {
                    (page + 1) * gran
                };
            let r = t.map(Iova::new(start), PhysAddr::new(pa), len, case.rw());
            let overlaps = model.range(page..page + pages).next().is_some();
            assert_eq!(
                r.is_err(),
                overlaps,
                "{} step {step}: map {start:#x}+{len:#x}: {r:?}",
                case.name()
            );
            if r.is_ok() {
                model.extend((0..pages).map(|i| (page + i, pa + i * gran)));
            }
        } else {
            let mut gather = Gather::new();
            let r = if rnd(2) == 0 {
                t.unmap(Iova::new(start), len, &mut gather)
            } else {
                t.unmap_exclusive(Iova::new(start), len, &mut gather)
            };
            match r {
                Ok(bytes) => {
                    let removed: Vec<u64> =
                        model.range(page..page + pages).map(|(k, _)| *k).collect();
                    for k in &removed {
                        model.remove(k);
                    }
                    assert_eq!(
                        bytes,
                        removed.len() as u64 * gran,
                        "{} step {step}",
                        case.name()
                    );
                }
                Err(Error::SplitUnsupported { .. }) => assert!(!f.hitless_split()),
                Err(e) => panic!("{} step {step}: unmap: {e:?}", case.name()),
            }
            gather.release(&mem, done()).unwrap();
        }
        if step % 50 == 49 {
            check_against_model(case, &mem, &t, &model, gran_log2);
        }
    }
    check_against_model(case, &mem, &t, &model, gran_log2);
    // Unmapping everything piece by piece (with exclusive access) leaves only the root.
    let mut page = 0;
    while page < window {
        let pages = (1 + rnd(window / 4)).min(window - page);
        let mut gather = Gather::new();
        match t.unmap_exclusive(Iova::new(page * gran), pages * gran, &mut gather) {
            Ok(_) => page += pages,
            // Without FEAT_BBM level 2 a cut through a block is refused: cut elsewhere.
            Err(Error::SplitUnsupported { .. }) => {}
            Err(e) => panic!("{}: final unmap: {e:?}", case.name()),
        }
        gather.release(&mem, done()).unwrap();
    }
    assert!(case.walk_all(&mem, t.root()).is_empty());
    assert_eq!(
        mem.stats().live_pages,
        1,
        "{}: only the root remains",
        case.name()
    );
    assert!(mem.bad_frees().is_empty());
}

/// Mapped ranges `(iova, end, pa)`, sorted, with neighbours that continue each other in both
/// address spaces merged: the same mappings give the same list whatever pages hold them.
fn merged(mut ranges: Vec<(u64, u64, u64)>) -> Vec<(u64, u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for (s, e, pa) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == s && last.2 + (last.1 - last.0) == pa => last.1 = e,
            _ => out.push((s, e, pa)),
        }
    }
    out
}

/// Random sequences of mostly block-sized calls (the level-1 fast paths of `map` and `unmap`:
/// blocks written into empty entries of an existing table, ranges of whole entries cleared or
/// their tables unlinked, contiguous runs of blocks set whole and broken where a call cuts them)
/// mixed with page-sized calls that install leaf tables and split blocks, against a model kept
/// as ranges (a window of two runs of blocks holds too many pages for a page-by-page model).
/// Every map fails exactly when it overlaps and then changes nothing; every unmap returns the
/// bytes the model held; every block the walker sees with the hint belongs to a complete run.
fn block_sequences_match_a_model<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let gran = 1u64 << g.granule_log2;
    let block_log2 = (g.granule_log2 + 1..64)
        .find(|s| g.page_sizes >> s & 1 != 0)
        .unwrap_or(g.granule_log2 + g.level_bits(0));
    let block = 1u64 << block_log2;
    let level = (0..g.levels)
        .find(|&l| g.level_shift(l) == block_log2)
        .unwrap_or(1);
    let run = 1u64 << f.contiguous_log2(level);
    let blocks = (2 * run).max(8).min(1 << (g.ias - block_log2));
    let base_pa = 1u64 << (g.oas - 2);
    let mem = arena(g.oas);
    let mut t = table(case, &mem);
    let mut model: Vec<(u64, u64, u64)> = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ u64::from(g.ias) << 32 ^ u64::from(g.granule_log2);
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    for step in 0..120 {
        let kind = rnd(8);
        let (start, len) = if kind == 4 || kind == 7 {
            // A few pages somewhere: a leaf table installed, or a block split.
            let page = rnd(blocks * (block / gran));
            let pages = (1 + rnd(8)).min(blocks * (block / gran) - page);
            (page * gran, pages * gran)
        } else if rnd(2) == 0 && run > 1 {
            // Whole runs of blocks.
            let runs = blocks / run;
            let first = rnd(runs);
            (first * run * block, (1 + rnd(runs - first)) * run * block)
        } else {
            let first = rnd(blocks);
            (
                first * block,
                (1 + rnd(blocks - first).min(2 * run)) * block,
            )
        };
        let name = case.name();
        if kind < 5 {
            // Output aligned like the input (blocks fit), or a granule off (pages only).
            let pa = base_pa + start + if rnd(4) == 0 { gran } else { 0 };
            let r = t.map(Iova::new(start), PhysAddr::new(pa), len, case.rw());
            let overlaps = model.iter().any(|&(s, e, _)| s < start + len && start < e);
            assert_eq!(
                r.is_err(),
                overlaps,
                "{name} step {step}: map {start:#x}+{len:#x}: {r:?}"
            );
            if r.is_ok() {
                model.push((start, start + len, pa));
            }
        } else {
            let mut gather = Gather::new();
            let r = if rnd(2) == 0 {
                t.unmap(Iova::new(start), len, &mut gather)
            } else {
                t.unmap_exclusive(Iova::new(start), len, &mut gather)
            };
            match r {
                Ok(bytes) => {
                    let end = start + len;
                    let mut removed = 0;
                    let mut kept = Vec::new();
                    for (s, e, pa) in model.drain(..) {
                        let (cs, ce) = (s.max(start), e.min(end));
                        if cs >= ce {
                            kept.push((s, e, pa));
                            continue;
                        }
                        removed += ce - cs;
                        if s < cs {
                            kept.push((s, cs, pa));
                        }
                        if ce < e {
                            kept.push((ce, e, pa + (ce - s)));
                        }
                    }
                    model = kept;
                    assert_eq!(
                        bytes, removed,
                        "{name} step {step}: unmap {start:#x}+{len:#x}"
                    );
                }
                Err(Error::SplitUnsupported { .. }) => assert!(!f.hitless_split()),
                Err(e) => panic!("{name} step {step}: unmap {start:#x}+{len:#x}: {e:?}"),
            }
            gather.release(&mem, done()).unwrap();
        }
        if step % 10 == 9 {
            let leaves = case.walk_all(&mem, t.root());
            let seen = leaves
                .iter()
                .map(|&(i, s)| (i, i + (1u64 << s.size_log2), s.pa))
                .collect();
            assert_eq!(
                merged(seen),
                merged(model.clone()),
                "{name} step {step}: walker disagrees with the model"
            );
            for &(iova, s) in &leaves {
                if s.size_log2 != block_log2 || !case.hint_and_dirty(&mem, t.root(), iova).0 {
                    continue;
                }
                let run_base = iova & !(run * block - 1);
                let whole = (0..run).all(|k| {
                    let at = run_base + k * block;
                    leaves.iter().any(|&(i, o)| {
                        i == at
                            && o.size_log2 == block_log2
                            && o.pa.wrapping_sub(at) == s.pa.wrapping_sub(iova)
                    })
                });
                assert!(
                    whole,
                    "{name} step {step}: hinted block {iova:#x} in a broken run"
                );
            }
        }
    }
    assert!(mem.bad_frees().is_empty());
}

fn check_against_model<C: Case>(
    case: &C,
    mem: &Arena,
    t: &PageTable<C::F, &Arena>,
    model: &BTreeMap<u64, u64>,
    gran_log2: u32,
) {
    let mut seen = BTreeMap::new();
    for (iova, s) in case.walk_all(mem, t.root()) {
        for i in 0..1u64 << (s.size_log2 - gran_log2) {
            seen.insert((iova >> gran_log2) + i, s.pa + (i << gran_log2));
        }
    }
    assert_eq!(
        &seen,
        model,
        "{}: walker disagrees with the model",
        case.name()
    );
}

fn non_coherent_walker_sees_every_write<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let gran = 1u64 << g.granule_log2;
    let mem = arena(g.oas);
    let snap = mem.start_sync_recording();
    let t = PageTable::new(case.format(), &mem, WalkerCoherency::NonCoherent).unwrap();
    let big = (g.granule_log2 + 1..64)
        .find(|s| g.page_sizes >> s & 1 != 0)
        .map_or(gran * 8, |s| 1 << s);
    t.map(
        Iova::new(big - 3 * gran),
        PhysAddr::new(0),
        2 * big + 6 * gran,
        case.rw(),
    )
    .unwrap();
    let mut gather = Gather::new();
    t.unmap(Iova::new(big), gran, &mut gather).ok();
    gather.release(&mem, done()).unwrap();
    // Dirty cleaning, a broken contiguous run, and tables unlinked because they went empty.
    let mut t = t;
    let mut gather = Gather::new();
    if f.dirty_tracking() {
        t.read_and_clear_dirty(Iova::new(0), 4 * big, |_, _| {}, &mut gather)
            .unwrap();
    }
    let run = gran << f.contiguous_log2(0);
    if run > gran {
        let at = 4 * big.max(run);
        t.map(Iova::new(at), PhysAddr::new(at), run, case.rw())
            .unwrap();
        t.unmap(Iova::new(at + gran), gran, &mut gather).unwrap();
    }
    t.unmap_exclusive(Iova::new(big - 3 * gran), big + 3 * gran, &mut gather)
        .ok();
    t.unmap_exclusive(Iova::new(0), 1 << g.ias.min(48), &mut gather)
        .unwrap();
    gather.release(&mem, done()).unwrap();
    assert_eq!(mem.stats().live_pages, 1, "{}", case.name());
    let missed = mem.unsynced_words(&snap);
    assert!(
        missed.is_empty(),
        "{}: words written but never synced: {missed:x?}",
        case.name()
    );
    mem.stop_sync_recording();
}

/// Runs of leaves under the contiguous hint: set on whole aligned runs a map covers, cleared
/// from the rest of a run before part of it is unmapped (or the unmap refused), never left on an
/// incomplete run (the Arm walkers' `walk_all` checks every run).
fn contiguous_runs<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let gran = 1u64 << g.granule_log2;
    let mem = arena(g.oas);
    if f.contiguous_runs(0).count_ones() > 1 {
        return runs_of_any_size(case);
    }
    let mut t = table(case, &mem);
    let n_log2 = f.contiguous_log2(0);
    if n_log2 == 0 {
        t.map(Iova::new(0), PhysAddr::new(0), 32 * gran, case.rw())
            .unwrap();
        for (iova, _) in case.walk_all(&mem, t.root()) {
            assert!(
                !case.hint_and_dirty(&mem, t.root(), iova).0,
                "{}",
                case.name()
            );
        }
        return;
    }
    // Two runs of pages and one page more, output aligned to a run.
    let run = gran << n_log2;
    let (start, pa) = (run, 3 * run);
    t.map(
        Iova::new(start),
        PhysAddr::new(pa),
        2 * run + gran,
        case.rw(),
    )
    .unwrap();
    let hints = |t: &PageTable<C::F, &Arena>| -> Vec<bool> {
        case.walk_all(&mem, t.root())
            .iter()
            .map(|(iova, _)| case.hint_and_dirty(&mem, t.root(), *iova).0)
            .collect()
    };
    let mut want = vec![true; 2 << n_log2];
    want.push(false);
    assert_eq!(hints(&t), want, "{}: hints after map", case.name());
    // Every leaf level with a hint gets it, blocks included.
    for level in 1..g.levels {
        let n = f.contiguous_log2(level);
        let block_run = 1u64 << (g.level_shift(level) + n);
        if n == 0
            || block_run
                .checked_mul(4)
                .map_or(true, |e| e > 1 << g.ias.min(g.oas))
        {
            continue;
        }
        t.map(
            Iova::new(2 * block_run),
            PhysAddr::new(block_run),
            block_run,
            case.rw(),
        )
        .unwrap();
        let (hint, _) = case.hint_and_dirty(&mem, t.root(), 3 * block_run - gran);
        assert!(hint, "{}: level {level} run", case.name());
        let mut gather = Gather::new();
        t.unmap(Iova::new(2 * block_run), block_run, &mut gather)
            .unwrap();
        gather.release(&mem, done()).unwrap();
    }
    // Refused: nothing changes.
    let cut = Iova::new(start + 5 * gran);
    let bytes_before = mem.snapshot();
    let mut gather = Gather::new();
    t.set_split_policy(SplitPolicy::Refuse);
    assert_eq!(
        t.unmap(cut, gran, &mut gather),
        Err(Error::SplitRefused { iova: cut })
    );
    assert!(gather.is_empty() && changed_words(&mem, &bytes_before).is_empty());
    // Split: the first run loses its hint, the second keeps it, the walker finds no broken run.
    t.set_split_policy(SplitPolicy::Split);
    assert_eq!(t.unmap(cut, gran, &mut gather), Ok(gran), "{}", case.name());
    assert!(case.translate(&mem, t.root(), cut.get()).is_err());
    let mut want = vec![false; (1 << n_log2) - 1];
    want.extend(vec![true; 1 << n_log2]);
    want.push(false);
    assert_eq!(
        hints(&t),
        want,
        "{}: hints after a partial unmap",
        case.name()
    );
    // The whole first run is invalidated (a TLB may hold it as one entry); only leaves changed.
    assert!(gather.leaf_only());
    let span = gather.span().unwrap();
    assert!(span.start.get() <= start && start + run <= span.end.get());
    gather.release(&mem, done()).unwrap();
    // Unmapping a whole run needs no split.
    let mut gather = Gather::new();
    assert_eq!(t.unmap(Iova::new(start + run), run, &mut gather), Ok(run));
    gather.release(&mem, done()).unwrap();
    assert!(mem.bad_frees().is_empty());
}

/// Formats whose runs take any power-of-two size (AMD-Vi v1's size-encoded pages), which the
/// walker reports as one page each: a map writes the largest runs alignment and length allow
/// (one size per level-0 table, the ends in pages), a partial unmap of one is refused or makes
/// its other leaves stand alone first, and the walker never finds an incomplete or inconsistent
/// one (its `walk_all` checks every page).
fn runs_of_any_size<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let gran = 1u64 << g.granule_log2;
    let mem = arena(g.oas);
    let mut t = table(case, &mem);
    let name = case.name();
    let sizes = |t: &PageTable<C::F, &Arena>| -> Vec<(u64, u32)> {
        case.walk_all(&mem, t.root())
            .iter()
            .map(|(iova, s)| (*iova, s.size_log2))
            .collect()
    };
    if g.ias < 28 {
        // A 1- or 2-level table: one 256 KiB page at 0 is all there is room for here.
        t.map(Iova::new(0), PhysAddr::new(0), 256 << 10, case.rw())
            .unwrap();
        assert_eq!(sizes(&t), [(0, 18)], "{name}: one 256 KiB page");
        return;
    }
    // 1 MiB + 36 KiB from 1 MiB to 3 MiB: one 1 MiB page (256 entries) in one leaf table, a
    // 32 KiB page and a 4 KiB page in the next.
    let (start, pa, mib) = (1u64 << 20, 3u64 << 20, 1u64 << 20);
    t.map(
        Iova::new(start),
        PhysAddr::new(pa),
        mib + 9 * gran,
        case.rw(),
    )
    .unwrap();
    let want = [
        (start, 20),
        (2 * mib, 15),
        (2 * mib + 8 * gran, g.granule_log2),
    ];
    assert_eq!(sizes(&t), want, "{name}: pages after map");
    let probe = case.translate(&mem, t.root(), start + mib - 8).unwrap();
    assert_eq!((probe.pa, probe.size_log2), (pa + mib - 8, 20), "{name}");
    assert_eq!(
        t.query(Iova::new(start + mib - 8)).map(|m| m.pa.get()),
        Some(pa + mib - 8),
        "{name}: query inside the page"
    );
    // 32 KiB at a 32 KiB boundary that is not 64 KiB aligned: one 32 KiB page.
    t.map(
        Iova::new(8 * mib + 32 * 1024),
        PhysAddr::new(32 * 1024),
        32 * 1024,
        case.rw(),
    )
    .unwrap();
    assert!(
        sizes(&t).contains(&(8 * mib + 32 * 1024, 15)),
        "{name}: 32 KiB page"
    );
    // Refused: nothing changes.
    let cut = Iova::new(start + 5 * gran);
    let bytes_before = mem.snapshot();
    let mut gather = Gather::new();
    t.set_split_policy(SplitPolicy::Refuse);
    assert_eq!(
        t.unmap(cut, gran, &mut gather),
        Err(Error::SplitRefused { iova: cut })
    );
    assert!(gather.is_empty() && changed_words(&mem, &bytes_before).is_empty());
    // Split: the page becomes 255 pages, the one asked for goes, the whole page is invalidated.
    t.set_split_policy(SplitPolicy::Split);
    assert_eq!(t.unmap(cut, gran, &mut gather), Ok(gran), "{name}");
    assert!(case.translate(&mem, t.root(), cut.get()).is_err());
    let after = sizes(&t);
    assert_eq!(
        after.len(),
        255 + 2 + 1,
        "{name}: pages after a partial unmap"
    );
    assert!(
        after[..255].iter().all(|&(_, s)| s == g.granule_log2),
        "{name}"
    );
    let s = case.translate(&mem, t.root(), start + mib - 8).unwrap();
    assert_eq!(
        (s.pa, s.size_log2),
        (pa + mib - 8, g.granule_log2),
        "{name}"
    );
    assert!(gather.leaf_only());
    let span = gather.span().unwrap();
    assert!(
        span.start.get() <= start && start + mib <= span.end.get(),
        "{name}"
    );
    gather.release(&mem, done()).unwrap();
    // A run one level up (4 MiB of 2 MiB entries), cut in its middle by a 4 KiB unmap: the
    // entries stand alone, the cut one is split into a table.
    if f.contiguous_runs(1) & 2 != 0 && g.ias > 26 {
        let (at, out) = (64 * mib, 8 * mib);
        t.map(Iova::new(at), PhysAddr::new(out), 4 * mib, case.rw())
            .unwrap();
        assert!(sizes(&t).contains(&(at, 22)), "{name}: 4 MiB page");
        let mut gather = Gather::new();
        let cut = at + 3 * mib;
        assert_eq!(t.unmap(Iova::new(cut), gran, &mut gather), Ok(gran));
        assert!(!gather.leaf_only(), "{name}: a split changed a table entry");
        let s = case.translate(&mem, t.root(), at + 8).unwrap();
        assert_eq!((s.pa, s.size_log2), (out + 8, 21), "{name}");
        let s = case.translate(&mem, t.root(), cut + gran).unwrap();
        assert_eq!(
            (s.pa, s.size_log2),
            (out + 3 * mib + gran, g.granule_log2),
            "{name}"
        );
        gather.release(&mem, done()).unwrap();
    }
    // Unmapping whole pages needs no split.
    let mut gather = Gather::new();
    assert_eq!(
        t.unmap(Iova::new(8 * mib + 32 * 1024), 32 * 1024, &mut gather),
        Ok(32 * 1024)
    );
    assert!(gather.leaf_only());
    gather.release(&mem, done()).unwrap();
    assert!(mem.bad_frees().is_empty());
}

/// Dirty state as the walker sees it: `read_and_clear_dirty` reports exactly the leaves the
/// walker finds dirty and leaves every one clean; tables without dirty tracking refuse.
fn dirty_state<C: Case>(case: &C) {
    let f = case.format();
    let g = *f.geometry();
    let gran = 1u64 << g.granule_log2;
    let mem = arena(g.oas);
    let t = table(case, &mem);
    t.map(Iova::new(0), PhysAddr::new(0), 4 * gran, case.rw())
        .unwrap();
    t.map(Iova::new(4 * gran), PhysAddr::new(0), gran, Prot::READ)
        .unwrap();
    // What the walker sees as dirty before (Arm DBM leaves start writable-dirty; VT-d leaves
    // start with D clear).
    let expected: Vec<(u64, u32)> = (0..5)
        .filter(|i| case.hint_and_dirty(&mem, t.root(), i * gran).1)
        .map(|i| (i * gran, g.granule_log2))
        .collect();
    let mut gather = Gather::new();
    let mut reported = Vec::new();
    let r = t.read_and_clear_dirty(
        Iova::new(0),
        8 * gran,
        |iova, size_log2| reported.push((iova.get(), size_log2)),
        &mut gather,
    );
    if !f.dirty_tracking() {
        assert_eq!(r, Err(Error::NoDirtyTracking), "{}", case.name());
        assert!(gather.is_empty());
        return;
    }
    r.unwrap();
    assert_eq!(reported, expected, "{}: reported dirty", case.name());
    for i in 0..5 {
        let (_, dirty) = case.hint_and_dirty(&mem, t.root(), i * gran);
        assert!(!dirty, "{}: page {i} still dirty", case.name());
    }
    assert!(gather.leaf_only());
    gather.release(&mem, done()).unwrap();
    let mut again = 0;
    let mut gather = Gather::new();
    t.read_and_clear_dirty(Iova::new(0), 8 * gran, |_, _| again += 1, &mut gather)
        .unwrap();
    assert_eq!(again, 0, "{}", case.name());
    gather.release(&mem, done()).unwrap();
}

/// With dirty tracking on, a map writes every leaf clean, however many leaves one call writes
/// and wherever they start: the leaf loop stores four entries per step and the rest one at a
/// time, each with its own copy of the tracking choice (`store_each`).
fn maps_under_tracking_write_clean_leaves<C: Case>(case: &C) {
    let f = case.format();
    if !f.dirty_tracking() {
        return;
    }
    let g = *f.geometry();
    let gran = 1u64 << g.granule_log2;
    for n in 1..=9u64 {
        for first in 0..=3u64 {
            let mem = arena(g.oas);
            let mut t = table(case, &mem);
            let mut gather = Gather::new();
            t.set_dirty_tracking(true, &mut gather).unwrap();
            gather.release(&mem, done()).unwrap();
            t.map(
                Iova::new(first * gran),
                PhysAddr::new(0),
                n * gran,
                case.rw(),
            )
            .unwrap();
            for i in first..first + n {
                let (_, dirty) = case.hint_and_dirty(&mem, t.root(), i * gran);
                assert!(
                    !dirty,
                    "{}: page {i} of {n} from {first} mapped dirty under tracking",
                    case.name()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the configurations

#[test]
fn vtd_second_stage() {
    for agaw in [39, 48, 57] {
        for (page_2m, page_1g) in [(false, false), (true, false), (true, true)] {
            for snoop in [false, true] {
                run(&VtdSsCase(VtdSsConfig {
                    agaw,
                    haw: 46,
                    page_2m,
                    page_1g,
                    snoop,
                    dirty_tracking: false,
                }));
            }
        }
    }
    run(&VtdSsCase(VtdSsConfig {
        agaw: 48,
        haw: 52,
        page_2m: true,
        page_1g: true,
        snoop: true,
        dirty_tracking: true,
    }));
}

#[test]
fn vtd_first_stage() {
    for levels in [4, 5] {
        for page_1g in [false, true] {
            let cfg = VtdFsConfig {
                levels,
                haw: 46,
                page_1g,
                execute_disable: page_1g,
                dirty_tracking: !page_1g,
            };
            run(&VtdFsCase(cfg));
        }
    }
    run(&VtdFsCase(VtdFsConfig {
        levels: 4,
        haw: 52,
        page_1g: true,
        execute_disable: true,
        dirty_tracking: true,
    }));
}

#[test]
fn arm_stage2() {
    let attrs = [
        S2Attributes::NonCoherent,
        S2Attributes::WriteBack,
        S2Attributes::ForcedWriteBack,
    ];
    for (granule_log2, ias_set, oas) in [
        (12, &[32, 36, 40, 42, 44, 48][..], 48),
        (14, &[32, 36, 40, 47, 48][..], 48),
        (16, &[32, 40, 42, 48, 52][..], 52),
    ] {
        for &ias in ias_set {
            for (i, attributes) in attrs.iter().enumerate() {
                let cfg = ArmS2Config {
                    granule_log2,
                    ias,
                    oas: if i == 0 && ias <= 40 { 40 } else { oas },
                    blocks: i != 1 || ias != 32,
                    attributes: *attributes,
                    dirty_tracking: i == 2,
                    bbml2: i != 0,
                };
                run(&ArmS2Case(cfg));
            }
        }
    }
}

#[test]
fn arm_stage1() {
    for (granule_log2, ias_set, oas) in [
        (12, &[32, 39, 48][..], 48),
        (14, &[36, 47][..], 48),
        (16, &[42, 48, 52][..], 52),
    ] {
        for &ias in ias_set {
            for coherent in [false, true] {
                let cfg = ArmS1Config {
                    granule_log2,
                    ias,
                    oas,
                    blocks: true,
                    coherent,
                    dirty_tracking: coherent,
                    bbml2: true,
                };
                run(&ArmS1Case(cfg));
            }
        }
    }
}

#[test]
fn amdvi_v1() {
    // Every Mode (1 to 6 levels), partial and full roots.
    for (i, ias) in [21, 30, 32, 39, 44, 48, 57, 63].into_iter().enumerate() {
        run(&AmdV1Case(AmdV1Config {
            ias,
            oas: if i % 2 == 0 { 48 } else { 52 },
            large_pages: i != 3,
            force_coherent: i % 3 != 0,
            dirty_tracking: i % 4 == 1,
        }));
    }
}

#[test]
fn amdvi_v2() {
    for levels in [4, 5] {
        for execute_disable in [false, true] {
            run(&AmdV2Case(AmdV2Config {
                levels,
                oas: if execute_disable { 52 } else { 46 },
                execute_disable,
                dirty_tracking: !execute_disable,
            }));
        }
    }
}
