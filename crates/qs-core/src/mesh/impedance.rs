//! Impedance (seed §1.3, §2.2–2.3, Part 4): how long an agent takes to be ready after it is
//! sent something, measured and never declared.
//!
//! A cluster lead keeps a [`Link`] per host (the one-way delay of every beat and answer it
//! hears, the seed's `now − created_at`: every agent of a host shares the path) and a
//! [`Work`] per agent (processing time from its answers, queue depth, reliability). From
//! them come the median and 95th percentile, the drift (the coefficient of variation of
//! the ready time), slow baselines and spikes, the agent's class and its predicted lead
//! time. Where the seed leaves a rule undefined, the
//! choice is written next to the code.

use qs_wire::mesh::{ClassCounts, ImpedanceClass, LeadHistogram};

/// Delay samples a profile keeps (seed §4.1: a ring of 100).
pub const SAMPLES: usize = 100;
/// Samples before a baseline is trusted for spike detection.
pub const BASELINE_AFTER: u32 = 16;
/// Weight of a new sample in the baseline (an EWMA: a slow "historical average").
const BASELINE_ALPHA: f64 = 0.02;
/// A score above this is degraded (seed §4.2).
pub const DEGRADED_MS: f64 = 800.0;
/// Drift (coefficient of variation) above this is unstable (seed §4.2).
pub const UNSTABLE_DRIFT: f64 = 0.5;
/// A score over this multiple of the baseline is a spike (seed §6.1).
pub const SPIKE_FACTOR: f64 = 2.0;
/// A share of a cluster's agents spiking at once that is a coordinated shift (seed §9.2
/// gives no figure; ours).
pub const COORDINATED_SHARE: f64 = 0.3;

/// Class boundaries on the measured ready time (delay plus processing), milliseconds. The
/// seed gives typical ranges only (A 5–20, B 50–150, C 100–300, D 200–500, E variable, F
/// seconds to hours); these are the upper ends, with E taken by variability.
pub const CLASS_A_BELOW_MS: f64 = 40.0;
pub const CLASS_B_BELOW_MS: f64 = 150.0;
pub const CLASS_C_BELOW_MS: f64 = 300.0;
pub const CLASS_D_BELOW_MS: f64 = 1_000.0;

/// Delays are timed in whole milliseconds: under this score, a millisecond or two of jitter
/// is the clock's resolution, not drift (a LAN agent is not unstable).
pub const DRIFT_FLOOR_MS: f64 = 10.0;

/// Seed §3.1's base processing time per class, used until an agent's own is measured.
pub fn base_processing_ms(class: ImpedanceClass) -> f64 {
    match class {
        ImpedanceClass::A => 10.0,
        ImpedanceClass::B => 50.0,
        ImpedanceClass::C => 200.0,
        ImpedanceClass::D => 100.0,
        ImpedanceClass::E => 150.0,
        ImpedanceClass::F => 60_000.0,
    }
}

/// The class of a measured ready time and drift.
pub fn classify(ready_ms: f64, drift: f64) -> ImpedanceClass {
    if ready_ms >= CLASS_D_BELOW_MS {
        ImpedanceClass::F
    } else if drift > UNSTABLE_DRIFT {
        ImpedanceClass::E
    } else if ready_ms < CLASS_A_BELOW_MS {
        ImpedanceClass::A
    } else if ready_ms < CLASS_B_BELOW_MS {
        ImpedanceClass::B
    } else if ready_ms < CLASS_C_BELOW_MS {
        ImpedanceClass::C
    } else {
        ImpedanceClass::D
    }
}

/// What a profile's samples say now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub std_ms: f64,
    pub samples: u32,
}

/// An anomaly a sample or a summary found (seed §4.2, §6.1, §9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Anomaly {
    /// Score over [`DEGRADED_MS`].
    Degraded,
    /// Drift over [`UNSTABLE_DRIFT`].
    Unstable,
    /// Score over twice the baseline.
    Spike,
}

/// A spike must also be this much over the baseline, milliseconds, so LAN jitter of a
/// tenth of a millisecond is no spike.
pub const SPIKE_FLOOR_MS: f64 = 5.0;

/// The network path from a cluster lead to one host: every agent of the host shares it, so
/// it is measured once (from the host's beats and its agents' answers).
#[derive(Clone, Debug)]
pub struct Link {
    ring: [f32; SAMPLES],
    len: u8,
    next: u8,
    baseline_ms: f64,
    baseline_samples: u32,
    /// A fast running mean of every sample (spikes included), for per-answer use where
    /// sorting the ring each time would cost too much.
    recent_ms: f64,
    stats: Option<Stats>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            ring: [0.0; SAMPLES],
            len: 0,
            next: 0,
            baseline_ms: 0.0,
            baseline_samples: 0,
            recent_ms: 0.0,
            stats: None,
        }
    }
}

fn spiked(value: f64, baseline: Option<f64>) -> bool {
    baseline.is_some_and(|b| value > SPIKE_FACTOR * b.max(0.0) && value - b > SPIKE_FLOOR_MS)
}

fn ewma(baseline: &mut f64, samples: &mut u32, value: f64) {
    *samples = samples.saturating_add(1);
    *baseline = match *samples {
        1 => value,
        _ => *baseline + BASELINE_ALPHA * (value - *baseline),
    };
}

impl Link {
    /// A one-way delay sample (the seed's `now − created_at`). Returns a spike when it is
    /// over twice the baseline; spikes do not move the baseline (seed §9.2: a coordinated
    /// shift must not teach the registry).
    pub fn record(&mut self, delay_ms: f64) -> Option<Anomaly> {
        let delay_ms = delay_ms.clamp(0.0, 3_600_000.0);
        self.ring[self.next as usize] = delay_ms as f32;
        self.next = ((self.next as usize + 1) % SAMPLES) as u8;
        self.len = (self.len as usize + 1).min(SAMPLES) as u8;
        self.stats = None;
        self.recent_ms = match self.len {
            1 => delay_ms,
            _ => self.recent_ms + 0.2 * (delay_ms - self.recent_ms),
        };
        if spiked(delay_ms, self.baseline_ms()) {
            return Some(Anomaly::Spike);
        }
        ewma(&mut self.baseline_ms, &mut self.baseline_samples, delay_ms);
        None
    }

    pub fn baseline_ms(&self) -> Option<f64> {
        (self.baseline_samples >= BASELINE_AFTER).then_some(self.baseline_ms)
    }

    /// The recent typical delay (a running mean), milliseconds.
    pub fn recent_ms(&self) -> f64 {
        self.recent_ms
    }

    /// Median, 95th percentile and standard deviation of the samples (cached until the next).
    pub fn stats(&mut self) -> Stats {
        if let Some(s) = self.stats {
            return s;
        }
        let n = self.len as usize;
        let s = if n == 0 {
            Stats::default()
        } else {
            let mut v: Vec<f32> = self.ring[..n].to_vec();
            v.sort_by(f32::total_cmp);
            let at = |q: f64| f64::from(v[((n as f64 - 1.0) * q).round() as usize]);
            let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / n as f64;
            let var = v
                .iter()
                .map(|x| (f64::from(*x) - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            Stats {
                p50_ms: at(0.5),
                p95_ms: at(0.95),
                std_ms: var.sqrt(),
                samples: n as u32,
            }
        };
        self.stats = Some(s);
        s
    }
}

/// What an agent itself takes: processing time (mean and variance, exponentially
/// weighted), queue depth, and how reliably it answers in its window.
#[derive(Clone, Debug, Default)]
pub struct Work {
    processing_ms: Option<f64>,
    variance: f64,
    pub queue_depth: u32,
    baseline_ms: f64,
    baseline_samples: u32,
    /// Answers measured (a host's report and a censored wait are none), and the longest.
    samples: u32,
    longest_ms: f64,
    good: f32,
    all: f32,
}

/// Weight of a new processing sample.
const PROCESSING_ALPHA: f64 = 0.3;

impl Work {
    /// A processing sample from an answer. Returns a spike when the agent's score with it
    /// (link median + this) is over twice the agent's baseline score.
    pub fn record(&mut self, processing_ms: f64, link_p50_ms: f64) -> Option<Anomaly> {
        let p = processing_ms.clamp(0.0, 3_600_000.0);
        self.samples = self.samples.saturating_add(1);
        self.longest_ms = self.longest_ms.max(p);
        match self.processing_ms {
            None => self.processing_ms = Some(p),
            Some(m) => {
                let d = p - m;
                self.processing_ms = Some(m + PROCESSING_ALPHA * d);
                self.variance =
                    (1.0 - PROCESSING_ALPHA) * (self.variance + PROCESSING_ALPHA * d * d);
            }
        }
        let score = link_p50_ms + p;
        let base = (self.baseline_samples >= BASELINE_AFTER).then_some(self.baseline_ms);
        if spiked(score, base) {
            return Some(Anomaly::Spike);
        }
        ewma(&mut self.baseline_ms, &mut self.baseline_samples, score);
        None
    }

    /// An agent that has not answered after this long takes at least this long (a
    /// censored sample): the estimate rises to it, and doubles while answers stay missing,
    /// so an agent that takes minutes is known as such after a few timeouts. It never
    /// lowers the estimate; the next answer's sample corrects it.
    pub fn at_least(&mut self, processing_ms: f64) {
        let p = processing_ms.clamp(0.0, 3_600_000.0);
        let doubled = self.processing_ms.map_or(p, |m| (2.0 * m).min(3_600_000.0));
        self.processing_ms = Some(p.max(doubled));
    }

    /// The host's own measurement (from its beat), when no answer measured it yet.
    pub fn reported(&mut self, processing_ms: f64) {
        if self.processing_ms.is_none() && processing_ms > 0.0 {
            self.processing_ms = Some(processing_ms);
        }
    }

    pub fn processing_ms(&self) -> Option<f64> {
        self.processing_ms
    }

    /// What the agent's former lead measured (a handover), when nothing measured it here:
    /// its processing time, from `samples` answers (at most a few count, so this lead's own
    /// answers soon outweigh it).
    pub fn handed(&mut self, processing_ms: f64, samples: u32) {
        if self.samples > 0 || samples == 0 {
            return;
        }
        let p = processing_ms.clamp(0.0, 3_600_000.0);
        self.processing_ms = Some(p);
        self.samples = samples.min(8);
        self.longest_ms = p;
    }

    /// How many answers measured it.
    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// The longest an answer of its took, milliseconds (0: none measured).
    pub fn longest_ms(&self) -> f64 {
        self.longest_ms
    }

    /// An answer came on time, or an agent sent to did not answer in its window.
    pub fn outcome(&mut self, on_time: bool) {
        self.good = self.good * 0.98 + f32::from(u8::from(on_time));
        self.all = self.all * 0.98 + 1.0;
    }

    pub fn reliability(&self) -> f64 {
        match self.all > 0.0 {
            true => f64::from(self.good / self.all),
            false => 1.0,
        }
    }
}

/// An agent's impedance now: its link and its work together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impedance {
    /// Median delay plus processing scaled by the queue (seed §1.3: latency + processing +
    /// queue), milliseconds.
    pub score_ms: f64,
    /// Coefficient of variation of the ready time (seed §4.1's drift, normalized so its 0.5
    /// threshold means something).
    pub drift: f64,
    pub class: ImpedanceClass,
    /// Link and processing spread together, milliseconds.
    pub std_ms: f64,
    pub link_p50_ms: f64,
}

/// Assesses an agent from its link and work.
pub fn assess(link: &mut Link, work: &Work) -> Impedance {
    let s = link.stats();
    let processing = work.processing_ms.unwrap_or(0.0);
    let score_ms = s.p50_ms + processing * (1.0 + 0.1 * f64::from(work.queue_depth));
    let std_ms = (s.std_ms * s.std_ms + work.variance).sqrt();
    let drift = match score_ms > 0.0 {
        true => std_ms / score_ms.max(DRIFT_FLOOR_MS),
        false => 0.0,
    };
    let class = match work.processing_ms {
        // Never measured: not classed by a guess, but as the link alone says.
        None => classify(s.p50_ms, drift),
        Some(_) => classify(score_ms, drift),
    };
    Impedance {
        score_ms,
        drift,
        class,
        std_ms,
        link_p50_ms: s.p50_ms,
    }
}

/// Anomalies standing now (degraded, unstable).
pub fn standing(z: &Impedance, samples: u32) -> Option<Anomaly> {
    if z.score_ms > DEGRADED_MS {
        Some(Anomaly::Degraded)
    } else if z.drift > UNSTABLE_DRIFT && samples >= 8 {
        Some(Anomaly::Unstable)
    } else {
        None
    }
}

/// Seed §3.1: how long before the target to send, for a payload of `weight`: one-way delay
/// (measured one way, so not halved) + processing × (1 + weight / 2) × (1 + queue / 10) + a
/// buffer of two standard deviations. An agent never measured takes its class's base
/// processing time.
pub fn lead(link: &mut Link, work: &Work, weight: f64) -> Lead {
    let z = assess(link, work);
    lead_of(&z, link, work, weight)
}

/// [`lead`] for an agent already assessed.
pub fn lead_of(z: &Impedance, link: &mut Link, work: &Work, weight: f64) -> Lead {
    let samples = link.stats().samples;
    let processing = work
        .processing_ms
        .unwrap_or_else(|| base_processing_ms(z.class));
    let processing = processing * (1.0 + 0.5 * weight) * (1.0 + 0.1 * f64::from(work.queue_depth));
    let recent = if samples > 0 { 0.2 } else { 0.0 };
    Lead {
        lead_ms: z.link_p50_ms + processing + 2.0 * z.std_ms,
        expected_processing_ms: processing,
        confidence: (0.5 * work.reliability() - 0.3 * z.drift + recent).clamp(0.0, 1.0),
    }
}

/// A predicted lead time (seed §2.4's `compensation_applied`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lead {
    pub lead_ms: f64,
    pub expected_processing_ms: f64,
    pub confidence: f64,
}

/// A cluster's aggregate (seed §4.2's summary, plus classes and the lead histogram).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Aggregate {
    pub mean_ms: f64,
    pub p95_ms: f64,
    pub leads: LeadHistogram,
    pub classes: ClassCounts,
    pub anomalies: u32,
}

/// One active agent's figures, for a cluster's aggregate.
#[derive(Clone, Copy, Debug)]
pub struct Assessed {
    pub impedance: Impedance,
    pub lead_ms: f64,
    pub anomalous: bool,
}

/// Aggregates a cluster's active agents (seed §4.2).
pub fn aggregate(agents: &[Assessed]) -> Aggregate {
    let mut scores = Vec::with_capacity(agents.len());
    let mut a = Aggregate::default();
    for x in agents {
        scores.push(x.impedance.score_ms);
        a.classes[x.impedance.class.index()] += 1;
        a.anomalies += u32::from(x.anomalous);
        a.leads.record(x.impedance.class, x.lead_ms);
    }
    if scores.is_empty() {
        return a;
    }
    a.mean_ms = scores.iter().sum::<f64>() / scores.len() as f64;
    a.p95_ms = p95(&mut scores);
    a
}

/// The 95th percentile (nearest rank) of `v`, 0 when empty.
pub fn p95(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * 0.95).round() as usize]
}

/// Seed §9.2's coordinated shift: at least [`COORDINATED_SHARE`] of a cluster's agents (and
/// at least 3) spiked in one summary period.
pub fn coordinated_shift(spiking: usize, active: usize) -> bool {
    spiking >= 3 && spiking as f64 >= COORDINATED_SHARE * active as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (ready ms, drift) → class.
    #[test]
    fn classes_from_measurements() {
        let table = [
            (12.0, 0.1, ImpedanceClass::A),
            (39.9, 0.0, ImpedanceClass::A),
            (90.0, 0.2, ImpedanceClass::B),
            (220.0, 0.1, ImpedanceClass::C),
            (420.0, 0.1, ImpedanceClass::D),
            (120.0, 0.9, ImpedanceClass::E),
            (5_000.0, 0.9, ImpedanceClass::F),
            (1_000.0, 0.0, ImpedanceClass::F),
        ];
        for (ready, drift, want) in table {
            assert_eq!(classify(ready, drift), want, "{ready} ms, drift {drift}");
        }
    }

    #[test]
    fn link_percentiles_drift_and_spikes() {
        let mut link = Link::default();
        for i in 0..100 {
            assert_eq!(link.record(20.0 + f64::from(i % 10)), None);
        }
        let s = link.stats();
        assert_eq!(s.samples, 100);
        assert!((24.0..=25.0).contains(&s.p50_ms), "{s:?}");
        assert!(s.p95_ms >= 29.0);
        let mut work = Work::default();
        work.record(10.0, s.p50_ms);
        let z = assess(&mut link, &work);
        assert!(z.drift < 0.2);
        assert_eq!(z.class, ImpedanceClass::A);
        // Twice the baseline is a spike, and does not move it.
        let before = link.baseline_ms().unwrap();
        assert_eq!(link.record(80.0), Some(Anomaly::Spike));
        assert_eq!(link.baseline_ms().unwrap(), before);
        assert_eq!(link.record(30.0), None);
        // A tenth of a millisecond doubling on a LAN is no spike.
        let mut lan = Link::default();
        for _ in 0..20 {
            lan.record(0.1);
        }
        assert_eq!(lan.record(0.3), None);
    }

    #[test]
    fn work_spikes_against_its_own_baseline() {
        let mut w = Work::default();
        for _ in 0..20 {
            assert_eq!(w.record(100.0, 10.0), None);
        }
        assert_eq!(w.record(250.0, 10.0), Some(Anomaly::Spike));
        assert_eq!(w.record(120.0, 10.0), None);
    }

    #[test]
    fn lead_follows_the_seed_formula() {
        let mut link = Link::default();
        for _ in 0..10 {
            link.record(50.0);
        }
        let mut work = Work::default();
        work.record(100.0, 50.0);
        work.queue_depth = 2;
        let l = lead(&mut link, &work, 1.0);
        // 50 + 100 × 1.5 × 1.2 + 2 × 0.
        assert!((l.lead_ms - 230.0).abs() < 1e-6, "{l:?}");
        // An agent never measured takes its class's base processing time.
        let mut fresh = Link::default();
        let l = lead(&mut fresh, &Work::default(), 0.0);
        assert_eq!(l.lead_ms, base_processing_ms(ImpedanceClass::A));
        assert_eq!(l.confidence, 0.5);
    }

    #[test]
    fn coordinated_shift_needs_a_share_and_three() {
        assert!(!coordinated_shift(2, 4));
        assert!(coordinated_shift(3, 10));
        assert!(!coordinated_shift(3, 30));
        assert!(coordinated_shift(9, 30));
    }
}
