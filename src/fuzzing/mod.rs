//! Fuzz-target bodies (feature `fuzzing`, host only).
//!
//! Each function here takes the raw bytes a fuzzer produced and panics when it finds a bug; it
//! is the whole body of one libFuzzer target in `fuzz/fuzz_targets/` and is also what
//! `tests/fuzz_corpus.rs` runs over the checked-in corpus (`fuzz/corpus/<target>/`), so plain
//! `cargo test` on stable replays every seed and every crash ever found. Panicking is this
//! module's way of reporting, unlike the rest of the crate: it is test support, never linked
//! into a target.
//!
//! | target | what it drives | what it checks |
//! |---|---|---|
//! | `pgtable_vtd_ss`, `pgtable_vtd_fs`, `pgtable_arm_s2_4k`, `pgtable_arm_s2_16k`, `pgtable_arm_s2_64k`, `pgtable_arm_s1` | [`pgtable`]: arbitrary configurations and sequences of map / unmap / query / hardware dirty marking / read-and-clear-dirty / gather release / reclaim / allocation failure | a shadow `BTreeMap` model, the engine's own enumeration and the independent reference walkers of [`crate::sim::walk`] after every step; no page leaked, none freed before its gather is released, none freed twice ([`crate::sim::Arena`] books) |
//! | `pgtable_concurrent` | [`pgtable::concurrent`]: 2-4 threads map / unmap / split shared larger pages / mark and read-and-clear dirty state on disjoint slices of one window of one table, while a checker thread walks it | each thread against its own model after every step (results, walker, enumeration, its gather covering what it unmapped and the larger pages over it, dirty pages reported); every translation the checker sees belongs to its owner's model or the owner's operation in flight; at the end the whole walk equals the models and no table page is orphaned |
//! | `ioasid` | [`ioasid`]: bind / alloc / attach / attach_pasid / detach / map / unmap / free / PASIDs / grants / context drops over two contexts, a VT-d unit on the VT-d model and an SMMUv3 unit on the SMMUv3 model, with allocation failures | a shadow of what each owner asked for, read back through both models' translations (caches included) after every step: nothing translates that was not asked for, snoop never downgraded, the rules' results (busy, quota, grants, reserved, refusals without snoop control), one completion per unit per unmap, one domain per (IOASID, unit); every page back after the contexts and units go |
//! | `decode_vtd`, `decode_smmuv3` | [`decode`]: every decoder of what hardware writes or reports | never panics; decoded fields re-encode to the raw bits they came from |
//! | `decode_amdvi` | [`decode_amdvi`]: AMD-Vi event log and command buffer entries, the `S`-bit range encoding, the flush planner's block merging, EFR, DTEs | never panics; fields read at the spec's bit positions, re-encoding gives the raw bits back; merged blocks cover the same addresses, none nested, no two halves left |
//! | `queue_vtd` | [`queue`]: the VT-d invalidation queue under arbitrary submissions, waits, hardware progress and injected IQE/ITE/ICE | no unconsumed descriptor overwritten, a successful wait means everything before it completed, errors only when injected and cleared after |
//! | `firmware_dmar` | [`firmware`]: the ACPI DMAR parser and the RSDP / RSDT / XSDT walk on arbitrary bytes (whole tables, table bodies behind a valid header, physical memory images) | never panics; a table that parses answers consistently (structures in order, scopes with paths, every covering-unit answer justified by its rule, reserved regions aligned and non-empty) |
//! | `queue_smmuv3` | [`cmdq`]: the SMMUv3 command queue (16 entries, wrapping) as a unit's flushes drive it over the SMMUv3 model, with CERROR_ILL / CERROR_ABT / CERROR_ATC_INV_SYNC and stalled CMD_SYNCs injected | a good flush was consumed (the model's TLB forgot every unmapped page) and released its pages; a failed one kept them and happened only under injection; after recovery the queue runs again |
//! | `queue_amdvi` | [`queue_amdvi`]: the AMD-Vi command buffer and event log against a register model whose unit fetches, stores COMPLETION_WAITs, stops on a command, logs and overflows as the fuzzer decides; or against registers that read anything | no unfetched command overwritten, a successful wait means everything before it was fetched, command errors only when injected and the buffer runs after them; a drain of at most `max` reports the oldest events in order and consumes exactly those, overflows reported and logging restarted; with wild registers, pointers aligned and inside their rings and every call's register reads bounded |
//! | `firmware_iort` | [`firmware_iort`]: the IORT decoders on arbitrary bytes, raw or behind a fixed-up ACPI header | never panics; nodes inside the table and found again by reference; resolutions end at an SMMU or ITS group; regions and StreamID ranges well formed |
//! | `firmware_ivrs` | [`firmware_ivrs`]: the IVRS decoders on arbitrary bytes, raw or behind a fixed-up ACPI header | never panics; blocks and device entries in order inside the table; every device range found again by the unit lookup; register windows and memory ranges aligned when accepted |
//! | `firmware_fdt` | [`firmware_fdt`]: the device-tree decoders on arbitrary bytes | never panics; nodes within the depth bound; `iommus` and `iommu-map` answers name nodes with `#iommu-cells` |

pub mod cmdq;
pub mod decode;
pub mod decode_amdvi;
pub mod firmware;
pub mod firmware_fdt;
pub mod firmware_iort;
pub mod firmware_ivrs;
pub mod ioasid;
pub mod pgtable;
mod pool;
pub mod queue;
pub mod queue_amdvi;

use core::cell::RefCell;

use crate::sim::{Arena, ArenaConfig};

std::thread_local! {
    /// The arena the last input on this thread ran on, kept for the next one.
    static ARENA: RefCell<Option<Arena>> = const { RefCell::new(None) };
}

/// Runs `f` on an arena as good as `Arena::new(config)`: this thread's arena from the last
/// input, [reset](Arena::reset) (only the pages that input used are zeroed again), or a new one.
/// A fresh buffer per input cost the page-table targets a third of their time and the queue
/// targets more than half (allocation, zeroing, page faults, unmapping).
fn with_arena<R>(config: ArenaConfig, f: impl FnOnce(&Arena) -> R) -> R {
    let arena = match ARENA.with(|cached| cached.borrow_mut().take()) {
        Some(mut arena) => arena.reset(config).map(|()| arena),
        None => Arena::new(config),
    }
    .expect("arena");
    // A panicking input drops the arena while unwinding; the next input starts a new one.
    let r = f(&arena);
    ARENA.with(|cached| *cached.borrow_mut() = Some(arena));
    r
}

/// A fuzz target: its name (the directory of its corpus) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("pgtable_vtd_ss", pgtable::vtd_ss),
    ("pgtable_vtd_fs", pgtable::vtd_fs),
    ("pgtable_arm_s2_4k", pgtable::arm_s2_4k),
    ("pgtable_arm_s2_16k", pgtable::arm_s2_16k),
    ("pgtable_arm_s2_64k", pgtable::arm_s2_64k),
    ("pgtable_arm_s1", pgtable::arm_s1),
    ("pgtable_amdvi_v1", pgtable::amdvi_v1),
    ("pgtable_amdvi_v2", pgtable::amdvi_v2),
    ("pgtable_concurrent", pgtable::concurrent),
    ("decode_vtd", decode::vtd),
    ("decode_smmuv3", decode::smmuv3),
    ("decode_amdvi", decode_amdvi::amdvi),
    ("queue_vtd", queue::vtd),
    ("queue_smmuv3", cmdq::smmuv3),
    ("queue_amdvi", queue_amdvi::amdvi),
    ("ioasid", ioasid::ioasid),
    ("firmware_dmar", firmware::dmar),
    ("firmware_iort", firmware_iort::iort),
    ("firmware_ivrs", firmware_ivrs::ivrs),
    ("firmware_fdt", firmware_fdt::fdt),
];

/// The body of the target called `name`, if there is one.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}
