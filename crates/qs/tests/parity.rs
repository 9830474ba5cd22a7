//! Parity: the simulator decides what the agent decides.
//!
//! One scripted scenario (joins, a hot instance, a crash loop, a node death, a drain) runs
//! through the simulator on its virtual clock and through an embedded fleet of real node
//! runtimes with the no-op executor double, on the wall clock. Each step waits for its
//! outcome in its own world, with deadlines generous enough that timing does not decide. The
//! decisions per service (what is placed, stopped, promoted, restarted, given up, and where)
//! must be the same. Allowed to differ, because only timing decides them: instance ids (each
//! world's nodes draw from their own seeds), timestamps and latencies, the order of decisions
//! of different services, and the messages exchanged.

use qs_agent::control::Control;
use qs_agent::fleet::{EmbeddedFleet, FleetOptions};
use qs_core::{Config, Time};
use qs_sim::{Action, Network, Sim};
use qs_wire::{
    Event, ExitOutcome, InstanceId, InstanceLoad, NodeId, NodeSpec, ServiceName, WorkloadSpec,
    parse_spec,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The most a step may take in either world (virtual or real time).
const STEP_LIMIT: Duration = Duration::from_secs(60);

const FLEET: &str = r#"
[node.a]
level = 0
cpu_cores = 8
memory_mib = 16384

[node.b]
level = 0
cpu_cores = 8
memory_mib = 16384

[node.c]
level = 1
cpu_cores = 8
memory_mib = 16384

[node.d]
level = 1
cpu_cores = 8
memory_mib = 16384

[node.e]
level = 1
cpu_cores = 8
memory_mib = 16384
"#;

const WEB: &str = "[service.web]\nreplicas = 2\nmax_replicas = 3\n\
                   resources = { cpu_cores = 1, memory_mib = 256 }\ncommand = \"web\"\n";
const CRASHY: &str = "[service.crashy]\nreplicas = 1\n\
                      resources = { cpu_cores = 1, memory_mib = 256 }\ncommand = \"crashy\"\n";

fn nodes() -> Vec<NodeSpec> {
    parse_spec("fleet.toml", FLEET).unwrap().nodes
}

fn spec(text: &str) -> WorkloadSpec {
    parse_spec("spec.toml", text).unwrap().workloads.remove(0)
}

fn name(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

/// Deadlines generous enough that no answer is late in either world, and no scale-in within
/// the scenario.
fn config() -> Config {
    Config {
        query_timeout_min_ms: 1000,
        query_timeout_max_ms: 2000,
        dispatch_timeout_ms: 2000,
        scale_in_after_ms: 600_000,
        ..Config::default()
    }
}

/// What each world must do.
trait World {
    fn apply(&mut self, spec: WorkloadSpec);
    /// The service's first running instance (by id) burns 95 % of its CPU from now on.
    fn spike(&mut self, service: &ServiceName);
    /// The node running the service's first instance breaks (every start there fails), and
    /// that instance crashes.
    fn break_and_crash(&mut self, service: &ServiceName);
    fn kill(&mut self, node: &NodeId);
    fn drain(&mut self, node: &NodeId);
    /// Running instances of a service, by the registry, with their nodes.
    fn running(&mut self, service: &ServiceName) -> Vec<(InstanceId, NodeId)>;
    /// Every ledger event so far.
    fn events(&mut self) -> Vec<Event>;
    /// Lets time pass until `done` holds; panics past [`STEP_LIMIT`].
    fn wait(&mut self, what: &str, done: &mut dyn FnMut(&mut Self) -> bool);
}

fn placed(events: &[Event], service: &ServiceName) -> Vec<NodeId> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Placed { service: s, on, .. } if s == service => Some(on.clone()),
            _ => None,
        })
        .collect()
}

/// The decisions of each service, as a sorted list of lines.
fn decisions(events: &[Event]) -> BTreeMap<ServiceName, Vec<String>> {
    let mut out: BTreeMap<ServiceName, Vec<String>> = BTreeMap::new();
    for e in events {
        let (service, line) = match e {
            Event::Placed { service, on, .. } => (service, format!("placed on {on}")),
            Event::ScaleIn { service, on, .. } => (service, format!("stopped on {on}")),
            Event::Promoted { service, on, .. } => (service, format!("promoted on {on}")),
            Event::Unplaced {
                service,
                retry: false,
                ..
            } => (service, "gave up".to_string()),
            Event::InstanceRestarting {
                service, attempt, ..
            } => (service, format!("restarting, attempt {attempt}")),
            Event::InstanceExited {
                service, outcome, ..
            } => {
                let kind = match outcome {
                    ExitOutcome::Crashed { .. } => "crashed",
                    ExitOutcome::FailedStart { .. } => "failed to start",
                    ExitOutcome::Stopped { .. } => "stopped",
                    other => &format!("{other:?}"),
                };
                (service, format!("exited: {kind}"))
            }
            _ => continue,
        };
        out.entry(service.clone()).or_default().push(line);
    }
    for lines in out.values_mut() {
        lines.sort();
    }
    out
}

/// Waits until the service has been placed `n` times in all.
fn wait_placed<W: World>(w: &mut W, service: &str, n: usize) {
    let s = name(service);
    w.wait(&format!("{service} placed {n} times"), &mut |w| {
        placed(&w.events(), &s).len() >= n
    });
}

/// Waits until the registry shows `n` instances of the service, none on `not_on`.
fn wait_running<W: World>(w: &mut W, service: &str, n: usize, not_on: Option<&NodeId>) {
    let s = name(service);
    w.wait(&format!("{n} instances of {service} running"), &mut |w| {
        let running = w.running(&s);
        running.len() == n && running.iter().all(|(_, node)| Some(node) != not_on)
    });
}

/// The scenario, played on one world; returns its decisions.
/// Takes `node` out (`act`: a death or a drain) and waits until each of `services` that ran
/// there is placed once more and runs its count (web 3, crashy 1) elsewhere.
fn displace<W: World>(
    w: &mut W,
    services: &[&ServiceName],
    node: &NodeId,
    act: impl FnOnce(&mut W, &NodeId),
) {
    let events = w.events();
    let on_node: Vec<&ServiceName> = services
        .iter()
        .copied()
        .filter(|s| w.running(s).iter().any(|(_, n)| n == node))
        .collect();
    let counts: Vec<usize> = on_node.iter().map(|s| placed(&events, s).len()).collect();
    act(w, node);
    for (s, n) in on_node.iter().zip(counts) {
        wait_placed(w, s.as_str(), n + 1);
    }
    wait_running(w, "web", 3, Some(node));
    wait_running(w, "crashy", 1, Some(node));
}

fn scenario<W: World>(w: &mut W) -> BTreeMap<ServiceName, Vec<String>> {
    let (web, crashy) = (name("web"), name("crashy"));
    // Joins, then one service at a time (the order of two services' placements is timing).
    w.apply(spec(WEB));
    wait_placed(w, "web", 2);
    wait_running(w, "web", 2, None);
    w.apply(spec(CRASHY));
    wait_placed(w, "crashy", 1);
    wait_running(w, "crashy", 1, None);

    // A hot instance: scale out to max_replicas.
    w.spike(&web);
    wait_placed(w, "web", 3);
    wait_running(w, "web", 3, None);

    // A crash loop: restarts in place fail until the host gives up; the steward places it
    // elsewhere (the broken node now carries pressure).
    let before = placed(&w.events(), &crashy).len();
    w.break_and_crash(&crashy);
    wait_placed(w, "crashy", before + 1);
    wait_running(w, "crashy", 1, None);

    // A node death: the node of web's second placement.
    let events = w.events();
    let victim = placed(&events, &web)[1].clone();
    displace(w, &[&web, &crashy], &victim, |w, n| w.kill(n));

    // A drain: the node of web's first placement (or, if that one died, its third).
    let events = w.events();
    let web_nodes = placed(&events, &web);
    let drained = if web_nodes[0] == victim {
        web_nodes[2].clone()
    } else {
        web_nodes[0].clone()
    };
    displace(w, &[&web, &crashy], &drained, |w, n| w.drain(n));
    decisions(&w.events())
}

// ---- the simulator ---------------------------------------------------------------------------

struct SimWorld {
    sim: Sim,
}

impl SimWorld {
    fn new() -> Self {
        let mut sim = Sim::new(&nodes(), 1, config(), Network::instant(), 7);
        sim.keep_records(true);
        sim.check_invariants(true);
        SimWorld { sim }
    }

    fn first_running(&self, service: &ServiceName) -> Option<(InstanceId, NodeId)> {
        self.sim
            .registry()
            .instances_of(service)
            .next()
            .map(|(id, r)| (id.clone(), r.node.clone()))
    }
}

impl World for SimWorld {
    fn apply(&mut self, spec: WorkloadSpec) {
        self.sim.schedule(self.sim.now(), Action::Apply(spec));
    }
    fn spike(&mut self, service: &ServiceName) {
        let action = Action::Spike {
            service: service.clone(),
            util: 0.95,
            for_ms: 3_600_000,
        };
        self.sim.schedule(self.sim.now(), action);
    }
    fn break_and_crash(&mut self, service: &ServiceName) {
        let (_, node) = self.first_running(service).expect("it runs");
        let now = self.sim.now();
        self.sim.schedule(now, Action::BreakStarts(node));
        self.sim.schedule(now, Action::Crash(service.clone()));
    }
    fn kill(&mut self, node: &NodeId) {
        self.sim
            .schedule(self.sim.now(), Action::Kill(node.clone()));
    }
    fn drain(&mut self, node: &NodeId) {
        self.sim
            .schedule(self.sim.now(), Action::Drain(node.clone()));
    }
    fn running(&mut self, service: &ServiceName) -> Vec<(InstanceId, NodeId)> {
        self.sim
            .registry()
            .instances_of(service)
            .map(|(id, r)| (id.clone(), r.node.clone()))
            .collect()
    }
    fn events(&mut self) -> Vec<Event> {
        self.sim.records().iter().map(|r| r.event.clone()).collect()
    }
    fn wait(&mut self, what: &str, done: &mut dyn FnMut(&mut Self) -> bool) {
        let limit = Time::from_micros(self.sim.now().as_micros() + STEP_LIMIT.as_micros() as u64);
        while !done(self) {
            assert!(
                self.sim.now() < limit,
                "simulator: no {what} within {STEP_LIMIT:?}"
            );
            let next = Time::from_micros(self.sim.now().as_micros() + 10_000);
            self.sim.run_until(next);
        }
        assert_eq!(self.sim.violations(), &[], "simulator invariants");
    }
}

// ---- the agent -------------------------------------------------------------------------------

struct FleetWorld {
    rt: tokio::runtime::Runtime,
    fleet: Option<EmbeddedFleet>,
    _dir: tempfile::TempDir,
}

impl FleetWorld {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let opts = FleetOptions {
            state_dir: dir.path().join("state"),
            listen: "127.0.0.1:0".parse().unwrap(),
            nodes: nodes(),
            config: config(),
            sense_every: Duration::from_millis(100),
            stop_grace: Duration::from_secs(1),
            seed: 7,
            host: false,
            noop_executor: true,
            mode: "embedded",
            authenticate: false,
            rekey: false,
            trust: qs_agent::trust::Trust::FirstUse,
            api_hosts: vec![],
            tls: None,
            mesh: Default::default(),
        };
        let fleet = rt.block_on(EmbeddedFleet::start(opts)).unwrap();
        FleetWorld {
            rt,
            fleet: Some(fleet),
            _dir: dir,
        }
    }

    fn fleet(&self) -> &EmbeddedFleet {
        self.fleet.as_ref().expect("the fleet runs until dropped")
    }

    fn control(&self, node: &NodeId, c: Control) {
        let tx = self
            .fleet()
            .shared
            .controls
            .read()
            .unwrap()
            .get(node)
            .cloned();
        let tx = tx.unwrap_or_else(|| panic!("{node} runs no runtime"));
        self.rt.block_on(tx.send(c)).unwrap();
    }

    fn first_running(&mut self, service: &ServiceName) -> (InstanceId, NodeId) {
        self.running(service).into_iter().next().expect("it runs")
    }
}

impl Drop for FleetWorld {
    fn drop(&mut self) {
        if let Some(fleet) = self.fleet.take() {
            self.rt.block_on(fleet.shutdown());
        }
    }
}

impl World for FleetWorld {
    fn apply(&mut self, spec: WorkloadSpec) {
        let doc = qs_wire::SpecDocument {
            workloads: vec![spec],
            ..qs_wire::SpecDocument::default()
        };
        let fabric = self.fleet().fabric.clone();
        self.rt
            .block_on(qs_agent::specs::put_specs(&fabric, &doc))
            .unwrap();
    }
    fn spike(&mut self, service: &ServiceName) {
        let (instance, node) = self.first_running(service);
        let load = InstanceLoad {
            cpu_millicores: 950,
            memory_bytes: 128 << 20,
            ..InstanceLoad::default()
        };
        self.fleet().scripts[&node].set_load(&instance, load);
    }
    fn break_and_crash(&mut self, service: &ServiceName) {
        let (instance, node) = self.first_running(service);
        self.fleet().scripts[&node].break_starts(true);
        let (reply, _answer) = tokio::sync::oneshot::channel();
        self.control(&node, Control::Kill { instance, reply });
    }
    fn kill(&mut self, node: &NodeId) {
        self.control(node, Control::Die);
    }
    fn drain(&mut self, node: &NodeId) {
        self.control(node, Control::Drain(true));
    }
    fn running(&mut self, service: &ServiceName) -> Vec<(InstanceId, NodeId)> {
        let nodes: Vec<NodeId> = self
            .fleet()
            .shared
            .controls
            .read()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let node = nodes.first().expect("a node runs");
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.control(node, Control::Registry { reply });
        let view = self.rt.block_on(answer).unwrap();
        view.instances
            .into_iter()
            .filter(|(s, _, _)| s == service)
            .map(|(_, id, row)| (id, row.node))
            .collect()
    }
    fn events(&mut self) -> Vec<Event> {
        let ledger = &self.fleet().shared.ledger;
        let mut out = Vec::new();
        loop {
            let batch = ledger.read(out.len() as u64, qs_store::MAX_READ).unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch.into_iter().map(|r| r.event));
        }
    }
    fn wait(&mut self, what: &str, done: &mut dyn FnMut(&mut Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < STEP_LIMIT,
                "embedded fleet: no {what} within {STEP_LIMIT:?}; decisions: {:#?}",
                decisions(&self.events())
            );
            // The ledger is read again after the runtimes had a moment to act.
            self.rt
                .block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        }
    }
}

#[test]
fn the_simulator_and_the_agent_decide_the_same() {
    let simulated = scenario(&mut SimWorld::new());
    let embedded = scenario(&mut FleetWorld::new());
    assert!(
        simulated.values().map(Vec::len).sum::<usize>() >= 10,
        "the scenario decides things: {simulated:#?}"
    );
    assert_eq!(
        simulated, embedded,
        "decisions per service differ: simulator (left), embedded fleet (right)"
    );
}
