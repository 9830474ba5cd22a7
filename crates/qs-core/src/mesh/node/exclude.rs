//! The capability mapping (seed §7.2: "Capability mapping updated: CLASS_E_LOCAL agents now
//! excluded from 'llm_inference' routing"): rules that keep an impedance class out of the
//! routing of every operation that requires a capability, mesh-wide, whatever the agents of
//! that class say they can do. A lead routes such an operation to no agent of an excluded
//! class, nor reroutes one there after a capability mismatch (`ops::lead`).
//!
//! The rules are held as freezes are (`freeze`): an operator's exclusion or inclusion reaches
//! the root, the authority, and spreads down the tree as a control; the root's mode notices
//! carry the whole set at each change and every summary period while it holds any; a node
//! off the root takes that set for its own (unless the notice is older than a control carried
//! out here), so a lead new to its cluster routes by it and a node that becomes the root
//! keeps it. Unlike a freeze, a rule outlives every node: the root asks its shell to store
//! the set durably at each change ([`MeshOutput::Rules`], the `mesh` bucket), and the shell
//! hands back what it reads ([`MeshInput::Rules`]). A node that becomes the root while the
//! last root's notices still reach it keeps what they said (newer than a store a write
//! missed) and repairs the store; one that heard none (a fleet restarted) takes the
//! store's; a node whose notices lapsed (a partition from the root) falls back on the store
//! instead of routing by no rule.

use super::*;
use qs_wire::mesh::{Exclusion, MAX_EXCLUSIONS};

impl MeshNode {
    /// The rules this node routes by.
    pub fn excluded(&self) -> &BTreeSet<Exclusion> {
        &self.excluded
    }

    /// The classes the rules keep out of `capability`'s routing.
    pub(crate) fn classes_excluded_from(&self, capability: &str) -> BTreeSet<ImpedanceClass> {
        self.excluded
            .iter()
            .filter(|r| r.capability == capability)
            .map(|r| r.class)
            .collect()
    }

    /// At the root: an operator's exclusion (or, not `excluded`, inclusion) of `rule`, sent
    /// down the tree; refused past [`MAX_EXCLUSIONS`] rules.
    pub(super) fn command_rule(&mut self, rule: Exclusion, excluded: bool, tag: u64, now: Time) {
        let full = self.excluded.len() >= MAX_EXCLUSIONS && !self.excluded.contains(&rule);
        if excluded && full {
            let why = format!("{MAX_EXCLUSIONS} rules are held already, the most: lift one first");
            self.out.push_back(MeshOutput::Refused {
                tag,
                op: None,
                error: CommandError::Invalid(why),
            });
            return;
        }
        let action = match excluded {
            true => ControlAction::Exclude,
            false => ControlAction::Include,
        };
        let c = Control {
            rule: Some(rule),
            ..Control::new(action, Scope::Global)
        };
        self.checked_control(c, tag, now);
    }

    /// Carries out control `c`'s rule here (the rules are mesh-wide: every node holds them):
    /// how many agents of the led `clusters` it keeps out of its capability's routing (an
    /// inclusion: lets back), those with the capability now of its class. Each cluster is
    /// counted once: from the root's own copy, only those this node coordinates (or none
    /// does); a cluster under another coordinator is counted when that one passes it on.
    /// Off the root the set is bounded too (a notice repairs a rule a stale set left out).
    pub(super) fn apply_rule(&mut self, c: &Control, clusters: &[ClusterId]) -> u32 {
        let Some(rule) = c.rule.clone() else {
            return 0;
        };
        let tree = self.tree.clone();
        let counted =
            |cl: &ClusterId| c.relayed || tree.coordinator_of(*cl).is_none_or(|co| *co == self.me);
        let counted: Vec<ClusterId> = clusters.iter().copied().filter(counted).collect();
        let mut agents = 0;
        for cl in &counted {
            let Some(led) = self.led.get_mut(cl) else {
                continue;
            };
            let capable: Vec<AgentId> = led
                .agents
                .iter()
                .filter(|(_, v)| v.capabilities.contains(&rule.capability))
                .map(|(a, _)| *a)
                .collect();
            for a in capable {
                let class = led.assess(a, 0.0).map(|(z, _)| z.class);
                agents += u32::from(class == Some(rule.class));
            }
        }
        match c.action {
            ControlAction::Exclude if self.excluded.len() < MAX_EXCLUSIONS => {
                self.excluded.insert(rule);
            }
            ControlAction::Include => {
                self.excluded.remove(&rule);
            }
            _ => {}
        }
        // The root's own control (not a copy passed on to it as a lead, nor one of a root
        // before): what it holds now is the mapping, to store.
        if self.is_root && !c.relayed && c.root.as_ref() == Some(&self.me) {
            self.rules_set_here = true;
            self.store_rules();
        }
        agents
    }

    /// At the root: asks the shell to store the rules it holds.
    fn store_rules(&mut self) {
        let all = self.excluded.iter().cloned().collect();
        self.out.push_back(MeshOutput::Rules(all));
    }

    /// The rules as the durable store holds them (checked by the shell). A root that holds
    /// the mapping (it changed it, or took it from the last root's notices) keeps its own,
    /// and stores it again if the store says otherwise (a write lost, or a former root's
    /// late one); one that does not (a fleet restarted) takes the store's.
    pub(super) fn stored_rules(&mut self, rules: Vec<Exclusion>) {
        let rules: BTreeSet<Exclusion> = rules.into_iter().take(MAX_EXCLUSIONS).collect();
        match (self.is_root, self.rules_set_here) {
            (true, false) => self.excluded = rules.clone(),
            (true, true) if rules != self.excluded => self.store_rules(),
            _ => {}
        }
        self.rules_stored = Some(rules);
    }

    /// This node became the root. If the last root's notices reach it (they lapse 15 s
    /// after the last), what they said is the mapping, newer than any store a write may
    /// have missed: it keeps it, and stores it if the store says otherwise. Else (a fleet
    /// restarted, or the notices long gone) it starts from the store, if it read it.
    pub(super) fn rules_as_root(&mut self) {
        let heard = self.mode_heard.is_some();
        self.rules_set_here = heard;
        match (&self.rules_stored, heard) {
            (Some(stored), false) => self.excluded = stored.clone(),
            (stored, true) if stored.as_ref() != Some(&self.excluded) => self.store_rules(),
            _ => {}
        }
    }

    /// Off the root, the notices lapsed: the stored rules, if read, else none. (The store
    /// may miss the last change, if the root's write of it failed; the next notice says
    /// it.)
    pub(super) fn rules_lapse(&mut self) {
        self.excluded = self.rules_stored.clone().unwrap_or_default();
    }
}
