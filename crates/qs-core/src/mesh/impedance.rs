//! Impedance (seed §1.3, §2.2–2.3, Part 4): how long an agent takes to be ready after it is
//! sent something, measured and never declared.
//!
//! A cluster lead keeps one [`Profile`] per agent of its cluster. It records the one-way
//! delay of every beat and answer it hears (the seed's `now − created_at`), the processing
//! time its host measured, and the queue depth; from them come the median and 95th
//! percentile, the drift (the coefficient of variation of the delay), a slow baseline, the
//! agent's class and its predicted lead time. Where the seed leaves a rule undefined, the
//! choice is written next to the code.

use qs_wire::mesh::{ClassCounts, ImpedanceClass};

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

/// One agent's profile, as its cluster lead measures it.
#[derive(Clone, Debug)]
pub struct Profile {
    ring: [f32; SAMPLES],
    len: u8,
    next: u8,
    /// Processing time the host measured (median), milliseconds; `None` before any.
    pub processing_ms: Option<f64>,
    pub queue_depth: u32,
    baseline_ms: f64,
    baseline_samples: u32,
    /// Answers on time and all answers, decayed: the reliability.
    good: f32,
    all: f32,
    stats: Option<Stats>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            ring: [0.0; SAMPLES],
            len: 0,
            next: 0,
            processing_ms: None,
            queue_depth: 0,
            baseline_ms: 0.0,
            baseline_samples: 0,
            good: 0.0,
            all: 0.0,
            stats: None,
        }
    }
}

impl Profile {
    /// A one-way delay sample. Returns a spike if the score it makes is over twice the
    /// baseline; spikes do not move the baseline (seed §9.2: a coordinated shift must not
    /// teach the registry).
    pub fn record_delay(&mut self, delay_ms: f64) -> Option<Anomaly> {
        let delay_ms = delay_ms.clamp(0.0, 3_600_000.0);
        self.ring[self.next as usize] = delay_ms as f32;
        self.next = ((self.next as usize + 1) % SAMPLES) as u8;
        self.len = (self.len as usize + 1).min(SAMPLES) as u8;
        self.stats = None;
        let score = delay_ms + self.processing();
        let spike = self.baseline_samples >= BASELINE_AFTER
            && score > SPIKE_FACTOR * self.baseline_ms.max(1.0);
        if spike {
            return Some(Anomaly::Spike);
        }
        self.baseline_samples = self.baseline_samples.saturating_add(1);
        self.baseline_ms = match self.baseline_samples {
            1 => score,
            _ => self.baseline_ms + BASELINE_ALPHA * (score - self.baseline_ms),
        };
        None
    }

    /// An answer came (`on_time`) or an agent sent to did not answer in its window.
    pub fn record_outcome(&mut self, on_time: bool) {
        self.good = self.good * 0.98 + f32::from(u8::from(on_time));
        self.all = self.all * 0.98 + 1.0;
    }

    pub fn reliability(&self) -> f64 {
        match self.all > 0.0 {
            true => f64::from(self.good / self.all),
            false => 1.0,
        }
    }

    pub fn baseline_ms(&self) -> Option<f64> {
        (self.baseline_samples >= BASELINE_AFTER).then_some(self.baseline_ms)
    }

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

    fn processing(&self) -> f64 {
        self.processing_ms.unwrap_or(0.0)
    }

    /// The coefficient of variation of the delay (seed §4.1's drift, normalized so its 0.5
    /// threshold means something).
    pub fn drift(&mut self) -> f64 {
        let s = self.stats();
        match s.p50_ms > 0.0 {
            true => s.std_ms / s.p50_ms.max(1.0),
            false => 0.0,
        }
    }

    /// The impedance score: median delay plus processing, scaled by the queue (seed §1.3:
    /// latency + processing + queue), milliseconds.
    pub fn score_ms(&mut self) -> f64 {
        let s = self.stats();
        s.p50_ms + self.processing() * (1.0 + 0.1 * f64::from(self.queue_depth))
    }

    pub fn class(&mut self) -> ImpedanceClass {
        let drift = self.drift();
        classify(self.score_ms(), drift)
    }

    /// Anomalies standing now (degraded, unstable).
    pub fn standing(&mut self) -> Option<Anomaly> {
        if self.score_ms() > DEGRADED_MS {
            Some(Anomaly::Degraded)
        } else if self.drift() > UNSTABLE_DRIFT && self.stats().samples >= 8 {
            Some(Anomaly::Unstable)
        } else {
            None
        }
    }

    /// Seed §3.1: how long before the target to send, for a payload of `weight`:
    /// one-way delay (measured one way, so not halved) + processing × (1 + weight / 2) ×
    /// (1 + queue / 10) + a buffer of two standard deviations of the delay.
    pub fn lead(&mut self, weight: f64) -> Lead {
        let s = self.stats();
        let class = self.class();
        let processing = self
            .processing_ms
            .unwrap_or_else(|| base_processing_ms(class));
        let processing =
            processing * (1.0 + 0.5 * weight) * (1.0 + 0.1 * f64::from(self.queue_depth));
        let buffer = 2.0 * s.std_ms;
        let drift = self.drift();
        let recent = if s.samples > 0 { 0.2 } else { 0.0 };
        Lead {
            lead_ms: s.p50_ms + processing + buffer,
            expected_processing_ms: processing,
            confidence: (0.5 * self.reliability() - 0.3 * drift + recent).clamp(0.0, 1.0),
        }
    }
}

/// A predicted lead time (seed §2.4's `compensation_applied`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lead {
    pub lead_ms: f64,
    pub expected_processing_ms: f64,
    pub confidence: f64,
}

/// A cluster's aggregate (seed §4.2's summary, plus classes and the 95th percentile lead).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Aggregate {
    pub mean_ms: f64,
    pub p95_ms: f64,
    pub lead_p95_ms: f64,
    pub classes: ClassCounts,
    pub anomalies: u32,
}

/// Aggregates scores and leads of a cluster's active agents.
pub fn aggregate<'a>(profiles: impl Iterator<Item = &'a mut Profile>) -> Aggregate {
    let mut scores = Vec::new();
    let mut leads = Vec::new();
    let mut a = Aggregate::default();
    for p in profiles {
        let score = p.score_ms();
        scores.push(score);
        a.classes[p.class().index()] += 1;
        if p.standing().is_some() {
            a.anomalies += 1;
        }
        if p.class() != ImpedanceClass::F {
            leads.push(p.lead(0.0).lead_ms);
        }
    }
    a.lead_p95_ms = p95(&mut leads);
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
    fn profile_percentiles_drift_and_spikes() {
        let mut p = Profile::default();
        p.processing_ms = Some(10.0);
        for i in 0..100 {
            assert_eq!(p.record_delay(20.0 + f64::from(i % 10)), None);
        }
        let s = p.stats();
        assert_eq!(s.samples, 100);
        assert!((24.0..=25.0).contains(&s.p50_ms), "{s:?}");
        assert!(s.p95_ms >= 29.0);
        assert!(p.drift() < 0.2);
        assert_eq!(p.class(), ImpedanceClass::A);
        // Twice the baseline (about 35 ms of score) is a spike, and does not move it.
        let before = p.baseline_ms().unwrap();
        assert_eq!(p.record_delay(200.0), Some(Anomaly::Spike));
        assert_eq!(p.baseline_ms().unwrap(), before);
        assert_eq!(p.record_delay(30.0), None);
    }

    #[test]
    fn lead_follows_the_seed_formula() {
        let mut p = Profile::default();
        for _ in 0..10 {
            p.record_delay(50.0);
        }
        p.processing_ms = Some(100.0);
        p.queue_depth = 2;
        let lead = p.lead(1.0);
        // 50 + 100 × 1.5 × 1.2 + 2 × 0.
        assert!((lead.lead_ms - 230.0).abs() < 1e-6, "{lead:?}");
        // An agent never measured takes its class's base processing time.
        let mut fresh = Profile::default();
        assert_eq!(
            fresh.lead(0.0).lead_ms,
            base_processing_ms(ImpedanceClass::A)
        );
        assert_eq!(fresh.lead(0.0).confidence, 0.5);
    }

    #[test]
    fn coordinated_shift_needs_a_share_and_three() {
        assert!(!coordinated_shift(2, 4));
        assert!(coordinated_shift(3, 10));
        assert!(!coordinated_shift(3, 30));
        assert!(coordinated_shift(9, 30));
    }
}
