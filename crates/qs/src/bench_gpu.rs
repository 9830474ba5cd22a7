//! `qs bench gpu`: the core's GPU scheduler on the Azure two-model hour, every policy side by
//! side in one run (see `qs_sim::gpu`), then the targets of DESIGN.md checked on the
//! headline scenario (load 10 s, utilisation 0.6).

use crate::bench::{emit, ratio, round_to};
use anyhow::{Context, Result};
use qs_core::gpu::PolicyKind;
use qs_sim::gpu::{Latencies, Model, Outcome, Pair, Scenario, Service, Workload, run, trace};
use std::collections::BTreeMap;
use std::path::Path;

/// One policy column: a policy, or the oracle (ours with loads that take no time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Column {
    Policy(PolicyKind),
    Oracle,
}

impl Column {
    const ALL: [Column; 5] = [
        Column::Policy(PolicyKind::Fifo),
        Column::Policy(PolicyKind::LlamaSwap),
        Column::Policy(PolicyKind::Exhaustive),
        Column::Policy(PolicyKind::TippingPoint),
        Column::Oracle,
    ];

    fn name(self) -> &'static str {
        match self {
            Column::Policy(p) => p.name(),
            Column::Oracle => "oracle",
        }
    }
}

pub struct GpuBench<'a> {
    pub traces: &'a Path,
    pub loads_s: &'a [u64],
    pub utilisations: &'a [f64],
    pub slots: &'a [u32],
    pub seed: u64,
}

pub fn gpu_suite(b: &GpuBench) -> Result<()> {
    let read = |file: &str| -> Result<Vec<trace::TraceRequest>> {
        let path = b.traces.join(file);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("reading the trace {}", path.display()))?
            .len();
        if size > trace::MAX_FILE_BYTES {
            anyhow::bail!(
                "{}: {size} bytes is more than the {} a trace may have",
                path.display(),
                trace::MAX_FILE_BYTES
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the trace {}", path.display()))?;
        Ok(trace::parse(&path, &text)?)
    };
    let code = read("AzureLLMInferenceTrace_code.csv")?;
    let conv = read("AzureLLMInferenceTrace_conv.csv")?;
    let work = Workload::merge(&code, &conv);
    emit("gpu", "requests.code".into(), code.len() as f64, "requests");
    emit("gpu", "requests.conv".into(), conv.len() as f64, "requests");
    emit(
        "gpu",
        "alternations".into(),
        work.alternations() as f64,
        "times",
    );
    let clock = std::time::Instant::now();
    let wall = || clock.elapsed().as_secs_f64();
    let mut headline: BTreeMap<(Column, Pair), Outcome> = BTreeMap::new();
    for pair in [Pair::Exclusive, Pair::CoResident, Pair::Tiered] {
        for &slots in b.slots {
            for &load_s in b.loads_s {
                for &utilisation in b.utilisations {
                    for column in Column::ALL {
                        let s = Scenario {
                            policy: match column {
                                Column::Policy(p) => p,
                                Column::Oracle => PolicyKind::TippingPoint,
                            },
                            oracle: column == Column::Oracle,
                            load_ms: load_s * 1000,
                            utilisation,
                            service: Service {
                                prefill_tokens_per_s: 5000.0,
                                decode_tokens_per_s: 90.0,
                                slots,
                            },
                            pair,
                            seed: b.seed,
                        };
                        let o = run(&work, &s, &wall);
                        let key = format!(
                            "{}.{}.slots_{slots}.load_{load_s}s.util_{utilisation}",
                            column.name(),
                            pair.name()
                        );
                        report(&key, &o);
                        if load_s == 10 && (utilisation - 0.6).abs() < 1e-9 && slots == 4 {
                            headline.insert((column, pair), o);
                        }
                    }
                }
            }
        }
    }
    targets(&headline);
    Ok(())
}

fn report(key: &str, o: &Outcome) {
    let line =
        |metric: &str, value: f64, unit: &str| emit("gpu", format!("{key}.{metric}"), value, unit);
    line(
        "swaps_per_hour",
        round_to(o.swaps as f64 * 3600.0 / o.simulated_s.max(1.0), 1),
        "1/h",
    );
    line("swaps", o.swaps as f64, "swaps");
    line(
        "smaller_tier_starts",
        o.smaller_tier_starts as f64,
        "starts",
    );
    line("loading_gpu_s", round_to(o.loading_gpu_s, 1), "s");
    line("lost", o.lost as f64, "requests");
    line("margin_violations", o.margin_violations as f64, "times");
    line("stretch", round_to(o.stretch, 3), "x");
    line("wall_s", round_to(o.wall_s, 3), "s");
    for m in Model::BOTH {
        let Some(l) = o.by_model.get(&m) else {
            continue;
        };
        let name = m.name();
        for (what, samples) in [("wait", &l.wait_us), ("ttft", &l.ttft_us)] {
            let mut sorted = samples.clone();
            for (q, label) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99"), (1.0, "max")] {
                let v = Latencies::quantile(&mut sorted, q) as f64 / 1e6;
                line(&format!("{name}.{what}_{label}"), round_to(v, 2), "s");
            }
        }
        let within = match m {
            Model::Conv => vec![(2, "within_2s"), (10, "within_10s")],
            Model::Code => vec![(120, "within_120s")],
        };
        for (s, label) in within {
            line(
                &format!("{name}.ttft_{label}"),
                round_to(l.share_within(s * 1_000_000), 4),
                "share",
            );
        }
        line(&format!("{name}.refused"), l.refused as f64, "requests");
    }
}

/// The targets of DESIGN.md, each as a figure and whether it is met (1) or not (0).
fn targets(h: &BTreeMap<(Column, Pair), Outcome>) {
    let get = |c: PolicyKind| h.get(&(Column::Policy(c), Pair::Exclusive));
    let (Some(fifo), Some(exh), Some(ours)) = (
        get(PolicyKind::Fifo),
        get(PolicyKind::Exhaustive),
        get(PolicyKind::TippingPoint),
    ) else {
        return;
    };
    let p99 = |o: &Outcome, m: Model| {
        let mut v = o.by_model[&m].ttft_us.clone();
        Latencies::quantile(&mut v, 0.99) as f64 / 1e6
    };
    let max_wait = |o: &Outcome, m: Model| {
        let mut v = o.by_model[&m].wait_us.clone();
        Latencies::quantile(&mut v, 1.0) as f64 / 1e6
    };
    let t = |metric: &str, value: f64, met: bool| {
        emit("gpu", format!("target.{metric}"), value, "x");
        emit(
            "gpu",
            format!("target.{metric}.met"),
            f64::from(u8::from(met)),
            "bool",
        );
    };
    let swaps_vs_fifo = ratio(ours.swaps as f64, fifo.swaps.max(1) as f64);
    t("swaps_vs_fifo", swaps_vs_fifo, swaps_vs_fifo <= 0.2);
    let swaps_vs_exh = ratio(ours.swaps as f64, exh.swaps.max(1) as f64);
    t("swaps_vs_exhaustive", swaps_vs_exh, swaps_vs_exh <= 1.1);
    let ttft = ratio(p99(ours, Model::Conv), p99(exh, Model::Conv).max(1e-9));
    t("interactive_ttft_p99_vs_exhaustive", ttft, ttft <= 0.5);
    let loads = round_to(max_wait(ours, Model::Code) / 10.0, 2);
    t("batch_max_wait_in_loads", loads, loads <= 10.0);
    let coresident: u64 = h
        .iter()
        .filter(|((_, p), _)| *p == Pair::CoResident)
        .map(|(_, o)| o.swaps)
        .sum();
    t("coresident_swaps", coresident as f64, coresident == 0);
    let lost: u64 = h.values().map(|o| o.lost + o.margin_violations).sum();
    t("lost_and_margin_violations", lost as f64, lost == 0);
    let wall = h.values().map(|o| o.wall_s).fold(0.0, f64::max);
    t("hour_wall_s", round_to(wall, 3), wall <= 2.0);
}
