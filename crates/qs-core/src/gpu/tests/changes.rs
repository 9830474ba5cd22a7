//! The scheduler's rules when what it serves changes under it: models declared and
//! withdrawn, the resident model's margin, durable stasis, leases and their revocation,
//! requests whose clients went away, VRAM that is never released.

use super::*;

#[test]
fn a_model_declared_later_is_served_and_a_withdrawn_one_drains_before_its_vram_is_free() {
    let mut rig = Rig::new(vec![profile("code", 19 * GIB, 4)], PolicyKind::TippingPoint);
    let early = rig.ask("conv", Class::Interactive);
    assert!(rig.out.iter().any(
        |o| matches!(o, GpuOutput::Refuse { id, reason, .. } if *id == early && reason.contains("no such model"))
    ));
    rig.s.declare(profile("conv", 17 * GIB / 2, 4));
    let c = rig.ask("conv", Class::Interactive);
    rig.warm("conv");
    assert!(rig.routed(c));
    let waiting = rig.ask("conv", Class::Interactive);
    let waiting2 = rig.ask("conv", Class::Interactive);
    let waiting3 = rig.ask("conv", Class::Interactive);
    let queued = rig.ask("conv", Class::Interactive);
    assert!(!rig.routed(queued), "four slots, all taken");

    // Withdrawn: what waits is refused, what is in flight finishes, then it stops.
    let now = rig.now;
    rig.s.withdraw(&name("conv"), now);
    rig.collect();
    assert!(rig.out.iter().any(
        |o| matches!(o, GpuOutput::Refuse { id, reason, .. } if *id == queued && reason.contains("withdrawn"))
    ));
    assert_eq!(rig.s.models().count(), 1, "only code is offered");
    assert!(!rig.stopped("conv"));
    for id in [c, waiting, waiting2, waiting3] {
        rig.feed(GpuInput::Finished { id });
    }
    assert!(rig.stopped("conv"));
    // Its VRAM counts until it has exited.
    assert_eq!(rig.s.resident_bytes(), 17 * GIB / 2);
    rig.feed(GpuInput::Stopped {
        model: name("conv"),
    });
    assert_eq!(rig.s.resident_bytes(), 0);
    let late = rig.ask("conv", Class::Interactive);
    assert!(!rig.routed(late) && rig.started("conv") == 1);
}

#[test]
fn a_resident_model_in_the_margin_is_not_counted_twice_and_the_rest_of_the_margin_is_kept() {
    // 24 GiB, 1.5 GiB reserved; a 1 GiB resident model holds part of the margin, so the
    // driver reads 23 GiB free with nothing else loaded.
    let mut rig = Rig::new(vec![profile("big", 22 * GIB, 4)], PolicyKind::TippingPoint);
    rig.s.hold_margin(GIB);
    rig.s.declare(profile("other", 5 * GIB, 4));
    let o = rig.ask("other", Class::Interactive);
    rig.warm("other");
    assert!(rig.routed(o));
    rig.feed(GpuInput::Finished { id: o });
    let _b = rig.ask("big", Class::Interactive);
    rig.at(60_000);
    assert!(rig.stopped("other"));
    rig.feed(GpuInput::Stopped {
        model: name("other"),
    });
    // 22 GiB of 23 free, with the margin's other half GiB kept: room.
    rig.feed(GpuInput::VramFree {
        free_bytes: 23 * GIB,
    });
    assert_eq!(rig.started("big"), 1);
    // Without the resident's hold, the same reading would leave no room for it.
    let mut bare = Rig::new(vec![profile("big", 22 * GIB, 4)], PolicyKind::TippingPoint);
    bare.s.declare(profile("other", 5 * GIB, 4));
    let o = bare.ask("other", Class::Interactive);
    bare.warm("other");
    bare.feed(GpuInput::Finished { id: o });
    let _b = bare.ask("big", Class::Interactive);
    bare.at(60_000);
    bare.feed(GpuInput::Stopped {
        model: name("other"),
    });
    bare.feed(GpuInput::VramFree {
        free_bytes: 22 * GIB,
    });
    assert_eq!(bare.started("big"), 0, "the margin is not taken");
}

#[test]
fn a_long_wait_is_recorded_once_and_its_end_too() {
    let config = GpuConfig {
        durable_after_ms: 1_000,
        ..GpuConfig::default()
    };
    let mut rig = Rig::with_config(config, pair(), PolicyKind::TippingPoint);
    let recorded = |rig: &Rig| {
        rig.out
            .iter()
            .filter(|o| matches!(o, GpuOutput::Event(GpuEvent::StasisRecorded { .. })))
            .count()
    };
    let id = rig.ask("conv", Class::Interactive);
    assert_eq!(
        rig.s.poll_timeout(),
        Some(Time::from_millis(1_000)),
        "time alone records it"
    );
    rig.at(999);
    assert_eq!(recorded(&rig), 0);
    rig.at(1_000);
    assert!(
        rig.out
            .contains(&GpuOutput::Event(GpuEvent::StasisRecorded {
                model: name("conv"),
                class: Class::Interactive,
                waiting: 1,
            }))
    );
    rig.at(5_000);
    assert_eq!(recorded(&rig), 1, "once per wait");
    rig.warm("conv");
    assert!(rig.routed(id));
    assert!(rig.out.contains(&GpuOutput::Event(GpuEvent::StasisEnded {
        model: name("conv")
    })));
}

impl Rig {
    /// A request for `model` placed here by node `holder`, under its lease.
    fn ask_leased(&mut self, model: &str, holder: &str) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.feed(GpuInput::Arrive(Request {
            id,
            model: name(model),
            class: Class::Batch,
            context_tokens: 1000,
            lease: Some(qs_wire::NodeId::new(holder).unwrap()),
        }));
        id
    }
}

#[test]
fn local_interactive_use_revokes_a_lease_within_its_bound_and_the_leased_work_waits() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    let l1 = rig.ask_leased("code", "peer");
    rig.warm("code");
    let l2 = rig.ask_leased("code", "peer");
    assert!(rig.routed(l1) && rig.routed(l2));
    rig.at(1_000);
    let local = rig.ask("conv", Class::Interactive);
    assert!(rig.out.iter().any(|o| matches!(
        o,
        GpuOutput::Event(GpuEvent::LeaseRevoked { model, by }) if model.as_str() == "code" && by.as_str() == "conv"
    )));
    // More leased work for code waits; nothing is stopped before the bound.
    let l3 = rig.ask_leased("code", "peer");
    rig.at(1_999);
    assert!(!rig.stopped("code"));
    rig.at(2_000);
    assert!(rig.stopped("code"), "the GPU taken back within a second");
    for id in [l1, l2] {
        assert!(rig.out.iter().any(|o| matches!(
            o,
            GpuOutput::Refuse { id: r, reason, .. } if *r == id && reason.starts_with("lease revoked")
        )));
    }
    rig.feed(GpuInput::Stopped {
        model: name("code"),
    });
    rig.feed(GpuInput::VramFree {
        free_bytes: 24 * GIB,
    });
    rig.at(3_000).warm("conv");
    assert!(rig.routed(local));
    assert!(
        !rig.routed(l3),
        "the lease is restored when the GPU is free, not before"
    );
    assert_eq!(rig.s.waiting(), 1);
}

#[test]
fn a_runtime_with_local_work_is_not_revoked() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    let own = rig.ask("code", Class::Batch);
    rig.warm("code");
    let _leased = rig.ask_leased("code", "peer");
    assert!(rig.routed(own));
    rig.at(1_000);
    let _local = rig.ask("conv", Class::Interactive);
    assert!(
        !rig.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Event(GpuEvent::LeaseRevoked { .. })))
    );
}

#[test]
fn a_request_whose_client_went_away_is_swept_and_makes_no_swap() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    let c = rig.ask("code", Class::Batch);
    rig.warm("code");
    assert!(rig.routed(c));
    let gone = rig.ask("conv", Class::Batch);
    rig.feed(GpuInput::Cancel { id: gone });
    assert_eq!(rig.s.waiting(), 0);
    rig.feed(GpuInput::Finished { id: c });
    rig.at(600_000);
    assert!(!rig.stopped("code"), "no swap for nobody");
}

#[test]
fn vram_that_is_never_released_ends_the_swap_with_the_reason_instead_of_a_wait_for_good() {
    let mut rig = Rig::new(pair(), PolicyKind::LlamaSwap);
    let c = rig.ask("code", Class::Batch);
    rig.warm("code");
    rig.feed(GpuInput::Finished { id: c });
    let v = rig.ask("conv", Class::Interactive);
    assert!(rig.stopped("code"));
    rig.feed(GpuInput::Stopped {
        model: name("code"),
    });
    // Something else holds the GPU: the readings never show room.
    for ms in [100, 10_000, 29_999] {
        rig.at(ms).feed(GpuInput::VramFree { free_bytes: GIB });
    }
    assert!(
        !rig.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Refuse { id, .. } if *id == v))
    );
    rig.at(30_000).feed(GpuInput::VramFree { free_bytes: GIB });
    assert!(rig.out.iter().any(|o| matches!(
        o,
        GpuOutput::Refuse { id, reason, .. } if *id == v && reason.contains("not released")
    )));
    assert!(rig.out.iter().any(|o| matches!(
        o,
        GpuOutput::Event(GpuEvent::VramNotReleased { to, .. }) if to.as_str() == "conv"
    )));
    assert_eq!(rig.started("conv"), 0);
}

#[test]
fn an_idle_runtime_is_no_lease_to_revoke() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    let c = rig.ask("code", Class::Batch);
    rig.warm("code");
    rig.feed(GpuInput::Finished { id: c });
    rig.at(1_000);
    let _local = rig.ask("conv", Class::Interactive);
    assert!(
        !rig.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Event(GpuEvent::LeaseRevoked { .. })))
    );
}

#[test]
fn a_swept_request_leaves_the_commitment_it_was_part_of() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    // conv comes in committed to x; x's client goes away before conv is warm.
    let x = rig.ask("conv", Class::Interactive);
    assert_eq!(rig.started("conv"), 1);
    rig.feed(GpuInput::Cancel { id: x });
    rig.warm("conv");
    assert!(!rig.routed(x));
    // Batch work for code then waits past its bound: conv, owing nobody, goes.
    let _b = rig.ask("code", Class::Batch);
    rig.at(200_000);
    assert!(
        rig.stopped("conv"),
        "no commitment to a request that is gone"
    );
}

#[test]
fn a_load_past_four_learned_load_times_is_killed_and_counted_as_a_failed_start() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    let _r = rig.ask("conv", Class::Interactive);
    assert_eq!(rig.started("conv"), 1);
    // Its profile assumes 10 s: the bound is 40 s, and time alone brings it.
    assert_eq!(rig.s.poll_timeout(), Some(Time::from_millis(5_000)));
    rig.at(39_999);
    assert!(!rig.stopped("conv"));
    rig.at(40_000);
    assert!(rig.out.contains(&GpuOutput::Event(GpuEvent::LoadTimedOut {
        model: name("conv"),
        bound_ms: 40_000,
    })));
    assert!(rig.out.contains(&GpuOutput::Stop {
        model: name("conv"),
        kill: true,
    }));
    assert!(rig.out.contains(&GpuOutput::Event(GpuEvent::LoadFailed {
        model: name("conv"),
        attempt: 1,
    })));
    // Started again only once the VRAM it held is seen free.
    assert_eq!(rig.started("conv"), 1);
    rig.feed(GpuInput::VramFree {
        free_bytes: 24 * GIB,
    });
    assert_eq!(rig.started("conv"), 2);
}

#[test]
fn the_waiting_work_of_a_lease_holder_that_left_is_refused() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    let c = rig.ask("code", Class::Batch);
    rig.warm("code");
    let waits = rig.ask_leased("conv", "peer");
    assert!(rig.routed(c) && !rig.routed(waits));
    let holders: Vec<String> = rig
        .s
        .lease_holders()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(holders, ["peer"]);
    rig.feed(GpuInput::HolderGone {
        holder: qs_wire::NodeId::new("peer").unwrap(),
    });
    assert!(rig.out.iter().any(|o| matches!(
        o,
        GpuOutput::Refuse { id, reason, .. } if *id == waits && reason.contains("left the fleet")
    )));
    assert_eq!(rig.s.waiting(), 0);
    assert!(rig.s.lease_holders().is_empty());
}

#[test]
fn the_running_leased_work_of_a_holder_that_left_is_cut_and_its_slot_freed() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    let theirs = rig.ask_leased("code", "peer");
    rig.warm("code");
    let other = rig.ask_leased("code", "other-peer");
    assert!(rig.routed(theirs) && rig.routed(other));
    let holders: Vec<String> = rig
        .s
        .lease_holders()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(holders, ["other-peer", "peer"], "running leases count");
    rig.feed(GpuInput::HolderGone {
        holder: qs_wire::NodeId::new("peer").unwrap(),
    });
    assert!(rig.out.iter().any(|o| matches!(
        o,
        GpuOutput::Refuse { id, reason, .. } if *id == theirs && reason.contains("left the fleet")
    )));
    assert!(
        !rig.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Refuse { id, .. } if *id == other)),
        "another holder's work runs on"
    );
    assert!(!rig.stopped("code"), "the runtime serves on");
    // Its slot is free: four more fit beside the other holder's one... three.
    let more: Vec<RequestId> = (0..3).map(|_| rig.ask("code", Class::Batch)).collect();
    assert!(more.iter().all(|id| rig.routed(*id)));
    // A late Finished of the cut request frees nothing twice.
    rig.feed(GpuInput::Finished { id: theirs });
    let queued = rig.ask("code", Class::Batch);
    assert!(!rig.routed(queued), "four slots, all taken");
}

#[test]
fn leased_work_cut_at_an_ordinary_drain_bound_is_said_cut_not_revoked() {
    let config = GpuConfig {
        drain_timeout_ms: 1_000,
        ..GpuConfig::default()
    };
    let mut rig = Rig::with_config(config, pair(), PolicyKind::LlamaSwap);
    let leased = rig.ask_leased("code", "peer");
    rig.warm("code");
    assert!(rig.routed(leased));
    // A batch request for conv (no local interactive use: no revocation) swaps code out;
    // its drain bound cuts the leased request still running.
    let _c = rig.ask("conv", Class::Batch);
    rig.at(1_000);
    let reason = rig
        .out
        .iter()
        .find_map(|o| match o {
            GpuOutput::Refuse { id, reason, .. } if *id == leased => Some(*reason),
            _ => None,
        })
        .unwrap();
    assert!(reason.starts_with("cut"), "{reason}");
}

#[test]
fn one_load_bound_holds_every_runtime_four_load_times_and_at_least_ten_seconds() {
    let config = GpuConfig::default();
    for (load_ms, bound_ms) in [
        (0, 10_000),
        (2_000, 10_000),
        (2_500, 10_000),
        (5_000, 20_000),
    ] {
        assert_eq!(config.load_bound_ms(load_ms), bound_ms, "{load_ms} ms");
    }
    assert_eq!(config.load_bound_ms(u64::MAX), u64::MAX, "no overflow");
}

#[test]
fn a_smaller_tier_beside_leased_work_does_not_keep_the_lease_from_being_revoked() {
    // Reasoning could run at 6 GiB beside the leased vision runtime; local interactive use
    // takes the GPU back for it whole all the same.
    let models = vec![
        ModelProfile {
            tiers_vram_bytes: vec![14 * GIB, 6 * GIB],
            ..profile("reasoning", 0, 4)
        },
        profile("vision", 12 * GIB, 4),
    ];
    let mut rig = Rig::new(models, PolicyKind::TippingPoint);
    let leased = rig.ask_leased("vision", "peer");
    rig.warm("vision");
    assert!(rig.routed(leased));
    let _mine = rig.ask("reasoning", Class::Interactive);
    assert!(rig.out.iter().any(|o| matches!(
        o,
        GpuOutput::Event(GpuEvent::LeaseRevoked { model, .. }) if model.as_str() == "vision"
    )));
    rig.at(1_000);
    assert!(rig.stopped("vision"), "revoked within its bound");
    rig.feed(GpuInput::Stopped {
        model: name("vision"),
    });
    rig.feed(GpuInput::VramFree {
        free_bytes: 22 * GIB,
    });
    let tiers: Vec<usize> = rig
        .out
        .iter()
        .filter_map(|o| match o {
            GpuOutput::Start { model, tier, .. } if model.as_str() == "reasoning" => Some(*tier),
            _ => None,
        })
        .collect();
    assert_eq!(tiers, [0], "its largest tier");
}
