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
    assert_eq!(l.snapshot(), snapshot);
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
    let full = l.bytes();
    let bound = Retention {
        max_age_us: 365 * 24 * HOUR_US,
        max_bytes: full / 2,
    };
    assert!(l.due(bound, 100).unwrap());
    let s = l.compact(bound, 100).unwrap().expect("compacted");
    let left = l.bytes();
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
    assert!(!l.due(bound, 100).unwrap());

    // Filled up again to where it was: the file reuses the pages compaction freed.
    let size_full = std::fs::metadata(&path).unwrap().len();
    let mut i = 10_000;
    while l.bytes() < full {
        let events: Vec<Event> = (0..100).map(|k| filler(i + k)).collect();
        l.append(&node(), 200, &events).unwrap();
        i += 100;
    }
    let size_again = std::fs::metadata(&path).unwrap().len();
    assert!(
        size_again <= size_full + size_full / 4,
        "the file grew from {size_full} to {size_again} bytes for as many records"
    );
    // The count in the file is the count in memory.
    drop(l);
    let l = Ledger::open(&path).unwrap();
    assert!(l.bytes().abs_diff(full) < 20_000, "{} vs {full}", l.bytes());
}

/// A file opened much larger than its records (the bound was lowered, say) is shrunk.
#[test]
fn a_sparse_file_is_shrunk_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let l = Ledger::open(&path).unwrap();
    for batch in 0..200 {
        let events: Vec<Event> = (0..1000).map(|i| filler(batch * 1000 + i)).collect();
        l.append(&node(), batch, &events).unwrap();
    }
    let bound = Retention {
        max_age_us: 365 * 24 * HOUR_US,
        max_bytes: 1 << 20,
    };
    l.compact(bound, 200).unwrap().expect("compacted");
    assert!(l.bytes() <= 1 << 20);
    let next = l.next_seq();
    drop(l);
    let before = std::fs::metadata(&path).unwrap().len();
    assert!(before > 20 << 20, "{before}");
    let l = Ledger::open(&path).unwrap();
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(after < before / 2, "{before} -> {after} bytes");
    assert_eq!(l.next_seq(), next);
    assert_eq!(l.read(next - 1, 1).unwrap()[0].seq, next - 1);
}

/// A ledger written before retention (no byte count) gets one when opened.
#[test]
fn a_ledger_without_a_byte_count_is_counted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let l = Ledger::open(&path).unwrap();
    l.append(&node(), 0, &[filler(0), filler(1)]).unwrap();
    let counted = l.bytes();
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
    assert_eq!(l.bytes(), counted);
}

/// What is carried counts towards the bound: the size compaction takes enough else.
#[test]
fn carried_records_count_towards_the_size_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let l = Ledger::open(&path).unwrap();
    for i in 0..300u64 {
        l.append(&node(), i, &[started(&format!("web-{i}"))])
            .unwrap();
        let events: Vec<Event> = (0..10).map(|k| filler(i * 10 + k)).collect();
        l.append(&node(), i, &events).unwrap();
    }
    let full = l.bytes();
    let bound = Retention {
        max_age_us: 365 * 24 * HOUR_US,
        max_bytes: full / 2,
    };
    let s = l.compact(bound, 300).unwrap().expect("compacted");
    assert!(l.bytes() <= full / 2 / 4 * 3, "{} of {full}", l.bytes());
    let starts = l
        .read(0, 10_000)
        .unwrap()
        .iter()
        .filter(|r| matches!(r.event, Event::InstanceStarted { .. }))
        .count();
    assert_eq!(starts, 300, "every running instance's start stays");
    assert_eq!(s.carried, s.through_seq.div_ceil(11).min(300));
}

/// A record that does not parse (damaged, or written by a newer qs) does not stop
/// compaction: it goes, counted as unreadable.
#[test]
fn an_unreadable_record_is_compacted_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let l = Ledger::open(&path).unwrap();
    for i in 0..10 {
        l.append(&node(), i, &[filler(i)]).unwrap();
    }
    drop(l);
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("ledger"))
                .unwrap();
            t.insert(3, b"{\"not\": \"a record\"}".as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let l = Ledger::open(&path).unwrap();
    let s = l
        .compact(KEEP_A_DAY, 100 * HOUR_US)
        .unwrap()
        .expect("compacted");
    assert_eq!(s.removed, 9);
    assert_eq!(s.removed_by_event["unreadable"], 1);
    assert_eq!(seqs(&l), [9]);
}
