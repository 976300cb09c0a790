//! Construction, enable/disable, configuration checks, events, domain limits.

use super::*;

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
    let (cmdqen, eventqen, smmuen) = (1 << 3, 1 << 2, 1);
    assert_eq!(
        offsets,
        [
            regs::CR0,
            regs::GBPA,
            regs::CR1,
            regs::CR2,
            regs::STRTAB_BASE,
            regs::STRTAB_BASE_CFG,
            regs::CMDQ_BASE,
            regs::CMDQ_CONS,
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
    assert_eq!(
        cr0,
        [0, cmdqen, cmdqen | eventqen, cmdqen | eventqen | smmuen]
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
    assert_eq!(w[1].1, cmdqen | eventqen);
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
        min_ias: 48,
        ..DomainConfig::default()
    };
    assert_eq!(
        u.domain_alloc(&wide),
        Err(Error::Unsupported(Missing::AddressWidth {
            need: 48,
            have: 44
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
