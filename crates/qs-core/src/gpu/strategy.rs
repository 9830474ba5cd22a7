//! Where a model runs on a node and at which size: the [`Strategy`] that picks a GPU and a
//! tier when a model is declared (seed 003's strategies). The [`super::SwapPolicy`] of each
//! GPU then decides when it is loaded.
//!
//! Tiering: a model's tiers go largest first; a strategy takes the largest that fits the
//! GPU's budget beside what is already placed there to stay (the resident model), so a
//! 70B that cannot fit runs as its 8B.

/// A GPU as a strategy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuSlot {
    /// VRAM a swapped runtime may use: the GPU's less its reserved margin.
    pub budget_bytes: u64,
    /// VRAM of the largest tier of each model already placed on it (what it may be asked
    /// to hold at once, one at a time or beside each other).
    pub placed_bytes: u64,
    /// Models already placed on it.
    pub placed: usize,
    /// Power draw and limit (NVML, or hwmon), when known.
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    pub temperature_c: Option<f64>,
}

/// A model's place: the index of its GPU among the node's and of its tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub gpu: usize,
    pub tier: usize,
}

/// Picks a GPU and a tier for a model whose tiers need `tiers_vram` (largest first).
pub trait Strategy: Send + Sync {
    fn name(&self) -> &'static str;
    fn place(&self, tiers_vram: &[u64], gpus: &[GpuSlot]) -> Option<Placement>;
}

/// The largest tier of `tiers_vram` that fits `budget`.
fn largest_fitting(tiers_vram: &[u64], budget: u64) -> Option<usize> {
    tiers_vram.iter().position(|v| *v <= budget)
}

/// The default (`tipping-point`): every model on the first GPU that holds a tier of it,
/// where the tipping point decides the swaps. One GPU, or several used one after the other.
#[derive(Clone, Copy, Debug, Default)]
pub struct FirstGpu;

impl Strategy for FirstGpu {
    fn name(&self) -> &'static str {
        "tipping-point"
    }
    fn place(&self, tiers_vram: &[u64], gpus: &[GpuSlot]) -> Option<Placement> {
        gpus.iter().enumerate().find_map(|(gpu, g)| {
            largest_fitting(tiers_vram, g.budget_bytes).map(|tier| Placement { gpu, tier })
        })
    }
}

/// Multi-GPU: `spread` puts each model on the GPU with the least placed on it (fewer swaps,
/// more models warm at once); otherwise pack: on the GPU with the most room left after it
/// where it fits beside what is placed, keeping other GPUs whole for large models.
#[derive(Clone, Copy, Debug)]
pub struct MultiGpu {
    pub spread: bool,
}

impl Strategy for MultiGpu {
    fn name(&self) -> &'static str {
        if self.spread { "spread" } else { "pack" }
    }
    fn place(&self, tiers_vram: &[u64], gpus: &[GpuSlot]) -> Option<Placement> {
        let fits = gpus.iter().enumerate().filter_map(|(gpu, g)| {
            largest_fitting(tiers_vram, g.budget_bytes).map(|tier| (gpu, tier, g))
        });
        if self.spread {
            // The largest tier first, then the emptiest GPU, then the lowest index.
            return fits
                .min_by_key(|(gpu, tier, g)| (*tier, g.placed_bytes, *gpu))
                .map(|(gpu, tier, _)| Placement { gpu, tier });
        }
        // Pack: where it fits beside what is placed, on the fullest such GPU; else as the
        // default does.
        let beside = gpus.iter().enumerate().filter_map(|(gpu, g)| {
            let room = g.budget_bytes.saturating_sub(g.placed_bytes);
            largest_fitting(tiers_vram, room).map(|tier| (gpu, tier, room))
        });
        beside
            .min_by_key(|(gpu, tier, room)| (*tier, *room, *gpu))
            .map(|(gpu, tier, _)| Placement { gpu, tier })
            .or_else(|| FirstGpu.place(tiers_vram, gpus))
    }
}

/// Energy-aware: GPUs that are hot or near their power limit are used last, and on one past
/// `hot_c` (or above `power_fraction` of its limit) a model takes its next smaller tier when
/// it has one: less memory traffic, less heat. Without readings it behaves as the default.
#[derive(Clone, Copy, Debug)]
pub struct EnergyAware {
    pub hot_c: f64,
    pub power_fraction: f64,
}

impl Default for EnergyAware {
    fn default() -> Self {
        EnergyAware {
            hot_c: 80.0,
            power_fraction: 0.9,
        }
    }
}

impl EnergyAware {
    fn strained(&self, g: &GpuSlot) -> bool {
        let hot = g.temperature_c.is_some_and(|t| t >= self.hot_c);
        let power = match (g.power_watts, g.power_limit_watts) {
            (Some(p), Some(l)) if l > 0.0 => p / l >= self.power_fraction,
            _ => false,
        };
        hot || power
    }
}

impl Strategy for EnergyAware {
    fn name(&self) -> &'static str {
        "energy-aware"
    }
    fn place(&self, tiers_vram: &[u64], gpus: &[GpuSlot]) -> Option<Placement> {
        gpus.iter()
            .enumerate()
            .filter_map(|(gpu, g)| {
                let mut tier = largest_fitting(tiers_vram, g.budget_bytes)?;
                let strained = self.strained(g);
                if strained && tier + 1 < tiers_vram.len() {
                    tier += 1;
                }
                // Cool before hot; then the larger tier; then the cooler one.
                let heat = g.temperature_c.unwrap_or(0.0).max(0.0) as u64;
                Some((strained, tier, heat, gpu))
            })
            .min()
            .map(|(_, tier, _, gpu)| Placement { gpu, tier })
    }
}

/// Where a resident model goes: the first GPU whose free reserved margin holds a tier of
/// it, at the largest such tier. `margins_free` is each GPU's margin less what a resident
/// model already holds there.
pub fn place_resident(tiers_vram: &[u64], margins_free: &[u64]) -> Option<Placement> {
    margins_free.iter().enumerate().find_map(|(gpu, free)| {
        largest_fitting(tiers_vram, *free).map(|tier| Placement { gpu, tier })
    })
}

/// Whether two runtimes of `a_bytes` and `b_bytes` cannot be on a GPU of `budget_bytes` at
/// once (so only one of them runs at a time: systemd's `Conflicts=`).
pub fn conflicts(a_bytes: u64, b_bytes: u64, budget_bytes: u64) -> bool {
    a_bytes.saturating_add(b_bytes) > budget_bytes
}

/// The strategies by name, for configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrategyKind {
    TippingPoint,
    Spread,
    Pack,
    EnergyAware,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 4] = [
        StrategyKind::TippingPoint,
        StrategyKind::Spread,
        StrategyKind::Pack,
        StrategyKind::EnergyAware,
    ];

    pub fn build(self) -> Box<dyn Strategy> {
        match self {
            StrategyKind::TippingPoint => Box::new(FirstGpu),
            StrategyKind::Spread => Box::new(MultiGpu { spread: true }),
            StrategyKind::Pack => Box::new(MultiGpu { spread: false }),
            StrategyKind::EnergyAware => Box::new(EnergyAware::default()),
        }
    }

    pub fn name(self) -> &'static str {
        self.build().name()
    }

    pub fn named(name: &str) -> Option<StrategyKind> {
        StrategyKind::ALL.into_iter().find(|s| s.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpu(budget_gib: u64, placed_gib: u64) -> GpuSlot {
        GpuSlot {
            budget_bytes: budget_gib * GIB,
            placed_bytes: placed_gib * GIB,
            placed: usize::from(placed_gib > 0),
            power_watts: None,
            power_limit_watts: None,
            temperature_c: None,
        }
    }

    /// 70B then 8B.
    const LLAMA: [u64; 2] = [40 * GIB, 6 * GIB];

    #[test]
    fn each_strategy_places_as_it_says() {
        let hot = GpuSlot {
            temperature_c: Some(85.0),
            ..gpu(80, 0)
        };
        let cool = GpuSlot {
            temperature_c: Some(50.0),
            ..gpu(22, 0)
        };
        // (strategy, GPUs, where the 70B/8B model goes)
        let table: Vec<(StrategyKind, Vec<GpuSlot>, Option<Placement>)> = vec![
            // One 24 GB GPU: the 70B does not fit, the 8B does (tiering).
            (
                StrategyKind::TippingPoint,
                vec![gpu(22, 0)],
                Some(Placement { gpu: 0, tier: 1 }),
            ),
            // Nothing fits.
            (StrategyKind::TippingPoint, vec![gpu(4, 0)], None),
            // The first GPU that holds a tier, though a later one holds the 70B.
            (
                StrategyKind::TippingPoint,
                vec![gpu(22, 0), gpu(80, 0)],
                Some(Placement { gpu: 0, tier: 1 }),
            ),
            // Spread: the largest tier first, then the emptiest GPU.
            (
                StrategyKind::Spread,
                vec![gpu(22, 0), gpu(80, 30), gpu(80, 10)],
                Some(Placement { gpu: 2, tier: 0 }),
            ),
            // Pack: beside what is placed, on the fullest GPU it fits.
            (
                StrategyKind::Pack,
                vec![gpu(80, 0), gpu(80, 30)],
                Some(Placement { gpu: 1, tier: 0 }),
            ),
            // Pack with no room beside anything: as the default.
            (
                StrategyKind::Pack,
                vec![gpu(22, 20)],
                Some(Placement { gpu: 0, tier: 1 }),
            ),
            // Energy-aware: the cool GPU before the hot one, at the size that fits there.
            (
                StrategyKind::EnergyAware,
                vec![hot.clone(), cool.clone()],
                Some(Placement { gpu: 1, tier: 1 }),
            ),
            // Only a hot GPU: used, at the smaller tier.
            (
                StrategyKind::EnergyAware,
                vec![hot],
                Some(Placement { gpu: 0, tier: 1 }),
            ),
            // Without readings: as the default.
            (
                StrategyKind::EnergyAware,
                vec![gpu(80, 0), gpu(80, 0)],
                Some(Placement { gpu: 0, tier: 0 }),
            ),
        ];
        for (kind, gpus, want) in table {
            assert_eq!(kind.build().place(&LLAMA, &gpus), want, "{}", kind.name());
        }
    }

    #[test]
    fn near_its_power_limit_a_gpu_takes_the_smaller_tier() {
        let g = GpuSlot {
            power_watts: Some(330.0),
            power_limit_watts: Some(350.0),
            ..gpu(80, 0)
        };
        let p = EnergyAware::default().place(&LLAMA, &[g]);
        assert_eq!(p, Some(Placement { gpu: 0, tier: 1 }));
    }

    #[test]
    fn a_resident_model_goes_where_a_margin_holds_it() {
        let small = [3 * GIB, GIB];
        assert_eq!(
            place_resident(&small, &[0, GIB + GIB / 2]),
            Some(Placement { gpu: 1, tier: 1 })
        );
        assert_eq!(place_resident(&small, &[GIB / 2]), None);
    }

    #[test]
    fn strategies_are_found_by_name() {
        for k in StrategyKind::ALL {
            assert_eq!(StrategyKind::named(k.name()), Some(k));
        }
        assert_eq!(StrategyKind::named("best"), None);
    }
}
