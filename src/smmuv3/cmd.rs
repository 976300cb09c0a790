//! Commands: the 16-byte entries of the command queue.
//!
//! Arm IHI 0070 G.b chapter 4 "Commands": §4.2 (prefetch), §4.3 (configuration invalidation:
//! CFGI_*), §4.4 (TLB invalidation: TLBI_*, including the range form with TG/SCALE/NUM/TTL of
//! §4.4.1), §4.5 (ATC_INV), §4.7 (CMD_SYNC). Every command has its opcode in word 0 bits 7:0;
//! StreamIDs sit in word 0 bits 63:32, SubstreamIDs in 31:12 with SSV in bit 11, VMIDs in 47:32,
//! ASIDs in 63:48, addresses in word 1 from bit 12 up.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::field::{address_bits, Field};
use super::{Asid, SmmuError, StreamId, SubstreamId, Vmid};
use crate::mem::{Iova, PhysAddr};

/// Command opcodes (word 0 bits 7:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum Opcode {
    /// `CMD_PREFETCH_CONFIG`.
    PrefetchConfig = 0x01,
    /// `CMD_PREFETCH_ADDR`.
    PrefetchAddr = 0x02,
    /// `CMD_CFGI_STE`.
    CfgiSte = 0x03,
    /// `CMD_CFGI_STE_RANGE`; `CMD_CFGI_ALL` is this opcode with Range = 31.
    CfgiSteRange = 0x04,
    /// `CMD_CFGI_CD`.
    CfgiCd = 0x05,
    /// `CMD_CFGI_CD_ALL`.
    CfgiCdAll = 0x06,
    /// `CMD_TLBI_NH_ALL`.
    TlbiNhAll = 0x10,
    /// `CMD_TLBI_NH_ASID`.
    TlbiNhAsid = 0x11,
    /// `CMD_TLBI_NH_VA`.
    TlbiNhVa = 0x12,
    /// `CMD_TLBI_NH_VAA`.
    TlbiNhVaa = 0x13,
    /// `CMD_TLBI_EL2_ALL`.
    TlbiEl2All = 0x20,
    /// `CMD_TLBI_S12_VMALL`.
    TlbiS12Vmall = 0x28,
    /// `CMD_TLBI_S2_IPA`.
    TlbiS2Ipa = 0x2a,
    /// `CMD_TLBI_NSNH_ALL`.
    TlbiNsnhAll = 0x30,
    /// `CMD_ATC_INV`.
    AtcInv = 0x40,
    /// `CMD_PRI_RESP`.
    PriResp = 0x41,
    /// `CMD_RESUME`.
    Resume = 0x44,
    /// `CMD_STALL_TERM`.
    StallTerm = 0x45,
    /// `CMD_SYNC`.
    Sync = 0x46,
}

/// Word 0 bits 7:0.
pub const OPCODE: Field = Field::new("Opcode", 7, 0);
/// Word 0 bit 11: SubstreamID valid.
pub const SSV: u64 = 1 << 11;
/// Word 0 bits 31:12.
pub const SUBSTREAM_ID: Field = Field::new("SubstreamID", 31, 12);
/// Word 0 bits 63:32.
pub const STREAM_ID: Field = Field::new("StreamID", 63, 32);
/// Word 1 bit 0 for CFGI_STE/CFGI_CD: invalidate only the leaf (STE or CD itself).
pub const LEAF: u64 = 1;
/// Word 1 bits 4:0 of CFGI_STE_RANGE: 2^(Range+1) StreamIDs.
pub const RANGE: Field = Field::new("Range", 4, 0);
/// Word 0 bits 16:12 of TLBI: range NUM.
pub const TLBI_NUM: Field = Field::new("NUM", 16, 12);
/// Word 0 bits 24:20 of TLBI: range SCALE.
pub const TLBI_SCALE: Field = Field::new("SCALE", 24, 20);
/// Word 0 bits 47:32 of TLBI.
pub const TLBI_VMID: Field = Field::new("VMID", 47, 32);
/// Word 0 bits 63:48 of TLBI.
pub const TLBI_ASID: Field = Field::new("ASID", 63, 48);
/// Word 1 bits 9:8 of TLBI: TTL, the level of the leaf being invalidated.
pub const TLBI_TTL: Field = Field::new("TTL", 9, 8);
/// Word 1 bits 11:10 of TLBI: TG, the granule of a range (0: not a range).
pub const TLBI_TG: Field = Field::new("TG", 11, 10);
/// Word 1 bits 63:12 of TLBI_NH_VA.
pub const TLBI_VA: Field = Field::new("Address", 63, 12);
/// Word 1 bits 51:12 of TLBI_S2_IPA.
pub const TLBI_IPA: Field = Field::new("Address", 51, 12);
/// Word 0 bit 9 of ATC_INV: G, the Global Invalidate flag of the ATS Invalidate Request.
/// Only with SSV = 1; ignored when SSV = 0 (§4.5.1). An invalidation without SSV (no PASID
/// prefix) is the one that covers entries with a PASID and without.
pub const ATC_GLOBAL: u64 = 1 << 9;
/// Word 1 bits 5:0 of ATC_INV: span of 2^Size 4 KiB pages.
pub const ATC_SIZE: Field = Field::new("Size", 5, 0);
/// Word 1 bits 8:0 of CMD_PRI_RESP: PRGIndex.
pub const PRI_PRGINDEX: Field = Field::new("PRGIndex", 8, 0);
/// Word 1 bits 13:12 of CMD_PRI_RESP: Resp.
pub const PRI_RESP: Field = Field::new("Resp", 13, 12);
/// Word 0 bit 12 of CMD_RESUME: Action (1 retry, 0 terminate).
pub const RESUME_AC: u64 = 1 << 12;
/// Word 0 bit 13 of CMD_RESUME: Abort (a terminated transaction reports an abort).
pub const RESUME_AB: u64 = 1 << 13;
/// Word 1 bits 15:0 of CMD_RESUME: STAG.
pub const RESUME_STAG: Field = Field::new("STAG", 15, 0);
/// Word 1 bits 63:12 of ATC_INV and PREFETCH_ADDR.
pub const ADDRESS_63_12: Field = Field::new("Address", 63, 12);
/// Word 1 bits 4:0 of PREFETCH_ADDR.
pub const PREFETCH_SIZE: Field = Field::new("Size", 4, 0);
/// Word 1 bits 9:5 of PREFETCH_ADDR.
pub const PREFETCH_STRIDE: Field = Field::new("Stride", 9, 5);
/// Word 0 bits 13:12 of CMD_SYNC: completion signal.
pub const SYNC_CS: Field = Field::new("CS", 13, 12);
/// Word 0 bits 23:22 of CMD_SYNC: MSI shareability.
pub const SYNC_MSH: Field = Field::new("MSH", 23, 22);
/// Word 0 bits 27:24 of CMD_SYNC: MSI memory attributes.
pub const SYNC_MSIATTR: Field = Field::new("MSIATTR", 27, 24);
/// Word 0 bits 63:32 of CMD_SYNC: MSI data.
pub const SYNC_MSIDATA: Field = Field::new("MSIData", 63, 32);
/// Word 1 bits 51:2 of CMD_SYNC: MSI address.
pub const SYNC_MSIADDRESS: Field = Field::new("MSIAddress", 51, 2);

/// One 16-byte command, as the queue holds it (little-endian words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Command {
    /// The two 64-bit words.
    pub words: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<Command>() == 16);

/// Translation granule of a range invalidation (TLBI TG field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RangeGranule {
    /// 4 KiB.
    Size4K = 1,
    /// 16 KiB.
    Size16K = 2,
    /// 64 KiB.
    Size64K = 3,
}

/// The range fields of a TLBI (with `IDR3.RIL`, IHI 0070 G.b §4.4.1): `(NUM + 1) * 2^SCALE`
/// pages of the granule `tg`, starting at the address; `ttl` is the leaf level hint (0: any
/// level). Unlike the PE's TLBI RVA, SCALE is a plain 5-bit exponent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbiRange {
    /// Granule of the pages.
    pub tg: RangeGranule,
    /// SCALE, 0..=31: the range counts `2^SCALE`-page chunks.
    pub scale: u8,
    /// NUM, 0..=31.
    pub num: u8,
    /// TTL, 0..=3.
    pub ttl: u8,
}

/// `CMD_PRI_RESP` Resp (§4.5.2): what the device is told of its page request group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PriResponse {
    /// `0b00` ResponseFailure: a permanent error (the device stops using PRI).
    Failure = 0,
    /// `0b01` InvalidRequest: the pages of the group could not be made present.
    InvalidRequest = 1,
    /// `0b10` Success: the group was paged in; the device retries its translations.
    Success = 2,
}

/// What `CMD_RESUME` does with a stalled transaction (§4.7.1, Action and Abort).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeAction {
    /// Ac = 1: retried as if it had just arrived (it may fault again).
    Retry,
    /// Ac = 0, Ab = 1: terminated, an abort reported to the device.
    Abort,
}

/// How a CMD_SYNC signals completion (CS field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SyncSignal {
    /// `SIG_NONE`: no signal; completion is seen only as CONS passing the command.
    None = 0,
    /// `SIG_IRQ`: an interrupt on completion; with `IDR0.MSI` and a non-zero MSIAddress, the
    /// MSI write of MSIData to MSIAddress (what MSI-based completion polls for).
    Irq = 1,
    /// `SIG_SEV`: a wake-up event on completion.
    Sev = 2,
}

/// The MSI a CMD_SYNC writes on completion: 32-bit `data` to `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncMsi {
    /// Where to write; 4-byte aligned, 52 bits at most.
    pub address: PhysAddr,
    /// What to write.
    pub data: u32,
    /// MSH: shareability (0b11 inner shareable).
    pub msh: u8,
    /// MSIATTR: memory attributes (0xf: inner/outer write-back).
    pub msiattr: u8,
}

const fn sid_word0(op: Opcode, sid: StreamId) -> u64 {
    STREAM_ID.set_masked(op as u64, sid.0 as u64)
}

const fn ssid_word0(word: u64, ssid: Option<SubstreamId>) -> u64 {
    match ssid {
        Some(s) => SUBSTREAM_ID.set_masked(word | SSV, s.get() as u64),
        None => word,
    }
}

fn range_words(mut w0: u64, mut w1: u64, range: Option<TlbiRange>) -> Result<[u64; 2], SmmuError> {
    if let Some(r) = range {
        w0 = TLBI_NUM.set(w0, r.num as u64)?;
        w0 = TLBI_SCALE.set(w0, r.scale as u64)?;
        w1 = TLBI_TTL.set(w1, r.ttl as u64)?;
        w1 = TLBI_TG.set_masked(w1, r.tg as u64);
    }
    Ok([w0, w1])
}

impl Command {
    /// The opcode byte.
    pub const fn opcode(&self) -> u8 {
        OPCODE.get(self.words[0]) as u8
    }

    /// `CMD_PREFETCH_CONFIG`: fetch the configuration of `sid` (and `ssid`) into the caches.
    pub const fn prefetch_config(sid: StreamId, ssid: Option<SubstreamId>) -> Self {
        Self {
            words: [ssid_word0(sid_word0(Opcode::PrefetchConfig, sid), ssid), 0],
        }
    }

    /// `CMD_PREFETCH_ADDR`: prefetch translations of `2^size` 4 KiB-granule blocks with stride
    /// `2^stride` from `address`.
    ///
    /// # Errors
    ///
    /// A field error if `address` is not 4 KiB aligned or `size`/`stride` exceed 5 bits.
    pub fn prefetch_addr(
        sid: StreamId,
        ssid: Option<SubstreamId>,
        address: Iova,
        size: u8,
        stride: u8,
    ) -> Result<Self, SmmuError> {
        let w0 = ssid_word0(sid_word0(Opcode::PrefetchAddr, sid), ssid);
        let mut w1 = address_bits(ADDRESS_63_12, address.get())?;
        w1 = PREFETCH_SIZE.set(w1, size as u64)?;
        w1 = PREFETCH_STRIDE.set(w1, stride as u64)?;
        Ok(Self { words: [w0, w1] })
    }

    /// `CMD_CFGI_STE`: invalidate cached configuration of `sid`; `leaf` keeps the cached L1
    /// stream table descriptor.
    pub const fn cfgi_ste(sid: StreamId, leaf: bool) -> Self {
        Self {
            words: [sid_word0(Opcode::CfgiSte, sid), leaf as u64],
        }
    }

    /// `CMD_CFGI_STE_RANGE`: invalidate `2^(range + 1)` StreamIDs from `sid` rounded down.
    ///
    /// # Errors
    ///
    /// [`SmmuError::FieldOutOfRange`] if `range > 31`.
    pub const fn cfgi_ste_range(sid: StreamId, range: u8) -> Result<Self, SmmuError> {
        match RANGE.set(0, range as u64) {
            Ok(w1) => Ok(Self {
                words: [sid_word0(Opcode::CfgiSteRange, sid), w1],
            }),
            Err(e) => Err(e),
        }
    }

    /// `CMD_CFGI_ALL`: CFGI_STE_RANGE with Range = 31, every StreamID.
    pub const fn cfgi_all() -> Self {
        Self {
            words: [Opcode::CfgiSteRange as u64, 31],
        }
    }

    /// `CMD_CFGI_CD`: invalidate the cached CD of (`sid`, `ssid`).
    pub const fn cfgi_cd(sid: StreamId, ssid: SubstreamId, leaf: bool) -> Self {
        let w0 = SUBSTREAM_ID.set_masked(sid_word0(Opcode::CfgiCd, sid), ssid.get() as u64);
        Self {
            words: [w0, leaf as u64],
        }
    }

    /// `CMD_CFGI_CD_ALL`: invalidate every cached CD of `sid`.
    pub const fn cfgi_cd_all(sid: StreamId) -> Self {
        Self {
            words: [sid_word0(Opcode::CfgiCdAll, sid), 0],
        }
    }

    /// `CMD_TLBI_NH_ALL`: every stage-1 entry of `vmid`.
    pub const fn tlbi_nh_all(vmid: Vmid) -> Self {
        Self {
            words: [
                TLBI_VMID.set_masked(Opcode::TlbiNhAll as u64, vmid.0 as u64),
                0,
            ],
        }
    }

    /// `CMD_TLBI_NH_ASID`: every stage-1 entry of `asid` in `vmid`.
    pub const fn tlbi_nh_asid(vmid: Vmid, asid: Asid) -> Self {
        let w0 = TLBI_VMID.set_masked(Opcode::TlbiNhAsid as u64, vmid.0 as u64);
        Self {
            words: [TLBI_ASID.set_masked(w0, asid.0 as u64), 0],
        }
    }

    /// `CMD_TLBI_NH_VA`: stage-1 entries for `va` (or a range) in (`vmid`, `asid`).
    ///
    /// # Errors
    ///
    /// A field error if `va` is not 4 KiB aligned or a range field is too large.
    pub fn tlbi_nh_va(
        vmid: Vmid,
        asid: Asid,
        va: Iova,
        leaf: bool,
        range: Option<TlbiRange>,
    ) -> Result<Self, SmmuError> {
        let w0 = TLBI_VMID.set_masked(Opcode::TlbiNhVa as u64, vmid.0 as u64);
        let w0 = TLBI_ASID.set_masked(w0, asid.0 as u64);
        let w1 = address_bits(TLBI_VA, va.get())? | leaf as u64;
        Ok(Self {
            words: range_words(w0, w1, range)?,
        })
    }

    /// `CMD_TLBI_S2_IPA`: stage-2 entries for `ipa` (or a range) in `vmid`.
    ///
    /// # Errors
    ///
    /// A field error if `ipa` is not 4 KiB aligned, wider than 52 bits, or a range field is too
    /// large.
    pub fn tlbi_s2_ipa(
        vmid: Vmid,
        ipa: Iova,
        leaf: bool,
        range: Option<TlbiRange>,
    ) -> Result<Self, SmmuError> {
        let w0 = TLBI_VMID.set_masked(Opcode::TlbiS2Ipa as u64, vmid.0 as u64);
        let w1 = address_bits(TLBI_IPA, ipa.get())? | leaf as u64;
        Ok(Self {
            words: range_words(w0, w1, range)?,
        })
    }

    /// `CMD_TLBI_S12_VMALL`: every stage-1 and stage-2 entry of `vmid`.
    pub const fn tlbi_s12_vmall(vmid: Vmid) -> Self {
        Self {
            words: [
                TLBI_VMID.set_masked(Opcode::TlbiS12Vmall as u64, vmid.0 as u64),
                0,
            ],
        }
    }

    /// `CMD_TLBI_EL2_ALL`: every EL2 entry (units with `IDR0.HYP`).
    pub const fn tlbi_el2_all() -> Self {
        Self {
            words: [Opcode::TlbiEl2All as u64, 0],
        }
    }

    /// `CMD_TLBI_NSNH_ALL`: every non-secure, non-hypervisor entry.
    pub const fn tlbi_nsnh_all() -> Self {
        Self {
            words: [Opcode::TlbiNsnhAll as u64, 0],
        }
    }

    /// `CMD_ATC_INV`: invalidate a device's ATC for `2^size` 4 KiB pages at `address` (which
    /// must be aligned to that span). Without `ssid` it covers every entry of the stream, with
    /// a PASID and without; `global` sets G, the request's Global Invalidate flag, which
    /// means something only with `ssid` (§4.5.1: ignored when SSV = 0). The driver never sets
    /// it.
    ///
    /// # Errors
    ///
    /// A field error if `size > 52` or `address` is not aligned to `2^(size + 12)` bytes.
    pub fn atc_inv(
        sid: StreamId,
        ssid: Option<SubstreamId>,
        address: Iova,
        size: u8,
        global: bool,
    ) -> Result<Self, SmmuError> {
        if size > 52 {
            return Err(SmmuError::FieldOutOfRange {
                field: "Size",
                value: size as u64,
            });
        }
        let align_log2 = 12 + size as u32;
        if !address.is_aligned(align_log2) {
            let address = address.get();
            return Err(SmmuError::AddressMisaligned {
                field: "Address",
                address,
                align_log2,
            });
        }
        let mut w0 = ssid_word0(sid_word0(Opcode::AtcInv, sid), ssid);
        if global {
            w0 |= ATC_GLOBAL;
        }
        let w1 = address_bits(ADDRESS_63_12, address.get())? | size as u64;
        Ok(Self { words: [w0, w1] })
    }

    /// `CMD_PRI_RESP` (§4.5.2): answers page request group `group` (9 bits) of `sid` (and
    /// `ssid`, sent as the response's PASID) with `resp`.
    ///
    /// # Errors
    ///
    /// [`SmmuError::FieldOutOfRange`] for a group index beyond 9 bits.
    pub const fn pri_resp(
        sid: StreamId,
        ssid: Option<SubstreamId>,
        group: u16,
        resp: PriResponse,
    ) -> Result<Self, SmmuError> {
        let w1 = match PRI_PRGINDEX.set(0, group as u64) {
            Ok(w) => PRI_RESP.set_masked(w, resp as u64),
            Err(e) => return Err(e),
        };
        Ok(Self {
            words: [ssid_word0(sid_word0(Opcode::PriResp, sid), ssid), w1],
        })
    }

    /// `CMD_RESUME` (§4.7.1): retries or aborts the transaction of `sid` stalled with `stag`.
    pub const fn resume(sid: StreamId, stag: u16, action: ResumeAction) -> Self {
        let w0 = sid_word0(Opcode::Resume, sid)
            | match action {
                ResumeAction::Retry => RESUME_AC,
                ResumeAction::Abort => RESUME_AB,
            };
        Self {
            words: [w0, RESUME_STAG.set_masked(0, stag as u64)],
        }
    }

    /// `CMD_STALL_TERM` (§4.7.2): marks every stalled transaction of `sid` for termination
    /// (after its STE was made to terminate new transactions).
    pub const fn stall_term(sid: StreamId) -> Self {
        Self {
            words: [sid_word0(Opcode::StallTerm, sid), 0],
        }
    }

    /// `CMD_SYNC`: completes when every earlier command has; signals as `cs` says and, with
    /// `msi`, writes the MSI.
    ///
    /// # Errors
    ///
    /// A field error if the MSI address is not 4-byte aligned or wider than 52 bits, or `msh` /
    /// `msiattr` exceed their fields.
    pub fn sync(cs: SyncSignal, msi: Option<SyncMsi>) -> Result<Self, SmmuError> {
        let mut w0 = SYNC_CS.set_masked(Opcode::Sync as u64, cs as u64);
        let mut w1 = 0;
        if let Some(m) = msi {
            w0 = SYNC_MSH.set(w0, m.msh as u64)?;
            w0 = SYNC_MSIATTR.set(w0, m.msiattr as u64)?;
            w0 = SYNC_MSIDATA.set_masked(w0, m.data as u64);
            w1 = address_bits(SYNC_MSIADDRESS, m.address.get())?;
        }
        Ok(Self { words: [w0, w1] })
    }

    /// A CMD_SYNC with no signal and no MSI: the harmless command that replaces a faulting one.
    pub const fn plain_sync() -> Self {
        Self {
            words: [Opcode::Sync as u64, 0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(v: u32) -> StreamId {
        StreamId(v)
    }

    #[test]
    fn configuration_invalidation() {
        // CFGI_STE: 0x03 | SID 0x1234 << 32 = 0x0000_1234_0000_0003; Leaf in word 1 bit 0.
        assert_eq!(
            Command::cfgi_ste(sid(0x1234), true).words,
            [0x0000_1234_0000_0003, 1]
        );
        // CFGI_STE_RANGE: 0x04 | 0x100 << 32; Range = 7 (256 StreamIDs) in word 1.
        let c = Command::cfgi_ste_range(sid(0x100), 7).unwrap();
        assert_eq!(c.words, [0x0000_0100_0000_0004, 7]);
        assert!(Command::cfgi_ste_range(sid(0), 32).is_err());
        // CFGI_ALL: opcode 0x04, Range = 31 (0x1f).
        assert_eq!(Command::cfgi_all().words, [0x04, 0x1f]);
        // CFGI_CD: 0x05 | SSID 0x2a << 12 (= 0x2a000) | SID 7 << 32.
        let c = Command::cfgi_cd(sid(7), SubstreamId::new(0x2a).unwrap(), false);
        assert_eq!(c.words, [0x0000_0007_0002_a005, 0]);
        // CFGI_CD_ALL: 0x06 | SID 0xffff_ffff << 32.
        assert_eq!(
            Command::cfgi_cd_all(sid(u32::MAX)).words,
            [0xffff_ffff_0000_0006, 0]
        );
    }

    #[test]
    fn prefetch() {
        // PREFETCH_CONFIG with SSV (1 << 11 = 0x800) and SSID 1 (1 << 12 = 0x1000): 0x1801.
        let c = Command::prefetch_config(sid(2), Some(SubstreamId::new(1).unwrap()));
        assert_eq!(c.words, [0x0000_0002_0000_1801, 0]);
        // PREFETCH_ADDR: Size 3, Stride 2 (2 << 5 = 0x40), Address 0x4000_0000: 0x4000_0043.
        let c = Command::prefetch_addr(sid(2), None, Iova::new(0x4000_0000), 3, 2).unwrap();
        assert_eq!(c.words, [0x0000_0002_0000_0002, 0x4000_0043]);
    }

    #[test]
    fn tlb_invalidation() {
        // TLBI_NH_ALL: 0x10 | VMID 5 << 32.
        assert_eq!(
            Command::tlbi_nh_all(Vmid(5)).words,
            [0x0000_0005_0000_0010, 0]
        );
        // TLBI_NH_ASID: 0x11 | VMID 1 << 32 | ASID 0xbeef << 48.
        assert_eq!(
            Command::tlbi_nh_asid(Vmid(1), Asid(0xbeef)).words,
            [0xbeef_0001_0000_0011, 0]
        );
        // TLBI_NH_VA, no range: 0x12 | VMID 0 | ASID 3 << 48; word 1 = VA | Leaf.
        let c = Command::tlbi_nh_va(
            Vmid(0),
            Asid(3),
            Iova::new(0xffff_8000_1234_5000),
            true,
            None,
        )
        .unwrap();
        assert_eq!(c.words, [0x0003_0000_0000_0012, 0xffff_8000_1234_5001]);
        // Range: NUM 31 (31 << 12 = 0x1f000), SCALE 1 (1 << 20 = 0x10_0000); TG 4K (1 << 10 =
        // 0x400), TTL 3 (3 << 8 = 0x300): word 0 0x0003_0000_0011_f012, word 1 VA | 0x701.
        let r = TlbiRange {
            tg: RangeGranule::Size4K,
            scale: 1,
            num: 31,
            ttl: 3,
        };
        let c = Command::tlbi_nh_va(Vmid(0), Asid(3), Iova::new(0x20_0000), true, Some(r)).unwrap();
        assert_eq!(c.words, [0x0003_0000_0011_f012, 0x20_0701]);
        assert!(Command::tlbi_nh_va(Vmid(0), Asid(0), Iova::new(0x1001), false, None).is_err());
        let bad = TlbiRange { num: 32, ..r };
        assert!(Command::tlbi_nh_va(Vmid(0), Asid(0), Iova::new(0), false, Some(bad)).is_err());
        // TLBI_S2_IPA with a 64K range: NUM 1 (0x1000), SCALE 0; TG 3 (0xc00), TTL 0; VMID 9.
        let r = TlbiRange {
            tg: RangeGranule::Size64K,
            scale: 0,
            num: 1,
            ttl: 0,
        };
        let c = Command::tlbi_s2_ipa(Vmid(9), Iova::new(0x8_0000_0000), false, Some(r)).unwrap();
        assert_eq!(c.words, [0x0000_0009_0000_102a, 0x8_0000_0c00]);
        // IPA field ends at bit 51.
        assert!(Command::tlbi_s2_ipa(Vmid(9), Iova::new(1 << 52), false, None).is_err());
        // TLBI_S12_VMALL: 0x28 | VMID 0xffff << 32; TLBI_NSNH_ALL: 0x30.
        assert_eq!(
            Command::tlbi_s12_vmall(Vmid(0xffff)).words,
            [0x0000_ffff_0000_0028, 0]
        );
        assert_eq!(Command::tlbi_nsnh_all().words, [0x30, 0]);
        assert_eq!(Command::tlbi_el2_all().words, [0x20, 0]);
    }

    #[test]
    fn atc_invalidation() {
        // ATC_INV: 0x40 | Global (1 << 9 = 0x200) | SID 0x10 << 32; Size 4 (64 KiB) at 0x10000.
        let c = Command::atc_inv(sid(0x10), None, Iova::new(0x1_0000), 4, true).unwrap();
        assert_eq!(c.words, [0x0000_0010_0000_0240, 0x1_0004]);
        // With SSID 5: SSV 0x800 | 5 << 12 = 0x5800.
        let c = Command::atc_inv(sid(1), SubstreamId::new(5).ok(), Iova::new(0), 0, false).unwrap();
        assert_eq!(c.words, [0x0000_0001_0000_5840, 0]);
        // 0x1_8000 is not 64 KiB aligned; Size 53 does not exist.
        assert!(Command::atc_inv(sid(0), None, Iova::new(0x1_8000), 4, false).is_err());
        assert!(Command::atc_inv(sid(0), None, Iova::new(0), 53, false).is_err());
        // Size 52 covers everything from 0.
        assert!(Command::atc_inv(sid(0), None, Iova::new(0), 52, false).is_ok());
    }

    #[test]
    fn sync() {
        // CS = SEV: 2 << 12 = 0x2000 | 0x46.
        assert_eq!(
            Command::sync(SyncSignal::Sev, None).unwrap().words,
            [0x2046, 0]
        );
        // CS = IRQ: 0x1046.
        assert_eq!(
            Command::sync(SyncSignal::Irq, None).unwrap().words,
            [0x1046, 0]
        );
        // MSI: MSH 3 (3 << 22 = 0xc0_0000), MSIATTR 0xf (0xf << 24 = 0xf00_0000), data
        // 0xcafe << 32; address 0x8000_0040 kept in bits 51:2.
        let msi = SyncMsi {
            address: PhysAddr::new(0x8000_0040),
            data: 0xcafe,
            msh: 3,
            msiattr: 0xf,
        };
        let c = Command::sync(SyncSignal::Irq, Some(msi)).unwrap();
        // CS = SIG_IRQ (1 << 12 = 0x1000).
        assert_eq!(c.words, [0x0000_cafe_0fc0_1046, 0x8000_0040]);
        let bad = SyncMsi {
            address: PhysAddr::new(0x8000_0042),
            ..msi
        };
        assert!(Command::sync(SyncSignal::None, Some(bad)).is_err());
        assert_eq!(Command::plain_sync().opcode(), 0x46);
    }
}
