//! Who waits at this node for an operator's request's outcome: the API here (for a request
//! the root here runs, or one sent on to the root) or a node that sent its request here.
//! At most `MAX_PENDING`, each with a deadline (a root that died, a publish that failed,
//! leave nobody waiting for ever, and no slot taken); an outcome is taken only from the
//! node its request went to, and only for a request of this node's.

use qs_wire::NodeId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Requests in flight at once, at most (local and for others).
pub(super) const MAX_PENDING: usize = 1_024;

/// The API's end of a request.
pub(super) type Reply = oneshot::Sender<Result<serde_json::Value, String>>;

/// Who waits for an outcome.
pub(super) enum Waiter {
    /// The API here; `sent_to`: the root its request went to (none: run here).
    Local {
        reply: Reply,
        sent_to: Option<NodeId>,
    },
    /// A node whose request (its number `id`) this root runs.
    Remote { node: NodeId, id: u64 },
}

struct Entry {
    waiter: Waiter,
    until: Instant,
}

/// The waiters by tag (the number the core's outputs name a request by).
#[derive(Default)]
pub(super) struct Waiting {
    by_tag: BTreeMap<u64, Entry>,
    next_tag: u64,
}

impl Waiting {
    /// Whether there is room for one more.
    pub(super) fn has_room(&self) -> bool {
        self.by_tag.len() < MAX_PENDING
    }

    /// `waiter` waits up to `wait` from `now`: its tag, or none when there is no room.
    pub(super) fn wait(&mut self, waiter: Waiter, wait: Duration, now: Instant) -> Option<u64> {
        if !self.has_room() {
            return None;
        }
        self.next_tag += 1;
        let until = now + wait;
        self.by_tag.insert(self.next_tag, Entry { waiter, until });
        Some(self.next_tag)
    }

    /// Whoever waits for `tag`, no longer waiting.
    pub(super) fn take(&mut self, tag: u64) -> Option<Waiter> {
        self.by_tag.remove(&tag).map(|e| e.waiter)
    }

    /// The outcome `id` from `from`: the API's reply, if `id` is a request of this node's
    /// that went to `from` (another node's word is not taken for it).
    pub(super) fn outcome_from(&mut self, from: &NodeId, id: u64) -> Option<Reply> {
        let ours = matches!(
            self.by_tag.get(&id),
            Some(Entry { waiter: Waiter::Local { sent_to: Some(to), .. }, .. }) if to == from
        );
        if !ours {
            return None;
        }
        match self.take(id)? {
            Waiter::Local { reply, .. } => Some(reply),
            Waiter::Remote { .. } => None,
        }
    }

    /// Those whose deadline passed at `now`, no longer waiting.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<Waiter> {
        let gone: Vec<u64> = self
            .by_tag
            .iter()
            .filter(|(_, e)| e.until <= now)
            .map(|(t, _)| *t)
            .collect();
        gone.into_iter().filter_map(|t| self.take(t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    /// An outcome is taken only from the root the request went to, and only for a request
    /// of this node's; a waiter past its deadline goes, and frees its slot.
    #[test]
    fn outcomes_come_from_the_root_asked_and_waiters_expire() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        let (reply, mut rx) = oneshot::channel();
        let sent_to = Some(node("root"));
        let tag = w
            .wait(
                Waiter::Local { reply, sent_to },
                Duration::from_secs(30),
                t0,
            )
            .unwrap();
        let remote = Waiter::Remote {
            node: node("asker"),
            id: 7,
        };
        let theirs = w.wait(remote, Duration::from_secs(5), t0).unwrap();
        assert!(w.outcome_from(&node("mallory"), tag).is_none());
        assert!(w.outcome_from(&node("root"), theirs).is_none());
        // Neither was taken by the forgeries.
        assert_eq!(w.by_tag.len(), 2);
        let late = w.expired(t0 + Duration::from_secs(6));
        assert!(matches!(late.as_slice(), [Waiter::Remote { id: 7, .. }]));
        let reply = w
            .outcome_from(&node("root"), tag)
            .expect("the root's outcome");
        reply.send(Ok(serde_json::json!(1))).unwrap();
        assert_eq!(rx.try_recv().unwrap(), Ok(serde_json::json!(1)));
        assert!(w.by_tag.is_empty());
        // Full: no room until one goes.
        for _ in 0..MAX_PENDING {
            let (reply, _) = oneshot::channel();
            let local = Waiter::Local {
                reply,
                sent_to: None,
            };
            w.wait(local, Duration::from_secs(1), t0).unwrap();
        }
        let (reply, _) = oneshot::channel();
        let one_more = Waiter::Local {
            reply,
            sent_to: None,
        };
        assert!(w.wait(one_more, Duration::from_secs(1), t0).is_none());
        assert_eq!(w.expired(t0 + Duration::from_secs(1)).len(), MAX_PENDING);
        assert!(w.has_room());
    }
}
