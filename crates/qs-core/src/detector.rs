//! Failure detection: suspect a silent node, confirm through probes, declare it dead.
//!
//! A node silent for `suspect_after_ms` (two missed heartbeats by default) is suspected. The
//! detector pings it directly and asks `probe_relays` other live nodes to ping it too (an
//! indirect probe, in the manner of SWIM), so one broken path does not kill a live node. The
//! first answer clears the suspicion; none within `probe_timeout_ms` confirms the death. A node
//! silent for `dead_after_ms` is dead whatever the probes say. One detector serves a process:
//! its answers come back to `me`, one node of that process, whose runtime hands them over.

use crate::config::{Config, MAX_PROBE_RELAYS};
use crate::registry::Registry;
use crate::rng::Rng;
use crate::time::Time;
use qs_wire::{Message, NodeId};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Most suspects probed at once; others wait for a slot (the hard deadline still applies).
pub const MAX_PROBES: usize = 1024;

/// What the detector is told.
#[derive(Clone, Debug, PartialEq)]
pub enum DetectorInput {
    /// Time passed; look for silent nodes and overdue probes.
    Tick,
    /// `target` answered the probe `nonce` (directly or through a relay).
    Ack { target: NodeId, nonce: u64 },
}

/// What the detector asks of its shell.
#[derive(Clone, Debug, PartialEq)]
pub enum DetectorOutput {
    /// Send a probe message from `me`.
    Send { to: NodeId, msg: Box<Message> },
    /// The suspect answered: count it as heard from now ([`Registry::vouch`]).
    Alive(NodeId),
    /// No answer: declare the node dead ([`Registry::remove`]).
    Dead(NodeId),
}

#[derive(Clone, Debug)]
struct Probe {
    nonce: u64,
    /// When the suspect was last heard from as the probe began: a heartbeat since clears it.
    seen: Time,
    deadline: Time,
}

/// See the module docs.
#[derive(Debug)]
pub struct Detector {
    me: NodeId,
    suspect_after: Duration,
    probe_timeout: Duration,
    relays: usize,
    rng: Rng,
    next_nonce: u64,
    probes: BTreeMap<NodeId, Probe>,
    out: VecDeque<DetectorOutput>,
}

impl Detector {
    /// `me` is the node whose inbox receives the answers; `seed` seeds the choice of relays.
    pub fn new(me: NodeId, config: &Config, seed: u64) -> Detector {
        Detector {
            me,
            suspect_after: Duration::from_millis(config.suspect_after_ms),
            probe_timeout: Duration::from_millis(config.probe_timeout_ms),
            relays: config.probe_relays.min(MAX_PROBE_RELAYS),
            rng: Rng::seeded(seed),
            next_nonce: 1,
            probes: BTreeMap::new(),
            out: VecDeque::new(),
        }
    }

    /// Nodes under probe now.
    pub fn suspects(&self) -> impl Iterator<Item = &NodeId> {
        self.probes.keys()
    }

    /// Feeds one input; `local` says which nodes this process runs (never suspected: they
    /// vouch for themselves).
    pub fn handle(
        &mut self,
        input: DetectorInput,
        now: Time,
        reg: &Registry,
        local: impl Fn(&NodeId) -> bool,
    ) {
        match input {
            DetectorInput::Tick => self.on_tick(now, reg, local),
            DetectorInput::Ack { target, nonce } => {
                if self.probes.get(&target).is_some_and(|p| p.nonce == nonce) {
                    self.probes.remove(&target);
                    self.out.push_back(DetectorOutput::Alive(target));
                }
            }
        }
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<DetectorOutput> {
        self.out.pop_front()
    }

    /// When the detector next needs a [`DetectorInput::Tick`] for its probes (silent nodes
    /// are found by the shell's periodic tick).
    pub fn poll_timeout(&self) -> Option<Time> {
        self.probes.values().map(|p| p.deadline).min()
    }

    fn on_tick(&mut self, now: Time, reg: &Registry, local: impl Fn(&NodeId) -> bool) {
        // Suspicions that heartbeats or deaths settled.
        self.probes
            .retain(|node, p| reg.last_seen(node).is_some_and(|seen| seen <= p.seen));
        // Overdue probes: nobody answered for the suspect.
        let overdue: Vec<NodeId> = self
            .probes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for node in &overdue {
            self.probes.remove(node);
            self.out.push_back(DetectorOutput::Dead(node.clone()));
        }
        // New suspects.
        let Some(before) = now.checked_sub(self.suspect_after) else {
            return;
        };
        let suspects: Vec<(NodeId, Time)> = reg
            .silent_since(before)
            .filter(|(n, _)| {
                **n != self.me
                    && !local(n)
                    && !self.probes.contains_key(*n)
                    && !overdue.contains(*n) // its death is being declared
            })
            .take(MAX_PROBES.saturating_sub(self.probes.len()))
            .map(|(n, seen)| (n.clone(), seen))
            .collect();
        if suspects.is_empty() {
            return;
        }
        // Relays: live nodes heard from lately, neither us nor a suspect.
        let fresh: Vec<&NodeId> = reg
            .live_nodes()
            .map(|s| &s.node)
            .filter(|n| {
                **n != self.me
                    && !self.probes.contains_key(*n)
                    && reg.last_seen(n).is_some_and(|seen| seen > before)
            })
            .collect();
        for (target, seen) in suspects {
            let nonce = self.next_nonce;
            self.next_nonce += 1;
            self.out.push_back(DetectorOutput::Send {
                to: target.clone(),
                msg: Box::new(Message::Ping {
                    nonce,
                    origin: self.me.clone(),
                    via: None,
                }),
            });
            for relay in pick(&mut self.rng, &fresh, self.relays) {
                self.out.push_back(DetectorOutput::Send {
                    to: relay.clone(),
                    msg: Box::new(Message::PingReq {
                        target: target.clone(),
                        nonce,
                    }),
                });
            }
            self.probes.insert(
                target,
                Probe {
                    nonce,
                    seen,
                    deadline: now + self.probe_timeout,
                },
            );
        }
    }
}

/// Up to `k` distinct entries of `from`, uniformly (a partial Fisher-Yates on indexes).
fn pick<'a>(rng: &mut Rng, from: &[&'a NodeId], k: usize) -> Vec<&'a NodeId> {
    let mut idx: Vec<usize> = (0..from.len()).collect();
    let k = k.min(idx.len());
    for i in 0..k {
        let j = i + rng.below((idx.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx[..k].iter().map(|&i| from[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::status;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn ms(t: u64) -> Time {
        Time::from_millis(t)
    }

    /// Five nodes heard from at 0; `me` is a; d is local to this process.
    fn setup() -> (Detector, Registry) {
        let config = Config::default();
        let mut reg = Registry::new(&config);
        for n in ["a", "b", "c", "d", "e"] {
            reg.observe(status(n, 0, 0), ms(0));
        }
        (Detector::new(id("a"), &config, 7), reg)
    }

    fn tick(d: &mut Detector, reg: &Registry, at: u64) -> Vec<DetectorOutput> {
        d.handle(DetectorInput::Tick, ms(at), reg, |n| n.as_str() == "d");
        std::iter::from_fn(|| d.poll()).collect()
    }

    /// Every node but e beats again at `at`.
    fn beat_all_but_e(reg: &mut Registry, at: u64) {
        for n in ["a", "b", "c", "d"] {
            reg.observe(status(n, 0, 0), ms(at));
        }
    }

    #[test]
    fn a_silent_node_is_pinged_directly_and_through_relays() {
        let (mut d, mut reg) = setup();
        assert!(
            tick(&mut d, &reg, 400).is_empty(),
            "nobody silent for 500 ms yet"
        );
        beat_all_but_e(&mut reg, 400);
        let out = tick(&mut d, &reg, 500);
        let ping = DetectorOutput::Send {
            to: id("e"),
            msg: Box::new(Message::Ping {
                nonce: 1,
                origin: id("a"),
                via: None,
            }),
        };
        assert_eq!(out[0], ping);
        // Relays: the fresh nodes other than a and e; d is local but relays well.
        let mut relays: Vec<&str> = out[1..]
            .iter()
            .map(|o| match o {
                DetectorOutput::Send { to, msg } => match &**msg {
                    Message::PingReq { target, nonce: 1 } if target == &id("e") => to.as_str(),
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        relays.sort();
        assert_eq!(relays, ["b", "c", "d"]);
        assert_eq!(d.suspects().collect::<Vec<_>>(), [&id("e")]);
        assert!(
            tick(&mut d, &reg, 600).is_empty(),
            "one probe per suspicion"
        );
    }

    #[test]
    fn an_answer_clears_the_suspicion_and_silence_confirms_the_death() {
        let (mut d, mut reg) = setup();
        beat_all_but_e(&mut reg, 400);
        tick(&mut d, &reg, 500);
        // A stale nonce changes nothing; the probe's own does.
        d.handle(
            DetectorInput::Ack {
                target: id("e"),
                nonce: 9,
            },
            ms(550),
            &reg,
            |_| false,
        );
        assert_eq!(d.poll(), None);
        d.handle(
            DetectorInput::Ack {
                target: id("e"),
                nonce: 1,
            },
            ms(560),
            &reg,
            |_| false,
        );
        assert_eq!(d.poll(), Some(DetectorOutput::Alive(id("e"))));
        reg.vouch(&id("e"), ms(560));
        assert_eq!(d.suspects().count(), 0);
        // Silent again, and this time nobody answers: dead once the probe times out.
        beat_all_but_e(&mut reg, 1000);
        let out = tick(&mut d, &reg, 1100);
        assert!(matches!(
            &out[0],
            DetectorOutput::Send { msg, .. } if matches!(**msg, Message::Ping { nonce: 2, .. })
        ));
        assert!(tick(&mut d, &reg, 1300).is_empty());
        assert_eq!(d.poll_timeout(), Some(ms(1350)));
        assert_eq!(tick(&mut d, &reg, 1350), [DetectorOutput::Dead(id("e"))]);
    }

    #[test]
    fn a_heartbeat_during_the_probe_clears_it_and_local_nodes_are_never_suspected() {
        let (mut d, mut reg) = setup();
        reg.observe(status("b", 0, 0), ms(400));
        reg.observe(status("c", 0, 0), ms(400));
        let out = tick(&mut d, &reg, 500);
        let pinged: Vec<&str> = out
            .iter()
            .filter_map(|o| match o {
                DetectorOutput::Send { to, msg } if matches!(**msg, Message::Ping { .. }) => {
                    Some(to.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(pinged, ["e"], "a is us and d vouches for itself");
        reg.observe(status("e", 0, 0), ms(600));
        assert!(tick(&mut d, &reg, 800).is_empty(), "e beat again: no death");
        assert_eq!(d.suspects().count(), 0);
    }
}
