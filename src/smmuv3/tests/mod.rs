//! The unit against the test register model (`testutil.rs`): enable order, domain choice,
//! STE/CD contents, exact command counts per flush, page release only after completion.

extern crate std;

use std::vec::Vec;

use super::cmd::Command;
use super::regs;
use super::ste::{self, Ste};
use super::testutil::{ModelSmmu, VecAllocator};
use super::*;
use crate::iommu::{DeviceId, DomainConfig, DomainHandle, Error, Iommu, Missing, Pasid, Stage};
use crate::mem::{Iova, PhysAddr};
use crate::mmio::RegisterWindow;
use crate::pgtable::{Gather, Prot};

pub(super) const K4: u64 = 1 << 12;
pub(super) const M2: u64 = 1 << 21;
pub(super) const RW: Prot = Prot::READ.union(Prot::WRITE);

/// IDR0: S2P | S1P | TTF AArch64 (2 << 2) | COHACC (1 << 4) | ATS (1 << 10) | ASID16 (1 << 12)
/// | VMID16 (1 << 18) | CD2L (1 << 19) | ST_LEVEL 2-level (1 << 27).
pub(super) const IDR0: u32 = 0x3 | 0x8 | 0x10 | 1 << 10 | 1 << 12 | 1 << 18 | 1 << 19 | 1 << 27;
/// IDR1: SIDSIZE 16, SSIDSIZE 8, EVENTQS 8, CMDQS 8.
pub(super) const IDR1: u32 = 16 | 8 << 6 | 8 << 16 | 8 << 21;
/// IDR3: FWB (1 << 8).
pub(super) const FWB: u32 = 1 << 8;
/// IDR3: RIL (1 << 10).
pub(super) const RIL: u32 = 1 << 10;
/// IDR5: GRAN4K | GRAN16K | GRAN64K, OAS 48 bits (5): the test allocator hands out host
/// addresses as physical ones, and tables must lie inside the output size.
pub(super) const IDR5: u32 = 0x70 | 5;

pub(super) fn model(idr0: u32, idr3: u32) -> ModelSmmu {
    let m = ModelSmmu::new();
    m.set32(regs::IDR0, idr0);
    m.set32(regs::IDR1, IDR1);
    m.set32(regs::IDR3, idr3);
    m.set32(regs::IDR5, IDR5);
    m
}

pub(super) fn config() -> SmmuConfig {
    SmmuConfig {
        poll_budget: 64,
        ..SmmuConfig::default()
    }
}

pub(super) type Unit<'a> = SmmuUnit<&'a ModelSmmu, &'a VecAllocator>;

pub(super) fn enabled<'a>(m: &'a ModelSmmu, alloc: &'a VecAllocator) -> Unit<'a> {
    let u = SmmuUnit::new(m, alloc, config()).unwrap();
    u.enable().unwrap();
    m.executed.borrow_mut().clear();
    u
}

/// Commands consumed since the last call, as opcodes.
pub(super) fn take_ops(m: &ModelSmmu) -> Vec<u8> {
    m.executed
        .borrow_mut()
        .drain(..)
        .map(|c| c[0] as u8)
        .collect()
}

pub(super) fn count(ops: &[u8], op: u8) -> usize {
    ops.iter().filter(|&&o| o == op).count()
}

pub(super) const SYNC: u8 = 0x46;
pub(super) const CFGI_STE: u8 = 0x03;
pub(super) const CFGI_CD: u8 = 0x05;
pub(super) const TLBI_NH_ASID: u8 = 0x11;
pub(super) const TLBI_NH_VA: u8 = 0x12;
pub(super) const TLBI_S12_VMALL: u8 = 0x28;
pub(super) const TLBI_S2_IPA: u8 = 0x2a;
pub(super) const ATC_INV: u8 = 0x40;

pub(super) fn ste_of(u: &Unit<'_>, sid: u32) -> Ste {
    u.config
        .lock()
        .strtab
        .as_ref()
        .unwrap()
        .read(StreamId(sid))
        .unwrap()
}

pub(super) fn s2() -> DomainConfig {
    DomainConfig {
        stage: Stage::Second,
        ..DomainConfig::default()
    }
}

pub(super) fn s1() -> DomainConfig {
    DomainConfig {
        stage: Stage::First,
        ..DomainConfig::default()
    }
}

mod attach;
mod enable;
mod faults;
mod flush;
mod gerror;
mod guest_cds;
mod in_place;
