//! Seed §6.1's AGENT_CRASH at a cluster lead: an agent offline for [`CRASH_AFTER_MS`] while
//! its host lives is taken for crashed (`MeshOutput::AgentCrashed`, which the shell records),
//! and its host is asked to restart it (`MeshMessage::Restart`: a worker agent is
//! disconnected, for its supervisor to start it again, and joins anew, its profile measured
//! again as a newcomer's). One whose next crash is declared within [`CRASH_AGAIN_WITHIN_MS`]
//! and the [`CRASH_AFTER_MS`] it takes to declare one, counted from the last declaration
//! (a restart's own time included), is escalated: "replacement also fails", or it came
//! back by itself and failed again. (An agent whose host is lost is not: the host's loss is
//! the event, and its agents leave the tree with it.) While the mesh is in EMERGENCY
//! (seed §6.3: "Halt all automated operations") crashes are declared and no restart is
//! asked; the first beat in a better mode asks, or an operator's heal of the cluster.

use super::*;
use qs_wire::mesh::AgentOrder;

/// Offline this long, its host alive: crashed (seed: "no heartbeat for 30+ seconds").
pub const CRASH_AFTER_MS: u64 = 30_000;
/// A crash this soon (and `CRASH_AFTER_MS`) after the last one was declared is escalated.
pub const CRASH_AGAIN_WITHIN_MS: u64 = 600_000;

/// An agent's crash record at its lead.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Crash {
    /// Since when it is offline while its host lives, as the lead's beats saw it.
    offline_since: Option<Time>,
    /// Taken for crashed (until it comes back).
    declared: bool,
    /// When its host was last asked to restart it (again every `CRASH_AFTER_MS`: a request
    /// may be lost); none while the mesh is in EMERGENCY, which halts automated operations.
    asked: Option<Time>,
}

/// Crashes a lead remembers by agent (an agent restarted leaves the tree and joins anew:
/// its view is new), at most.
const MAX_CRASHES_KEPT: usize = 10_000;

/// An agent taken for crashed, as the shell records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentCrash {
    pub agent: AgentId,
    pub cluster: ClusterId,
    pub host: NodeId,
    pub offline_ms: u64,
    /// It crashed again soon after it came back from a crash: its replacement fails too.
    pub escalated: bool,
}

impl MeshNode {
    /// A lead's pass over its agents at each beat: crashes declared (once) and their
    /// restarts asked (again while they last), agents back noted.
    pub(super) fn crashes(&mut self, now: Time) {
        let after = Duration::from_millis(CRASH_AFTER_MS);
        // A crash is escalated when the agent's last one was declared lately: it came back
        // since (restarted) and crashed again.
        let again = Duration::from_millis(CRASH_AGAIN_WITHIN_MS + CRASH_AFTER_MS);
        self.crashed_lately.retain(|_, t| now.since(*t) < again);
        let mut crashed: Vec<AgentCrash> = Vec::new();
        let mut restarts: Vec<(NodeId, AgentOrder)> = Vec::new();
        // Seed §6.3's EMERGENCY: "Halt all automated operations": crashes are still
        // declared, their restarts wait for a better mode (or an operator's heal).
        let halted = self.mode == Mode::Emergency;
        for (c, led) in &mut self.led {
            // Nothing to look at while every agent is active and none has a crash record.
            if !led.crash_watch && led.active_count() as usize == led.agents.len() {
                continue;
            }
            let mut watch = false;
            for (a, v) in &mut led.agents {
                let known = v.unknown_until.is_none_or(|t| now >= t);
                let host_alive = led.hosts.get(&v.host).is_some_and(|h| h.last.is_some());
                if v.state != AgentState::Offline || !known || !host_alive {
                    if v.state != AgentState::Offline {
                        v.crash.asked = None;
                        v.crash.declared = false;
                    }
                    // The host's loss is the event, not its agents' (their time starts
                    // again when it is back).
                    v.crash.offline_since = None;
                    watch |= v.crash.declared;
                    continue;
                }
                watch = true;
                let since = *v.crash.offline_since.get_or_insert(now);
                if now.since(since) < after {
                    continue;
                }
                let restart = AgentOrder {
                    agent: *a,
                    cluster: *c,
                    joined_ms: v.joined_host_ms,
                    task: None,
                };
                if !v.crash.declared {
                    v.crash.declared = true;
                    crashed.push(AgentCrash {
                        agent: *a,
                        cluster: *c,
                        host: v.host.clone(),
                        offline_ms: now.since(since).as_millis() as u64,
                        escalated: self.crashed_lately.contains_key(a),
                    });
                }
                if !halted && v.crash.asked.is_none_or(|t| now.since(t) >= after) {
                    v.crash.asked = Some(now);
                    restarts.push((v.host.clone(), restart));
                }
            }
            led.crash_watch = watch;
        }
        for crash in crashed {
            if self.crashed_lately.len() < MAX_CRASHES_KEPT {
                self.crashed_lately.insert(crash.agent, now);
            }
            self.out.push_back(MeshOutput::AgentCrashed(crash));
        }
        for (host, restart) in restarts {
            self.send(host, MeshMessage::Restart(restart));
        }
    }

    /// An operator's heal of the led `clusters` (a human's action, whatever the mode): the
    /// restart of each agent taken for crashed there, its host alive, asked now; those.
    pub(super) fn restart_crashed(&mut self, clusters: &[ClusterId], now: Time) -> Vec<AgentId> {
        let mut restarts: Vec<(NodeId, AgentOrder)> = Vec::new();
        for c in clusters {
            let Some(led) = self.led.get_mut(c) else {
                continue;
            };
            for (a, v) in &mut led.agents {
                let host_alive = led.hosts.get(&v.host).is_some_and(|h| h.last.is_some());
                if v.crash.declared && v.state == AgentState::Offline && host_alive {
                    v.crash.asked = Some(now);
                    let order = AgentOrder {
                        agent: *a,
                        cluster: *c,
                        joined_ms: v.joined_host_ms,
                        task: None,
                    };
                    restarts.push((v.host.clone(), order));
                }
            }
        }
        let asked: Vec<AgentId> = restarts.iter().map(|(_, r)| r.agent).collect();
        for (host, restart) in restarts {
            self.send(host, MeshMessage::Restart(restart));
        }
        asked
    }

    /// The host part: the lead of one of its agents' cluster (as the inbox checked) asks it
    /// to restart that agent, or take its task from it (`out` the shell's output for it):
    /// done if it is this host's, of that cluster, and (when the request says) the
    /// registration the lead knows, not one that came back since.
    pub(super) fn on_agent_order(&mut self, r: AgentOrder, out: fn(AgentOrder) -> MeshOutput) {
        let Some(mine) = self.local.iter().find(|a| a.agent == r.agent) else {
            self.refused_senders += 1;
            return;
        };
        if self.tree.cluster_of(r.agent) != Some(r.cluster) {
            self.refused_senders += 1;
            return;
        }
        if r.joined_ms != 0 && mine.joined_ms != r.joined_ms {
            return; // registered again since: this request is old news
        }
        self.out.push_back(out(r));
    }
}
