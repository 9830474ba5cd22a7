//! What the console offers after an answer, and the replies that take it (seed §7.2: "Shall
//! I route around them for now?" after a status; "Shall I reassign the task and fix the
//! capability mapping?" after a route-around that found agents stuck on tasks).

use super::{Intent, ROUTE_AROUND_S, SLOW_MS, parse_intent, route_around};
use qs_wire::mesh::{Busy, Exclusion, ImpedanceClass, MeshAction, RoutedAgent, Scope};
use serde_json::Value;

/// What the console offers after a status (seed §7.2: "Shall I route around them for
/// now?"): where agents are slower than [`SLOW_MS`] in `scope` as `status` (`GET /v1/mesh`)
/// shows them (a led cluster's agents one by one; a sector's 95th percentile), what it says,
/// and the route-around a "yes" runs.
pub(crate) fn suggestion(status: &Value, scope: &Scope) -> Option<(String, Intent)> {
    let slow_ms = SLOW_MS as f64;
    let offer = |found: String| {
        let line = format!(
            "{found}. Shall I route around the agents slower than {SLOW_MS} ms for now? \
             (yes / no)"
        );
        (
            line,
            Intent::Act(route_around(*scope, SLOW_MS, ROUTE_AROUND_S)),
        )
    };
    match scope {
        Scope::Cluster(c) => {
            let agents = status["led_agents"].as_array()?;
            let slow: Vec<String> = agents
                .iter()
                .filter(|a| a["cluster"].as_u64() == Some(u64::from(c.0)))
                .filter(|a| a["admitted"] == true && a["state"] == "active")
                .filter(|a| a["score_ms"].as_f64().is_some_and(|s| s > slow_ms))
                .map(|a| {
                    format!(
                        "{:016x} ({:.0} ms)",
                        a["agent"].as_u64().unwrap_or(0),
                        a["score_ms"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            (!slow.is_empty()).then(|| {
                offer(format!(
                    "Cluster {} has {} agent{} with impedance over {SLOW_MS} ms: {}",
                    c.0,
                    slow.len(),
                    if slow.len() == 1 { "" } else { "s" },
                    slow.join(", ")
                ))
            })
        }
        _ => {
            let slow: Vec<String> = status["sectors"]
                .as_array()?
                .iter()
                .filter(|s| match scope {
                    Scope::Sector(x) => s["sector"].as_u64() == Some(u64::from(x.0)),
                    _ => true,
                })
                .filter(|s| s["p95_impedance_ms"].as_f64().is_some_and(|p| p > slow_ms))
                .map(|s| {
                    format!(
                        "sector {} (p95 {:.0} ms)",
                        s["sector"],
                        s["p95_impedance_ms"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            (!slow.is_empty()).then(|| {
                offer(format!(
                    "Slow agents (impedance over {SLOW_MS} ms) in {}",
                    slow.join(", ")
                ))
            })
        }
    }
}

/// A reply that takes the console's offer.
pub(super) fn takes_offer(text: &str) -> bool {
    let t = text
        .trim()
        .trim_end_matches(['.', '!'])
        .to_ascii_lowercase();
    [
        "y", "yes", "yeah", "yep", "ok", "okay", "sure", "do it", "please", "go ahead",
    ]
    .contains(&t.as_str())
}

/// What a reply means after the console offered `offer` (if it did): a "yes" takes the
/// offer, "route around them" routes around where the offer said, "reassign them" reassigns
/// what the offer said, anything else is read afresh.
pub(crate) fn reply(offer: Option<Intent>, text: &str) -> Option<Intent> {
    match (offer, parse_intent(text)) {
        (Some(o), _) if takes_offer(text) => Some(o),
        // "route around them": where the offer said.
        (
            Some(Intent::Act(MeshAction::RouteAround { scope, .. })),
            Some(Intent::Act(MeshAction::RouteAround {
                scope: Scope::Global,
                slower_than_ms,
                for_ms,
                ..
            })),
        ) => Some(Intent::Act(MeshAction::RouteAround {
            scope,
            slower_than_ms,
            for_ms,
            approved: false,
        })),
        // "reassign them", "yes, reassign their tasks": where and how slow the offer said.
        (
            Some(o @ Intent::Act(MeshAction::Reassign { .. })),
            Some(Intent::Act(MeshAction::Reassign {
                scope: Scope::Global,
                ..
            })),
        ) => Some(o),
        // Of an offer of both (seed §7.2: "Shall I reassign the task and fix the capability
        // mapping?"): "reassign the task and fix the capability mapping" takes both, "just
        // reassign them" the reassignment, "fix the capability mapping" the rule (the one
        // the reply names, if it names one: "… stop excluding class E from gpu"); a part the
        // reply says not to do is not done ("don't reassign, just fix the mapping").
        (Some(Intent::Acts(both)), parsed) => {
            let lower = text.to_ascii_lowercase();
            let words = super::words_of(&lower);
            let wants = |part: &str| {
                let Some(at) = words.iter().position(|w| w.starts_with(part)) else {
                    return false;
                };
                // Told not to in the clause before it ("don't reassign, …").
                let clause = words[..at]
                    .iter()
                    .rposition(|w| ["and", "but", "just", "only"].contains(w));
                !super::negates(&words[clause.map_or(0, |c| c + 1)..at])
            };
            // The rule the reply names, wherever in it ("reassign them and exclude class D
            // from gpu").
            let named = super::mapping::parse_mapping(text, &words, false).flatten();
            let offered = |want: fn(&MeshAction) -> bool| both.iter().find(|a| want(a)).cloned();
            let reassign =
                offered(|a| matches!(a, MeshAction::Reassign { .. })).filter(|_| wants("reassign"));
            let rule = named.or_else(|| {
                offered(|a| matches!(a, MeshAction::Exclude { .. })).filter(|_| wants("mapping"))
            });
            match (reassign, rule) {
                (Some(r), Some(m)) => Some(Intent::Acts(vec![r, m])),
                (Some(one), None) | (None, Some(one)) => Some(Intent::Act(one)),
                (None, None) => parsed,
            }
        }
        (_, parsed) => parsed,
    }
}

/// What the console offers after a route-around's report `report` (of `action`): where the
/// agents it named are on tasks, to take those tasks from them for other workers (seed
/// §7.2: "Shall I reassign the task?").
pub(crate) fn after_route_around(action: &MeshAction, report: &Value) -> Option<(String, Intent)> {
    let MeshAction::RouteAround {
        scope,
        slower_than_ms,
        ..
    } = action
    else {
        return None;
    };
    let on_tasks: Vec<RoutedAgent> = report["routed"]
        .as_array()?
        .iter()
        .filter_map(|a| serde_json::from_value::<RoutedAgent>(a.clone()).ok())
        .filter(|a| a.busy.as_ref().and_then(Busy::task_id).is_some())
        .collect();
    if on_tasks.is_empty() {
        return None;
    }
    let n = on_tasks.len();
    let reassign = MeshAction::Reassign {
        scope: *scope,
        slower_than_ms: *slower_than_ms,
        approved: false,
    };
    let line = format!(
        "{n} of them {} on a task. Shall I reassign the tasks of the agents slower than \
         {slower_than_ms} ms to other workers",
        if n == 1 { "is" } else { "are" }
    );
    Some(match mapping_of(&on_tasks) {
        Some(Mapping::One(rule @ Exclusion { class, .. }, capability)) => (
            format!(
                "{line}, and fix the capability mapping (these are class {} agents: class {} \
                 out of '{capability}' routing)? (yes / no)",
                class.letter(),
                class.letter()
            ),
            Intent::Acts(vec![
                reassign,
                MeshAction::Exclude {
                    class: rule.class,
                    capability: rule.capability,
                    approved: false,
                },
            ]),
        ),
        Some(Mapping::Several(class, capabilities)) => (
            format!(
                "{line}? (yes / no) They are class {} agents; to keep the class out of one \
                 capability's routing, say 'exclude class {} from CAPABILITY' (they have {}).",
                class.letter(),
                class.letter(),
                capabilities.join(", ")
            ),
            Intent::Act(reassign),
        ),
        None => (format!("{line}? (yes / no)"), Intent::Act(reassign)),
    })
}

/// What the capability mapping could say of `agents`: all of one class, with one capability
/// in common (the rule to offer), or several (for the operator to name one).
enum Mapping {
    One(Exclusion, String),
    Several(ImpedanceClass, Vec<String>),
}

fn mapping_of(agents: &[RoutedAgent]) -> Option<Mapping> {
    let class = agents.first()?.class?;
    if agents.iter().any(|a| a.class != Some(class)) {
        return None;
    }
    let mut common: Vec<String> = agents[0].capabilities.clone();
    common.retain(|c| agents.iter().all(|a| a.capabilities.contains(c)));
    common.sort();
    common.dedup();
    match common.as_slice() {
        [] => None,
        [one] => Some(Mapping::One(
            Exclusion {
                class,
                capability: one.clone(),
            },
            one.clone(),
        )),
        _ => Some(Mapping::Several(class, common)),
    }
}
