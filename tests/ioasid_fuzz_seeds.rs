//! The seed inputs of the `ioasid` fuzz target, written as readable operation lists and encoded
//! the way `arbitrary` decodes them. Each seed runs here through the target's body; with
//! `IOASID_WRITE_SEEDS=1` they are (re)written to `fuzz/corpus/ioasid/seed-*`, which
//! `tests/fuzz_corpus.rs` replays with the rest of the corpus. Every other file there (crash
//! inputs kept as regression cases) is replayed here too.

use iommu_engine::fuzzing::ioasid::{
    decode_ops, ioasid, region_base, Op, STRADDLE_REGION, UNMAP_ALL_REGION,
};

/// An encoder mirroring `arbitrary` 1.x: integers little-endian, `bool` as one byte, an enum's
/// variant as a `u32` scaled onto the variant count.
#[derive(Default)]
struct Input(Vec<u8>);

/// Variants of the target's [`Op`], encoded by index in declaration order.
const VARIANTS: u64 = 15;
/// Setup: VT-d kind, FWB, COHACC off, SSIDs, RIL, quotas, prelude (bind mask, no-snoop mask,
/// IOASID flags).
struct Setup {
    vtd: u8,
    fwb: bool,
    cohacc_off: bool,
    ssids: bool,
    ril: bool,
    quotas: [u8; 2],
    bind: u8,
    no_snoop: u8,
    flags: u8,
}

impl Input {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend(v.to_le_bytes());
    }
    fn variant(&mut self, i: u64) {
        let v = (i << 32).div_ceil(VARIANTS);
        self.0.extend((v as u32).to_le_bytes());
    }
    fn setup(&mut self, s: &Setup) {
        for b in [
            s.vtd,
            s.fwb as u8,
            s.cohacc_off as u8,
            s.ssids as u8,
            s.ril as u8,
            s.quotas[0],
            s.quotas[1],
            s.bind,
            s.no_snoop,
            s.flags,
        ] {
            self.u8(b);
        }
    }
    fn op(&mut self, op: Op) {
        match op {
            Op::Bind { ctx, dev, no_snoop } => {
                self.variant(0);
                self.0.extend([ctx, dev, no_snoop as u8]);
            }
            Op::Unbind { ctx, dev } => {
                self.variant(1);
                self.0.extend([ctx, dev]);
            }
            Op::Alloc { ctx, flags } => {
                self.variant(2);
                self.0.extend([ctx, flags]);
            }
            Op::Free { ctx, io } => {
                self.variant(3);
                self.0.extend([ctx, io]);
            }
            Op::Attach { ctx, dev, io } => {
                self.variant(4);
                self.0.extend([ctx, dev, io]);
            }
            Op::AttachPasid {
                ctx,
                dev,
                pasid,
                io,
            } => {
                self.variant(5);
                self.0.extend([ctx, dev, pasid, io]);
            }
            Op::Detach { ctx, dev } => {
                self.variant(6);
                self.0.extend([ctx, dev]);
            }
            Op::DetachPasid { ctx, dev, pasid } => {
                self.variant(7);
                self.0.extend([ctx, dev, pasid]);
            }
            Op::AllocPasid { ctx } => {
                self.variant(8);
                self.u8(ctx);
            }
            Op::FreePasid { ctx, pasid } => {
                self.variant(9);
                self.0.extend([ctx, pasid]);
            }
            Op::Map {
                ctx,
                io,
                region,
                first,
                count,
                pa,
                prot,
            } => {
                self.variant(10);
                self.0.extend([ctx, io, region]);
                self.u16(first);
                self.u16(count);
                self.u16(pa);
                self.u8(prot);
            }
            Op::Unmap {
                ctx,
                io,
                region,
                first,
                count,
            } => {
                self.variant(11);
                self.0.extend([ctx, io, region]);
                self.u16(first);
                self.u16(count);
            }
            Op::Grant { ctx, dev, hold } => {
                self.variant(12);
                self.0.extend([ctx, dev, hold]);
            }
            Op::DropCtx { ctx, quota } => {
                self.variant(13);
                self.0.extend([ctx, quota]);
            }
            Op::FailAlloc { n } => {
                self.variant(14);
                self.u8(n);
            }
        }
    }
}

fn encode(setup: &Setup, ops: &[Op]) -> Vec<u8> {
    let mut i = Input::default();
    i.setup(setup);
    for &op in ops {
        i.op(op);
    }
    i.0
}

// Device indices: 0, 1, 2 are VT-d RIDs 0x20, 0x28, 0x100; 3, 4, 5 SMMUv3 SIDs 0x20, 0x300,
// 0x400. IOASID flags: 1 ENFORCE_SNOOP, 2 NEST_PARENT, 4 DIRTY_TRACKING, 8 PASID. Regions: 0
// low, 1 around the VT-d interrupt window, 2 at 1 TiB, 3 at 32 TiB (beyond SMMUv3 stage 2),
// 4 from 2 MiB below 2^44 (across SMMUv3 stage 2's width); region 255 unmaps everything.
// Map `pa`: bit 14 keeps the IOVA's 2 MiB offset (2 MiB leaves), bit 15 puts it above 2^45.
const RW: u8 = 3;
const HUGE: u16 = 0x4000;
const WIDE: u16 = 0x8000;

/// `pages` pages from page `first` of a region (the target reads `count` as pages - 1).
fn map(io: u8, region: u8, first: u16, pages: u16, pa: u16) -> Op {
    Op::Map {
        ctx: 0,
        io,
        region,
        first,
        count: pages - 1,
        pa,
        prot: RW,
    }
}

fn unmap(io: u8, region: u8, first: u16, pages: u16) -> Op {
    Op::Unmap {
        ctx: 0,
        io,
        region,
        first,
        count: pages - 1,
    }
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let snoop_units = Setup {
        vtd: 1,
        fwb: true,
        cohacc_off: false,
        ssids: true,
        ril: true,
        quotas: [2, 2],
        bind: 0b01_1011,
        no_snoop: 0b00_0010,
        flags: 1,
    };
    let two_units = encode(
        &snoop_units,
        &[
            // Both units behind IOASID 0: 2 MiB and 4 KiB leaves, partial unmaps that split.
            map(0, 0, 0, 700, HUGE | 3),
            unmap(0, 0, 5, 3),
            unmap(0, 0, 510, 10),
            // The interrupt window is reserved (VT-d is attached); other units' limits roll back.
            map(0, 1, 0, 1023, 0),
            map(0, 3, 0, 4, 0),
            map(0, 2, 0, 4, WIDE),
            // A second IOASID; the VT-d device moves over; a late SMMUv3 attach copies.
            Op::Alloc { ctx: 0, flags: 1 },
            map(1, 2, 100, 600, HUGE | 9),
            Op::Attach {
                ctx: 0,
                dev: 1,
                io: 1,
            },
            Op::Attach {
                ctx: 0,
                dev: 4,
                io: 1,
            },
            unmap(1, 2, 0, 1023),
            Op::Free { ctx: 0, io: 1 },
            Op::Detach { ctx: 0, dev: 1 },
            Op::Detach { ctx: 0, dev: 4 },
            Op::Free { ctx: 0, io: 1 },
            // The other context cannot take bound devices; the no-snoop one gets a grant.
            Op::Bind {
                ctx: 1,
                dev: 0,
                no_snoop: true,
            },
            Op::Grant {
                ctx: 0,
                dev: 1,
                hold: 2,
            },
            Op::Unbind { ctx: 0, dev: 1 },
            Op::Unmap {
                ctx: 0,
                io: 0,
                region: 0,
                first: 0,
                count: 1023,
            },
            Op::DropCtx { ctx: 0, quota: 1 },
            Op::Bind {
                ctx: 1,
                dev: 0,
                no_snoop: false,
            },
        ],
    );
    let pasids = encode(
        &Setup {
            vtd: 2,
            fwb: true,
            cohacc_off: false,
            ssids: true,
            ril: false,
            quotas: [3, 1],
            bind: 0b10_0001,
            no_snoop: 0,
            flags: 8,
        },
        &[
            Op::AllocPasid { ctx: 0 },
            Op::AllocPasid { ctx: 0 },
            Op::AllocPasid { ctx: 1 },
            Op::AttachPasid {
                ctx: 0,
                dev: 0,
                pasid: 0,
                io: 0,
            },
            Op::AttachPasid {
                ctx: 0,
                dev: 5,
                pasid: 0,
                io: 0,
            },
            Op::Alloc { ctx: 0, flags: 9 },
            Op::AttachPasid {
                ctx: 0,
                dev: 0,
                pasid: 1,
                io: 1,
            },
            Op::AttachPasid {
                ctx: 0,
                dev: 5,
                pasid: 1,
                io: 1,
            },
            map(0, 0, 16, 40, 0),
            map(1, 0, 16, 40, 7),
            Op::FreePasid { ctx: 0, pasid: 0 },
            Op::Free { ctx: 0, io: 0 },
            unmap(0, 0, 20, 4),
            Op::DetachPasid {
                ctx: 0,
                dev: 0,
                pasid: 0,
            },
            Op::DetachPasid {
                ctx: 0,
                dev: 5,
                pasid: 0,
            },
            Op::FreePasid { ctx: 0, pasid: 0 },
            Op::AttachPasid {
                ctx: 0,
                dev: 0,
                pasid: 0,
                io: 1,
            },
            Op::DropCtx { ctx: 0, quota: 2 },
        ],
    );
    let no_snoop_units = encode(
        &Setup {
            vtd: 0,
            fwb: false,
            cohacc_off: false,
            ssids: false,
            ril: true,
            quotas: [0, 0],
            bind: 0b00_1001,
            no_snoop: 0b00_1001,
            flags: 1,
        },
        &[
            map(0, 0, 0, 8, 0),
            Op::Alloc { ctx: 0, flags: 0 },
            Op::Attach {
                ctx: 0,
                dev: 0,
                io: 1,
            },
            Op::Attach {
                ctx: 0,
                dev: 3,
                io: 1,
            },
            map(1, 0, 0, 8, 0),
            Op::Grant {
                ctx: 0,
                dev: 0,
                hold: 3,
            },
            map(1, 0, 8, 8, 0),
            Op::Unbind { ctx: 0, dev: 0 },
            unmap(1, 0, 0, 16),
            Op::Free { ctx: 0, io: 0 },
        ],
    );
    let failures = encode(
        &Setup {
            vtd: 3,
            fwb: true,
            cohacc_off: false,
            ssids: false,
            ril: false,
            quotas: [0, 0],
            bind: 0b00_1001,
            no_snoop: 0,
            flags: 1,
        },
        &[
            Op::FailAlloc { n: 2 },
            map(0, 2, 0, 3, 0),
            map(0, 2, 0, 600, HUGE),
            Op::FailAlloc { n: 0 },
            unmap(0, 2, 3, 1),
            Op::FailAlloc { n: 4 },
            map(0, 0, 0, 3, 0),
            Op::Alloc { ctx: 0, flags: 1 },
            map(1, 0, 0, 3, 0),
            Op::FailAlloc { n: 1 },
            Op::Attach {
                ctx: 0,
                dev: 3,
                io: 1,
            },
            Op::Attach {
                ctx: 0,
                dev: 3,
                io: 1,
            },
            Op::FailAlloc { n: 0 },
            Op::DropCtx { ctx: 0, quota: 0 },
        ],
    );
    // A 64 KiB-granule SMMUv3 (`vtd` bits 3:2 = 3) beside VT-d, both devices on IOASID 0:
    // 4 KiB maps and unmaps refused by the coarse domain with nothing written (review 19b),
    // a whole granule mapped and unmapped, a map across the SMMUv3 domain's 44 bits
    // (`STRADDLE_REGION`) refused by the IOASID, then, with only VT-d attached, taken; the
    // SMMUv3 device's attach refused for it; `UNMAP_ALL` (region 255) clears everything.
    let granule_64k = encode(
        &Setup {
            vtd: 3 << 2 | 1,
            fwb: true,
            cohacc_off: false,
            ssids: false,
            ril: true,
            quotas: [0, 0],
            bind: 0b00_1001,
            no_snoop: 0,
            flags: 1,
        },
        &[
            map(0, 0, 3, 1, 0),
            map(0, 0, 16, 16, 16),
            unmap(0, 0, 17, 1),
            unmap(0, 0, 16, 16),
            map(0, 0, 32, 32, 32),
            map(0, STRADDLE_REGION, 500, 24, 0),
            Op::Detach { ctx: 0, dev: 3 },
            map(0, STRADDLE_REGION, 500, 24, 0),
            Op::Attach {
                ctx: 0,
                dev: 3,
                io: 0,
            },
            unmap(0, 255, 0, 1),
            Op::Attach {
                ctx: 0,
                dev: 3,
                io: 0,
            },
            map(0, 0, 48, 16, 48),
            unmap(0, 255, 0, 1),
        ],
    );
    std::vec![
        ("seed-granule-64k", granule_64k),
        ("seed-two-units", two_units),
        ("seed-pasids", pasids),
        ("seed-no-snoop-units", no_snoop_units),
        ("seed-alloc-failures", failures),
    ]
}

#[test]
fn seeds_run_clean_and_match_the_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ioasid");
    let write = std::env::var_os("IOASID_WRITE_SEEDS").is_some();
    for (name, data) in seeds() {
        ioasid(&data);
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &data).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_default();
        assert_eq!(
            stored,
            data,
            "{} differs: rerun with IOASID_WRITE_SEEDS=1",
            path.display()
        );
    }
}

#[test]
fn the_whole_ioasid_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ioasid");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/ioasid") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        let r = std::panic::catch_unwind(|| ioasid(&data));
        assert!(r.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n >= seeds().len());
}

/// The crash inputs kept in `fuzz/corpus/ioasid` (every file but the seeds) still decode as
/// when they were saved, so each still replays the case it was kept for: the setup's SMMUv3
/// granule bits (3:2, added by efe2931) clear, and no map or unmap with a region byte that
/// later changed meaning (`STRADDLE_REGION`, `UNMAP_ALL_REGION`). Review 20 L3b: a fifth
/// entry in the harness's regions, picked modulo their number, decoded crash-967b...'s unmap
/// region byte 0xe3 as REGIONS[2] where it had been REGIONS[3].
#[test]
fn saved_crash_inputs_decode_as_when_they_were_saved() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ioasid");
    let mut crashes = 0;
    for e in std::fs::read_dir(dir).expect("corpus directory") {
        let path = e.expect("corpus entry").path();
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        if name.starts_with("seed-") {
            continue;
        }
        crashes += 1;
        let data = std::fs::read(&path).expect("read corpus file");
        // Each decoded when it was saved (it made the harness run): one that no longer does
        // replays nothing.
        let Some((vtd, ops)) = decode_ops(&data) else {
            panic!("{name}: no longer decodes");
        };
        assert!(
            !matches!(vtd >> 2 & 3, 2 | 3),
            "{name}: setup {vtd:#x} now picks a coarse granule"
        );
        for op in ops {
            if let Op::Map { region, .. } | Op::Unmap { region, .. } = op {
                // The regions when the crash inputs were saved (f5e91ae to b1bdacc).
                let saved = [0, 0xfec0_0000, 1 << 40, 1 << 45][usize::from(region) % 4];
                assert!(
                    region != STRADDLE_REGION
                        && region != UNMAP_ALL_REGION
                        && region_base(region) == saved,
                    "{name}: {op:?} decodes differently since it was saved"
                );
            }
        }
    }
    assert!(crashes >= 4, "the kept crash inputs are gone: {crashes}");
}
