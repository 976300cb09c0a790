//! A guest under nested translation, for `nested.rs` (SMMUv3) and `nested_vtd.rs` (VT-d): its
//! RAM (pages from the arena that a NEST_PARENT IOASID maps at guest-physical addresses: IPAs
//! on Arm, GPAs on x86), the parent and a child over it holding the guest's stage 1, and the
//! answer to a guest invalidation the host refuses.

use iommu_engine::ioasid::{Error, IoasidCtx, IoasidFlags, IoasidId};
use iommu_engine::iommu::{self, Refusal, UserStage1};
use iommu_engine::mem::{Iova, Page, PageAllocator, PhysAddr};
use iommu_engine::pgtable::Prot;
use iommu_engine::sim::Arena;

use crate::rig::K4;

pub const RW: Prot = Prot::READ.union(Prot::WRITE);
/// The guest's IOVA (stage-1 input), below 4 GiB (the SMMUv3 guest's CD says T0SZ = 32).
pub const IOVA: u64 = 0x1234_5000;
/// The guest-physical address of the guest's page 0; page n is 4 KiB * n above it.
pub const GUEST_BASE: u64 = 0x1000_0000;

/// Guest RAM: pages from the arena that the parent maps at `base` + 4 KiB * n.
pub struct GuestRam<'a> {
    arena: &'a Arena,
    pages: Vec<Page>,
    base: u64,
}

impl<'a> GuestRam<'a> {
    /// `n` pages at [`GUEST_BASE`].
    pub fn new(arena: &'a Arena, n: usize) -> Self {
        Self::at(arena, n, GUEST_BASE)
    }
    /// `n` pages at guest-physical `base`.
    pub fn at(arena: &'a Arena, n: usize, base: u64) -> Self {
        let pages = (0..n).map(|_| arena.alloc(12).expect("page")).collect();
        Self { arena, pages, base }
    }
    /// The intermediate physical address of page `n` (Arm).
    pub fn ipa(&self, n: usize) -> u64 {
        self.base + 0x1000 * n as u64
    }
    /// The guest physical address of page `n` (x86).
    pub fn gpa(&self, n: usize) -> u64 {
        self.ipa(n)
    }
    pub fn pa(&self, n: usize) -> u64 {
        self.pages[n].pa.get()
    }
    /// The guest writes its own memory.
    pub fn write(&self, n: usize, offset: u64, value: u64) {
        assert!(self.arena.write_u64(self.pa(n) + offset, value));
    }
    /// The parent maps every page at its guest-physical address.
    pub fn map_into(&self, ctx: &IoasidCtx<'_, '_, Arena>, parent: IoasidId) {
        for n in 0..self.pages.len() {
            ctx.map(
                parent,
                Iova::new(self.ipa(n)),
                PhysAddr::new(self.pa(n)),
                K4,
                RW,
            )
            .unwrap();
        }
    }
}

impl Drop for GuestRam<'_> {
    fn drop(&mut self) {
        for p in self.pages.drain(..) {
            // SAFETY: the parent no longer maps them (the context was dropped first) and the
            // crate never points a unit at them itself.
            unsafe { self.arena.free(p, 12) };
        }
    }
}

/// A NEST_PARENT IOASID (with `flags` besides) mapping the guest's pages.
pub fn parent(ctx: &IoasidCtx<'_, '_, Arena>, g: &GuestRam<'_>, flags: IoasidFlags) -> IoasidId {
    let parent = ctx.alloc(IoasidFlags::NEST_PARENT | flags).unwrap();
    g.map_into(ctx, parent);
    parent
}

/// A parent mapping the guest's pages and a child over it holding `s1`.
pub fn parent_and_child(
    ctx: &IoasidCtx<'_, '_, Arena>,
    g: &GuestRam<'_>,
    s1: UserStage1,
) -> (IoasidId, IoasidId) {
    let parent = parent(ctx, g, IoasidFlags::empty());
    let child = ctx.alloc_nested(parent, s1).unwrap();
    (parent, child)
}

/// What `invalidate_user[_vtd]` answers for a batch whose entry `index` (`request`) the host
/// refuses for `why`.
pub fn refused<T>(index: u32, request: [u64; 2], why: Refusal) -> Result<T, Error> {
    Err(Error::Iommu(iommu::Error::Refused {
        index,
        request,
        why,
    }))
}
