//! PCI configuration helpers over an architecture's configuration access method.

use crate::println;
use crate::scenario::Fail;

/// Vendor/device of QEMU's `edu`.
pub const EDU_VENDOR: u16 = 0x1234;
/// Device ID of QEMU's `edu`.
pub const EDU_DEVICE: u16 = 0x11e8;

const COMMAND: u8 = 0x04;
const STATUS_CAP_LIST: u32 = 1 << 20; // Status (bits 31:16 of dword 0x04) bit 4
const CAP_PTR: u8 = 0x34;
/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
const MSI_ENABLE: u32 = 1 << 16; // Message Control bit 0
const MSI_64BIT: u32 = 1 << 23; // Message Control bit 7
const MSI_MME: u32 = 7 << 20; // Message Control bits 6:4
const BAR0: u8 = 0x10;
const CMD_MEMORY: u32 = 1 << 1;
const CMD_BUS_MASTER: u32 = 1 << 2;

/// A function on bus 0..=255.
pub type Bdf = (u8, u8, u8);

/// 32-bit configuration reads and writes (x86 mechanism #1, Arm ECAM).
pub trait ConfigSpace {
    /// Reads the dword at `off` (dword-aligned).
    fn read32(&self, bdf: Bdf, off: u8) -> u32;
    /// Writes the dword at `off` (dword-aligned).
    fn write32(&self, bdf: Bdf, off: u8, v: u32);
}

/// Looks for `vendor:device` at `preferred` first, then on every function of bus 0; prints
/// what bus 0 holds.
pub fn find(cfg: &impl ConfigSpace, vendor: u16, device: u16, preferred: Bdf) -> Option<Bdf> {
    let want = (device as u32) << 16 | vendor as u32;
    if cfg.read32(preferred, 0) == want {
        return Some(preferred);
    }
    let mut found = None;
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let id = cfg.read32((0, dev, func), 0);
            if id & 0xffff == 0xffff {
                if func == 0 {
                    break;
                }
                continue;
            }
            println!(
                "pci 00:{dev:02x}.{func} {:04x}:{:04x}",
                id & 0xffff,
                id >> 16
            );
            if id == want && found.is_none() {
                found = Some((0, dev, func));
            }
            // Single-function device: skip functions 1..7.
            if func == 0 && cfg.read32((0, dev, 0), 0x0c) & (0x80 << 16) == 0 {
                break;
            }
        }
    }
    found
}

/// Reads BAR0 of `bdf` as a 32- or 64-bit memory BAR; `Ok(None)` if unassigned.
pub fn bar0(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<Option<u64>, Fail> {
    let lo = cfg.read32(bdf, BAR0);
    if lo & 1 != 0 {
        return Err(Fail::new(format_args!("BAR0 is an I/O BAR ({lo:#x})")));
    }
    let mut addr = (lo & !0xf) as u64;
    if (lo >> 1) & 3 == 2 {
        addr |= (cfg.read32(bdf, BAR0 + 4) as u64) << 32;
    }
    Ok((addr != 0).then_some(addr))
}

/// Size of the 32-bit memory BAR0 (decoding must be off while it is probed).
pub fn bar0_size32(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<u32, Fail> {
    let orig = cfg.read32(bdf, BAR0);
    if orig & 1 != 0 || (orig >> 1) & 3 != 0 {
        return Err(Fail::new(format_args!(
            "BAR0 {orig:#x} is not a 32-bit memory BAR"
        )));
    }
    cfg.write32(bdf, BAR0, 0xffff_ffff);
    let mask = cfg.read32(bdf, BAR0) & !0xf;
    cfg.write32(bdf, BAR0, orig);
    if mask == 0 {
        return Err(Fail::new(format_args!("BAR0 not implemented")));
    }
    Ok((!mask).wrapping_add(1))
}

/// Writes a 32-bit memory BAR0.
pub fn set_bar0_32(cfg: &impl ConfigSpace, bdf: Bdf, addr: u32) {
    cfg.write32(bdf, BAR0, addr);
}

/// Turns memory decoding off (before BAR probing).
pub fn disable_decode(cfg: &impl ConfigSpace, bdf: Bdf) {
    let cmd = cfg.read32(bdf, COMMAND) & 0xffff;
    cfg.write32(bdf, COMMAND, cmd & !(CMD_MEMORY | CMD_BUS_MASTER));
}

/// Enables memory decoding and bus mastering; returns the command register read back.
pub fn enable_mem_and_master(cfg: &impl ConfigSpace, bdf: Bdf) -> u16 {
    let cmd = cfg.read32(bdf, COMMAND) & 0xffff;
    cfg.write32(bdf, COMMAND, cmd | CMD_MEMORY | CMD_BUS_MASTER);
    cfg.read32(bdf, COMMAND) as u16
}

/// Offset of the first capability `id` in the capability list of `bdf` (bounded walk).
pub fn find_capability(cfg: &impl ConfigSpace, bdf: Bdf, id: u8) -> Option<u8> {
    if cfg.read32(bdf, COMMAND) & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut at = (cfg.read32(bdf, CAP_PTR) & 0xfc) as u8;
    // At most 48 capabilities fit in the 192 bytes after the header.
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        let head = cfg.read32(bdf, at);
        if head & 0xff == u32::from(id) {
            return Some(at);
        }
        at = ((head >> 8) & 0xfc) as u8;
    }
    None
}

/// Programs the 64-bit MSI capability at `cap` with one vector, `address` and `data`, and
/// enables it (`enable`) or disables it. Fails if the capability has no 64-bit address.
pub fn msi_configure(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
    cap: u8,
    address: u64,
    data: u16,
    enable: bool,
) -> Result<(), Fail> {
    let head = cfg.read32(bdf, cap);
    if head & MSI_64BIT == 0 {
        return Err(Fail::new(format_args!(
            "MSI capability at {cap:#x} ({head:#x}) has no 64-bit address"
        )));
    }
    // Disabled while the message changes; one vector (MME = 0).
    cfg.write32(bdf, cap, head & !(MSI_ENABLE | MSI_MME));
    cfg.write32(bdf, cap + 4, address as u32);
    cfg.write32(bdf, cap + 8, (address >> 32) as u32);
    cfg.write32(bdf, cap + 12, u32::from(data));
    if enable {
        cfg.write32(bdf, cap, (head & !MSI_MME) | MSI_ENABLE);
    }
    let back = cfg.read32(bdf, cap);
    if (back & MSI_ENABLE != 0) != enable {
        return Err(Fail::new(format_args!(
            "MSI control reads {:#06x} after setting enable = {enable}",
            back >> 16
        )));
    }
    Ok(())
}
