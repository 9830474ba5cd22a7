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

/// `qs bench fleet`: an embedded fleet of `nodes` virtual nodes, each a full agent runtime
/// (its own core, registry, envelopes over the in-memory fabric, group-committed ledger),
/// with the no-op executor double so the figure is the orchestration path, not process
/// start-up. The config is the default one (heartbeats every 250 ms go on during the run);
/// the work is `placements` instances of stateless services of `replicas` each, and the
/// clock stops when the last placement's events are committed to the ledger.
pub fn fleet_suite(nodes: usize, placements: usize, replicas: usize) -> anyhow::Result<()> {
    use qs_agent::fleet::{EmbeddedFleet, FleetOptions};
    use std::time::{Duration, Instant};
    // QS_BENCH_STATE_DIR keeps the run's ledger for inspection (`qs events --ledger`).
    let keep = std::env::var_os("QS_BENCH_STATE_DIR").map(std::path::PathBuf::from);
    let state_dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("qs-bench-fleet-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&state_dir);
    let config = qs_core::Config {
        join_settle_ms: 2_000,
        ..qs_core::Config::default()
    };
    let specs: Vec<qs_wire::NodeSpec> = (0..nodes)
        .map(|i| qs_wire::NodeSpec {
            id: qs_wire::NodeId::new(&format!("v{i}")).expect("generated names are valid"),
            level: (i % 3) as u8,
            labels: Default::default(),
            capacity: qs_wire::Capacity {
                cpu_millicores: 64_000,
                memory_bytes: 256 << 30,
                gpus: vec![],
            },
        })
        .collect();
    let per_service = replicas.max(1);
    let services = placements.div_ceil(per_service);
    let mut doc = String::new();
    for s in 0..services {
        let n = per_service.min(placements - s * per_service);
        doc.push_str(&format!(
            "[service.bench-{s}]\nreplicas = {n}\ncommand = \"no-op\"\nresources = {{ cpu_cores = 0.01, memory_mib = 1 }}\n"
        ));
    }
    let doc = qs_wire::parse_spec("bench.toml", &doc)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (join_s, place_s, placed) = rt.block_on(async {
        let started = Instant::now();
        let fleet = EmbeddedFleet::start(FleetOptions {
            state_dir: state_dir.clone(),
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            nodes: specs,
            config,
            sense_every: Duration::from_secs(3600),
            stop_grace: Duration::from_secs(1),
            seed: 1,
            host: false,
            noop_executor: true,
        })
        .await?;
        let joined = |f: &EmbeddedFleet| {
            f.shared
                .views
                .read()
                .is_ok_and(|v| v.len() == nodes && v.values().all(|n| n.live_peers == nodes))
        };
        while !joined(&fleet) {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "the fleet did not join in 600 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Every node must be ready to steward before the clock starts.
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        let join_s = started.elapsed().as_secs_f64();
        let counters = &fleet.shared.counters;
        let before = counters.placements.get();
        let (events_before, seq_before) =
            (counters.ledger_events.get(), fleet.shared.ledger.next_seq());
        let t0 = Instant::now();
        qs_agent::runtime::put_specs(&fleet.fabric, &doc).await?;
        let target = before + placements as u64;
        while fleet.shared.counters.placements.get() < target {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(600),
                "placements did not finish in 600 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The path ends when the ledger has committed every event of those placements.
        let events = counters.ledger_events.get() - events_before;
        while fleet.shared.ledger.next_seq() - seq_before < events {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(600),
                "the ledger did not commit in 600 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let place_s = t0.elapsed().as_secs_f64();
        let placed = fleet.shared.counters.placements.get() - before;
        fleet.shutdown().await;
        anyhow::Ok((join_s, place_s, placed))
    })?;
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    emit(
        "fleet",
        format!("placements_per_s.nodes_{nodes}"),
        (placed as f64 / place_s).round(),
        "1/s",
    );
    emit(
        "fleet",
        format!("placements.nodes_{nodes}"),
        placed as f64,
        "placements",
    );
    emit(
        "fleet",
        format!("join_time.nodes_{nodes}"),
        (join_s * 100.0).round() / 100.0,
        "s",
    );
    let rss = idle_rss_kib()?;
    emit(
        "fleet",
        "agent_idle_rss".into(),
        (rss as f64 / 1024.0 * 10.0).round() / 10.0,
        "MiB",
    );
    Ok(())
}

/// Starts `qs agent` (one real node, host sensing) on a free port, waits until it answers,
/// lets it idle, and reads its resident memory.
fn idle_rss_kib() -> anyhow::Result<u64> {
    use std::time::{Duration, Instant};
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("qs-bench-rss-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new(exe)
        .args([
            "agent",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
        ])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let api = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let result = (|| {
        while crate::client::request(&api, "GET", "/health", None, Duration::from_secs(2)).is_err()
        {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "qs agent did not answer in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(3)); // idle: a few heartbeats and sensor samples
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{}/status", child.id()))
    })();
    // SAFETY: signalling our own child: SIGTERM, so the agent stops cleanly.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
