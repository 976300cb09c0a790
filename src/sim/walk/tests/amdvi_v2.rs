//! AMD-Vi v2 (48882 rev 3.10 §2.2.6; AMD64 APM vol. 2 §5.3-5.4): a hand-built 4-level guest
//! table for one PASID.

use super::{arena_at, put, table};
use crate::mem::{Iova, PhysAddr};
use crate::sim::walk::amdvi_v2::{translate, walk_all, AmdV2Config};
use crate::sim::walk::{Access, AccessKind, Fault};

// Entry bits from the APM's figures, not shared with the walker.
const P: u64 = 1; // bit 0
const RW: u64 = 2; // bit 1
const US: u64 = 4; // bit 2
const PS: u64 = 0x80; // bit 7
const NX: u64 = 1 << 63;

#[test]
fn a_pasid_table_translates_as_long_mode_paging() {
    let arena = arena_at(0x8000_0000);
    let (pml4, pdpt, pd, pt) = (
        table(&arena, 12),
        table(&arena, 12),
        table(&arena, 12),
        table(&arena, 12),
    );
    put(&arena, pml4, 0, pdpt | P | RW | US);
    put(&arena, pdpt, 0, pd | P | RW | US);
    put(&arena, pd, 0, pt | P | RW | US);
    put(&arena, pt, 1, 0x7000 | P | US | NX); // 4 KiB at 0x1000, user read-only, no execute
    put(&arena, pd, 1, 0x4000_0000 | PS | P | RW); // 2 MiB at 0x20_0000, supervisor only
    let cfg = AmdV2Config {
        root: PhysAddr::new(pml4),
        levels: 4,
        oas: 48,
        no_execute: true,
    };
    let t = translate(&arena, &cfg, Iova::new(0x1008), Access::READ).unwrap();
    assert_eq!((t.pa.get(), t.page_size_log2), (0x7008, 12));
    let r = translate(&arena, &cfg, Iova::new(0x1008), Access::WRITE);
    assert_eq!(
        r,
        Err(Fault::Permission {
            level: 1,
            denied: AccessKind::Write
        })
    );
    let r = translate(&arena, &cfg, Iova::new(0x1008), Access::EXEC);
    assert!(matches!(
        r,
        Err(Fault::Permission {
            denied: AccessKind::Exec,
            ..
        })
    ));
    // The supervisor page: a user request is refused, a privileged one translates.
    assert!(translate(&arena, &cfg, Iova::new(0x20_0010), Access::READ).is_err());
    let s = translate(
        &arena,
        &cfg,
        Iova::new(0x20_0010),
        Access::WRITE.privileged(),
    )
    .unwrap();
    assert_eq!((s.pa.get(), s.page_size_log2), (0x4000_0010, 21));
    // Bit 47 set without the bits above it: not canonical.
    let high = 1u64 << 47;
    assert_eq!(
        translate(&arena, &cfg, Iova::new(high), Access::READ),
        Err(Fault::InputRange { iova: high })
    );
    assert_eq!(walk_all(&arena, &cfg).unwrap().len(), 2);
}
