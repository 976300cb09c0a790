//! The I/O page fault path's locks (`page_faults.rs`), against the SMMUv3 reference model on
//! threads: the one lock order (configuration, event queue, book, PRI queue, command queue)
//! and an answer that keeps the book until its command is queued.

use std::time::{Duration, Instant};

use super::*;
use crate::iopf::{FaultKind, PageFault, PageResponse, ResponseCode};
use crate::sim::smmuv3::priq::{PriOutcome, PriRequest};
use crate::sim::smmuv3::{Injection, SmmuModel, SmmuModelConfig};
use crate::sim::walk::Access;
use crate::sim::{Arena, ArenaConfig};

const SID: u32 = 0x20;

fn arena() -> Arena {
    Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 16 << 20,
    })
    .unwrap()
}

/// An enabled unit with a PRI queue over the model.
fn pri_unit<'m>(sm: &'m SmmuModel<'m>, arena: &'m Arena) -> SmmuUnit<&'m SmmuModel<'m>, &'m Arena> {
    let u = SmmuUnit::new(
        sm,
        arena,
        SmmuConfig {
            poll_budget: 10_000,
            ..SmmuConfig::default()
        },
    )
    .unwrap();
    u.enable().unwrap();
    u
}

fn pri_model() -> SmmuModelConfig {
    SmmuModelConfig::qemu_like().with_pri(true, 19)
}

fn group(g: u16) -> PriRequest {
    PriRequest {
        sid: SID,
        ssid: None,
        addr: 0x1000 * u64::from(g),
        access: Access::WRITE,
        group: g,
        last: true,
    }
}

/// The device requests group `g` (its last request) and a drain hands it out (one fault
/// reported); returns the answer `code` to it.
fn handed_out(
    sm: &SmmuModel<'_>,
    u: &SmmuUnit<&SmmuModel<'_>, &Arena>,
    g: u16,
    code: ResponseCode,
) -> PageResponse {
    assert_eq!(sm.page_request(group(g)), PriOutcome::Queued);
    let mut out = [PageFault::EMPTY; 4];
    assert_eq!(u.drain_page_faults(&mut out).unwrap().reported, 1);
    out[0].response(code)
}

/// What `page_response` answers for a record the book no longer holds.
fn not_outstanding(response: &PageResponse) -> Result<(), Error> {
    Err(Error::NotOutstanding {
        device: DeviceId(SID),
        pasid: None,
        kind: response.kind,
    })
}

/// No CMD_PRI_RESP was sent, nor queued and ignored.
fn assert_nothing_sent(sm: &SmmuModel<'_>) {
    assert!(sm.pri_responses().is_empty());
    assert_eq!(sm.stats().ignored_commands, 0, "nothing was queued");
}

#[test]
fn enable_never_holds_the_pri_queue_while_it_waits_for_the_book() {
    // drain_page_faults takes the book, then the PRI queue. enable took the PRI queue, then
    // the book (to clear the fences): with a drain on another CPU, each waited for the other
    // for ever. Here the test holds the book, as a drain does, while enable runs: enable must
    // wait for it without holding the PRI queue.
    let arena = arena();
    let sm = SmmuModel::new(&arena, pri_model());
    let u = pri_unit(&sm, &arena);
    std::thread::scope(|s| {
        let book = u.stalls.lock();
        let enabling = s.spawn(|| u.enable());
        // Give enable the time to reach the book (it cannot pass it).
        std::thread::sleep(Duration::from_millis(500));
        let start = Instant::now();
        let mut free = false;
        while start.elapsed() < Duration::from_secs(2) {
            if u.priq.try_lock().is_some() {
                free = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!enabling.is_finished(), "enable passed the book");
        drop(book);
        // Released either way, so that enable ends and the scope with it.
        let enabled = enabling.join().unwrap();
        assert!(
            free,
            "enable held the PRI queue while waiting for the book: ABBA with drain_page_faults"
        );
        enabled.unwrap();
    });
    // The order also holds with a drain on another thread, over and over.
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..200 {
                u.enable().unwrap();
            }
        });
        let mut out = [PageFault::EMPTY; 4];
        for _ in 0..200 {
            u.drain_page_faults(&mut out).unwrap();
        }
    });
}

#[test]
fn an_answer_keeps_the_book_until_its_command_is_queued() {
    // A STAG (a PRI group's index likewise) may be given to a new stall once CMD_STALL_TERM
    // or an SMMUEN clear has ended its transaction (IHI 0070 §3.12.2). An answer that took its
    // record out of the book and let the book go before its CMD_RESUME was queued could be
    // overtaken by a termination (which holds the book while it queues CMD_STALL_TERM) and then
    // resume the new stall. The answer must hold the book until the command is in the queue.
    let arena = arena();
    let sm = SmmuModel::new(&arena, pri_model());
    let u = pri_unit(&sm, &arena);
    let response = handed_out(&sm, &u, 3, ResponseCode::Success);
    assert_eq!(
        response.kind,
        FaultKind::PageRequest {
            group: 3,
            last: true,
        }
    );
    let outstanding = |book: &page_faults::StallBook| book.outstanding(&response).is_some();
    std::thread::scope(|s| {
        // The command queue is busy (another CPU's flush).
        let cmdq = u.cmdq.lock();
        let answering = s.spawn(|| u.page_response(&response));
        let start = Instant::now();
        let mut left_early = false;
        while start.elapsed() < Duration::from_secs(2) {
            if let Some(book) = u.stalls.try_lock() {
                if !outstanding(&book) {
                    left_early = true;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(cmdq);
        answering.join().unwrap().unwrap();
        assert!(
            !left_early,
            "the answer left the book before its command was queued"
        );
    });
    assert!(!outstanding(&u.stalls.lock()), "answered once queued");
    let sent = sm.pri_responses();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].group, sent[0].code, sent[0].expected),
        (3, 0, true)
    );
}

/// A Success answer to group `g` of generation `generation` (the unit's count of SMMUEN
/// clears: 1 after the first `enable`).
fn group_response(g: u16, generation: u32) -> PageResponse {
    PageResponse {
        device: DeviceId(SID),
        pasid: None,
        kind: FaultKind::PageRequest {
            group: g,
            last: true,
        },
        code: ResponseCode::Success,
        generation,
    }
}

#[test]
fn a_page_response_while_disabled_is_refused_and_sends_nothing() {
    // While SMMUEN = 0 the unit ignores CMD_PRI_RESP (IHI 0070 §6.3.9.6): an answer sent
    // then is lost, and must not be recorded as given. Once the clear is acknowledged the
    // record is gone (the endpoint's PRI is re-initialised before the re-enable).
    let arena = arena();
    let sm = SmmuModel::new(&arena, pri_model());
    let u = pri_unit(&sm, &arena);
    let response = handed_out(&sm, &u, 4, ResponseCode::Success);
    u.disable().unwrap();
    assert_eq!(u.page_response(&response), not_outstanding(&response));
    assert!(!u.page_response_owed(&response), "SMMUEN clear forgot it");
    assert_nothing_sent(&sm);
}

#[test]
fn a_page_response_after_an_unacknowledged_disable_keeps_its_record() {
    // The CR0 write may take effect before CR0ACK shows it (§6.3.9): the unit counts as off
    // and may ignore CMD_PRI_RESP, but the clear was not seen, so the record stays, to be
    // forgotten by the disable (or enable) that completes it.
    let arena = arena();
    let sm = SmmuModel::new(&arena, pri_model());
    let u = pri_unit(&sm, &arena);
    let response = handed_out(&sm, &u, 4, ResponseCode::Success);
    sm.inject(Injection::Cr0AckStuck);
    assert!(matches!(u.disable(), Err(SmmuError::Cr0AckTimeout { .. })));
    assert_eq!(
        u.page_response(&response),
        Err(Error::from(SmmuError::PriResponseIgnored { sid: SID }))
    );
    assert!(u.page_response_owed(&response), "the record is kept");
    assert_nothing_sent(&sm);
}

#[test]
fn an_answer_from_before_a_disable_is_refused_after_the_enable() {
    // Clearing SMMUEN takes the ATS interface down, and the endpoints' PRI is re-initialised
    // before the unit is enabled again (IHI 0070 §6.3.9.6): the device forgets its groups and
    // may give their indexes to new ones. A late answer to a group handed out before the
    // disable must not be sent as a CMD_PRI_RESP that would answer the new group.
    let arena = arena();
    let sm = SmmuModel::new(&arena, pri_model());
    let u = pri_unit(&sm, &arena);
    let stale = handed_out(&sm, &u, 3, ResponseCode::Success);
    u.disable().unwrap();
    u.enable().unwrap();
    // The re-initialised endpoint's new group 3, drained (handed out) before the late
    // answer: the book then holds a record of stream, PASID and index 3 again.
    let fresh = handed_out(&sm, &u, 3, ResponseCode::Invalid);
    assert_eq!(u.page_response(&stale), not_outstanding(&stale));
    assert!(
        sm.pri_responses().is_empty(),
        "a CMD_PRI_RESP from before the disable answered the new group: {:?}",
        sm.pri_responses()
    );
    assert!(!u.page_response_owed(&stale), "the record outlived SMMUEN");
    // The new group's own answer is the one sent.
    assert!(u.page_response_owed(&fresh));
    u.page_response(&fresh).unwrap();
    let sent = sm.pri_responses();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].group, sent[0].code), (3, 1));
}

#[test]
fn a_drain_while_disabled_sends_nothing_and_hands_out_nothing() {
    // While SMMUEN = 0 the unit ignores CMD_PRI_RESP (IHI 0070 §6.3.9.6), and the endpoints'
    // PRI is re-initialised before it is enabled again: requests the PRI queue still holds
    // from before the disable belong to groups the device forgets. A drain then must not
    // answer them (the refusals past the stream's share were ignored) nor hand them out (an
    // answer could only be NotOutstanding, or, after the enable, name a reused index).
    let arena = arena();
    let sm = SmmuModel::new(&arena, pri_model());
    let u = pri_unit(&sm, &arena);
    let queued = page_faults::STREAM_QUOTA as u16 + 4;
    for g in 0..queued {
        assert_eq!(sm.page_request(group(g)), PriOutcome::Queued);
    }
    u.disable().unwrap();
    let mut out = [PageFault::EMPTY; 32];
    let (mut reported, mut overflow, mut calls) = (0, false, 0);
    loop {
        let d = u.drain_page_faults(&mut out).unwrap();
        reported += d.reported;
        overflow |= d.overflow;
        calls += 1;
        if !d.more || calls == 16 {
            break;
        }
    }
    assert_eq!(
        sm.stats().ignored_commands,
        0,
        "a drain while disabled sent CMD_PRI_RESPs the unit ignored"
    );
    assert_eq!(
        reported, 0,
        "requests of a PRI the endpoint forgets handed out"
    );
    assert!(
        overflow,
        "the requests dropped are reported, as lost ones are"
    );
    assert_eq!(u.faults_discarded(), u64::from(queued));
    assert_eq!(u.faults_refused(), 0);
    u.enable().unwrap();
    for g in 0..queued {
        for generation in 0..4 {
            assert!(!u.page_response_owed(&group_response(g, generation)));
        }
    }
    assert!(sm.pri_responses().is_empty());
}

#[test]
fn partial_groups_from_before_a_clear_are_reported_even_with_an_empty_pri_queue() {
    // A context holds a group whose last request has not come as a partial group, until a
    // drain reports an overflow (the dispatch then drops the unit's partial groups). Once
    // SMMUEN is cleared the endpoint's PRI is re-initialised (IHI 0070 §6.3.9.6): the last
    // request never comes, and the partial group would hold its records for ever. A drain
    // reported that only when it happened to drop requests from the PRI queue.
    let arena = arena();
    let sm = SmmuModel::new(&arena, pri_model());
    let u = pri_unit(&sm, &arena);
    let mut out = [PageFault::EMPTY; 4];
    // No partial group handed out: a clear has nothing to report.
    u.disable().unwrap();
    u.enable().unwrap();
    assert!(!u.drain_page_faults(&mut out).unwrap().overflow);
    for disabled_drain in [true, false] {
        let partial = PriRequest {
            last: false,
            ..group(3)
        };
        assert_eq!(sm.page_request(partial), PriOutcome::Queued);
        let d = u.drain_page_faults(&mut out).unwrap();
        assert_eq!((d.reported, d.overflow), (1, false));
        u.disable().unwrap();
        if disabled_drain {
            // The PRI queue is empty: nothing dropped.
            let d = u.drain_page_faults(&mut out).unwrap();
            assert!(
                d.overflow,
                "the dead partial group was not reported by the drain while disabled"
            );
            assert_eq!(d.reported, 0);
            u.enable().unwrap();
        } else {
            u.enable().unwrap();
            let d = u.drain_page_faults(&mut out).unwrap();
            assert!(
                d.overflow,
                "the dead partial group was not reported by the drain after the enable"
            );
        }
        assert!(
            !u.drain_page_faults(&mut out).unwrap().overflow,
            "reported once"
        );
    }
    assert_eq!(u.faults_discarded(), 0);
    assert!(sm.pri_responses().is_empty());
}
