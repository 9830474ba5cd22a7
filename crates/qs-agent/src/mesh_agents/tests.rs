//! The node's agents' tests: a worker's state in its beats, what it works on, and its
//! eviction when its lead takes it for crashed.

use super::*;
use qs_wire::mesh::{ClusterId, OpId};

fn dispatch(agent: AgentId, created_ms: u64, ttl_ms: u64) -> Dispatch {
    Dispatch {
        agent,
        cluster: ClusterId(0),
        reply_to: NodeId::new("lead").unwrap(),
        envelope: MeshEnvelope {
            id: 1,
            op: OpId(7),
            causation: None,
            created_ms,
            target_arrival_ms: created_ms,
            ttl_ms,
            priority: 2,
            weight: 0.0,
            verb: Verb::Act,
            payload: "a long task".into(),
            content_hash: qs_core::mesh::content_hash("a long task"),
            requires: None,
        },
    }
}

/// A node's agents with `builtin` built-in ones, and the end their answers go to.
fn node_with(builtin: u32) -> (Arc<LocalAgents>, mpsc::Receiver<Answered>) {
    let options = MeshOptions {
        agents: builtin,
        ..MeshOptions::default()
    };
    LocalAgents::new(NodeId::new("n1").unwrap(), options)
}

/// What `agents`' beats say of `agent` at `at_ms`.
fn state_at(agents: &LocalAgents, agent: AgentId, at_ms: u64) -> AgentState {
    let beats = agents.beats_at(at_ms);
    beats.iter().find(|b| b.agent == agent).unwrap().state
}

/// A worker that took a task and works on it past the silence is beaten as active until
/// its envelope expires; one silent with nothing to do is offline.
#[tokio::test]
async fn a_worker_on_a_long_task_is_busy_not_offline() {
    let (agents, _answers) = node_with(0);
    let worker = agents.join("w1", Vec::new()).unwrap();
    let start = now().as_millis();
    // A task living 60 s, taken.
    agents.deliver(dispatch(worker, start, 60_000));
    let got = agents.poll(worker, Duration::from_millis(10)).await;
    assert!(got.is_some(), "taken");
    let silent = start + SILENT_AFTER_MS + 1_000;
    assert_eq!(
        state_at(&agents, worker, silent),
        AgentState::Active,
        "working"
    );
    let expired = start + 61_000;
    assert_eq!(
        state_at(&agents, worker, expired),
        AgentState::Offline,
        "expired"
    );
    // Another, silent with nothing taken: offline past the silence.
    let idle = agents.join("w2", Vec::new()).unwrap();
    assert_eq!(state_at(&agents, idle, silent), AgentState::Offline);
}

/// A worker its lead takes for crashed is told through what its connection waits on
/// (kept until it waits), if it is silent and the registration its lead knows; a
/// built-in agent is not.
#[tokio::test]
async fn a_crashed_worker_is_told_to_its_connection() {
    let (agents, _answers) = node_with(2);
    let worker = agents.join("w1", Vec::new()).unwrap();
    let told = agents.told(worker).expect("a worker's");
    let joined_ms = agents.beats_at(0).last().unwrap().joined_ms;
    let silent = now().as_millis() + SILENT_AFTER_MS + 1_000;
    // Not while it serves; not another registration than the lead knows.
    assert!(
        !agents.evict_at(worker, joined_ms, now().as_millis()),
        "serving"
    );
    assert!(
        !agents.evict_at(worker, joined_ms + 1, silent),
        "another registration"
    );
    assert!(agents.evict_at(worker, joined_ms, silent));
    tokio::time::timeout(Duration::from_secs(5), told.evict.notified())
        .await
        .expect("told");
    let builtin = agents.ids()[0];
    assert!(!agents.evict_at(builtin, 0, silent) && agents.told(builtin).is_none());
}

/// An operator's reassignment is told to the worker's connection (kept until it waits), if
/// it is the registration its lead knows; a built-in agent holds no task and is not told.
#[tokio::test]
async fn a_reassignment_is_told_to_the_workers_connection() {
    let (agents, _answers) = node_with(2);
    let worker = agents.join("w1", Vec::new()).unwrap();
    let told = agents.told(worker).expect("a worker's");
    let joined_ms = agents.beats_at(0).last().unwrap().joined_ms;
    let task = || TaskId::new("t-1").unwrap();
    assert!(
        !agents.reassign(worker, joined_ms + 1, task()),
        "another registration"
    );
    assert_eq!(agents.take_give_back(worker), None);
    assert!(agents.reassign(worker, joined_ms, task()));
    tokio::time::timeout(Duration::from_secs(5), told.reassign.notified())
        .await
        .expect("told");
    assert_eq!(
        agents.take_give_back(worker),
        Some(task()),
        "the task named"
    );
    assert_eq!(agents.take_give_back(worker), None, "once");
    assert!(
        !agents.reassign(agents.ids()[0], 0, task()),
        "a built-in agent"
    );
}

/// What a worker's beats say it works on (seed §7.2's "what they're stuck on"): the operation
/// it took and has not answered while it lives (its verb and content, since it took it), a
/// task its connection says it holds before that, and nothing once it answered.
#[tokio::test]
async fn a_workers_beats_say_what_it_works_on() {
    let (agents, _answers) = node_with(0);
    let worker = agents.join("w1", Vec::new()).unwrap();
    let busy = |agents: &LocalAgents| {
        let beats = agents.beats_at(now().as_millis());
        beats.into_iter().find(|b| b.agent == worker).unwrap().busy
    };
    assert_eq!(busy(&agents), None);
    let start = now().as_millis();
    agents.deliver(dispatch(worker, start, 60_000));
    let got = agents.poll(worker, Duration::from_millis(10)).await;
    assert!(got.is_some(), "taken");
    let taken = busy(&agents).expect("the operation taken");
    assert_eq!(
        (taken.with.as_str(), taken.note.as_str()),
        ("act: a long task", "")
    );
    assert!(taken.since_ms >= start, "{taken:?}");
    // Past its time to live, it is no work (the worker gave up on it, or will).
    let later = agents.beats_at(start + 61_000);
    assert_eq!(later.iter().find(|b| b.agent == worker).unwrap().busy, None);
    let task = Busy::new("task t-1: summarize", "loading the model", start);
    agents.working_on(worker, Some(task.clone()));
    assert_eq!(busy(&agents), Some(task));
    agents.working_on(worker, None);
    let answer = WorkerAnswer {
        op: OpId(7),
        state: Trinary::Ready,
        answer: "done".into(),
        conflict: None,
    };
    agents.answer(worker, answer).unwrap();
    assert_eq!(busy(&agents), None);
}
