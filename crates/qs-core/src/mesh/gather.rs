//! Scatter-gather with an arrival window (seed §3.2): answers count until `target + window`;
//! the operation succeeds when READY answers reach the minimum share of those sent. Answers
//! after the window are quarantined (kept, counted as late) and are not failures;
//! CONFLICT answers are quarantined for resolution and do not count as responses.

use crate::mesh::quorum::{self, Decision, QuorumPolicy, Votes};
use crate::time::Time;
use qs_wire::mesh::{Tally, Trinary};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Prediction accuracy bound (seed Part 11: within 50 ms).
pub const ACCURATE_MS: u64 = 50;
/// Most late answers kept in quarantine per gather.
pub const MAX_QUARANTINE: usize = 1_000;
/// The longest extension a WAIT gives a window (a long window, a delegation's timeout of
/// seconds, is extended by this much, not doubled).
pub const MAX_EXTENSION_MS: u64 = 1_000;

/// How much a WAIT extends `window` by: its length, at most [`MAX_EXTENSION_MS`].
pub fn extension(window: Duration) -> Duration {
    window.min(Duration::from_millis(MAX_EXTENSION_MS))
}

/// How a gather ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// READY answers reached the minimum rate.
    Success,
    /// Some, not enough: retry with a larger window.
    Partial,
    /// Under half the minimum rate, or nothing could be sent.
    Failed,
}

/// What happened to one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// Counted in the window.
    Counted,
    /// After the window: quarantined.
    Late,
    /// From someone not sent to, or a second answer: ignored.
    Ignored,
}

/// One scatter-gather in progress over keys `K`.
#[derive(Clone, Debug)]
pub struct Gather<K: Ord> {
    target: Time,
    window: Duration,
    min_rate: f64,
    answers: BTreeMap<K, Option<Trinary>>,
    pending: usize,
    /// Scheduled and not sent yet.
    unsent: usize,
    tally: Tally,
    quarantine: Vec<K>,
    /// Its window was extended once (seed §5.2's WAIT), by [`extension`].
    extended: bool,
}

impl<K: Ord + Copy> Gather<K> {
    pub fn new(target: Time, window: Duration, min_rate: f64) -> Gather<K> {
        Gather {
            target,
            window,
            min_rate,
            answers: BTreeMap::new(),
            pending: 0,
            unsent: 0,
            tally: Tally::default(),
            quarantine: Vec::new(),
            extended: false,
        }
    }

    /// Seed §5.2: at its close, a gather whose quorum at its own rate says WAIT (too few
    /// READY, too many still in transit) extends its window once, by [`extension`]; true if
    /// it did.
    /// Answers in the extension count, but not as window hits: the window the agents were
    /// scheduled for is the first.
    pub fn wait_once(&mut self, now: Time) -> bool {
        if self.extended
            || now < self.deadline()
            || self.complete()
            || !matches!(decide(&self.tally, self.min_rate), Decision::Wait)
        {
            return false;
        }
        self.extended = true;
        self.tally.waited = 1;
        true
    }

    /// `n` sends are scheduled for later: the gather is not complete before they go.
    pub fn scheduled(&mut self, n: usize) {
        self.unsent += n;
    }

    /// A scheduled send could not go (its agent left the cluster): unreachable.
    pub fn dropped(&mut self) {
        self.unsent = self.unsent.saturating_sub(1);
        self.tally.unreachable += 1;
    }

    /// `key` was sent to.
    pub fn sent(&mut self, key: K) {
        self.unsent = self.unsent.saturating_sub(1);
        // Sent twice is sent once: an answer already heard stays heard.
        if let std::collections::btree_map::Entry::Vacant(e) = self.answers.entry(key) {
            e.insert(None);
            self.pending += 1;
            self.tally.sent += 1;
        }
    }

    /// `key` was READY for the same message in the attempt before (a retry's, seed §5.2):
    /// counted sent and READY, ready in its window, without being sent it again.
    pub fn carried(&mut self, key: K) {
        if let std::collections::btree_map::Entry::Vacant(e) = self.answers.entry(key) {
            e.insert(Some(Trinary::Ready));
            let t = &mut self.tally;
            t.sent += 1;
            t.ready += 1;
            t.window_hits += 1;
            t.carried += 1;
        }
    }

    /// Those that answered READY (in the window, its extension, or late).
    pub fn ready(&self) -> impl Iterator<Item = &K> {
        self.answers
            .iter()
            .filter(|(_, a)| **a == Some(Trinary::Ready))
            .map(|(k, _)| k)
    }

    /// Counts of what could not be sent (too late, unreachable, expired), for the tally.
    pub fn tally_mut(&mut self) -> &mut Tally {
        &mut self.tally
    }

    /// When answers stop counting: the window's end, or the extension's.
    pub fn deadline(&self) -> Time {
        match self.extended {
            true => self.window_end() + extension(self.window),
            false => self.window_end(),
        }
    }

    /// The end of the window the agents were scheduled for (not of its extension).
    fn window_end(&self) -> Time {
        self.target + self.window
    }

    pub fn target(&self) -> Time {
        self.target
    }

    /// An answer from `key`, ready at `ready_at`, heard at `now`.
    pub fn answer(&mut self, key: K, state: Trinary, ready_at: Time, now: Time) -> Heard {
        let Some(slot) = self.answers.get_mut(&key) else {
            return Heard::Ignored;
        };
        if slot.is_some() {
            return Heard::Ignored;
        }
        *slot = Some(state);
        self.pending -= 1;
        if now > self.deadline() {
            self.tally.late += 1;
            if self.quarantine.len() < MAX_QUARANTINE {
                self.quarantine.push(key);
            }
            return Heard::Late;
        }
        match state {
            Trinary::Ready => self.tally.ready += 1,
            Trinary::Transit => self.tally.transit += 1,
            Trinary::Conflict => self.tally.conflict += 1,
        }
        if ready_at <= self.window_end() {
            self.tally.window_hits += 1;
        }
        let off = ready_at.since(self.target).max(self.target.since(ready_at));
        if off <= Duration::from_millis(ACCURATE_MS) {
            self.tally.predicted_within_50ms += 1;
        }
        Heard::Counted
    }

    /// What was sent to `key` expired on the way: it counts as heard (nothing more will
    /// come) and as expired, not as an answer.
    /// (Once, and only for `key`s sent to and not answered yet.)
    pub fn expired(&mut self, key: K) {
        if let Some(slot @ None) = self.answers.get_mut(&key) {
            *slot = Some(Trinary::Transit);
            self.pending -= 1;
            self.tally.expired += 1;
        }
    }

    /// `key` was sent to and answered (in the window or late).
    pub fn answered(&self, key: &K) -> bool {
        self.answers.get(key).is_some_and(|a| a.is_some())
    }

    /// Everything scheduled was sent.
    pub fn all_sent(&self) -> bool {
        self.unsent == 0
    }

    /// Everything scheduled was sent and everyone sent to has answered.
    pub fn complete(&self) -> bool {
        self.pending == 0 && self.unsent == 0
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Late answers held in quarantine.
    pub fn quarantined(&self) -> &[K] {
        &self.quarantine
    }

    /// The outcome, from what was counted so far.
    pub fn outcome(&self) -> Outcome {
        outcome(&self.tally, self.min_rate)
    }
}

/// The trinary quorum on a tally (a gather's, or many added up) at the operation's own
/// response rate (seed §5.2's `required_ready_rate`: a wave's 0.95, the urgent mode's 0.90, a
/// priority-first phase's by its class): sent and not answered in the window is "in
/// transit", its outcome unknown (seed §1.4).
pub fn decide(t: &Tally, required_ready_rate: f64) -> Decision {
    let answered = t.ready.saturating_add(t.transit).saturating_add(t.conflict);
    let votes = Votes {
        ready: t.ready,
        transit: t.transit.saturating_add(t.sent.saturating_sub(answered)),
        conflict: t.conflict,
    };
    let policy = QuorumPolicy {
        required_ready_rate,
        ..QuorumPolicy::default()
    };
    quorum::decide(votes, &policy)
}

/// A gather's result.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Outcome {
    pub status: Status,
    /// READY answers over those sent.
    pub response_rate: f64,
    /// Sent to and not heard from in the window (conflicts, late answers and expired
    /// envelopes excluded).
    pub stragglers: u32,
}

/// The outcome of a tally against a minimum response rate (also for tallies added up from
/// many clusters).
pub fn outcome(t: &Tally, min_rate: f64) -> Outcome {
    let rate = match t.sent {
        0 => 0.0,
        n => f64::from(t.ready) / f64::from(n),
    };
    let status = if t.sent > 0 && rate >= min_rate {
        Status::Success
    } else if t.sent > 0 && rate >= min_rate / 2.0 {
        Status::Partial
    } else {
        Status::Failed
    };
    Outcome {
        status,
        response_rate: rate,
        stragglers: t.sent.saturating_sub(t.heard()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    /// (success rate, READY of 100 sent, still in transit) → whether the gather waits at
    /// its close.
    #[test]
    fn a_gather_waits_once_when_its_quorum_says_wait_and_it_has_not_succeeded() {
        for (min_rate, ready, waits) in [
            (0.95, 88, true),   // WAIT: 12 % in transit
            (0.85, 88, false),  // succeeded at its own rate already
            (0.95, 91, false),  // RETRY: 9 % in transit is not too many
            (0.95, 100, false), // complete
        ] {
            let mut g = Gather::new(t(1_000), Duration::from_millis(100), min_rate);
            for k in 0..100u32 {
                g.sent(k);
            }
            for k in 0..ready {
                g.answer(k, Trinary::Ready, t(1_000), t(1_050));
            }
            assert!(!g.wait_once(t(1_099)), "not before its close");
            assert_eq!(g.wait_once(t(1_100)), waits, "{min_rate} {ready}");
            assert!(!g.wait_once(g.deadline()), "once");
            if waits {
                assert_eq!((g.deadline(), g.tally().waited), (t(1_200), 1));
                // An answer in the extension counts, not as a window hit.
                g.answer(99, Trinary::Ready, t(1_150), t(1_150));
                let tally = g.tally();
                assert_eq!((tally.ready, tally.window_hits), (ready + 1, ready));
            }
        }
    }

    /// (the operation's rate, READY of 100 sent, the rest unanswered) → the quorum's
    /// decision: at the operation's own rate, not always at the seed's default.
    #[test]
    fn the_quorum_is_decided_at_the_operations_own_rate() {
        for (rate, ready, want) in [
            (0.95, 91, "RETRY"),
            (0.90, 91, "PROCEED"), // the urgent mode's
            (0.95, 88, "WAIT"),
            (0.85, 88, "PROCEED"), // a priority-first phase of class E
            (0.99, 98, "RETRY"),   // one of class D
        ] {
            let tally = Tally {
                sent: 100,
                ready,
                ..Tally::default()
            };
            assert_eq!(decide(&tally, rate).name(), want, "{rate} {ready}");
        }
    }

    #[test]
    fn late_answers_are_quarantined_not_failed() {
        let mut g = Gather::new(t(1_000), Duration::from_millis(500), 0.95);
        for k in 0..20u32 {
            g.sent(k);
        }
        for k in 0..19u32 {
            assert_eq!(
                g.answer(k, Trinary::Ready, t(1_010), t(1_020)),
                Heard::Counted
            );
        }
        assert_eq!(
            g.answer(99, Trinary::Ready, t(1_010), t(1_020)),
            Heard::Ignored
        );
        assert_eq!(
            g.answer(0, Trinary::Ready, t(1_010), t(1_020)),
            Heard::Ignored
        );
        assert!(!g.complete());
        assert_eq!(
            g.answer(19, Trinary::Ready, t(1_600), t(1_700)),
            Heard::Late
        );
        assert!(g.complete());
        assert_eq!(g.quarantined(), &[19]);
        let o = g.outcome();
        // 19 of 20 is exactly 0.95: success, and the late one is no straggler.
        assert_eq!(o.status, Status::Success);
        assert_eq!(o.stragglers, 0);
        assert_eq!(g.tally().window_hits, 19);
        assert_eq!(g.tally().predicted_within_50ms, 19);
    }

    /// (sent, ready, conflict) → status at a minimum rate of 0.95.
    #[test]
    fn outcomes_from_a_table() {
        let table = [
            (100, 95, 0, Status::Success),
            (100, 94, 5, Status::Partial),
            (100, 48, 0, Status::Partial),
            (100, 47, 0, Status::Failed),
            (0, 0, 0, Status::Failed),
        ];
        for (sent, ready, conflict, want) in table {
            let t = Tally {
                sent,
                ready,
                conflict,
                ..Tally::default()
            };
            assert_eq!(outcome(&t, 0.95).status, want, "{sent} sent, {ready} ready");
        }
    }
}
