//! Level weight, composite weight and the admission gate (seed 000 §5, §7).

use qs_wire::Composite;

/// γ₁, the imaginary part of the first non-trivial zero of the Riemann zeta function; the
/// seed's "adelic" constant.
pub const GAMMA_1: f64 = 14.134725141734693;

/// `γ₁ / (level + 1)`: level 0 (highest authority) weighs most.
pub fn level_weight(level: u8) -> f64 {
    GAMMA_1 / (f64::from(level) + 1.0)
}

/// `composite = (1 − pressure) × vram_free × cpu_free × level_weight`.
///
/// `vram_free` is `None` for workloads that need no GPU: the factor is then 1, so CPU-only
/// workloads do not zero out on nodes without GPUs. Fractions are clamped to `0.0..=1.0`.
pub fn composite(pressure: f64, vram_free: Option<f64>, cpu_free: f64, level: u8) -> Composite {
    let pressure = clamp01(pressure);
    let vram_free = vram_free.map_or(1.0, clamp01);
    let cpu_free = clamp01(cpu_free);
    let level_weight = level_weight(level);
    Composite {
        pressure,
        vram_free,
        cpu_free,
        level_weight,
        value: (1.0 - pressure) * vram_free * cpu_free * level_weight,
    }
}

fn clamp01(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// The admission gate: a composite must exceed `min` (default 0.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gate {
    pub min: f64,
}

impl Gate {
    pub fn admits(&self, c: &Composite) -> bool {
        c.value > self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATE: Gate = Gate { min: 0.3 };

    /// Seed 000 §5: the seven nodes and the weight of each, to three decimals.
    #[test]
    fn level_weights_of_the_seed_fleet() {
        let fleet = [
            ("msi01", 0, "14.135"),
            ("forge", 1, "7.067"),
            ("msclo", 0, "14.135"),
            ("yone", 1, "7.067"),
            ("pcdev", 2, "4.712"),
            ("lounge", 2, "4.712"),
            ("lilo", 1, "7.067"),
        ];
        for (node, level, want) in fleet {
            assert_eq!(format!("{:.3}", level_weight(level)), want, "{node}");
        }
        // The seed truncates where we round: 14.134 and 4.711 are the same weights.
        assert_eq!((level_weight(0) * 1000.0).trunc(), 14134.0);
        assert_eq!((level_weight(2) * 1000.0).trunc(), 4711.0);
    }

    /// (pressure, vram free, cpu free, level) → (composite to 3 decimals, passes the gate)
    fn check(pressure: f64, vram: Option<f64>, cpu: f64, level: u8, want: &str, passes: bool) {
        let c = composite(pressure, vram, cpu, level);
        assert_eq!(format!("{:.3}", c.value), want, "{c}");
        assert_eq!(GATE.admits(&c), passes, "{c}");
    }

    #[test]
    fn composites_and_the_gate() {
        // Seed 000 §7, forge: 0.8 × 0.6 × 0.7 × 7.067 = 2.375, passes.
        check(0.2, Some(0.6), 0.7, 1, "2.375", true);
        // CPU-only workload on a node without GPUs: the VRAM factor is 1, not 0.
        check(0.0, None, 0.5, 0, "7.067", true);
        // Exactly at the gate is refused; just over passes.
        check(0.0, None, 0.3 / GAMMA_1, 0, "0.300", false);
        check(0.0, None, 0.301 / GAMMA_1, 0, "0.301", true);
        // Full VRAM, full CPU or near-certain failure all refuse.
        check(0.0, Some(0.0), 1.0, 0, "0.000", false);
        check(0.0, Some(1.0), 0.0, 0, "0.000", false);
        check(0.99, Some(1.0), 1.0, 2, "0.047", false);
        // Out-of-range inputs are clamped, never amplify.
        check(-1.0, Some(2.0), 1.5, 7, "1.767", true);
    }
}
