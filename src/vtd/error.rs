//! Errors of the VT-d hardware layer (Intel VT-d specification rev. 4.1).

use core::fmt;

/// What a bounded wait on the hardware was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// `GSTS` to reflect a `GCMD` command (§11.4.4); `status` is the GSTS bit awaited and
    /// `set` whether it was awaited set or clear.
    GlobalStatus {
        /// The GSTS bit mask.
        status: u32,
        /// Awaited value.
        set: bool,
    },
    /// `CCMD.ICC` to clear (§11.4.7).
    ContextCommand,
    /// `IOTLB_REG.IVT` to clear (§11.4.8.1).
    IotlbInvalidate,
    /// The status write of an invalidation wait descriptor carrying `sequence` (§6.5.2.8).
    InvalidationWait {
        /// Status data the descriptor writes.
        sequence: u32,
    },
    /// `IQH` to advance so that `needed` descriptor slots are free.
    QueueSpace {
        /// Free slots needed.
        needed: u32,
    },
    /// `IQH` to reach `IQT` before the queue is disabled.
    QueueDrain,
    /// `PMEN_REG.PRS` to read `set` (the protected memory regions turned on or off).
    ProtectedMemoryStatus {
        /// Awaited value.
        set: bool,
    },
}

/// Which invalidation-queue error `FSTS` reported (§6.5.2.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueErrorKind {
    /// `FSTS.IQE`: hardware stopped at an invalid descriptor (or an invalid `IQT`).
    InvalidQueueEntry,
    /// `FSTS.ITE`: a device-TLB invalidation timed out; pending wait descriptors were aborted.
    InvalidationTimeout,
    /// `FSTS.ICE`: an invalid device-TLB invalidation completion was received.
    InvalidationCompletion,
}

/// An error of the VT-d layer. Every variant carries the value that caused it, and says what
/// the caller does about it (README.md, "Errors: what to do", has the same table):
///
/// - refusals ([`NoMemory`](Self::NoMemory), [`InvalidArgument`](Self::InvalidArgument),
///   [`Unsupported`](Self::Unsupported), [`BatchTooLarge`](Self::BatchTooLarge),
///   [`EntryPresent`](Self::EntryPresent), [`TableOutOfRange`](Self::TableOutOfRange)):
///   nothing changed; fix the request or free memory (below the host address width);
/// - hardware errors ([`Timeout`](Self::Timeout), [`QueueError`](Self::QueueError),
///   [`InvalidationRejected`](Self::InvalidationRejected)): the call stopped in a state the
///   unit keeps safe (no page freed, no domain ID reused while the hardware may still use it)
///   and the same call again completes it; if they persist, reset the unit (or the ATS device,
///   for ITE/ICE) and leave the pages it may reach allocated until then. The states a failed
///   call may leave (ARCHITECTURE.md, "Faults and error paths"): `flush`, `reclaim`, the undo
///   of a failed `map` leave the domain owing their invalidation (`VtdUnit::audit` counts it;
///   the next flush issues it); a failed `map` leaves the tables it linked, empty; `attach` and
///   `detach` leave the attachment unsettled; `enable`/`disable` stop part-way;
/// - [`UnexpectedState`](Self::UnexpectedState): the unit is not in a state the call works
///   from; see the variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A bounded wait ran out of polls: the hardware did not acknowledge a command or did not
    /// complete an invalidation. Retry the call; reset the unit if it persists.
    Timeout {
        /// What was awaited.
        what: Wait,
        /// The poll budget that ran out.
        polls: u32,
    },
    /// The invalidation queue reported an error; `head` is `IQH`'s descriptor index when it was
    /// seen (for IQE, the faulting descriptor). The error is cleared and the queue runs on;
    /// the invalidations it skipped are owed and issued by the retry. Retry; for a persistent
    /// ITE/ICE reset the ATS device before freeing what it may have cached.
    QueueError {
        /// Which `FSTS` error bit.
        kind: QueueErrorKind,
        /// Descriptor index in the queue.
        head: u32,
    },
    /// The hardware lacks a capability the request needs. Nothing changed.
    Unsupported {
        /// The missing capability, in the spec's name.
        what: &'static str,
        /// The register value or the requested value it was checked against.
        value: u64,
    },
    /// The page allocator had no memory. Nothing changed: free memory and call again. (A
    /// scalable-mode attach may leave the device's context entry present over an empty PASID
    /// directory, which blocks like no entry; the retry completes it.)
    NoMemory,
    /// An argument is out of range for its field or misaligned. Nothing changed.
    InvalidArgument {
        /// Which argument, and the constraint.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A batch of descriptors cannot fit in the queue even when it is empty.
    BatchTooLarge {
        /// Descriptors in the batch (including the wait descriptor, if any).
        len: usize,
        /// Most descriptors one batch can hold.
        capacity: usize,
    },
    /// An entry that must be non-present before it is written is present (§6.5.3 forbids
    /// changing a present entry in place); `word0` is its first word.
    EntryPresent {
        /// The live entry's word 0.
        word0: u64,
    },
    /// The hardware ignored or rejected a register-based invalidation (actual granularity 0).
    /// Handled as an unconfirmed invalidation: retry; reset the unit if it persists.
    InvalidationRejected {
        /// The register value read back.
        register: u64,
    },
    /// The allocator gave a page for a structure the unit reads -- the root or a context
    /// table, a PASID directory or table, the invalidation queue or its status page -- that
    /// does not lie below `2^haw`, the host address width: bits `haw` and up of `RTADDR`,
    /// `IQA`, the table pointers and the status address are reserved (§11.4.5, §11.4.9.3,
    /// §9.1-§9.5, §6.5.2.8), and a unit that ignores them reads another page. The page was
    /// given back and nothing changed: give the unit memory below `2^haw`.
    TableOutOfRange {
        /// Which structure.
        table: &'static str,
        /// Physical address of the page the allocator gave.
        pa: crate::mem::PhysAddr,
        /// The host address width, in bits.
        haw: u32,
    },
    /// The hardware is in a state the driver did not expect: `release` while translation or
    /// queued invalidation is on (call `disable` first), `IQH` not 0 after enabling the
    /// queue (reset the unit), or an invalidation asked for while translation is on with no
    /// invalidation interface after a failed takeover `enable` (call `enable` again).
    UnexpectedState {
        /// Which register.
        register: &'static str,
        /// Its value.
        value: u64,
    },
}

impl Error {
    /// Whether the hardware failed (a wait ran out, a queue or register error, an unexpected
    /// state), as opposed to a request refused before anything was written.
    pub const fn is_hardware(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::QueueError { .. }
                | Error::InvalidationRejected { .. }
                | Error::UnexpectedState { .. }
        )
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Wait::GlobalStatus { status, set } => {
                write!(
                    f,
                    "GSTS bit {status:#x} to become {}",
                    if set { "set" } else { "clear" }
                )
            }
            Wait::ContextCommand => f.write_str("CCMD.ICC to clear"),
            Wait::IotlbInvalidate => f.write_str("IOTLB_REG.IVT to clear"),
            Wait::InvalidationWait { sequence } => {
                write!(f, "invalidation wait status write {sequence:#x}")
            }
            Wait::QueueSpace { needed } => write!(f, "{needed} free invalidation-queue slots"),
            Wait::QueueDrain => f.write_str("IQH to reach IQT"),
            Wait::ProtectedMemoryStatus { set } => {
                write!(
                    f,
                    "PMEN_REG.PRS to become {}",
                    if set { "set" } else { "clear" }
                )
            }
        }
    }
}

impl fmt::Display for QueueErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueErrorKind::InvalidQueueEntry => "invalidation queue error (IQE)",
            QueueErrorKind::InvalidationTimeout => "invalidation time-out error (ITE)",
            QueueErrorKind::InvalidationCompletion => "invalidation completion error (ICE)",
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Timeout { what, polls } => {
                write!(f, "timed out after {polls} polls waiting for {what}")
            }
            Error::QueueError { kind, head } => write!(f, "{kind} at descriptor {head}"),
            Error::Unsupported { what, value } => {
                write!(f, "unsupported: {what} (value {value:#x})")
            }
            Error::NoMemory => f.write_str("out of memory for VT-d structures"),
            Error::InvalidArgument { what, value } => write!(f, "invalid {what}: {value:#x}"),
            Error::BatchTooLarge { len, capacity } => {
                write!(
                    f,
                    "batch of {len} descriptors exceeds queue capacity {capacity}"
                )
            }
            Error::EntryPresent { word0 } => write!(f, "entry already present (word 0 {word0:#x})"),
            Error::InvalidationRejected { register } => {
                write!(
                    f,
                    "hardware ignored the invalidation request (register {register:#x})"
                )
            }
            Error::UnexpectedState { register, value } => {
                write!(f, "unexpected hardware state: {register} = {value:#x}")
            }
            Error::TableOutOfRange { table, pa, haw } => write!(
                f,
                "{table} page at {:#x} is not below the {haw}-bit host address width",
                pa.get()
            ),
        }
    }
}
