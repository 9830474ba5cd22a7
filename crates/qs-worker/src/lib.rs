//! The Rust SDK of Quasicrystal's task workers: the worker protocol over the agent's Unix
//! socket (`STATE_DIR/tasks.sock`), blocking, the standard library and serde only.
//!
//! A frame is a 4-byte big-endian length, then that many bytes of a JSON object with an `op`.
//! A worker registers (its name, the models it has warm), then claims one iteration of a task
//! at a time, reports each iteration (a score and a hash of its result), checkpoints, and
//! completes or fails the task under the attempt (the fencing token) its claim gave it: the
//! agent refuses what a superseded attempt says. [`Worker::effect`] runs a side effect at most
//! once per task across its attempts, as far as the agent's record goes.
//!
//! A worker may also be an agent of the mesh (seed 001): [`Worker::mesh_join`] with its
//! capabilities, then [`Worker::mesh_poll`] for what the mesh sends it and
//! [`Worker::mesh_answer`] for each operation, READY or CONFLICT.
//!
//! ```no_run
//! use qs_worker::{Step, Worker};
//! let mut w = Worker::connect("/var/lib/qs/tasks.sock", "summarizer", &[]).unwrap();
//! w.run(|_worker, task, state| {
//!     let n: u32 = state.and_then(|s| s.parse().ok()).unwrap_or(0) + 1;
//!     Ok(Step { score: n as f64, result: format!("pass {n} of {}", task.payload), state: n.to_string() })
//! }, None).unwrap();
//! ```

use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest frame either side sends.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Longest a claim may wait for work.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(60);

/// What went wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the worker socket: {0}")]
    Io(#[from] std::io::Error),
    /// The agent refused a request: a superseded attempt, an ended task, a full queue.
    #[error("refused: {0}")]
    Refused(String),
    #[error("the agent answered outside the protocol: {0}")]
    Protocol(String),
    #[error("a frame of {0} bytes; at most {MAX_FRAME_BYTES}")]
    TooLarge(usize),
}

/// One iteration of a task, as a claim gives it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ClaimedTask {
    pub task: String,
    /// The fencing token of this attempt.
    pub attempt: u64,
    /// Iterations already done.
    pub iteration: u32,
    pub payload: String,
    pub model: Option<String>,
    /// The last checkpoint's state, to resume from.
    pub state: Option<String>,
}

/// What a claim got.
#[derive(Clone, Debug, PartialEq)]
pub enum Claimed {
    Task(ClaimedTask),
    /// No work came in while it waited.
    Nothing,
    /// The agent asks this worker to stop claiming (it is draining or stopping).
    SoftStop,
}

/// What a report of an iteration leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Refining is over: complete the task.
    Finish,
}

/// What one iteration of the work produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Its own measure of quality (any scale, finite).
    pub score: f64,
    pub result: String,
    /// Saved as the checkpoint the next iteration (or attempt) resumes from.
    pub state: String,
}

/// What the mesh sent this agent (the envelope's fields a worker needs; seed Appendix B).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct MeshWork {
    /// The operation, named again in the answer.
    pub op: u64,
    /// `observe`, `orient`, `decide`, `act`, `record` or `sync`; or `probe`, a readiness
    /// probe from the agent's cluster lead while it joins: answer READY at once, no work.
    pub verb: String,
    pub payload: String,
    /// SHA-256 of the payload, hex.
    pub content_hash: String,
    /// When the agent should be READY, Unix milliseconds.
    pub target_arrival_ms: u64,
    pub priority: u8,
    #[serde(default)]
    pub requires: Option<String>,
}

impl MeshWork {
    /// Whether the payload matches its content hash (a mismatch is an integrity conflict).
    pub fn intact(&self) -> bool {
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.payload.as_bytes());
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        hex == self.content_hash
    }
}

/// A connection to the agent, registered.
pub struct Worker {
    stream: UnixStream,
    node: String,
}

/// The first 8 bytes of the SHA-256 of `result`, big-endian: how reports tell results apart
/// (the Python SDK hashes the same way).
pub fn result_hash(result: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(result.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

impl Worker {
    /// Connects to the agent's socket at `path` and registers as `name` with `models` warm.
    pub fn connect(
        path: impl AsRef<Path>,
        name: &str,
        models: &[&str],
    ) -> Result<Worker, WorkerError> {
        Worker::connect_with_heartbeat(path, name, models, None)
    }

    /// [`Worker::connect`], promising a frame at least every `heartbeat` (call
    /// [`Worker::heartbeat`] or [`Worker::progress`] during long steps): silent for three of
    /// them, the agent takes the worker for hung and fails its attempts.
    pub fn connect_with_heartbeat(
        path: impl AsRef<Path>,
        name: &str,
        models: &[&str],
        heartbeat: Option<Duration>,
    ) -> Result<Worker, WorkerError> {
        let stream = UnixStream::connect(path)?;
        let mut w = Worker {
            stream,
            node: String::new(),
        };
        let mut register = json!({"op": "register", "worker": name, "models": models});
        if let Some(h) = heartbeat {
            register["heartbeat_ms"] = json!(h.as_millis() as u64);
        }
        let reply = w.call(register)?;
        w.node = reply["node"].as_str().unwrap_or_default().to_owned();
        Ok(w)
    }

    /// The node whose agent this worker talks to.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn send(&mut self, request: &Value) -> Result<(), WorkerError> {
        let body = serde_json::to_vec(request).map_err(|e| WorkerError::Protocol(e.to_string()))?;
        if body.len() > MAX_FRAME_BYTES {
            return Err(WorkerError::TooLarge(body.len()));
        }
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame)?;
        Ok(())
    }

    /// Sends one request and reads its answer; a `refused` answer is an error.
    pub fn call(&mut self, request: Value) -> Result<Value, WorkerError> {
        self.send(&request)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME_BYTES {
            return Err(WorkerError::TooLarge(n));
        }
        let mut body = vec![0u8; n];
        self.stream.read_exact(&mut body)?;
        let reply: Value =
            serde_json::from_slice(&body).map_err(|e| WorkerError::Protocol(e.to_string()))?;
        if reply["op"] == "refused" {
            let reason = reply["reason"].as_str().unwrap_or_default();
            return Err(WorkerError::Refused(reason.to_owned()));
        }
        Ok(reply)
    }

    /// Sends `op` about the task `task` holds under its attempt, with `fields`; its answer.
    fn on_task(
        &mut self,
        op: &str,
        task: &ClaimedTask,
        mut fields: Value,
    ) -> Result<Value, WorkerError> {
        fields["op"] = json!(op);
        fields["task"] = json!(task.task);
        fields["attempt"] = json!(task.attempt);
        self.call(fields)
    }

    /// The next iteration of a task, waiting up to `wait` (at most [`MAX_CLAIM_WAIT`]) for one.
    pub fn claim(&mut self, wait: Duration) -> Result<Claimed, WorkerError> {
        let wait_ms = wait.min(MAX_CLAIM_WAIT).as_millis() as u64;
        let reply = self.call(json!({"op": "claim", "wait_ms": wait_ms}))?;
        match reply["op"].as_str() {
            Some("task") => serde_json::from_value(reply)
                .map(Claimed::Task)
                .map_err(|e| WorkerError::Protocol(e.to_string())),
            Some("none") => Ok(Claimed::Nothing),
            Some("soft-stop") => Ok(Claimed::SoftStop),
            _ => Err(WorkerError::Protocol(reply.to_string())),
        }
    }

    pub fn heartbeat(&mut self) -> Result<(), WorkerError> {
        self.call(json!({"op": "heartbeat"})).map(drop)
    }

    /// How far the iteration under way is, 0 to 1, with a short note (shown by
    /// `qs task show`).
    pub fn progress(
        &mut self,
        task: &ClaimedTask,
        fraction: f64,
        note: &str,
    ) -> Result<(), WorkerError> {
        self.on_task(
            "progress",
            task,
            json!({ "fraction": fraction, "note": note }),
        )
        .map(drop)
    }

    /// Reports an iteration of `task` that produced `result` with `score`.
    pub fn report(
        &mut self,
        task: &ClaimedTask,
        score: f64,
        result: &str,
    ) -> Result<Next, WorkerError> {
        let reply = self.on_task(
            "report",
            task,
            json!({ "score": score, "result_hash": result_hash(result) }),
        )?;
        match reply["next"].as_str() {
            Some("finish") => Ok(Next::Finish),
            Some("continue") => Ok(Next::Continue),
            _ => Err(WorkerError::Protocol(reply.to_string())),
        }
    }

    /// Saves `state` at `iteration`: the next claim of the task resumes there. Answered once
    /// it is on the agent's disk.
    pub fn checkpoint(
        &mut self,
        task: &ClaimedTask,
        iteration: u32,
        state: &str,
    ) -> Result<(), WorkerError> {
        self.on_task(
            "checkpoint",
            task,
            json!({ "iteration": iteration, "state": state }),
        )
        .map(drop)
    }

    pub fn complete(&mut self, task: &ClaimedTask, result: &str) -> Result<(), WorkerError> {
        self.on_task("complete", task, json!({ "result": result }))
            .map(drop)
    }

    pub fn fail(&mut self, task: &ClaimedTask, reason: &str) -> Result<(), WorkerError> {
        self.on_task("fail", task, json!({ "reason": reason }))
            .map(drop)
    }

    /// Runs the side effect `f` of `task` named `key` unless an attempt of the task already
    /// ran it to the end: the agent keeps each task's finished effects with its record. `f`
    /// gets a token stable across attempts (`TASK/KEY`) to hand to the outside system: a
    /// worker that dies after `f` and before the agent heard of it leaves the next attempt to
    /// run `f` again, which the outside system drops by that token. Returns whether `f` ran.
    pub fn effect<E>(
        &mut self,
        task: &ClaimedTask,
        key: &str,
        f: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<Result<bool, E>, WorkerError> {
        let reply = self.on_task("effect", task, json!({ "key": key }))?;
        if reply["done"] == true {
            return Ok(Ok(false));
        }
        if let Err(e) = f(&format!("{}/{key}", task.task)) {
            return Ok(Err(e));
        }
        self.on_task("effect-done", task, json!({ "key": key }))?;
        Ok(Ok(true))
    }

    /// Claims and works tasks until soft-stopped, or until no work came for `idle` when it is
    /// given. `step(worker, task, state)` does one iteration from the last checkpoint's
    /// state; each is checkpointed and reported, and the task completed when refining is
    /// over. A step's error fails the attempt with it; a refusal from the agent (a superseded
    /// attempt) drops the task and goes on.
    pub fn run(
        &mut self,
        mut step: impl FnMut(&mut Worker, &ClaimedTask, Option<&str>) -> Result<Step, String>,
        idle: Option<Duration>,
    ) -> Result<(), WorkerError> {
        let mut idle_since = Instant::now();
        loop {
            let task = match self.claim(Duration::from_millis(500))? {
                Claimed::SoftStop => return Ok(()),
                Claimed::Nothing => {
                    if idle.is_some_and(|i| idle_since.elapsed() >= i) {
                        return Ok(());
                    }
                    continue;
                }
                Claimed::Task(t) => t,
            };
            idle_since = Instant::now();
            let state = task.state.clone();
            let done = match step(self, &task, state.as_deref()) {
                Err(reason) => self.fail(&task, &reason),
                Ok(s) => self.iterate(&task, &s),
            };
            match done {
                Ok(()) | Err(WorkerError::Refused(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Joins the mesh as an agent under this worker's name, with `capabilities`; its id.
    pub fn mesh_join(&mut self, capabilities: &[&str]) -> Result<u64, WorkerError> {
        let reply = self.call(json!({"op": "mesh-join", "capabilities": capabilities}))?;
        reply["agent"]
            .as_u64()
            .ok_or_else(|| WorkerError::Protocol(reply.to_string()))
    }

    /// What the mesh sends this agent, waiting up to `wait` (at most [`MAX_CLAIM_WAIT`]).
    pub fn mesh_poll(&mut self, wait: Duration) -> Result<Option<MeshWork>, WorkerError> {
        let wait_ms = wait.min(MAX_CLAIM_WAIT).as_millis() as u64;
        let reply = self.call(json!({"op": "mesh-poll", "wait_ms": wait_ms}))?;
        match reply["op"].as_str() {
            Some("mesh") => serde_json::from_value(reply["envelope"].clone())
                .map(Some)
                .map_err(|e| WorkerError::Protocol(e.to_string())),
            Some("none") => Ok(None),
            _ => Err(WorkerError::Protocol(reply.to_string())),
        }
    }

    /// Answers `work`: READY with `answer` when `conflict` is `None`, else CONFLICT with it
    /// (one of the protocol's conflicts, e.g. `{"type": "capability-mismatch", "missing": "gpu"}`).
    pub fn mesh_answer(
        &mut self,
        work: &MeshWork,
        answer: &str,
        conflict: Option<Value>,
    ) -> Result<(), WorkerError> {
        let state = if conflict.is_some() { -1 } else { 1 };
        let mut request =
            json!({"op": "mesh-answer", "operation": work.op, "state": state, "answer": answer});
        if let Some(c) = conflict {
            request["conflict"] = c;
        }
        self.call(request).map(drop)
    }

    fn iterate(&mut self, task: &ClaimedTask, s: &Step) -> Result<(), WorkerError> {
        self.checkpoint(task, task.iteration + 1, &s.state)?;
        if self.report(task, s.score, &s.result)? == Next::Finish {
            self.complete(task, &s.result)?;
        }
        Ok(())
    }
}
