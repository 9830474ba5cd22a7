//! `qs bench SUITE`: benchmarks that print one JSON object per line:
//! `{"bench":...,"metric":...,"value":...,"unit":...}`.

use qs_sim::bench::{median, placement};
use serde::Serialize;

#[derive(Serialize)]
struct Line<'a> {
    bench: &'a str,
    metric: String,
    value: f64,
    unit: &'a str,
}

fn emit(bench: &str, metric: String, value: f64, unit: &str) {
    let line = Line {
        bench,
        metric,
        value,
        unit,
    };
    println!(
        "{}",
        serde_json::to_string(&line).expect("bench lines always serialize")
    );
}

/// Core placement decisions per second by fleet size, medians of `repeats` runs, then how the
/// cost of one placement grows from the smallest fleet to the largest.
pub fn placement_suite(sizes: &[usize], placements: usize, repeats: usize, seed: u64) {
    let mut cost_ns = Vec::new();
    for &nodes in sizes {
        let runs: Vec<_> = (0..repeats)
            .map(|r| placement(nodes, placements, seed + r as u64))
            .collect();
        let rate = median(runs.iter().map(|r| r.per_second()).collect());
        let ns = median(runs.iter().map(|r| r.ns_per_placement()).collect());
        let msgs = median(runs.iter().map(|r| r.messages_per_placement).collect());
        emit(
            "placement",
            format!("placements_per_s.nodes_{nodes}"),
            rate.round(),
            "1/s",
        );
        emit(
            "placement",
            format!("cost_per_placement.nodes_{nodes}"),
            ns.round(),
            "ns",
        );
        emit(
            "placement",
            format!("messages_per_placement.nodes_{nodes}"),
            msgs,
            "messages",
        );
        cost_ns.push((nodes, ns));
    }
    // Growth from the first size to the last, and from whichever size was cheapest, so a slow
    // small fleet cannot flatter the ratio.
    let Some(&last) = cost_ns.last() else { return };
    let first = cost_ns[0];
    let cheapest = cost_ns
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(first);
    if cost_ns.len() > 1 {
        for from in [first, cheapest] {
            let ratio = (last.1 / from.1 * 100.0).round() / 100.0;
            let metric = format!("cost_growth.nodes_{}_to_{}", from.0, last.0);
            emit("placement", metric, ratio, "x");
        }
    }
}
