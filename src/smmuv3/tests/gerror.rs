//! Global-error acknowledgement (`SmmuUnit::handle_events`, `cmdq.rs`; IHI 0070 G.b §7.5,
//! §6.3.18): `handle_events` beside a command-queue call, each acknowledging through GERRORN,
//! against the SMMUv3 reference model. A register window of the test's own stops
//! `handle_events` at a chosen register access and runs the other CPU's call there: at once if
//! that call could run then (the command queue's lock is free), else when `handle_events`
//! returned (a second CPU would wait for the lock).

use std::boxed::Box;
use std::sync::Mutex;

use super::*;
use crate::sim::smmuv3::{op, Injection, SmmuModel, SmmuModelConfig};
use crate::sim::Arena;
use regs::Gerror;

/// What the other CPU does, run once at the hook's point.
type Hook = Box<dyn FnOnce() + Send>;

/// The model's register window, with two hook points for the other CPU.
struct Hooked<'m> {
    model: &'m SmmuModel<'m>,
    /// Run before the next GERRORN write reaches the unit: that write's value was read before.
    before_gerrorn_write: Mutex<Option<Hook>>,
    /// Run after the first CMDQ_PROD write that leaves `GERROR.MSI_CMDQ_ABT_ERR` active.
    after_msi_abort: Mutex<Option<Hook>>,
}

impl RegisterWindow for Hooked<'_> {
    fn read32(&self, offset: usize) -> u32 {
        self.model.read32(offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        if offset == regs::GERRORN {
            let hook = self.before_gerrorn_write.lock().unwrap().take();
            if let Some(f) = hook {
                f();
            }
        }
        self.model.write32(offset, value);
        if offset == regs::CMDQ_PROD
            && Gerror::active(self.model).contains(Gerror::MSI_CMDQ_ABT_ERR)
        {
            let hook = self.after_msi_abort.lock().unwrap().take();
            if let Some(f) = hook {
                f();
            }
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        self.model.read64(offset)
    }

    fn write64(&self, offset: usize, value: u64) {
        self.model.write64(offset, value)
    }
}

type HookedUnit = SmmuUnit<&'static Hooked<'static>, &'static Arena>;

/// An enabled unit over the model (leaked: the hooks borrow it for `'static`), a stage-2
/// domain attached to StreamID 0x20 with one page mapped and then unmapped into `gather`.
fn rig(
    model_cfg: SmmuModelConfig,
    sync: cmdq::SyncMode,
) -> (
    &'static SmmuModel<'static>,
    &'static Hooked<'static>,
    &'static HookedUnit,
    DomainHandle,
    Gather,
) {
    rig_with_budget(model_cfg, sync, 1000)
}

/// As [`rig`], with the unit's poll budget.
fn rig_with_budget(
    model_cfg: SmmuModelConfig,
    sync: cmdq::SyncMode,
    poll_budget: u32,
) -> (
    &'static SmmuModel<'static>,
    &'static Hooked<'static>,
    &'static HookedUnit,
    DomainHandle,
    Gather,
) {
    let arena: &'static Arena = Box::leak(Box::new(Arena::with_defaults().unwrap()));
    let model: &'static SmmuModel<'static> = Box::leak(Box::new(SmmuModel::new(arena, model_cfg)));
    let window: &'static Hooked<'static> = Box::leak(Box::new(Hooked {
        model,
        before_gerrorn_write: Mutex::new(None),
        after_msi_abort: Mutex::new(None),
    }));
    let cfg = SmmuConfig {
        sync,
        poll_budget,
        ..SmmuConfig::default()
    };
    let u: &'static HookedUnit = Box::leak(Box::new(SmmuUnit::new(window, arena, cfg).unwrap()));
    u.enable().unwrap();
    let d = u.domain_alloc(&s2()).unwrap();
    u.attach(DeviceId(0x20), None, d).unwrap();
    u.map(d, Iova::new(0x40_0000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x40_0000), K4, &mut g).unwrap();
    model.reset_stats();
    (model, window, u, d, g)
}

/// A command-queue call of another CPU: one command and a CMD_SYNC.
fn queue_call(u: &HookedUnit) -> Result<(), SmmuError> {
    u.with_cmdq(|q, r| q.submit_and_sync(r, &[Command::cfgi_all()]))
}

/// `handle_events` acknowledges a non-queue error (EVENTQ_ABT_ERR) by a read-modify-write of
/// GERRORN. Between its read and its write, another CPU's command-queue call meets CERROR_ILL
/// and acknowledges CMDQ_ERR by toggling GERRORN.CMDQ_ERR. `handle_events`' write must not
/// carry the CMDQ_ERR bit it read back over that acknowledgement: that makes CMDQ_ERR look
/// active again (software toggling a bit of an inactive error, CONSTRAINED UNPREDICTABLE,
/// §6.3.18), the unit stops consuming commands, and the next call on the queue fails with a
/// command error nobody made, its command replaced by a CMD_SYNC.
#[test]
fn handle_events_never_undoes_a_queue_wait_s_acknowledgement() {
    let (model, window, u, _, _) = rig(SmmuModelConfig::qemu_like(), cmdq::SyncMode::PollCons);
    model.inject(Injection::GlobalError(Gerror::EVENTQ_ABT_ERR.bits()));
    model.inject(Injection::CommandIllegal);
    let other: &'static Mutex<Option<Result<(), SmmuError>>> = Box::leak(Box::default());
    let deferred: &'static Mutex<Option<Hook>> = Box::leak(Box::default());
    let call: Hook = Box::new(move || *other.lock().unwrap() = Some(queue_call(u)));
    *window.before_gerrorn_write.lock().unwrap() = Some(Box::new(move || {
        if u.cmdq.is_locked() {
            // `handle_events` holds the queue: the other CPU waits until it is released.
            *deferred.lock().unwrap() = Some(call);
        } else {
            call();
        }
    }));
    let report = u.handle_events(16, |_| {});
    let late = deferred.lock().unwrap().take();
    if let Some(f) = late {
        f();
    }
    assert!(report.gerror.contains(Gerror::EVENTQ_ABT_ERR));
    assert!(
        window.before_gerrorn_write.lock().unwrap().is_none(),
        "handle_events wrote no GERRORN"
    );
    assert!(
        matches!(
            *other.lock().unwrap(),
            Some(Err(SmmuError::CommandError {
                kind: CommandErrorKind::Illegal,
                ..
            }))
        ),
        "the other CPU's call: {:?}",
        other.lock().unwrap()
    );
    assert_eq!(
        Gerror::active(model),
        Gerror::empty(),
        "errors active after both acknowledged theirs (CMDQ_ERR: the queue wait's \
         acknowledgement undone by handle_events' write of the GERRORN it read before)"
    );
    model.reset_stats();
    assert_eq!(queue_call(u), Ok(()), "the next call on the queue");
    assert_eq!(model.stats().cerrors, 0);
    assert_eq!(
        model.stats().total_commands(),
        2,
        "its command and CMD_SYNC ran"
    );
}

/// A CMD_SYNC completed by MSI whose MSI write aborts (GERROR.MSI_CMDQ_ABT_ERR), with
/// `handle_events` run (to its end, on another CPU) after the unit raised the error and before
/// the waiter looked at GERROR (it does every 64 polls of the MSI word). The waiter must still learn of the abort: its
/// call fails with `SyncMsiAborted` (not a timeout), and the queue falls back to polling
/// CMDQ_CONS, so the retry completes though every MSI still aborts.
#[test]
fn a_sync_msi_abort_seen_first_by_handle_events_still_reaches_the_waiter() {
    let (model, window, u, d, mut g) = rig(
        SmmuModelConfig::qemu_like().with_msi(true),
        cmdq::SyncMode::Msi,
    );
    model.inject(Injection::SyncMsiAbort);
    let report: &'static Mutex<Option<EventReport>> = Box::leak(Box::default());
    *window.after_msi_abort.lock().unwrap() = Some(Box::new(move || {
        // On another thread: the waiter holds the command queue's lock, and only the queue's
        // errors are active, so `handle_events` must not wait for it (a waiter could hold it
        // for its whole poll budget); the bound only turns a hang into a failure.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            *report.lock().unwrap() = Some(u.handle_events(16, |_| {}));
            let _ = done.send(());
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("handle_events waited for the queue's lock with only its errors active");
    }));
    let err = u.flush(d, &mut g).unwrap_err();
    let seen = report
        .lock()
        .unwrap()
        .expect("handle_events ran in the waiter's window");
    assert!(seen.gerror.contains(Gerror::MSI_CMDQ_ABT_ERR));
    assert!(
        matches!(err, Error::Hardware { what, .. } if what.contains("MSI_CMDQ_ABT_ERR")),
        "the flush whose CMD_SYNC MSI aborted: {err:?}"
    );
    assert!(!g.is_empty(), "the failed flush keeps its gather");
    retry_completes_by_polling_cons(model, u, d, &mut g);
}

/// A poll budget below the MSI wait's GERROR check interval (64 polls): the wait must still
/// look at GERROR before it gives up, or an aborted CMD_SYNC MSI is never seen, every sync
/// times out, and nothing acknowledges MSI_CMDQ_ABT_ERR (`handle_events` leaves it to the
/// queue).
#[test]
fn an_msi_wait_with_a_short_budget_still_sees_the_abort() {
    let (model, _window, u, d, mut g) = rig_with_budget(
        SmmuModelConfig::qemu_like().with_msi(true),
        cmdq::SyncMode::Msi,
        32,
    );
    model.inject(Injection::SyncMsiAbort);
    let err = u.flush(d, &mut g).unwrap_err();
    assert!(
        matches!(err, Error::Hardware { what, .. } if what.contains("MSI_CMDQ_ABT_ERR")),
        "the flush whose CMD_SYNC MSI aborted: {err:?}"
    );
    assert!(!g.is_empty(), "the failed flush keeps its gather");
    retry_completes_by_polling_cons(model, u, d, &mut g);
}

/// After a flush whose CMD_SYNC MSI aborted: the retry completes, its CMD_SYNCs ask for no MSI
/// (the queue fell back to polling CMDQ_CONS), and no global error stays active.
fn retry_completes_by_polling_cons(
    model: &SmmuModel<'_>,
    u: &HookedUnit,
    d: DomainHandle,
    g: &mut Gather,
) {
    model.reset_stats();
    u.flush(d, g).unwrap();
    assert!(g.is_empty());
    // CMD_SYNC.CS (bits 13:12): SIG_IRQ (1) asks for the MSI.
    let msi_syncs = model
        .command_log()
        .iter()
        .filter(|c| c[0] as u8 == op::CMD_SYNC && c[0] >> 12 & 3 == 1)
        .count();
    assert_eq!(msi_syncs, 0, "the queue did not fall back to CMDQ_CONS");
    assert!(Gerror::active(model).is_empty());
}
