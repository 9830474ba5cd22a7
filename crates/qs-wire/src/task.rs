//! Durable tasks (seed 002): what a client submits (`TaskSpec`, from a `[task]` TOML file or
//! the API's JSON), with its one check, [`TaskSpec::validate`], whatever way it came in.
//!
//! A task is a unit of long, iterative work: a class and a priority that order it, an
//! expected difficulty, the model it needs (if any), an idempotency key (a second submission
//! with the same key is the same task), a bounded payload, the most iterations it may take, how
//! its result is validated, and a deadline.

use crate::ids::ServiceName;
use crate::spec::{InvalidField, SpecError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest payload a task may carry.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest idempotency key.
pub const MAX_KEY_BYTES: usize = 128;
/// Most iterations a task may take.
pub const MAX_ITERATIONS: u32 = 10_000;
/// Longest deadline (7 days).
pub const MAX_DEADLINE_MS: u64 = 7 * 24 * 3_600_000;
/// Highest priority (0 is the lowest).
pub const MAX_PRIORITY: u8 = 9;
/// Most results a vote may ask for.
pub const MAX_VOTERS: u32 = 9;

/// The class of a task, which orders it before its priority does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskClass {
    Interactive,
    Batch,
    Ingestion,
}

impl fmt::Display for TaskClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskClass::Interactive => "interactive",
            TaskClass::Batch => "batch",
            TaskClass::Ingestion => "ingestion",
        })
    }
}

/// How a task's result is judged before it completes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum Validation {
    /// The worker's word is final.
    #[default]
    None,
    /// A command judges it (the result on its standard input; exit 0: accepted); a refused
    /// result leads to what `on_failure` says.
    Command {
        command: String,
        #[serde(default)]
        on_failure: OnInvalid,
    },
    /// `k` of `n` independent results must agree.
    Vote { k: u32, n: u32 },
}

/// What a result the validator refused leads to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInvalid {
    /// A new pass, by any worker.
    #[default]
    Retry,
    /// A new pass by another worker than the one refused.
    Reroute,
    /// A new pass on the next model of the task's `escalate` list (more diversity).
    Diversify,
    /// Passes by distinct workers until two results agree (a vote of 2 of 3).
    Vote,
}

/// Most models a task may escalate through.
pub const MAX_ESCALATIONS: usize = 8;
/// Longest stall a task may name.
pub const MAX_STALL_ITERATIONS: u32 = 1_000;

/// What a client submits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub class: TaskClass,
    #[serde(default)]
    pub priority: u8,
    /// Expected difficulty, 0 (trivial) to 1 (hardest): easier work goes first among equals.
    #[serde(default)]
    pub difficulty: f64,
    /// The model or runtime it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ServiceName>,
    pub idempotency_key: String,
    #[serde(default)]
    pub payload: String,
    pub max_iterations: u32,
    #[serde(default)]
    pub validation: Validation,
    /// From submission: past it, a task not completed fails.
    pub deadline_ms: u64,
    /// Larger model tiers or other model families, in order: where a task that stops making
    /// progress (and a refused result under `on_failure = "diversify"`) goes next.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalate: Vec<ServiceName>,
    /// No better score over this many iterations is no progress: the task escalates (0: never).
    #[serde(default, skip_serializing_if = "crate::bounds::is_zero")]
    pub stall_iterations: u32,
}

fn bad(field: &str, reason: impl Into<String>) -> Result<(), InvalidField> {
    Err(InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    })
}

impl TaskSpec {
    /// Every rule a task keeps, whatever way it came in.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.priority > MAX_PRIORITY {
            return bad(
                "priority",
                format!("must be in 0..={MAX_PRIORITY}, got {}", self.priority),
            );
        }
        if !(self.difficulty.is_finite() && (0.0..=1.0).contains(&self.difficulty)) {
            return bad(
                "difficulty",
                format!("must be in 0..=1, got {}", self.difficulty),
            );
        }
        let k = &self.idempotency_key;
        if k.is_empty() || k.len() > MAX_KEY_BYTES || !k.bytes().all(|b| b.is_ascii_graphic()) {
            return bad(
                "idempotency_key",
                format!("1..={MAX_KEY_BYTES} printable characters without spaces"),
            );
        }
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return bad(
                "payload",
                format!("{} bytes; at most {MAX_PAYLOAD_BYTES}", self.payload.len()),
            );
        }
        if !(1..=MAX_ITERATIONS).contains(&self.max_iterations) {
            return bad(
                "max_iterations",
                format!(
                    "must be in 1..={MAX_ITERATIONS}, got {}",
                    self.max_iterations
                ),
            );
        }
        if !(1..=MAX_DEADLINE_MS).contains(&self.deadline_ms) {
            return bad(
                "deadline_ms",
                format!("must be in 1..={MAX_DEADLINE_MS}, got {}", self.deadline_ms),
            );
        }
        if self.escalate.len() > MAX_ESCALATIONS {
            return bad(
                "escalate",
                format!(
                    "at most {MAX_ESCALATIONS} models, got {}",
                    self.escalate.len()
                ),
            );
        }
        if self.stall_iterations > MAX_STALL_ITERATIONS {
            return bad(
                "stall_iterations",
                format!(
                    "must be in 0..={MAX_STALL_ITERATIONS}, got {}",
                    self.stall_iterations
                ),
            );
        }
        match &self.validation {
            Validation::None => Ok(()),
            Validation::Command { command, .. } => {
                crate::spec::check_command("validation.command", command)
            }
            Validation::Vote { k, n } => {
                if !(1..=MAX_VOTERS).contains(n) || !(1..=*n).contains(k) {
                    return bad(
                        "validation",
                        format!(
                            "a vote of k of n results, 1 <= k <= n <= {MAX_VOTERS}, got {k} of {n}"
                        ),
                    );
                }
                Ok(())
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    task: toml::Spanned<TaskSpec>,
}

/// Parses and checks a task file (one `[task]` table). `file` only labels errors.
pub fn parse_task(file: &str, text: &str) -> Result<TaskSpec, SpecError> {
    let at = crate::spec::Locator::new(file, text);
    let raw: TaskFile = toml::from_str(text).map_err(|e| at.serde_error(&e))?;
    let span = raw.task.span();
    let spec = raw.task.into_inner();
    spec.validate()
        .map_err(|f| at.error(span, &format!("task.{}", f.field), f.reason))?;
    Ok(spec)
}

/// Decodes a task from JSON (the API's body: untrusted), with the same check.
pub fn decode_task(source: &str, bytes: &[u8]) -> Result<TaskSpec, SpecError> {
    let spec: TaskSpec = serde_json::from_slice(bytes).map_err(|e| SpecError {
        file: source.to_owned(),
        line: e.line(),
        column: e.column(),
        field: String::new(),
        message: e.to_string(),
    })?;
    spec.validate().map_err(|f| SpecError {
        file: source.to_owned(),
        line: 0,
        column: 0,
        field: f.field,
        message: f.reason,
    })?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[task]
class = "batch"
priority = 3
difficulty = 0.4
model = "code"
idempotency_key = "eval-2026-12-06-17"
payload = '{"question": "why?"}'
max_iterations = 8
validation = { kind = "vote", k = 2, n = 3 }
deadline_ms = 600000
"#;

    #[test]
    fn a_task_file_parses_and_its_json_reads_back_the_same() {
        let t = parse_task("t.toml", GOOD).unwrap();
        assert_eq!(t.class, TaskClass::Batch);
        assert_eq!(t.validation, Validation::Vote { k: 2, n: 3 });
        let json = serde_json::to_vec(&t).unwrap();
        assert_eq!(decode_task("api", &json).unwrap(), t);
    }

    #[test]
    fn bad_tasks_name_their_field() {
        let cases = [
            (
                "priority = 3",
                "priority = 12",
                "task.priority: must be in 0..=9",
            ),
            (
                "difficulty = 0.4",
                "difficulty = 1.5",
                "task.difficulty: must be in 0..=1",
            ),
            (
                "max_iterations = 8",
                "max_iterations = 0",
                "task.max_iterations: must be in",
            ),
            (
                "deadline_ms = 600000",
                "deadline_ms = 0",
                "task.deadline_ms: must be in",
            ),
            (
                "idempotency_key = \"eval-2026-12-06-17\"",
                "idempotency_key = \"has space\"",
                "task.idempotency_key",
            ),
            (
                "k = 2, n = 3",
                "k = 4, n = 3",
                "task.validation: a vote of k of n",
            ),
            (
                "class = \"batch\"",
                "class = \"urgent\"",
                "task.class: unknown variant `urgent`",
            ),
            (
                "model = \"code\"",
                "model = \"Code!\"",
                "bad.toml:6:9: invalid name",
            ),
        ];
        for (from, to, want) in cases {
            let text = GOOD.replace(from, to);
            let e = parse_task("bad.toml", &text).unwrap_err().to_string();
            assert!(e.contains(want), "{to}: {e}");
            assert!(e.starts_with("bad.toml:"), "{e}");
        }
        let big = GOOD.replace(
            "payload = '{\"question\": \"why?\"}'",
            &format!("payload = '{}'", "x".repeat(MAX_PAYLOAD_BYTES + 1)),
        );
        let e = parse_task("bad.toml", &big).unwrap_err().to_string();
        assert!(
            e.contains("task.payload") && e.contains("at most 65536"),
            "{e}"
        );
        let e = decode_task("api", br#"{"class": "batch"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field"), "{e}");
    }
}
