//! Retention of the ledger: records past the age or size bound are compacted into the
//! snapshot, what still describes the present is carried, and sequence numbers never go
//! back.

use qs_store::{Ledger, Retention};
use qs_wire::{Event, ExitOutcome, InstanceId, NodeId, Role, ServiceName};

const HOUR_US: u64 = 3_600_000_000;

fn node() -> NodeId {
    NodeId::new("forge").unwrap()
}

fn filler(i: u64) -> Event {
    Event::PromotionNeedsApproval {
        service: ServiceName::new(&format!("svc-{i}")).unwrap(),
    }
}

fn started(id: &str) -> Event {
    Event::InstanceStarted {
        instance: InstanceId::new(id).unwrap(),
        service: ServiceName::new("web").unwrap(),
        role: Role::Replica,
        fencing: 0,
        gpu: None,
    }
}

fn exited(id: &str) -> Event {
    Event::InstanceExited {
        instance: InstanceId::new(id).unwrap(),
        service: ServiceName::new("web").unwrap(),
        outcome: ExitOutcome::Completed,
    }
}

fn seqs(l: &Ledger) -> Vec<u64> {
    l.read(0, 10_000).unwrap().iter().map(|r| r.seq).collect()
}

const KEEP_A_DAY: Retention = Retention {
    max_age_us: 24 * HOUR_US,
    max_bytes: 1 << 30,
};

#[test]
fn records_past_the_age_go_into_the_snapshot_and_running_instances_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let l = Ledger::open(&path).unwrap();
    // Hour 0: web-1 starts and ends, web-2 starts (and runs on); hours 1..=29: filler;
    // hour 30: web-3 starts.
    l.append(
        &node(),
        0,
        &[started("web-1"), started("web-2"), exited("web-1")],
    )
    .unwrap();
    for h in 1..30 {
        l.append(&node(), h * HOUR_US, &[filler(h)]).unwrap();
    }
    l.append(&node(), 30 * HOUR_US, &[started("web-3")])
        .unwrap();
    let next = l.next_seq();
    assert!(
        !l.due(KEEP_A_DAY, 5 * HOUR_US).unwrap(),
        "nothing is a day old yet"
    );
    assert!(l.due(KEEP_A_DAY, 30 * HOUR_US).unwrap());

    let snapshot = l
        .compact(KEEP_A_DAY, 30 * HOUR_US)
        .unwrap()
        .expect("compacted");
    // Older than hour 6: seqs 0..=2 (hour 0) and 3..=7 (hours 1..=5). web-2's start stays.
    assert_eq!(snapshot.through_seq, 8);
    assert_eq!(snapshot.carried, 1);
    assert_eq!(snapshot.removed, 7);
    assert_eq!(snapshot.removed_by_event["instance-started"], 1);
    assert_eq!(snapshot.removed_by_event["instance-exited"], 1);
    assert_eq!(snapshot.removed_by_event["promotion-needs-approval"], 5);
    assert_eq!(snapshot.first_at_us, Some(0));
    assert_eq!(snapshot.last_at_us, Some(5 * HOUR_US));
    let kept = seqs(&l);
    assert_eq!(kept[0], 1, "web-2's start is carried: {kept:?}");
    assert_eq!(kept[1], 8);
    assert_eq!(kept.len(), 1 + (next - 8) as usize);
    assert_eq!(l.next_seq(), next);
    assert!(!l.due(KEEP_A_DAY, 30 * HOUR_US).unwrap());
    assert_eq!(l.compact(KEEP_A_DAY, 30 * HOUR_US).unwrap(), None);

    // Reopened, the snapshot and the numbering are the same.
    drop(l);
    let l = Ledger::open(&path).unwrap();
    assert_eq!(l.snapshot().unwrap(), snapshot);
    assert_eq!(l.next_seq(), next);
    assert_eq!(
        l.append(&node(), 31 * HOUR_US, &[exited("web-2"), filler(99)])
            .unwrap(),
        next..next + 2
    );

    // Much later, web-2's exit is compacted too, and its start goes with it; web-3 runs on,
    // so its start stays. The summary adds up over both compactions.
    let later = l
        .compact(KEEP_A_DAY, 60 * HOUR_US)
        .unwrap()
        .expect("compacted");
    assert_eq!(later.compactions, 2);
    assert_eq!(later.carried, 1);
    assert_eq!(later.removed_by_event["instance-started"], 2);
    assert_eq!(later.removed_by_event["instance-exited"], 2);
    assert_eq!(
        seqs(&l),
        [next - 1, next + 1],
        "web-3's start and the newest"
    );
    assert_eq!(l.next_seq(), next + 2);
}

#[test]
fn the_newest_record_is_never_compacted_so_numbers_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let l = Ledger::open(&path).unwrap();
    l.append(&node(), 0, &[filler(0), filler(1), filler(2)])
        .unwrap();
    let s = l
        .compact(KEEP_A_DAY, 100 * HOUR_US)
        .unwrap()
        .expect("compacted");
    assert_eq!(s.removed, 2);
    assert_eq!(seqs(&l), [2]);
    drop(l);
    let l = Ledger::open(&path).unwrap();
    assert_eq!(l.next_seq(), 3);
    assert_eq!(l.append(&node(), 1, &[filler(3)]).unwrap(), 3..4);
}

#[test]
fn past_the_size_bound_the_oldest_go_until_three_quarters_remain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let l = Ledger::open(&path).unwrap();
    for batch in 0..100 {
        let events: Vec<Event> = (0..100).map(|i| filler(batch * 100 + i)).collect();
        l.append(&node(), batch, &events).unwrap();
    }
    let full = l.bytes().unwrap();
    let bound = Retention {
        max_age_us: 365 * 24 * HOUR_US,
        max_bytes: full / 2,
    };
    assert!(l.due(bound, 100).unwrap());
    let size_before = std::fs::metadata(&path).unwrap().len();
    let s = l.compact(bound, 100).unwrap().expect("compacted");
    let left = l.bytes().unwrap();
    assert!(left <= full / 2 / 4 * 3, "{left} bytes left of {full}");
    assert!(
        left > full / 2 / 4 * 3 - 1000,
        "no more than needed went: {left}"
    );
    let kept = seqs(&l);
    assert_eq!(
        kept.first().copied(),
        Some(s.through_seq),
        "the oldest went"
    );
    assert_eq!(kept.last().copied(), Some(9_999));
    assert_eq!(s.removed, 10_000 - kept.len() as u64);
    assert!(
        std::fs::metadata(&path).unwrap().len() < size_before,
        "the file gave its space back"
    );
    assert!(!l.due(bound, 100).unwrap());
}

/// A ledger written before retention (no byte count) gets one when opened.
#[test]
fn a_ledger_without_a_byte_count_is_counted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let l = Ledger::open(&path).unwrap();
    l.append(&node(), 0, &[filler(0), filler(1)]).unwrap();
    let counted = l.bytes().unwrap();
    assert!(counted > 0);
    drop(l);
    {
        // Take the count away, as an older qs left the file.
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(redb::TableDefinition::<&str, u64>::new("ledger-meta"))
            .unwrap();
        tx.commit().unwrap();
    }
    let l = Ledger::open(&path).unwrap();
    assert_eq!(l.bytes().unwrap(), counted);
}
