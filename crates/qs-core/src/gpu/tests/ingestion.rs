//! Ingestion's bounded priority (seed 003): embedding and ingestion work ages, so it never
//! starves behind batch work, and it always yields to interactive requests; an ingestion
//! model that waits for the GPU comes in at the first lull of interactive work. And live
//! stasis by class: a flood of one class is refused at its own bound, and a full stasis
//! gives a request the place of the youngest of a lower class.

use super::*;

#[test]
fn ingestion_ages_past_younger_batch_work_and_always_yields_to_interactive() {
    let mut rig = Rig::new(vec![profile("embed", 2 * GIB, 1)], PolicyKind::TippingPoint);
    let a = rig.ask("embed", Class::Batch);
    rig.warm("embed");
    assert!(rig.routed(a));
    let ingest = rig.ask("embed", Class::Ingestion);
    rig.at(1_000);
    let b1 = rig.ask("embed", Class::Batch);
    // Batch goes before ingestion that has not aged.
    rig.at(2_000).feed(GpuInput::Finished { id: a });
    assert!(rig.routed(b1) && !rig.routed(ingest));
    // Interactive goes before both, younger as it is.
    let x = rig.ask("embed", Class::Interactive);
    let b2 = rig.ask("embed", Class::Batch);
    rig.at(3_000).feed(GpuInput::Finished { id: b1 });
    assert!(rig.routed(x) && !rig.routed(ingest) && !rig.routed(b2));
    // Aged past AGING_MS, ingestion goes before the younger batch request...
    rig.at(31_000);
    let x2 = rig.ask("embed", Class::Interactive);
    rig.feed(GpuInput::Finished { id: x });
    // ... but still after an interactive one.
    assert!(rig.routed(x2) && !rig.routed(ingest));
    rig.at(32_000).feed(GpuInput::Finished { id: x2 });
    assert!(rig.routed(ingest), "aged ingestion before younger batch");
    assert!(!rig.routed(b2));
    rig.at(33_000).feed(GpuInput::Finished { id: ingest });
    assert!(
        rig.routed(b2),
        "and the batch request after it: nothing starves"
    );
}

#[test]
fn an_ingestion_model_yields_to_interactive_work_and_comes_in_at_its_first_lull() {
    let models = vec![
        profile("chat", 19 * GIB, 1),
        profile("embed", 17 * GIB / 2, 1),
    ];
    let mut rig = Rig::new(models, PolicyKind::TippingPoint);
    let mut running = rig.ask("chat", Class::Interactive);
    rig.warm("chat");
    let e = rig.ask("embed", Class::Ingestion);
    // Interactive requests keep waiting for chat, well past the 8 load times ingestion may
    // wait: the embedding model does not come in.
    let mut waiting = std::collections::VecDeque::new();
    for s in 1..=120u64 {
        rig.at(s * 1_000);
        waiting.push_back(rig.ask("chat", Class::Interactive));
        waiting.push_back(rig.ask("chat", Class::Interactive));
        rig.feed(GpuInput::Finished { id: running });
        running = waiting.pop_front().unwrap();
        assert!(rig.routed(running));
    }
    assert!(!rig.stopped("chat") && rig.started("embed") == 0);
    // The first lull: chat's queue empties, and the embedding model comes in at once.
    let mut t = 121_000;
    while let Some(next) = waiting.pop_front() {
        rig.at(t).feed(GpuInput::Finished { id: running });
        running = next;
        t += 10;
    }
    rig.at(t).feed(GpuInput::Finished { id: running });
    rig.at(t + RECONSIDER_MS);
    assert!(
        rig.stopped("chat"),
        "the embedding model's swap began at the lull"
    );
    rig.feed(GpuInput::Stopped {
        model: name("chat"),
    });
    rig.feed(GpuInput::VramFree {
        free_bytes: 22 * GIB,
    });
    assert_eq!(rig.started("embed"), 1);
    rig.warm("embed");
    assert!(rig.routed(e));
}

fn bounded(max_waiting: usize, by_class: [usize; 3]) -> Rig {
    let config = GpuConfig {
        max_waiting,
        max_waiting_by_class: by_class,
        ..GpuConfig::default()
    };
    // Loading, so that everything waits.
    let mut rig = Rig::with_config(
        config,
        vec![profile("embed", 2 * GIB, 1)],
        PolicyKind::TippingPoint,
    );
    let _first = rig.ask("embed", Class::Interactive);
    rig
}

fn refused(rig: &Rig, id: RequestId) -> Option<&'static str> {
    rig.out.iter().find_map(|o| match o {
        GpuOutput::Refuse {
            id: r,
            reason,
            retry_after_ms,
        } if *r == id => {
            assert!(*retry_after_ms >= 1000, "a 429 says when to try again");
            Some(*reason)
        }
        _ => None,
    })
}

#[test]
fn a_flood_of_one_class_is_refused_at_its_own_bound_and_the_others_still_wait() {
    let mut rig = bounded(10, [10, 10, 3]);
    let flood: Vec<RequestId> = (0..4).map(|_| rig.ask("embed", Class::Ingestion)).collect();
    assert_eq!(refused(&rig, flood[2]), None);
    assert_eq!(
        refused(&rig, flood[3]),
        Some("too many requests of its class waiting")
    );
    let b = rig.ask("embed", Class::Batch);
    let x = rig.ask("embed", Class::Interactive);
    assert_eq!(refused(&rig, b), None);
    assert_eq!(refused(&rig, x), None);
    assert_eq!(rig.s.waiting(), 6);
}

#[test]
fn a_full_stasis_gives_a_request_the_place_of_the_youngest_of_a_lower_class() {
    // The first interactive request and two batch ones fill it.
    let mut rig = bounded(3, [3, 3, 3]);
    let b1 = rig.ask("embed", Class::Batch);
    let b2 = rig.ask("embed", Class::Batch);
    let x = rig.ask("embed", Class::Interactive);
    assert_eq!(refused(&rig, x), None, "it took a place");
    assert_eq!(
        refused(&rig, b2),
        Some("too many requests waiting: its place went to one of a higher class")
    );
    assert_eq!(refused(&rig, b1), None, "the youngest goes first");
    // Nothing below ingestion: it is the one refused.
    let g = rig.ask("embed", Class::Ingestion);
    assert_eq!(refused(&rig, g), Some("too many requests waiting"));
    // A batch request takes no interactive one's place.
    let b3 = rig.ask("embed", Class::Batch);
    assert_eq!(refused(&rig, b3), Some("too many requests waiting"));
    assert_eq!(rig.s.waiting(), 3);
}
