//! Errors of the AMD-Vi hardware layer: AMD I/O Virtualization Technology (IOMMU)
//! Specification, document 48882, revision 3.x: §3.4 "IOMMU MMIO Registers" (the handshakes a
//! wait is bounded on), §2.4 "Commands" and §2.5 "Event Logging" (the command-buffer errors).

use core::fmt;

use crate::iommu;
use crate::mem::PhysAddr;

/// What a bounded wait on the hardware was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// The store of a COMPLETION_WAIT carrying `sequence` (§2.4 "COMPLETION_WAIT").
    CompletionWait {
        /// The data the command stores.
        sequence: u64,
    },
    /// The command buffer head to advance so that a command fits.
    CommandSpace,
    /// An event log entry the tail has passed to be written (its code non-zero; §2.5).
    EventEntry {
        /// The entry's byte offset in the log.
        offset: u32,
    },
    /// A `Status` run bit (`CmdBufRun`, `EventLogRun`) to follow its enable bit (§3.4 "IOMMU Status Register").
    Run {
        /// The status bit awaited.
        status: u64,
        /// Awaited value.
        set: bool,
    },
}

/// Which command-buffer error the unit logged (§2.5, `ILLEGAL_COMMAND_ERROR`,
/// `COMMAND_HARDWARE_ERROR`), or that it stopped without a log entry naming the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandErrorKind {
    /// `ILLEGAL_COMMAND_ERROR`: an unknown opcode or a reserved bit set.
    IllegalCommand,
    /// `COMMAND_HARDWARE_ERROR`: the fetch of the command failed (master abort, target abort,
    /// data error).
    CommandHardware,
    /// `Status.CmdBufRun` cleared with no matching event in the log (event log off or
    /// overflowed).
    Stopped,
}

/// An error of the AMD-Vi layer; every variant carries the value that caused it. Refusals
/// ([`Unsupported`](Self::Unsupported), [`InvalidArgument`](Self::InvalidArgument),
/// [`NoMemory`](Self::NoMemory), [`TableOutOfRange`](Self::TableOutOfRange)) changed nothing;
/// hardware errors ([`Timeout`](Self::Timeout), [`CommandError`](Self::CommandError),
/// [`UnexpectedState`](Self::UnexpectedState)) stopped the call in a state the unit keeps safe
/// and that the same call again completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A bounded wait ran out of polls.
    Timeout {
        /// What was awaited.
        what: Wait,
        /// The poll budget that ran out.
        polls: u32,
    },
    /// The unit stopped at a command: it was replaced by a harmless one and the buffer runs
    /// again; the invalidation it carried is owed and issued by the retry.
    CommandError {
        /// What the unit reported.
        kind: CommandErrorKind,
        /// The offending command's byte offset in the buffer.
        head: u32,
        /// Its opcode (bits 63:60 of its first quadword).
        opcode: u8,
    },
    /// An ATS device did not complete an INVALIDATE_IOTLB_PAGES of the call in time: the unit
    /// logged IOTLB_INV_TIMEOUT (§2.5) naming the command, treated it as done and ran on, so
    /// the device may still hold the translations. The call fails as for a command error: the
    /// invalidation is owed and the pages it covers kept; a retry issues it again. Also
    /// returned, with `device_id` `None`, when the event log overflowed during a call that
    /// issued INVALIDATE_IOTLB_PAGES: a time-out cannot be ruled out (drain the log, then
    /// retry).
    IotlbInvTimeout {
        /// The event's `DeviceID`.
        device_id: Option<u16>,
        /// The physical address of the command that timed out (the event's address; 0 when
        /// unknown).
        command: u64,
    },
    /// The hardware lacks what the request needs. Nothing changed.
    Unsupported {
        /// The missing capability, in the spec's name.
        what: &'static str,
        /// The register value it was checked against.
        value: u64,
    },
    /// The page allocator had no memory. Nothing changed.
    NoMemory,
    /// An argument is out of range for its field. Nothing changed.
    InvalidArgument {
        /// Which argument, and the constraint.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A page for a structure the unit reads lies at or above 2^52 (the base address fields
    /// are bits 51:12). The page was given back.
    TableOutOfRange {
        /// Which structure.
        table: &'static str,
        /// Where the page was.
        pa: PhysAddr,
    },
    /// A register did not hold what the call needs (`register` names it).
    UnexpectedState {
        /// The register, as the spec names it.
        register: &'static str,
        /// Its value.
        value: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Timeout { what, polls } => write!(f, "timed out ({polls} polls) on {what:?}"),
            Error::CommandError { kind, head, opcode } => write!(
                f,
                "command error {kind:?} at offset {head:#x} (opcode {opcode:#x})"
            ),
            Error::IotlbInvTimeout {
                device_id: Some(d),
                command,
            } => write!(
                f,
                "IOTLB_INV_TIMEOUT: device {d:#06x} did not complete the INVALIDATE_IOTLB_PAGES at {command:#x}"
            ),
            Error::IotlbInvTimeout {
                device_id: None, ..
            } => write!(
                f,
                "IOTLB_INV_TIMEOUT not ruled out: the event log overflowed during INVALIDATE_IOTLB_PAGES"
            ),
            Error::Unsupported { what, value } => write!(f, "unsupported: {what} ({value:#x})"),
            Error::NoMemory => write!(f, "no memory"),
            Error::InvalidArgument { what, value } => {
                write!(f, "invalid argument: {what} ({value:#x})")
            }
            Error::TableOutOfRange { table, pa } => {
                write!(f, "{table} page at {:#x} is above 2^52", pa.get())
            }
            Error::UnexpectedState { register, value } => {
                write!(f, "unexpected {register} {value:#x}")
            }
        }
    }
}

/// A bounded wait, named for the `Iommu` layer.
const fn wait_name(what: Wait) -> &'static str {
    match what {
        Wait::CompletionWait { .. } => "the COMPLETION_WAIT store",
        Wait::CommandSpace => "free command-buffer entries",
        Wait::EventEntry { .. } => "an event log entry the tail passed to be written",
        Wait::Run { .. } => "Status CmdBufRun/EventLogRun to follow Control",
    }
}

impl From<Error> for iommu::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Timeout { what, .. } => iommu::Error::Timeout {
                what: wait_name(what),
            },
            Error::CommandError { kind, head, opcode } => iommu::Error::CommandError {
                what: match kind {
                    CommandErrorKind::IllegalCommand => "ILLEGAL_COMMAND_ERROR",
                    CommandErrorKind::CommandHardware => "COMMAND_HARDWARE_ERROR",
                    CommandErrorKind::Stopped => "command buffer stopped (Status.CmdBufRun)",
                },
                code: u64::from(head) << 8 | u64::from(opcode),
            },
            Error::IotlbInvTimeout { device_id, .. } => iommu::Error::CommandError {
                what: match device_id {
                    Some(_) => {
                        "IOTLB_INV_TIMEOUT (an ATS device did not complete INVALIDATE_IOTLB_PAGES)"
                    }
                    None => "IOTLB_INV_TIMEOUT not ruled out (event log overflow: drain the log)",
                },
                code: device_id.map_or(u64::from(u32::MAX), u64::from),
            },
            Error::Unsupported { what, .. } => {
                iommu::Error::Unsupported(iommu::Missing::Mode { what })
            }
            Error::NoMemory => iommu::Error::NoMemory,
            Error::InvalidArgument { what, value } => iommu::Error::InvalidArgument { what, value },
            Error::TableOutOfRange { table, pa } => iommu::Error::TableOutOfRange {
                table,
                pa,
                width: 52,
            },
            Error::UnexpectedState { register, value } => iommu::Error::Hardware {
                what: register,
                code: value,
            },
        }
    }
}
