//! The mesh's mode down the tree (seed §6.3): the root decides it from the sector
//! summaries, and every node should know it, so any node's status and metrics say it and
//! every node can act on it (EMERGENCY: its shell preserves its state and alerts; its leads
//! admit no new agents). The root sends a [`ModeNotice`] to its coordinators at each change
//! and the next two beats (one lost message loses nothing) and, while the mesh is not FULL,
//! every summary period; a coordinator passes it to its leads, a lead to the hosts of its
//! agents, each notice once. A notice also says what the root holds frozen (at each change,
//! and every summary period while anything is: see `freeze`), and the capability mapping's
//! rules (`exclude`), held the same way. A notice is taken only from
//! the root or a node the tree names above this one; one not renewed for three summary
//! periods lapses, and the node counts the mesh FULL again (the root renews every notice but
//! FULL's, and every one while anything is frozen), and the freezes it said lapse with it.
//! Each notice names its root: a slower copy from the root before is not taken; nor is one
//! numbered past `MAX_NOTICE_AHEAD_MS` ahead of this node's clock (it would shut out the
//! root's next ones), and a lapse forgets the last number.

use super::*;
use qs_wire::mesh::ModeNotice;

/// Summary periods a notice holds without being renewed.
const LAPSES_AFTER_PERIODS: u32 = 3;
/// Beats a change is announced at.
const ANNOUNCE_CHANGE_BEATS: u8 = 3;
/// The most a notice's number (its root's clock) may run ahead of this node's clock: a
/// day, the most a node's clock is let drift (a clock further off is a broken one; a
/// forged number within it shuts the root's notices out for one lapse at most).
pub(crate) const MAX_NOTICE_AHEAD_MS: u64 = 86_400_000;

impl MeshNode {
    /// At the root, after it computed the mode: a notice down the tree at a change (of the
    /// mode, or of what is frozen) and the next two beats, and while the mesh is not FULL or
    /// anything is frozen, every summary period.
    pub(super) fn announce_mode(&mut self, changed: bool, active: u32, total: u32, now: Time) {
        if changed || self.freezes_changed() {
            self.mode_announcements_left = ANNOUNCE_CHANGE_BEATS;
        }
        let due =
            (self.mode != Mode::Full || self.holds_anything()) && now >= self.next_mode_notice;
        if self.mode_announcements_left == 0 && !due {
            return;
        }
        self.mode_announcements_left = self.mode_announcements_left.saturating_sub(1);
        self.next_mode_notice = now + Duration::from_millis(self.cfg.summary_ms);
        let mut notice = ModeNotice {
            level: self.mode.level(),
            active_agents: active,
            total_agents: total,
            sent_ms: now.as_millis(),
            frozen: false,
            frozen_scopes: Vec::new(),
            excluded: Vec::new(),
            last_control: 0,
            root: Some(self.me.clone()),
        };
        self.announce_held(&mut notice);
        // Its own roles pass it on as any node's do.
        self.inbox
            .push_back((self.me.clone(), MeshMessage::Mode(notice)));
    }

    /// Whether `from` may tell this node the mesh's mode: the root, the coordinator of a
    /// cluster it leads, or the lead of a cluster it has agents in.
    pub(super) fn mode_sender_ok(&self, from: &NodeId) -> bool {
        self.tree.root.as_ref() == Some(from)
            || self
                .led
                .keys()
                .any(|c| self.tree.coordinator_of(*c) == Some(from))
            || self.local.iter().any(|a| {
                self.tree
                    .cluster_of(a.agent)
                    .is_some_and(|c| self.tree.named_for(Scope::Cluster(c)) == Some(from))
            })
    }

    /// A notice heard: taken (but at the root, which decides the mode itself), and passed
    /// on once to the nodes below this one's roles. Only a notice newer than the last
    /// seen is: a slower copy of an older one (down another branch of the tree) changes
    /// nothing.
    pub(super) fn on_mode(&mut self, notice: ModeNotice, now: Time) {
        let Some(mode) = Mode::from_level(notice.level) else {
            return;
        };
        // Another root's (a slower copy from the root before): numbered on its clock.
        if notice.root.is_some() && notice.root != self.tree.root {
            return;
        }
        if self.mode_seen_ms.is_some_and(|seen| notice.sent_ms <= seen) {
            return;
        }
        // Numbered from a clock far ahead of this one's: no notice after it would be
        // newer, so it is not taken (its number would shut out the root's next ones).
        if notice.sent_ms > now.as_millis().saturating_add(MAX_NOTICE_AHEAD_MS) {
            return;
        }
        self.mode_seen_ms = Some(notice.sent_ms);
        if !self.is_root {
            self.mode_heard = Some(now);
            self.mode_from_notice = true;
            self.take_freezes(&notice);
            self.set_mode(mode, notice.active_agents, notice.total_agents);
        }
        let mut below: BTreeSet<NodeId> = BTreeSet::new();
        if self.is_root {
            below.extend(
                self.tree
                    .sectors
                    .iter()
                    .filter_map(|s| s.coordinator.clone()),
            );
        }
        below.extend(self.leads_below(Scope::Global));
        for led in self.led.values() {
            below.extend(led.hosts.keys().cloned());
        }
        below.remove(&self.me);
        for n in below {
            self.send(n, MeshMessage::Mode(notice.clone()));
        }
    }

    /// At a beat, off the root: a notice not renewed lapses.
    pub(super) fn lapse_mode(&mut self, now: Time) {
        let lapse = Duration::from_millis(self.cfg.summary_ms) * LAPSES_AFTER_PERIODS;
        if self.is_root || self.mode_heard.is_none_or(|at| now.since(at) < lapse) {
            return;
        }
        self.mode_heard = None;
        // The next notice is taken whatever the last one's number was.
        self.mode_seen_ms = None;
        // And the freezes it said: a root renews them every summary period while they last.
        self.freezes_lapse();
        let (active, total) = self.mode_counts;
        self.set_mode(Mode::Full, active, total);
    }

    /// The mode is `mode` now, of `active_agents` of `total_agents` (the counts kept): the
    /// shell is told of a change.
    pub(super) fn set_mode(&mut self, mode: Mode, active_agents: u32, total_agents: u32) {
        self.mode_counts = (active_agents, total_agents);
        if mode != self.mode {
            self.out.push_back(MeshOutput::ModeChanged {
                from: self.mode,
                to: mode,
                active_agents,
                total_agents,
            });
        }
        self.mode = mode;
    }
}
