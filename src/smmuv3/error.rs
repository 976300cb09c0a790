//! The SMMUv3 layer's error type.
//!
//! Every variant carries the value that caused it, so a log line is enough to find the fault.
//! Spec references are to Arm IHI 0070 G.b.

use core::fmt;

/// Why a `CMDQ_CONS.ERR` was raised (IHI 0070 G.b §7.1, CERROR codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandErrorKind {
    /// `CERROR_ILL` (0x01): unknown opcode, or a command field the unit rejects. The command
    /// was replaced by a CMD_SYNC: it never takes effect.
    Illegal,
    /// `CERROR_ABT` (0x02): an abort while fetching the command. The command stays in the
    /// queue and is fetched again on every acknowledgement.
    Abort,
    /// `CERROR_ATC_INV_SYNC` (0x03): a CMD_SYNC whose ATS invalidations timed out. The CMD_SYNC
    /// stays in the queue and runs again on every acknowledgement; its wait fails with this
    /// even if it then completes (the invalidations it waited for did not take effect).
    AtcInvalidationSync,
    /// Any other code: kept as read, handled as `Illegal`.
    Other(u8),
}

impl CommandErrorKind {
    /// Decodes the 7-bit `CMDQ_CONS.ERR` field.
    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Illegal,
            2 => Self::Abort,
            3 => Self::AtcInvalidationSync,
            other => Self::Other(other),
        }
    }

    /// The `CMDQ_CONS.ERR` code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Illegal => 1,
            Self::Abort => 2,
            Self::AtcInvalidationSync => 3,
            Self::Other(c) => c,
        }
    }
}

/// Errors of the SMMUv3 driver layer.
///
/// Each variant says what the caller does next. Three kinds of answer recur:
/// - **nothing changed**: fix the argument or the configuration (or free memory) and call again;
/// - **retry**: the call stopped part-way, in a state the crate keeps consistent (no page is
///   freed, no tag reused while the unit may still use it): the same call again, once the
///   cause has gone, completes it and issues every invalidation the failed attempt lost;
/// - **reset the unit**: the hardware is unusable ([`SmmuError::ServiceFailure`]) or did not
///   take a control register write; pages the hardware may still reach stay allocated (leaked on
///   purpose) until the unit is reset and enabled again.
///
/// `SmmuUnit::audit` checks, after any error, that the unit's books
/// still match its tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SmmuError {
    /// The page allocator had no page of `1 << size_log2` bytes. Nothing changed (the pages the
    /// call had taken were given back): free memory, then call again.
    NoMemory {
        /// Requested size, log2 bytes.
        size_log2: u32,
    },
    /// A value does not fit the named field. Nothing changed: a caller or configuration bug.
    FieldOutOfRange {
        /// The spec's name of the field.
        field: &'static str,
        /// The rejected value.
        value: u64,
    },
    /// An address has bits set below the named field's alignment. Nothing changed: the
    /// allocator handed out a misaligned page (an embedder bug).
    AddressMisaligned {
        /// The spec's name of the field.
        field: &'static str,
        /// The rejected address.
        address: u64,
        /// Required alignment, log2 bytes.
        align_log2: u32,
    },
    /// An address is wider than the named field. Nothing changed: give the unit pages below its
    /// output size.
    AddressTooWide {
        /// The spec's name of the field.
        field: &'static str,
        /// The rejected address.
        address: u64,
        /// Width of the field, in address bits.
        bits: u32,
    },
    /// The allocator gave a page for a structure the unit reads -- the stream table or one of
    /// its level-2 tables, a CD table or leaf, the command or event queue, the CMD_SYNC MSI
    /// page -- that does not lie below `2^oas` (`IDR5.OAS`): the address bits above the
    /// unit's output size are RES0 in `STRTAB_BASE`, `CMDQ_BASE`, `EVENTQ_BASE`, `L1STD`,
    /// `STE.S1ContextPtr`, `L1CD` and `CMD_SYNC`, and a unit need not store them (§6.3.23-§6.3.24,
    /// §6.3.26, §6.3.29, §5.1, §5.2, §5.4.1, §4.7), so it would read another page. The page was given
    /// back and nothing changed: give the unit memory below `2^oas`.
    TableOutOfRange {
        /// Which structure.
        table: &'static str,
        /// Physical address of the page the allocator gave.
        pa: crate::mem::PhysAddr,
        /// The unit's output address size (`IDR5.OAS`), in bits.
        oas: u32,
    },
    /// A configuration register read back other than written (`STRTAB_BASE`,
    /// `STRTAB_BASE_CFG`): the unit ignored the write. Found before translation is turned on,
    /// so the unit is not enabled and walks no table of the previous owner; as
    /// [`Cr0AckTimeout`](Self::Cr0AckTimeout): call `enable` again, reset the unit if it
    /// persists.
    RegisterIgnored {
        /// The register, as the spec names it.
        register: &'static str,
        /// The value written.
        wanted: u64,
        /// The value read back.
        found: u64,
    },
    /// `CR0ACK` did not reach the value written to `CR0` in time: the unit ignored or has not
    /// yet taken the write. The unit is not enabled ([`SmmuUnit::enable`](super::SmmuUnit::enable)
    /// and [`disable`](super::SmmuUnit::disable) leave it so): call `enable` again, and reset
    /// the unit if it keeps failing. Its tables are kept.
    Cr0AckTimeout {
        /// The value written to `CR0`.
        wanted: u32,
        /// The last `CR0ACK` read.
        last: u32,
    },
    /// `IRQ_CTRLACK` did not reach the value written to `IRQ_CTRL` in time. As
    /// [`Cr0AckTimeout`](Self::Cr0AckTimeout).
    IrqCtrlAckTimeout {
        /// The value written to `IRQ_CTRL`.
        wanted: u32,
        /// The last `IRQ_CTRLACK` read.
        last: u32,
    },
    /// `GBPA.UPDATE` did not clear in time. As [`Cr0AckTimeout`](Self::Cr0AckTimeout).
    GbpaUpdateTimeout {
        /// The last `GBPA` read.
        last: u32,
    },
    /// A queue or table size the unit does not support. Nothing changed: choose a smaller one.
    SizeUnsupported {
        /// Which structure.
        what: &'static str,
        /// Requested size, log2 entries.
        log2: u32,
        /// Largest size the unit or the allocator supports, log2 entries.
        max_log2: u32,
    },
    /// A StreamID beyond the stream table. Nothing changed.
    StreamIdOutOfRange {
        /// The rejected StreamID.
        sid: u32,
        /// The table covers StreamIDs below `1 << log2`.
        log2: u32,
    },
    /// A SubstreamID beyond the CD table. Nothing changed.
    SubstreamIdOutOfRange {
        /// The rejected SubstreamID.
        ssid: u32,
        /// The table covers SubstreamIDs below `1 << log2`.
        log2: u32,
    },
    /// The command queue had no room for a command within the poll budget: the unit is not
    /// consuming. Retry (the commands queued so far stay queued); reset the unit if it persists.
    CommandQueueFull {
        /// The producer register value.
        prod: u32,
        /// The last consumer register value read.
        cons: u32,
    },
    /// A CMD_SYNC did not complete within the poll budget. The commands before it may or may
    /// not have taken effect: the call kept every page and tag they cover. A failed `flush` or
    /// `reclaim` leaves the domain owing a whole-tag invalidation (`SmmuUnit::audit` counts
    /// it), issued by its next flush (even with an empty gather), reclaim or free; an attach
    /// or detach leaves the stream unsettled until its retry. Retry; reset the unit if it
    /// persists.
    SyncTimeout {
        /// Queue position just past the CMD_SYNC.
        prod: u32,
        /// The last consumer register value read.
        cons: u32,
    },
    /// The unit stopped at a command (`GERROR.CMDQ_ERR`), acknowledged. With
    /// [`CommandErrorKind::Illegal`] the command was replaced by a CMD_SYNC (a driver bug, or a
    /// unit rejecting a field); with `Abort` it was fetched again until the poll budget ran out
    /// and stays queued; with `AtcInvalidationSync` an ATS invalidation before the call's
    /// CMD_SYNC timed out, even once: the CMD_SYNC, run again, may have completed, which says
    /// nothing of the invalidations that timed out. Either way the call kept every page and tag
    /// the command covers: retry (the retry issues the command again); reset the unit (or turn
    /// ATS off for the device that does not answer) if it persists.
    CommandError {
        /// Queue index of the offending command.
        index: u32,
        /// Its opcode.
        opcode: u8,
        /// The `CMDQ_CONS.ERR` code.
        kind: CommandErrorKind,
    },
    /// The CMD_SYNC completed (`CMDQ_CONS` passed it, so every earlier command took effect) but
    /// its completion MSI to `address` aborted (`GERROR.MSI_CMDQ_ABT_ERR`, acknowledged). The
    /// queue observes completion through `CMDQ_CONS` from now on. The call stopped as after a
    /// [`SyncTimeout`](Self::SyncTimeout): retry it.
    SyncMsiAborted {
        /// The MSI target (the queue's completion word).
        address: u64,
    },
    /// The unit entered service failure mode (`GERROR.SFM_ERR`, IHI 0070 G.b §12.3): it
    /// terminates every transaction and consumes no command. The unit is marked failed and
    /// turned off; every later call returns this error and changes nothing (pages the unit may
    /// have cached stay allocated). Reset the SMMU (an implementation-defined procedure that
    /// includes a system reset), then call [`SmmuUnit::enable`](super::SmmuUnit::enable): it
    /// rebuilds the unit from its books and invalidates every cache.
    ServiceFailure {
        /// The active GERROR bits when it was seen.
        gerror: u32,
    },
    /// A descriptor is live (valid) and cannot be rewritten in place by this operation.
    /// Nothing changed.
    DescriptorLive {
        /// Which structure.
        what: &'static str,
        /// Its index (StreamID or SubstreamID).
        index: u32,
    },
    /// The allocator could not translate the physical address of a table the crate linked (an
    /// embedder bug). Nothing changed.
    NotMapped {
        /// The physical address.
        address: u64,
    },
    /// An STE or CD combination the driver refuses to build, or a unit that is not enabled.
    /// Nothing changed.
    InvalidConfig {
        /// What is wrong, in the spec's terms.
        reason: &'static str,
    },
    /// A platform declaration ([`Platform::declare`](super::Platform::declare), or one built
    /// by hand in [`SmmuConfig::platform`](super::SmmuConfig::platform)) whose StreamID range
    /// is empty: `first > last`. Nothing changed: a caller or firmware-parsing bug.
    EmptyDeclaration {
        /// The range's first StreamID.
        first: super::StreamId,
        /// The range's last StreamID, below `first`.
        last: super::StreamId,
    },
    /// A platform declaration beyond the `max` ranges a [`Platform`](super::Platform) holds.
    /// Nothing changed: merge adjacent ranges with equal facts, or declare the facts most
    /// devices share for the whole unit ([`Platform::unit`](super::Platform::unit)).
    TooManyDeclarations {
        /// The first StreamID of the range that did not fit.
        first: super::StreamId,
        /// Its last StreamID.
        last: super::StreamId,
        /// [`MAX_DECLARATIONS`](super::MAX_DECLARATIONS).
        max: usize,
    },
    /// Translation is off (`CR0.SMMUEN` = 0, after [`disable`](super::SmmuUnit::disable) or
    /// before `enable` completed): the unit ignores `CMD_ATC_INV` (IHI 0070 G.b §6.3.9.6,
    /// §4.5), so the ATC of ATS stream `sid` cannot be invalidated. The call kept every page and
    /// tag it was to release: a flush or reclaim leaves the domain owing its invalidation, a
    /// detach or attach leaves the stream unsettled with its old domain retiring (held, so
    /// `domain_free` is refused). [`enable`](super::SmmuUnit::enable) invalidates the whole
    /// ATC of every ATS stream whose STE allows ATS; retry after it.
    AtcInvalidationIgnored {
        /// The StreamID whose ATC would have been invalidated.
        sid: u32,
    },
    /// The CMD_SYNC after `enable`'s whole-ATC `CMD_ATC_INV` of StreamID `sid` reported
    /// `CERROR_ATC_INV_SYNC` (the endpoint did not answer: D3cold, removed). `enable` turned
    /// `SMMUEN` off again. Detach the stream (its STE is written to abort while disabled; the
    /// call fails with [`Self::AtcInvalidationIgnored`] and leaves it unsettled), then
    /// `enable` again: it does not wait on a stream whose STE aborts.
    AtcReinitTimeout {
        /// The StreamID whose ATC invalidation timed out.
        sid: u32,
    },
    /// Translation may be off (`CR0.SMMUEN` written 0, its `CR0ACK` not seen: a
    /// [`disable`](super::SmmuUnit::disable) that failed with [`Self::Cr0AckTimeout`]): the
    /// unit may ignore `CMD_PRI_RESP` (§6.3.9.6), so a page request of StreamID `sid` cannot be
    /// answered. Nothing was queued; the fault is still outstanding until a `disable` or
    /// `enable` completes the clear, which forgets it (the endpoint's PRI is re-initialised
    /// before the re-enable). After a `disable` that completed, an answer is
    /// `NotOutstanding`.
    PriResponseIgnored {
        /// The StreamID the answer was for.
        sid: u32,
    },
    /// The unit fixes where its stream table or queues are (`IDR1.TABLES_PRESET`,
    /// `QUEUES_PRESET`) or places them relative to a base of its own (`IDR1.REL`): the
    /// structures this driver builds would not be the ones the unit walks. Refused at
    /// construction; nothing was allocated or written.
    Preset {
        /// The bits of `SMMU_IDR1` among `TABLES_PRESET` (30), `QUEUES_PRESET` (29) and `REL`
        /// (28) that are set.
        idr1: u32,
    },
}

impl fmt::Display for CommandErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Illegal => f.write_str("CERROR_ILL"),
            Self::Abort => f.write_str("CERROR_ABT"),
            Self::AtcInvalidationSync => f.write_str("CERROR_ATC_INV_SYNC"),
            Self::Other(code) => write!(f, "CERROR {code:#x}"),
        }
    }
}

impl fmt::Display for SmmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoMemory { size_log2 } => write!(f, "no memory for a 2^{size_log2}-byte page"),
            Self::EmptyDeclaration { first, last } => write!(
                f,
                "platform declaration for StreamIDs {:#x}..={:#x}: the range is empty",
                first.0, last.0
            ),
            Self::TooManyDeclarations { first, last, max } => write!(
                f,
                "platform declaration for StreamIDs {:#x}..={:#x}: all {max} are made",
                first.0, last.0
            ),
            Self::TableOutOfRange { table, pa, oas } => write!(
                f,
                "{table} page at {:#x} is not below the {oas}-bit output address size",
                pa.get()
            ),
            Self::FieldOutOfRange { field, value } => {
                write!(f, "value {value:#x} does not fit field {field}")
            }
            Self::AddressMisaligned {
                field,
                address,
                align_log2,
            } => {
                write!(
                    f,
                    "{field} address {address:#x} is not 2^{align_log2}-aligned"
                )
            }
            Self::AddressTooWide {
                field,
                address,
                bits,
            } => {
                write!(f, "{field} address {address:#x} is wider than {bits} bits")
            }
            Self::RegisterIgnored {
                register,
                wanted,
                found,
            } => write!(f, "{register} reads {found:#x}, written {wanted:#x}"),
            Self::Cr0AckTimeout { wanted, last } => {
                write!(f, "CR0ACK stayed {last:#x}, expected {wanted:#x}")
            }
            Self::IrqCtrlAckTimeout { wanted, last } => {
                write!(f, "IRQ_CTRLACK stayed {last:#x}, expected {wanted:#x}")
            }
            Self::GbpaUpdateTimeout { last } => write!(f, "GBPA.UPDATE stuck ({last:#x})"),
            Self::SizeUnsupported {
                what,
                log2,
                max_log2,
            } => {
                write!(
                    f,
                    "{what} of 2^{log2} entries exceeds the maximum 2^{max_log2}"
                )
            }
            Self::StreamIdOutOfRange { sid, log2 } => {
                write!(
                    f,
                    "StreamID {sid:#x} outside the 2^{log2}-entry stream table"
                )
            }
            Self::SubstreamIdOutOfRange { ssid, log2 } => {
                write!(
                    f,
                    "SubstreamID {ssid:#x} outside the 2^{log2}-entry CD table"
                )
            }
            Self::CommandQueueFull { prod, cons } => {
                write!(f, "command queue full (PROD {prod:#x}, CONS {cons:#x})")
            }
            Self::SyncTimeout { prod, cons } => {
                write!(f, "CMD_SYNC timed out (PROD {prod:#x}, CONS {cons:#x})")
            }
            Self::CommandError {
                index,
                opcode,
                kind,
            } => {
                write!(
                    f,
                    "{kind} at command queue index {index} (opcode {opcode:#04x})"
                )
            }
            Self::SyncMsiAborted { address } => write!(
                f,
                "CMD_SYNC completion MSI to {address:#x} aborted (GERROR.MSI_CMDQ_ABT_ERR)"
            ),
            Self::ServiceFailure { gerror } => write!(
                f,
                "service failure mode (GERROR.SFM_ERR, active {gerror:#x}): reset the SMMU"
            ),
            Self::DescriptorLive { what, index } => write!(f, "{what} {index:#x} is live"),
            Self::NotMapped { address } => write!(f, "table at {address:#x} is not mapped"),
            Self::InvalidConfig { reason } => write!(f, "invalid configuration: {reason}"),
            Self::PriResponseIgnored { sid } => write!(
                f,
                "translation disabled (CR0.SMMUEN = 0): CMD_PRI_RESP for StreamID {sid:#x} would be ignored"
            ),
            Self::AtcReinitTimeout { sid } => write!(
                f,
                "enable: the ATC invalidation of StreamID {sid:#x} timed out (CERROR_ATC_INV_SYNC); detach it, then enable"
            ),
            Self::AtcInvalidationIgnored { sid } => write!(
                f,
                "translation disabled (CR0.SMMUEN = 0): CMD_ATC_INV for StreamID {sid:#x} would be ignored"
            ),
            Self::Preset { idr1 } => write!(
                f,
                "the unit presets its tables or queues (IDR1 {idr1:#010x}: TABLES_PRESET, QUEUES_PRESET or REL)"
            ),
        }
    }
}
