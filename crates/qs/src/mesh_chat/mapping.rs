//! The capability mapping in plain words (seed §7.2: "Shall I reassign the task and fix the
//! capability mapping?" … "Capability mapping updated: CLASS_E_LOCAL agents now excluded
//! from 'llm_inference' routing"): "exclude class E agents from llm_inference routing", "fix
//! the capability mapping: class E off llm_inference", "keep class E out of gpu", "include
//! class E in llm_inference again", "stop excluding class E from gpu". A request that names
//! no class or no capability it can read, or a scope (a rule holds mesh-wide), is no
//! request, never a guess; a question ("is class E excluded from gpu?") asks for none.

use super::find_scope;
use qs_wire::mesh::{ImpedanceClass, MeshAction, Scope, check_capability};

/// What a request of the capability mapping asks, if it is one: `None` when it is not one
/// (other intents may read it), `Some(None)` when it is one that asks nothing the grammar can
/// run. `opened`: the request opens with "exclude" or "include".
pub(crate) fn parse_mapping(
    text: &str,
    words: &[&str],
    opened: bool,
) -> Option<Option<MeshAction>> {
    if text.trim_end().ends_with('?') {
        return None;
    }
    let at = |pick: fn(&str) -> bool| words.iter().position(|w| pick(w));
    let exclude_at = at(|w| w.starts_with("exclud"));
    let include_at = at(|w| w.starts_with("includ"));
    let keep_at = at(|w| w == "keep").filter(|k| {
        let after = &words[k + 1..];
        after.contains(&"off") || after.contains(&"out")
    });
    let mapping = words.windows(2).any(|w| w == ["capability", "mapping"]);
    let verb_at = [exclude_at, include_at, keep_at]
        .into_iter()
        .flatten()
        .min();
    let (class, capability) = (class_named(words), capability_named(text));
    let complete = class.is_some() && capability.is_some();
    match (verb_at, mapping) {
        (None, false) => return None,
        // "fix sector 3 including its breakers": another intent's, unless it opened so.
        _ if !complete && !opened => return None,
        _ => {}
    }
    let before: &[&str] = &words[..verb_at.unwrap_or(0)];
    let says = |list: &[&str]| before.iter().any(|w| list.contains(w));
    // "stop excluding …", "no longer exclude …", "lift the exclusion of …": let back.
    let lifted = says(&["stop", "longer", "undo", "lift", "remove"]);
    // "don't exclude …", "never include …": asks nothing ("no longer": lifted).
    if super::negates(before) && !lifted {
        return Some(None);
    }
    let (Some(class), Some(capability)) = (class, capability) else {
        return Some(None);
    };
    if find_scope(words) != Scope::Global {
        return Some(None);
    }
    let include = lifted || include_at.is_some_and(|i| Some(i) == verb_at);
    Some(Some(match include {
        true => MeshAction::Include {
            class,
            capability,
            approved: false,
        },
        false => MeshAction::Exclude {
            class,
            capability,
            approved: false,
        },
    }))
}

/// The class a request names: "class E", "CLASS_E_LOCAL", "class local".
fn class_named(words: &[&str]) -> Option<ImpedanceClass> {
    let at = words.iter().position(|w| *w == "class")?;
    crate::mesh_client::class_of(words.get(at + 1)?).ok()?
}

/// Words between a marker and the capability it introduces.
const FILLERS: [&str; 15] = [
    "the",
    "its",
    "their",
    "all",
    "any",
    "every",
    "now",
    "of",
    "routing",
    "mapping",
    "capability",
    "agents",
    "agent",
    "sector",
    "cluster",
];

/// The capability a request names: the first word after "from", "off", "out", "in", "into"
/// or "for" that reads as one, past [`FILLERS`], numbers and a class's name (quotes and
/// punctuation around it dropped).
fn capability_named(text: &str) -> Option<String> {
    let markers = ["from", "off", "out", "in", "into", "for"];
    let mut armed = false;
    let mut after_class = false;
    for raw in text.split_whitespace() {
        let w = raw
            .trim_matches(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c)))
            .trim_end_matches('.');
        let lower = w.to_ascii_lowercase();
        let class_word = after_class || lower.starts_with("class");
        after_class = lower == "class";
        if markers.contains(&lower.as_str()) {
            armed = true;
            continue;
        }
        let filler = FILLERS.contains(&lower.as_str())
            || class_word
            || lower.chars().all(|c| c.is_ascii_digit());
        if !armed || filler {
            continue;
        }
        if check_capability(w).is_ok() {
            return Some(w.to_string());
        }
        armed = false;
    }
    None
}
