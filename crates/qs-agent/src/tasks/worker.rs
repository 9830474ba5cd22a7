//! The worker protocol (seed 002): local workers connect to the agent's Unix socket
//! (`tasks.sock` in the state directory, mode 0600: the agent's user's) and speak in frames: a
//! 4-byte big-endian length (at most [`MAX_FRAME_BYTES`]), then a JSON object with an `op`.
//!
//! A worker registers (its name, the models it has warm, and optionally the heartbeat it
//! keeps: silent for three of them, it is taken for hung), then claims one iteration of a
//! task at a time (waiting up to `wait_ms` for one when there is none), reports each
//! iteration (a score, a hash of its result), checkpoints, records the side effects it ran
//! (`effect`, `effect-done`), says how far an iteration is (`progress`), and completes or
//! fails the task under the attempt its claim gave it.
//!
//! A worker may also join the mesh (seed 001) as an agent with capabilities (`mesh-join`,
//! under the name it registered with; see `mesh_agents.rs`), then asks for what the mesh sends
//! it (`mesh-poll`, waiting up to `wait_ms`: `mesh` with the envelope, or `none`) and answers
//! each operation (`mesh-answer`: its `operation`, a `state` of 1 READY or -1 CONFLICT with
//! the `conflict`, and an `answer`). It leaves the mesh when it disconnects. Every answer is
//! one frame:
//! `registered`, `mesh-joined`, `task`, `mesh` or `none` (or `soft-stop` when the agent asks it to stop claiming: the
//! agent stops, or one of the worker's models drains here for a swap), `next` (`continue` or
//! `finish`), `effect` (whether a side effect already ran), `ok`, or `refused` with the
//! reason. A frame that is too large, not JSON or not a request of the protocol is refused
//! with the reason, and the worker is disconnected and counted. When a worker goes away, the
//! attempts it held fail and their tasks go back to the inbound queue.

use super::TaskHost;
use crate::mesh_agents::{LocalAgents, WorkerAnswer};
use qs_core::tasks::{Claim, Next, Report};
use qs_wire::ServiceName;
use qs_wire::mesh::AgentId;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Largest frame either side sends.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Most workers connected at once.
pub const MAX_WORKERS: usize = 1024;
/// Longest worker name.
const MAX_WORKER_NAME: usize = 128;
/// Longest a claim waits for work.
pub const MAX_CLAIM_WAIT_MS: u64 = 60_000;
/// The heartbeat periods a worker may declare.
pub const HEARTBEAT_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;
/// Most models a worker may say it has warm.
const MAX_WORKER_MODELS: usize = 64;

mod protocol;
use protocol::{Answer, Request};

/// Serves the workers that connect to `listener` until `stop` turns true.
pub async fn serve(
    host: Arc<TaskHost>,
    models: Arc<crate::models::Registry>,
    mesh: Arc<LocalAgents>,
    listener: UnixListener,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_WORKERS));
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Full: the connection is closed at once.
            host.workers_disconnected.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (host, runtimes, mesh) = (host.clone(), models.clone(), mesh.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut conn = Connection {
                host,
                runtimes,
                mesh,
                worker: None,
                name: String::new(),
                mesh_agent: None,
                models: BTreeSet::new(),
                silence: None,
                told: None,
                inbuf: Vec::new(),
            };
            if let Err(why) = conn.run(stream).await {
                tracing::warn!("a task worker was disconnected: {why}");
                conn.host
                    .workers_disconnected
                    .fetch_add(1, Ordering::Relaxed);
                conn.host
                    .flag(format!("a task worker was disconnected: {why}"));
            }
            conn.gone().await;
        });
    }
}

struct Connection {
    host: Arc<TaskHost>,
    /// This process's model runtimes: a worker whose model drains is soft-stopped.
    runtimes: Arc<crate::models::Registry>,
    mesh: Arc<LocalAgents>,
    worker: Option<String>,
    /// The name it registered under.
    name: String,
    /// Its id in the mesh, once it joined.
    mesh_agent: Option<AgentId>,
    models: BTreeSet<ServiceName>,
    /// Past this without a frame, a worker that declared a heartbeat is taken for hung.
    silence: Option<Duration>,
    /// Told when the mesh takes its agent for crashed (its lead's AGENT_CRASH), or an
    /// operator takes its task from it.
    told: Option<crate::mesh_agents::Told>,
    /// What was read of the next frames (at most one frame and a read more).
    inbuf: Vec<u8>,
}

/// Reads one frame: `Ok(None)` when the worker is gone (its connection ended or broke, a
/// frame half sent included: a crash, not a misuse); `Err` for a frame of a size the
/// protocol refuses. What it read stays in `buf` if it is dropped before a frame is whole
/// (it is cancellation-safe: a frame is never lost or cut), and what came after a frame
/// stays for the next.
async fn read_frame(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, String> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(len) = buf.first_chunk::<4>() {
            let n = u32::from_be_bytes(*len) as usize;
            if n == 0 || n > MAX_FRAME_BYTES {
                return Err(format!("a frame of {n} bytes; 1..={MAX_FRAME_BYTES}"));
            }
            if buf.len() >= 4 + n {
                let frame = buf[4..4 + n].to_vec();
                buf.drain(..4 + n);
                return Ok(Some(frame));
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

async fn write_frame(stream: &mut UnixStream, answer: &Answer) -> Result<(), String> {
    let body = serde_json::to_vec(answer).map_err(|e| e.to_string())?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await.map_err(|e| e.to_string())
}

impl Connection {
    async fn run(&mut self, mut stream: UnixStream) -> Result<(), String> {
        loop {
            let answer = match self.next(&mut stream).await {
                Ok(Some(a)) => a,
                Ok(None) => return Ok(()),
                // Told why, then cut.
                Err(why) => {
                    let refused = Answer::Refused {
                        reason: why.clone(),
                    };
                    let _ = write_frame(&mut stream, &refused).await;
                    return Err(why);
                }
            };
            // An answer it cannot take: it went away (it exited or crashed while it waited
            // for work, as a broken read says), no misuse.
            if write_frame(&mut stream, &answer).await.is_err() {
                return Ok(());
            }
        }
    }

    /// The answer to the worker's next frame; `None` when it closed the connection; `Err`
    /// when it spoke the protocol wrongly.
    async fn next(&mut self, stream: &mut UnixStream) -> Result<Option<Answer>, String> {
        // While it waits for a frame, the mesh may take its agent for crashed: then it is
        // cut, unless it holds a task; or an operator may take its task from it (the read
        // loses nothing when it stops for either).
        let mut buf = std::mem::take(&mut self.inbuf);
        let told = self.told.clone();
        let this = &*self;
        let wait_and_read = async {
            loop {
                let read = read_frame(stream, &mut buf);
                let Some(told) = &told else {
                    break read.await;
                };
                tokio::select! {
                    frame = read => break frame,
                    _ = told.evict.notified() => {
                        if !this.holds_task().await {
                            break Err(EVICTED.to_string());
                        }
                    }
                    _ = told.reassign.notified() => this.give_task_back().await,
                }
            }
        };
        let frame = match self.silence {
            None => wait_and_read.await,
            Some(limit) => tokio::time::timeout(limit, wait_and_read)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "silent for {} ms: taken for hung",
                        limit.as_millis()
                    ))
                }),
        };
        self.inbuf = buf;
        let frame = frame?;
        if let Some(agent) = self.mesh_agent {
            self.mesh.seen(agent);
        }
        let Some(frame) = frame else {
            return Ok(None);
        };
        let request: Request = serde_json::from_slice(&frame)
            .map_err(|e| format!("not a request of the worker protocol: {e}"))?;
        let refresh = request.refreshes_busy();
        let answer = self.answer(request, stream).await;
        if refresh {
            self.tell_mesh_busy().await;
        }
        answer.map(Some).map_err(|Misuse(why)| why)
    }

    /// Tells the mesh which task its agent works on, if it joined (seed §7.2: an operator
    /// sees what slow agents are stuck on).
    async fn tell_mesh_busy(&mut self) {
        let (Some(agent), Some(worker)) = (self.mesh_agent, &self.worker) else {
            return;
        };
        let before = self.mesh.task_of(agent);
        let busy = self.host.busy_of(worker, before.as_ref()).await;
        if busy != before {
            self.mesh.working_on(agent, busy);
        }
    }

    async fn answer(&mut self, request: Request, stream: &UnixStream) -> Result<Answer, Misuse> {
        let refused = |e: qs_core::tasks::Refusal| Answer::Refused {
            reason: e.to_string(),
        };
        if !matches!(request, Request::Register { .. }) && self.worker.is_none() {
            return Err(Misuse("a worker registers before anything else".into()));
        }
        Ok(match request {
            Request::Register {
                worker,
                models,
                heartbeat_ms,
            } => {
                if self.worker.is_some() {
                    return Err(Misuse("a worker registers once".into()));
                }
                if let Some(ms) = heartbeat_ms {
                    if !HEARTBEAT_MS.contains(&ms) {
                        return Err(Misuse(format!(
                            "a heartbeat of {ms} ms; {}..={} ms",
                            HEARTBEAT_MS.start(),
                            HEARTBEAT_MS.end()
                        )));
                    }
                    self.silence = Some(Duration::from_millis(ms.saturating_mul(3)));
                }
                let ok = (1..=MAX_WORKER_NAME).contains(&worker.len())
                    && worker.chars().all(|c| c.is_ascii_graphic());
                if !ok || models.len() > MAX_WORKER_MODELS {
                    return Err(Misuse(format!(
                        "a worker names itself in 1..={MAX_WORKER_NAME} printable characters and at most {MAX_WORKER_MODELS} models"
                    )));
                }
                // Names may repeat; each connection's attempts are its own.
                static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
                let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
                self.worker = Some(format!("{worker}#{n}"));
                self.name = worker;
                self.models = models.into_iter().collect();
                Answer::Registered {
                    node: self.host.node().to_string(),
                }
            }
            Request::Heartbeat => Answer::Ok,
            Request::Claim { wait_ms } => {
                if wait_ms > MAX_CLAIM_WAIT_MS {
                    return Err(Misuse(format!(
                        "a claim waits at most {MAX_CLAIM_WAIT_MS} ms, not {wait_ms}"
                    )));
                }
                let runtimes = self.runtimes_say();
                if self.host.soft_stopping() || runtimes.is_err() {
                    Answer::SoftStop
                } else {
                    let worker = self.worker.clone().unwrap_or_default();
                    let warm = runtimes.unwrap_or_default();
                    match self
                        .host
                        .claim(&worker, &warm, Duration::from_millis(wait_ms))
                        .await
                    {
                        Some(c) => task(c),
                        None if self.host.soft_stopping() => Answer::SoftStop,
                        None => Answer::None,
                    }
                }
            }
            Request::Report {
                task,
                attempt,
                score,
                result_hash,
            } => {
                if !score.is_finite() {
                    return Err(Misuse(format!("score {score} is not a finite number")));
                }
                let report = Report { score, result_hash };
                match self.host.report(&task, attempt, report).await {
                    Ok(Next::Continue) => Answer::Next { next: "continue" },
                    Ok(Next::Finish) => Answer::Next { next: "finish" },
                    Err(e) => refused(e),
                }
            }
            Request::Checkpoint {
                task,
                attempt,
                iteration,
                state,
            } => match self.host.checkpoint(&task, attempt, iteration, state).await {
                Ok(()) => Answer::Ok,
                Err(e) => refused(e),
            },
            Request::Complete {
                task,
                attempt,
                result,
            } => match self.host.complete(&task, attempt, result).await {
                Ok(()) => Answer::Ok,
                Err(e) => refused(e),
            },
            Request::Progress {
                task,
                attempt,
                fraction,
                note,
            } => match self.host.progress(&task, attempt, fraction, note).await {
                Ok(()) => Answer::Ok,
                Err(e) => refused(e),
            },
            Request::Effect { task, attempt, key } => {
                match self.host.effect_done(&task, attempt, &key).await {
                    Ok(done) => Answer::Effect { done },
                    Err(e) => refused(e),
                }
            }
            Request::EffectDone { task, attempt, key } => {
                match self.host.record_effect(&task, attempt, &key).await {
                    Ok(()) => Answer::Ok,
                    Err(e) => refused(e),
                }
            }
            Request::MeshJoin { capabilities } => {
                if self.mesh_agent.is_some() {
                    return Err(Misuse("a worker joins the mesh once".into()));
                }
                match self.mesh.join(&self.name, capabilities) {
                    Ok(agent) => {
                        self.mesh_agent = Some(agent);
                        self.told = self.mesh.told(agent);
                        Answer::MeshJoined { agent }
                    }
                    Err(reason) => Answer::Refused { reason },
                }
            }
            Request::MeshPoll { wait_ms } => {
                if wait_ms > MAX_CLAIM_WAIT_MS {
                    return Err(Misuse(format!(
                        "a poll waits at most {MAX_CLAIM_WAIT_MS} ms, not {wait_ms}"
                    )));
                }
                let agent = self.joined()?;
                // A worker that goes away while it waits is noticed now, not after the wait
                // (its socket turns readable: closed, or a frame out of turn).
                tokio::select! {
                    e = self.mesh.poll(agent, Duration::from_millis(wait_ms)) => match e {
                        Some(envelope) => Answer::Mesh {
                            envelope: Box::new(envelope),
                        },
                        None => Answer::None,
                    },
                    _ = stream.readable() => Answer::None,
                }
            }
            Request::MeshAnswer {
                operation,
                state,
                answer,
                conflict,
            } => {
                let agent = self.joined()?;
                let a = WorkerAnswer {
                    op: operation,
                    state,
                    answer,
                    conflict,
                };
                match self.mesh.answer(agent, a) {
                    Ok(()) => Answer::Ok,
                    Err(reason) => Answer::Refused { reason },
                }
            }
            Request::Fail {
                task,
                attempt,
                reason,
            } => {
                let mut reason = reason;
                qs_wire::bounds::clip(&mut reason, qs_wire::bounds::MAX_REASON_BYTES);
                match self.host.fail(&task, attempt, &reason).await {
                    Ok(()) => Answer::Ok,
                    Err(e) => refused(e),
                }
            }
        })
    }

    /// What the node's runtimes say for this worker's next claim: soft-stop when one of its
    /// models drains or stops here (a swap, seed 003: finish the step, checkpoint, stop
    /// claiming), else the models warm for it (its own and the node's). One read of the
    /// runtimes.
    fn runtimes_say(&self) -> Result<BTreeSet<ServiceName>, ()> {
        let node = self.runtimes.views_of(self.host.node());
        let mut warm = self.models.clone();
        for m in node {
            if self.models.contains(&m.name) && matches!(m.state, "draining" | "stopping") {
                return Err(());
            }
            if m.state == "warm" {
                warm.insert(m.name);
            }
        }
        Ok(warm)
    }

    /// Whether it holds a task of the task protocol (then the mesh does not cut it).
    async fn holds_task(&self) -> bool {
        match &self.worker {
            Some(w) => self.host.holds_work(w).await,
            None => false,
        }
    }

    /// An operator took its task from it: the task goes back to the queue for another
    /// worker, and its agent works on nothing now, as its next beat says.
    async fn give_task_back(&self) {
        let (Some(agent), Some(worker)) = (self.mesh_agent, &self.worker) else {
            return;
        };
        // (A permit left from an order already carried out names no task: nothing to do.)
        let Some(task) = self.mesh.take_give_back(agent) else {
            return;
        };
        if self.host.reassign(worker, &task).await {
            tracing::warn!("task {task} taken from worker {worker} by an operator: reassigned");
            self.mesh.working_on(agent, None);
        }
    }

    /// Its id in the mesh: a worker joins before it polls or answers.
    fn joined(&self) -> Result<AgentId, Misuse> {
        self.mesh_agent
            .ok_or_else(|| Misuse("a worker joins the mesh (mesh-join) before that".into()))
    }

    /// The worker went away: the attempts it held fail, and it leaves the mesh.
    async fn gone(&self) {
        if let Some(agent) = self.mesh_agent {
            self.mesh.leave(agent);
        }
        if let Some(w) = &self.worker {
            self.host.abandon(w).await;
        }
    }
}

/// Why a worker whose mesh agent its lead took for crashed is cut.
const EVICTED: &str = "the mesh took this agent for crashed (offline 30 s while its node \
    lives, seed AGENT_CRASH): reconnect and join again";

/// A worker that speaks the protocol wrongly: it is told why and disconnected.
struct Misuse(String);

fn task(c: Claim) -> Answer {
    Answer::Task {
        task: c.id,
        attempt: c.attempt,
        iteration: c.iteration,
        payload: c.payload,
        model: c.model,
        state: c.state,
    }
}

#[cfg(test)]
mod tests;
