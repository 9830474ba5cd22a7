//! Seed §6.1's AGENT_CRASH at a cluster lead: an agent offline for [`CRASH_AFTER_MS`] while
//! its host lives is taken for crashed (`MeshOutput::AgentCrashed`, which the shell records),
//! and its host is asked to restart it (`MeshMessage::Restart`: a worker agent is
//! disconnected, for its supervisor to start it again, and joins anew, its profile measured
//! again as a newcomer's). One that crashes again within [`CRASH_AGAIN_WITHIN_MS`] of coming
//! back is escalated: "replacement also fails". (An agent whose host is lost is not: the
//! host's loss is the event, and its agents leave the tree with it.)

use super::*;
use qs_wire::mesh::Restart;

/// Offline this long, its host alive: crashed (seed: "no heartbeat for 30+ seconds").
pub const CRASH_AFTER_MS: u64 = 30_000;
/// A crash this soon after the agent came back from the last one is escalated.
pub const CRASH_AGAIN_WITHIN_MS: u64 = 600_000;

/// An agent's crash record at its lead.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Crash {
    /// Since when it is offline, as the lead's beats saw it.
    offline_since: Option<Time>,
    /// When it was taken for crashed (until it comes back).
    declared: Option<Time>,
    /// When it last came back from a crash.
    back: Option<Time>,
}

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
    /// A lead's pass over its agents at each beat: crashes declared, agents back noted.
    pub(super) fn crashes(&mut self, now: Time) {
        let after = Duration::from_millis(CRASH_AFTER_MS);
        let again = Duration::from_millis(CRASH_AGAIN_WITHIN_MS);
        let mut crashed: Vec<AgentCrash> = Vec::new();
        for (c, led) in &mut self.led {
            // Nothing to look at while every agent is active and none has a crash record.
            if !led.crash_watch && led.active_count() as usize == led.agents.len() {
                continue;
            }
            let mut watch = false;
            for (a, v) in &mut led.agents {
                let known = v.unknown_until.is_none_or(|t| now >= t);
                if v.state != AgentState::Offline || !known {
                    if v.state != AgentState::Offline && v.crash.declared.take().is_some() {
                        v.crash.back = Some(now);
                    }
                    v.crash.offline_since = None;
                    continue;
                }
                watch = true;
                let since = *v.crash.offline_since.get_or_insert(now);
                let host_alive = led.hosts.get(&v.host).is_some_and(|h| h.last.is_some());
                if v.crash.declared.is_some() || now.since(since) < after || !host_alive {
                    continue;
                }
                v.crash.declared = Some(now);
                crashed.push(AgentCrash {
                    agent: *a,
                    cluster: *c,
                    host: v.host.clone(),
                    offline_ms: now.since(since).as_millis() as u64,
                    escalated: v.crash.back.is_some_and(|t| now.since(t) < again),
                });
            }
            led.crash_watch = watch;
        }
        for crash in crashed {
            let restart = Restart {
                agent: crash.agent,
                cluster: crash.cluster,
            };
            self.send(crash.host.clone(), MeshMessage::Restart(restart));
            self.out.push_back(MeshOutput::AgentCrashed(crash));
        }
    }

    /// The host part: the lead of one of its agents' cluster (as the inbox checked) asks it
    /// to restart that agent.
    pub(super) fn on_restart(&mut self, r: Restart) {
        let mine = self.local.iter().any(|a| a.agent == r.agent);
        if self.tree.cluster_of(r.agent) != Some(r.cluster) || !mine {
            self.refused_senders += 1;
            return;
        }
        self.out.push_back(MeshOutput::Restart(r.agent));
    }
}
