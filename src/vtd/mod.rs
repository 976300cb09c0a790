//! Intel VT-d DMA-remapping hardware layer.
//!
//! Implements the structures and interfaces of the *Intel Virtualization Technology for Directed
//! I/O Architecture Specification*, **revision 4.1** (all section numbers in this module tree
//! refer to that revision; sub-sections of §6.5.3, §7 and §11.4 beyond §11.4.8 are named by
//! title rather than number until checked against the PDF):
//!
//! | file | spec |
//! |---|---|
//! | [`regs`] | §11.4 Register Descriptions (offsets, GCMD/GSTS handshake, RTADDR, FSTS) |
//! | [`reg_invalidation`] | §6.5.1 Register-based Invalidation Interface (CCMD, IOTLB registers) |
//! | [`cap`], [`ecap`] | §11.4.2 Capability Register, §11.4.3 Extended Capability Register |
//! | [`root_entry`] | §9.1 Root Entry, §9.2 Scalable-Mode Root Entry |
//! | [`context_entry`] | §9.3 Context Entry, §9.4 Scalable-Mode Context-Entry |
//! | [`pasid_entry`] | §9.5 PASID Directory Entry, §9.6 PASID Table Entry |
//! | [`live_entry`] | §6.5.3 / §9: ordering of writes to entries hardware may be walking |
//! | [`inv_desc`] | §6.5.2.1-§6.5.2.8 invalidation descriptors |
//! | [`inv_queue`] | §6.5.2 Queued Invalidation Interface, §6.5.2.10 error handling |
//! | [`platform`] | §8.1 DMAR `Host Address Width`: facts no register reports |
//! | [`fault`] | §7 fault reporting, §9.9 Fault Record, §11.4 Fault Recording Registers |
//! | [`prq`] | §7 Page Request (page request descriptor, overflow, page group response), §11.4 PQH/PQT/PQA/PRS |
//! | [`unit`](mod@unit) | the unit: enable/disable (§10.4, §6.5), domains, attach/detach, gather flush |
//! | `root_table`, `context_table`, `pasid_table` | §3.4 the tables a unit owns (§9.1-§9.6) |
//! | `domain` | §3.6/§3.7 format choice from `CAP`/`ECAP`, domain-IDs |
//! | `flush`, `invalidation` | §6.5.1/§6.5.2 gather to fewest invalidations, one wait |
//!
//! Register access goes through [`crate::mmio::RegisterWindow`]; every wait is bounded by a poll
//! budget and fails with [`Error::Timeout`].

mod bits;
mod context_table;
mod domain;
mod error;
mod flush;
mod ids;
mod invalidation;
mod pasid_table;
mod root_table;

pub mod cap;
pub mod context_entry;
pub mod ecap;
pub mod fault;
pub mod inv_desc;
pub mod inv_queue;
pub mod live_entry;
pub mod pasid_entry;
pub mod platform;
pub mod prq;
pub mod reg_invalidation;
pub mod regs;
pub mod root_entry;
pub mod unit;

#[cfg(test)]
mod test_support;

pub use bits::Field;
pub use error::{Error, QueueErrorKind, Wait};
pub use flush::PAGE_SELECTIVE_LIMIT;
pub use ids::{DomainId, Pasid, SourceId};
pub use invalidation::InvalidationStats;
pub use platform::HostAddressWidth;
pub use unit::{AttachOptions, AuditError, AuditReport, Mode, VtdConfig, VtdUnit};
