//! Issuing invalidations, queued or through registers: Intel VT-d specification rev. 4.1, §6.5.1
//! (Register-based Invalidation Interface), §6.5.2 (Queued Invalidation Interface) and §6.5.2.8
//! (Invalidation Wait Descriptor).
//!
//! The unit says *what* must be invalidated as [`Request`]s pushed into a [`Batch`]; the batch
//! turns them into descriptors on the invalidation queue followed by exactly one wait
//! ([`Batch::finish`]), or, when `ECAP.QI = 0`, into context-command and IOTLB register writes,
//! each awaited on its own (register commands complete synchronously, so `finish` has nothing
//! left to wait for). PASID-cache, PASID-based and device-TLB invalidations exist only as
//! descriptors: a unit without queued invalidation cannot be asked for them (scalable mode and
//! ATS both need `ECAP.QI`, which the unit checks up front).
//!
//! While translation is off ([`Invalidator::Off`]: before `enable`, after `disable`), hardware
//! walks none of the unit's structures, and enabling invalidates every cache globally, and the
//! device TLB of every ATS attachment recorded or detached meanwhile whole (no global
//! invalidation reaches device TLBs, §6.5.3); requests are then dropped and only counted. `Off` with `GSTS.TES` set (a takeover `enable` that failed
//! after latching the root table) is refused instead: [`Error::UnexpectedState`], never `Ok`
//! for an invalidation that was not issued.

use core::sync::atomic::{AtomicU64, Ordering};

use super::inv_desc::{
    ContextCacheScope, Descriptor, IotlbScope, PasidCacheScope, PasidIotlbScope,
};
use super::inv_queue::QueueCore;
use super::reg_invalidation::{
    invalidate_context, invalidate_iotlb, ContextInvalidation, IotlbInvalidation,
};
use super::{DomainId, Error, Pasid, SourceId};
use crate::mem::Iova;
use crate::mmio::RegisterWindow;

/// Descriptors buffered before they are written to the queue (a flush with more is submitted in
/// several doorbells and still ends with a single wait).
const BATCH_DESCRIPTORS: usize = 32;

/// Where a [`Batch`] buffers its descriptors: owned by the unit (1 KiB, which a kernel stack
/// should not carry along every flush), behind its own lock, which only a batch takes, while
/// it holds the unit's invalidator lock. A batch starts from an empty buffer whatever the
/// previous one left (a batch dropped on an error).
#[derive(Debug)]
pub(crate) struct Staging {
    pending: [Descriptor; BATCH_DESCRIPTORS],
}

impl Staging {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            pending: [Descriptor { qw: [0; 4] }; BATCH_DESCRIPTORS],
        }
    }
}

/// One thing to invalidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Context-cache invalidation (§6.5.2.1).
    ContextCache(ContextCacheScope),
    /// IOTLB invalidation (§6.5.2.3).
    Iotlb(IotlbScope),
    /// PASID-cache invalidation (§6.5.2.2).
    PasidCache(PasidCacheScope),
    /// PASID-based IOTLB invalidation (§6.5.2.4).
    PasidIotlb {
        /// Domain.
        did: DomainId,
        /// PASID.
        pasid: Pasid,
        /// Granularity.
        scope: PasidIotlbScope,
    },
    /// Device-TLB invalidation (§6.5.2.5) of `2^size_log2` bytes at `addr`.
    DeviceTlb {
        /// The ATS device.
        sid: SourceId,
        /// `PFSID`: with `ECAP.DIT` the source-id of the device's physical function (its own
        /// for a PF, the PF's for an SR-IOV virtual function); 0 (reserved) without it.
        pfsid: SourceId,
        /// First address.
        addr: Iova,
        /// Log2 of the range (64: everything).
        size_log2: u32,
    },
    /// PASID-based device-TLB invalidation (§6.5.2.6).
    PasidDeviceTlb {
        /// The ATS device.
        sid: SourceId,
        /// `PFSID`, as for [`Request::DeviceTlb`].
        pfsid: SourceId,
        /// PASID.
        pasid: Pasid,
        /// `G`: the range is invalidated for every PASID of the device, not only `pasid`
        /// (PCIe ATS Global Invalidate; requests without PASID are not reached).
        global: bool,
        /// First address.
        addr: Iova,
        /// Log2 of the range (64: everything).
        size_log2: u32,
    },
}

impl Request {
    /// The queued-invalidation descriptor, with `DR`/`DW` on IOTLB invalidations as `params`
    /// asks.
    fn descriptor(self, params: &BatchParams) -> Result<Descriptor, Error> {
        match self {
            Request::ContextCache(scope) => Descriptor::context_cache(scope),
            Request::Iotlb(scope) => {
                Descriptor::iotlb(scope, params.drain_reads, params.drain_writes)
            }
            Request::PasidCache(scope) => Ok(Descriptor::pasid_cache(scope)),
            Request::PasidIotlb { did, pasid, scope } => Descriptor::pasid_iotlb(did, pasid, scope),
            // MIP 0 asks for no pending-invalidation hint.
            Request::DeviceTlb {
                sid,
                pfsid,
                addr,
                size_log2,
            } => Descriptor::device_tlb(sid, pfsid, 0, addr, size_log2),
            Request::PasidDeviceTlb {
                sid,
                pfsid,
                pasid,
                global,
                addr,
                size_log2,
            } => Descriptor::pasid_device_tlb(sid, pfsid, 0, pasid, global, addr, size_log2),
        }
    }
}

/// How the unit invalidates, decided by `enable`.
#[derive(Debug)]
pub(crate) enum Invalidator {
    /// Translation off: nothing is walked, nothing needs invalidating.
    Off,
    /// `ECAP.QI = 0`: context-command and IOTLB registers.
    Registers,
    /// The invalidation queue.
    Queue(QueueCore),
}

/// Counts of what the unit asked of the hardware (for tests and diagnostics).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub descriptors: AtomicU64,
    pub waits: AtomicU64,
    pub register_commands: AtomicU64,
    pub dropped: AtomicU64,
}

/// What the unit asked of the hardware so far. Counts do not depend on timing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvalidationStats {
    /// Invalidation descriptors queued (waits excluded).
    pub descriptors: u64,
    /// Invalidation wait descriptors queued (one per flush, attach change or enable).
    pub waits: u64,
    /// Register-based invalidation commands (`CCMD`, `IOTLB_REG`) when `ECAP.QI = 0`.
    pub register_commands: u64,
    /// Requests dropped because translation was off.
    pub dropped: u64,
}

impl Counters {
    pub fn snapshot(&self) -> InvalidationStats {
        InvalidationStats {
            descriptors: self.descriptors.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            register_commands: self.register_commands.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Parameters a batch needs from the unit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchParams {
    /// Byte offset of the IOTLB registers (`ECAP.IRO * 16`).
    pub iotlb_register_offset: usize,
    /// Set `DR` on IOTLB invalidations (`CAP.DRD`): in-flight reads drain before completion.
    pub drain_reads: bool,
    /// Set `DW` on IOTLB invalidations (`CAP.DWD`): in-flight writes drain before completion.
    pub drain_writes: bool,
    /// Poll budget of register commands and of queue waits.
    pub poll_budget: u32,
    /// Poll budget of a queue wait that follows device-TLB invalidations.
    pub device_tlb_poll_budget: u32,
}

/// A sequence of invalidations that ends with one completion wait.
pub(crate) struct Batch<'a, W: RegisterWindow + ?Sized> {
    regs: &'a W,
    inv: &'a mut Invalidator,
    params: BatchParams,
    counters: &'a Counters,
    /// The unit's staging buffer, locked for the batch's lifetime; the first `len` are pending.
    staging: crate::sync::MutexGuard<'a, Staging>,
    len: usize,
    /// A device-TLB invalidation was pushed: the batch completes only when devices answer.
    device_tlb: bool,
}

impl<'a, W: RegisterWindow + ?Sized> Batch<'a, W> {
    /// An empty batch on `inv`, buffering in `staging` (the unit's).
    pub fn new(
        regs: &'a W,
        inv: &'a mut Invalidator,
        params: BatchParams,
        counters: &'a Counters,
        staging: crate::sync::MutexGuard<'a, Staging>,
    ) -> Self {
        Self {
            regs,
            inv,
            params,
            counters,
            staging,
            len: 0,
            device_tlb: false,
        }
    }

    /// Queues (or, with registers, performs) `request`.
    ///
    /// # Errors
    /// Queue and register errors; [`Error::Unsupported`] for a request only queued
    /// invalidation can express on a unit without it.
    pub fn push(&mut self, request: Request) -> Result<(), Error> {
        match self.inv {
            Invalidator::Off => {
                // Off is "nothing to invalidate" only while translation is off. A takeover
                // `enable` that failed after latching the root table leaves TE on with no
                // interface: the hardware then caches what this unit's tables say, and a
                // dropped invalidation would be reported done.
                let gsts = super::regs::gsts(self.regs);
                if gsts.contains(super::regs::Gsts::TES) {
                    return Err(Error::UnexpectedState {
                        register: "GSTS.TES set with no invalidation interface \
                                   (a failed takeover enable): call enable again",
                        value: u64::from(gsts.bits()),
                    });
                }
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Invalidator::Registers => self.by_register(request),
            Invalidator::Queue(q) => {
                let d = request.descriptor(&self.params)?;
                if matches!(
                    request,
                    Request::DeviceTlb { .. } | Request::PasidDeviceTlb { .. }
                ) {
                    self.device_tlb = true;
                }
                let budget = if self.device_tlb {
                    self.params
                        .poll_budget
                        .max(self.params.device_tlb_poll_budget)
                } else {
                    self.params.poll_budget
                };
                if self.len == BATCH_DESCRIPTORS {
                    q.submit_within(self.regs, &self.staging.pending, budget)?;
                    self.counters
                        .descriptors
                        .fetch_add(BATCH_DESCRIPTORS as u64, Ordering::Relaxed);
                    self.len = 0;
                }
                if let Some(slot) = self.staging.pending.get_mut(self.len) {
                    *slot = d;
                    self.len += 1;
                }
                Ok(())
            }
        }
    }

    /// Queues what is pending and one invalidation wait, and waits for its completion.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the wait does not complete; [`Error::QueueError`].
    pub fn finish(self) -> Result<(), Error> {
        let budget = self.budget();
        match self.inv {
            Invalidator::Queue(q) => {
                let pending = self.staging.pending.get(..self.len).unwrap_or(&[]);
                self.counters
                    .descriptors
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                self.counters.waits.fetch_add(1, Ordering::Relaxed);
                q.submit_and_wait_within(self.regs, pending, budget)
            }
            // Register commands were awaited one by one.
            Invalidator::Registers | Invalidator::Off => Ok(()),
        }
    }

    /// The poll budget of this batch's waits.
    fn budget(&self) -> u32 {
        if self.device_tlb {
            self.params
                .poll_budget
                .max(self.params.device_tlb_poll_budget)
        } else {
            self.params.poll_budget
        }
    }

    /// `push` on a unit without queued invalidation. Out of line: inline, its register
    /// sequences' locals sat in `push`'s frame, under every queued submission's
    /// (`submit_within`), the deepest stack of the IOASID calls (tests/linux_module.rs).
    #[inline(never)]
    fn by_register(&mut self, request: Request) -> Result<(), Error> {
        let p = self.params;
        self.counters
            .register_commands
            .fetch_add(1, Ordering::Relaxed);
        match request {
            Request::ContextCache(scope) => {
                let r = match scope {
                    ContextCacheScope::Global => ContextInvalidation::Global,
                    ContextCacheScope::Domain(d) => ContextInvalidation::Domain(d),
                    ContextCacheScope::Device { did, sid, fm } => {
                        ContextInvalidation::Device { did, sid, fm }
                    }
                };
                invalidate_context(self.regs, r, p.poll_budget).map(drop)
            }
            Request::Iotlb(scope) => {
                let r = match scope {
                    IotlbScope::Global => IotlbInvalidation::Global,
                    IotlbScope::Domain(d) => IotlbInvalidation::Domain(d),
                    IotlbScope::Page { did, addr, am, ih } => {
                        IotlbInvalidation::Page { did, addr, am, ih }
                    }
                };
                invalidate_iotlb(
                    self.regs,
                    p.iotlb_register_offset,
                    r,
                    p.drain_reads,
                    p.drain_writes,
                    p.poll_budget,
                )
                .map(drop)
            }
            Request::PasidCache(_)
            | Request::PasidIotlb { .. }
            | Request::DeviceTlb { .. }
            | Request::PasidDeviceTlb { .. } => Err(Error::Unsupported {
                what: "ECAP.QI (PASID and device-TLB invalidations are queued only)",
                value: 0,
            }),
        }
    }
}
