//! The SMMUv3 layer's error type.
//!
//! Every variant carries the value that caused it, so a log line is enough to find the fault.
//! Spec references are to Arm IHI 0070 G.b.

use core::fmt;

/// Why a `CMDQ_CONS.ERR` was raised (IHI 0070 G.b §7.1, CERROR codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandErrorKind {
    /// `CERROR_ILL` (0x01): unknown opcode, or a command field the unit rejects.
    Illegal,
    /// `CERROR_ABT` (0x02): an abort while fetching the command.
    Abort,
    /// `CERROR_ATC_INV_SYNC` (0x03): a CMD_SYNC whose ATS invalidations timed out.
    AtcInvalidationSync,
    /// Any other code: kept as read.
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
}

/// Errors of the SMMUv3 driver layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SmmuError {
    /// The page allocator had no page of `1 << size_log2` bytes.
    NoMemory {
        /// Requested size, log2 bytes.
        size_log2: u32,
    },
    /// A value does not fit the named field.
    FieldOutOfRange {
        /// The spec's name of the field.
        field: &'static str,
        /// The rejected value.
        value: u64,
    },
    /// An address has bits set below the named field's alignment.
    AddressMisaligned {
        /// The spec's name of the field.
        field: &'static str,
        /// The rejected address.
        address: u64,
        /// Required alignment, log2 bytes.
        align_log2: u32,
    },
    /// An address is wider than the named field.
    AddressTooWide {
        /// The spec's name of the field.
        field: &'static str,
        /// The rejected address.
        address: u64,
        /// Width of the field, in address bits.
        bits: u32,
    },
    /// `CR0ACK` did not reach the value written to `CR0` in time.
    Cr0AckTimeout {
        /// The value written to `CR0`.
        wanted: u32,
        /// The last `CR0ACK` read.
        last: u32,
    },
    /// `IRQ_CTRLACK` did not reach the value written to `IRQ_CTRL` in time.
    IrqCtrlAckTimeout {
        /// The value written to `IRQ_CTRL`.
        wanted: u32,
        /// The last `IRQ_CTRLACK` read.
        last: u32,
    },
    /// `GBPA.UPDATE` did not clear in time.
    GbpaUpdateTimeout {
        /// The last `GBPA` read.
        last: u32,
    },
    /// A queue or table size the unit does not support.
    SizeUnsupported {
        /// Which structure.
        what: &'static str,
        /// Requested size, log2 entries.
        log2: u32,
        /// Largest size the unit or the allocator supports, log2 entries.
        max_log2: u32,
    },
    /// A StreamID beyond the stream table.
    StreamIdOutOfRange {
        /// The rejected StreamID.
        sid: u32,
        /// The table covers StreamIDs below `1 << log2`.
        log2: u32,
    },
    /// A SubstreamID beyond the CD table.
    SubstreamIdOutOfRange {
        /// The rejected SubstreamID.
        ssid: u32,
        /// The table covers SubstreamIDs below `1 << log2`.
        log2: u32,
    },
    /// The command queue had no room for a command within the poll budget.
    CommandQueueFull {
        /// The producer register value.
        prod: u32,
        /// The last consumer register value read.
        cons: u32,
    },
    /// A CMD_SYNC did not complete within the poll budget.
    SyncTimeout {
        /// Queue position just past the CMD_SYNC.
        prod: u32,
        /// The last consumer register value read.
        cons: u32,
    },
    /// The unit stopped at a command (`GERROR.CMDQ_ERR`); the command was replaced by a
    /// CMD_SYNC and the error acknowledged, so the queue runs again.
    CommandError {
        /// Queue index of the offending command.
        index: u32,
        /// Its opcode.
        opcode: u8,
        /// The `CMDQ_CONS.ERR` code.
        kind: CommandErrorKind,
    },
    /// A descriptor is live (valid) and cannot be rewritten in place by this operation.
    DescriptorLive {
        /// Which structure.
        what: &'static str,
        /// Its index (StreamID or SubstreamID).
        index: u32,
    },
    /// The allocator could not translate the physical address of a table the crate linked.
    NotMapped {
        /// The physical address.
        address: u64,
    },
    /// An STE or CD combination the driver refuses to build.
    InvalidConfig {
        /// What is wrong, in the spec's terms.
        reason: &'static str,
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
            Self::DescriptorLive { what, index } => write!(f, "{what} {index:#x} is live"),
            Self::NotMapped { address } => write!(f, "table at {address:#x} is not mapped"),
            Self::InvalidConfig { reason } => write!(f, "invalid configuration: {reason}"),
        }
    }
}
