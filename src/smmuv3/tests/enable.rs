//! Construction, enable/disable, configuration checks, events, domain limits.

use super::*;
use crate::smmuv3::regs::Gerror;

#[test]
fn unit_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Unit<'static>>();
    fn object(_: &dyn Iommu) {}
    let (m, a) = (model(IDR0, 0), VecAllocator::default());
    object(&SmmuUnit::new(&m, &a, config()).unwrap());
}

#[test]
fn enable_follows_the_documented_order() {
    // With IDR0.HYP (1 << 9) the EL2 TLB is invalidated too.
    let (m, alloc) = (model(IDR0 | 1 << 9, 0), VecAllocator::default());
    let u = SmmuUnit::new(&m, &alloc, config()).unwrap();
    assert_eq!(alloc.live_pages(), 0);
    u.enable().unwrap();
    assert!(u.is_enabled());
    // Stream table root, command queue, event queue.
    assert_eq!(alloc.live_pages(), 3);
    let writes: Vec<(usize, u64)> = m.writes.borrow().clone();
    let offsets: Vec<usize> = writes
        .iter()
        .map(|w| w.0)
        .filter(|&o| o != regs::CMDQ_PROD)
        .collect();
    let (cmdqen, eventqen, smmuen, atschk) = (1 << 3, 1 << 2, 1, 1 << 4);
    assert_eq!(
        offsets,
        [
            regs::GBPA,
            regs::CR0,
            regs::IRQ_CTRL,
            regs::CR1,
            regs::CR2,
            regs::STRTAB_BASE,
            regs::STRTAB_BASE_CFG,
            regs::CMDQ_BASE,
            regs::CMDQ_CONS,
            regs::CR0,
            regs::CR0,
            regs::EVENTQ_BASE,
            regs::EVENTQ_PROD,
            regs::EVENTQ_CONS,
            regs::CR0,
            regs::CR0,
        ]
    );
    let cr0: Vec<u64> = writes
        .iter()
        .filter(|w| w.0 == regs::CR0)
        .map(|w| w.1)
        .collect();
    // ATSCHK in a write of its own while SMMUEN is clear, before the CMD_CFGI_ALL that
    // invalidates the STEs it may be cached with (§6.3.9.2); SMMUEN alone in the last.
    assert_eq!(
        cr0,
        [
            0,
            atschk,
            atschk | cmdqen,
            atschk | cmdqen | eventqen,
            atschk | cmdqen | eventqen | smmuen
        ]
    );
    // GBPA: abort while disabled, written with UPDATE.
    let gbpa = writes.iter().find(|w| w.0 == regs::GBPA).unwrap().1;
    assert_eq!(gbpa, 1 << 31 | 1 << 20);
    // CR1 coherent (0xd75); two-level table of 2^16 StreamIDs, SPLIT 8.
    assert_eq!(m.read32(regs::CR1), 0xd75);
    assert_eq!(m.read32(regs::STRTAB_BASE_CFG), 1 << 16 | 8 << 6 | 16);
    // The commands, before EVENTQEN: CFGI_ALL, TLBI_EL2_ALL, TLBI_NSNH_ALL, CMD_SYNC.
    let ops: Vec<[u64; 2]> = m.executed.borrow().clone();
    assert_eq!(
        ops,
        [
            Command::cfgi_all().words,
            Command::tlbi_el2_all().words,
            Command::tlbi_nsnh_all().words,
            Command::plain_sync().words,
        ]
    );
    // Disable: GBPA first, then SMMUEN off with the queues still on.
    m.writes.borrow_mut().clear();
    u.disable().unwrap();
    let w: Vec<(usize, u64)> = m.writes.borrow().clone();
    assert_eq!(
        w.iter().map(|w| w.0).collect::<Vec<_>>(),
        [regs::GBPA, regs::CR0]
    );
    assert_eq!(w[1].1, cmdqen | eventqen | atschk);
    assert!(!u.is_enabled());
    // Re-enable reuses the tables.
    u.enable().unwrap();
    assert_eq!(alloc.live_pages(), 3);
}

#[test]
fn disable_to_bypass_and_a_stuck_cr0_times_out() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let cfg = SmmuConfig {
        when_disabled: DisabledTraffic::Bypass,
        ..config()
    };
    let u = SmmuUnit::new(&m, &alloc, cfg).unwrap();
    u.enable().unwrap();
    u.disable().unwrap();
    assert_eq!(m.read32(regs::GBPA) & (1 << 20), 0);
    m.set_cr0_stuck(true);
    assert!(matches!(u.enable(), Err(SmmuError::Cr0AckTimeout { .. })));
}

#[test]
fn configuration_is_checked_against_the_id_registers() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let bad = |cfg| SmmuUnit::new(&m, &alloc, cfg).err();
    assert!(matches!(
        bad(SmmuConfig {
            sid_bits: Some(17),
            ..config()
        }),
        Some(SmmuError::SizeUnsupported {
            log2: 17,
            max_log2: 16,
            ..
        })
    ));
    assert!(bad(SmmuConfig {
        cmdq_log2: Some(9),
        ..config()
    })
    .is_some());
    // IDR0.MSI and SEV are not set in IDR0.
    assert!(bad(SmmuConfig {
        sync: cmdq::SyncMode::Sev,
        ..config()
    })
    .is_some());
    // A linear-only unit refuses a two-level table; Auto then picks linear.
    let lin = model(IDR0 & !(1 << 27), 0);
    let two = SmmuConfig {
        stream_table: StreamTableLayout::TwoLevel { split: 8 },
        ..config()
    };
    assert!(SmmuUnit::new(&lin, &alloc, two).is_err());
    let cfg = SmmuConfig {
        sid_bits: Some(6),
        ..config()
    };
    let u = SmmuUnit::new(&lin, &alloc, cfg).unwrap();
    u.enable().unwrap();
    assert_eq!(lin.read32(regs::STRTAB_BASE_CFG), 6);
    // No AArch64 tables (TTF = 1): refused.
    assert!(SmmuUnit::new(&model(IDR0 & !0xc | 0x4, 0), &alloc, config()).is_err());
    // Big-endian walks only (TTENDIAN = 3, bits 22:21): the tables are little-endian, and
    // STE.S2ENDI / CD.ENDI = 0 would be illegal there. Little-endian only (2) is fine.
    assert!(matches!(
        SmmuUnit::new(&model(IDR0 | 3 << 21, 0), &alloc, config()),
        Err(SmmuError::InvalidConfig { .. })
    ));
    assert!(SmmuUnit::new(&model(IDR0 | 2 << 21, 0), &alloc, config()).is_ok());
}

#[test]
fn events_and_command_errors_are_handled() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    // F_TRANSLATION (0x10) for StreamID 0x20 at 0x5000.
    m.push_event([0x20 << 32 | 0x10, 0, 0x5000, 0]);
    let mut seen = Vec::new();
    let r = u.handle_events(16, |e| seen.push(e));
    assert_eq!(r.events.consumed, 1);
    assert_eq!(seen[0].stream_id, StreamId(0x20));
    assert_eq!(seen[0].input_address, Some(0x5000));
    assert!(r.command_error.is_none());
    // A malformed command stops the queue: the next wait recovers it and reports it.
    let err = u.with_cmdq(|q, r| q.submit_and_sync(r, &[Command { words: [0xff, 0] }]));
    assert!(matches!(
        err,
        Err(SmmuError::CommandError { opcode: 0xff, .. })
    ));
    // The queue works again.
    let d = u.domain_alloc(&s2()).unwrap();
    u.attach(DeviceId(1), None, d).unwrap();
    let r = u.handle_events(16, |_| {});
    assert!(r.gerror.is_empty());
}

#[test]
fn domains_are_bounded_and_reject_what_the_unit_lacks() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let cfg = SmmuConfig {
        max_domains: 2,
        ..config()
    };
    let u = SmmuUnit::new(&m, &alloc, cfg).unwrap();
    let dirty = DomainConfig {
        dirty_tracking: true,
        ..DomainConfig::default()
    };
    assert_eq!(
        u.domain_alloc(&dirty),
        Err(Error::Unsupported(Missing::DirtyTracking))
    );
    let wide = DomainConfig {
        min_ias: 52,
        ..DomainConfig::default()
    };
    assert_eq!(
        u.domain_alloc(&wide),
        Err(Error::Unsupported(Missing::AddressWidth {
            need: 52,
            have: 48
        }))
    );
    let a = u.domain_alloc(&s2()).unwrap();
    let _b = u.domain_alloc(&s1()).unwrap();
    let live = alloc.live_pages();
    assert_eq!(u.domain_alloc(&s2()), Err(Error::NoDomainIds));
    assert_eq!(alloc.live_pages(), live);
    assert_eq!(
        u.domain_geometry(DomainHandle(2)),
        Err(Error::InvalidDomain(DomainHandle(2)))
    );
    // Before enable, attach is refused and a free needs no command.
    assert!(u.attach(DeviceId(1), None, a).is_err());
    u.domain_free(a).unwrap();
    // A stage-2-only unit refuses stage 1 and nesting.
    let m2 = model(IDR0 & !0x2, 0);
    let u2 = SmmuUnit::new(&m2, &alloc, config()).unwrap();
    assert!(matches!(u2.domain_alloc(&s1()), Err(Error::Unsupported(_))));
    assert_eq!(u2.capabilities().pasid_bits, 0);
    let np = DomainConfig {
        nest_parent: true,
        ..DomainConfig::default()
    };
    assert_eq!(
        u2.domain_alloc(&np),
        Err(Error::Unsupported(Missing::Nesting))
    );
}

#[test]
fn unit_size_is_bounded() {
    // The unit holds its fixed arrays inline; embedders place it in a static or on the heap.
    let size = core::mem::size_of::<Unit<'static>>();
    std::println!("SmmuUnit: {size} bytes");
    assert!(size < 64 * 1024, "{size}");
}

#[test]
fn taking_over_a_translating_unit_never_opens_a_bypass_window() {
    // Firmware (or a previous kernel) left translation on and GBPA at its reset value:
    // bypass while SMMUEN = 0. GBPA only matters once SMMUEN is clear, so it must say abort
    // before the write that clears SMMUEN, or DMA passes untranslated in between.
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    m.set32(regs::CR0, 1);
    m.set32(regs::CR0ACK, 1);
    m.set32(regs::GBPA, 0);
    let u = SmmuUnit::new(&m, &alloc, config()).unwrap();
    u.enable().unwrap();
    let writes: Vec<(usize, u64)> = m.writes.borrow().clone();
    let smmuen_off = writes
        .iter()
        .position(|w| w.0 == regs::CR0 && w.1 & 1 == 0)
        .unwrap();
    let gbpa_abort = writes
        .iter()
        .position(|w| w.0 == regs::GBPA && w.1 & 1 << 20 != 0)
        .unwrap();
    assert!(gbpa_abort < smmuen_off, "{writes:x?}");
}

#[test]
fn dropping_a_live_unit_leaks_what_the_hardware_may_still_use() {
    // Translating, with a stage-1 stream (stream table, CD table, both queues in use): the
    // unit may still walk the tables and write event records, so nothing may go back.
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&s1()).unwrap();
    u.attach(DeviceId(3), None, d).unwrap();
    let live = alloc.live_pages();
    drop(u);
    assert_eq!(alloc.live_pages(), live);
    // Once CR0ACK reads 0 the unit uses none of it: dropping frees the tables and queues.
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    regs::write_cr0(&m, 0, 10).unwrap();
    drop(u);
    assert_eq!(alloc.live_pages(), 0);
    // `disable` leaves the queues on: the drop turns them off, then frees.
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    u.disable().unwrap();
    drop(u);
    assert_eq!(m.read32(regs::CR0ACK), 0);
    assert_eq!(alloc.live_pages(), 0);
    // ... unless they do not acknowledge: leaked.
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    u.disable().unwrap();
    m.set_cr0_stuck(true);
    drop(u);
    assert_eq!(alloc.live_pages(), 3);
}

#[test]
fn interrupts_left_on_by_firmware_are_turned_off_and_msi_addresses_cleared() {
    // IDR0.MSI (1 << 13): the unit signals its interrupts by writing CFG1 to the address in
    // *_IRQ_CFG0, whose reset value is UNKNOWN. A previous owner left the event and GERROR
    // interrupts on with a stale MSI address: enable must turn them off and clear the
    // addresses (0: no MSI) while they are off, or the unit writes to memory nobody owns.
    let (m, alloc) = (model(IDR0 | 1 << 13, 0), VecAllocator::default());
    m.set32(regs::IRQ_CTRL, 0b101);
    m.set32(regs::IRQ_CTRLACK, 0b101);
    m.write64(regs::GERROR_IRQ_CFG0, 0xdead_0000);
    m.write64(regs::EVENTQ_IRQ_CFG0, 0xdead_1000);
    m.writes.borrow_mut().clear();
    let u = SmmuUnit::new(&m, &alloc, config()).unwrap();
    u.enable().unwrap();
    assert_eq!(m.read32(regs::IRQ_CTRLACK), 0);
    assert_eq!(m.read64(regs::GERROR_IRQ_CFG0), 0);
    assert_eq!(m.read64(regs::EVENTQ_IRQ_CFG0), 0);
    let writes: Vec<(usize, u64)> = m.writes.borrow().clone();
    let pos = |off: usize| writes.iter().position(|w| w.0 == off).unwrap();
    let smmuen = writes
        .iter()
        .position(|w| w.0 == regs::CR0 && w.1 & 1 == 1)
        .unwrap();
    assert!(pos(regs::IRQ_CTRL) < pos(regs::EVENTQ_IRQ_CFG0));
    assert!(pos(regs::EVENTQ_IRQ_CFG0) < smmuen);
    // Interrupts asked for are enabled after the addresses were cleared.
    let (m, alloc) = (model(IDR0 | 1 << 13, 0), VecAllocator::default());
    let cfg = SmmuConfig {
        interrupts: regs::IrqCtrl::EVENTQ_IRQEN,
        ..config()
    };
    SmmuUnit::new(&m, &alloc, cfg).unwrap().enable().unwrap();
    assert_eq!(m.read32(regs::IRQ_CTRLACK), 0b100);
}

#[test]
fn global_errors_left_active_by_a_previous_owner_are_acknowledged_at_enable() {
    // GERROR.CMDQ_ERR (bit 0) and EVENTQ_ABT_ERR (bit 2) active (GERROR != GERRORN): the
    // command queue would not run, and enable's first command would be taken for the culprit
    // and replaced by a CMD_SYNC.
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    m.set32(regs::GERROR, 0b101);
    let u = SmmuUnit::new(&m, &alloc, config()).unwrap();
    u.enable().unwrap();
    assert!(Gerror::active(&m).is_empty());
    assert_eq!(m.executed.borrow()[0], Command::cfgi_all().words);
}

/// A register window over the model whose chosen registers read all ones (a broken unit, or
/// a hostile virtual SMMU): every call returns, with an error where a wait cannot complete.
struct AllOnes<'a> {
    inner: &'a ModelSmmu,
    offsets: &'a [usize],
}

impl RegisterWindow for AllOnes<'_> {
    fn read32(&self, offset: usize) -> u32 {
        if self.offsets.contains(&offset) {
            u32::MAX
        } else {
            self.inner.read32(offset)
        }
    }
    fn write32(&self, offset: usize, value: u32) {
        self.inner.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.inner.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.inner.write64(offset, value)
    }
}

#[test]
fn registers_reading_all_ones_give_errors_not_panics() {
    let alloc = VecAllocator::default();
    // Every ID register all ones: TTENDIAN says big-endian only, refused.
    let m = model(IDR0, 0);
    let ids = [regs::IDR0, regs::IDR1, regs::IDR3, regs::IDR5];
    let w = AllOnes {
        inner: &m,
        offsets: &ids,
    };
    assert!(SmmuUnit::new(&w, &alloc, config()).is_err());
    // Acknowledgements that never come.
    for stuck in [regs::CR0ACK, regs::GBPA, regs::IRQ_CTRLACK] {
        let m = model(IDR0, 0);
        let offsets = [stuck];
        let w = AllOnes {
            inner: &m,
            offsets: &offsets,
        };
        let u = SmmuUnit::new(&w, &alloc, config()).unwrap();
        assert!(u.enable().is_err(), "{stuck:#x}");
    }
    // CONS and the event queue's PROD all ones: waits time out, draining is bounded.
    let m = model(IDR0, 0);
    let offsets = [regs::CMDQ_CONS, regs::EVENTQ_PROD, regs::GERROR];
    let w = AllOnes {
        inner: &m,
        offsets: &offsets,
    };
    let u = SmmuUnit::new(&w, &alloc, config()).unwrap();
    assert!(u.enable().is_err());
    let r = u.handle_events(1000, |_| {});
    assert!(r.events.consumed <= 1000);
    // GERROR all ones includes SFM_ERR: the unit counts as failed and refuses everything.
    assert!(u.has_failed());
    assert!(matches!(
        u.domain_alloc(&s2()),
        Err(Error::Hardware { what, .. }) if what.contains("SFM_ERR")
    ));
    // CONS all ones alone: enable's CMD_SYNC times out, and so does an attach.
    let m = model(IDR0, 0);
    let offsets = [regs::CMDQ_CONS];
    let w = AllOnes {
        inner: &m,
        offsets: &offsets,
    };
    let u = SmmuUnit::new(&w, &alloc, config()).unwrap();
    assert!(u.enable().is_err());
    let d = u.domain_alloc(&s2()).unwrap();
    assert!(u.attach(DeviceId(1), None, d).is_err());
}

#[test]
fn ats_capable_units_check_translated_transactions() {
    // With CR0.ATSCHK = 0 every ATS Translated transaction passes unchecked (IHI 0070 G.b
    // §3.9.1): any device, even one whose STE aborts, could DMA anywhere by marking its
    // requests Translated. With IDR0.ATS the unit is enabled with ATSCHK = 1, so only streams
    // whose STE has EATS != 0 may send them.
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let _u = enabled(&m, &alloc);
    assert_eq!(m.read32(regs::CR0ACK) & regs::Cr0::ATSCHK.bits(), 0x10);
    // Without IDR0.ATS (bit 10) there is nothing to check.
    let (m, alloc) = (model(IDR0 & !(1 << 10), 0), VecAllocator::default());
    let _u = enabled(&m, &alloc);
    assert_eq!(m.read32(regs::CR0ACK) & regs::Cr0::ATSCHK.bits(), 0);
}

/// A CR0 write may take effect before CR0ACK shows it (IHI 0070 §6.3.9): a `disable` whose
/// acknowledgement times out may have cleared SMMUEN already, and the unit then ignores
/// CMD_ATC_INV (§4.5). A flush of an ATS stream's domain after it must not report its pages
/// invalidated (the ATC_INV lands in the model's ignored list and the sync still completes).
#[test]
fn a_flush_after_an_unacknowledged_disable_does_not_trust_the_atc() {
    let (m, alloc) = (model(IDR0, RIL), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&s2()).unwrap();
    u.set_ats(DeviceId(50), true).unwrap();
    u.attach(DeviceId(50), None, d).unwrap();
    u.map(d, Iova::new(0x3000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    m.set_cr0_stuck(true);
    assert!(matches!(u.disable(), Err(SmmuError::Cr0AckTimeout { .. })));
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x3000), K4, &mut g).unwrap();
    let r = u.flush(d, &mut g);
    assert!(
        r.is_err(),
        "a flush whose ATC_INV may be ignored returned {r:?}"
    );
    assert!(
        m.ignored.borrow().is_empty(),
        "nothing was sent to be ignored"
    );
}
