//! The `mesh` bucket's records, signed: a node's record of its agents (`MeshMembers`, under
//! its id) and the capability mapping a root stores (`MeshRules`, under `RULES_KEY`, naming
//! the root that stored it), each sealed by the node that writes it (`Auth::seal_bus`) and
//! taken only if that node signed it (`Auth::open_bus`): writing to the bucket grants
//! nothing. A record whose writer this node holds no key of yet (the registry is read beside
//! the bucket) waits, at most `MAX_WAITING`, and is opened when the key comes. Under a
//! fleet authority a deletion is not taken (any writer of the bucket could make one): a
//! node's record leaves with its liveness, the rules with an empty set stored.

use super::RULES_KEY;
use crate::clock::now;
use crate::identity::Auth;
use bytes::Bytes;
use qs_core::mesh::{MeshInput, MeshNode};
use qs_fabric::KvEvent;
use qs_wire::NodeId;
use qs_wire::frame::Frame;
use qs_wire::mesh::{Exclusion, MeshMembers, MeshRules};
use qs_wire::task_bus::decode_bus;
use std::collections::{BTreeMap, BTreeSet};

/// Records waiting for their writer's key, at most (a fleet's nodes and the rules).
const MAX_WAITING: usize = 4_096;

/// What a record of the bucket says, once taken.
#[derive(Debug, PartialEq)]
pub(super) enum Record {
    /// A node's agents.
    Members(MeshMembers),
    /// The node under this key left the bucket.
    Gone(String),
    /// The capability mapping stored.
    Rules(Vec<Exclusion>),
}

impl Record {
    /// Taken: a node's agents (the tree is built again), a node gone, or the capability
    /// mapping stored.
    pub(super) fn apply(
        self,
        members: &mut BTreeMap<NodeId, MeshMembers>,
        version: &mut u64,
        node: &mut MeshNode,
    ) {
        match self {
            Record::Members(m) => {
                members.insert(m.node.clone(), m);
                *version += 1;
            }
            Record::Gone(key) => {
                members.retain(|n, _| n.as_str() != key);
                *version += 1;
            }
            Record::Rules(excluded) => node.handle(MeshInput::Rules(excluded), now()),
        }
    }
}

/// This node's reading of the bucket.
#[derive(Default)]
pub(super) struct Bucket {
    /// By key: the writer whose key it waits for, and the record.
    waiting: BTreeMap<String, (NodeId, Bytes)>,
    /// The stored rules last taken, and the root that signed them.
    stored: Option<(NodeId, BTreeSet<Exclusion>)>,
}

/// `m`, sealed by the node it is of.
pub(super) fn seal_members(auth: &Auth, m: &MeshMembers) -> Option<Bytes> {
    let body = serde_json::to_vec(m).ok()?;
    Some(auth.seal_bus(&m.node, &body))
}

/// The capability mapping `excluded`, sealed by the root `by` that stores it.
pub(super) fn seal_rules(auth: &Auth, by: &NodeId, excluded: Vec<Exclusion>) -> Option<Bytes> {
    let rules = MeshRules {
        by: by.clone(),
        excluded,
    };
    let body = serde_json::to_vec(&rules).ok()?;
    Some(auth.seal_bus(by, &body))
}

/// A record under `key`, read (not yet checked): what it says, and whose signature it needs
/// (the node it is of, or the root that stored the rules).
fn read(key: &str, frame: &Frame<'_>) -> Result<(Record, NodeId), String> {
    if key == RULES_KEY {
        let r = decode_bus::<MeshRules>(TOPIC_RULES, frame.body).map_err(|e| e.to_string())?;
        return Ok((Record::Rules(r.excluded), r.by));
    }
    let m = decode_bus::<MeshMembers>(TOPIC, frame.body).map_err(|e| e.to_string())?;
    match m.node.as_str() == key {
        true => {
            let by = m.node.clone();
            Ok((Record::Members(m), by))
        }
        false => Err(format!("the record names {}", m.node)),
    }
}

/// What a record's drops are counted under.
const TOPIC: &str = "kv mesh";
const TOPIC_RULES: &str = "kv mesh _rules";

impl Bucket {
    /// An event of the bucket's watch: the record it holds, if it is
    /// taken now (a bad one is logged and dropped, one whose writer is not known yet waits).
    pub(super) fn take(&mut self, auth: &Auth, event: KvEvent) -> Option<Record> {
        match event {
            KvEvent::Put(entry) => {
                self.waiting.remove(&entry.key);
                self.open(auth, entry.key, entry.value)
            }
            KvEvent::Delete { key, .. } => {
                if auth.anchor().is_some() {
                    tracing::warn!("mesh bucket: the deletion of {key:?} ignored (not signed)");
                    return None;
                }
                self.waiting.remove(&key);
                match key == RULES_KEY {
                    true => Some(Record::Rules(Vec::new())),
                    false => Some(Record::Gone(key)),
                }
            }
            KvEvent::Synced => None,
        }
    }

    /// At the root `me`, holding the rules `held`: the stored set to sign again as its own,
    /// if it is the one held but another root signed it (a root that retired, its
    /// certificate revoked or expired, could no longer vouch for it after a restart).
    pub(super) fn sign_again(
        &mut self,
        me: &NodeId,
        held: &BTreeSet<Exclusion>,
    ) -> Option<Vec<Exclusion>> {
        let (by, set) = self.stored.as_mut()?;
        if by == me || set != held {
            return None;
        }
        *by = me.clone();
        Some(set.iter().cloned().collect())
    }

    /// The records waiting whose writer's key has come since, taken.
    pub(super) fn retry(&mut self, auth: &Auth) -> Vec<Record> {
        let known: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, (by, _))| auth.can_verify(by))
            .map(|(k, _)| k.clone())
            .collect();
        known
            .into_iter()
            .filter_map(|k| {
                let (_, value) = self.waiting.remove(&k)?;
                self.open(auth, k, value)
            })
            .collect()
    }

    fn open(&mut self, auth: &Auth, key: String, value: Bytes) -> Option<Record> {
        let read = Frame::parse(&value)
            .map_err(|e| e.to_string())
            .and_then(|frame| Ok((read(&key, &frame)?, frame)));
        let ((record, by), frame) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!("mesh bucket: {key}'s record ignored: {e}");
                return None;
            }
        };
        // Its writer's key not known yet: it waits (nothing counted against it).
        if !auth.can_verify(&by) && auth.requires_keys() {
            if self.waiting.len() < MAX_WAITING {
                self.waiting.insert(key, (by, value));
            }
            return None;
        }
        let topic = if key == RULES_KEY { TOPIC_RULES } else { TOPIC };
        if let Err(e) = auth.check_signed(topic, &frame, &by) {
            tracing::warn!("mesh bucket: {key}'s record refused: {e}");
            return None;
        }
        if let Record::Rules(excluded) = &record {
            self.stored = Some((by, excluded.iter().cloned().collect()));
        }
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qs_core::auth::AuthConfig;
    use qs_fabric::Entry;
    use qs_wire::mesh::{AgentId, ImpedanceClass};

    fn id(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn members(node: &str) -> MeshMembers {
        MeshMembers {
            node: id(node),
            agents: vec![AgentId(7)],
            zone: String::new(),
            since_ms: 0,
            lead_after_ms: None,
        }
    }

    fn put(key: &str, value: Bytes) -> KvEvent {
        KvEvent::Put(Entry {
            key: key.into(),
            value,
            revision: 1,
        })
    }

    /// A record is taken only if the node it names signed it (the root that stored the
    /// rules, for the rules); an unsigned one, one signed by another node, one from before
    /// records were signed, are not; one whose writer's key is not here yet waits for it.
    #[test]
    fn records_are_taken_only_with_their_writers_signature() {
        let config = AuthConfig {
            required: true,
            max_clock_skew_ms: 60_000,
            quarantine_after: 100,
            quarantine_window_ms: 60_000,
            quarantine_ms: 60_000,
            encrypt: false,
            rekey_after_ms: 3_600_000,
            rekey_after_messages: 1_000_000,
        };
        let auth = Auth::new(config, None).unwrap();
        auth.add_local(id("n1"), [1; 32]);
        auth.add_local(id("n2"), [2; 32]);
        let mut b = Bucket::default();
        let n2 = members("n2");
        let signed = seal_members(&auth, &n2).unwrap();
        assert_eq!(
            b.take(&auth, put("n2", signed.clone())),
            Some(Record::Members(n2.clone()))
        );
        // Signed by n1, naming n2: refused; under another key: refused.
        let body = serde_json::to_vec(&n2).unwrap();
        let forged = auth.seal_bus(&id("n1"), &body);
        assert_eq!(b.take(&auth, put("n2", forged)), None);
        assert_eq!(b.take(&auth, put("n1", signed)), None);
        // Unsigned, and plain JSON from before: refused.
        let open = Bytes::from(Frame::write(qs_wire::FrameKind::Open, &[], &body));
        assert_eq!(b.take(&auth, put("n2", open)), None);
        assert_eq!(b.take(&auth, put("n2", Bytes::from(body))), None);
        // The rules, signed by the root they name.
        let rule = Exclusion {
            class: ImpedanceClass::E,
            capability: "gpu".into(),
        };
        let rules = seal_rules(&auth, &id("n2"), vec![rule.clone()]).unwrap();
        assert_eq!(
            b.take(&auth, put(RULES_KEY, rules)),
            Some(Record::Rules(vec![rule.clone()]))
        );
        // Held as stored by n2, and n1 is the root now: n1 signs the set again, once; a set
        // other than the one held is not signed again.
        let held: BTreeSet<Exclusion> = [rule.clone()].into();
        assert_eq!(b.sign_again(&id("n1"), &BTreeSet::new()), None);
        assert_eq!(b.sign_again(&id("n1"), &held), Some(vec![rule.clone()]));
        assert_eq!(b.sign_again(&id("n1"), &held), None);
        let forged = MeshRules {
            by: id("n2"),
            excluded: Vec::new(),
        };
        let forged = auth.seal_bus(&id("n1"), &serde_json::to_vec(&forged).unwrap());
        assert_eq!(b.take(&auth, put(RULES_KEY, forged)), None);
        // A writer whose key is not here yet: its record waits, and is taken once it is.
        let n3 = members("n3");
        let stranger = Auth::new(config, None).unwrap();
        stranger.add_local(id("n3"), [3; 32]);
        let early = seal_members(&stranger, &n3).unwrap();
        assert_eq!(b.take(&auth, put("n3", early)), None);
        assert!(b.retry(&auth).is_empty());
        auth.add_local(id("n3"), [3; 32]);
        assert_eq!(b.retry(&auth), vec![Record::Members(n3)]);
        assert!(b.retry(&auth).is_empty());
        // Without a fleet authority, a deletion is taken.
        let gone = KvEvent::Delete {
            key: "n2".into(),
            revision: 2,
        };
        assert_eq!(b.take(&auth, gone), Some(Record::Gone("n2".into())));
    }
}
