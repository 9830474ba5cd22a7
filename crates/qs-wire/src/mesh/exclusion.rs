//! The capability mapping (seed §7.2: "Capability mapping updated: CLASS_E_LOCAL agents now
//! excluded from 'llm_inference' routing"): an impedance class kept out of the routing of
//! operations that require a capability, whatever the agents of that class say they can do.

use super::*;

/// One rule of the capability mapping: operations that require `capability` are routed to no
/// agent of `class`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    pub class: ImpedanceClass,
    pub capability: String,
}

/// Rules the root holds at once, at most: a root refuses one past it (its notices carry them
/// all).
pub const MAX_EXCLUSIONS: usize = 64;

impl Exclusion {
    pub fn check(&self) -> Result<(), String> {
        check_capability(&self.capability)
    }
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "class {} off {:?}", self.class.letter(), self.capability)
    }
}

/// The capability mapping as a root stores it durably (the `mesh` bucket's `_rules`
/// record), so it outlives every node: a root that starts with none takes it from there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshRules {
    pub excluded: Vec<Exclusion>,
}

impl crate::task_bus::BusMessage for MeshRules {
    fn check(&self) -> Result<(), String> {
        check_exclusions(&self.excluded)
    }
}

/// Checks a set of rules, wherever it comes from (a notice, a status): each rule, at most
/// [`MAX_EXCLUSIONS`], none twice.
pub fn check_exclusions(rules: &[Exclusion]) -> Result<(), String> {
    if rules.len() > MAX_EXCLUSIONS {
        return Err(format!(
            "excluded: {} rules; at most {MAX_EXCLUSIONS}",
            rules.len()
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        r.check().map_err(|e| format!("excluded[{i}]: {e}"))?;
        if rules[..i].contains(r) {
            return Err(format!("excluded[{i}]: {r} twice"));
        }
    }
    Ok(())
}
