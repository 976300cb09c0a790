//! The shadow: what each context's owner asked for, kept beside the layer.

use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

use super::LABELS;
use crate::ioasid::IoasidFlags;
use crate::pgtable::Prot;

/// What the owner asked for, per context.
#[derive(Default)]
pub(super) struct CtxShadow {
    pub(super) quota: u32,
    /// Bound devices: handle -> (label index, no-snoop capable, attached IOASID).
    pub(super) devs: BTreeMap<u16, (usize, bool, Option<u16>)>,
    /// IOASIDs: id -> (flags, page IOVA -> (page PA, prot)).
    pub(super) ios: BTreeMap<u16, (IoasidFlags, Pages)>,
    pub(super) pasids: BTreeSet<u32>,
    /// (device handle, PASID) -> IOASID.
    pub(super) pasid_att: BTreeMap<(u16, u32), u16>,
    /// Outstanding grants per device handle.
    pub(super) grants: BTreeMap<u16, u32>,
}

/// Mapped pages of an IOASID: page IOVA -> (page PA, prot).
pub(super) type Pages = BTreeMap<u64, (u64, Prot)>;

/// A device as the hardware sees it: (label index, PASID).
pub(super) type Pair = (usize, Option<u32>);

impl CtxShadow {
    pub(super) fn new(quota: u32) -> Self {
        Self {
            quota,
            ..Self::default()
        }
    }

    pub(super) fn handle_of(&self, label: usize) -> Option<u16> {
        self.devs
            .iter()
            .find(|(_, d)| d.0 == label)
            .map(|(&h, _)| h)
    }

    pub(super) fn in_use(&self, io: u16) -> bool {
        self.devs.values().any(|d| d.2 == Some(io)) || self.pasid_att.values().any(|&i| i == io)
    }

    /// Every (device, PASID) of this context that is attached, with its IOASID.
    pub(super) fn pairs(&self) -> Vec<(Pair, u16)> {
        let mut v: Vec<_> = self
            .devs
            .values()
            .filter_map(|d| d.2.map(|io| ((d.0, None), io)))
            .collect();
        for (&(h, p), &io) in &self.pasid_att {
            if let Some(d) = self.devs.get(&h) {
                v.push(((d.0, Some(p)), io));
            }
        }
        v
    }

    /// Units the IOASID has a domain on (something attached through that unit).
    pub(super) fn units_of(&self, io: u16) -> [bool; 2] {
        let mut u = [false; 2];
        for ((l, _), i) in self.pairs() {
            if i == io {
                u[usize::from(LABELS[l].0)] = true;
            }
        }
        u
    }
}
