//! Giving a disabled unit's memory back: every domain's page table, the PASID tables and
//! directories, context tables, root table. Safe only once translation and queued invalidation
//! are off (Intel VT-d specification rev. 4.1, §11.4 Global Status Register: TES and QIES
//! clear), because then hardware walks none of it.

use super::{UnitInfo, VtdUnit};
use crate::iommu::DomainHandle;
use crate::mem::{PageAllocator, PhysAddr};
use crate::mmio::RegisterWindow;
use crate::pgtable::{Gather, InvalidationComplete};
use crate::vtd::context_entry::ScalableContextEntry;
use crate::vtd::domain::with_table;
use crate::vtd::invalidation::Invalidator;
use crate::vtd::pasid_table::release_directory;
use crate::vtd::regs::{self, Gsts};
use crate::vtd::{DomainId, Error};

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// The domain-ID the hardware tags `domain`'s translations with.
    pub fn domain_id(&self, domain: DomainHandle) -> Option<DomainId> {
        self.with_domain(domain, |d| d.did).ok()
    }

    /// Frees every page the unit holds and gives back its register window and allocator.
    ///
    /// # Errors
    /// [`Error::UnexpectedState`], with the unit, while translation or queued invalidation is
    /// on: call [`disable`](Self::disable) first.
    // The error hands the unit itself back (no allocator to box it in): it is large by nature.
    #[allow(clippy::result_large_err)]
    pub fn release(self) -> Result<Released<W, A>, (Self, Error)> {
        let gsts = regs::gsts(&self.regs);
        let queue_on = !matches!(*self.inval.lock(), Invalidator::Off);
        if gsts.intersects(Gsts::TES | Gsts::QIES) || queue_on {
            let e = Error::UnexpectedState {
                register: "GSTS (translation or queued invalidation still on)",
                value: u64::from(gsts.bits()),
            };
            return Err((self, e));
        }
        let Self {
            regs,
            alloc,
            info,
            config,
            domains,
            ..
        } = self;
        let mut leaked = None;
        for lock in domains {
            if let Some(d) = lock.into_inner() {
                let mut gather = Gather::new();
                let destroyed = with_table!(d.table, t => t.destroy(&mut gather));
                // SAFETY: translation is off, so no walker can reach the table.
                let done = unsafe { InvalidationComplete::assume() };
                if destroyed.and(gather.release(&alloc, done)).is_err() {
                    leaked = Some(Error::UnexpectedState {
                        register: "domain page table (pages unknown to the allocator)",
                        value: u64::from(d.did.get()),
                    });
                }
            }
        }
        let cfg = config.into_inner();
        // SAFETY: translation and queued invalidation are off; every table came from `alloc`.
        let tables = unsafe {
            cfg.root.release(&alloc, info.scalable(), |ct| {
                free_directories(&alloc, &info, ct)
            })
        };
        Ok(Released {
            regs,
            alloc,
            leaked: tables.err().or(leaked),
        })
    }
}

/// What [`VtdUnit::release`] gives back.
#[derive(Debug)]
pub struct Released<W, A> {
    /// The register window.
    pub regs: W,
    /// The allocator.
    pub alloc: A,
    /// A table pointed at memory the allocator did not know: what it pointed at was leaked.
    pub leaked: Option<Error>,
}

/// Frees the PASID directory (and tables) of every present entry of a scalable context table.
fn free_directories<A: PageAllocator + ?Sized>(
    alloc: &A,
    info: &UnitInfo,
    ct: crate::vtd::context_table::ContextTable<'_>,
) -> Result<(), Error> {
    if !info.scalable() {
        return Ok(());
    }
    for index in 0..128u8 {
        let w0 = ct.entry(index).word(0).unwrap_or(0);
        if w0 & ScalableContextEntry::P == 0 {
            continue;
        }
        let dir = PhysAddr::new(w0 & ScalableContextEntry::PASIDDIRPTR.mask());
        let pdts = ScalableContextEntry::PDTS.get(w0) as u8;
        // SAFETY: translation is off (caller); the directory came from `alloc`.
        unsafe { release_directory(alloc, dir, pdts)? };
    }
    Ok(())
}
