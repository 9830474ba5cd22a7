//! The GPU scheduler's rules, each on a scripted scenario: exclusivity, drain before stop,
//! VRAM seen free before a start, co-residence, commitment, bounded stasis, the watchdog.

use super::*;
use crate::Time;

const GIB: u64 = 1 << 30;

fn name(s: &str) -> ModelName {
    ModelName::new(s).unwrap()
}

fn profile(n: &str, vram_bytes: u64, slots: u32) -> ModelProfile {
    ModelProfile {
        name: name(n),
        tiers_vram_bytes: vec![vram_bytes],
        discipline: Discipline::Parallel {
            max_concurrency: slots,
        },
        inertia_bias_ms: 0,
        load_ms: 10_000,
    }
}

/// A scheduler, a clock, and every output so far.
struct Rig {
    s: GpuScheduler,
    now: Time,
    out: Vec<GpuOutput>,
    next_id: u64,
}

impl Rig {
    fn new(models: Vec<ModelProfile>, policy: PolicyKind) -> Rig {
        Rig::with_config(GpuConfig::default(), models, policy)
    }

    fn with_config(config: GpuConfig, models: Vec<ModelProfile>, policy: PolicyKind) -> Rig {
        Rig {
            s: GpuScheduler::new(config, models, policy.build()),
            now: Time::ZERO,
            out: Vec::new(),
            next_id: 0,
        }
    }

    fn at(&mut self, ms: u64) -> &mut Rig {
        self.now = Time::from_millis(ms);
        self.s.tick(self.now);
        self.collect();
        self
    }

    fn feed(&mut self, input: GpuInput) -> &mut Rig {
        self.s.handle(input, self.now);
        self.collect();
        self
    }

    fn collect(&mut self) {
        while let Some(o) = self.s.poll() {
            self.out.push(o);
        }
    }

    /// A request for `model`; its id.
    fn ask(&mut self, model: &str, class: Class) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.feed(GpuInput::Arrive(Request {
            id,
            model: name(model),
            class,
            context_tokens: 1000,
            lease: None,
        }));
        id
    }

    fn routed(&self, id: RequestId) -> bool {
        self.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Route { id: r, .. } if *r == id))
    }

    fn started(&self, model: &str) -> usize {
        self.out
            .iter()
            .filter(|o| matches!(o, GpuOutput::Start { model: m, .. } if m.as_str() == model))
            .count()
    }

    fn stopped(&self, model: &str) -> bool {
        self.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Stop { model: m, .. } if m.as_str() == model))
    }

    fn position(&self, want: impl Fn(&GpuOutput) -> bool) -> Option<usize> {
        self.out.iter().position(want)
    }

    /// `model` loaded and warm.
    fn warm(&mut self, model: &str) -> &mut Rig {
        self.feed(GpuInput::Loaded { model: name(model) })
    }
}

/// The exclusive pair of the benchmark: they never fit together on 24 GB less 1.5 GB.
fn pair() -> Vec<ModelProfile> {
    vec![
        profile("code", 19 * GIB, 4),
        profile("conv", 17 * GIB / 2, 4),
    ]
}

#[test]
fn a_swap_drains_then_stops_then_waits_for_the_vram_before_it_starts() {
    let mut rig = Rig::new(pair(), PolicyKind::LlamaSwap);
    let a1 = rig.ask("code", Class::Batch);
    assert_eq!(rig.started("code"), 1);
    rig.warm("code");
    let a2 = rig.ask("code", Class::Batch);
    assert!(rig.routed(a1) && rig.routed(a2));

    // A request for conv: code takes nothing new, and is stopped only when drained.
    let b1 = rig.ask("conv", Class::Interactive);
    let a3 = rig.ask("code", Class::Batch);
    assert!(!rig.routed(a3), "a draining runtime takes nothing new");
    assert!(!rig.stopped("code"));
    rig.at(1_000).feed(GpuInput::Finished { id: a1 });
    assert!(!rig.stopped("code"), "one still in flight");
    rig.at(2_000).feed(GpuInput::Finished { id: a2 });
    assert!(rig.stopped("code"));
    assert_eq!(rig.started("conv"), 0, "not before the stop is seen");

    rig.feed(GpuInput::Stopped {
        model: name("code"),
    });
    assert!(rig.out.contains(&GpuOutput::CheckVram));
    // The driver has not released the VRAM yet: asked again, nothing starts.
    rig.feed(GpuInput::VramFree {
        free_bytes: 6 * GIB,
    });
    assert_eq!(rig.started("conv"), 0);
    rig.at(2_500).feed(GpuInput::VramFree {
        free_bytes: 24 * GIB,
    });
    assert_eq!(rig.started("conv"), 1);
    rig.at(12_500).warm("conv");
    assert!(rig.routed(b1));
    let loaded = rig
        .out
        .iter()
        .find_map(|o| match o {
            GpuOutput::Event(GpuEvent::Loaded { model, took_ms }) if model.as_str() == "conv" => {
                Some(*took_ms)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(loaded, 10_000);
    // The code request that waited through the swap is still waiting, not lost.
    assert!(!rig.routed(a3));
    assert_eq!(rig.s.waiting(), 1);
}

#[test]
fn two_models_that_fit_together_are_both_resident_and_never_swapped() {
    let models = vec![
        profile("small-a", 5 * GIB, 4),
        profile("small-b", 5 * GIB, 4),
    ];
    for policy in PolicyKind::ALL {
        let mut rig = Rig::new(models.clone(), policy);
        let a = rig.ask("small-a", Class::Interactive);
        rig.warm("small-a");
        let b = rig.ask("small-b", Class::Batch);
        rig.warm("small-b");
        assert!(rig.routed(a) && rig.routed(b), "{}", policy.name());
        assert!(
            !rig.out.iter().any(|o| matches!(o, GpuOutput::Stop { .. })),
            "{}: {:?}",
            policy.name(),
            rig.out
        );
    }
}

#[test]
fn fifo_blocks_the_loaded_model_behind_a_swap_and_the_tipping_point_does_not() {
    for (policy, blocked) in [(PolicyKind::Fifo, true), (PolicyKind::TippingPoint, false)] {
        let mut rig = Rig::new(pair(), policy);
        let first = rig.ask("conv", Class::Interactive);
        rig.warm("conv");
        assert!(rig.routed(first));
        rig.at(100);
        let _other = rig.ask("code", Class::Batch);
        let again = rig.ask("conv", Class::Interactive);
        assert_eq!(!rig.routed(again), blocked, "{}", policy.name());
    }
}

#[test]
fn a_swapped_in_model_serves_the_requests_that_waited_for_it_before_it_goes() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    let c0 = rig.ask("conv", Class::Interactive);
    rig.warm("conv").feed(GpuInput::Finished { id: c0 });
    // Batch requests for code: conv is idle, so the swap comes soon.
    let waiting: Vec<RequestId> = (0..6).map(|_| rig.ask("code", Class::Batch)).collect();
    let mut t = 0;
    while !rig.stopped("conv") {
        t += 500;
        assert!(
            t <= 80_000,
            "overdue after 8 loads at the latest: {:?}",
            rig.out
        );
        rig.at(t);
    }
    rig.feed(GpuInput::Stopped {
        model: name("conv"),
    })
    .feed(GpuInput::VramFree {
        free_bytes: 24 * GIB,
    })
    .at(t + 10_000)
    .warm("code");
    // Interactive requests pile up for conv, but code serves its six first.
    for _ in 0..20 {
        rig.ask("conv", Class::Interactive);
    }
    assert!(waiting[..4].iter().all(|id| rig.routed(*id)));
    assert!(
        !rig.stopped("code"),
        "two committed requests are not routed yet"
    );
    rig.at(t + 11_000)
        .feed(GpuInput::Finished { id: waiting[0] });
    assert!(rig.routed(waiting[4]));
    rig.feed(GpuInput::Finished { id: waiting[1] });
    assert!(rig.routed(waiting[5]));
    // Committed all routed: the interactive pile wins now, after code drains.
    for id in &waiting[2..] {
        rig.feed(GpuInput::Finished { id: *id });
    }
    assert!(rig.stopped("code"));
}

#[test]
fn live_stasis_is_bounded_and_refuses_with_a_retry_after() {
    let config = GpuConfig {
        max_waiting: 3,
        ..GpuConfig::default()
    };
    let mut rig = Rig::with_config(config, pair(), PolicyKind::TippingPoint);
    for _ in 0..3 {
        rig.ask("code", Class::Batch);
    }
    let refused = rig.ask("code", Class::Batch);
    let answer = rig
        .out
        .iter()
        .find_map(|o| match o {
            GpuOutput::Refuse {
                id, retry_after_ms, ..
            } if *id == refused => Some(*retry_after_ms),
            _ => None,
        })
        .expect("refused");
    assert!(answer >= 1000);
}

#[test]
fn three_failed_starts_reset_the_runtime_and_refuse_its_requests() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    let r = rig.ask("code", Class::Interactive);
    for attempt in 1..=3 {
        rig.feed(GpuInput::LoadFailed {
            model: name("code"),
        });
        if attempt < 3 {
            assert_eq!(
                rig.started("code"),
                attempt,
                "not again before the VRAM is seen free"
            );
            rig.feed(GpuInput::VramFree {
                free_bytes: 24 * GIB,
            });
        }
    }
    assert_eq!(rig.started("code"), 3, "started, then twice again");
    let reset = rig.position(|o| {
        matches!(
            o,
            GpuOutput::Event(GpuEvent::WatchdogReset { attempts: 3, .. })
        )
    });
    assert!(reset.is_some(), "{:?}", rig.out);
    assert!(
        rig.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Refuse { id, .. } if *id == r))
    );
    assert_eq!(rig.s.waiting(), 0);
}

#[test]
fn a_drain_past_its_bound_stops_the_runtime_and_says_what_it_cut() {
    let config = GpuConfig {
        drain_timeout_ms: 5_000,
        ..GpuConfig::default()
    };
    let mut rig = Rig::with_config(config, pair(), PolicyKind::LlamaSwap);
    let stuck = rig.ask("code", Class::Batch);
    rig.warm("code");
    assert!(rig.routed(stuck));
    rig.ask("conv", Class::Interactive);
    assert_eq!(rig.s.poll_timeout(), Some(Time::from_millis(5_000)));
    rig.at(4_999);
    assert!(!rig.stopped("code"));
    rig.at(5_000);
    assert!(rig.stopped("code"));
    assert!(rig.out.iter().any(|o| matches!(
        o,
        GpuOutput::Event(GpuEvent::Drained {
            cut: 1,
            took_ms: 5_000,
            ..
        })
    )));
}

#[test]
fn a_model_that_fits_only_by_taking_the_margin_is_refused_and_never_started() {
    let models = vec![profile("huge", 23 * GIB, 1)];
    let mut rig = Rig::new(models, PolicyKind::TippingPoint);
    let r = rig.ask("huge", Class::Interactive);
    assert_eq!(rig.started("huge"), 0);
    assert!(
        rig.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Refuse { id, .. } if *id == r))
    );
}

/// Batch work past its aging bound still yields to interactive requests waiting for the
/// resident runtime; it comes in once they are served.
#[test]
fn overdue_batch_work_yields_to_waiting_interactive_requests() {
    let models = vec![
        profile("code", 19 * GIB, 4),
        profile("conv", 17 * GIB / 2, 1),
    ];
    let mut rig = Rig::new(models, PolicyKind::TippingPoint);
    let first = rig.ask("conv", Class::Interactive);
    rig.warm("conv");
    assert!(rig.routed(first));
    let batch = rig.ask("code", Class::Batch);
    // One conv slot; conv requests come faster than it serves them, so some always wait.
    let mut in_flight = first;
    let mut t = 0;
    for _ in 0..100 {
        rig.ask("conv", Class::Interactive);
        rig.ask("conv", Class::Interactive);
        t += 1_000;
        rig.at(t).feed(GpuInput::Finished { id: in_flight });
        in_flight = routed_last(&rig);
    }
    assert!(t >= 80_000, "past 8 loads of 10 s");
    assert!(
        !rig.stopped("conv"),
        "interactive requests kept waiting: no swap"
    );
    assert!(!rig.routed(batch));
    // The interactive queue empties: the overdue batch request comes in.
    while rig.s.waiting() > 1 {
        t += 1_000;
        rig.at(t).feed(GpuInput::Finished { id: in_flight });
        in_flight = routed_last(&rig);
    }
    assert!(
        rig.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Event(GpuEvent::SwapBegun { .. }))),
        "the swap begins once no interactive request waits"
    );
    assert!(!rig.stopped("conv"), "conv drains its last request first");
    rig.feed(GpuInput::Finished { id: in_flight });
    assert!(rig.stopped("conv"));
}

/// The request routed last.
fn routed_last(rig: &Rig) -> RequestId {
    rig.out
        .iter()
        .rev()
        .find_map(|o| match o {
            GpuOutput::Route { id, .. } => Some(*id),
            _ => None,
        })
        .expect("something was routed")
}

/// Time alone moves the scheduler: while a request waits for a model that is not resident,
/// it asks for a tick, and the swap comes without any other input.
#[test]
fn a_waiting_request_gets_its_swap_with_no_other_input() {
    let mut rig = Rig::new(pair(), PolicyKind::TippingPoint);
    let c = rig.ask("conv", Class::Interactive);
    rig.warm("conv").feed(GpuInput::Finished { id: c });
    assert_eq!(rig.s.poll_timeout(), None, "nothing waits");
    rig.ask("code", Class::Batch);
    let mut ticks = 0;
    while !rig.stopped("conv") {
        let at = rig.s.poll_timeout().expect("a tick is asked for");
        rig.now = at;
        rig.s.tick(at);
        rig.collect();
        ticks += 1;
        assert!(ticks < 1_000, "the swap never came");
    }
}

/// FIFO serves a model's requests in arrival order whatever their class: an interactive
/// request behind a batch one for the same warm model does not stall it.
#[test]
fn fifo_takes_a_models_requests_in_arrival_order() {
    let mut rig = Rig::new(pair(), PolicyKind::Fifo);
    let first = rig.ask("conv", Class::Interactive);
    rig.warm("conv");
    let batch = rig.ask("conv", Class::Batch);
    let interactive = rig.ask("conv", Class::Interactive);
    assert!(rig.routed(first) && rig.routed(batch) && rig.routed(interactive));
}

/// A runtime that dies while being drained: what it had in flight is refused with the
/// reason, and the swap goes on.
#[test]
fn a_runtime_that_dies_while_draining_does_not_stall_the_swap() {
    let mut rig = Rig::new(pair(), PolicyKind::LlamaSwap);
    let a = rig.ask("code", Class::Batch);
    rig.warm("code");
    rig.ask("conv", Class::Interactive);
    assert!(!rig.stopped("code"), "draining");
    rig.feed(GpuInput::LoadFailed {
        model: name("code"),
    });
    assert!(rig.out.iter().any(
        |o| matches!(o, GpuOutput::Refuse { id, reason, .. } if *id == a && reason.contains("exited"))
    ));
    assert!(rig.out.contains(&GpuOutput::CheckVram));
    rig.feed(GpuInput::VramFree {
        free_bytes: 24 * GIB,
    });
    assert_eq!(rig.started("conv"), 1);
}

/// A runtime that does not exit when told is told again after the stop bound (the shell
/// kills it then), and the swap goes on once it is gone.
#[test]
fn a_runtime_that_outlives_its_stop_is_told_again() {
    let config = GpuConfig {
        stop_timeout_ms: 3_000,
        ..GpuConfig::default()
    };
    let mut rig = Rig::with_config(config, pair(), PolicyKind::LlamaSwap);
    rig.ask("code", Class::Batch);
    rig.warm("code");
    let a = RequestId(0);
    rig.feed(GpuInput::Finished { id: a });
    rig.ask("conv", Class::Interactive);
    let stops = |rig: &Rig| {
        rig.out
            .iter()
            .filter(|o| matches!(o, GpuOutput::Stop { model, .. } if model.as_str() == "code"))
            .count()
    };
    assert_eq!(stops(&rig), 1);
    assert_eq!(rig.s.poll_timeout(), Some(Time::from_millis(3_000)));
    rig.at(2_999);
    assert_eq!(stops(&rig), 1);
    rig.at(3_000);
    assert_eq!(stops(&rig), 2, "told again");
    assert!(
        rig.out
            .iter()
            .any(|o| matches!(o, GpuOutput::Event(GpuEvent::StopOverdue { .. })))
    );
    rig.feed(GpuInput::Stopped {
        model: name("code"),
    })
    .feed(GpuInput::VramFree {
        free_bytes: 24 * GIB,
    });
    assert_eq!(rig.started("conv"), 1);
}

mod changes;
mod ingestion;
mod tiers;
