//! The task channels and the fleet event bus on this process (seed 002 §5, §7): every second
//! this node's load goes out on `tasks.metrics.<node>`; the loads of the others come in; the
//! core says whether to steal and from whom (with backoff), and what to offer to whom; the
//! fleet task takes or hands over what a nudge on `tasks.inbound.<node>` names; completions go
//! out on `tasks.results.<node>` and the news of the core's `Signals` on `events.bus`,
//! `events.alerts` and `events.supervision`; a task accepted here goes where the core's
//! weighted choice says (offered to that node once its record is in the bucket). Load
//! reports and nudges travel in frames their sender signs (across processes); everything
//! that comes in is checked (`Auth::open_bus`: `decode_bus`, then the signature of the node
//! it names, a peer in good standing) and only ever leads to reads of the fleet's bucket.

use super::TaskHost;
use super::fleet::FleetLink;
use crate::clock::now;
use crate::identity::Auth;
use qs_core::tasks::balance::{MAX_MOVE, Stealing, assign, offers};
use qs_core::tasks::signals::Signal;
use qs_fabric::{Fabric, Subscription, Topic};
use qs_wire::task_bus::{FleetEvent, FleetEventKind, TaskLoad, TaskNudge, TaskResult};
use qs_wire::{NodeId, TaskId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// News waiting to go out, at most; past it, news is dropped (and counted).
pub const MAX_OUTGOING: usize = 4096;
/// Load reports kept, at most (one per node).
const MAX_LOADS: usize = 100_000;
const TICK: Duration = Duration::from_millis(250);
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What goes out on the bus.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    Signal(Signal),
    /// A task just accepted here: where it goes is decided with the fleet's loads.
    Assign {
        task: TaskId,
        model: Option<qs_wire::ServiceName>,
    },
    /// A security flag the shell raised (a worker's misuse).
    Flag {
        detail: String,
    },
}

/// The sending end the host keeps.
pub fn outgoing() -> (mpsc::Sender<Outgoing>, mpsc::Receiver<Outgoing>) {
    mpsc::channel(MAX_OUTGOING)
}

async fn subscribe<F: Fabric>(fabric: &F, topic: &Topic) -> Option<Subscription> {
    match fabric.subscribe(topic).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!("subscribing to {topic}: {e}");
            None
        }
    }
}

pub(crate) async fn next(sub: &mut Option<Subscription>) -> Option<qs_fabric::Incoming> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Publishes `body`, a node-to-node message of the task channels (a load report, a nudge),
/// as JSON in a frame `from` signs (across processes; open within one), on `topic`.
pub(crate) async fn publish_signed<F: Fabric, T: serde::Serialize>(
    fabric: &F,
    auth: &Auth,
    from: &NodeId,
    topic: &Topic,
    body: &T,
) {
    if let Ok(bytes) = serde_json::to_vec(body) {
        publish_bytes(fabric, topic, auth.seal_bus(from, &bytes)).await;
    }
}

/// Publishes `body` as JSON on `topic` (news for whoever listens: results, events).
pub(super) async fn publish<F: Fabric, T: serde::Serialize>(fabric: &F, topic: &Topic, body: &T) {
    if let Ok(bytes) = serde_json::to_vec(body) {
        publish_bytes(fabric, topic, bytes.into()).await;
    }
}

/// A failure is logged: nothing on the bus is owed.
async fn publish_bytes<F: Fabric>(fabric: &F, topic: &Topic, bytes: bytes::Bytes) {
    if let Err(e) = fabric.publish(topic, bytes).await {
        tracing::debug!("publishing on {topic}: {e}");
    }
}

/// Runs the channels until `stop` turns true; `live` reads the live nodes.
#[allow(clippy::too_many_arguments)]
pub async fn run<F: Fabric>(
    fabric: F,
    auth: Arc<Auth>,
    host: Arc<TaskHost>,
    link: FleetLink,
    mut news: mpsc::Receiver<Outgoing>,
    live: impl Fn() -> BTreeSet<NodeId> + Send + 'static,
    warm: impl Fn() -> Vec<qs_wire::ServiceName> + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let me = host.node().clone();
    // Seeded by the node's name: each node's choices are its own, and replayable.
    let mut rng = qs_core::rng::Rng::seeded(qs_core::hash::of_str(me.as_str()));
    let mut mine = host.load(MAX_MOVE, Vec::new()).await;
    let (loads_topic, inbound_topic) = (Topic::task_metrics_all(), Topic::task_inbound(&me));
    let mut loads_sub = None;
    let mut inbound_sub = None;
    let mut loads: BTreeMap<NodeId, TaskLoad> = BTreeMap::new();
    let mut stealing = Stealing::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = tokio::time::Instant::now() - REPORT_EVERY;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            m = next(&mut loads_sub) => match m {
                Some(m) => match auth.open_bus(m.topic.as_str(), &m.payload, |l: &TaskLoad| &l.node) {
                    Ok(l) if l.node != me && (loads.len() < MAX_LOADS || loads.contains_key(&l.node)) => {
                        loads.insert(l.node.clone(), l);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("{e}"),
                },
                None => loads_sub = None,
            },
            m = next(&mut inbound_sub) => match m {
                Some(m) => match auth.open_bus(m.topic.as_str(), &m.payload, |n: &TaskNudge| &n.from) {
                    Ok(n) => link.look(n.from, n.tasks).await,
                    Err(e) => tracing::debug!("{e}"),
                },
                None => inbound_sub = None,
            },
            n = news.recv() => {
                let Some(n) = n else { return };
                if let Outgoing::Assign { task, model } = n {
                    let to = assign(model.as_ref(), &mine, &loads, &live(), &mut rng);
                    if to != me {
                        link.offer(to, vec![task]).await;
                    }
                    continue;
                }
                send(&fabric, &me, n).await;
            }
            _ = tick.tick() => {
                if !fabric.connected() {
                    continue;
                }
                if loads_sub.is_none() {
                    loads_sub = subscribe(&fabric, &loads_topic).await;
                }
                if inbound_sub.is_none() {
                    inbound_sub = subscribe(&fabric, &inbound_topic).await;
                }
                let live = live();
                loads.retain(|n, _| live.contains(n));
                mine = host.load(MAX_MOVE, warm()).await;
                if reported.elapsed() >= REPORT_EVERY {
                    reported = tokio::time::Instant::now();
                    publish_signed(&fabric, &auth, &me, &Topic::task_metrics(&me), &mine).await;
                    for m in offers(&mine, &loads, &live) {
                        let nudge = TaskNudge { from: me.clone(), tasks: m.tasks };
                        publish_signed(&fabric, &auth, &me, &Topic::task_inbound(&m.to), &nudge).await;
                    }
                }
                if let Some(m) = stealing.plan(now(), &mine, &loads, &live) {
                    let took = link.take(m.from.clone(), m.tasks).await;
                    stealing.outcome(now(), took);
                    // What it took is no longer offered there.
                    loads.remove(&m.from);
                }
            }
        }
    }
}

/// Publishes one piece of news where it belongs.
async fn send<F: Fabric>(fabric: &F, me: &NodeId, n: Outgoing) {
    let at_ms = now().as_micros() / 1000;
    let (event, alert, supervision) = match n {
        Outgoing::Signal(Signal::Result { task, result_bytes }) => {
            let r = TaskResult {
                node: me.clone(),
                task,
                result_bytes,
                at_ms,
            };
            publish(fabric, &Topic::task_results(me), &r).await;
            return;
        }
        Outgoing::Signal(Signal::Event {
            kind,
            task,
            detail,
            alert,
            supervision,
        }) => (
            event(kind, me, Some(task), detail, at_ms),
            alert,
            supervision,
        ),
        Outgoing::Assign { .. } => return,
        Outgoing::Flag { detail } => (
            event(FleetEventKind::SecurityFlag, me, None, detail, at_ms),
            true,
            false,
        ),
    };
    publish(fabric, &Topic::events_bus(), &event).await;
    if alert {
        publish(fabric, &Topic::events_alerts(), &event).await;
    }
    if supervision {
        publish(fabric, &Topic::events_supervision(), &event).await;
    }
}

fn event(
    kind: FleetEventKind,
    node: &NodeId,
    task: Option<TaskId>,
    mut detail: String,
    at_ms: u64,
) -> FleetEvent {
    qs_wire::bounds::clip(&mut detail, qs_wire::task_bus::MAX_DETAIL_BYTES);
    FleetEvent {
        kind,
        node: node.clone(),
        task,
        detail,
        at_ms,
    }
}
