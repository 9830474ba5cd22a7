//! Two ways for a steward to ask the fleet for capacity, timed side by side through one
//! nats-server (for `qs bench fleet --nats`; behind the `testing` feature).
//!
//! - **Directed sends**, what the agent does: the steward samples `asked` nodes and publishes
//!   one query on each one's own subject (`node.<n>.rpc`); each answers on the steward's own
//!   subject; the round completes when all `asked` have answered.
//! - **Gather**, the alternative the fabric once offered: one query published on a subject
//!   every node subscribes to (`query.capacity`) with a reply inbox; every node answers into
//!   the inbox; the round completes early, at the first `asked` replies.
//!
//! Both run on the same server, the same fleet of `nodes` subscribers (one connection, as an
//! embedded fleet has) and the same payload size, one round at a time, alternating. A gather
//! round is waited out until every node has answered (untimed for its latency), so the next
//! round does not queue behind its tail.

use crate::FabricError;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

/// The most nodes or rounds one run takes.
pub const MAX_NODES: usize = 10_000;
pub const MAX_ROUNDS: usize = 100_000;
/// The size of a query and of an answer: about an encoded capacity query or offer.
const PAYLOAD_BYTES: usize = 256;
/// The longest one round may take before the run fails.
const ROUND_LIMIT: Duration = Duration::from_secs(5);

/// The times of each kind of round, in microseconds.
#[derive(Clone, Debug, Default)]
pub struct QueryRounds {
    /// Nodes asked in each directed round; replies a gather waits for.
    pub asked: usize,
    /// Directed: until every asked node has answered.
    pub directed_us: Vec<u64>,
    /// Gather: until the first `asked` replies (early completion).
    pub gather_us: Vec<u64>,
    /// Gather: until every node's reply has come in, the load each round puts on the fleet.
    pub gather_all_us: Vec<u64>,
}

/// Runs `rounds` rounds of each kind against `nodes` simulated nodes that answer at once.
pub async fn query_rounds(
    url: &str,
    nodes: usize,
    asked: usize,
    rounds: usize,
) -> Result<QueryRounds, FabricError> {
    if !(1..=MAX_NODES).contains(&nodes) || !(1..=nodes).contains(&asked) {
        return Err(FabricError::Setting {
            what: "query rounds",
            detail: format!(
                "nodes must be 1 to {MAX_NODES} and asked 1 to nodes, got {nodes} and {asked}"
            ),
        });
    }
    if !(1..=MAX_ROUNDS).contains(&rounds) {
        return Err(FabricError::Setting {
            what: "query rounds",
            detail: format!("rounds must be 1 to {MAX_ROUNDS}, got {rounds}"),
        });
    }
    let fleet = async_nats::connect(url)
        .await
        .map_err(FabricError::nats("connect"))?;
    let steward = async_nats::connect(url)
        .await
        .map_err(FabricError::nats("connect"))?;
    let answer = bytes::Bytes::from(vec![b'o'; PAYLOAD_BYTES]);
    let steward_rpc = "qs.bench.node.steward.rpc";
    // Every node: its own subject (directed) and the shared query subject (gather).
    let mut tasks = Vec::with_capacity(nodes * 2);
    for i in 0..nodes {
        for subject in [
            format!("qs.bench.node.v{i}.rpc"),
            "qs.bench.query.capacity".into(),
        ] {
            let mut sub = fleet
                .subscribe(subject)
                .await
                .map_err(FabricError::nats("subscribe"))?;
            let (client, answer) = (fleet.clone(), answer.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let to = m
                        .reply
                        .map_or_else(|| steward_rpc.into(), |r| r.to_string());
                    if client.publish(to, answer.clone()).await.is_err() {
                        return;
                    }
                }
            }));
        }
    }
    crate::nats::barrier(&fleet).await?;
    let mut answers = steward
        .subscribe(steward_rpc)
        .await
        .map_err(FabricError::nats("subscribe"))?;
    let inbox_prefix = steward.new_inbox();
    let mut inbox = steward
        .subscribe(format!("{inbox_prefix}.*"))
        .await
        .map_err(FabricError::nats("subscribe"))?;
    crate::nats::barrier(&steward).await?;
    let query = bytes::Bytes::from(vec![b'q'; PAYLOAD_BYTES]);
    let mut out = QueryRounds {
        asked,
        ..QueryRounds::default()
    };
    // A seeded sample per round, so every run asks the same nodes.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..rounds {
        let mut sample = Vec::with_capacity(asked);
        while sample.len() < asked {
            let n = (next() % nodes as u64) as usize;
            if !sample.contains(&n) {
                sample.push(n);
            }
        }
        let t = Instant::now();
        for n in &sample {
            steward
                .publish(format!("qs.bench.node.v{n}.rpc"), query.clone())
                .await
                .map_err(FabricError::nats("publish"))?;
        }
        for got in 0..asked {
            next_within(
                &mut answers,
                Within {
                    round,
                    kind: "directed",
                    got,
                    want: asked,
                },
            )
            .await?;
        }
        out.directed_us.push(t.elapsed().as_micros() as u64);

        let reply = format!("{inbox_prefix}.{round}");
        let t = Instant::now();
        steward
            .publish_with_reply("qs.bench.query.capacity", reply.clone(), query.clone())
            .await
            .map_err(FabricError::nats("publish"))?;
        let mut got = 0;
        while got < nodes {
            let within = Within {
                round,
                kind: "gather",
                got,
                want: nodes,
            };
            if next_within(&mut inbox, within).await?.subject.as_str() == reply {
                got += 1;
                if got == asked {
                    out.gather_us.push(t.elapsed().as_micros() as u64);
                }
            }
        }
        out.gather_all_us.push(t.elapsed().as_micros() as u64);
    }
    for t in tasks {
        t.abort();
    }
    Ok(out)
}

/// Where a round stands, for its error.
struct Within {
    round: usize,
    kind: &'static str,
    got: usize,
    want: usize,
}

async fn next_within(
    sub: &mut async_nats::Subscriber,
    at: Within,
) -> Result<async_nats::Message, FabricError> {
    let failed = |why: &str| FabricError::Nats {
        op: "query round",
        detail: format!(
            "{} round {}: {why} after {} of {} answers",
            at.kind, at.round, at.got, at.want
        ),
    };
    match tokio::time::timeout(ROUND_LIMIT, sub.next()).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(failed("the subscription ended")),
        Err(_) => Err(failed(&format!("nothing within {ROUND_LIMIT:?}"))),
    }
}
