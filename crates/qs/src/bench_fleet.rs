//! `qs bench fleet`: placements through a whole embedded fleet of agent runtimes, on the
//! in-memory fabric or through a real nats-server (`--nats`), with placement latency next to
//! the raw NATS round trip.

use crate::bench::{bench_fleet, emit, idle_rss_kib, ratio, round_to};
use qs_fabric::nats::Traffic;

/// `qs bench fleet`: an embedded fleet of `nodes` virtual nodes, each a full agent runtime
/// (its own core, registry, envelopes over the in-memory fabric, group-committed ledger),
/// with the no-op executor double so the figure is the orchestration path, not process
/// start-up. The config is the default one (heartbeats every 250 ms go on during the run);
/// the work is `placements` instances of stateless services of `replicas` each, and the
/// clock stops when the last placement's events are committed to the ledger.
pub fn fleet_suite(
    nodes: usize,
    placements: usize,
    replicas: usize,
    nats: bool,
) -> anyhow::Result<()> {
    use qs_agent::fleet::EmbeddedFleet;
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
    let settle = std::time::Duration::from_millis(config.join_settle_ms);
    let opts = bench_fleet(&state_dir, specs, config.clone(), false);
    let run = if nats {
        let server = qs_fabric::nats_server::NatsServer::start()?;
        let url = server.url();
        rt.block_on(async {
            let fabric = qs_fabric::nats::NatsFabric::connect(&url, "bench").await?;
            let rtt_us = nats_round_trips(&url, RAW_ROUND_TRIPS).await?;
            // Directed sends against a gather, the two ways of asking for capacity, on this
            // server before the fleet loads it.
            // As the agent asks: every other node in a small fleet, a sample in a large one.
            let asked = if nodes <= config.query_all_below + 1 {
                nodes.saturating_sub(1).max(1)
            } else {
                config.query_sample.min(nodes)
            };
            let rounds =
                qs_fabric::query_rounds::query_rounds(&url, nodes, asked, QUERY_ROUNDS).await?;
            let counted = fabric.clone();
            let fleet = EmbeddedFleet::start_on(opts, fabric).await?;
            let traffic = move || Some(counted.traffic());
            let mut run =
                place_all(fleet, nodes, placements, &doc, &traffic, settle, Some(&url)).await?;
            run.rtt_us = Some(rtt_us);
            run.query_rounds = Some(rounds);
            anyhow::Ok(run)
        })?
    } else {
        rt.block_on(async {
            let fleet = EmbeddedFleet::start(opts).await?;
            place_all(fleet, nodes, placements, &doc, &|| None, settle, None).await
        })?
    };
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    let fabric = if nats { "nats." } else { "" };
    emit(
        "fleet",
        format!("{fabric}placements_per_s.nodes_{nodes}"),
        (run.placed as f64 / run.place_s).round(),
        "1/s",
    );
    emit(
        "fleet",
        format!("{fabric}placements.nodes_{nodes}"),
        run.placed as f64,
        "placements",
    );
    emit(
        "fleet",
        format!("{fabric}nodes_declared_dead.nodes_{nodes}"),
        run.dead as f64,
        "nodes",
    );
    emit(
        "fleet",
        format!("{fabric}join_time.nodes_{nodes}"),
        round_to(run.join_s, 2),
        "s",
    );
    let latency = run.latency_us;
    let quantile = |q: f64| quantile_ms(&latency, q);
    emit(
        "fleet",
        format!("{fabric}placement_latency_p50.nodes_{nodes}"),
        quantile(0.50),
        "ms",
    );
    emit(
        "fleet",
        format!("{fabric}placement_latency_p99.nodes_{nodes}"),
        quantile(0.99),
        "ms",
    );
    if let Some(rtt) = &run.rtt_us {
        let p50 = quantile_ms(rtt, 0.5);
        emit("fleet", "nats.raw_round_trip_p50".into(), p50, "ms");
        emit(
            "fleet",
            format!("nats.placement_p50_over_round_trip.nodes_{nodes}"),
            ratio(quantile(0.50), p50),
            "ratio",
        );
    }
    if let Some(rtt) = &run.beside_fleet_rtt_us {
        let p50 = quantile_ms(rtt, 0.5);
        emit(
            "fleet",
            format!("nats.raw_round_trip_p50.beside_fleet.nodes_{nodes}"),
            p50,
            "ms",
        );
        emit(
            "fleet",
            format!("nats.placement_p50_over_round_trip_beside_fleet.nodes_{nodes}"),
            ratio(quantile(0.50), p50),
            "ratio",
        );
    }
    if let Some((t, secs)) = run.idle {
        emit(
            "fleet",
            format!("nats.idle_messages_per_s.nodes_{nodes}"),
            ((t.messages_in + t.messages_out) as f64 / secs).round(),
            "1/s",
        );
        emit(
            "fleet",
            format!("nats.idle_bytes_per_s.nodes_{nodes}"),
            ((t.bytes_in + t.bytes_out) as f64 / secs).round(),
            "B/s",
        );
    }
    // Everything the connection carried during the burst, heartbeats included (the idle
    // figures above say how much of it they are).
    if let Some(t) = run.placing {
        let per = |n: u64| round_to(n as f64 / run.placed.max(1) as f64, 1);
        emit(
            "fleet",
            format!("nats.messages_per_placement.nodes_{nodes}"),
            per(t.messages_in + t.messages_out),
            "messages",
        );
        emit(
            "fleet",
            format!("nats.bytes_per_placement.nodes_{nodes}"),
            per(t.bytes_in + t.bytes_out),
            "B",
        );
    }
    // The same two steps with bare NATS clients on the idle server: a directed round to the
    // nodes a steward asks, then one round trip (the dispatch), as the sum of their p50s.
    // What a placement would take if the agents cost nothing.
    if let (Some(rounds), Some(rtt)) = (&run.query_rounds, &run.rtt_us) {
        let asked = rounds.asked;
        let floor = quantile_ms(&rounds.directed_us, 0.5) + quantile_ms(rtt, 0.5);
        emit(
            "fleet",
            format!("nats.raw_floor_sum_of_p50s.asked_{asked}.nodes_{nodes}"),
            round_to(floor, 3),
            "ms",
        );
        emit(
            "fleet",
            format!("nats.placement_p50_over_raw_floor.nodes_{nodes}"),
            ratio(quantile(0.50), floor),
            "ratio",
        );
    }
    if let Some(rounds) = run.query_rounds {
        let asked = rounds.asked;
        let ms = |v: Vec<u64>| quantile_ms(&v, 0.5);
        let per_s = |v: &[u64]| (v.len() as f64 / (v.iter().sum::<u64>() as f64 / 1e6)).round();
        emit(
            "fleet",
            format!("nats.query_rounds_per_s.directed.asked_{asked}.nodes_{nodes}"),
            per_s(&rounds.directed_us),
            "1/s",
        );
        emit(
            "fleet",
            format!("nats.query_rounds_per_s.gather_all.nodes_{nodes}"),
            per_s(&rounds.gather_all_us),
            "1/s",
        );
        emit(
            "fleet",
            format!("nats.query_round_p50.directed.asked_{asked}.nodes_{nodes}"),
            ms(rounds.directed_us),
            "ms",
        );
        emit(
            "fleet",
            format!("nats.query_round_p50.gather_first_{asked}.nodes_{nodes}"),
            ms(rounds.gather_us),
            "ms",
        );
        emit(
            "fleet",
            format!("nats.query_round_p50.gather_all.nodes_{nodes}"),
            ms(rounds.gather_all_us),
            "ms",
        );
    }
    if !nats {
        let rss = idle_rss_kib()?;
        emit(
            "fleet",
            "agent_idle_rss".into(),
            round_to(rss as f64 / 1024.0, 1),
            "MiB",
        );
    }
    Ok(())
}

/// The `q` quantile of `us` (microseconds), in milliseconds; 0 when empty.
fn quantile_ms(us: &[u64], q: f64) -> f64 {
    let mut sorted = us.to_vec();
    sorted.sort_unstable();
    let at = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(at).map_or(0.0, |us| *us as f64 / 1000.0)
}

/// Placements timed one at a time for the latency figures.
const LATENCY_SAMPLES: usize = 1_000;
/// Raw request-reply round trips timed for each of the two round-trip figures.
const RAW_ROUND_TRIPS: usize = 1_000;
/// Capacity-query rounds of each kind (directed, gather) timed through NATS.
const QUERY_ROUNDS: usize = 300;

/// What one fleet run measured.
struct FleetRun {
    join_s: f64,
    place_s: f64,
    placed: u64,
    dead: u64,
    /// Latency (sense to placed, from the ledger) of placements made one at a time, each
    /// through a capacity query and a dispatch to another node.
    latency_us: Vec<u64>,
    /// Raw NATS round trips of the same run on the idle server before the fleet starts, when
    /// on NATS.
    rtt_us: Option<Vec<u64>>,
    /// The same, through the bench's own runtime beside the running fleet (its heartbeats
    /// and timers) right after the latency samples, when on NATS.
    beside_fleet_rtt_us: Option<Vec<u64>>,
    /// Capacity-query rounds, directed and gathered, asking this many nodes, when on NATS.
    query_rounds: Option<qs_fabric::query_rounds::QueryRounds>,
    /// What the fleet's connection carried while only heartbeats flowed, and for how long
    /// (seconds), when on NATS.
    idle: Option<(Traffic, f64)>,
    /// What it carried while placing, when on NATS.
    placing: Option<Traffic>,
}

/// Joins the fleet, applies `doc`, waits until `placements` are placed and their events
/// committed; shuts the fleet down.
async fn place_all<F: qs_fabric::Fabric>(
    fleet: qs_agent::fleet::EmbeddedFleet<F>,
    nodes: usize,
    placements: usize,
    doc: &qs_wire::SpecDocument,
    traffic: &dyn Fn() -> Option<Traffic>,
    settle: std::time::Duration,
    nats_url: Option<&str>,
) -> anyhow::Result<FleetRun> {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let joined = |f: &qs_agent::fleet::EmbeddedFleet<F>| {
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
    let join_s = started.elapsed().as_secs_f64();
    // A node stewards once `join_settle_ms` has passed since it joined: the clock starts after
    // that; meanwhile only heartbeats flow.
    let idle_from = (traffic(), Instant::now());
    tokio::time::sleep(settle).await;
    let idle = traffic()
        .zip(idle_from.0)
        .map(|(now, then)| (now.since(then), idle_from.1.elapsed().as_secs_f64()));
    let traffic_before = traffic();
    let counters = &fleet.shared.counters;
    let before = counters.placements.get();
    let (events_before, seq_before) =
        (counters.ledger_events.get(), fleet.shared.ledger.next_seq());
    let t0 = Instant::now();
    qs_agent::specs::put_specs(&fleet.fabric, doc).await?;
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
    let placing = traffic()
        .zip(traffic_before)
        .map(|(now, then)| now.since(then));
    // Latency alone: one service at a time, each waited for, on the fleet now busy with what
    // it placed (a burst's latencies would measure its queue).
    let seq_latency = fleet.shared.ledger.next_seq();
    for i in 0..LATENCY_SAMPLES {
        let one = qs_wire::parse_spec(
            "latency.toml",
            &format!(
                "[service.latency-{i}]\nreplicas = 2\ncommand = \"no-op\"\nresources = {{ cpu_cores = 0.01, memory_mib = 1 }}\n"
            ),
        )?;
        let before = counters.placements.get();
        qs_agent::specs::put_specs(&fleet.fabric, &one).await?;
        while counters.placements.get() < before + 2 {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(600),
                "a latency sample did not finish in 600 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // The raw round trip again, now beside the running fleet (its heartbeats and timers, on
    // the same runtime and cores) rather than on an idle server.
    let beside_fleet_rtt_us = match nats_url {
        Some(url) => Some(nats_round_trips(url, RAW_ROUND_TRIPS).await?),
        None => None,
    };
    let dead = fleet.shared.counters.nodes_declared_dead.get();
    let mut latency_us = Vec::new();
    let mut from = seq_latency;
    loop {
        let batch = fleet.shared.ledger.read(from, qs_store::MAX_READ)?;
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        latency_us.extend(batch.iter().filter_map(|r| match r.event {
            // The replica placed away from its steward: a capacity query and a dispatch, two
            // round trips (the other one the steward starts itself).
            qs_wire::Event::Placed {
                latency_us,
                ref service,
                ref placement,
                ref on,
                ..
            } if service.as_str().starts_with("latency-") && *on != placement.steward => {
                Some(latency_us)
            }
            _ => None,
        }));
    }
    fleet.shutdown().await;
    Ok(FleetRun {
        join_s,
        place_s,
        placed,
        dead,
        latency_us,
        rtt_us: None,
        beside_fleet_rtt_us,
        query_rounds: None,
        idle,
        placing,
    })
}

/// `n` raw request-reply round trips through the nats-server at `url`: a message published
/// by one connection, echoed by another, received back; each one's time in microseconds.
async fn nats_round_trips(url: &str, n: usize) -> anyhow::Result<Vec<u64>> {
    use qs_fabric::{Bytes, Fabric, Topic};
    let asker = qs_fabric::nats::NatsFabric::connect(url, "rtt").await?;
    let echo = qs_fabric::nats::NatsFabric::connect(url, "rtt").await?;
    let (ask, back) = (Topic::parse("rtt.ask")?, Topic::parse("rtt.back")?);
    let mut requests = echo.subscribe(&ask).await?;
    let mut replies = asker.subscribe(&back).await?;
    echo.flush().await?;
    asker.flush().await?;
    let responder = {
        let (echo, back) = (echo.clone(), back.clone());
        tokio::spawn(async move {
            while let Some(m) = requests.next().await {
                if echo.publish(&back, m.payload).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut rtt = Vec::with_capacity(n);
    for i in 0..n {
        let t = std::time::Instant::now();
        asker
            .publish(&ask, Bytes::from(i.to_le_bytes().to_vec()))
            .await?;
        tokio::time::timeout(std::time::Duration::from_secs(5), replies.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the echo subscription ended"))?;
        rtt.push(t.elapsed().as_micros() as u64);
    }
    responder.abort();
    Ok(rtt)
}
