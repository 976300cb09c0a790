//! Event records: the 32-byte entries the unit writes to the event queue.
//!
//! Arm IHI 0070 G.b §7.3 "Event records": the type is in word 0 bits 7:0, SSV in bit 11,
//! SubstreamID in 31:12, StreamID in 63:32; word 1 carries STAG (15:0), Stall (31), PnU (33),
//! InD (34), RnW (35), S2 (39) and CLASS (41:40) for translation-related faults; word 2 holds the
//! input address; word 3 holds either the IPA (bits 51:12, §7.3.12-7.3.15) or a fetch address
//! (bits 51:3, for F_STE_FETCH, F_CD_FETCH, F_WALK_EABT, F_VMS_FETCH). Records of types this
//! code does not know are kept raw.

use bitflags::bitflags;

use super::field::Field;
use super::StreamId;

/// Word 0 bits 7:0.
pub const EVENT_TYPE: Field = Field::new("Type", 7, 0);
/// Word 0 bit 11.
pub const SSV: u64 = 1 << 11;
/// Word 0 bits 31:12.
pub const SUBSTREAM_ID: Field = Field::new("SubstreamID", 31, 12);
/// Word 0 bits 63:32.
pub const STREAM_ID: Field = Field::new("StreamID", 63, 32);
/// Word 1 bits 15:0: stall tag for CMD_RESUME.
pub const STAG: Field = Field::new("STAG", 15, 0);
/// Word 1 bits 41:40.
pub const CLASS: Field = Field::new("CLASS", 41, 40);
/// Word 3 bits 51:12.
pub const IPA: Field = Field::new("IPA", 51, 12);
/// Word 3 bits 51:3.
pub const FETCH_ADDR: Field = Field::new("FetchAddr", 51, 3);

/// Event types (word 0 bits 7:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum EventType {
    /// Unsupported upstream transaction.
    FUut = 0x01,
    /// StreamID outside the stream table.
    CBadStreamid = 0x02,
    /// External abort fetching an STE.
    FSteFetch = 0x03,
    /// Invalid or malformed STE.
    CBadSte = 0x04,
    /// ATS translation request not allowed.
    FBadAtsTreq = 0x05,
    /// Substream traffic on a stream whose STE disallows it.
    FStreamDisabled = 0x06,
    /// ATS-translated transaction not allowed.
    FTranslForbidden = 0x07,
    /// SubstreamID beyond S1CDMax.
    CBadSubstreamid = 0x08,
    /// External abort fetching a CD.
    FCdFetch = 0x09,
    /// Invalid or malformed CD.
    CBadCd = 0x0a,
    /// External abort during a table walk.
    FWalkEabt = 0x0b,
    /// Translation fault.
    FTranslation = 0x10,
    /// Address size fault.
    FAddrSize = 0x11,
    /// Access flag fault.
    FAccess = 0x12,
    /// Permission fault.
    FPermission = 0x13,
    /// TLB conflict.
    FTlbConflict = 0x20,
    /// Configuration cache conflict.
    FCfgConflict = 0x21,
    /// Page request (stall model PRI-like).
    EPageRequest = 0x24,
    /// External abort fetching a VMS.
    FVmsFetch = 0x25,
}

impl TryFrom<u8> for EventType {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        use EventType::*;
        Ok(match v {
            0x01 => FUut,
            0x02 => CBadStreamid,
            0x03 => FSteFetch,
            0x04 => CBadSte,
            0x05 => FBadAtsTreq,
            0x06 => FStreamDisabled,
            0x07 => FTranslForbidden,
            0x08 => CBadSubstreamid,
            0x09 => FCdFetch,
            0x0a => CBadCd,
            0x0b => FWalkEabt,
            0x10 => FTranslation,
            0x11 => FAddrSize,
            0x12 => FAccess,
            0x13 => FPermission,
            0x20 => FTlbConflict,
            0x21 => FCfgConflict,
            0x24 => EPageRequest,
            0x25 => FVmsFetch,
            other => return Err(other),
        })
    }
}

bitflags! {
    /// Word 1 flags of fault records.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EventFlags: u64 {
        /// The transaction is stalled (resume it with CMD_RESUME and STAG).
        const STALL = 1 << 31;
        /// Privileged.
        const PNU = 1 << 33;
        /// Instruction fetch.
        const IND = 1 << 34;
        /// Read (0: write).
        const RNW = 1 << 35;
        /// The fault is from stage 2.
        const S2 = 1 << 39;
    }
}

/// `CLASS`: what the faulting access was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventClass {
    /// A CD fetch.
    Cd,
    /// A translation table walk.
    TranslationTable,
    /// The input transaction itself.
    Input,
    /// Reserved encoding.
    Reserved,
}

/// A decoded event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The type, or the raw byte if unknown.
    pub event_type: Result<EventType, u8>,
    /// StreamID.
    pub stream_id: StreamId,
    /// SubstreamID, when SSV is set.
    pub substream_id: Option<u32>,
    /// Word 1 flags (fault records only; empty otherwise).
    pub flags: EventFlags,
    /// CLASS (translation faults and F_WALK_EABT).
    pub class: Option<EventClass>,
    /// STAG (stalled faults).
    pub stag: Option<u16>,
    /// Input address.
    pub input_address: Option<u64>,
    /// Intermediate physical address of a stage-2 fault (`None` for a stage-1 fault, whose
    /// record holds no IPA).
    pub ipa: Option<u64>,
    /// Address of the failed configuration or table fetch.
    pub fetch_address: Option<u64>,
    /// The record as read.
    pub raw: [u64; 4],
}

/// What each known type carries beyond the StreamID.
#[derive(Clone, Copy)]
struct Layout {
    flags: bool,
    input: bool,
    ipa: bool,
    fetch: bool,
}

const fn layout(t: EventType) -> Layout {
    use EventType::*;
    let none = Layout {
        flags: false,
        input: false,
        ipa: false,
        fetch: false,
    };
    match t {
        FUut | FBadAtsTreq | FTranslForbidden | EPageRequest => Layout {
            flags: true,
            input: true,
            ..none
        },
        FSteFetch | FCdFetch | FVmsFetch => Layout {
            fetch: true,
            ..none
        },
        FWalkEabt => Layout {
            flags: true,
            input: true,
            fetch: true,
            ..none
        },
        FTranslation | FAddrSize | FAccess | FPermission | FTlbConflict => Layout {
            flags: true,
            input: true,
            ipa: true,
            ..none
        },
        CBadStreamid | CBadSte | FStreamDisabled | CBadSubstreamid | CBadCd | FCfgConflict => none,
    }
}

impl Event {
    /// Decodes a record. Never fails: unknown types keep only the common word-0 fields.
    pub fn decode(raw: [u64; 4]) -> Self {
        let [w0, w1, w2, w3] = raw;
        let event_type = EventType::try_from(EVENT_TYPE.get(w0) as u8);
        let l = match event_type {
            Ok(t) => layout(t),
            Err(_) => Layout {
                flags: false,
                input: false,
                ipa: false,
                fetch: false,
            },
        };
        let flags = if l.flags {
            EventFlags::from_bits_truncate(w1)
        } else {
            EventFlags::empty()
        };
        let class = l.flags.then(|| match CLASS.get(w1) {
            0 => EventClass::Cd,
            1 => EventClass::TranslationTable,
            2 => EventClass::Input,
            _ => EventClass::Reserved,
        });
        Self {
            event_type,
            stream_id: StreamId(STREAM_ID.get(w0) as u32),
            substream_id: (w0 & SSV != 0).then_some(SUBSTREAM_ID.get(w0) as u32),
            flags,
            class,
            stag: flags
                .contains(EventFlags::STALL)
                .then_some(STAG.get(w1) as u16),
            input_address: l.input.then_some(w2),
            // §7.3.12-7.3.15: the IPA is only meaningful for a stage-2 fault (S2 = 1).
            ipa: (l.ipa && flags.contains(EventFlags::S2)).then_some(IPA.get(w3) << 12),
            fetch_address: l.fetch.then_some(FETCH_ADDR.get(w3) << 3),
            raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_fault() {
        // Type 0x10, SSV (0x800), SSID 5 (0x5000), SID 0x42 << 32.
        let w0 = 0x0000_0042_0000_5810;
        // RnW (1 << 35 = 0x8_0000_0000) | S2 (1 << 39 = 0x80_0000_0000) | CLASS 1 (1 << 40).
        let w1 = 0x0000_0188_0000_0000;
        let e = Event::decode([w0, w1, 0xdead_b000, 0x0000_0012_3456_7000]);
        // A stage-1 fault (S2 = 0) has no IPA: word 3 is UNKNOWN there.
        let s1 = Event::decode([w0, w1 & !(1 << 39), 0xdead_b000, 0x0000_0012_3456_7000]);
        assert_eq!(s1.ipa, None);
        assert_eq!(e.event_type, Ok(EventType::FTranslation));
        assert_eq!(e.stream_id, StreamId(0x42));
        assert_eq!(e.substream_id, Some(5));
        assert_eq!(e.flags, EventFlags::RNW | EventFlags::S2);
        assert_eq!(e.class, Some(EventClass::TranslationTable));
        assert_eq!(e.input_address, Some(0xdead_b000));
        assert_eq!(e.ipa, Some(0x12_3456_7000));
        assert_eq!(e.fetch_address, None);
        assert_eq!(e.stag, None);
    }

    #[test]
    fn fetch_faults_configuration_errors_and_unknown() {
        // F_STE_FETCH: FetchAddr bits 51:3 = 0x8000_0040.
        let e = Event::decode([0x0000_0007_0000_0003, 0, 0, 0x8000_0040]);
        assert_eq!(e.event_type, Ok(EventType::FSteFetch));
        assert_eq!(e.fetch_address, Some(0x8000_0040));
        assert_eq!(e.input_address, None);
        // C_BAD_STE has nothing beyond the StreamID.
        let e = Event::decode([0x0000_0009_0000_0004, u64::MAX, u64::MAX, u64::MAX]);
        assert_eq!(
            (e.event_type, e.stream_id, e.flags),
            (Ok(EventType::CBadSte), StreamId(9), EventFlags::empty())
        );
        assert_eq!(
            (e.ipa, e.fetch_address, e.class, e.substream_id),
            (None, None, None, None)
        );
        // A stage-1 translation fault (S2 = 0) has no IPA, whatever word 3 holds.
        let e = Event::decode([0x0000_0020_0000_0010, 0, 0x1000, 0x5000]);
        assert_eq!((e.input_address, e.ipa), (Some(0x1000), None));
        // Stalled permission fault: Stall (1 << 31) with STAG 0x77.
        let e = Event::decode([0x13, 0x8000_0077, 0x1000, 0]);
        assert_eq!(e.stag, Some(0x77));
        // Unknown type 0x7e: kept raw.
        let raw = [0x7e, 1, 2, 3];
        let e = Event::decode(raw);
        assert_eq!(e.event_type, Err(0x7e));
        assert_eq!(e.raw, raw);
        for t in 0..=255u8 {
            if let Ok(et) = EventType::try_from(t) {
                assert_eq!(et as u8, t);
            }
        }
    }
}
