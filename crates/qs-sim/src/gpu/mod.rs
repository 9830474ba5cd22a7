//! `qs bench gpu`: the GPU scheduler of the core ([`qs_core::gpu`]) replaying the Azure
//! traces on a virtual clock, one simulated GPU, policy against policy.
//!
//! The two traces are two models competing for one 24 GB GPU with 1.5 GB reserved: `code`
//! (batch) and `conv` (interactive). A request holds one slot of its model's runtime for its
//! prefill (context ÷ prefill rate) and its decode (generated ÷ decode rate); its time to
//! first token is its wait plus its prefill. Arrival times are stretched so that the ideal
//! utilisation (service time over slot time, with no swap) is the one asked for. Loads take
//! the given time with ±30 % jitter, seeded; the scheduler learns them as it goes. The
//! simulated GPU accounts VRAM per runtime process: a process holds its model's VRAM from its
//! start until 200 ms after its exit (the driver's lag), which the scheduler's VRAM check
//! sees.

pub mod trace;

use qs_core::gpu::{
    Class, Discipline, GpuConfig, GpuEvent, GpuInput, GpuOutput, GpuScheduler, ModelName,
    ModelProfile, PolicyKind, Request, RequestId,
};
use qs_core::{Rng, Time};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use trace::TraceRequest;

pub use trace::TraceError;

const GIB: u64 = 1 << 30;
/// A stopped runtime's process exits this long after the stop.
const EXIT_US: u64 = 100_000;
/// Its VRAM is seen free this long after its exit.
const RELEASE_US: u64 = 200_000;
/// A VRAM reading takes this long.
const READ_US: u64 = 20_000;

/// The two models of the traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Model {
    Code,
    Conv,
}

impl Model {
    pub const BOTH: [Model; 2] = [Model::Code, Model::Conv];

    pub fn name(self) -> &'static str {
        match self {
            Model::Code => "code",
            Model::Conv => "conv",
        }
    }

    pub fn class(self) -> Class {
        match self {
            Model::Code => Class::Batch,
            Model::Conv => Class::Interactive,
        }
    }

    fn of(name: &ModelName) -> Model {
        if name.as_str() == "code" {
            Model::Code
        } else {
            Model::Conv
        }
    }
}

/// Which pair of models shares the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pair {
    /// About 19 GB and 8.5 GB: they never fit together in 22.5 GB.
    Exclusive,
    /// Two models of about 5 GB: both resident, no swap needed.
    CoResident,
    /// The exclusive pair with a smaller tier of code (8 GB, as an 8B beside a 34B): it
    /// fits beside conv, so tiering serves both at once instead of swapping.
    Tiered,
}

impl Pair {
    pub fn name(self) -> &'static str {
        match self {
            Pair::Exclusive => "exclusive",
            Pair::CoResident => "co-resident",
            Pair::Tiered => "tiered",
        }
    }

    /// The VRAM of each tier of `m`, largest first.
    fn tiers_bytes(self, m: Model) -> Vec<u64> {
        match (self, m) {
            (Pair::Exclusive, Model::Code) => vec![19 * GIB],
            (Pair::Tiered, Model::Code) => vec![19 * GIB, 8 * GIB],
            (Pair::Exclusive | Pair::Tiered, Model::Conv) => vec![17 * GIB / 2],
            (Pair::CoResident, _) => vec![5 * GIB],
        }
    }
}

/// The requests of both traces merged by time, relative to the first.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    pub requests: Vec<(Model, TraceRequest)>,
}

impl Workload {
    pub fn merge(code: &[TraceRequest], conv: &[TraceRequest]) -> Workload {
        let mut requests: Vec<(Model, TraceRequest)> = code
            .iter()
            .map(|r| (Model::Code, *r))
            .chain(conv.iter().map(|r| (Model::Conv, *r)))
            .collect();
        requests.sort_by_key(|(m, r)| (r.at_us, *m));
        let t0 = requests.first().map_or(0, |(_, r)| r.at_us);
        for (_, r) in &mut requests {
            r.at_us -= t0;
        }
        Workload { requests }
    }

    /// Times the model alternates from one request to the next.
    pub fn alternations(&self) -> usize {
        self.requests
            .windows(2)
            .filter(|w| w[0].0 != w[1].0)
            .count()
    }
}

/// How fast a runtime serves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Service {
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub slots: u32,
}

impl Service {
    fn prefill_us(&self, r: &TraceRequest) -> u64 {
        (f64::from(r.context_tokens) / self.prefill_tokens_per_s * 1e6) as u64
    }

    fn busy_us(&self, r: &TraceRequest) -> u64 {
        self.prefill_us(r) + (f64::from(r.generated_tokens) / self.decode_tokens_per_s * 1e6) as u64
    }

    /// The factor arrival times are stretched by for `utilisation`: service time over the
    /// slot time of the span.
    pub fn stretch(&self, work: &Workload, utilisation: f64) -> f64 {
        let busy: f64 = work
            .requests
            .iter()
            .map(|(_, r)| self.busy_us(r) as f64)
            .sum();
        let span = work.requests.last().map_or(1, |(_, r)| r.at_us.max(1)) as f64;
        busy / (span * f64::from(self.slots) * utilisation)
    }
}

/// One run's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scenario {
    pub policy: PolicyKind,
    /// Loads take no time (the oracle the others are measured against).
    pub oracle: bool,
    pub load_ms: u64,
    pub utilisation: f64,
    pub service: Service,
    pub pair: Pair,
    pub seed: u64,
}

/// Waits and times to first token of one model's requests, in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    pub wait_us: Vec<u64>,
    pub ttft_us: Vec<u64>,
    pub refused: u64,
    pub accepted: u64,
    pub finished: u64,
}

impl Latencies {
    /// The `q` quantile (0..=1) of `v`, sorted here.
    pub fn quantile(v: &mut [u64], q: f64) -> u64 {
        if v.is_empty() {
            return 0;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)]
    }

    /// Share of time-to-first-token samples within `limit_us`.
    pub fn share_within(&self, limit_us: u64) -> f64 {
        if self.ttft_us.is_empty() {
            return 1.0;
        }
        self.ttft_us.iter().filter(|t| **t <= limit_us).count() as f64 / self.ttft_us.len() as f64
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub by_model: BTreeMap<Model, Latencies>,
    /// Transitions that stopped a runtime for another.
    pub swaps: u64,
    /// Starts (swaps in, co-resident starts, restarts).
    pub starts: u64,
    /// Starts at a tier below the largest (tiering down beside a busy runtime).
    pub smaller_tier_starts: u64,
    pub loading_gpu_s: f64,
    /// Times the VRAM held by runtime processes went past the GPU's less the margin.
    pub margin_violations: u64,
    /// Accepted requests that never finished.
    pub lost: u64,
    pub simulated_s: f64,
    pub stretch: f64,
    pub wall_s: f64,
}

/// A simulator event, ordered by time then by the order it was scheduled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive(usize),
    Finish(u64),
    Loaded(Model),
    Exited(Model),
    Released(Model),
    VramRead,
    Tick,
}

/// Runs one scenario over `work`; `clock` reads the wall clock (seconds) for the run's own
/// duration, the only thing here that is not simulated.
pub fn run(work: &Workload, s: &Scenario, clock: &dyn Fn() -> f64) -> Outcome {
    let started = clock();
    let stretch = s.service.stretch(work, s.utilisation);
    let config = GpuConfig {
        vram_bytes: 24 * GIB,
        reserved_bytes: 1536 << 20,
        max_waiting: 65_536,
        prefill_tokens_per_s: s.service.prefill_tokens_per_s as u64,
        drain_timeout_ms: 600_000,
        stop_timeout_ms: 30_000,
        max_failed_starts: 3,
        ..GpuConfig::default()
    };
    let budget = config.vram_bytes - config.reserved_bytes;
    let load_ms = if s.oracle { 0 } else { s.load_ms };
    let profiles = Model::BOTH
        .iter()
        .map(|m| ModelProfile {
            name: ModelName::new(m.name()).expect("a valid name"),
            tiers_vram_bytes: s.pair.tiers_bytes(*m),
            discipline: Discipline::Parallel {
                max_concurrency: s.service.slots,
            },
            inertia_bias_ms: 0,
            load_ms,
        })
        .collect();
    let mut sched = GpuScheduler::new(config, profiles, s.policy.build());
    let mut rng = Rng::seeded(s.seed);
    let mut out = Outcome {
        stretch,
        ..Outcome::default()
    };
    for m in Model::BOTH {
        out.by_model.insert(m, Latencies::default());
    }
    let mut queue: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<Reverse<(u64, u64, Ev)>>, at: u64, ev: Ev| {
        seq += 1;
        queue.push(Reverse((at, seq, ev)));
    };
    for (i, (_, r)) in work.requests.iter().enumerate() {
        push(&mut queue, (r.at_us as f64 * stretch) as u64, Ev::Arrive(i));
    }
    let mut arrived_at: BTreeMap<u64, u64> = BTreeMap::new();
    let mut cut: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    let mut used: BTreeMap<Model, u64> = BTreeMap::new();
    let mut tick_at: Option<u64> = None;
    let mut now = 0u64;
    while let Some(Reverse((at, _, ev))) = queue.pop() {
        now = at;
        let t = Time::from_micros(now);
        match ev {
            Ev::Arrive(i) => {
                let (m, _) = work.requests[i];
                arrived_at.insert(i as u64, now);
                sched.handle(
                    GpuInput::Arrive(Request {
                        id: RequestId(i as u64),
                        model: ModelName::new(m.name()).expect("a valid name"),
                        class: m.class(),
                        context_tokens: work.requests[i].1.context_tokens,
                        lease: None,
                    }),
                    t,
                );
            }
            Ev::Finish(id) => {
                if cut.remove(&id) {
                    continue;
                }
                let m = work.requests[id as usize].0;
                if let Some(l) = out.by_model.get_mut(&m) {
                    l.finished += 1;
                }
                sched.handle(GpuInput::Finished { id: RequestId(id) }, t);
            }
            Ev::Loaded(m) => sched.handle(
                GpuInput::Loaded {
                    model: ModelName::new(m.name()).expect("a valid name"),
                },
                t,
            ),
            Ev::Exited(m) => sched.handle(
                GpuInput::Stopped {
                    model: ModelName::new(m.name()).expect("a valid name"),
                },
                t,
            ),
            Ev::Released(m) => {
                used.remove(&m);
            }
            Ev::VramRead => {
                let held: u64 = used.values().sum();
                sched.handle(
                    GpuInput::VramFree {
                        free_bytes: (24 * GIB).saturating_sub(held),
                    },
                    t,
                );
            }
            Ev::Tick => {
                tick_at = None;
                sched.tick(t);
            }
        }
        while let Some(o) = sched.poll() {
            match o {
                GpuOutput::Route { id, model } => {
                    let (m, r) = work.requests[id.0 as usize];
                    debug_assert_eq!(Model::of(&model), m);
                    let arrived = arrived_at
                        .remove(&id.0)
                        .expect("a request is routed once, after it arrived");
                    let wait = now - arrived;
                    if let Some(l) = out.by_model.get_mut(&m) {
                        l.accepted += 1;
                        l.wait_us.push(wait);
                        l.ttft_us.push(wait + s.service.prefill_us(&r));
                    }
                    push(&mut queue, now + s.service.busy_us(&r), Ev::Finish(id.0));
                }
                GpuOutput::Refuse { id, .. } => {
                    let m = work.requests[id.0 as usize].0;
                    if arrived_at.remove(&id.0).is_none() {
                        // Routed, then cut (its runtime exited or hit its drain bound): lost.
                        cut.insert(id.0);
                    } else if let Some(l) = out.by_model.get_mut(&m) {
                        l.refused += 1;
                    }
                }
                GpuOutput::Start {
                    model,
                    tier,
                    vram_bytes,
                } => {
                    let m = Model::of(&model);
                    out.starts += 1;
                    if tier > 0 {
                        out.smaller_tier_starts += 1;
                    }
                    used.insert(m, vram_bytes);
                    if used.values().sum::<u64>() > budget {
                        out.margin_violations += 1;
                    }
                    let jitter = 1.0 + 0.3 * (2.0 * rng.unit() - 1.0);
                    let took = (load_ms as f64 * 1000.0 * jitter) as u64;
                    out.loading_gpu_s += took as f64 / 1e6;
                    push(&mut queue, now + took, Ev::Loaded(m));
                }
                GpuOutput::Stop { model, .. } => {
                    let m = Model::of(&model);
                    push(&mut queue, now + EXIT_US, Ev::Exited(m));
                    push(&mut queue, now + EXIT_US + RELEASE_US, Ev::Released(m));
                }
                GpuOutput::CheckVram => push(&mut queue, now + READ_US, Ev::VramRead),
                GpuOutput::Event(GpuEvent::SwapBegun { evict, .. }) if !evict.is_empty() => {
                    out.swaps += 1;
                }
                GpuOutput::Event(_) => {}
            }
        }
        if let Some(deadline) = sched.poll_timeout().map(Time::as_micros)
            && tick_at.is_none_or(|t| deadline < t)
            && deadline > now
        {
            tick_at = Some(deadline);
            push(&mut queue, deadline, Ev::Tick);
        }
    }
    let accepted: u64 = out.by_model.values().map(|l| l.accepted).sum();
    let finished: u64 = out.by_model.values().map(|l| l.finished).sum();
    // Routed and never finished (cut ones included), or accepted and never routed.
    out.lost = accepted.saturating_sub(finished) + arrived_at.len() as u64;
    out.simulated_s = now as f64 / 1e6;
    out.wall_s = clock() - started;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Workload {
        // Alternating bursts: 20 code, 20 conv, three times over a minute.
        let mut code = Vec::new();
        let mut conv = Vec::new();
        for burst in 0..3u64 {
            for i in 0..20u64 {
                let at_us = burst * 20_000_000 + i * 100_000;
                let r = TraceRequest {
                    at_us,
                    context_tokens: 1000,
                    generated_tokens: 50,
                };
                code.push(r);
                conv.push(TraceRequest {
                    at_us: at_us + 10_000_000,
                    ..r
                });
            }
        }
        Workload::merge(&code, &conv)
    }

    fn scenario(policy: PolicyKind, pair: Pair) -> Scenario {
        Scenario {
            policy,
            oracle: false,
            load_ms: 2_000,
            utilisation: 0.3,
            service: Service {
                prefill_tokens_per_s: 5000.0,
                decode_tokens_per_s: 90.0,
                slots: 4,
            },
            pair,
            seed: 1,
        }
    }

    #[test]
    fn every_policy_loses_nothing_keeps_the_margin_and_repeats_itself() {
        let work = tiny();
        for policy in PolicyKind::ALL {
            let s = scenario(policy, Pair::Exclusive);
            let a = run(&work, &s, &|| 0.0);
            assert_eq!(a.lost, 0, "{}", policy.name());
            assert_eq!(a.margin_violations, 0, "{}", policy.name());
            assert!(a.swaps >= 1, "{}", policy.name());
            let done: u64 = a.by_model.values().map(|l| l.finished).sum();
            assert_eq!(done, 120, "{}", policy.name());
            let b = run(&work, &s, &|| 0.0);
            assert_eq!(a.swaps, b.swaps);
            assert_eq!(
                a.by_model[&Model::Conv].ttft_us,
                b.by_model[&Model::Conv].ttft_us
            );
        }
    }

    #[test]
    fn models_that_fit_together_never_swap() {
        let work = tiny();
        for policy in PolicyKind::ALL {
            let o = run(&work, &scenario(policy, Pair::CoResident), &|| 0.0);
            assert_eq!(o.swaps, 0, "{}", policy.name());
            assert_eq!(o.starts, 2, "{}", policy.name());
            assert_eq!(o.lost, 0);
        }
    }

    #[test]
    fn a_smaller_tier_that_fits_beside_the_busy_model_saves_swaps() {
        let work = tiny();
        let exclusive = run(
            &work,
            &scenario(PolicyKind::TippingPoint, Pair::Exclusive),
            &|| 0.0,
        );
        let tiered = run(
            &work,
            &scenario(PolicyKind::TippingPoint, Pair::Tiered),
            &|| 0.0,
        );
        assert!(tiered.smaller_tier_starts >= 1);
        assert!(
            tiered.swaps < exclusive.swaps,
            "{} swaps tiered, {} exclusive",
            tiered.swaps,
            exclusive.swaps
        );
        assert_eq!(tiered.lost, 0);
        assert_eq!(tiered.margin_violations, 0);
        let done: u64 = tiered.by_model.values().map(|l| l.finished).sum();
        assert_eq!(done, 120);
    }

    #[test]
    fn the_stretch_sets_the_ideal_utilisation() {
        let work = tiny();
        let s = scenario(PolicyKind::TippingPoint, Pair::Exclusive).service;
        let f3 = s.stretch(&work, 0.3);
        let f6 = s.stretch(&work, 0.6);
        assert!((f3 / f6 - 2.0).abs() < 1e-9);
    }
}
