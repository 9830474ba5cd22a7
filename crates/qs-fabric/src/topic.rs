//! Topics: dot-separated addresses of messages, and the fleet's named topics.

use crate::FabricError;
use qs_wire::NodeId;
use std::fmt;

/// A topic such as `hb.forge`; subscriptions may use `*` (one token) and a final `>` (the rest).
/// Backends map topics to their own addressing (NATS adds the `qs.<fleet>.` prefix).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(std::sync::Arc<str>);

impl Topic {
    /// Validates a topic: non-empty tokens of `[A-Za-z0-9_-]`, or `*`, or a final `>`.
    pub fn parse(s: &str) -> Result<Topic, FabricError> {
        let refuse = |why| {
            Err(FabricError::InvalidTopic {
                topic: s.to_owned(),
                why,
            })
        };
        if s.is_empty() {
            return refuse("empty");
        }
        let tokens: Vec<&str> = s.split('.').collect();
        for (i, t) in tokens.iter().enumerate() {
            match *t {
                "" => return refuse("empty token"),
                "*" => {}
                ">" if i + 1 == tokens.len() => {}
                ">" => return refuse("'>' must be the last token"),
                t if t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {}
                _ => return refuse("tokens are letters, digits, '_' and '-'"),
            }
        }
        Ok(Topic(s.into()))
    }

    fn named(s: String) -> Topic {
        Topic(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does this topic have wildcards (only subscriptions may)?
    pub fn is_pattern(&self) -> bool {
        self.0.split('.').any(|t| t == "*" || t == ">")
    }

    /// Does the subscription pattern `self` match the concrete topic `other`?
    pub fn matches(&self, other: &Topic) -> bool {
        let mut pattern = self.0.split('.');
        let mut concrete = other.0.split('.');
        loop {
            match (pattern.next(), concrete.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(c)) if p == c => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// A node's heartbeats.
    pub fn heartbeat(node: &NodeId) -> Topic {
        Topic::named(format!("hb.{node}"))
    }
    /// Every node's heartbeats.
    pub fn heartbeats() -> Topic {
        Topic::named("hb.*".into())
    }
    /// Task ids a node should look at in the fleet's bucket (offered to it, or taken from it).
    pub fn task_inbound(node: &NodeId) -> Topic {
        Topic::named(format!("tasks.inbound.{node}"))
    }
    /// A node's task load, every second.
    pub fn task_metrics(node: &NodeId) -> Topic {
        Topic::named(format!("tasks.metrics.{node}"))
    }
    /// Every node's task load.
    pub fn task_metrics_all() -> Topic {
        Topic::named("tasks.metrics.*".into())
    }
    /// A node's task completions.
    pub fn task_results(node: &NodeId) -> Topic {
        Topic::named(format!("tasks.results.{node}"))
    }
    /// The fleet event bus: every major event.
    pub fn events_bus() -> Topic {
        Topic::named("events.bus".into())
    }
    /// Alerts: security flags and performance spikes.
    pub fn events_alerts() -> Topic {
        Topic::named("events.alerts".into())
    }
    /// Supervision's acts and judgements.
    pub fn events_supervision() -> Topic {
        Topic::named("events.supervision".into())
    }
    /// A node's inbox: every directed message to it.
    /// Mesh messages for one node (seed 001's hierarchy: beats, summaries, orders, answers).
    pub fn mesh(node: &NodeId) -> Topic {
        Topic::named(format!("mesh.{node}"))
    }

    pub fn node_rpc(node: &NodeId) -> Topic {
        Topic::named(format!("node.{node}.rpc"))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, topic: &str, expect: bool) {
        let p = Topic::parse(pattern).unwrap();
        let t = Topic::parse(topic).unwrap();
        assert_eq!(p.matches(&t), expect, "{pattern} vs {topic}");
    }

    #[test]
    fn wildcards_match_like_nats() {
        check("hb.forge", "hb.forge", true);
        check("hb.*", "hb.forge", true);
        check("hb.*", "hb.forge.x", false);
        check("hb.*", "hb", false);
        check("node.>", "node.forge.dispatch", true);
        check("node.>", "node", false);
        check("*.forge.*", "node.forge.rpc", true);
        check("hb.forge", "hb.yone", false);
    }

    #[test]
    fn bad_topics_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("a..b", "empty token"),
            ("a.>.b", "'>' must be the last token"),
            ("a b", "tokens are"),
        ] {
            let err = Topic::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
