//! Runs the bare-metal guests in `tests/qemu/` under QEMU, one test per scenario.
//!
//! Each guest (`tests/qemu/x86_64`, `tests/qemu/aarch64`) is a standalone cargo project that
//! depends on this crate by path. The first test of an architecture builds its guest once in
//! release mode (target dir under `target/tmp/`); every test then boots QEMU with the scenario's
//! machine arguments and writes the scenario number into guest RAM with QEMU's generic loader
//! (`-device loader,addr=MAILBOX,data=N,data-len=4`). The guest prints
//! `SCENARIO <n> <name>`, diagnostics and `PASS <name>` or `FAIL <name>: <reason>` on its serial
//! port and exits with status 33 (pass), 35 (fail), 37 (panic / CPU exception) or 39 (unknown
//! scenario). A test passes only on status 33 with the matching `SCENARIO` and `PASS` lines and
//! no `FAIL` line; a QEMU crash, a timeout or anything else fails it and prints the serial
//! output.
//!
//! Without QEMU or the bare-metal Rust target, tests report that they were skipped and pass,
//! unless `CI=true`, where they fail. `.ci/install-qemu.sh` installs both.
//!
//! Adding a scenario: write the function in the guest(s), add a row to the guest's table
//! (`tests/qemu/<arch>/src/scenarios.rs`), and a row to `scenarios!` below with the same number
//! and name and the QEMU machine arguments it needs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/process.rs"]
mod process;

/// Wall-clock limit for one QEMU run (a scenario normally takes 0.05-0.3 s).
const QEMU_TIMEOUT: Duration = Duration::from_secs(30);
/// QEMU's exit status when the guest reports a pass (`(0x10 << 1) | 1`).
const EXIT_PASS: i32 = 33;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    fn target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Aarch64 => "aarch64-unknown-none",
        }
    }

    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// Guest RAM address of the scenario mailbox (`MAILBOX` in the guest's link.ld/arch.rs).
    fn mailbox(self) -> u64 {
        match self {
            Arch::X86_64 => 0x0100_0000,
            Arch::Aarch64 => 0x4100_0000,
        }
    }

    /// Arguments that follow `-M <machine>` for every scenario of this architecture.
    fn cpu_args(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[],
            // `-d guest_errors,unimp`: QEMU's SMMUv3 then logs every malformed STE/CD, illegal
            // command, unexpected register access or GERRORN misuse on stderr (see
            // `unexpected_log`).
            Arch::Aarch64 => &[
                "-cpu",
                "cortex-a57",
                "-semihosting",
                "-d",
                "guest_errors,unimp",
            ],
        }
    }

    /// Whether a QEMU stderr line is a guest error the scenario did not cause on purpose. A
    /// faulting DMA logs one "translation failed" line per access; anything else the SMMUv3
    /// model logs is a driver mistake. QEMU's `intel-iommu` reports on stderr without `-d`:
    /// the lines a faulting DMA produces are expected (once per message and process), anything
    /// else (reserved bits in a descriptor or entry, register-based invalidation while the
    /// queue is on, a bad queue disable, a PFO overflow) is a driver mistake.
    fn unexpected_log(self, line: &str) -> bool {
        const VTD_FAULT_LINES: &[&str] = &[
            "detected translation failure",
            "Interrupt Mask set, irq is not generated",
            "New fault is not recorded due to compression of faults",
            "There are pending faults already, fault event is not generated",
            "There are previous interrupt conditions to be serviced by software",
            "detected slpte permission error",
            "detected IOVA overflow",
            "detected non canonical IOVA",
        ];
        match self {
            Arch::X86_64 => {
                !line.trim().is_empty() && !VTD_FAULT_LINES.iter().any(|m| line.contains(m))
            }
            Arch::Aarch64 => {
                !line.trim().is_empty() && !line.contains("translation failed for iova")
            }
        }
    }

    /// Devices placed after the scenario's own arguments (so an IOMMU given there is created
    /// before the PCI devices it translates).
    fn device_args(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[
                "-device",
                "edu,addr=04.0,dma_mask=0xffffffffffffffff",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
            ],
            Arch::Aarch64 => &["-device", "edu,addr=04.0,dma_mask=0xffffffffffffffff"],
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One scenario run: the guest's scenario number and name, and the QEMU machine it needs.
struct Scenario {
    test: &'static str,
    arch: Arch,
    id: u32,
    name: &'static str,
    /// The `-M` value (machine type and its properties).
    machine: &'static str,
    /// Further QEMU arguments (IOMMU device and its properties, `-global`s).
    extra: &'static [&'static str],
}

/// `test_name => (Arch, number, "guest name", "-M value", [extra QEMU args]);`
macro_rules! scenarios {
    ($($test:ident => ($arch:ident, $id:literal, $name:literal, $machine:literal, [$($extra:literal),* $(,)?]);)*) => {
        $(
            #[test]
            fn $test() {
                run(&Scenario {
                    test: stringify!($test),
                    arch: Arch::$arch,
                    id: $id,
                    name: $name,
                    machine: $machine,
                    extra: &[$($extra),*],
                });
            }
        )*
    };
}

scenarios! {
    // q35: guest numbers from tests/qemu/x86_64/src/scenarios.rs.
    x86_64_boot_ok => (X86_64, 1, "boot_ok", "q35", ["-device", "intel-iommu"]);
    x86_64_page_alloc => (X86_64, 2, "page_alloc", "q35", []);
    x86_64_edu_dma_identity_no_iommu => (X86_64, 3, "edu_dma_identity", "q35", []);
    x86_64_edu_dma_identity_vtd_off => (X86_64, 3, "edu_dma_identity", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_regs => (X86_64, 4, "vtd_regs", "q35", ["-device", "intel-iommu,aw-bits=48"]);
    x86_64_vtd_regs_scalable => (X86_64, 4, "vtd_regs", "q35", ["-device", "intel-iommu,x-scalable-mode=on,snoop-control=on"]);
    // q35's own DMAR read through the RSDP, byte for byte the captures in tests/data/acpi/.
    x86_64_dmar_q35 => (X86_64, 5, "dmar_q35", "q35", ["-device", "intel-iommu"]);
    x86_64_dmar_q35_root_port => (X86_64, 6, "dmar_q35_root_port", "q35", ["-device", "intel-iommu,device-iotlb=on,aw-bits=39", "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=06.0", "-device", "edu,bus=rp1,addr=00.0,dma_mask=0xffffffffffffffff"]);
    // q35's IVRS with amd-iommu (AMD IOMMU specification 48882 §5.2), byte for byte the capture.
    x86_64_ivrs_q35 => (X86_64, 7, "ivrs_q35", "q35", ["-device", "amd-iommu,pt=off"]);

    // VT-d: guest numbers 100-199 from tests/qemu/x86_64/src/vtd_scenarios.rs.
    // Legacy mode, 4-level tables (aw-bits=48, the default).
    x86_64_vtd_legacy_dma_4k => (X86_64, 100, "vtd_dma_4k", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_dma_2m => (X86_64, 101, "vtd_dma_2m", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_dma_1g => (X86_64, 102, "vtd_dma_1g", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_fault_unmapped => (X86_64, 103, "vtd_fault_unmapped", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_fault_readonly => (X86_64, 104, "vtd_fault_readonly", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_unmap_flush => (X86_64, 105, "vtd_unmap_flush", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_remap_new_pa => (X86_64, 106, "vtd_remap_new_pa", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_snoop_refused => (X86_64, 107, "vtd_snoop_refused", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_detach_faults => (X86_64, 109, "vtd_detach_faults", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_reattach_replaces => (X86_64, 110, "vtd_reattach_replaces", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_unit_disable => (X86_64, 111, "vtd_unit_disable", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_unmap_range => (X86_64, 112, "vtd_unmap_range", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_fault_no_root => (X86_64, 113, "vtd_fault_no_root", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_map_invalidations => (X86_64, 114, "vtd_map_invalidations", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_address_width => (X86_64, 115, "vtd_address_width", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_split_2m => (X86_64, 116, "vtd_split_2m", "q35", ["-device", "intel-iommu"]);
    // Legacy mode, 3-level tables.
    x86_64_vtd_legacy_aw39_dma_4k => (X86_64, 100, "vtd_dma_4k", "q35", ["-device", "intel-iommu,aw-bits=39"]);
    x86_64_vtd_legacy_aw39_dma_1g => (X86_64, 102, "vtd_dma_1g", "q35", ["-device", "intel-iommu,aw-bits=39"]);
    x86_64_vtd_legacy_aw39_fault_unmapped => (X86_64, 103, "vtd_fault_unmapped", "q35", ["-device", "intel-iommu,aw-bits=39"]);
    x86_64_vtd_legacy_aw39_unmap_flush => (X86_64, 105, "vtd_unmap_flush", "q35", ["-device", "intel-iommu,aw-bits=39"]);
    x86_64_vtd_legacy_aw39_address_width => (X86_64, 115, "vtd_address_width", "q35", ["-device", "intel-iommu,aw-bits=39"]);
    // Legacy mode with snoop control, caching mode, device-IOTLB capability.
    x86_64_vtd_legacy_sc_snoop_enforced => (X86_64, 108, "vtd_snoop_enforced", "q35", ["-device", "intel-iommu,snoop-control=on"]);
    x86_64_vtd_legacy_sc_dma_4k => (X86_64, 100, "vtd_dma_4k", "q35", ["-device", "intel-iommu,snoop-control=on"]);
    x86_64_vtd_legacy_cm_dma_4k => (X86_64, 100, "vtd_dma_4k", "q35", ["-device", "intel-iommu,caching-mode=on"]);
    x86_64_vtd_legacy_cm_unmap_flush => (X86_64, 105, "vtd_unmap_flush", "q35", ["-device", "intel-iommu,caching-mode=on"]);
    x86_64_vtd_legacy_cm_reattach_replaces => (X86_64, 110, "vtd_reattach_replaces", "q35", ["-device", "intel-iommu,caching-mode=on"]);
    x86_64_vtd_legacy_cm_map_invalidations => (X86_64, 114, "vtd_map_invalidations", "q35", ["-device", "intel-iommu,caching-mode=on"]);
    x86_64_vtd_legacy_dt_dma_4k => (X86_64, 100, "vtd_dma_4k", "q35", ["-device", "intel-iommu,device-iotlb=on"]);
    // Scalable mode, second-stage translation.
    x86_64_vtd_sm_ss_dma_4k => (X86_64, 100, "vtd_dma_4k", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_dma_2m => (X86_64, 101, "vtd_dma_2m", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_dma_1g => (X86_64, 102, "vtd_dma_1g", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_fault_unmapped => (X86_64, 103, "vtd_fault_unmapped", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_fault_readonly => (X86_64, 104, "vtd_fault_readonly", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_unmap_flush => (X86_64, 105, "vtd_unmap_flush", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_remap_new_pa => (X86_64, 106, "vtd_remap_new_pa", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_snoop_refused => (X86_64, 107, "vtd_snoop_refused", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_detach_faults => (X86_64, 109, "vtd_detach_faults", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_reattach_replaces => (X86_64, 110, "vtd_reattach_replaces", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_unit_disable => (X86_64, 111, "vtd_unit_disable", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_unmap_range => (X86_64, 112, "vtd_unmap_range", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_address_width => (X86_64, 115, "vtd_address_width", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_split_2m => (X86_64, 116, "vtd_split_2m", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_ss_aw39_dma_4k => (X86_64, 100, "vtd_dma_4k", "q35", ["-device", "intel-iommu,x-scalable-mode=on,aw-bits=39"]);
    x86_64_vtd_sm_ss_sc_snoop_enforced => (X86_64, 108, "vtd_snoop_enforced", "q35", ["-device", "intel-iommu,x-scalable-mode=on,snoop-control=on"]);
    x86_64_vtd_sm_ss_cm_unmap_flush => (X86_64, 105, "vtd_unmap_flush", "q35", ["-device", "intel-iommu,x-scalable-mode=on,caching-mode=on"]);
    x86_64_vtd_sm_ss_cm_map_invalidations => (X86_64, 114, "vtd_map_invalidations", "q35", ["-device", "intel-iommu,x-scalable-mode=on,caching-mode=on"]);
    // Scalable mode, first-stage translation (x-flts turns second stage off).
    x86_64_vtd_sm_fs_dma_4k => (X86_64, 100, "vtd_dma_4k", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_dma_2m => (X86_64, 101, "vtd_dma_2m", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_dma_1g => (X86_64, 102, "vtd_dma_1g", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_fault_unmapped => (X86_64, 103, "vtd_fault_unmapped", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_fault_readonly => (X86_64, 104, "vtd_fault_readonly", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_unmap_flush => (X86_64, 105, "vtd_unmap_flush", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_remap_new_pa => (X86_64, 106, "vtd_remap_new_pa", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_snoop_refused => (X86_64, 107, "vtd_snoop_refused", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_detach_faults => (X86_64, 109, "vtd_detach_faults", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_reattach_replaces => (X86_64, 110, "vtd_reattach_replaces", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_unit_disable => (X86_64, 111, "vtd_unit_disable", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_unmap_range => (X86_64, 112, "vtd_unmap_range", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_address_width => (X86_64, 115, "vtd_address_width", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_split_2m => (X86_64, 116, "vtd_split_2m", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_fs_no1g_dma_1g => (X86_64, 102, "vtd_dma_1g", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on,fs1gp=off"]);
    x86_64_vtd_sm_fs_cm_map_invalidations => (X86_64, 114, "vtd_map_invalidations", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on,caching-mode=on"]);
    // Two requesters (a second edu at 00:05.0), one on bus 1 (behind a root port), PASIDs, taking over a running unit.
    x86_64_vtd_legacy_two_devices => (X86_64, 117, "vtd_two_devices", "q35", ["-device", "intel-iommu", "-device", "edu,addr=05.0,dma_mask=0xffffffffffffffff"]);
    x86_64_vtd_sm_ss_two_devices => (X86_64, 117, "vtd_two_devices", "q35", ["-device", "intel-iommu,x-scalable-mode=on", "-device", "edu,addr=05.0,dma_mask=0xffffffffffffffff"]);
    x86_64_vtd_sm_fs_two_devices => (X86_64, 117, "vtd_two_devices", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on", "-device", "edu,addr=05.0,dma_mask=0xffffffffffffffff"]);
    x86_64_vtd_legacy_other_bus => (X86_64, 119, "vtd_other_bus", "q35", ["-device", "intel-iommu", "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=06.0", "-device", "edu,bus=rp1,addr=00.0,dma_mask=0xffffffffffffffff"]);
    x86_64_vtd_sm_ss_other_bus => (X86_64, 119, "vtd_other_bus", "q35", ["-device", "intel-iommu,x-scalable-mode=on", "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=06.0", "-device", "edu,bus=rp1,addr=00.0,dma_mask=0xffffffffffffffff"]);
    x86_64_vtd_sm_fs_other_bus => (X86_64, 119, "vtd_other_bus", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on", "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=06.0", "-device", "edu,bus=rp1,addr=00.0,dma_mask=0xffffffffffffffff"]);
    x86_64_vtd_legacy_pasid_attach => (X86_64, 118, "vtd_pasid_attach", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_legacy_takeover => (X86_64, 120, "vtd_takeover", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_sm_ss_takeover => (X86_64, 120, "vtd_takeover", "q35", ["-device", "intel-iommu,x-scalable-mode=on"]);
    x86_64_vtd_sm_fs_takeover => (X86_64, 120, "vtd_takeover", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    // iommufd IOMMU_OPTION_HUGE_PAGES off (issue 17 item 6): 512 4 KiB leaves for 2 MiB.
    x86_64_vtd_legacy_huge_pages_off => (X86_64, 125, "vtd_huge_pages_off", "q35", ["-device", "intel-iommu"]);
    x86_64_vtd_sm_fs_huge_pages_off => (X86_64, 125, "vtd_huge_pages_off", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on"]);
    x86_64_vtd_sm_ss_pasidmode_pasid_attach => (X86_64, 118, "vtd_pasid_attach", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-pasid-mode=on"]);
    x86_64_vtd_sm_fs_pasidmode_pasid_attach => (X86_64, 118, "vtd_pasid_attach", "q35", ["-device", "intel-iommu,x-scalable-mode=on,x-flts=on,x-pasid-mode=on"]);

    // AMD-Vi: guest numbers 300-399 from tests/qemu/x86_64/src/amdvi_scenarios.rs. QEMU 10.0's
    // amd-iommu translates only with pt=off (with pt=on, the default, DMA is never translated).
    x86_64_amdvi_dma_4k => (X86_64, 300, "amdvi_dma_4k", "q35", ["-device", "amd-iommu,pt=off"]);
    x86_64_amdvi_dma_2m => (X86_64, 301, "amdvi_dma_2m", "q35", ["-device", "amd-iommu,pt=off"]);
    x86_64_amdvi_dma_1g => (X86_64, 302, "amdvi_dma_1g", "q35", ["-device", "amd-iommu,pt=off"]);
    x86_64_amdvi_fault_events => (X86_64, 303, "amdvi_fault_events", "q35", ["-device", "amd-iommu,pt=off"]);
    x86_64_amdvi_unmap_flush => (X86_64, 304, "amdvi_unmap_flush", "q35", ["-device", "amd-iommu,pt=off"]);
    x86_64_amdvi_force_coherent => (X86_64, 305, "amdvi_force_coherent", "q35", ["-device", "amd-iommu,pt=off"]);
    x86_64_amdvi_two_devices => (X86_64, 306, "amdvi_two_devices", "q35", ["-device", "amd-iommu,pt=off", "-device", "edu,addr=05.0,dma_mask=0xffffffffffffffff"]);
    x86_64_amdvi_detach => (X86_64, 307, "amdvi_detach", "q35", ["-device", "amd-iommu,pt=off"]);
    x86_64_amdvi_disable => (X86_64, 308, "amdvi_disable", "q35", ["-device", "amd-iommu,pt=off"]);
    x86_64_amdvi_reattach_replaces => (X86_64, 309, "amdvi_reattach_replaces", "q35", ["-device", "amd-iommu,pt=off"]);

    // virt: guest numbers from tests/qemu/aarch64/src/scenarios.rs.
    aarch64_boot_ok => (Aarch64, 1, "boot_ok", "virt,iommu=smmuv3", []);
    aarch64_page_alloc => (Aarch64, 2, "page_alloc", "virt,iommu=smmuv3", []);
    aarch64_edu_dma_identity_no_iommu => (Aarch64, 3, "edu_dma_identity", "virt", []);
    aarch64_edu_dma_identity_smmu_off => (Aarch64, 3, "edu_dma_identity", "virt,iommu=smmuv3", []);
    aarch64_smmu_regs => (Aarch64, 4, "smmu_regs", "virt,iommu=smmuv3", []);
    aarch64_smmu_regs_stage2 => (Aarch64, 4, "smmu_regs", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);

    // SMMUv3: guest numbers 200-299 from tests/qemu/aarch64/src/smmu_scenarios.rs. Machines:
    // `virt` (10.0: stage=nested forced, S1P+S2P), `virt-9.1` (stage 1 only),
    // `virt-9.1` + `-global arm-smmuv3.stage=2` (stage 2 only).
    aarch64_smmu_idr_nested => (Aarch64, 200, "smmu_idr", "virt,iommu=smmuv3", []);
    aarch64_smmu_idr_s1 => (Aarch64, 200, "smmu_idr", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_idr_s2 => (Aarch64, 200, "smmu_idr", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s2_dma_4k => (Aarch64, 201, "smmu_dma_4k", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_dma_4k => (Aarch64, 201, "smmu_dma_4k", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_dma_2m => (Aarch64, 202, "smmu_dma_2m", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_dma_2m => (Aarch64, 202, "smmu_dma_2m", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_fault_unmapped => (Aarch64, 203, "smmu_fault_unmapped", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_fault_unmapped => (Aarch64, 203, "smmu_fault_unmapped", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_fault_readonly => (Aarch64, 204, "smmu_fault_readonly", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_fault_readonly => (Aarch64, 204, "smmu_fault_readonly", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_unmap_remap => (Aarch64, 205, "smmu_unmap_remap", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_unmap_remap => (Aarch64, 205, "smmu_unmap_remap", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_range_inval => (Aarch64, 206, "smmu_range_inval", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_range_inval => (Aarch64, 206, "smmu_range_inval", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_detach_reattach => (Aarch64, 207, "smmu_detach_reattach", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_detach_reattach => (Aarch64, 207, "smmu_detach_reattach", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_enforce_snoop => (Aarch64, 208, "smmu_enforce_snoop", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_enforce_snoop => (Aarch64, 208, "smmu_enforce_snoop", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_dma_1g => (Aarch64, 210, "smmu_dma_1g", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_dma_1g => (Aarch64, 210, "smmu_dma_1g", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_two_devices => (Aarch64, 211, "smmu_two_devices", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2", "-device", "edu,addr=08.0,dma_mask=0xffffffffffffffff"]);
    aarch64_smmu_s1_two_devices => (Aarch64, 211, "smmu_two_devices", "virt-9.1,iommu=smmuv3", ["-device", "edu,addr=08.0,dma_mask=0xffffffffffffffff"]);
    aarch64_smmu_s2_event_flood => (Aarch64, 212, "smmu_event_flood", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_disable_enable => (Aarch64, 213, "smmu_disable_enable", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_nested_disable_enable => (Aarch64, 213, "smmu_disable_enable", "virt,iommu=smmuv3", []);
    aarch64_smmu_s2_write_only => (Aarch64, 214, "smmu_write_only", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_write_only => (Aarch64, 214, "smmu_write_only", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_nested_switch_stages => (Aarch64, 215, "smmu_switch_stages", "virt,iommu=smmuv3", []);
    aarch64_smmu_s2_ias_edges => (Aarch64, 216, "smmu_ias_edges", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_ias_edges => (Aarch64, 216, "smmu_ias_edges", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_refusals => (Aarch64, 217, "smmu_refusals", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_nested_refusals => (Aarch64, 217, "smmu_refusals", "virt,iommu=smmuv3", []);
    aarch64_smmu_nested_dma_4k_default => (Aarch64, 218, "smmu_dma_4k_default", "virt,iommu=smmuv3", []);
    aarch64_smmu_s2_bypass_when_disabled => (Aarch64, 219, "smmu_bypass_when_disabled", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_nested => (Aarch64, 209, "smmu_nested", "virt,iommu=smmuv3", []);
    aarch64_smmu_s2_nested_refused => (Aarch64, 209, "smmu_nested", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_nested_refused => (Aarch64, 209, "smmu_nested", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_hwpt_nested_invalidate => (Aarch64, 230, "smmu_nested_user", "virt,iommu=smmuv3", []);
    aarch64_smmu_nested_dma_4k => (Aarch64, 201, "smmu_dma_4k", "virt,iommu=smmuv3", []);
    aarch64_smmu_nested_enforce_snoop => (Aarch64, 208, "smmu_enforce_snoop", "virt,iommu=smmuv3", []);
    aarch64_smmu_s2_dma_4k_2lvl => (Aarch64, 221, "smmu_dma_4k_2lvl", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_dma_4k_2lvl => (Aarch64, 221, "smmu_dma_4k_2lvl", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_unmap_remap_2lvl => (Aarch64, 225, "smmu_unmap_remap_2lvl", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_detach_reattach_2lvl => (Aarch64, 227, "smmu_detach_reattach_2lvl", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_nested_detach_reattach_2lvl => (Aarch64, 227, "smmu_detach_reattach_2lvl", "virt,iommu=smmuv3", []);
    aarch64_smmu_s1_granule_16k => (Aarch64, 240, "smmu_granule_16k", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_granule_16k => (Aarch64, 240, "smmu_granule_16k", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_s1_granule_64k => (Aarch64, 241, "smmu_granule_64k", "virt-9.1,iommu=smmuv3", []);
    aarch64_smmu_s2_granule_64k => (Aarch64, 241, "smmu_granule_64k", "virt-9.1,iommu=smmuv3", ["-global", "arm-smmuv3.stage=2"]);
    // MSIs through the SMMU to the GICv3 ITS (`gic-version=3,its=on`: the default GIC is v2).
    aarch64_smmu_s1_msi => (Aarch64, 250, "smmu_msi", "virt-9.1,iommu=smmuv3,gic-version=3,its=on", []);
    aarch64_smmu_s2_msi => (Aarch64, 250, "smmu_msi", "virt-9.1,iommu=smmuv3,gic-version=3,its=on", ["-global", "arm-smmuv3.stage=2"]);
    aarch64_smmu_nested_msi => (Aarch64, 250, "smmu_msi", "virt,iommu=smmuv3,gic-version=3,its=on", []);
    aarch64_smmu_s1_msi_64k => (Aarch64, 251, "smmu_msi_64k", "virt-9.1,iommu=smmuv3,gic-version=3,its=on", []);
    aarch64_smmu_s2_msi_64k => (Aarch64, 251, "smmu_msi_64k", "virt-9.1,iommu=smmuv3,gic-version=3,its=on", ["-global", "arm-smmuv3.stage=2"]);
}

/// Why an architecture's guest cannot run.
#[derive(Clone, Debug)]
enum NotReady {
    /// A tool is missing: skipped outside CI.
    Missing(String),
    /// Building the guest failed: always a test failure.
    BuildFailed(String),
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Prints past the test harness's output capture, so skips show in a plain `cargo test`.
fn notice(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn run(sc: &Scenario) {
    let elf = match guest(sc.arch) {
        Ok(elf) => elf,
        Err(NotReady::Missing(why)) => {
            if in_ci() {
                panic!("{}: cannot run under CI=true: {why}", sc.test);
            }
            notice(&format!(
                "SKIPPED {}: {why} (run .ci/install-qemu.sh to install)",
                sc.test
            ));
            return;
        }
        Err(NotReady::BuildFailed(log)) => {
            panic!(
                "{}: building the {} guest failed:\n{log}",
                sc.test,
                sc.arch.name()
            )
        }
    };

    let mut args: Vec<String> = vec!["-M".into(), sc.machine.into()];
    args.extend(sc.arch.cpu_args().iter().map(|s| s.to_string()));
    args.extend(
        [
            "-m",
            "128M",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-icount",
            "shift=10,sleep=off",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(sc.extra.iter().map(|s| s.to_string()));
    args.extend(sc.arch.device_args().iter().map(|s| s.to_string()));
    args.push("-device".into());
    args.push(format!(
        "loader,addr={:#x},data={},data-len=4",
        sc.arch.mailbox(),
        sc.id
    ));
    args.push("-kernel".into());
    args.push(elf.display().to_string());

    let cmdline = format!("{} {}", sc.arch.qemu(), args.join(" "));
    let start = Instant::now();
    let out = run_with_timeout(sc.arch.qemu(), &args, QEMU_TIMEOUT);
    let elapsed = start.elapsed();
    println!("{}: {:.3} s: {cmdline}", sc.test, elapsed.as_secs_f64());

    let report = |problem: &str, serial: &str, stderr: &str| -> String {
        format!(
            "{}: {problem}\ncommand: {cmdline}\n--- guest serial output ---\n{serial}\n--- QEMU stderr ---\n{stderr}\n---",
            sc.test
        )
    };
    let (status, serial, stderr) = match out {
        Ok(Run::Exited {
            status,
            stdout,
            stderr,
        }) => (status, stdout.replace('\r', ""), stderr),
        Ok(Run::TimedOut { stdout, stderr }) => panic!(
            "{}",
            report(
                &format!("timed out after {QEMU_TIMEOUT:?} (QEMU killed)"),
                &stdout.replace('\r', ""),
                &stderr
            )
        ),
        Err(e) => panic!("{}", report(&format!("cannot run QEMU: {e}"), "", "")),
    };

    let lines: Vec<&str> = serial.lines().map(str::trim_end).collect();
    let banner = format!("SCENARIO {} {}", sc.id, sc.name);
    let pass = format!("PASS {}", sc.name);
    let problem = if let Some(fail) = lines.iter().find(|l| l.starts_with("FAIL")) {
        Some(format!("guest reported: {fail} (QEMU {status})"))
    } else if status.code().is_none() {
        Some(format!("QEMU crashed: {status}"))
    } else if !lines.contains(&banner.as_str()) {
        Some(format!(
            "guest did not run `{banner}` (runner and guest tables disagree?); QEMU {status}"
        ))
    } else if !lines.contains(&pass.as_str()) {
        Some(format!("no `{pass}` line; QEMU {status}"))
    } else if status.code() != Some(EXIT_PASS) {
        Some(format!(
            "QEMU {status}, expected exit status {EXIT_PASS} (guest pass)"
        ))
    } else {
        stderr
            .lines()
            .find(|l| sc.arch.unexpected_log(l))
            .map(|line| format!("QEMU logged a guest error: {line}"))
    };
    if let Some(problem) = problem {
        panic!("{}", report(&problem, &serial, &stderr));
    }
}

enum Run {
    Exited {
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    TimedOut {
        stdout: String,
        stderr: String,
    },
}

/// Runs `prog args`, killing it after `timeout`; collects stdout and stderr.
fn run_with_timeout(prog: &str, args: &[String], timeout: Duration) -> std::io::Result<Run> {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = process::wait_bounded(&mut child, timeout, Duration::from_millis(2))?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(match status {
        Some(status) => Run::Exited {
            status,
            stdout,
            stderr,
        },
        None => Run::TimedOut { stdout, stderr },
    })
}

/// The guest ELF for `arch`, built once per test process.
fn guest(arch: Arch) -> Result<PathBuf, NotReady> {
    static GUESTS: [OnceLock<Result<PathBuf, NotReady>>; 2] = [OnceLock::new(), OnceLock::new()];
    GUESTS[arch.index()].get_or_init(|| build(arch)).clone()
}

fn build(arch: Arch) -> Result<PathBuf, NotReady> {
    // QEMU present?
    match Command::new(arch.qemu()).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Err(NotReady::Missing(format!(
                "`{} --version` failed: {}",
                arch.qemu(),
                o.status
            )))
        }
        Err(e) => {
            return Err(NotReady::Missing(format!(
                "{} not found ({e})",
                arch.qemu()
            )))
        }
    }
    // Bare-metal target installed?
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| NotReady::Missing(format!("cannot run {rustc}: {e}")))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib").join(arch.target()).exists() {
        return Err(NotReady::Missing(format!(
            "Rust target {} is not installed in {} (rustup target add {})",
            arch.target(),
            sysroot.display(),
            arch.target()
        )));
    }

    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/qemu")
        .join(arch.name());
    // One target dir for both guests: the host-side build dependencies (proc macros) are built
    // once, and the two builds serialise on cargo's lock, which costs less CPU than building
    // them twice in parallel (measured cold: 8.3 s shared vs 9.1 s parallel on 2 CPUs).
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--release", "--quiet"])
        // The guest's .cargo/config.toml (target, relocation model) is found from its directory.
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build (coverage, -D warnings, ...) must not reach the guest:
        // RUSTFLAGS would replace the guest's own rustflags.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .map_err(|e| NotReady::BuildFailed(format!("cannot run {cargo}: {e}")))?;
    if !out.status.success() {
        return Err(NotReady::BuildFailed(format!(
            "cargo build --release in {} ({}):\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let elf = target_dir
        .join(arch.target())
        .join("release")
        .join(format!("iommu-qemu-{}", arch.name()));
    if !elf.exists() {
        return Err(NotReady::BuildFailed(format!(
            "build succeeded but {} is missing",
            elf.display()
        )));
    }
    Ok(elf)
}
