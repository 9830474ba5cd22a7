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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshRules {
    /// The root that stored it: the record is taken only with its signature.
    pub by: NodeId,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A control of the capability mapping: an exclusion or an inclusion names its rule, which
    /// holds mesh-wide and names a good capability; no other control names one. Each is refused
    /// by field wherever it comes from (the bus here; the API checks the action the same way).
    #[test]
    fn capability_rules_in_controls_are_checked() {
        let rule = |capability: &str| Exclusion {
            class: ImpedanceClass::E,
            capability: capability.to_string(),
        };
        let control = |action: ControlAction, scope: Scope, rule: Option<Exclusion>| {
            MeshMessage::Control(Control {
                rule,
                id: 3,
                ..Control::new(action, scope)
            })
        };
        let table = [
            (
                control(
                    ControlAction::Exclude,
                    Scope::Global,
                    Some(rule("llm_inference")),
                ),
                None,
            ),
            (
                control(ControlAction::Include, Scope::Global, Some(rule("gpu"))),
                None,
            ),
            (
                control(ControlAction::Exclude, Scope::Global, None),
                Some("rule: Exclude names none"),
            ),
            (
                control(ControlAction::Freeze, Scope::Global, Some(rule("gpu"))),
                Some("rule: not for Freeze"),
            ),
            (
                control(
                    ControlAction::Exclude,
                    Scope::Sector(SectorId(2)),
                    Some(rule("gpu")),
                ),
                Some("a rule holds mesh-wide"),
            ),
            (
                control(ControlAction::Exclude, Scope::Global, Some(rule(""))),
                Some("rule: capability \"\""),
            ),
        ];
        crate::mesh::tests::decodes_as(table);
        let action = MeshAction::Exclude {
            class: ImpedanceClass::E,
            capability: "llm inference".into(),
            approved: false,
        };
        assert!(action.check().unwrap_err().contains("\"llm inference\""));
    }
}
