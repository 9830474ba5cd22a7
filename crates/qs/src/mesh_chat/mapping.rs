//! The capability mapping in plain words (seed §7.2: "Shall I reassign the task and fix the
//! capability mapping?" … "Capability mapping updated: CLASS_E_LOCAL agents now excluded
//! from 'llm_inference' routing"): "exclude class E agents from llm_inference routing", "fix
//! the capability mapping: class E off llm_inference", "include class E in llm_inference
//! again", "stop excluding class E from gpu". A request that names no class or no
//! capability it can read is no request, never a guess.

use qs_wire::mesh::{ImpedanceClass, MeshAction, check_capability};

/// What a request of the capability mapping asks, if it is one: `None` when it is not one,
/// `Some(None)` when it is one the grammar cannot read in full (or one told not to).
pub(crate) fn parse_mapping(text: &str, words: &[&str]) -> Option<Option<MeshAction>> {
    let excluding = words.iter().any(|w| w.starts_with("exclud"));
    let including = words.iter().any(|w| w.starts_with("includ"));
    let mapping = words.windows(2).any(|w| w == ["capability", "mapping"]);
    if !(excluding || including || mapping) {
        return None;
    }
    // "don't exclude …" asks nothing; "stop excluding …", "no longer exclude …" let back.
    let before_verb: &[&str] = match words.iter().position(|w| w.starts_with("exclud")) {
        Some(at) => &words[..at],
        None => &[],
    };
    let stop = before_verb
        .iter()
        .any(|w| ["stop", "longer", "undo", "lift"].contains(w));
    let negated = before_verb
        .iter()
        .any(|w| ["not", "don", "dont", "never"].contains(w));
    if negated && !stop {
        return Some(None);
    }
    let Some(class) = class_named(words) else {
        return Some(None);
    };
    let Some(capability) = capability_named(text) else {
        return Some(None);
    };
    Some(Some(match including || stop {
        true => MeshAction::Include { class, capability },
        false => MeshAction::Exclude { class, capability },
    }))
}

/// The class a request names: "class E", "CLASS_E_LOCAL", "class local".
fn class_named(words: &[&str]) -> Option<ImpedanceClass> {
    let at = words.iter().position(|w| *w == "class")?;
    crate::mesh_client::class_of(words.get(at + 1)?).ok()?
}

/// The capability a request names: the word after "from", "off", "in", "into" or "for"
/// that reads as a capability (quotes and punctuation around it dropped), but the class's
/// own words, a scope's and "routing" (a rule holds mesh-wide).
fn capability_named(text: &str) -> Option<String> {
    let tokens: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c)))
                .trim_end_matches('.')
                .to_string()
        })
        .collect();
    let markers = ["from", "off", "in", "into", "for"];
    let skip = [
        "the",
        "its",
        "routing",
        "mapping",
        "class",
        "capability",
        "agents",
        "sector",
        "cluster",
    ];
    tokens.iter().enumerate().find_map(|(i, w)| {
        if !markers.contains(&w.to_ascii_lowercase().as_str()) {
            return None;
        }
        let next = tokens.get(i + 1)?;
        let lower = next.to_ascii_lowercase();
        let class_word = lower.starts_with("class");
        (!skip.contains(&lower.as_str()) && !class_word && check_capability(next).is_ok())
            .then(|| next.clone())
    })
}
