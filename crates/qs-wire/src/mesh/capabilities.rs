//! Where capabilities are (seed §4.2: "find the N best agents mesh-wide for a given
//! capability … in practice, cached and indexed by capability"): cluster and sector summaries
//! count their active agents by capability, the most common first, so the root and the
//! coordinators send a sample that requires one only where it may be.

use super::*;

/// How many agents of a cluster or sector have a capability (seed §4.2's "cached and
/// indexed by capability").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityCount {
    pub name: String,
    pub agents: u32,
}

/// Capabilities a summary counts, at most (the most common): a capability past them may
/// still be there.
pub const MAX_SUMMARY_CAPABILITIES: usize = 32;

/// The capabilities of `counts` (name → agents) as a summary says them: the most common
/// first (ties by name), at most [`MAX_SUMMARY_CAPABILITIES`]; and whether some were left
/// out.
pub fn capability_counts(
    counts: std::collections::BTreeMap<String, u32>,
) -> (Vec<CapabilityCount>, bool) {
    let mut v: Vec<CapabilityCount> = counts
        .into_iter()
        .filter(|(_, agents)| *agents > 0)
        .map(|(name, agents)| CapabilityCount { name, agents })
        .collect();
    v.sort_by(|a, b| b.agents.cmp(&a.agents).then_with(|| a.name.cmp(&b.name)));
    let more = v.len() > MAX_SUMMARY_CAPABILITIES;
    v.truncate(MAX_SUMMARY_CAPABILITIES);
    (v, more)
}

/// Whether a summary's counts say agents with `capability` may be there: listed, or some
/// were left out (`more`).
pub fn may_have(counts: &[CapabilityCount], more: bool, capability: &str) -> bool {
    more || counts.iter().any(|c| c.name == capability && c.agents > 0)
}

/// Checks a summary's capability counts: at most [`MAX_SUMMARY_CAPABILITIES`], each a good
/// name once, none counting more than `agents`.
pub fn check_capability_counts(counts: &[CapabilityCount], agents: u32) -> Result<(), String> {
    if counts.len() > MAX_SUMMARY_CAPABILITIES {
        return Err(format!(
            "capabilities: {}; at most {MAX_SUMMARY_CAPABILITIES}",
            counts.len()
        ));
    }
    for (i, c) in counts.iter().enumerate() {
        check_capability(&c.name).map_err(|e| format!("capabilities[{i}]: {e}"))?;
        if c.agents > agents {
            return Err(format!(
                "capabilities[{i}]: {} agents of {agents}",
                c.agents
            ));
        }
        if counts[..i].iter().any(|d| d.name == c.name) {
            return Err(format!("capabilities[{i}]: {:?} twice", c.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn counts(pairs: &[(&str, u32)]) -> Vec<CapabilityCount> {
        pairs
            .iter()
            .map(|(name, agents)| CapabilityCount {
                name: name.to_string(),
                agents: *agents,
            })
            .collect()
    }

    /// Counted: the most common first, ties by name, none of zero, at most 32, and whether
    /// some were left out; a capability may be where it is listed, or where some were left
    /// out.
    #[test]
    fn capabilities_are_counted_the_most_common_first() {
        let map: BTreeMap<String, u32> = [("gpu", 3), ("llm", 7), ("cpu", 3), ("none", 0)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let (listed, more) = capability_counts(map);
        assert_eq!(listed, counts(&[("llm", 7), ("cpu", 3), ("gpu", 3)]));
        assert!(!more);
        assert!(may_have(&listed, false, "gpu") && !may_have(&listed, false, "tpu"));
        assert!(may_have(&listed, true, "tpu"));
        let many: BTreeMap<String, u32> = (0..40).map(|i| (format!("c{i:02}"), 1)).collect();
        let (listed, more) = capability_counts(many);
        assert_eq!((listed.len(), more), (MAX_SUMMARY_CAPABILITIES, true));
    }

    /// Checked by field: at most 32, each a good name once, none more than the agents.
    #[test]
    fn capability_counts_are_checked() {
        let table = [
            (counts(&[("gpu", 3)]), 3, None),
            (
                counts(&[("gpu", 4)]),
                3,
                Some("capabilities[0]: 4 agents of 3"),
            ),
            (
                counts(&[("gpu", 1), ("gpu", 1)]),
                3,
                Some("capabilities[1]: \"gpu\" twice"),
            ),
            (
                counts(&[("a b", 1)]),
                3,
                Some("capabilities[0]: capability \"a b\""),
            ),
        ];
        for (listed, agents, want) in table {
            match (check_capability_counts(&listed, agents), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.starts_with(w), "{e}"),
                (got, want) => panic!("{listed:?}: {got:?}, want {want:?}"),
            }
        }
        let many: Vec<CapabilityCount> = (0..33)
            .map(|i| CapabilityCount {
                name: format!("c{i}"),
                agents: 1,
            })
            .collect();
        assert!(
            check_capability_counts(&many, 3)
                .unwrap_err()
                .contains("33; at most 32")
        );
        // An agent names each capability once (a beat's, a worker's join): a name twice
        // would count it twice in its cluster's summary.
        let twice = ["gpu".to_string(), "gpu".to_string()];
        assert_eq!(
            check_capabilities(&twice).unwrap_err(),
            "capability \"gpu\" twice"
        );
        assert!(check_capabilities(&twice[..1]).is_ok());
    }
}
