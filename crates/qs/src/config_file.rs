//! Reading the agent's config file (`--config`): TOML into `qs_core::Config`, each error
//! naming the file, line and column, and the field a value out of range is set at.

use anyhow::{Context, Result};
use qs_core::Config;
use std::path::Path;

/// Reads core settings; every error names the file (and the line, for TOML errors).
pub(crate) fn read_config(path: Option<&Path>) -> Result<Config> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: Config = toml::from_str(&text).map_err(|e| {
        // toml names the line and column of what it could not read.
        let (line, column) = e
            .span()
            .map_or((0, 0), |span| qs_wire::spec::line_column(&text, span.start));
        anyhow::anyhow!("{}:{line}:{column}: {}", path.display(), e.message())
    })?;
    config.validate().map_err(|e| {
        let (line, column) = locate_field(&text, e.field);
        anyhow::anyhow!("{}:{line}:{column}: {e}", path.display())
    })?;
    Ok(config)
}

/// Where a config field (`gate_min`, `thresholds.cpu`) is set in the file: its key's line and
/// column, within its table when it has one; (0, 0) when it is not set there.
fn locate_field(text: &str, field: &str) -> (usize, usize) {
    let (table, key) = field.rsplit_once('.').unwrap_or(("", field));
    let mut in_table = table.is_empty();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix('[') {
            in_table = name.trim_end().trim_end_matches(']').trim() == table;
            continue;
        }
        let column = line.len() - trimmed.len() + 1;
        let sets = |k: &str| {
            trimmed
                .strip_prefix(k)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        };
        if in_table && sets(key) {
            return (i + 1, column);
        }
        if !table.is_empty() && sets(&format!("{table}.{key}")) {
            return (i + 1, column);
        }
        if !table.is_empty() && sets(table) && trimmed.contains(key) {
            return (i + 1, column + trimmed.find(key).unwrap_or(0));
        }
    }
    (0, 0)
}

#[cfg(test)]
mod config_tests {
    use super::locate_field;

    #[test]
    fn a_config_field_is_found_at_its_line_and_column() {
        let text = "gate_min = 2.0\n\n[thresholds]\n  cpu = 7.0\nmemory = 0.5\n";
        assert_eq!(locate_field(text, "gate_min"), (1, 1));
        assert_eq!(locate_field(text, "thresholds.cpu"), (4, 3));
        assert_eq!(locate_field(text, "thresholds.gpu"), (0, 0));
        assert_eq!(
            locate_field("thresholds = { gpu = 3 }", "thresholds.gpu"),
            (1, 16)
        );
    }
}
