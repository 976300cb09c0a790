//! Model checking, with [`loom`], of a live Stream Table Entry's update
//! (`src/smmuv3/ste_update.rs`) beside an SMMU that reads it: Arm IHI 0070 G.b §3.21.3
//! (configuration structures may be read at any time, each 64-bit word single-copy atomic, the
//! words in any order, and cached until a `CMD_CFGI_STE` and the `CMD_SYNC` after it), §5.2
//! (the STE's fields and when each is read), §4.3.1 (`CMD_CFGI_STE` drops the CDs cached
//! through the StreamID too).
//!
//! Built only with `--cfg loom`, under which `ste_update::SteWord` covers loom's `AtomicU64`:
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 \
//!   cargo test --release --test loom_ste -- --test-threads=1 --nocapture
//! ```
//!
//! The driver thread runs the crate's real update, `ste_update::apply_update` (what
//! `StreamTable::write` runs under the unit's locks), from one STE to another on eight loom
//! words; its sync points are `CMD_CFGI_STE` + `CMD_SYNC`, modelled as taking the unit's lock
//! and dropping what the unit cached through the StreamID (the STE and the CD). Once the update
//! returned, the driver releases what the old STE named and the new one does not (a CD table,
//! a stage-2 table), as the attach and detach paths do.
//!
//! The walker thread is the unit. It makes three transactions, each under the unit's lock (a
//! `CMD_SYNC` completes only once the transactions that used the old configuration did): the
//! first fetches the STE word 0 to 7 and caches it; the second evicts the cached STE (a cache
//! may evict at any time) but keeps the cached CD, and fetches the STE again, word 7 down to 0;
//! the third uses the cached STE if nothing invalidated it. Each fetch is eight independent
//! acquire loads, which loom interleaves with the driver's stores: a fetch may see any mix of
//! the words between two syncs. Each transaction decodes the STE as §5.2 says the unit reads it
//! (the test's own reading, not the planner's `used_bits`) and asserts:
//!
//! - every field the unit reads equals the old STE's, or the new one's, or an aborting STE's
//!   (the planner's break): never, say, the new Config with the old S1ContextPtr, or new
//!   stage-2 fields under the old VMID;
//! - a stage-1 (or nested) STE uses a CD of the table it names: the unit fetches CD 0 from
//!   that table (a transaction or a prefetch), or uses the one it cached, which must have come
//!   from the same table (the same pointer, read as a PA, or as an IPA through the same stage
//!   2): a CD cache may be indexed by StreamID and SubstreamID alone (§4.3.3);
//! - no table the STE names (CD table, stage-2 table) has been released.
//!
//! Each scenario counts what the walker saw (the old configuration, the new one, abort, a CD
//! from the cache) over its interleavings, and fails if one it is meant to reach never came up.
#![cfg(loom)]

use std::collections::BTreeMap;
use std::sync::Mutex as StdMutex;
use std::time::Instant;

use iommu_engine::mem::PhysAddr;
use iommu_engine::smmuv3::regs::Shareability;
use iommu_engine::smmuv3::ste::{
    Cacheability, Eats, S1Dss, S1Fmt, S2Tg, Stage1, Stage2, Ste, SteBuilder, ATTR_OVERRIDES,
    CONFIG, EATS, MEV, PPAR, S1CDMAX, S1CIR, S1CONTEXTPTR, S1COR, S1CSH, S1DSS, S1FMT, S1STALLD,
    S2FWB, S2TTB, S2VMID, STRW, V, WORD2_STAGE2,
};
use iommu_engine::smmuv3::ste_update::apply_update;
use iommu_engine::smmuv3::Vmid;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

/// CD tables (S1ContextPtr) and stage-2 tables (S2TTB) the scenarios' STEs name.
const CD_A: u64 = 0x4_0000;
const CD_B: u64 = 0x6_0000;
const S2_X: u64 = 0x10_0000;
const S2_Y: u64 = 0x20_0000;
const TABLES: [u64; 4] = [CD_A, CD_B, S2_X, S2_Y];

fn s1(cd: u64, dss: S1Dss) -> Stage1 {
    Stage1 {
        context_ptr: PhysAddr::new(cd),
        fmt: S1Fmt::Linear,
        cdmax: 4,
        dss,
        cir: Cacheability::WriteBackAllocate,
        cor: Cacheability::WriteBackAllocate,
        csh: Shareability::Inner,
    }
}

fn s2(ttb: u64, vmid: u16) -> Stage2 {
    Stage2 {
        vmid: Vmid(vmid),
        t0sz: 24,
        sl0: 1,
        ir0: Cacheability::WriteBackAllocate,
        or0: Cacheability::WriteBackAllocate,
        sh0: Shareability::Inner,
        tg: S2Tg::Size4K,
        ps: 5,
        endi: false,
        affd: false,
        ptw: false,
        hd: false,
        ha: false,
        s: false,
        r: true,
        fwb: false,
        ttb: PhysAddr::new(ttb),
    }
}

fn build(b: SteBuilder) -> Ste {
    b.build().expect("a scenario's STE builds")
}

// ------------------------------------------------------------------------------------------
// the unit's reading of an STE (§5.2)

/// The fields the unit reads from `w`, by name: nothing but V if it is invalid, only Config if
/// it aborts (every Config 0b0xx does), the attribute overrides in bypass; with stage 1 the CD
/// table's fields and S1DSS (and the overrides for traffic S1DSS bypasses), with stage 2 word 2,
/// S2TTB, S2FWB and the overrides; either way the stream's EATS, STRW, MEV, PPAR; without stage
/// 2 an NS-EL1 stream's TLB entries are still tagged with S2VMID.
fn decode(w: &[u64; 8]) -> BTreeMap<&'static str, u64> {
    let mut f = BTreeMap::new();
    f.insert("V", w[0] & V);
    if w[0] & V == 0 {
        return f;
    }
    let config = CONFIG.get(w[0]);
    if config & 0b100 == 0 {
        f.insert("Config", 0);
        return f;
    }
    f.insert("Config", config);
    let overrides = w[1] & ATTR_OVERRIDES;
    if config == 0b100 {
        f.insert("overrides", overrides);
        return f;
    }
    let (stage1, stage2) = (config & 0b001 != 0, config & 0b010 != 0);
    f.insert("EATS", EATS.get(w[1]));
    f.insert("STRW", STRW.get(w[1]));
    f.insert("MEV", w[1] & MEV);
    f.insert("PPAR", w[1] & PPAR);
    if stage1 {
        f.insert("S1ContextPtr", S1CONTEXTPTR.get(w[0]));
        f.insert("S1Fmt", S1FMT.get(w[0]));
        f.insert("S1CDMax", S1CDMAX.get(w[0]));
        f.insert("S1DSS", S1DSS.get(w[1]));
        f.insert("S1CIR", S1CIR.get(w[1]));
        f.insert("S1COR", S1COR.get(w[1]));
        f.insert("S1CSH", S1CSH.get(w[1]));
        f.insert("S1STALLD", w[1] & S1STALLD);
        if S1DSS.get(w[1]) == S1Dss::Bypass as u64 {
            f.insert("overrides", overrides);
        }
        if !stage2 && STRW.get(w[1]) == 0 {
            f.insert("S2VMID", S2VMID.get(w[2]));
        }
    }
    if stage2 {
        f.insert("stage-2 word 2", w[2] & WORD2_STAGE2);
        f.insert("S2TTB", S2TTB.get(w[3]) << 4);
        f.insert("S2FWB", w[1] & S2FWB);
        f.insert("overrides", overrides);
    }
    f
}

/// The CD table an STE's decoded fields name: its pointer, format and size, and for a nested
/// STE the stage 2 the pointer (an IPA) is translated by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CdTableId {
    ptr: u64,
    fmt: u64,
    cdmax: u64,
    through_s2: Option<u64>,
}

fn cd_table(f: &BTreeMap<&'static str, u64>) -> Option<CdTableId> {
    let ptr = f.get("S1ContextPtr")? << 6;
    Some(CdTableId {
        ptr,
        fmt: f["S1Fmt"],
        cdmax: f["S1CDMax"],
        through_s2: f.get("S2TTB").copied(),
    })
}

// ------------------------------------------------------------------------------------------
// the world: the live STE, the unit's caches, the tables' lives

/// What the unit cached through the StreamID.
#[derive(Default)]
struct Caches {
    ste: Option<[u64; 8]>,
    /// The CD of SubstreamID 0, by the table it was fetched from.
    cd: Option<CdTableId>,
}

struct World {
    ste: [AtomicU64; 8],
    /// The unit: its caches, held for a whole transaction; a sync point takes it to invalidate.
    unit: Mutex<Caches>,
    /// Per table of `TABLES`: released by the driver.
    released: [AtomicBool; 4],
    allowed: [BTreeMap<&'static str, u64>; 3],
    labels: [&'static str; 3],
}

impl World {
    fn new(from: &Ste, to: &Ste) -> Self {
        Self {
            ste: from.words.map(AtomicU64::new),
            unit: Mutex::new(Caches::default()),
            released: [0; 4].map(|_| AtomicBool::new(false)),
            allowed: [
                decode(&from.words),
                decode(&to.words),
                decode(&Ste::ABORT.words),
            ],
            labels: ["old", "new", "abort"],
        }
    }

    fn released(&self, table: u64) -> bool {
        let i = TABLES
            .iter()
            .position(|&t| t == table)
            .expect("a scenario's table");
        self.released[i].load(Ordering::Acquire)
    }

    /// CMD_CFGI_STE + CMD_SYNC: completes once no transaction uses what was cached, and drops
    /// the STE and the CDs cached through the StreamID.
    fn sync(&self) {
        let mut caches = self.unit.lock().unwrap();
        caches.ste = None;
        caches.cd = None;
    }

    fn fetch(&self, descending: bool) -> [u64; 8] {
        let mut w = [0; 8];
        for k in 0..8 {
            let i = if descending { 7 - k } else { k };
            w[i] = self.ste[i].load(Ordering::Acquire);
        }
        w
    }

    /// One transaction of the unit: notes what it saw in `seen`, or says what was harmful.
    fn transaction(
        &self,
        evict_ste: bool,
        descending: bool,
        seen: &mut Vec<&'static str>,
    ) -> Result<(), String> {
        let mut caches = self.unit.lock().unwrap();
        if evict_ste {
            caches.ste = None;
        }
        let words = match caches.ste {
            Some(w) => w,
            None => self.fetch(descending),
        };
        caches.ste = Some(words);
        let fields = decode(&words);
        let Some(which) = self.allowed.iter().position(|a| *a == fields) else {
            return Err(format!(
                "the unit read a harmful mix: {words:#x?} reads as {fields:#x?}, neither the \
                 old STE ({:#x?}), nor the new ({:#x?}), nor abort",
                self.allowed[0], self.allowed[1]
            ));
        };
        seen.push(self.labels[which]);
        if let Some(&ttb) = fields.get("S2TTB") {
            if self.released(ttb) {
                return Err(format!(
                    "a live STE {words:#x?} names the released stage-2 table {ttb:#x}"
                ));
            }
        }
        if let Some(table) = cd_table(&fields) {
            match caches.cd {
                Some(cached) if cached != table => {
                    return Err(format!(
                        "the STE {words:#x?} (CD table {table:#x?}) uses a CD cached from \
                         {cached:#x?}"
                    ));
                }
                Some(_) => seen.push("cached CD"),
                None if self.released(table.ptr) => {
                    return Err(format!(
                        "the STE {words:#x?} makes the unit fetch a CD from the released table \
                         {:#x}",
                        table.ptr
                    ));
                }
                None => caches.cd = Some(table),
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// scenarios

/// How often each thing the walker saw came up, over a scenario's interleavings.
#[derive(Clone, Default)]
struct Tally(std::sync::Arc<StdMutex<BTreeMap<&'static str, usize>>>);

/// Runs the update from `from` to `to` beside the walker under loom (preemptions bounded by
/// `LOOM_MAX_PREEMPTIONS`, else 2), the driver releasing `release` once it returned; prints
/// the interleavings explored; fails if something in `outcomes` was never seen, or if the
/// update took other than `syncs` sync points.
fn run(name: &str, from: Ste, to: Ste, release: &'static [u64], syncs: usize, outcomes: &[&str]) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    let bound = builder.preemption_bound;
    let iterations = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tally = Tally::default();
    let start = Instant::now();
    let (it, t) = (iterations.clone(), tally.clone());
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder.check(move || {
            it.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Failures are reported once every loom object of the execution is gone: a panic
            // that unwinds through them aborts the process without saying where.
            let outcome = execution(&from, &to, release);
            match outcome {
                Ok((n, seen)) => {
                    let mut tally = t.0.lock().unwrap();
                    for s in seen {
                        *tally.entry(s).or_default() += 1;
                    }
                    if n != syncs {
                        tally.insert("unexpected sync count", n);
                    }
                }
                Err(e) => panic!("{e}"),
            }
        })
    }));
    let verdict = if checked.is_ok() { "passed" } else { "FAILED" };
    let seen = tally.0.lock().unwrap().clone();
    println!(
        "loom scenario {name}: {verdict} after {} interleavings in {:.1} s (preemption bound \
         {bound:?}); seen {seen:?}",
        iterations.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    );
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
    // Checked after the walker's: a planner that changed would fail here, but a walker that saw
    // harm says more.
    assert_eq!(
        seen.get("unexpected sync count"),
        None,
        "{name}: sync points of the update (expected {syncs})"
    );
    for o in outcomes {
        assert!(seen.contains_key(o), "{name}: no interleaving reached {o}");
    }
}

/// One execution: the driver's update and release beside the walker's three transactions;
/// the update's sync points and what the walker saw, or what went wrong.
fn execution(from: &Ste, to: &Ste, release: &[u64]) -> Result<(usize, Vec<&'static str>), String> {
    let world = Arc::new(World::new(from, to));
    let walker = {
        let world = world.clone();
        thread::spawn(move || {
            let mut seen = Vec::new();
            world.transaction(false, false, &mut seen)?;
            world.transaction(true, true, &mut seen)?;
            world.transaction(false, false, &mut seen)?;
            Ok::<_, String>(seen)
        })
    };
    let n = apply_update(from, to, &world.ste, || {
        world.sync();
        Ok::<(), ()>(())
    })
    .map_err(|()| "sync failed".to_string())?;
    for &table in release {
        let i = TABLES.iter().position(|&x| x == table).unwrap();
        world.released[i].store(true, Ordering::Release);
    }
    let seen = walker
        .join()
        .map_err(|_| "the walker panicked".to_string())??;
    let words = world.ste.each_ref().map(|w| w.load(Ordering::Relaxed));
    if words != to.words {
        return Err(format!("the table holds {words:#x?}, not the target"));
    }
    Ok((n, seen))
}

/// Attach of a stage-1 domain to an aborting stream: the CD table's fields and word 1 are
/// prepared under abort, then word 0 makes the stream translate.
#[test]
fn abort_to_s1() {
    let from = Ste::ABORT;
    let to = build(SteBuilder::stage1(s1(CD_A, S1Dss::Substream0)).eats(Eats::Translate));
    run("abort_to_s1", from, to, &[], 2, &["old", "new"]);
}

/// The same from bypass (the default domain of a stream that bypassed): the stage-1 fields of
/// words 0 and 1 are prepared (bypass ignores them), word 0 switches, and the overrides bypass
/// read (SHCFG) are cleaned last.
#[test]
fn bypass_to_s1() {
    let from = build(SteBuilder::bypass());
    let to = build(SteBuilder::stage1(s1(CD_A, S1Dss::Substream0)));
    run("bypass_to_s1", from, to, &[], 3, &["old", "new"]);
}

/// A stage-1 domain replaced by a stage-2 one: Config, word 2 (S2VMID) and word 3 change in
/// used bits, so the update breaks through abort; the CD table is released after.
#[test]
fn s1_to_s2() {
    let from = build(SteBuilder::stage1(s1(CD_A, S1Dss::Substream0)));
    let to = build(SteBuilder::stage2(s2(S2_X, 1)));
    run("s1_to_s2", from, to, &[CD_A], 3, &["old", "new", "abort"]);
}

/// Back from stage 2 to stage 1 with another CD table: breaks; the stage-2 table is released.
#[test]
fn s2_to_s1() {
    let from = build(SteBuilder::stage2(s2(S2_X, 1)));
    let to = build(SteBuilder::stage1(s1(CD_B, S1Dss::Substream0)));
    run("s2_to_s1", from, to, &[S2_X], 3, &["old", "new", "abort"]);
}

/// Another stage-2 table under the same VMID: only S2TTB (word 3) changes, in one store; the
/// old table is released once the update returned, after the sync that made the unit drop the
/// STE it may have cached.
#[test]
fn s2_table_change() {
    let from = build(SteBuilder::stage2(s2(S2_X, 1)));
    let to = build(SteBuilder::stage2(s2(S2_Y, 1)));
    run("s2_table_change", from, to, &[S2_X], 1, &["old", "new"]);
}

/// One stage-1 domain's CD table replaced by another's: only word 0 differs, but a new CD table
/// goes through abort (`new_cd_table`): the sync of the aborting STE drops the old table's
/// cached CD before an STE names the new table (two syncs: word 0 to abort, word 0 to the
/// target).
#[test]
fn s1_cd_table_change() {
    let from = build(SteBuilder::stage1(s1(CD_A, S1Dss::Substream0)));
    let to = build(SteBuilder::stage1(s1(CD_B, S1Dss::Substream0)));
    run(
        "s1_cd_table_change",
        from,
        to,
        &[CD_A],
        2,
        &["old", "new", "abort", "cached CD"],
    );
}

/// A stage-1 STE made nested on the same pointer bits (now an IPA: another table), with a
/// stage-2 table: breaks.
#[test]
fn s1_to_nested() {
    let from = build(SteBuilder::stage1(s1(CD_A, S1Dss::Substream0)));
    let to = build(SteBuilder::nested(s1(CD_A, S1Dss::Substream0), s2(S2_Y, 2)).mev(true));
    run("s1_to_nested", from, to, &[], 3, &["old", "new", "abort"]);
}

/// A guest's CD table leaves a nested stream (its user domain now bypasses stage 1): word 0
/// switches in one store; the guest's table is released after the sync that covers it (and
/// after a second one, which cleans the stage-1 fields from word 0).
#[test]
fn nested_to_s2() {
    let from = build(SteBuilder::nested(s1(CD_A, S1Dss::Substream0), s2(S2_Y, 2)).mev(true));
    let to = build(SteBuilder::stage2(s2(S2_Y, 2)).mev(true));
    run(
        "nested_to_s2",
        from,
        to,
        &[CD_A],
        2,
        &["old", "new", "cached CD"],
    );
}

/// Detach: a translating stream made to abort, word 0 first; both tables released after.
#[test]
fn nested_to_abort() {
    let from =
        build(SteBuilder::nested(s1(CD_A, S1Dss::Substream0), s2(S2_X, 1)).eats(Eats::Translate));
    run(
        "nested_to_abort",
        from,
        Ste::ABORT,
        &[CD_A, S2_X],
        2,
        &["old", "new"],
    );
}

/// ATS enabled on a stage-1 stream (EATS in word 1), and S1DSS changed from substream 0 to
/// bypass (a RID stage-2 domain's traffic bypasses stage 1; the overrides become used): one
/// word each, hitless.
#[test]
fn s1_eats_and_s1dss() {
    let from = build(SteBuilder::stage1(s1(CD_A, S1Dss::Substream0)));
    let to = build(SteBuilder::stage1(s1(CD_A, S1Dss::Substream0)).eats(Eats::Translate));
    run("s1_eats_on", from, to, &[], 1, &["old", "new", "cached CD"]);
    let from = build(SteBuilder::nested(s1(CD_A, S1Dss::Substream0), s2(S2_X, 1)));
    let to = build(SteBuilder::nested(s1(CD_A, S1Dss::Bypass), s2(S2_X, 1)));
    run(
        "nested_s1dss_bypass",
        from,
        to,
        &[],
        1,
        &["old", "new", "cached CD"],
    );
}
