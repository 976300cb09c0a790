//! Child processes of the host-side integration tests (QEMU runs): a bounded wait.
//! Included with `#[path]` by each test crate that launches QEMU.

use std::io;
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

/// Waits for `child` to exit, polling every `poll`, for at most `timeout`: its status, or
/// `None` after killing and reaping it when the time ran out.
pub fn wait_bounded(
    child: &mut Child,
    timeout: Duration,
    poll: Duration,
) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(poll);
    }
}
