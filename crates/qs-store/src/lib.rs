//! Local durable state: the state directory ([`StateDir`]: its layout and its one atomic
//! write) and the ledger on redb ([`Ledger`]).

mod ledger;
mod state_dir;
mod tasks;

pub use ledger::{Ledger, MAX_CARRIED, MAX_READ, Retention, Snapshot, panic_is_contained};
pub use state_dir::{MeshSnapshotKind, StateDir, StateFile, write_atomic};
pub use tasks::{TaskStore, TaskWrite};

use std::path::PathBuf;

/// What went wrong with local state, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: not a readable ledger (corrupt or another kind of file): {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A state file that does not parse: nothing is read from it.
    #[error("{path}: unreadable {what} at line {line}, column {column}: {detail}")]
    Unreadable {
        path: PathBuf,
        what: &'static str,
        line: usize,
        column: usize,
        detail: String,
    },
    #[error("{path}: the ledger is closed after a failed write; it reopens when it can")]
    Closed { path: PathBuf },
    #[error("{path}: {size} bytes is more than the {max} a {what} may have")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        size: u64,
        max: u64,
    },
}
