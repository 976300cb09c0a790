//! Decoder targets: everything the crate reads back from hardware (fault records, event
//! records, capability and ID registers, entries and descriptors as found in memory) must
//! decode without panicking whatever the bits, and the fault drain must stay bounded whatever
//! the registers say.
//!
//! Where a decoded field has a documented position, it is checked against the raw bits it came
//! from, so that a decoder reading the wrong bits shows up here too.

use core::cell::RefCell;
use core::fmt::Write as _;
use std::string::String;
use std::vec::Vec;

use arbitrary::{Arbitrary, Unstructured};

use crate::mmio::RegisterWindow;
use crate::smmuv3::event::Event;
use crate::smmuv3::idr::{Idr, Idr0, Idr1, Idr3, Idr5};
use crate::smmuv3::ste::Ste;
use crate::smmuv3::ste_update::{plan_update, used_bits, UpdateStep};
use crate::smmuv3::StreamId;
use crate::vtd::cap::Cap;
use crate::vtd::context_entry::{ContextEntry, ScalableContextEntry};
use crate::vtd::ecap::Ecap;
use crate::vtd::fault::{drain_primary_faults, FaultRecord};
use crate::vtd::inv_desc::Descriptor;
use crate::vtd::pasid_entry::{PasidDirEntry, PasidEntry};
use crate::vtd::root_entry::{RootEntry, ScalableRootEntry};

/// A register window whose reads return fuzzer-chosen values (then all ones, as a bus does
/// for a dead device) and which counts accesses.
struct ScriptedWindow<'a> {
    u: RefCell<Unstructured<'a>>,
    reads: RefCell<u64>,
}

impl<'a> ScriptedWindow<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            u: RefCell::new(Unstructured::new(data)),
            reads: RefCell::new(0),
        }
    }

    fn next(&self) -> u64 {
        *self.reads.borrow_mut() += 1;
        u64::arbitrary(&mut self.u.borrow_mut()).unwrap_or(u64::MAX)
    }
}

impl RegisterWindow for ScriptedWindow<'_> {
    fn read32(&self, _offset: usize) -> u32 {
        self.next() as u32
    }
    fn write32(&self, _offset: usize, _value: u32) {}
    fn read64(&self, _offset: usize) -> u64 {
        self.next()
    }
    fn write64(&self, _offset: usize, _value: u64) {}
}

fn words<const N: usize>(u: &mut Unstructured<'_>) -> [u64; N] {
    <[u64; N]>::arbitrary(u).unwrap_or([0; N])
}

/// Target `decode_vtd`: CAP, ECAP, fault records, root/context/PASID entries, invalidation
/// descriptors, and the primary-fault drain over registers that say anything.
pub fn vtd(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut sink = String::new();
    let [cap, ecap] = words::<2>(&mut u);
    let cap = Cap(cap);
    let _ = write!(
        sink,
        "{:?} {:?} {:?} {} {} {} {} {:?} {} {} {}",
        cap.flags(),
        cap.domain_count(),
        cap.sagaw(),
        cap.mgaw_raw(),
        cap.mgaw(),
        cap.fro(),
        cap.fault_recording_offset(),
        cap.sllps(),
        cap.nfr(),
        cap.fault_recording_count(),
        cap.mamv(),
    );
    assert_eq!(u64::from(cap.nfr()), cap.0 >> 40 & 0xff, "CAP.NFR is 47:40");
    assert_eq!(
        u64::from(cap.fault_recording_count()),
        (cap.0 >> 40 & 0xff) + 1
    );
    let ecap = Ecap(ecap);
    let _ = write!(
        sink,
        "{:?} {} {} {} {} {:?}",
        ecap.flags(),
        ecap.iro(),
        ecap.iotlb_register_offset(),
        ecap.mhmv(),
        ecap.pss(),
        ecap.pasid_bits(),
    );

    let [lo, hi] = words::<2>(&mut u);
    let r = FaultRecord { lo, hi };
    let _ = write!(
        sink,
        "{} {:#x} {:?} {:?} {:?} {} {} {}",
        r.fault(),
        r.fault_info(),
        r.source_id(),
        r.pasid(),
        r.request_kind(),
        r.t2(),
        r.address_type(),
        r.reason_code(),
    );
    match r.reason() {
        Ok(reason) => {
            let _ = write!(sink, "{reason}");
            assert_eq!(reason as u8, r.reason_code());
        }
        Err(code) => assert_eq!(code, r.reason_code()),
    }
    assert_eq!(r.fault(), hi >> 63 == 1, "F is bit 127");
    assert_eq!(u64::from(r.reason_code()), hi >> 32 & 0xff, "FR is 103:96");

    let w = words::<8>(&mut u);
    let ce = ContextEntry { lo: w[0], hi: w[1] };
    let _ = write!(
        sink,
        "{} {:?} {:?} {:?} {:?}",
        ce.present(),
        ce.did(),
        ce.translation_type(),
        ce.slptptr(),
        ce.words()
    );
    let sce = ScalableContextEntry::read_from(&w[..4]);
    let _ = write!(
        sink,
        "{} {:?} {:?}",
        sce.present(),
        sce.pasid_dir(),
        sce.words()
    );
    let pe = PasidEntry {
        qw: [w[0], w[1], w[2]],
        reserved: [w[3], w[4], w[5], w[6], w[7]],
    };
    let _ = write!(
        sink,
        "{} {:?} {:?} {:?} {:?} {:?}",
        pe.present(),
        pe.pgtt(),
        pe.did(),
        pe.ssptptr(),
        pe.fsptptr(),
        pe.words()
    );
    let pde = PasidDirEntry(w[0]);
    let _ = write!(sink, "{} {:?}", pde.present(), pde.table());
    let re = RootEntry {
        lo: w[0],
        reserved: w[1],
    };
    let _ = write!(
        sink,
        "{} {:?} {:?}",
        re.present(),
        re.context_table(),
        re.words()
    );
    let sre = ScalableRootEntry::read_from(&w[..2]);
    let _ = write!(sink, "{:?} {:?}", sre.lower(), sre.upper());
    let d = Descriptor::from_words([w[4], w[5], w[6], w[7]]);
    let _ = write!(sink, "{}", d.desc_type());

    // The fault drain over registers that may say anything: bounded by NFR + 1 records.
    let regs = ScriptedWindow::new(u.take_rest());
    let mut reported = Vec::new();
    let summary = drain_primary_faults(&regs, cap, usize::MAX, |i, rec| reported.push((i, rec)));
    assert!(reported.len() <= usize::from(cap.fault_recording_count()));
    assert_eq!(usize::from(summary.records), reported.len());
    for (i, _) in &reported {
        assert!(*i < cap.fault_recording_count(), "record index {i}");
    }
    assert!(*regs.reads.borrow() <= 4 + 2 * u64::from(cap.fault_recording_count()));
}

/// Target `decode_smmuv3`: event records, IDR registers, and the hitless STE update planner
/// over arbitrary pairs of STEs.
pub fn smmuv3(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut sink = String::new();
    let raw = words::<4>(&mut u);
    let e = Event::decode(raw);
    let _ = write!(sink, "{e:?}");
    assert_eq!(e.raw, raw);
    assert_eq!(
        e.stream_id,
        StreamId((raw[0] >> 32) as u32),
        "StreamID is 63:32"
    );
    if let Some(ssid) = e.substream_id {
        assert!(ssid < 1 << 20, "SubstreamID {ssid:#x} wider than 20 bits");
    }

    let [i0, i1, i3, i5] = <[u32; 4]>::arbitrary(&mut u).unwrap_or_default();
    let (i0, i1, i3, i5) = (Idr0(i0), Idr1(i1), Idr3(i3), Idr5(i5));
    let _ = write!(
        sink,
        "{:?} {:?} {:?} {:?} {:?} {:?}",
        i0.flags(),
        i0.st_level(),
        i0.stall_model(),
        i0.ttendian(),
        i0.ttf(),
        i0.httu()
    );
    let _ = write!(
        sink,
        "{:?} {} {} {} {} {}",
        i1.flags(),
        i1.sidsize(),
        i1.ssidsize(),
        i1.priqs(),
        i1.eventqs(),
        i1.cmdqs()
    );
    let _ = write!(sink, "{:?} {}", i3.flags(), i3.bbml());
    let _ = write!(
        sink,
        "{:?} {:?} {} {}",
        i5.granules(),
        i5.oas_bits(),
        i5.vax(),
        i5.stall_max()
    );
    assert_eq!(i1.sidsize(), i1.0 & 0x3f, "SIDSIZE is 5:0");

    let current = Ste {
        words: words::<8>(&mut u),
    };
    let target = Ste {
        words: words::<8>(&mut u),
    };
    let _ = write!(sink, "{} {}", current.valid(), current.config_raw());
    check_ste_plan(&current, &target);

    let regs = ScriptedWindow::new(u.take_rest());
    let _ = write!(sink, "{:?}", Idr::read(&regs));
}

/// What the unit uses of `w`.
fn view(w: &[u64; 8]) -> [u64; 8] {
    let used = used_bits(w);
    core::array::from_fn(|i| w[i] & used[i])
}

/// The plan ends at `target`, has at most three sync points, and between two sync points the
/// unit, reading any mix of old and new words, sees the configuration before or after them;
/// at every sync point that is the current one, the target, or abort.
fn check_ste_plan(current: &Ste, target: &Ste) {
    let plan = plan_update(current, target);
    assert!(plan.sync_count() <= 3, "{} syncs", plan.sync_count());
    let mut state = current.words;
    let mut group_start = state;
    let allowed = [
        view(&current.words),
        view(&target.words),
        view(&Ste::ABORT.words),
    ];
    for step in plan.steps() {
        match *step {
            UpdateStep::Write { word, value } => {
                let slot = state
                    .get_mut(usize::from(word))
                    .expect("word index below 8");
                *slot = value;
            }
            UpdateStep::Sync => {
                check_group(&group_start, &state);
                assert!(
                    allowed.contains(&view(&state)),
                    "sync point in a state the unit reads as neither configuration: {state:x?}"
                );
                group_start = state;
            }
        }
    }
    assert_eq!(group_start, state, "writes after the last sync point");
    assert_eq!(state, target.words, "the plan does not end at the target");
}

/// Every mix of `before` and `after` words views as `before` or `after`.
fn check_group(before: &[u64; 8], after: &[u64; 8]) {
    let changed: Vec<usize> = (0..8).filter(|&i| before[i] != after[i]).collect();
    let (vb, va) = (view(before), view(after));
    for mask in 0u32..1 << changed.len() {
        let mut mix = *before;
        for (bit, &i) in changed.iter().enumerate() {
            if mask >> bit & 1 == 1 {
                mix[i] = after[i];
            }
        }
        let v = view(&mix);
        assert!(
            v == vb || v == va,
            "a unit reading {mix:x?} mid-update sees neither {before:x?} nor {after:x?}"
        );
    }
}

/// Reads a zerocopy entry from raw words (what the hardware-walked memory holds).
trait FromWords: Sized {
    fn read_from(words: &[u64]) -> Self;
}

impl<T: zerocopy::FromBytes> FromWords for T {
    fn read_from(words: &[u64]) -> Self {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        T::read_from_prefix(&bytes)
            .map(|(t, _)| t)
            .expect("enough words for the entry")
    }
}
