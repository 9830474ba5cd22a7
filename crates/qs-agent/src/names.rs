//! The names of the fleet's shared state: the KV buckets every node of a fleet uses.

/// Desired state: each workload's spec (key: the service).
pub const SPECS_BUCKET: &str = "specs";
/// Singleton records: `SingletonClaim`s (key: the service).
pub const INSTANCES_BUCKET: &str = "instances";
/// Node identities: each node's certificate (or, trusting on first use, `NodeRecord`; key:
/// the node) and the authority's revocations (`revoked.SERIAL`).
pub const NODES_BUCKET: &str = "nodes";
/// Join requests (`request.NODE`), the authority's answers (`answer.NODE`), spent join
/// tokens (`used.ID`).
pub const JOINS_BUCKET: &str = "joins";
/// Model runtimes: each `[model.NAME]`'s `ModelSpec` (key: the model).
pub const MODELS_BUCKET: &str = "models";
/// Durable tasks: each task's `FleetTask` (its owner and record; key: the task).
pub const TASKS_BUCKET: &str = "tasks";
