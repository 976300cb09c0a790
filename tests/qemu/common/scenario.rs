//! The scenario framework shared by both guests.
//!
//! The runner writes a scenario number into guest RAM at the guest's mailbox address (QEMU
//! `-device loader,addr=MAILBOX,data=N,data-len=4`) before the CPU starts. The guest looks the
//! number up in its table of [`Scenario`]s, runs it and reports on the serial port:
//!
//! ```text
//! SCENARIO <number> <name>
//! ...diagnostics...
//! PASS <name>            or     FAIL <name>: <reason>
//! ```
//!
//! then exits with [`Status`]: QEMU's exit status is `(code << 1) | 1` on both architectures
//! (isa-debug-exit does the shift on x86; the aarch64 guest passes the same value to semihosting
//! `SYS_EXIT`), i.e. 33 = pass, 35 = fail, 37 = error (panic, CPU exception), 39 = unknown
//! scenario.

use core::fmt::{self, Write};

use crate::alloc::PageArena;
use crate::edu::Edu;

/// How a run ends. QEMU's exit status is `(self as u32) << 1 | 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// The scenario passed (exit status 33).
    Pass = 0x10,
    /// The scenario failed a check (exit status 35).
    Fail = 0x11,
    /// Panic or unexpected CPU exception (exit status 37).
    Error = 0x12,
    /// The mailbox held no known scenario number (exit status 39).
    NoScenario = 0x13,
}

impl Status {
    /// The process exit status QEMU reports for this status.
    pub const fn qemu_exit_status(self) -> u32 {
        (self as u32) << 1 | 1
    }
}

/// A failure reason: a short formatted message, kept in a fixed buffer (no allocator).
pub struct Fail {
    buf: [u8; 192],
    len: usize,
}

impl Fail {
    /// Formats `args` into a new reason, truncated to the buffer.
    pub fn new(args: fmt::Arguments<'_>) -> Self {
        let mut f = Fail {
            buf: [0; 192],
            len: 0,
        };
        let _ = f.write_fmt(args);
        f
    }
}

impl Write for Fail {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                break;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Truncation may split a UTF-8 sequence; show what is valid.
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => f.write_str(s),
            Err(e) => f.write_str(
                core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or("<invalid>"),
            ),
        }
    }
}

/// Returns from the current scenario with a formatted failure.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::scenario::Fail::new(format_args!($($arg)*)))
    };
}

/// Fails the current scenario with a formatted reason unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::bail!($($arg)*);
        }
    };
}

/// What a scenario gets: the platform's devices and memory.
pub struct Ctx {
    /// The page allocator (PA == VA) the crate's drivers will use.
    pub alloc: &'static PageArena,
    /// The `edu` device, or why it was not found/configured.
    pub edu: Result<Edu, Fail>,
    /// Architecture-specific state (IOMMU register base, ...).
    pub arch: crate::arch::ArchCtx,
}

impl Ctx {
    /// The edu device, or a failure saying why there is none.
    pub fn edu(&self) -> Result<&Edu, Fail> {
        match &self.edu {
            Ok(e) => Ok(e),
            Err(why) => Err(Fail::new(format_args!("no edu device: {why}"))),
        }
    }
}

/// One scenario: the number the runner selects it by, its name (printed, and checked by the
/// runner), and the function.
pub struct Scenario {
    /// Selector written by the runner into the mailbox; unique per guest, never 0.
    pub id: u32,
    /// Name printed in the report lines; the runner checks it matches its own table.
    pub name: &'static str,
    /// The scenario body.
    pub run: fn(&mut Ctx) -> Result<(), Fail>,
}

/// Runs the scenario whose number is `selector` and returns the status to exit with.
pub fn run(table: &[Scenario], selector: u32, ctx: &mut Ctx) -> Status {
    let Some(sc) = table.iter().find(|s| s.id == selector) else {
        crate::println!("FAIL unknown scenario number {selector} (mailbox not written?); known:");
        for s in table {
            crate::println!("  {} {}", s.id, s.name);
        }
        return Status::NoScenario;
    };
    crate::println!("SCENARIO {} {}", sc.id, sc.name);
    let live_before = ctx.alloc.live_frames();
    let result = (sc.run)(ctx);
    let misuse = ctx.alloc.misuse_count();
    let result = match result {
        Ok(()) if misuse != 0 => Err(Fail::new(format_args!(
            "page allocator misused {misuse} time(s) (bad free)"
        ))),
        other => other,
    };
    match result {
        Ok(()) => {
            let leaked = ctx.alloc.live_frames().saturating_sub(live_before);
            if leaked != 0 {
                crate::println!("note: {leaked} page frame(s) still allocated at the end");
            }
            crate::println!("PASS {}", sc.name);
            Status::Pass
        }
        Err(why) => {
            crate::println!("FAIL {}: {}", sc.name, why);
            Status::Fail
        }
    }
}
