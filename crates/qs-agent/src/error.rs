//! The agent's errors: what went wrong, and with what.

use std::time::Duration;

/// Everything the agent's shell can fail at.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Fabric(#[from] qs_fabric::FabricError),
    #[error(transparent)]
    Store(#[from] qs_store::StoreError),
    #[error("{what} did not answer within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("{what} changed under {tries} tries")]
    Contended { what: String, tries: usize },
    #[error("a task of the agent failed: {0}")]
    Task(String),
}
