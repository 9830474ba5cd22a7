//! Tiering (seed 003): a model whose largest tier the GPU cannot hold beside the runtimes
//! busy there starts at its largest smaller tier that fits, with no swap; an idle runtime
//! makes way for the largest; one below its largest moves back up once room returns, at
//! its first lull.

use super::*;

/// A model with tiers of `tiers_gib` GiB (largest first).
fn tiered(n: &str, tiers_gib: &[u64], slots: u32) -> ModelProfile {
    ModelProfile {
        tiers_vram_bytes: tiers_gib.iter().map(|g| g * GIB).collect(),
        ..profile(n, 0, slots)
    }
}

/// The tier each start of `model` asked for.
fn started_tiers(rig: &Rig, model: &str) -> Vec<usize> {
    rig.out
        .iter()
        .filter_map(|o| match o {
            GpuOutput::Start { model: m, tier, .. } if m.as_str() == model => Some(*tier),
            _ => None,
        })
        .collect()
}

/// Reasoning (a 14 GiB tier, then a 6 GiB one) beside vision (12 GiB): 22.5 GiB usable.
fn reasoning_and_vision() -> Vec<ModelProfile> {
    vec![
        tiered("reasoning", &[14, 6], 4),
        profile("vision", 12 * GIB, 4),
    ]
}

/// Vision busy, reasoning started beside it at 6 GiB and serving: the ids of their requests.
fn reasoning_small_beside_vision(rig: &mut Rig) -> (RequestId, RequestId) {
    let v = rig.ask("vision", Class::Interactive);
    rig.warm("vision");
    let r = rig.ask("reasoning", Class::Interactive);
    rig.warm("reasoning");
    assert!(rig.routed(r));
    assert_eq!(rig.s.tier(&name("reasoning")), Some(1));
    (v, r)
}

#[test]
fn a_model_wanted_beside_a_busy_one_starts_at_the_largest_tier_that_fits_without_a_swap() {
    for policy in PolicyKind::ALL {
        let mut rig = Rig::new(reasoning_and_vision(), policy);
        let v = rig.ask("vision", Class::Interactive);
        rig.warm("vision");
        assert!(rig.routed(v));
        // Vision is busy: reasoning's 14 GiB does not fit beside it, its 6 GiB does.
        let r = rig.ask("reasoning", Class::Interactive);
        assert_eq!(
            started_tiers(&rig, "reasoning"),
            vec![1],
            "{}",
            policy.name()
        );
        assert!(!rig.stopped("vision"), "{}: no swap", policy.name());
        assert_eq!(rig.s.resident_bytes(), 18 * GIB);
        rig.warm("reasoning");
        assert!(rig.routed(r), "{}", policy.name());
        let swap = rig.out.iter().find_map(|o| match o {
            GpuOutput::Event(GpuEvent::SwapBegun {
                to, tier, evict, ..
            }) if to.as_str() == "reasoning" => Some((*tier, evict.clone())),
            _ => None,
        });
        assert_eq!(swap, Some((1, vec![])), "{}", policy.name());
    }
}

#[test]
fn a_model_the_policy_keeps_waiting_starts_smaller_at_once_and_moves_up_when_the_other_idles() {
    let mut rig = Rig::new(reasoning_and_vision(), PolicyKind::TippingPoint);
    let v = rig.ask("vision", Class::Interactive);
    rig.warm("vision");
    rig.at(1_000).feed(GpuInput::Finished { id: v });
    // Vision is idle but worth keeping (its momentum): reasoning does not wait for a swap,
    // it starts at 6 GiB beside it.
    rig.at(2_000);
    let r = rig.ask("reasoning", Class::Interactive);
    assert_eq!(started_tiers(&rig, "reasoning"), vec![1]);
    assert!(!rig.stopped("vision"));
    rig.at(12_000).warm("reasoning");
    assert!(rig.routed(r));
    rig.at(13_000).feed(GpuInput::Finished { id: r });

    // Vision idle past idle_room_ms (5 minutes) is room: both go, reasoning comes at 14.
    assert!(rig.s.poll_timeout() <= Some(Time::from_millis(301_000)));
    rig.at(300_500);
    assert!(!rig.stopped("vision"), "not before it has idled 5 minutes");
    rig.at(301_000);
    assert!(rig.stopped("vision") && rig.stopped("reasoning"));
    for m in ["vision", "reasoning"] {
        rig.feed(GpuInput::Stopped { model: name(m) });
    }
    rig.feed(GpuInput::VramFree {
        free_bytes: 22 * GIB,
    });
    assert_eq!(started_tiers(&rig, "reasoning"), vec![1, 0]);
}

#[test]
fn a_smaller_tier_moves_back_up_once_room_returns_at_its_first_lull() {
    let mut rig = Rig::new(reasoning_and_vision(), PolicyKind::TippingPoint);
    let (v, r) = reasoning_small_beside_vision(&mut rig);

    // Room returns: vision is withdrawn and gone. Reasoning still serves a request: it
    // does not move while that is in flight.
    rig.feed(GpuInput::Finished { id: v });
    let now = rig.now;
    rig.s.withdraw(&name("vision"), now);
    rig.collect();
    rig.feed(GpuInput::Stopped {
        model: name("vision"),
    });
    assert!(!rig.stopped("reasoning"), "nothing is cut to move up");
    assert_eq!(started_tiers(&rig, "reasoning"), vec![1]);

    // A pause shorter than a load time is no lull: the next request is served at 6 GiB.
    rig.at(5_000).feed(GpuInput::Finished { id: r });
    assert!(!rig.stopped("reasoning"));
    rig.at(9_000);
    let soon = rig.ask("reasoning", Class::Interactive);
    assert!(rig.routed(soon) && !rig.stopped("reasoning"));
    rig.at(10_000).feed(GpuInput::Finished { id: soon });
    // A lull of a load time (learned: 7 s, the assumed 10 s pulled towards the first load,
    // which took no time here): drained (nothing to cut), stopped, the VRAM seen free,
    // started at 14 GiB; the scheduler asks to be woken for it.
    assert_eq!(rig.s.poll_timeout(), Some(Time::from_millis(17_000)));
    rig.at(16_999);
    assert!(!rig.stopped("reasoning"));
    rig.at(17_000);
    assert!(rig.stopped("reasoning"));
    let during = rig.ask("reasoning", Class::Interactive);
    assert!(!rig.routed(during), "it waits for the larger tier");
    rig.feed(GpuInput::Stopped {
        model: name("reasoning"),
    });
    rig.feed(GpuInput::VramFree {
        free_bytes: 22 * GIB,
    });
    assert_eq!(started_tiers(&rig, "reasoning"), vec![1, 0]);
    assert_eq!(rig.s.resident_bytes(), 14 * GIB);
    rig.at(30_000).warm("reasoning");
    assert!(rig.routed(during), "served by the larger tier");
    assert_eq!(rig.s.tier(&name("reasoning")), Some(0));
    assert!(
        !rig.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Refuse { .. })),
        "nothing refused: {:?}",
        rig.out
    );
}

#[test]
fn a_larger_tier_that_fails_to_start_gives_way_to_the_tier_it_ran_at() {
    let mut rig = Rig::new(reasoning_and_vision(), PolicyKind::TippingPoint);
    let (v, r) = reasoning_small_beside_vision(&mut rig);
    rig.feed(GpuInput::Finished { id: v });
    let now = rig.now;
    rig.s.withdraw(&name("vision"), now);
    rig.collect();
    rig.feed(GpuInput::Stopped {
        model: name("vision"),
    });
    rig.at(1_000).feed(GpuInput::Finished { id: r });
    rig.at(11_000);
    rig.feed(GpuInput::Stopped {
        model: name("reasoning"),
    });
    rig.feed(GpuInput::VramFree {
        free_bytes: 22 * GIB,
    });
    assert_eq!(started_tiers(&rig, "reasoning"), vec![1, 0]);
    // The 14 GiB start fails (out of memory, say): back to 6 GiB, and no move up again.
    let asked = rig.ask("reasoning", Class::Interactive);
    rig.feed(GpuInput::LoadFailed {
        model: name("reasoning"),
    });
    rig.feed(GpuInput::VramFree {
        free_bytes: 22 * GIB,
    });
    assert_eq!(started_tiers(&rig, "reasoning"), vec![1, 0, 1]);
    rig.at(20_000).warm("reasoning");
    assert!(rig.routed(asked));
    rig.at(21_000).feed(GpuInput::Finished { id: asked });
    rig.at(600_000);
    assert_eq!(started_tiers(&rig, "reasoning"), vec![1, 0, 1]);
    assert!(
        !rig.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Refuse { .. })),
        "nothing refused: {:?}",
        rig.out
    );
}

#[test]
fn a_smaller_tier_stays_while_the_runtime_beside_it_was_used_lately() {
    let mut rig = Rig::new(reasoning_and_vision(), PolicyKind::TippingPoint);
    let v = rig.ask("vision", Class::Interactive);
    rig.warm("vision");
    let r = rig.ask("reasoning", Class::Interactive);
    rig.warm("reasoning");
    rig.at(1_000).feed(GpuInput::Finished { id: r });
    rig.feed(GpuInput::Finished { id: v });
    // Both idle, both resident: moving up would take the room of vision, used within
    // idle_room_ms, so nothing moves.
    rig.at(200_000);
    assert_eq!(started_tiers(&rig, "reasoning"), vec![1]);
    assert!(!rig.stopped("reasoning") && !rig.stopped("vision"));
}

#[test]
fn a_model_whose_smallest_tier_cannot_fit_is_refused_and_one_whose_smallest_can_is_not() {
    let mut rig = Rig::new(
        vec![tiered("huge", &[40, 30], 4), tiered("fits", &[40, 20], 4)],
        PolicyKind::TippingPoint,
    );
    let h = rig.ask("huge", Class::Interactive);
    assert!(rig.out.iter().any(
        |o| matches!(o, GpuOutput::Refuse { id, reason, .. } if *id == h && reason.contains("does not fit"))
    ));
    let f = rig.ask("fits", Class::Interactive);
    assert_eq!(started_tiers(&rig, "fits"), vec![1]);
    rig.warm("fits");
    assert!(rig.routed(f));
}
